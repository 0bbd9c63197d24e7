"""What both forms of MCP tasks share: a Retouch task seen as an MCP task.

The MCP task id is the Retouch task id, so any server process on the same store answers for
it, after a restart too. A task belongs to its owner: another owner's id is answered exactly
as an unknown id is. The two forms are :mod:`server.tasks_ext` (the
``io.modelcontextprotocol/tasks`` extension) and :mod:`server.tasks_legacy` (protocol
2025-11-25).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from mcp.server.context import ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp.types import INVALID_PARAMS, CallToolResult
from starlette.requests import Request

from server.owners import LOCAL, owner_of_request
from tools.errors import NotFound
from tools.models import Task
from tools.service import Editor

#: The one tool whose calls become MCP tasks.
TASK_TOOL = "edit_image"

#: What ``edit_image`` would have returned for a task: preview, links, structured content.
Render = Callable[[Editor, Task], Awaitable[CallToolResult]]

Status = Literal["working", "completed", "failed", "cancelled"]


@dataclass(frozen=True)
class TaskState:
    """A Retouch task as an MCP task. ``failed`` means the edit failed (the forms differ on
    how they show that); times are ISO 8601 in UTC, durations milliseconds."""

    task_id: str
    status: Status
    message: str
    created_at: str
    last_updated_at: str
    ttl_ms: int
    poll_interval_ms: int


def task_state(editor: Editor, task: Task) -> TaskState:
    """The MCP view of ``task``: its status and progress, kept as long as the store keeps
    finished tasks, polled as often as its vendor is."""
    vendor = editor.vendors.get(task.vendor)
    poll_s = vendor.settings.poll_interval_s if vendor is not None else 1.0
    return TaskState(
        task_id=task.id,
        status=_STATUS[task.status.value],
        message=status_message(task),
        created_at=_iso(task.created_at),
        last_updated_at=_iso(task.updated_at),
        ttl_ms=round(editor.settings.store.retention_days * 86_400_000),
        poll_interval_ms=max(1, round(poll_s * 1000)),
    )


def status_message(task: Task) -> str:
    """The task's progress in words, or how it ended."""
    match task.status.value:
        case "queued":
            return task.progress or f"queued for {task.vendor}"
        case "running":
            return task.progress or f"running with {task.vendor}"
        case "succeeded":
            return f"{len(task.results)} result(s) ready"
        case "failed":
            return f"{task.error.code}: {task.error.message}" if task.error else "failed"
        case _:
            return "canceled"


async def owned_task(editor: Editor, owner: str, task_id: str) -> Task:
    """The owner's task, or the JSON-RPC error both forms give for an unknown id (the
    Editor answers another owner's id as an unknown one)."""
    try:
        return await editor.check_task(task_id, owner=owner)
    except NotFound:
        raise MCPError(INVALID_PARAMS, "Failed to retrieve task: Task not found") from None


def requester(ctx: ServerRequestContext[Any, Any]) -> str:
    """The owner of a raw MCP request: the bearer token's user over HTTP, else local."""
    request = ctx.request
    return owner_of_request(request) if isinstance(request, Request) else LOCAL


def editor_of(ctx: ServerRequestContext[Any, Any]) -> Editor:
    editor = ctx.lifespan_context
    assert isinstance(editor, Editor), "a server made by server.app.build_server"
    return editor


def wire(result: CallToolResult) -> dict[str, Any]:
    """A tool result as it goes on the wire, to sit inside another result."""
    return result.model_dump(by_alias=True, mode="json", exclude_none=True)


_STATUS: dict[str, Status] = {
    "queued": "working",
    "running": "working",
    "succeeded": "completed",
    "failed": "failed",
    "canceled": "cancelled",
}


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
