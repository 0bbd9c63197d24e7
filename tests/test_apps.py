"""The MCP App's server side (``server/apps.py``) without a browser: the page as a ``ui://``
resource, the tools that link it, the app-only ``upload_image`` (the same checks and owner as
``POST /uploads``) and ``task_input`` (a task's input, for its owner), both refused to clients
without Apps, and a client without Apps getting exactly the result it always got."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import pytest
from mcp import Client
from mcp.client.extension import advertise
from mcp.shared.exceptions import MCPError
from PIL import Image

from server.app import build_server
from server.apps import EDITOR_URI, INPUT_TOOL, PAGE, UPLOAD_TOOL, request_body_limit
from tests.conftest import DATA, MakeSettings, data_uri, png
from tests.servers import free_port, http_server
from tools.config import Settings

APPS = advertise("io.modelcontextprotocol/ui", {"mimeTypes": ["text/html;profile=mcp-app"]})
TOKENS = {"alice": "alice-apps-test-token", "bob": "bob-apps-test-token-2"}
MAX_BYTES = 5_000_000


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture
def small_settings(make_settings: MakeSettings) -> Settings:
    return make_settings('[media]\nmax_bytes = 200000\n[vendors.local]\nesrgan = "off"\n')


@asynccontextmanager
async def client(settings: Settings, *, apps: bool = True) -> AsyncIterator[Client]:
    async with Client(build_server(settings), extensions=[APPS] if apps else []) as c:
        yield c


async def test_the_page_is_a_ui_resource_linked_from_edit_and_check(
    small_settings: Settings,
) -> None:
    async with client(small_settings) as c:
        [page] = (await c.read_resource(EDITOR_URI)).contents
        tools = {t.name: t for t in (await c.list_tools()).tools}
        listed = [str(r.uri) for r in (await c.list_resources()).resources]
    assert page.mime_type == "text/html;profile=mcp-app"
    assert page.text == PAGE.read_text(encoding="utf-8")
    assert page.meta == {"ui": {"prefersBorder": True}}  # no ui.csp: the strict default
    assert EDITOR_URI in listed
    for name in ("edit_image", "check_task"):
        assert tools[name].meta == {
            "ui": {"resourceUri": EDITOR_URI},
            "ui/resourceUri": EDITOR_URI,
        }
    for name in (UPLOAD_TOOL, INPUT_TOOL):
        assert tools[name].meta == {"ui": {"resourceUri": EDITOR_URI, "visibility": ["app"]}}
    assert tools["list_functions"].meta is None


async def test_a_client_without_apps_gets_exactly_the_old_result(
    small_settings: Settings,
) -> None:
    args = {"images": [data_uri(png())], "function": "adjust", "prompt": "rotate 90"}
    async with client(small_settings, apps=False) as plain, client(small_settings) as rich:
        plain_tools = [t.name for t in (await plain.list_tools()).tools]
        rich_tools = [t.name for t in (await rich.list_tools()).tools]
        old = await plain.call_tool("edit_image", args)
        new = await rich.call_tool("edit_image", args)
        refused = await plain.call_tool(UPLOAD_TOOL, {"data": b64(png())})
        hidden = await plain.call_tool(INPUT_TOOL, {"task_id": old.structured_content["id"]})
        unknown = await plain.call_tool("no_such_tool", {})
        templates = await plain.list_resource_templates()
        plain_resources = [str(r.uri) for r in (await plain.list_resources()).resources]
        rich_resources = [str(r.uri) for r in (await rich.list_resources()).resources]
    assert {UPLOAD_TOOL, INPUT_TOOL} <= set(rich_tools)
    assert sorted(plain_tools) == sorted(set(rich_tools) - {UPLOAD_TOOL, INPUT_TOOL})
    assert EDITOR_URI not in plain_resources and EDITOR_URI in rich_resources
    assert [str(t.uri_template) for t in templates.resource_templates] == [
        "retouch://tasks/{task_id}/{index}"
    ]
    assert [c.type for c in old.content] == [c.type for c in new.content]
    assert old.content[0].text.replace(old.structured_content["id"], "X") == new.content[
        0
    ].text.replace(new.structured_content["id"], "X")
    assert old.meta == new.meta
    assert refused.is_error and refused.content[0].text == "Unknown tool: upload_image"
    assert hidden.is_error and hidden.content[0].text == "Unknown tool: task_input"
    assert unknown.is_error and unknown.content[0].text == "Unknown tool: no_such_tool"


async def test_upload_image_stores_an_image_for_edits(small_settings: Settings) -> None:
    async with client(small_settings) as c:
        answer = await c.call_tool(UPLOAD_TOOL, {"data": b64((DATA / "text.png").read_bytes())})
        assert not answer.is_error, answer.content
        upload = answer.structured_content
        assert re.fullmatch(r"retouch://uploads/[0-9a-f]{32}", upload["uri"])
        assert (upload["width"], upload["height"], upload["mime_type"]) == (448, 172, "image/png")
        edit = await c.call_tool(
            "edit_image",
            {"images": [upload["uri"]], "function": "adjust", "prompt": "rotate 90"},
        )
        task = edit.structured_content
        shown = await c.call_tool(INPUT_TOOL, {"task_id": task["id"]})
    assert task["status"] == "succeeded"
    [item] = shown.content
    assert item.type == "image" and item.mime_type == "image/png"
    assert base64.b64decode(item.data) == (DATA / "text.png").read_bytes()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b64(b"just text, no image"), "upload is not an image Retouch can read"),
        ("%%% not base64 %%%", "data is not base64"),
        ("", "the upload is empty"),
        (b64(png((64, 64)))[:-3], "data is not base64"),  # cut short: broken padding
        (b64(png((64, 64))[:-40]), "upload"),  # a truncated PNG: corrupt
        ("A" * 300_000, "too large: the limit is 0 MB"),
    ],
)
async def test_upload_image_refuses_what_post_uploads_refuses(
    small_settings: Settings, data: str, message: str
) -> None:
    async with client(small_settings) as c:
        answer = await c.call_tool(UPLOAD_TOOL, {"data": data})
    assert answer.is_error
    assert message in answer.content[0].text, answer.content[0].text


async def test_upload_image_refuses_arguments_of_the_wrong_type(small_settings: Settings) -> None:
    async with client(small_settings) as c:
        for args in ({"data": 12}, {"data": ["a"]}, {}):
            answer = await c.call_tool(UPLOAD_TOOL, args)
            assert answer.is_error and "data" in answer.content[0].text


async def test_a_task_input_is_read_only_by_its_owner_and_only_if_it_exists(
    small_settings: Settings,
) -> None:
    async with client(small_settings) as c:
        edit = await c.call_tool(
            "edit_image",
            {"images": [data_uri(png())], "function": "adjust", "prompt": "rotate 90"},
        )
        task_id = edit.structured_content["id"]
        answers = [
            await c.call_tool(INPUT_TOOL, args)
            for args in (
                {"task_id": task_id, "index": 1},
                {"task_id": "0" * 32},
                {"task_id": "../../etc/passwd"},
            )
        ]
        wrong = [
            await c.call_tool(INPUT_TOOL, args)
            for args in ({"task_id": task_id, "index": -1}, {"task_id": task_id, "index": "x"}, {})
        ]
    for answer in answers:
        assert answer.is_error and "no input" in answer.content[0].text, answer
    for answer in wrong:
        assert answer.is_error and "validation error" in answer.content[0].text.lower(), answer


# ---- over HTTP: owners, and uploads as large as media.max_bytes -------------------------


@pytest.fixture
def live(make_settings: MakeSettings) -> Iterator[tuple[str, Settings]]:
    """retouch-mcp over HTTP with two users, alice and bob."""
    port = free_port()
    users = "".join(f'[[mcp.users]]\nname = "{n}"\ntoken = "{t}"\n' for n, t in TOKENS.items())
    settings = make_settings(
        f"[mcp]\nport = {port}\n{users}[media]\nmax_bytes = {MAX_BYTES}\n"
        '[vendors.local]\nesrgan = "off"\n'
    )
    with http_server(settings.source, port) as (base, _):
        yield base, settings


@asynccontextmanager
async def remote(base: str, user: str = "alice") -> AsyncIterator[Client]:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKENS[user]}"}, timeout=60)
    async with (
        http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http), extensions=[APPS]) as c,
    ):
        yield c


def noise_png(side: int) -> bytes:
    """A PNG that does not compress: about 3 × side² bytes."""
    pixels = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG", compress_level=0)
    return buf.getvalue()


async def test_uploads_and_inputs_belong_to_their_owner(live: tuple[str, Settings]) -> None:
    base, settings = live
    edit: dict[str, Any] = {"function": "adjust", "prompt": "rotate 90", "wait_seconds": 30}
    async with remote(base, "alice") as alice, remote(base, "bob") as bob:
        up = await alice.call_tool(UPLOAD_TOOL, {"data": b64(png((30, 20)))})
        alices_upload = up.structured_content["uri"]
        alices_task = (
            await alice.call_tool("edit_image", {**edit, "images": [alices_upload]})
        ).structured_content
        bobs_upload = (
            await bob.call_tool(UPLOAD_TOOL, {"data": b64(png((20, 10)))})
        ).structured_content["uri"]
        taken = await bob.call_tool("edit_image", {**edit, "images": [alices_upload]})
        crossed = await alice.call_tool("edit_image", {**edit, "images": [bobs_upload]})
        inputs = {"task_id": alices_task["id"]}
        bobs_look = await bob.call_tool(INPUT_TOOL, inputs)
        [input_0] = (await alice.call_tool(INPUT_TOOL, inputs)).content
    # The local owner (stdio, the CLI) on the same store is another owner again.
    async with client(settings) as local:
        other = await local.call_tool("edit_image", {**edit, "images": [alices_upload]})
        locals_look = await local.call_tool(INPUT_TOOL, inputs)
    assert alices_task["status"] == "succeeded"
    for refused in (taken, crossed, other):
        assert refused.is_error and "no such upload" in refused.content[0].text
    for look in (bobs_look, locals_look):
        assert look.is_error and "no input" in look.content[0].text
    assert input_0.mime_type == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(input_0.data))).size == (30, 20)


async def test_upload_image_takes_images_up_to_the_media_limit_over_http(
    live: tuple[str, Settings],
) -> None:
    big = noise_png(1250)  # ~4.7 MB: its base64 is over the SDK's default 4 MiB body
    assert len(b64(big)) > 4 * 2**20 and len(big) < MAX_BYTES
    too_big = noise_png(1300)  # ~5.1 MB
    assert len(too_big) > MAX_BYTES
    base, settings = live
    huge = "A" * (request_body_limit(settings) + 1)
    async with remote(base) as c:
        taken = await c.call_tool(UPLOAD_TOOL, {"data": b64(big)})
        refused = await c.call_tool(UPLOAD_TOOL, {"data": b64(too_big)})
        with pytest.raises(MCPError):  # the transport's 413, before anything is parsed
            await c.call_tool(UPLOAD_TOOL, {"data": huge})
        still = await c.call_tool(UPLOAD_TOOL, {"data": b64(png())})
    assert not taken.is_error, taken.content
    assert taken.structured_content["width"] == 1250
    assert refused.is_error and "the limit is 5 MB" in refused.content[0].text
    assert not still.is_error
