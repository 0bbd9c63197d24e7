"""Retouch as an MCP App (``io.modelcontextprotocol/ui``, through ``mcp.server.apps``).

Hosts that render Apps show ``edit_image`` and ``check_task`` results in the editor page,
``ui://retouch/editor`` (``server/static/editor.html``, built from ``ui/``): status while the
task runs, before/after with zoom, the variants, the full images, a painted mask for the next
edit, and the user's own images, which the page sends to the app-only tool ``upload_image``;
the app-only ``task_input`` gives it a task's input to show beside the results.

A client that does not declare Apps gets what it always got: the tools' ``_meta`` links are
all it sees of this; the app-only tools are neither listed to it nor served.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import pybase64
from mcp.server import MCPServer
from mcp.server.apps import Apps, client_supports_apps
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, ImageContent, TextContent
from pydantic import Field

from server.owners import owner_of
from tools.config import Settings
from tools.errors import NotFound, RetouchError
from tools.models import Upload
from tools.service import Editor

EDITOR_URI = "ui://retouch/editor"
PAGE = Path(__file__).parent / "static" / "editor.html"
#: ``_meta`` of the tools whose results the page shows; the flat key is the older form that
#: hosts from before ``_meta.ui`` read (the ext-apps server helper writes both too).
EDITOR_LINK: dict[str, Any] = {"ui": {"resourceUri": EDITOR_URI}, "ui/resourceUri": EDITOR_URI}
UPLOAD_TOOL = "upload_image"
INPUT_TOOL = "task_input"
#: The tools only the page calls.
APP_ONLY = frozenset({UPLOAD_TOOL, INPUT_TOOL})
#: Room in an MCP request for the JSON around an upload's base64.
ENVELOPE_BYTES = 64 * 1024


def base64_length(size: int) -> int:
    """Characters of the base64 of ``size`` bytes (with padding)."""
    return 4 * math.ceil(size / 3)


def request_body_limit(settings: Settings) -> int:
    """The largest MCP request body: an ``upload_image`` call of an image up to a quarter over
    ``media.max_bytes`` (which the tool refuses in words; a larger body gets a 413)."""
    return base64_length(settings.media.max_bytes * 5 // 4) + ENVELOPE_BYTES


class EditorApp(Apps):
    """The page, ``upload_image`` and ``task_input``, made with the SDK's Apps helpers."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.add_html_resource(
            EDITOR_URI,
            PAGE.read_text(encoding="utf-8"),
            name="retouch-editor",
            title="Retouch editor",
            description="Before/after, zoom, variants, mask painting and uploads for Retouch tasks",
            prefers_border=True,
        )
        max_bytes = settings.media.max_bytes
        max_chars = base64_length(max_bytes)

        @self.tool(
            resource_uri=EDITOR_URI,
            visibility=["app"],
            name=UPLOAD_TOOL,
            title="Upload an image",
            description="Store an image from the user's computer (base64) for later edits; "
            "answers its retouch://uploads/<id>. For the editor page only.",
        )
        async def upload_image(
            ctx: Context[Editor],
            data: Annotated[str, Field(description="The image file's bytes, base64-encoded.")],
        ) -> Upload:
            if len(data) > max_chars:
                raise ToolError(f"the image is too large: the limit is {max_bytes / 1e6:.0f} MB")
            try:
                raw = pybase64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise ToolError("data is not base64") from None
            if not raw:
                raise ToolError("the upload is empty: send an image")
            editor = ctx.request_context.lifespan_context
            try:
                return await editor.put_upload(raw, owner_of(ctx))
            except RetouchError as exc:
                raise ToolError(exc.message) from None

        @self.tool(
            resource_uri=EDITOR_URI,
            visibility=["app"],
            name=INPUT_TOOL,
            title="A task's input image",
            description="Input image `index` of one of your tasks, to show beside its results. "
            "For the editor page only.",
        )
        async def task_input(
            ctx: Context[Editor], task_id: str, index: Annotated[int, Field(ge=0)] = 0
        ) -> CallToolResult:
            editor = ctx.request_context.lifespan_context
            try:
                data, mime = await input_image(editor, owner_of(ctx), task_id, index)
            except RetouchError:
                raise ToolError(f"no input {index} for task {task_id}") from None
            encoded = pybase64.b64encode(data).decode("ascii")
            return CallToolResult(
                content=[ImageContent(type="image", data=encoded, mime_type=mime)]
            )

    def install(self, mcp: MCPServer[Editor]) -> None:
        """Add the page and the app-only tools to ``mcp``, and keep them from clients
        without Apps.

        Not through ``MCPServer(extensions=[...])``, which would also put
        ``io.modelcontextprotocol/ui`` among the server's capabilities for every client: Apps
        (2026-01-26) asks that only of clients, and hosts go by the tools' ``_meta``.
        """
        for tool in self.tools():
            mcp.add_tool(tool.fn, meta=tool.meta, **tool.kwargs)
        for binding in self.resources():
            mcp.add_resource(binding.resource)
        mcp.middleware.append(hidden_without_apps)


def unknown_tool(name: str) -> CallToolResult:
    """The SDK's answer for a tool it does not have."""
    text = TextContent(type="text", text=f"Unknown tool: {name}")
    return CallToolResult(content=[text], is_error=True)


async def hidden_without_apps(
    ctx: ServerRequestContext[Any, Any], call_next: CallNext
) -> HandlerResult:
    """Server middleware: a client without Apps sees the server as it was. The app-only
    tools are not there (its model would see them, and no page of its can call them), nor
    is the page in ``resources/list`` (the spec lets servers leave ``ui://`` out)."""
    if client_supports_apps(ctx):
        return await call_next(ctx)
    if ctx.method == "tools/call":
        params: Mapping[str, Any] = ctx.params or {}
        if params.get("name") in APP_ONLY:
            return unknown_tool(str(params["name"]))
        return await call_next(ctx)
    result = await call_next(ctx)
    if ctx.method == "tools/list" and isinstance(result, dict):
        tools = result.get("tools") or []
        return {**result, "tools": [t for t in tools if t.get("name") not in APP_ONLY]}
    if ctx.method == "resources/list" and isinstance(result, dict):
        listed = result.get("resources") or []
        return {**result, "resources": [r for r in listed if r.get("uri") != EDITOR_URI]}
    return result


async def input_image(editor: Editor, owner: str, task_id: str, index: int) -> tuple[bytes, str]:
    """Input image ``index`` of the owner's task: its bytes and MIME type (NotFound for an
    unknown task, another owner's, or an index it does not have)."""
    await editor.check_task(task_id, owner=owner)
    shas = await editor.store.task_blobs(task_id, "input")
    if not 0 <= index < len(shas):
        raise NotFound(f"the task has no input {index}")
    image = await editor.store.read_blob(shas[index])
    return image.data, image.mime_type
