"""Who is asking: the owner that every task, upload and result URL belongs to.

Over HTTP the bearer-token guard (``server/http.py``) writes the caller's owner into the
ASGI scope's state; MCP tools read it from their request context and plain routes from
their request. Without HTTP (stdio, the CLI) the caller is the machine's own user,
:data:`LOCAL`.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.types import Scope

from tools.models import LOCAL_OWNER

#: The owner of requests made over stdio and from the command line.
LOCAL = LOCAL_OWNER
#: The key under ``scope["state"]`` (``request.state``) that holds the owner.
STATE_KEY = "retouch_owner"


def set_owner(scope: Scope, owner: str) -> None:
    """Record the owner an authenticated HTTP request acts for."""
    scope.setdefault("state", {})[STATE_KEY] = owner


def owner_of_request(request: Request) -> str:
    """The owner of a plain HTTP request (uploads, result URLs, callbacks do not use it)."""
    return str(getattr(request.state, STATE_KEY, LOCAL))


def owner_of(ctx: Any) -> str:
    """The owner of an MCP request: ``ctx`` is a tool's ``Context`` or the SDK's
    ``ServerRequestContext``."""
    request = getattr(getattr(ctx, "request_context", ctx), "request", None)
    return owner_of_request(request) if isinstance(request, Request) else LOCAL
