"""Long edits as MCP tasks: the ``io.modelcontextprotocol/tasks`` extension (SEP-2663) and the
2025-11-25 form, through the SDK's client where it can declare the extension and raw JSON-RPC
over HTTP where it cannot; tasks are their owner's alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import httpx
import pytest
import uvicorn
from mcp import Client
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp.shared.exceptions import MCPError
from mcp.types import CallToolResult, ImageContent, Request, RequestParams, ResourceLink, Result
from pydantic import TypeAdapter
from starlette.types import Receive, Scope, Send

from server.app import build_server
from server.http import build_http_app
from server.owners import set_owner
from tests.conftest import MakeSettings, data_uri, sample
from tests.fakes.dashscope import FakeDashScope
from tests.mcp_wire import TASKS, Wire
from tests.test_e2e_vendors import KEY, dashscope_table
from tests.test_mcp import free_port
from tools.config import Settings

WEEK_MS = 7 * 86_400_000
COFFEE = data_uri(sample("coffee.png"))
LINEART = {"images": [COFFEE], "function": "lineart"}
#: An edit the fake DashScope runs (its poll interval is 0.05 s).
COLORIZE = {"images": [COFFEE], "function": "colorization", "vendor": "dashscope"}


# ---- the SDK's client, declaring the extension ----------------------------------------------


class CreateTask(Result):
    result_type: Literal["task"] = "task"
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str
    last_updated_at: str
    ttl_ms: int | None
    poll_interval_ms: int | None = None


class TaskId(RequestParams):
    task_id: str


class GetTask(Request[TaskId, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskId


RAW = TypeAdapter(dict[str, Any])


class TasksClient(ClientExtension):
    """The client half of the extension: a task handle is polled to its result."""

    identifier = TASKS

    def __init__(self) -> None:
        self.seen: list[str] = []

    def claims(self) -> list[ResultClaim[Any]]:
        return [ResultClaim(result_type="task", model=CreateTask, resolve=self.resolve)]

    async def resolve(self, created: CreateTask, ctx: ClaimContext) -> CallToolResult:
        get = GetTask(params=TaskId(task_id=created.task_id))
        while True:
            task = await ctx.session.send_request(get, RAW)
            self.seen.append(task["status"])
            if task["status"] != "working":
                return CallToolResult.model_validate(task["result"])
            await asyncio.sleep(0.05)


async def test_a_client_declaring_the_extension_gets_its_edit_through_a_task(
    settings: Settings,
) -> None:
    extension = TasksClient()
    async with Client(build_server(settings), extensions=[extension]) as client:
        capabilities = client.session.server_capabilities
        assert capabilities is not None and capabilities.extensions == {TASKS: {}}
        handle = await client.session.call_tool(
            "edit_image", LINEART, allow_claimed=True, allow_input_required=False
        )
        assert isinstance(handle, CreateTask)
        assert handle.status == "working" and handle.status_message
        assert (handle.ttl_ms, handle.poll_interval_ms) == (WEEK_MS, 1000)  # local: 1 s polls
        assert handle.created_at.endswith("Z") and handle.last_updated_at >= handle.created_at

        done = await client.call_tool("edit_image", LINEART)  # the claim polls tasks/get
    assert extension.seen[-1] == "completed"
    assert not done.is_error
    assert [type(c) for c in done.content][1:] == [ImageContent, ResourceLink]
    assert done.structured_content["status"] == "succeeded"


async def test_a_client_that_does_not_declare_the_extension_gets_no_task(
    settings: Settings,
) -> None:
    async with Client(build_server(settings)) as client:
        done = await client.call_tool("edit_image", LINEART)
        assert isinstance(done, CallToolResult)
        assert done.structured_content["status"] == "succeeded"  # waited, as before
        with pytest.raises(MCPError) as refused:
            await client.session.send_request(GetTask(params=TaskId(task_id="0" * 32)), RAW)
    assert refused.value.code == -32021
    assert refused.value.data == {"requiredCapabilities": {"extensions": {TASKS: {}}}}


# ---- raw JSON-RPC over HTTP ---------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FakeDashScope]:
    with FakeDashScope(api_key=KEY) as server:
        yield server


@pytest.fixture
def ds_settings(make_settings: MakeSettings, fake: FakeDashScope) -> Settings:
    return make_settings(dashscope_table("dashscope", fake))


@asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[str]:
    """The HTTP app on a free port in this event loop. The ``X-Owner`` header says who is
    asking (a deployment's owners come from their bearer tokens)."""
    app = build_http_app(build_server(settings), settings)

    async def as_owner(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            set_owner(scope, dict(scope["headers"]).get(b"x-owner", b"local").decode())
        await app(scope, receive, send)

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(as_owner, host="127.0.0.1", port=port, log_level="warning")
    )
    running = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        server.should_exit = True
        await running


@asynccontextmanager
async def wire(settings: Settings, *owners: str) -> AsyncIterator[list[Wire]]:
    """One raw client per owner, on one server."""
    async with serve(settings) as url, httpx.AsyncClient(timeout=60) as http:
        clients = []
        for owner in owners:
            client = httpx.AsyncClient(timeout=60, headers={"X-Owner": owner})
            clients.append(client)
        try:
            yield [Wire(c, url) for c in clients] or [Wire(http, url)]
        finally:
            for client in clients:
                await client.aclose()


async def until(ask: Callable[[], Awaitable[dict[str, Any]]], *statuses: str) -> dict[str, Any]:
    """Ask again until the task's status is one of ``statuses``; the last answer's result."""
    for _ in range(400):
        answer = await ask()
        result = answer["result"]
        status = result["task"]["status"] if "task" in result else result["status"]
        if status in statuses:
            return dict(result)
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {status}")


async def test_extension_form_over_http(ds_settings: Settings) -> None:
    async with wire(ds_settings) as (client,):
        handle = (await client.modern("tools/call", {"name": "edit_image", "arguments": COLORIZE}))[
            "result"
        ]
        assert handle["resultType"] == "task"
        assert handle["status"] == "working"
        assert handle["pollIntervalMs"] == 50 and handle["ttlMs"] == WEEK_MS
        assert {"taskId", "createdAt", "lastUpdatedAt", "statusMessage"} <= set(handle)
        task_id = handle["taskId"]

        def get() -> Awaitable[dict[str, Any]]:
            return client.modern("tasks/get", {"taskId": task_id})

        working = (await get())["result"]
        assert working["resultType"] == "complete" and "result" not in working
        done = await until(get, "completed", "failed", "cancelled")
        assert done["status"] == "completed" and done["statusMessage"] == "1 result(s) ready"
        result = done["result"]
        assert result["isError"] is False
        assert [c["type"] for c in result["content"]] == ["text", "image", "resource_link"]
        assert result["structuredContent"]["id"] == task_id
        assert result["content"][2]["uri"] == f"retouch://tasks/{task_id}/0"

        plain = await client.modern(
            "tools/call", {"name": "edit_image", "arguments": COLORIZE}, declare=False
        )
        assert "resultType" not in plain["result"] or plain["result"]["resultType"] != "task"
        assert plain["result"]["structuredContent"]["status"] in ("queued", "running", "succeeded")
        refused = await client.modern("tasks/get", {"taskId": task_id}, declare=False)
        assert refused["error"]["code"] == -32021


async def test_a_failed_edit_is_a_completed_task_whose_result_is_an_error(
    ds_settings: Settings, fake: FakeDashScope
) -> None:
    fake.fail_with = ("InternalError", "the model fell over")
    async with wire(ds_settings) as (client,):
        handle = await client.modern("tools/call", {"name": "edit_image", "arguments": COLORIZE})
        task_id = handle["result"]["taskId"]  # stored first, failed at the vendor later
        done = await until(
            lambda: client.modern("tasks/get", {"taskId": task_id}), "completed", "failed"
        )
    assert done["status"] == "completed"
    assert done["result"]["isError"] is True
    assert "the model fell over" in done["result"]["content"][0]["text"]
    assert done["result"]["structuredContent"]["status"] == "failed"


async def test_a_refused_edit_is_the_tools_own_error_not_a_task(settings: Settings) -> None:
    async with wire(settings) as (client,):
        answer = await client.modern(
            "tools/call", {"name": "edit_image", "arguments": {**LINEART, "function": "teleport"}}
        )
    assert answer["result"]["isError"] is True
    assert "unknown function 'teleport'" in answer["result"]["content"][0]["text"]


async def test_cancel_through_the_extension_reaches_the_vendor(
    ds_settings: Settings, fake: FakeDashScope
) -> None:
    fake.task_plan = ["PENDING"]  # never ends on its own
    async with wire(ds_settings) as (client,):
        handle = await client.modern("tools/call", {"name": "edit_image", "arguments": COLORIZE})
        task_id = handle["result"]["taskId"]

        def get() -> Awaitable[dict[str, Any]]:
            return client.modern("tasks/get", {"taskId": task_id})

        for _ in range(200):  # until the vendor has it
            if "PENDING" in (await get())["result"]["statusMessage"]:
                break
            await asyncio.sleep(0.05)
        ack = await client.modern("tasks/cancel", {"taskId": task_id})
        assert ack["result"] == {"resultType": "complete", "_meta": ack["result"]["_meta"]}
        done = await until(get, "cancelled", "completed")
        update = await client.modern("tasks/update", {"taskId": task_id, "inputResponses": {}})
    assert done["status"] == "cancelled" and "result" not in done
    assert len(fake.requests_to("cancel")) == 1
    assert update["result"]["resultType"] == "complete"


async def test_2025_11_25_form_over_http(ds_settings: Settings, fake: FakeDashScope) -> None:
    async with wire(ds_settings) as (client,):
        init = (await client.initialize())["result"]
        assert init["capabilities"]["tasks"] == {
            "list": {},
            "cancel": {},
            "requests": {"tools": {"call": {}}},
        }
        tools = {t["name"]: t for t in (await client.legacy("tools/list"))["result"]["tools"]}
        assert tools["edit_image"]["execution"] == {"taskSupport": "optional"}
        assert "execution" not in tools["check_task"]

        call = {"name": "edit_image", "arguments": COLORIZE, "task": {"ttl": 60_000}}
        created = (await client.legacy("tools/call", call))["result"]
        task = created["task"]
        assert task["status"] == "working" and task["pollInterval"] == 50
        assert task["ttl"] == WEEK_MS and {"createdAt", "lastUpdatedAt"} <= set(task)
        task_id = task["taskId"]

        done = await until(
            lambda: client.legacy("tasks/get", {"taskId": task_id}), "completed", "failed"
        )
        assert done["status"] == "completed" and done["statusMessage"] == "1 result(s) ready"
        result = (await client.legacy("tasks/result", {"taskId": task_id}))["result"]
        assert result["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task_id}
        assert [c["type"] for c in result["content"]] == ["text", "image", "resource_link"]
        assert result["isError"] is False
        listed = (await client.legacy("tasks/list"))["result"]
        assert task_id in [t["taskId"] for t in listed["tasks"]]
        ended = await client.legacy("tasks/cancel", {"taskId": task_id})
        assert ended["error"]["code"] == -32602 and "already completed" in ended["error"]["message"]

        # A failed edit: a failed task whose result (tasks/result) is the tool's error.
        fake.fail_with = ("InternalError", "the model fell over")
        failed_id = (await client.legacy("tools/call", call))["result"]["task"]["taskId"]
        failed = (await client.legacy("tasks/result", {"taskId": failed_id}))["result"]
        assert failed["isError"] is True and "the model fell over" in failed["content"][0]["text"]
        state = (await client.legacy("tasks/get", {"taskId": failed_id}))["result"]
        assert state["status"] == "failed" and "InternalError" in state["statusMessage"]

        # A cancel: the task is cancelled before the answer.
        fake.fail_with = None
        fake.task_plan = ["PENDING"]
        pending_id = (await client.legacy("tools/call", call))["result"]["task"]["taskId"]
        canceled = (await client.legacy("tasks/cancel", {"taskId": pending_id}))["result"]
        assert canceled["taskId"] == pending_id and canceled["status"] == "cancelled"

        # What cannot run as a task, and what is refused before a task exists.
        other = await client.legacy("tools/call", {**call, "name": "list_tasks", "arguments": {}})
        assert other["error"]["code"] == -32601
        bad = await client.legacy(
            "tools/call", {**call, "arguments": {**COLORIZE, "function": "teleport"}}
        )
        assert bad["error"]["code"] == -32602 and "teleport" in bad["error"]["message"]
        plain = await client.legacy("tools/call", {"name": "edit_image", "arguments": LINEART})
        assert "task" not in plain["result"] and plain["result"]["content"]
        cursor = await client.legacy("tasks/list", {"cursor": "not-a-cursor"})
        assert cursor["error"]["code"] == -32602


async def test_tasks_are_their_owners_alone(ds_settings: Settings, fake: FakeDashScope) -> None:
    fake.task_plan = ["PENDING"]
    async with wire(ds_settings, "alice", "bob") as (alice, bob):
        ext_id = (await alice.modern("tools/call", {"name": "edit_image", "arguments": COLORIZE}))[
            "result"
        ]["taskId"]
        await alice.initialize()
        await bob.initialize()
        call = {"name": "edit_image", "arguments": COLORIZE, "task": {}}
        old_id = (await alice.legacy("tools/call", call))["result"]["task"]["taskId"]
        unknown = "0" * 32

        for task_id in (ext_id, old_id):
            for method in ("tasks/get", "tasks/cancel", "tasks/update"):
                params = {"taskId": task_id, "inputResponses": {}}
                theirs = await bob.modern(method, params)
                nobodys = await bob.modern(method, {**params, "taskId": unknown})
                assert theirs["error"] == nobodys["error"]
                assert theirs["error"]["code"] == -32602
            for method in ("tasks/get", "tasks/result", "tasks/cancel"):
                theirs = await bob.legacy(method, {"taskId": task_id})
                nobodys = await bob.legacy(method, {"taskId": unknown})
                assert theirs["error"] == nobodys["error"]
        assert (await bob.legacy("tasks/list"))["result"]["tasks"] == []
        mine = (await alice.legacy("tasks/list"))["result"]["tasks"]
        assert {t["taskId"] for t in mine} == {ext_id, old_id}
        assert all(t["status"] == "working" for t in mine)  # bob's cancels did nothing
        assert (await alice.modern("tasks/get", {"taskId": ext_id}))["result"]["taskId"] == ext_id


async def test_bad_task_requests_are_invalid_params(settings: Settings) -> None:
    huge = "f" * 200_000
    async with wire(settings) as (client,):
        await client.initialize()
        for params in ({}, {"taskId": 5}, {"taskId": None}, {"taskId": ["x"]}, {"taskId": huge}):
            for method in ("tasks/get", "tasks/cancel", "tasks/update"):
                answer = await client.modern(method, params)
                assert answer["error"]["code"] == -32602, (method, answer)
            for method in ("tasks/get", "tasks/result", "tasks/cancel"):
                answer = await client.legacy(method, params)
                assert answer["error"]["code"] == -32602, (method, answer)
        for cursor in (5, "-1", "1e3", "99999999999", huge):
            answer = await client.legacy("tasks/list", {"cursor": cursor})
            assert answer["error"]["code"] == -32602, cursor
        for task in ("yes", 3, {"ttl": "long"}):
            call = {"name": "edit_image", "arguments": LINEART, "task": task}
            answer = await client.legacy("tools/call", call)
            assert answer["error"]["code"] == -32602, task
        assert (await client.legacy("tasks/list"))["result"]["tasks"] == []  # nothing started
