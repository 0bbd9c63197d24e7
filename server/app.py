"""Retouch's MCP server: the Editor's operations as tools, results as resources.

Finished tasks come back as a small JPEG preview the model can look at, plus resource links
to the full images — never megabytes of base64 in the model's context — and, when served
over HTTP, a signed link to each full image that a browser opens (``server/result_urls.py``).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import io
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, ParamSpec, TypeVar

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent
from PIL import Image
from pydantic import BaseModel, Field

from server.owners import owner_of
from server.result_urls import ResultURLs
from server.tasks_ext import TasksExtension
from server.tasks_legacy import LegacyTasks
from tools.config import Settings
from tools.errors import RetouchError
from tools.models import EditRequest, Expand, FunctionInfo, Task
from tools.service import Editor

INSTRUCTIONS = """\
Retouch edits images with words. Call list_functions to see what each function does and which
vendor runs it; edit_image starts an edit and waits up to wait_seconds; if the task is still
running, call check_task with its id. Finished tasks show a small preview; the full images are
the resource links (retouch://tasks/<id>/<n>), which can also be passed back as images to chain
edits; over HTTP each result also has a link (url) to give the user, which opens the full image
in a browser. Images may be http(s) URLs, data: URIs, earlier results, uploads
(retouch://uploads/<id>, from the server's /upload page), or local paths when allowed.
"""


P = ParamSpec("P")
R = TypeVar("R")


class FunctionList(BaseModel):
    functions: list[FunctionInfo]


class TaskList(BaseModel):
    tasks: list[Task]


class SharedEditor:
    """The server's lifespan: one running Editor for everyone who enters it.

    The Editor is the lifespan context, which tools read from
    ``ctx.request_context.lifespan_context``. The SDK enters the lifespan once per connection
    in memory and over stdio, and once per app over streamable HTTP, whose app enters it too
    for its own routes (:mod:`server.http`). The first to enter starts the Editor; the last
    to leave closes it.
    """

    def __init__(self, settings: Settings, *, allow_local_paths: bool) -> None:
        self._settings = settings
        self._allow_local_paths = allow_local_paths
        self._editor: Editor | None = None
        self._users = 0
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def __call__(self, _: MCPServer[Editor]) -> AsyncIterator[Editor]:
        async with self._lock:
            if self._editor is None:
                self._editor = await Editor(
                    self._settings, allow_local_paths=self._allow_local_paths
                ).start()
            self._users += 1
            editor = self._editor
        try:
            yield editor
        finally:
            async with self._lock:
                self._users -= 1
                if self._users == 0:
                    self._editor = None
                    await editor.close()


def reports_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """A tool whose Retouch errors reach the model as tool errors: the message, no traceback."""

    @functools.wraps(fn)
    async def tool(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except RetouchError as exc:
            raise ToolError(exc.message) from None

    return tool


def build_server(
    settings: Settings, *, allow_local_paths: bool = False, result_urls: ResultURLs | None = None
) -> MCPServer[Editor]:
    """The MCP server; with ``result_urls`` (served over HTTP) results carry signed links."""
    preview_px = settings.mcp.preview_px
    lifespan = SharedEditor(settings, allow_local_paths=allow_local_paths)

    async def render(editor: Editor, task: Task) -> CallToolResult:
        return await task_result(editor, task, preview_px, result_urls)

    mcp = MCPServer(
        "retouch",
        instructions=INSTRUCTIONS,
        lifespan=lifespan,
        extensions=[TasksExtension(render)],
        middleware=[LegacyTasks(render)],
    )

    def linked(task: Task) -> Task:
        """The task with a link in each result, when served over HTTP."""
        return result_urls.with_urls(task) if result_urls else task

    def progress(ctx: Context[Editor]) -> Callable[[Task], Awaitable[None]]:
        """Progress notifications for one waiting call (the value must only increase)."""
        steps = iter(range(1, 1_000_000))

        async def report(task: Task) -> None:
            message = f"{task.status.value}: {task.progress or 'waiting'}"
            await ctx.report_progress(next(steps), None, message)

        return report

    @mcp.tool()
    @reports_errors
    async def list_functions(ctx: Context[Editor], vendor: str | None = None) -> FunctionList:
        """List the editing functions: what each does, its parameters (JSON Schema), how many
        images it takes, whether it needs a mask, and which enabled vendors can run it."""
        editor = ctx.request_context.lifespan_context
        return FunctionList(functions=editor.list_functions(vendor))

    @mcp.tool()
    @reports_errors
    async def edit_image(
        ctx: Context[Editor],
        images: Annotated[
            list[str],
            Field(
                description="1–3 images: http(s) URL, data: URI, retouch://uploads/<id>, "
                "retouch://tasks/<id>/<n>, or a local path"
            ),
        ],
        prompt: str = "",
        function: str = "edit",
        mask: str | None = None,
        vendor: str | None = None,
        n: int = 1,
        seed: int | None = None,
        negative_prompt: str | None = None,
        watermark: bool | str | None = None,
        size: str | None = None,
        expand: Expand | None = None,
        upscale_factor: int | None = None,
        options: dict[str, Any] | None = None,
        wait_seconds: Annotated[float, Field(ge=0, le=600)] = 20,
        idempotency_key: Annotated[
            str | None,
            Field(
                max_length=200,
                description="Any string of yours: calling again with the same key returns "
                "the first call's task instead of starting (and paying for) another",
            ),
        ] = None,
    ) -> Annotated[CallToolResult, Task]:
        """Start an image edit and wait up to wait_seconds for it. Returns the task; when it
        has finished, a preview and links to the full images. Use check_task to keep waiting."""
        try:
            request = EditRequest(
                images=images,
                prompt=prompt,
                function=function,
                mask=mask,
                vendor=vendor,
                n=n,
                seed=seed,
                negative_prompt=negative_prompt,
                watermark=watermark,
                size=size,
                expand=expand,
                upscale_factor=upscale_factor,
                options=options or {},
            )
        except ValueError as exc:
            raise ToolError(_validation_message(exc)) from None
        editor = ctx.request_context.lifespan_context
        task = await editor.edit_image(
            request,
            owner=owner_of(ctx),
            wait_seconds=wait_seconds,
            on_progress=progress(ctx),
            key=f"mcp:{idempotency_key}" if idempotency_key else None,
        )
        return await task_result(editor, task, preview_px, result_urls)

    @mcp.tool()
    @reports_errors
    async def check_task(
        ctx: Context[Editor],
        task_id: str,
        wait_seconds: Annotated[float, Field(ge=0, le=600)] = 0,
    ) -> Annotated[CallToolResult, Task]:
        """The state of a task; with wait_seconds, wait up to that long for it to finish."""
        editor = ctx.request_context.lifespan_context
        task = await editor.check_task(task_id, wait_seconds, on_progress=progress(ctx))
        return await task_result(editor, task, preview_px, result_urls)

    @mcp.tool()
    @reports_errors
    async def cancel_task(ctx: Context[Editor], task_id: str) -> Task:
        """Cancel a task that has not finished (at the vendor too, where it allows that)."""
        return linked(await ctx.request_context.lifespan_context.cancel_task(task_id))

    @mcp.tool()
    @reports_errors
    async def list_tasks(
        ctx: Context[Editor], limit: Annotated[int, Field(ge=1, le=100)] = 10
    ) -> TaskList:
        """The most recent tasks, newest first."""
        tasks = await ctx.request_context.lifespan_context.list_tasks(limit=limit)
        return TaskList(tasks=[linked(t) for t in tasks])

    @mcp.resource(
        "retouch://tasks/{task_id}/{index}",
        name="result",
        description="A full-size result image of a task",
    )
    async def result(ctx: Context[Editor], task_id: str, index: str) -> bytes:
        editor = ctx.request_context.lifespan_context
        try:
            data, _ = await editor.result(task_id, int(index))
        except (RetouchError, ValueError) as exc:
            raise ResourceError(f"no result {index} for task {task_id}: {exc}") from None
        return data

    return mcp


async def task_result(
    editor: Editor, task: Task, preview_px: int, urls: ResultURLs | None = None
) -> CallToolResult:
    """A task as a tool result: text, structured record, previews and resource links; with
    ``urls``, a signed link to each full image (``results[i].url`` and a line of text)."""
    if urls is not None:
        task = urls.with_urls(task)
    content: list[Any] = [TextContent(type="text", text=describe(task))]
    for item in task.results:
        data, _ = await editor.result(task.id, item.index, task)
        preview = await asyncio.to_thread(make_preview, data, preview_px)
        content.append(ImageContent(type="image", data=preview, mime_type="image/jpeg"))
        content.append(
            ResourceLink(
                type="resource_link",
                uri=item.uri,
                name=f"result-{item.index}",
                description=f"full image {item.width}×{item.height}",
                mime_type=item.mime_type,
                size=item.bytes,
            )
        )
    return CallToolResult(
        content=content,
        structured_content=task.model_dump(mode="json"),
        is_error=task.status.value == "failed",
    )


def describe(task: Task) -> str:
    """One paragraph a model (or person) can act on."""
    head = f"Task {task.id}: {task.status.value} ({task.function} with {task.vendor})."
    if task.status.value in ("queued", "running"):
        return f"{head} {task.progress or ''} Call check_task to wait for it.".replace("  ", " ")
    lines = [head]
    for r in task.results:
        lines.append(f"Result {r.index}: {r.uri} ({r.width}×{r.height} {r.mime_type}).")
        if r.url:
            lines.append(f"Full image {r.index} for the user (a link that expires): {r.url}")
    for f in task.failures:
        lines.append(f"Image {f.index} failed: {f.message} [{f.code}].")
    if task.error:
        lines.append(f"Error [{task.error.code}]: {task.error.message}")
    if task.cost is not None:
        lines.append(f"Cost: {task.cost} {task.currency or ''} for {task.billed_images} image(s).")
    lines += [f"Note: {n}" for n in task.notes]
    return "\n".join(lines)


def make_preview(data: bytes, max_px: int) -> str:
    """A JPEG no larger than ``max_px`` on its longest side, base64-encoded."""
    with Image.open(io.BytesIO(data)) as image:
        image.draft("RGB", (max_px, max_px))
        image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
        if image.mode != "RGB":
            image = image.convert("RGB")
        buf = io.BytesIO()
        image.save(buf, "JPEG", quality=80, optimize=True)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _validation_message(exc: ValueError) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        parts = []
        for err in errors():
            loc = ".".join(str(p) for p in err["loc"]) or "request"
            parts.append(f"{loc}: {err['msg']}")
        return "; ".join(parts)
    return str(exc)
