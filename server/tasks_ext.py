"""The MCP tasks extension, ``io.modelcontextprotocol/tasks`` (SEP-2663), on protocol
2026-07-28.

An ``edit_image`` call whose request declares the extension in
``_meta["io.modelcontextprotocol/clientCapabilities"].extensions`` is answered with a task
handle (``resultType: "task"``) as soon as the Retouch task is stored. ``tasks/get`` gives its
status and progress, and once it has ended the result ``edit_image`` would have returned (an
edit that failed is a ``completed`` task whose result has ``isError: true``); ``tasks/cancel``
cancels it, at the vendor too; ``tasks/update`` is acknowledged, since a Retouch task never
waits for input. A request that does not declare the extension never gets a task.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.extension import Extension, MethodBinding
from mcp.shared.exceptions import MCPError
from mcp.types import (
    CLIENT_CAPABILITIES_META_KEY,
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    CallToolRequestParams,
    CallToolResult,
    RequestParams,
    RequestParamsMeta,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from server.mcp_tasks import (
    TASK_TOOL,
    Render,
    TaskState,
    editor_of,
    owned_task,
    requester,
    task_state,
    wire,
)

IDENTIFIER = "io.modelcontextprotocol/tasks"


class TaskParams(RequestParams):
    """``tasks/get`` and ``tasks/cancel``: which task."""

    task_id: str


class UpdateParams(TaskParams):
    """``tasks/update``: answers to a task's input requests (Retouch never asks any)."""

    input_responses: dict[str, Any] | None = None


class TasksExtension(Extension):
    """``edit_image`` as a task for the clients that declare the extension on the request."""

    identifier = IDENTIFIER

    def __init__(self, render: Render) -> None:
        self.render = render

    def methods(self) -> Sequence[MethodBinding]:
        modern = frozenset(MODERN_PROTOCOL_VERSIONS)
        return (
            MethodBinding("tasks/get", TaskParams, self.get, modern),
            MethodBinding("tasks/cancel", TaskParams, self.cancel, modern),
            MethodBinding("tasks/update", UpdateParams, self.update, modern),
        )

    async def intercept_tool_call(
        self,
        params: CallToolRequestParams,
        ctx: ServerRequestContext[Any, Any],
        call_next: CallNext,
    ) -> HandlerResult:
        if (
            params.name != TASK_TOOL
            or ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS
            or not declares(params.meta)
        ):
            return await call_next(ctx)
        # The task is the answer, so the tool stores it and returns at once, whatever wait it
        # was given (the handler is invoked with these very params).
        params.arguments = {**(params.arguments or {}), "wait_seconds": 0}
        result = await call_next(ctx)
        stored = result.structured_content if isinstance(result, CallToolResult) else None
        if not isinstance(stored, Mapping) or not isinstance(stored.get("id"), str):
            return result  # refused before anything was stored: the tool's own error
        editor = editor_of(ctx)
        task = await owned_task(editor, requester(ctx), stored["id"])
        return {"resultType": "task", **fields(task_state(editor, task))}

    async def get(self, ctx: ServerRequestContext[Any, Any], params: TaskParams) -> HandlerResult:
        require_declared(ctx)
        editor = editor_of(ctx)
        task = await owned_task(editor, requester(ctx), params.task_id)
        state = task_state(editor, task)
        answer: dict[str, Any] = {"resultType": "complete", **fields(state)}
        if answer["status"] == "completed":
            answer["result"] = wire(await self.render(editor, task))
        return answer

    async def cancel(
        self, ctx: ServerRequestContext[Any, Any], params: TaskParams
    ) -> HandlerResult:
        require_declared(ctx)
        editor = editor_of(ctx)
        task = await owned_task(editor, requester(ctx), params.task_id)
        if not task.finished:
            await editor.cancel_task(task.id)
        return {"resultType": "complete"}

    async def update(
        self, ctx: ServerRequestContext[Any, Any], params: UpdateParams
    ) -> HandlerResult:
        require_declared(ctx)
        await owned_task(editor_of(ctx), requester(ctx), params.task_id)
        return {"resultType": "complete"}


def fields(state: TaskState) -> dict[str, Any]:
    """A task in this extension's words: an edit that failed still *completed* (its result
    says ``isError``); ``failed`` is kept for JSON-RPC errors, which a stored edit never has."""
    return {
        "taskId": state.task_id,
        "status": "completed" if state.status == "failed" else state.status,
        "statusMessage": state.message,
        "createdAt": state.created_at,
        "lastUpdatedAt": state.last_updated_at,
        "ttlMs": state.ttl_ms,
        "pollIntervalMs": state.poll_interval_ms,
    }


def declares(meta: RequestParamsMeta | Mapping[str, Any] | None) -> bool:
    """Whether a request's ``_meta`` declares this extension among the client's capabilities."""
    capabilities = (meta or {}).get(CLIENT_CAPABILITIES_META_KEY)
    extensions = capabilities.get("extensions") if isinstance(capabilities, Mapping) else None
    return isinstance(extensions, Mapping) and IDENTIFIER in extensions


def require_declared(ctx: ServerRequestContext[Any, Any]) -> None:
    """The extension's methods answer only requests that declare it (-32021 otherwise)."""
    if not declares(ctx.meta):
        raise MCPError(
            MISSING_REQUIRED_CLIENT_CAPABILITY,
            "Missing required client capability",
            {"requiredCapabilities": {"extensions": {IDENTIFIER: {}}}},
        )
