"""The MCP server through the SDK's own client: in memory, over stdio and over HTTP."""

from __future__ import annotations

import base64
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.types import ImageContent, ResourceLink, TextContent

from server.app import build_server
from tests.conftest import DATA, MakeSettings, data_uri, decode, sample
from tests.servers import ROOT, env, free_port
from tests.servers import http_server as serving
from tools.config import Settings


async def full_round_trip(client: Client, image: str) -> None:
    """list → edit (stylization_all) → check → preview + resource link → read the resource."""
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert {"list_functions", "edit_image", "check_task", "cancel_task"} <= set(tools)
    schema = tools["edit_image"].output_schema
    assert schema is not None
    # Simple nullables as a type list (cheap for every client to re-check), not anyOf.
    assert schema["properties"]["progress"]["type"] == ["string", "null"]
    assert "anyOf" not in schema["properties"]["started_at"]

    listed = await client.call_tool("list_functions", {})
    names = {f["name"]: f for f in listed.structured_content["functions"]}
    assert names["stylization_all"]["vendors"] == ["local"]

    started = await client.call_tool(
        "edit_image",
        {
            "images": [image],
            "function": "stylization_all",
            "prompt": "pencil sketch",
            "wait_seconds": 0,
        },
    )
    assert not started.is_error, started.content
    task_id = started.structured_content["id"]
    assert started.structured_content["status"] in ("queued", "running", "succeeded")

    progress: list[Any] = []

    async def on_progress(p: float, total: float | None, message: str | None) -> None:
        progress.append(message)

    done = await client.call_tool(
        "check_task", {"task_id": task_id, "wait_seconds": 60}, progress_callback=on_progress
    )
    assert done.structured_content["status"] == "succeeded", done.content
    kinds = [type(c) for c in done.content]
    assert kinds == [TextContent, ImageContent, ResourceLink]
    preview = done.content[1]
    assert isinstance(preview, ImageContent) and preview.mime_type == "image/jpeg"
    assert max(decode(base64.b64decode(preview.data)).size) <= 512
    link = done.content[2]
    assert isinstance(link, ResourceLink)
    assert str(link.uri) == f"retouch://tasks/{task_id}/0"

    resource = await client.read_resource(str(link.uri))
    blob = resource.contents[0]
    full = decode(base64.b64decode(blob.blob))  # type: ignore[union-attr]
    assert full.size == (451, 300)


async def test_in_memory_round_trip(settings: Settings) -> None:
    server = build_server(settings, allow_local_paths=True)
    async with Client(server) as client:
        await full_round_trip(client, str(DATA / "chelsea.png"))


async def test_a_retried_edit_with_its_idempotency_key_starts_no_second_task(
    settings: Settings,
) -> None:
    async with Client(build_server(settings)) as client:
        edit = {"images": [data_uri(sample("coffee.png"))], "function": "lineart"}
        first = await client.call_tool("edit_image", {**edit, "idempotency_key": "agent-7"})
        again = await client.call_tool("edit_image", {**edit, "idempotency_key": "agent-7"})
        other = await client.call_tool("edit_image", edit)
        listed = await client.call_tool("list_tasks", {"limit": 10})
    assert first.structured_content["id"] == again.structured_content["id"]
    assert other.structured_content["id"] != first.structured_content["id"]
    assert len(listed.structured_content["tasks"]) == 2


async def test_legacy_protocol_and_errors(settings: Settings) -> None:
    server = build_server(settings, allow_local_paths=False)
    async with Client(server, mode="legacy") as client:
        bad = await client.call_tool(
            "edit_image", {"images": ["x"], "function": "teleport", "prompt": "x"}
        )
        assert bad.is_error and "unknown function 'teleport'" in bad.content[0].text
        local = await client.call_tool(
            "edit_image", {"images": [str(DATA / "chelsea.png")], "function": "lineart"}
        )
        assert local.is_error and "local paths are not accepted" in local.content[0].text
        traversal = await client.call_tool("check_task", {"task_id": "../../etc/passwd"})
        assert traversal.is_error and "no task" in traversal.content[0].text
        typed = await client.call_tool("edit_image", {"images": "not-a-list"})
        assert typed.is_error
        with pytest.raises(Exception, match="no result"):
            await client.read_resource("retouch://tasks/" + "0" * 32 + "/0")


async def test_stdio_round_trip(settings: Settings) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "server", "--config", settings.source],
        env=env(),
        cwd=str(ROOT),
    )
    async with Client(params) as client:
        await full_round_trip(client, str(DATA / "chelsea.png"))


@pytest.fixture
def http_server(make_settings: MakeSettings) -> Iterator[tuple[str, str]]:
    port = free_port()
    settings = make_settings(f'[mcp]\nport = {port}\nauth_token = "s3cret-token"\n')
    with serving(settings.source, port) as (base, _):
        yield base, "s3cret-token"


async def test_streamable_http_round_trip_with_token(http_server: tuple[str, str]) -> None:
    base, token = http_server
    assert httpx.post(f"{base}/mcp", json={}).status_code == 401
    assert (
        httpx.post(f"{base}/mcp", json={}, headers={"Authorization": "Bearer wrong"}).status_code
        == 401
    )
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    async with http, Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
        # Local paths are off over HTTP: send the image inline.
        await full_round_trip(client, data_uri(sample("chelsea.png")))


def test_http_beyond_loopback_needs_a_token(make_settings: MakeSettings) -> None:
    from server.http import build_http_app
    from tools.errors import ConfigError

    settings = make_settings('[mcp]\nhost = "0.0.0.0"\n')
    with pytest.raises(ConfigError, match="auth_token"):
        build_http_app(build_server(settings), settings)


async def test_a_server_started_later_answers_initialize_first_and_tools_once_started(
    settings: Settings,
) -> None:
    server = build_server(settings, allow_local_paths=True, start_later=True)
    async with Client(server) as client:  # initialize answered while the Editor starts
        listed = await client.call_tool("list_functions", {})
        assert not listed.is_error and "adjust" in str(listed.structured_content)
        await full_round_trip(client, str(DATA / "chelsea.png"))


async def test_a_start_that_fails_in_the_background_is_each_requests_error(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings()
    settings.store.path.write_bytes(b"this is not a SQLite database" * 100)
    server = build_server(settings, start_later=True)
    async with Client(server) as client:
        for _ in range(2):
            with pytest.raises(Exception, match="retouch-mcp cannot start"):
                await client.call_tool("list_functions", {})


async def test_the_lists_asked_for_after_initialize_do_not_wait_for_the_editor(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings()
    settings.store.path.write_bytes(b"this is not a SQLite database" * 100)
    server = build_server(settings, start_later=True)
    async with Client(server) as client:  # the same whatever the Editor holds
        assert "edit_image" in {tool.name for tool in (await client.list_tools()).tools}
        assert (await client.list_prompts()).prompts
        assert (await client.list_resource_templates()).resource_templates
        await client.list_resources()
        with pytest.raises(Exception, match="retouch-mcp cannot start"):
            await client.call_tool("list_functions", {})
