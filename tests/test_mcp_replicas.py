"""Real ``retouch-mcp`` processes on one store: a task outlives the process that started it,
and with ``mcp.stateless`` two replicas serve one client through a load balancer that keeps
no sticky sessions, request by request, in both task forms and through the SDK's client."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.conftest import MakeSettings, data_uri, sample
from tests.fakes.dashscope import FakeDashScope
from tests.mcp_wire import Wire
from tests.servers import free_port, start_http_server, wait_healthy
from tests.test_e2e_vendors import KEY, dashscope_table

TOKEN = "replica-token"
COLORIZE = {"images": [data_uri(sample("coffee.png"))], "function": "colorization"}
ENDED = ("completed", "failed", "cancelled")


@pytest.fixture
def fake() -> Iterator[FakeDashScope]:
    with FakeDashScope(api_key=KEY) as server:
        yield server


@contextmanager
def replicas(config: str, *ports: int) -> Iterator[list[str]]:
    """``python -m server --transport http`` once per port, started together; yields their
    MCP URLs once every one answers."""
    procs = [start_http_server(config, "--port", str(port)) for port in ports]
    try:
        for proc, port in zip(procs, ports, strict=True):
            wait_healthy(proc, f"http://127.0.0.1:{port}")
        yield [f"http://127.0.0.1:{port}/mcp" for port in ports]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(20)


def config(make_settings: MakeSettings, fake: FakeDashScope, mcp: str = "") -> str:
    """One config file for every replica: the same store, a token, the fake DashScope (and
    no Real-ESRGAN probe, which only slows each start)."""
    settings = make_settings(
        f'[mcp]\nauth_token = "{TOKEN}"\n{mcp}'
        '[vendors.local]\nkind = "local"\nesrgan = "off"\n' + dashscope_table("dashscope", fake)
    )
    return settings.source


def authorized() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=60, headers={"Authorization": f"Bearer {TOKEN}"})


async def until(ask: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """Ask again until the task has ended; the last answer's result."""
    for _ in range(400):
        result = (await ask())["result"]
        if result["status"] in ENDED:
            return dict(result)
        await asyncio.sleep(0.05)
    raise AssertionError(f"still {result['status']}")


async def test_a_task_survives_a_restart_between_the_call_and_the_poll(
    make_settings: MakeSettings, fake: FakeDashScope
) -> None:
    fake.task_seconds = 2  # still at the vendor when the first process stops
    source = config(make_settings, fake)
    port = free_port()
    call = {"name": "edit_image", "arguments": {**COLORIZE, "vendor": "dashscope"}}
    async with authorized() as http:
        with replicas(source, port) as (url,):
            client = Wire(http, url)
            ext_id = (await client.modern("tools/call", call))["result"]["taskId"]
            await client.initialize()
            old = (await client.legacy("tools/call", {**call, "task": {}}))["result"]
            old_id = old["task"]["taskId"]
        with replicas(source, port) as (url,):  # the same server, started again
            client = Wire(http, url)
            first = (await client.modern("tasks/get", {"taskId": ext_id}))["result"]
            assert first["taskId"] == ext_id and first["status"] in ("working", "completed")
            done = await until(lambda: client.modern("tasks/get", {"taskId": ext_id}))
            await client.initialize()  # sessions do not survive a restart; tasks do
            result = (await client.legacy("tasks/result", {"taskId": old_id}))["result"]
            state = (await client.legacy("tasks/get", {"taskId": old_id}))["result"]
    assert done["status"] == "completed" and done["result"]["isError"] is False
    assert [c["type"] for c in done["result"]["content"]][1:] == ["image", "resource_link"]
    assert state["status"] == "completed"
    assert result["structuredContent"]["status"] == "succeeded"
    assert fake.submissions == 2  # each task sent once, whichever process finished it


class RoundRobin(httpx2.AsyncBaseTransport):
    """A load balancer with no sticky sessions: each request goes to the next replica."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = itertools.cycle(ports)
        self.inner = httpx2.AsyncHTTPTransport()
        self.served: list[int] = []

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = next(self.ports)
        request.url = request.url.copy_with(port=port)
        request.headers["Host"] = f"127.0.0.1:{port}"
        self.served.append(port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_stateless_replicas_serve_one_client_request_by_request(
    make_settings: MakeSettings, fake: FakeDashScope
) -> None:
    source = config(make_settings, fake, "stateless = true\n")
    ports = [free_port(), free_port()]
    call = {"name": "edit_image", "arguments": {**COLORIZE, "vendor": "dashscope"}}
    with replicas(source, *ports) as (url_a, url_b):
        async with authorized() as http:
            a, b = Wire(http, url_a), Wire(http, url_b)
            # The extension: the call on one replica, the polls on the other.
            ext_id = (await a.modern("tools/call", call))["result"]["taskId"]
            done = await until(lambda: b.modern("tasks/get", {"taskId": ext_id}))
            assert done["result"]["structuredContent"]["id"] == ext_id

            # 2025-11-25 without sessions: initialize on one, everything else alternating.
            await a.initialize()
            assert a.session is None  # no session to stick to
            b.session = None
            old_id = (await b.legacy("tools/call", {**call, "task": {}}))["result"]["task"][
                "taskId"
            ]
            assert (await a.legacy("tasks/get", {"taskId": old_id}))["result"]["taskId"] == old_id
            result = (await b.legacy("tasks/result", {"taskId": old_id}))["result"]
            assert result["structuredContent"]["status"] == "succeeded"
            listed = (await a.legacy("tasks/list"))["result"]["tasks"]
            assert {ext_id, old_id} <= {t["taskId"] for t in listed}

        # The SDK's client on the 2025-11-25 handshake, every request to the next replica.
        balancer = RoundRobin(ports)
        http2 = httpx2.AsyncClient(
            transport=balancer, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        )
        async with (
            http2,
            Client(streamable_http_client(url_a, http_client=http2), mode="legacy") as client,
        ):
            started = await client.call_tool("edit_image", {**call["arguments"], "wait_seconds": 0})
            task_id = started.structured_content["id"]
            checked = await client.call_tool("check_task", {"task_id": task_id, "wait_seconds": 30})
            resource = await client.read_resource(f"retouch://tasks/{task_id}/0")
        assert checked.structured_content["status"] == "succeeded"
        assert resource.contents[0].blob  # type: ignore[union-attr]
        assert set(balancer.served) == set(ports)
