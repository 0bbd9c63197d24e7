"""The front door of the HTTP app: what every request passes before any route sees it.

1. **Host and Origin** (DNS-rebinding protection, on for every bind address): ``Host`` must
   name this server — the bind address, loopback's names when it listens on loopback or on
   every interface, ``mcp.public_url``'s host, ``mcp.allowed_hosts``, or the very address the
   connection arrived at — and an ``Origin``, when a browser sends one, the same (``null``
   only on the console's routes, whose forms carry a CSRF token). Anything
   else is refused before authentication: ``421`` for a foreign Host, ``403`` for a foreign
   Origin, each saying which key to set.
2. **A body limit per route**, checked against ``Content-Length`` first and then as the body
   streams, so no more than the limit is ever held: ``/mcp`` takes an ``upload_image`` call
   of the largest image ``media.max_bytes`` allows (as base64, with room for the JSON),
   ``/uploads`` the image itself, callbacks and console forms their few kilobytes, and every
   other route (``GET``s) 1 KiB, ignored. Crossing it is a ``413`` — on ``/mcp`` with a
   JSON-RPC error body, which MCP clients show as the call's error; the rest of the body is
   dropped as it comes, for ``mcp.body_timeout_s`` at most.

The read and header timeouts and the connection cap live below the app, in
``server/connections.py``: they must act before a request exists.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server import callbacks
from server.apps import request_body_limit
from server.console.routes import MAX_BODY as CONSOLE_MAX_BODY
from server.uploads import MULTIPART_OVERHEAD
from tools.config import Settings

log = logging.getLogger("retouch.http")
#: Loopback's names: what a client on this machine may call it.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::"})
#: The body of a route that takes none (GET, a 404 or 405 to be): read, ignored, and at most
#: this much.
OTHER_BODY = 1024
#: JSON-RPC's "Invalid Request".
INVALID_REQUEST = -32600


def canonical_host(value: str) -> str | None:
    """A Host header's (or a URL's netloc's) host as compared: lower case, without port or
    trailing dot, an IP address in its compressed form (IPv6 without brackets); None if it is
    not a host at all (e.g. an unbracketed IPv6 address, a bad port, a user part)."""
    value = value.strip()
    if not value or "@" in value:
        return None
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        try:
            return ipaddress.IPv6Address(host).compressed
        except ValueError:
            return None
    host, colon, port = value.partition(":")
    if colon and not port.isdigit():
        return None
    host = host.lower().rstrip(".")
    try:
        return ipaddress.ip_address(host).compressed
    except ValueError:
        pass
    if not host or not all(
        part and (part.replace("-", "").replace("_", "")).isalnum() for part in host.split(".")
    ):
        return None
    return host


def is_loopback_name(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_console(path: str) -> bool:
    """The console's pages are served with Referrer-Policy: no-referrer, so a browser sends
    their forms with ``Origin: null``; each form carries the session's CSRF token instead.
    Everywhere else ``null`` is refused like any foreign Origin."""
    return path == "/console" or path.startswith("/console/")


class HostNames:
    """Which Host and Origin hosts this server answers to (see the module's docstring)."""

    def __init__(self, bind: str, public: Iterable[str]) -> None:
        bind_host = canonical_host(bind) or bind.lower()
        self.names: set[str] = {h for h in (canonical_host(p) for p in public) if h}
        self.local = is_loopback_name(bind_host) or bind_host in WILDCARDS
        if bind_host not in WILDCARDS:
            self.names.add(bind_host)
        if self.local:
            self.names |= LOOPBACK_NAMES

    @classmethod
    def from_settings(cls, settings: Settings) -> HostNames:
        cfg = settings.mcp
        public = [urlsplit(cfg.public_url).netloc] if cfg.public_url else []
        return cls(cfg.host, [*public, *cfg.allowed_hosts])

    def allows(self, host: str | None, arrived_at: str | None) -> bool:
        """Whether ``host`` (canonical) names this server for a connection that arrived at
        the local address ``arrived_at``. An IP address the connection really arrived at is
        always this server's (no DNS name is involved, so nothing can be rebound), and on a
        loopback connection so is any loopback address."""
        if host is None:
            return False
        if host in self.names:
            return True
        local = canonical_host(arrived_at) if arrived_at else None
        if local is None:
            return False
        if host == local:
            return True
        return self.local and is_loopback_name(local) and is_loopback_name(host)

    def refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, str] | None:
        """(status, error, message) when the request is not for this server, else None."""
        server = scope.get("server")
        arrived_at = server[0] if server else None
        raw_host = headers.get("host")
        if raw_host is None:
            return 400, "bad_request", "send a Host header naming this server"
        if not self.allows(canonical_host(raw_host), arrived_at):
            shown = raw_host[:100]
            return (
                421,
                "misdirected",
                f"Host {shown!r} does not name this server (DNS-rebinding protection); if it "
                "is one of its names, add it to mcp.allowed_hosts or set mcp.public_url",
            )
        origin = headers.get("origin")
        if origin is not None and not (origin == "null" and is_console(scope["path"])):
            try:
                parts = urlsplit(origin)
                origin_host = canonical_host(parts.netloc)
            except ValueError:
                parts, origin_host = None, None
            scheme_ok = parts is not None and parts.scheme in ("http", "https")
            if not scheme_ok or not self.allows(origin_host, arrived_at):
                shown = origin[:100]
                return (
                    403,
                    "cross_origin",
                    f"requests from pages of Origin {shown!r} are refused (DNS-rebinding "
                    "protection); if it is this server, add its host to mcp.allowed_hosts",
                )
        return None


@dataclass(frozen=True)
class Limit:
    """A route's body limit. ``streamed``: the route reads its body as it arrives and refuses
    it past ``size`` in its own words, so the door only stands behind it, refusing past
    ``door_size`` (in case a route stopped counting); otherwise the door reads the body, at
    most ``size``, before the route runs."""

    size: int
    why: str
    streamed: bool = False

    @property
    def door_size(self) -> int:
        return self.size + max(self.size, 64 * 1024) if self.streamed else self.size


class BodyLimits:
    """The body limit of each route, from the settings."""

    def __init__(self, settings: Settings) -> None:
        self.mcp_path = settings.mcp.path.rstrip("/") or "/"
        mb = settings.media.max_bytes
        self.mcp = Limit(
            request_body_limit(settings),
            f"an MCP request carries at most one image of media.max_bytes ({mb / 1e6:g} MB) "
            "as base64, with room for the JSON; send larger ones through POST /uploads",
        )
        self.uploads = Limit(
            mb + MULTIPART_OVERHEAD, f"an upload is one image of at most {mb / 1e6:g} MB", True
        )
        self.callback = Limit(
            callbacks.MAX_CALLBACK_BYTES, "a callback is a few kilobytes", streamed=True
        )
        self.console = Limit(CONSOLE_MAX_BODY, "a console form is a few fields", streamed=True)
        self.none = Limit(OTHER_BODY, "this route takes no body")
        self.other = Limit(OTHER_BODY, "no route here takes a body")

    def of(self, method: str, path: str) -> Limit:
        if method in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return self.none
        if path.rstrip("/") == self.mcp_path:
            return self.mcp
        if path == "/uploads":
            return self.uploads
        if path.startswith("/callbacks/"):
            return self.callback
        if path == "/console" or path.startswith("/console/"):
            return self.console
        return self.other


class TooLarge(Exception):
    pass


def refusal_response(
    scope: Scope, mcp_path: str, status: int, error: str, message: str
) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """A refusal's status, headers and body: JSON, and on ``/mcp`` a JSON-RPC error (with no
    id, as the request was not read) that MCP clients show as the call's error.

    The connection stays open: closing it while the client still sends would reset it before
    the client reads the answer. The rest of the body is read and dropped (never held), for
    at most ``mcp.body_timeout_s`` (server/connections.py)."""
    body: dict[str, Any]
    if scope["path"].rstrip("/") == mcp_path:
        body = {
            "jsonrpc": "2.0",
            "id": None,
            "error": {"code": INVALID_REQUEST, "message": message},
        }
    elif scope["path"].startswith("/callbacks/"):  # as the callback route's own refusals
        body = {"code": error, "message": message}
    else:
        body = {"error": error, "message": message}
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    return status, headers, data


class FrontDoor:
    """The ASGI middleware outside everything else (see the module's docstring)."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.names = HostNames.from_settings(settings)
        self.limits = BodyLimits(settings)

    async def refuse(self, scope: Scope, send: Send, status: int, error: str, message: str) -> None:
        status, headers, body = refusal_response(
            scope, self.limits.mcp_path, status, error, message
        )
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refused = self.names.refusal(scope, headers)
        if refused is not None:
            await self.refuse(scope, send, *refused)
            return
        limit = self.limits.of(scope["method"], scope["path"])
        too_large = f"the body is over {limit.size} bytes: {limit.why}"
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit.door_size:
            await self.refuse(scope, send, 413, "too_large", too_large)
            return
        try:
            if limit.streamed:
                await self.counted(scope, receive, send, limit, too_large)
                return
            try:
                replay = await self.read(receive, limit.size)
            except TooLarge:
                await self.refuse(scope, send, 413, "too_large", too_large)
                return
            if replay is None:  # the client left before its body ended
                return
            await self.app(scope, replay, send)
        except ClientDisconnect:
            # A route that did not expect its client to leave mid-body (or to be closed by
            # the body timeout): no one is left to answer, and it is no server error.
            log.info("%s %s: the client left before its body ended", scope["method"], scope["path"])

    @staticmethod
    async def read(receive: Receive, limit: int) -> Receive | None:
        """The whole body (at most ``limit`` bytes, else TooLarge) as a ``receive`` that hands
        it over in one message, then passes on to the real one; None if the client left."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None
            body += message.get("body", b"")
            if len(body) > limit:
                raise TooLarge
            if not message.get("more_body", False):
                break
        first: list[Message] = [{"type": "http.request", "body": bytes(body), "more_body": False}]

        async def replay() -> Message:
            return first.pop() if first else await receive()

        return replay

    async def counted(
        self, scope: Scope, receive: Receive, send: Send, limit: Limit, too_large: str
    ) -> None:
        """The route reads its own body; past ``limit`` it is told the client left (and
        answered 413 here if it had not answered yet)."""
        seen = 0
        crossed = False
        started = False

        async def counting() -> Message:
            nonlocal seen, crossed
            if crossed:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit.door_size:
                    crossed = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if crossed and not started:
                return  # the 413 below answers instead
            started = True
            await send(message)

        await self.app(scope, counting, sending)
        if crossed and not started:
            await self.refuse(scope, send, 413, "too_large", too_large)
