"""MCP tasks in the form of protocol 2025-11-25, which the clients that ship task support
speak today, on connections of the initialize handshake.

The SDK knows this form's types but routes none of it, and it trims every handshake-era
result to the core shapes, so this is a server middleware that answers before that: it
advertises ``capabilities.tasks`` and ``execution.taskSupport: "optional"`` on ``edit_image``,
turns an ``edit_image`` call that carries ``params.task`` into a ``CreateTaskResult`` once the
Retouch task is stored, and serves ``tasks/get``, ``tasks/result``, ``tasks/list`` and
``tasks/cancel``. A call without ``params.task`` is left as it was.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    CancelTaskResult,
    CreateTaskResult,
    GetTaskPayloadRequestParams,
    GetTaskRequestParams,
    GetTaskResult,
    ListTasksResult,
    PaginatedRequestParams,
    ServerTasksCapability,
    ServerTasksRequestsCapability,
    Task,
    TaskMetadata,
    TasksCallCapability,
    TasksCancelCapability,
    TasksListCapability,
    TasksToolsCapability,
)
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, ValidationError

from server.mcp_tasks import (
    TASK_TOOL,
    Render,
    editor_of,
    owned_task,
    requester,
    task_state,
    wire,
)
from tools.models import Task as RetouchTask
from tools.service import Editor

RELATED_TASK = "io.modelcontextprotocol/related-task"
#: Tasks per ``tasks/list`` page, and how far back the list goes.
PAGE = 50
MAX_LISTED = 1000
#: How long ``tasks/cancel`` waits for a running task to stop (at the vendor) before it
#: answers with the task as it is then.
CANCEL_WAIT_S = 10.0

M = TypeVar("M", bound=BaseModel)

CAPABILITY = ServerTasksCapability(
    list=TasksListCapability(),
    cancel=TasksCancelCapability(),
    requests=ServerTasksRequestsCapability(tools=TasksToolsCapability(call=TasksCallCapability())),
)


class LegacyTasks:
    """The 2025-11-25 task methods, for handshake-era connections only."""

    def __init__(self, render: Render) -> None:
        self.render = render

    async def __call__(
        self, ctx: ServerRequestContext[Any, Any], call_next: CallNext
    ) -> HandlerResult:
        if ctx.request_id is None or ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            return await call_next(ctx)
        params: Mapping[str, Any] = ctx.params or {}
        match ctx.method:
            case "initialize":
                return advertise(await call_next(ctx))
            case "tools/list":
                return mark_task_tool(await call_next(ctx))
            case "tools/call" if params.get("task") is not None:
                return await self.start(ctx, params, call_next)
            case "tasks/get":
                return await self.get(ctx, parse(GetTaskRequestParams, params).task_id)
            case "tasks/result":
                return await self.result(ctx, parse(GetTaskPayloadRequestParams, params).task_id)
            case "tasks/list":
                return await self.listing(ctx, parse(PaginatedRequestParams, params).cursor)
            case "tasks/cancel":
                return await self.cancel(ctx, parse(GetTaskRequestParams, params).task_id)
        return await call_next(ctx)

    async def start(
        self, ctx: ServerRequestContext[Any, Any], params: Mapping[str, Any], call_next: CallNext
    ) -> HandlerResult:
        """Call the tool without waiting, then answer with the task it stored."""
        parse(TaskMetadata, params["task"])
        if params.get("name") != TASK_TOOL:
            raise MCPError(METHOD_NOT_FOUND, f"only {TASK_TOOL} runs as a task")
        arguments = params.get("arguments")
        arguments = {**(arguments if isinstance(arguments, Mapping) else {}), "wait_seconds": 0}
        call = {**{k: v for k, v in params.items() if k != "task"}, "arguments": arguments}
        result = await call_next(replace(ctx, params=call))
        stored = result.get("structuredContent") if isinstance(result, Mapping) else None
        if not isinstance(stored, Mapping) or not isinstance(stored.get("id"), str):
            raise MCPError(INVALID_PARAMS, refusal(result))
        editor = editor_of(ctx)
        task = await owned_task(editor, requester(ctx), stored["id"])
        return dump(CreateTaskResult(task=as_task(editor, task)))

    async def get(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> HandlerResult:
        editor = editor_of(ctx)
        task = await owned_task(editor, requester(ctx), task_id)
        return dump(GetTaskResult.model_validate(dump(as_task(editor, task))))

    async def result(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> HandlerResult:
        """The tool result, once the task has ended (this waits for that)."""
        editor = editor_of(ctx)
        task = await owned_task(editor, requester(ctx), task_id)
        while not task.finished:
            task = await editor.check_task(task.id, wait_seconds=600)
        answer = wire(await self.render(editor, task))
        answer["_meta"] = {**answer.get("_meta", {}), RELATED_TASK: {"taskId": task.id}}
        return answer

    async def listing(
        self, ctx: ServerRequestContext[Any, Any], cursor: str | None
    ) -> HandlerResult:
        """The caller's tasks, newest first, a page at a time (the cursor is an offset)."""
        start = 0
        if cursor is not None:
            if not cursor.isdecimal() or int(cursor) >= MAX_LISTED:
                raise MCPError(INVALID_PARAMS, "Invalid cursor")
            start = int(cursor)
        editor = editor_of(ctx)
        tasks = await editor.list_tasks(owner=requester(ctx), limit=start + PAGE + 1)
        page = tasks[start : start + PAGE]
        more = len(tasks) > start + PAGE and start + PAGE < MAX_LISTED
        return dump(
            ListTasksResult(
                tasks=[as_task(editor, t) for t in page],
                next_cursor=str(start + PAGE) if more else None,
            )
        )

    async def cancel(self, ctx: ServerRequestContext[Any, Any], task_id: str) -> HandlerResult:
        editor = editor_of(ctx)
        task = await owned_task(editor, requester(ctx), task_id)
        if task.finished:
            status = task_state(editor, task).status
            raise MCPError(INVALID_PARAMS, f"Cannot cancel task: already {status}")
        task = await editor.cancel_task(task.id)
        if not task.finished:
            task = await editor.check_task(task.id, wait_seconds=CANCEL_WAIT_S)
        return dump(CancelTaskResult.model_validate(dump(as_task(editor, task))))


def as_task(editor: Editor, task: RetouchTask) -> Task:
    """A Retouch task in this form's words: an edit that failed is a ``failed`` task."""
    state = task_state(editor, task)
    return Task(
        task_id=state.task_id,
        status=state.status,
        status_message=state.message,
        created_at=state.created_at,
        last_updated_at=state.last_updated_at,
        ttl=state.ttl_ms,
        poll_interval=state.poll_interval_ms,
    )


def advertise(result: HandlerResult) -> HandlerResult:
    """The initialize result, with the tasks this server runs."""
    if isinstance(result, dict) and isinstance(result.get("capabilities"), dict):
        result["capabilities"]["tasks"] = dump(CAPABILITY)
    return result


def mark_task_tool(result: HandlerResult) -> HandlerResult:
    """The tool list, with ``edit_image`` marked as able to run as a task."""
    if isinstance(result, dict):
        for tool in result.get("tools", []):
            if isinstance(tool, dict) and tool.get("name") == TASK_TOOL:
                tool["execution"] = {"taskSupport": "optional"}
    return result


def parse(model: type[M], params: object) -> M:
    try:
        return model.model_validate(params, by_name=False)
    except ValidationError:
        raise MCPError(INVALID_PARAMS, "Invalid request parameters") from None


def refusal(result: HandlerResult) -> str:
    """The message of a tool result that stored no task."""
    content = result.get("content") if isinstance(result, Mapping) else None
    texts = [c.get("text") for c in content or [] if isinstance(c, Mapping)]
    return next((t for t in texts if isinstance(t, str)), "the edit was refused")


def dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(by_alias=True, mode="json", exclude_none=True)
