"""The streamable-HTTP app: MCP at ``/mcp``, uploads (``POST /uploads``, the ``/upload``
page), result links (``/results/…``), vendor callbacks, a health check, and the bearer-token
guard that HTTP needs whenever it listens beyond loopback or has users. While the store
cannot be reached, a route that needs it answers 503 with Retry-After."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from mcp.server import MCPServer
from mcp.server.transport_security import DEFAULT_MAX_REQUEST_BODY_SIZE, TransportSecuritySettings
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from server import callbacks, openapi
from server.apps import request_body_limit
from server.console.routes import add_console
from server.front_door import FrontDoor
from server.metrics import add_metrics
from server.owners import set_owner
from server.result_urls import ResultURLs, serve_result
from server.uploads import Uploads
from tools.config import Settings, UserSettings
from tools.errors import ConfigError, StoreUnavailable
from tools.service import Editor

#: Open without a token: prefixes, and exact paths (the upload page asks for the token
#: itself; a result link carries its own signature; the console has its own sign-in and
#: takes no bearer token; /metrics checks its own token, server/metrics.py).
OPEN_PATHS = ("/health", "/callbacks/", "/results/", "/console/")
OPEN_EXACT = ("/upload", "/console", "/metrics", "/openapi.json")
#: How long the guard keeps its copy of the users added at run time (``retouch users``, the
#: console): a user revoked there is refused by every process within this many seconds.
ADDED_USERS_TTL_S = 2.0

log = logging.getLogger("retouch.http")
#: Users as the guard compares them: (name, or None for a revoked one; token's SHA-256).
Digests = list[tuple[str | None, bytes]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def is_open(path: str) -> bool:
    return path.startswith(OPEN_PATHS) or path in OPEN_EXACT


class BearerAuth:
    """Refuses requests to paths that are not open without ``Authorization: Bearer <token>``
    of a known user, and records that user as the request's owner.

    The users are the config file's and those ``added`` at run time (read from the store
    again every ``ADDED_USERS_TTL_S`` at most; a revoked one matches no one). The presented
    token's SHA-256 is compared with every user's, each in constant time and all of them
    every time, so neither the answer's time nor its path says which user (or how much of a
    token) matched. Tokens are never logged. ``open_when_empty`` (loopback without
    configured users): until a user is added, requests pass as they are.
    """

    def __init__(
        self,
        app: ASGIApp,
        users: list[UserSettings],
        *,
        added: Callable[[], Awaitable[Digests]] | None = None,
        open_when_empty: bool = False,
    ) -> None:
        self.app = app
        self.users: Digests = [(user.name, user.digest()) for user in users]
        self.added = added
        self.open_when_empty = open_when_empty
        self._added: tuple[float, Digests] = (-ADDED_USERS_TTL_S, [])
        self._reading = asyncio.Lock()

    async def accounts(self) -> Digests:
        """Every user now: the config file's, then those added at run time."""
        if self.added is None:
            return self.users
        async with self._reading:
            read_at, added = self._added
            if time.monotonic() - read_at >= ADDED_USERS_TTL_S:
                added = await self.added()
                self._added = (time.monotonic(), added)
        return self.users + added

    @staticmethod
    def user(authorization: bytes, accounts: Digests) -> str | None:
        """The name of the user whose token ``authorization`` carries, if any."""
        scheme, token = authorization[:7], authorization[7:]
        presented = hashlib.sha256(token).digest()
        found = None
        for name, digest in accounts:
            if hmac.compare_digest(presented, digest):
                found = name
        return found if scheme.lower() == b"bearer " and token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_open(scope["path"]):
            authorization = dict(scope["headers"]).get(b"authorization", b"")
            try:
                accounts = await self.accounts()
            except Exception as exc:  # the store is down: only the config file's users are known
                log.warning("cannot read the users: %s", type(exc).__name__)
                name = self.user(authorization, self.users) if self.users else None
                if name is None:
                    if not isinstance(exc, StoreUnavailable):
                        exc = StoreUnavailable(cause=type(exc).__name__)
                    await unavailable_response(exc)(scope, receive, send)
                    return
                # A user of the config file needs no database to be known: the request goes
                # on, and the route or tool says "store unavailable, try again" in its own
                # form (an MCP client shows a tool's error; it hides an HTTP 503's body).
                set_owner(scope, name)
                await self.app(scope, receive, send)
                return
            if accounts or not self.open_when_empty:
                name = self.user(authorization, accounts)
                if name is None:
                    response = JSONResponse(
                        {"error": "unauthorized", "message": "send Authorization: Bearer <token>"},
                        status_code=401,
                        headers={"WWW-Authenticate": "Bearer"},
                    )
                    await response(scope, receive, send)
                    return
                set_owner(scope, name)
        await self.app(scope, receive, send)


def unavailable_response(exc: StoreUnavailable) -> Response:
    """Any route's answer while the store cannot be reached: 503, and when to try again."""
    return JSONResponse(
        {"error": exc.code, "message": exc.message},
        status_code=503,
        headers={"Retry-After": str(exc.RETRY_AFTER_S)},
    )


async def unavailable(request: Request, exc: Exception) -> Response:
    """The app's handler of StoreUnavailable, whichever route raised it."""
    assert isinstance(exc, StoreUnavailable)
    return unavailable_response(exc)


def build_http_app(
    mcp: MCPServer[Editor], settings: Settings, result_urls: ResultURLs | None = None
) -> ASGIApp:
    """The app; ``result_urls``: the links' signer the tools use (default: the settings')."""
    cfg = settings.mcp
    users = cfg.accounts()
    if not is_loopback(cfg.host) and not users:
        raise ConfigError(
            f"mcp.host is {cfg.host}, beyond loopback: add [[mcp.users]] or set "
            "mcp.auth_token (or RETOUCH_MCP__AUTH_TOKEN) so that only your clients can edit"
        )
    # DNS-rebinding protection is the front door's, for every route (server/front_door.py);
    # the SDK's own check, off here, covers /mcp alone and only some loopback spellings.
    security = TransportSecuritySettings(enable_dns_rebinding_protection=False)

    @mcp.custom_route("/health", methods=["GET"])
    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    mcp.custom_route("/callbacks/{vendor}/{secret}", methods=["POST"])(callbacks.callback)
    mcp.custom_route("/callbacks/{vendor}", methods=["POST"])(callbacks.callback_without_secret)

    uploads = Uploads(settings)
    mcp.custom_route("/uploads", methods=["POST"])(uploads.post)
    mcp.custom_route("/upload", methods=["GET"])(uploads.page)
    urls = result_urls or ResultURLs.from_settings(settings)

    @mcp.custom_route("/results/{task_id}/{index}", methods=["GET"])
    async def result(request: Request) -> Response:
        return await serve_result(request, urls)

    mcp.custom_route("/openapi.json", methods=["GET"])(openapi.route(settings))
    add_console(mcp, settings)
    add_metrics(mcp, settings)
    app: Starlette = mcp.streamable_http_app(
        streamable_http_path=cfg.path,
        stateless_http=cfg.stateless,
        # The front door holds /mcp to request_body_limit (an upload_image call, as base64,
        # of the largest image media.max_bytes allows) with a JSON-RPC error past it.
        max_request_body_size=max(DEFAULT_MAX_REQUEST_BODY_SIZE, request_body_limit(settings)),
        transport_security=security,
        host=cfg.host,
    )
    app.add_exception_handler(StoreUnavailable, unavailable)
    serve_mcp = app.router.lifespan_context
    shared_editor = mcp.settings.lifespan
    assert shared_editor is not None, "a server made by server.app.build_server"

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        """MCP's own lifespan, inside the server's: the routes get the Editor the tools use."""
        async with shared_editor(mcp) as editor, serve_mcp(app):
            app.state.editor = editor
            yield

    app.router.lifespan_context = lifespan

    async def added() -> Digests:
        editor: Editor | None = getattr(app.state, "editor", None)
        return await editor.users.digests() if editor is not None else []

    # On loopback without configured users, open until a user is added (retouch users add).
    guarded = BearerAuth(app, users, added=added, open_when_empty=not users)
    return FrontDoor(guarded, settings)


def starlette_app(app: ASGIApp) -> Starlette:
    """The Starlette app inside ``build_http_app``'s layers (for its lifespan and state)."""
    while not isinstance(app, Starlette):
        app = app.app  # type: ignore[attr-defined]
    return app
