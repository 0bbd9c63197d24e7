"""The console's routes under ``/console``: pages, their JSON, thumbnails and actions.

Every route but the sign-in form needs a live session (pages redirect to the sign-in,
everything else answers 401); every POST also needs the session's CSRF token and has a
small body limit. The bearer tokens of ``/mcp`` are not accepted here, nor is this cookie
there (the bearer guard reads only ``Authorization``).
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

from mcp.server import MCPServer
from pydantic import ValidationError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response

from server.app import budgeted_preview
from server.console import pages, stats
from server.console.session import COOKIE, LOGIN_COOKIE, Sessions
from server.result_urls import load_secret
from tools.config import Settings
from tools.errors import NotFound, RetouchError
from tools.models import BudgetLimits
from tools.service import Editor
from tools.store.base import TaskFilter

#: The most a console POST may send (forms of a few fields).
MAX_BODY = 16 * 1024
#: Thumbnails for the list, and the larger previews of a task's page (never the original).
SIZES = {"thumb": 160, "view": 1024}
THUMBS_KEPT = 512
PAGE = 50
TASK_ID = re.compile(r"[0-9a-f]{32}")
FIELD = re.compile(r"[^\x00-\x1f]{1,100}")
COST_DAYS = 30
HEADERS = {
    "Content-Security-Policy": pages.CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
Handler = Callable[[Request], Awaitable[Response]]


#: A thumbnail the server has no room to decode now (too many large images at once).
BUSY = "server busy: too many large images at once, try again"


class BadRequest(Exception):
    """A console request that cannot be served as sent (400, or ``status``)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def secured(response: Response, cache: str = "no-store") -> Response:
    response.headers.update(HEADERS)
    response.headers["Cache-Control"] = cache
    return response


def refused(request: Request) -> Response:
    """No session: pages go to the sign-in, everything else is told 401."""
    if (
        request.method == "GET"
        and "/api/" not in request.url.path
        and "/thumbs/" not in (request.url.path)
    ):
        return secured(RedirectResponse("/console/login", status_code=303))
    return secured(JSONResponse({"error": "unauthorized"}, status_code=401))


async def read_form(request: Request) -> dict[str, str]:
    """The POST's form fields, refusing a large body before reading it all."""
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise BadRequest("the body is too large", 413)
    body = b""
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                raise BadRequest("the body is too large", 413)
    except ClientDisconnect:  # gone before its body ended (or closed by the body timeout)
        raise BadRequest("the body ended early") from None
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if body and kind != "application/x-www-form-urlencoded":
        raise BadRequest("send a form (application/x-www-form-urlencoded)", 415)
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the form cannot be read") from None
    return {k: v[-1] for k, v in fields.items()}


def utc(value: str, name: str) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp()
    except ValueError:
        raise BadRequest(f"{name}: a date and time like 2026-01-31T12:00") from None


def task_filter(params: dict[str, str]) -> TaskFilter:
    for name in ("status", "vendor", "owner", "function"):
        if params.get(name) and not FIELD.fullmatch(params[name]):
            raise BadRequest(f"{name}: at most 100 characters, no control characters")
    if params.get("status") and params["status"] not in pages.STATUSES:
        raise BadRequest(f"status: one of {', '.join(pages.STATUSES)}")
    return TaskFilter(
        status=params.get("status") or None,
        vendor=params.get("vendor") or None,
        owner=params.get("owner") or None,
        function=params.get("function") or None,
        since=utc(params.get("since", ""), "since"),
        until=utc(params.get("until", ""), "until"),
    )


def row(record: Any) -> dict[str, Any]:
    duration = record.finished_at - record.created_at if record.finished_at else None
    return {
        "seq": record.seq,
        "id": record.id,
        "function": record.function,
        "vendor": record.vendor,
        "owner": record.owner or "local",
        "status": record.status,
        "progress": record.progress or "",
        "duration": pages.seconds(duration) if duration is not None else "",
        "cost": f"{record.cost:.4g} {record.currency}" if record.cost is not None else "",
        "created": pages.when(record.created_at),
        "inputs": max(1, len(record.request.get("images", []))),
        "results": len(record.results),
    }


class Console:
    """The console of one server: its sessions and its thumbnails' cache."""

    def __init__(self, settings: Settings) -> None:
        cfg = settings.console
        self.sessions = Sessions(
            load_secret(settings),
            cfg.digests(),
            cfg.session_hours * 3600,
            secure=settings.mcp.public_url.startswith("https://"),
        )
        self.thumbs: OrderedDict[tuple[str, str, int, int], bytes] = OrderedDict()

    # ---- guards ------------------------------------------------------------------------

    def guarded(self, handler: Handler, *, action: bool = False) -> Handler:
        """``handler`` behind a session (and, for an action, its CSRF token)."""

        async def guard(request: Request) -> Response:
            sid = await self.sessions.session(request, self.editor(request).store)
            if sid is None:
                return refused(request)
            request.state.console_sid = sid
            try:
                if action:
                    form = await read_form(request)
                    presented = request.headers.get("x-csrf-token") or form.get("csrf", "")
                    if not self.sessions.csrf_ok(sid, presented):
                        raise BadRequest("the form's CSRF token is missing or wrong", 403)
                    request.state.console_form = form
                return await handler(request)
            except BadRequest as exc:
                return secured(JSONResponse({"error": str(exc)}, status_code=exc.status))
            except NotFound as exc:
                return secured(JSONResponse({"error": exc.message}, status_code=404))
            except RetouchError as exc:
                return secured(
                    JSONResponse({"error": exc.message, "code": exc.code}, status_code=400)
                )

        return guard

    def csrf(self, request: Request) -> str:
        return self.sessions.csrf(request.state.console_sid)

    @staticmethod
    def editor(request: Request) -> Editor:
        return request.app.state.editor  # type: ignore[no-any-return]

    # ---- sign-in -----------------------------------------------------------------------

    async def login_page(self, request: Request, error: str = "", status: int = 200) -> Response:
        nonce = secrets.token_urlsafe(18)
        response = HTMLResponse(pages.login(nonce, error), status_code=status)
        response.headers.append("Set-Cookie", self.sessions.cookie(LOGIN_COOKIE, nonce, 3600))
        return secured(response)

    async def login(self, request: Request) -> Response:
        try:
            form = await read_form(request)
        except BadRequest as exc:
            return secured(JSONResponse({"error": str(exc)}, status_code=exc.status))
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(
            form.get("csrf", "").encode(), expected.encode()
        ):
            return await self.login_page(request, "The form expired: sign in again.", 403)
        operator = self.sessions.operator(form.get("token", ""))
        if operator is None:
            await asyncio.sleep(0.5)  # a guess costs time
            return await self.login_page(request, "That token is not an operator's.", 401)
        cookie = await self.sessions.new(self.editor(request).store, operator)
        response = secured(RedirectResponse("/console/tasks", status_code=303))
        ttl = int(self.sessions.ttl_s)
        response.headers.append("Set-Cookie", self.sessions.cookie(COOKIE, cookie, ttl))
        response.headers.append("Set-Cookie", self.sessions.cookie(LOGIN_COOKIE, "", 0))
        return response

    async def logout(self, request: Request) -> Response:
        await self.sessions.end(request.state.console_sid, self.editor(request).store)
        response = secured(RedirectResponse("/console/login", status_code=303))
        response.headers.append("Set-Cookie", self.sessions.cookie(COOKIE, "", 0))
        return response

    # ---- tasks -------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        return secured(RedirectResponse("/console/tasks", status_code=303))

    async def tasks_page(self, request: Request) -> Response:
        params = dict(request.query_params)
        task_filter(params)  # refuse a bad filter here, not only in the page's fetches
        keep = {
            k: v
            for k, v in params.items()
            if k in ("status", "vendor", "owner", "function", "since", "until") and v
        }
        vendors = self.editor(request).routing_order()
        html = pages.tasks(urlencode(keep), keep, vendors, self.csrf(request))
        return secured(HTMLResponse(html))

    async def tasks_api(self, request: Request) -> Response:
        params = dict(request.query_params)
        before = params.get("before", "")
        if before and (not before.isdigit() or len(before) > 18):
            raise BadRequest("before: a task's seq")
        records = await self.editor(request).task_page(
            task_filter(params), before=int(before) if before else None, limit=PAGE + 1
        )
        shown = records[:PAGE]
        return secured(
            JSONResponse(
                {
                    "tasks": [row(r) for r in shown],
                    "last_seq": shown[-1].seq if shown else None,
                    "more": len(records) > PAGE,
                }
            )
        )

    def task_id(self, request: Request) -> str:
        task_id = request.path_params["task_id"]
        if not TASK_ID.fullmatch(task_id):
            raise NotFound("no such task")
        return str(task_id)

    async def task_page(self, request: Request) -> Response:
        editor = self.editor(request)
        record = await editor.task_record(self.task_id(request))
        inputs = len(await editor.store.task_blobs(record.id, "input"))
        steps = await editor.task_steps(record.id)
        return secured(HTMLResponse(pages.task(record, inputs, self.csrf(request), steps)))

    async def task_api(self, request: Request) -> Response:
        record = await self.editor(request).task_record(self.task_id(request))
        return secured(JSONResponse({**row(record), "progress": record.progress or ""}))

    async def thumb(self, request: Request) -> Response:
        task_id = self.task_id(request)
        role, index = request.path_params["role"], request.path_params["index"]
        size = SIZES.get(request.query_params.get("size", "thumb"))
        if role not in ("input", "result") or not index.isdigit() or len(index) > 3 or not size:
            raise NotFound("no such image")
        key = (task_id, role, int(index), size)
        jpeg = self.thumbs.get(key)
        if jpeg is None:
            data = await self.editor(request).task_image(task_id, role, int(index))
            preview = await budgeted_preview(data, size)  # within the pixel budget
            if preview is None:
                busy = Response(BUSY, status_code=503, headers={"Retry-After": "5"})
                return secured(busy)
            jpeg = base64.b64decode(preview)
            self.thumbs[key] = jpeg
            while len(self.thumbs) > THUMBS_KEPT:
                self.thumbs.popitem(last=False)
        self.thumbs.move_to_end(key)
        return secured(Response(jpeg, media_type="image/jpeg"), "private, max-age=3600")

    async def cancel(self, request: Request) -> Response:
        task = await self.editor(request).cancel_task(self.task_id(request))
        return secured(RedirectResponse(f"/console/tasks/{task.id}", status_code=303))

    async def again(self, request: Request) -> Response:
        task = await self.editor(request).run_again(self.task_id(request))
        return secured(RedirectResponse(f"/console/tasks/{task.id}", status_code=303))

    # ---- vendors, costs, users ---------------------------------------------------------

    async def vendors_page(self, request: Request) -> Response:
        editor = self.editor(request)
        rows = await editor.task_summaries(editor.clock() - stats.DAY)
        table = stats.vendor_stats(rows, editor.routing_order(), editor.clock())
        waits = await editor.rate_waits()
        caps = {s.name: editor.rate_caps(s.name) for s in table if s.name in editor.vendors}
        stats.rate_limits(table, caps, waits, editor.clock())
        return secured(HTMLResponse(pages.vendors(table, self.csrf(request))))

    async def costs_page(self, request: Request) -> Response:
        editor = self.editor(request)
        rows = await editor.task_summaries(editor.clock() - COST_DAYS * stats.DAY)
        sums = stats.costs(rows, stats.days_back(editor.clock(), COST_DAYS))
        html = pages.costs(sums, COST_DAYS, self.csrf(request))
        return secured(HTMLResponse(html))

    async def users_page(self, request: Request) -> Response:
        editor = self.editor(request)
        users = await editor.users.list()
        rows = await editor.task_summaries(editor.clock() - COST_DAYS * stats.DAY)
        overrides = await editor.store.budget_overrides()
        owners = sorted({u.name for u in users} | {r.owner for r in rows} | set(overrides))
        budgets = {owner: await editor.budget(owner) for owner in owners}
        html = pages.users(users, budgets, overrides, self.csrf(request))
        return secured(HTMLResponse(html))

    async def revoke(self, request: Request) -> Response:
        await self.editor(request).users.revoke(request.state.console_form.get("name", ""))
        return secured(RedirectResponse("/console/users", status_code=303))

    async def set_budget(self, request: Request) -> Response:
        form = request.state.console_form
        text = form.get("limits", "").strip()
        try:
            limits = BudgetLimits.model_validate(json.loads(text)) if text else None
        except (ValueError, ValidationError) as exc:
            raise BadRequest(f'limits: JSON such as {{"day": {{"USD": 5}}}} ({exc})') from None
        await self.editor(request).set_budget(form.get("owner", ""), limits)
        return secured(RedirectResponse("/console/users", status_code=303))

    # ---- mounting ----------------------------------------------------------------------

    def mount(self, mcp: MCPServer[Editor]) -> None:
        routes: list[tuple[str, str, Handler]] = [
            ("/console", "GET", self.guarded(self.home)),
            ("/console/login", "GET", self.login_page),
            ("/console/login", "POST", self.login),
            ("/console/logout", "POST", self.guarded(self.logout, action=True)),
            ("/console/tasks", "GET", self.guarded(self.tasks_page)),
            ("/console/api/tasks", "GET", self.guarded(self.tasks_api)),
            ("/console/tasks/{task_id}", "GET", self.guarded(self.task_page)),
            ("/console/api/tasks/{task_id}", "GET", self.guarded(self.task_api)),
            ("/console/thumbs/{task_id}/{role}/{index}", "GET", self.guarded(self.thumb)),
            ("/console/tasks/{task_id}/cancel", "POST", self.guarded(self.cancel, action=True)),
            ("/console/tasks/{task_id}/again", "POST", self.guarded(self.again, action=True)),
            ("/console/vendors", "GET", self.guarded(self.vendors_page)),
            ("/console/costs", "GET", self.guarded(self.costs_page)),
            ("/console/users", "GET", self.guarded(self.users_page)),
            ("/console/users/revoke", "POST", self.guarded(self.revoke, action=True)),
            ("/console/budgets", "POST", self.guarded(self.set_budget, action=True)),
        ]
        for path, method, handler in routes:
            mcp.custom_route(path, methods=[method])(handler)


def add_console(mcp: MCPServer[Editor], settings: Settings) -> Console | None:
    """Mount the console on the server's routes if ``[console]`` has a token."""
    if not settings.console.enabled:
        return None
    console = Console(settings)
    console.mount(mcp)
    return console
