"""The console in headless Chromium (Debian's, driven by Playwright; no browser download),
against a real server on a port with the fake DashScope behind it: the sign-in, a task
started through MCP appearing without a reload with its thumbnail drawn, its timeline, a
running task canceled from its page, the cost chart, CSRF and signing out.

With RETOUCH_SCREENSHOTS=1 the main pages are saved into docs/ for the README."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import uvicorn
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from PIL import Image, ImageStat

from server.app import build_server
from server.http import build_http_app
from tests.conftest import MakeSettings, data_uri, sample
from tests.fakes.dashscope import FakeDashScope
from tests.optional import CHROMIUM, needs
from tests.test_console import OPERATOR, console_toml
from tests.test_e2e_vendors import KEY, dashscope_table
from tests.test_mcp import free_port
from tests.test_users import ALICE

pytestmark = needs("chromium")
DOCS = Path(__file__).resolve().parent.parent / "docs"
SHOTS = os.environ.get("RETOUCH_SCREENSHOTS") == "1"


@pytest.fixture
async def site(make_settings: MakeSettings) -> AsyncIterator[tuple[str, FakeDashScope]]:
    """The HTTP server on a free port, the fake DashScope behind it."""
    with FakeDashScope(api_key=KEY) as fake:
        settings = make_settings(console_toml() + dashscope_table("dashscope", fake))
        port = free_port()
        app = build_http_app(build_server(settings), settings)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        while not server.started:
            assert not serving.done(), "the server did not start"
            await asyncio.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}", fake
        finally:
            server.should_exit = True
            await asyncio.wait_for(serving, 30)


async def start_edit(base: str, prompt: str = "warm tones") -> str:
    """A colorization asked for through MCP as alice; its task's id (not waited for)."""
    headers = {"Authorization": f"Bearer {ALICE}"}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=30) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
    ):
        args = {
            "images": [data_uri(sample("coffee.png"))],
            "function": "colorization",
            "vendor": "dashscope",
            "prompt": prompt,
        }
        result = await client.call_tool("edit_image", args)
        assert not result.is_error, result.content
        return str(result.structured_content["id"])  # type: ignore[index]


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def shot(page: Any, name: str) -> None:
    """Save the page for the README, in 256 colours to keep docs/ small."""
    if SHOTS:
        image = Image.open(io.BytesIO(await page.screenshot(full_page=True))).convert("RGB")
        image.quantize(256).save(DOCS / f"console-{name}.png", optimize=True)


async def test_the_console_in_a_browser(site: tuple[str, FakeDashScope], browser: Any) -> None:
    base, fake = site
    page = await (await browser.new_context(viewport={"width": 1280, "height": 800})).new_page()
    blocked: list[str] = []
    page.on("console", lambda m: blocked.append(m.text) if "Content Security" in m.text else None)

    # without the cookie: to the sign-in; a wrong token stays there
    await page.goto(f"{base}/console/tasks")
    assert page.url == f"{base}/console/login"
    await page.fill("input[name=token]", "not_the_operator_token")
    await page.click("#signin")
    assert "not an operator" in await page.content()
    await page.fill("input[name=token]", OPERATOR)
    await page.click("#signin")
    await page.wait_for_url(f"{base}/console/tasks")

    # a task started through MCP appears without a reload, and its thumbnails are drawn
    fake.task_plan = ["PENDING", "RUNNING", "SUCCEEDED"]
    task_id = await start_edit(base)
    row = page.locator(f'tr[data-id="{task_id}"]')
    await row.wait_for(timeout=15_000)
    await page.locator(f'tr[data-id="{task_id}"] .status.succeeded').wait_for(timeout=20_000)
    thumb = page.locator(f'tr[data-id="{task_id}"] img[src*="/result/0"]')
    await thumb.wait_for()
    await page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=await thumb.element_handle()
    )
    pixels = Image.open(io.BytesIO(await thumb.screenshot())).convert("RGB")
    spread = ImageStat.Stat(pixels).stddev
    assert max(spread) > 10, f"the thumbnail looks blank: {spread}"
    await shot(page, "tasks")

    # its page tells its story
    await page.goto(f"{base}/console/tasks/{task_id}")
    timeline = await page.locator("#timeline").inner_text()
    for step in ("queued for dashscope", "claimed", "submitted", "vendor's task id", "poll"):
        assert step in timeline, timeline
    assert "ended: succeeded" in timeline and "downloaded 1 result" in timeline
    # the steps come from the store's log: one row each, the vendor's task id shown
    vendor_task_id = next(iter(fake.tasks))
    submitted = page.locator('#timeline li[data-kind="submitted"]')
    assert await submitted.count() == 1
    assert vendor_task_id in await submitted.inner_text()
    ended = page.locator('#timeline li[data-kind="ended"]')
    assert await ended.count() == 1 and "ended: succeeded" in await ended.inner_text()
    assert await page.locator('#timeline li[data-kind="record"]').count() == 0
    assert await page.locator(".compare img.before").count() == 1
    await shot(page, "task")

    # a running task canceled from its page
    fake.task_plan = ["PENDING"]  # it never ends by itself
    running = await start_edit(base, "never ends")
    await page.goto(f"{base}/console/tasks/{running}")
    await page.locator("#cancel").click()
    await page.locator("#task .status.canceled").wait_for(timeout=20_000)
    assert "ended: canceled" in await page.locator("#timeline").inner_text()

    # vendors and costs: the chart is drawn, one per currency
    await page.goto(f"{base}/console/vendors")
    assert "dashscope" in await page.locator("#vendors").inner_text()
    limits = await page.locator('#limits tr[data-vendor="dashscope"]').all_inner_texts()
    assert any(row.startswith("dashscope\tsubmit") for row in limits), limits
    assert any("query" in row for row in limits), limits
    await shot(page, "vendors")
    await page.goto(f"{base}/console/costs")
    bars = page.locator("svg.chart rect")
    assert await bars.count() >= 1
    box = await bars.last.bounding_box()  # today's
    assert box is not None and box["height"] > 10 and box["width"] > 5
    assert "CNY" in await page.locator("#charts").inner_text()
    await shot(page, "costs")
    await page.goto(f"{base}/console/users")
    assert "alice" in await page.locator("#users").inner_text()
    await shot(page, "users")

    # a state change without the CSRF token is refused; signing out ends the session
    status = await page.evaluate("fetch('/console/logout', {method: 'POST'}).then(r => r.status)")
    assert status == 403
    await page.click("#logout")
    await page.wait_for_url(f"{base}/console/login")
    await page.goto(f"{base}/console/costs")
    assert page.url == f"{base}/console/login"
    assert blocked == []  # the policy let the console's own script and style through
