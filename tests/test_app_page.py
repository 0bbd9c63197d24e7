"""The editor page (the MCP App) in headless Chromium, in a test host built on the reference
host side (ext-apps' ``AppBridge``, ``ui/testhost/``) that talks to a real ``retouch-mcp``
over streamable HTTP: the App starts, shows input and result, the split moves (checked on
screenshots), a painted mask drives a masked edit (the mask the server stored is checked), a
dropped image is uploaded and edited, a non-image is refused, a host without Apps gets the
plain result, and the page follows a dark theme in a narrow column with keyboard focus shown.

With ``RETOUCH_SCREENSHOTS=<folder>`` the screenshots are kept there (the README's are made
so: ``make screenshots``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, data_uri, png
from tests.fakes.http import Fault
from tests.fakes.openai import FakeOpenAI
from tests.optional import CHROMIUM, CHROMIUM_ARGS, UI_MODULES, needs
from tests.servers import ROOT, env, free_port, http_server
from tools.config import Settings, load_settings
from tools.store import open_store

pytestmark = needs("chromium", "apphost")

HOST_SRC = ROOT / "ui" / "testhost"
#: The chat column the host renders the App in, and the window around it.
COLUMN = 420
VIEWPORT = {"width": 460, "height": 1400}
SECRETS = ("RETOUCH_CONFIG", "DASHSCOPE_API_KEY", "OPENAI_API_KEY", "TELEGRAM_BOT_TOKEN")


# ---- the server, the host, the browser ----------------------------------------------------


@dataclass
class Server:
    base: str
    settings: Settings


@pytest.fixture(scope="module")
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, openai: FakeOpenAI) -> Iterator[Server]:
    """retouch-mcp over HTTP with the local engine and a (fake) OpenAI for variants."""
    folder = tmp_path_factory.mktemp("app-server")
    port = free_port()
    config = folder / "config.toml"
    config.write_text(
        '[store]\npath = "retouch.db"\nresults_dir = "results"\n[worker]\nidle_poll_s = 0.05\n'
        f'[mcp]\nport = {port}\n[vendors.local]\nesrgan = "off"\n'
        f'[vendors.openai]\nkind = "openai"\napi_key = "{openai.api_key}"\n'
        f'base_url = "{openai.base_url}/v1"\n',
        encoding="utf-8",
    )
    variables = {k: v for k, v in env().items() if k not in SECRETS}
    with http_server(config, port, variables=variables) as (base, _):
        yield Server(base, load_settings(config))


@pytest.fixture(scope="module")
def host_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The test host, bundled with esbuild from ui/node_modules (npm ci --prefix ui)."""
    out = tmp_path_factory.mktemp("host")
    subprocess.run(
        [
            str(UI_MODULES / ".bin/esbuild"),
            str(HOST_SRC / "host.js"),
            "--bundle",
            "--format=esm",
            "--platform=browser",
            "--log-level=warning",
            f"--outfile={out / 'host.js'}",
        ],
        check=True,
        timeout=120,
    )
    shutil.copy(HOST_SRC / "index.html", out / "index.html")
    return {name: (out / name).read_bytes() for name in ("index.html", "host.js")}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclass
class Host:
    """The host page in a browser tab, and what the page's console said."""

    page: Any
    console: list[str] = field(default_factory=list)

    def connect(self, **options: Any) -> dict[str, Any]:
        return self.page.evaluate("(o) => host.connect(o)", {"column": COLUMN, **options})

    def run(self, tool: str, args: dict[str, Any]) -> dict[str, Any]:
        return self.page.evaluate("([t, a]) => host.run(t, a)", [tool, args])

    def events(self) -> dict[str, Any]:
        return self.page.evaluate("host.events")

    def app(self, index: int = -1) -> Any:
        """The App's frame (the ``index``-th rendered, the last by default)."""
        frames = [f for f in self.page.frames if f.parent_frame is not None]
        return frames[index]

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m or "Refused to" in m]


@pytest.fixture
def host(browser: Any, server: Server, host_files: dict[str, bytes]) -> Iterator[Host]:
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    found = Host(page)
    page.on("console", lambda message: found.console.append(message.text))

    def serve(route: Any) -> None:
        name = route.request.url.rsplit("/", 1)[-1]
        kind = "text/html" if name.endswith(".html") else "text/javascript"
        route.fulfill(status=200, body=host_files[name], content_type=kind)

    # The host page comes from the server's own origin (no CORS for /mcp), served by the test.
    page.route(f"{server.base}/__host__/*", serve)
    page.goto(f"{server.base}/__host__/index.html")
    page.wait_for_function("window.hostReady === true")
    yield found
    assert found.csp_violations() == []
    context.close()


# ---- helpers ------------------------------------------------------------------------------


def screenshot(locator: Any) -> Image.Image:
    return Image.open(io.BytesIO(locator.screenshot())).convert("RGB")


def keep(host: Host, name: str) -> None:
    """A screenshot of the whole App, kept where RETOUCH_SCREENSHOTS says (if it does)."""
    folder = os.environ.get("RETOUCH_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        host.page.locator("iframe").last.screenshot(path=str(Path(folder) / name))


def colourful(image: Image.Image) -> float:
    """The share of pixels with clear colour (grey pixels have r = g = b)."""
    a = np.asarray(image).astype(int)
    spread = a.max(axis=2) - a.min(axis=2)
    return float((spread > 25).mean())


def wait_for_result(app: Any, task_prefix: str | None = None) -> int:
    """Wait until the App shows a finished task with its input and result; the time then."""
    return app.wait_for_function(
        """(prefix) => {
          const ok = (id) => { const i = document.getElementById(id);
            return i.getAttribute('src') && i.complete && i.naturalWidth > 0; };
          const label = document.getElementById('task-id').textContent;
          return document.getElementById('app').dataset.state === 'succeeded'
            && (!prefix || label.includes(prefix)) && ok('before') && ok('after') && Date.now();
        }""",
        arg=task_prefix,
        timeout=60_000,
    ).json_value()


def task_id_told(host: Host) -> str:
    """The id of the task the App last told the model about (ui/update-model-context)."""
    host.page.wait_for_function("() => host.events.modelContext.length > 0")
    told = host.events()["modelContext"]
    assert told, "the model was not told about the edit"
    text = told[-1]["content"][0]["text"]
    found = re.search(r"task ([0-9a-f]{32}) succeeded", text)
    assert found, text
    return found.group(1)


async def stored_mask(settings: Settings, task_id: str) -> Image.Image:
    store = await open_store(settings.store)
    try:
        [sha] = await store.task_blobs(task_id, "mask")
        blob = await store.read_blob(sha)
    finally:
        await store.close()
    return Image.open(io.BytesIO(blob.data))


def coffee() -> str:
    return data_uri((DATA / "coffee.png").read_bytes())


def drop(app: Any, data: bytes, name: str, mime: str) -> None:
    """Drop a file on the App, as a user dragging it from their computer would."""
    handle = app.evaluate_handle(
        """([b64, name, type]) => {
          const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
          const transfer = new DataTransfer();
          transfer.items.add(new File([bytes], name, { type }));
          return transfer;
        }""",
        [base64.b64encode(data).decode(), name, mime],
    )
    app.locator("#drop").dispatch_event("drop", {"dataTransfer": handle})


# ---- the tests ----------------------------------------------------------------------------


def test_the_app_shows_input_and_result_and_the_split_moves(host: Host) -> None:
    host.connect()
    answer = host.run(
        "edit_image", {"images": [coffee()], "function": "adjust", "prompt": "grayscale"}
    )
    assert answer["app"] is True
    app = host.app()
    painted_at = wait_for_result(app)
    took_ms = painted_at - host.events()["resultSentAt"]
    page_bytes = len((ROOT / "server/static/editor.html").read_bytes())
    print(f"\nApp: {page_bytes} bytes; tool result → first paint {took_ms} ms")
    assert took_ms < 5000

    stage = app.locator("#frame")
    half = screenshot(stage)
    w, h = half.size
    left, right = half.crop((0, 0, w * 2 // 5, h)), half.crop((w * 3 // 5, 0, w, h))
    assert colourful(left) > 0.5  # before: the input, in colour
    assert colourful(right) < 0.01  # after: grayscale
    # The split is a range input: keys move it.
    split = app.locator("#split")
    split.focus()
    host.page.keyboard.press("Home")
    assert colourful(screenshot(stage)) < 0.01  # all after
    for _ in range(10):
        host.page.keyboard.press("ArrowRight")
    assert split.input_value() == "10"
    host.page.keyboard.press("End")
    assert colourful(screenshot(stage)) > 0.5
    facts = app.locator("#facts").inner_text()
    assert "600×400" in facts and "local" in facts and "full image" in facts

    # The same task as check_task shows it: the input comes from the task itself.
    host.run("check_task", {"task_id": answer["result"]["structuredContent"]["id"]})
    again = host.app()
    assert again != app
    wait_for_result(again)
    assert colourful(screenshot(again.locator("#frame")).crop((0, 0, w * 2 // 5, h))) > 0.5


def test_the_app_follows_a_running_task(host: Host, openai: FakeOpenAI) -> None:
    openai.inject("edits", Fault.delay(2.5))
    host.connect()
    answer = host.run(
        "edit_image",
        {
            "images": [data_uri(png((96, 64)))],
            "function": "edit",
            "vendor": "openai",
            "prompt": "slowly",
            "wait_seconds": 0,
        },
    )
    assert answer["result"]["structuredContent"]["status"] in ("queued", "running")
    app = host.app()
    app.wait_for_function(
        "() => ['queued', 'running'].includes(document.getElementById('app').dataset.state)"
        " && !document.getElementById('progress-row').hidden"
    )
    wait_for_result(app)
    assert app.locator("#progress-row").is_hidden()
    polls = [c for c in host.events()["appCalls"] if c["name"] == "check_task"]
    assert polls and polls[0]["arguments"]["task_id"] == answer["result"]["structuredContent"]["id"]


def test_a_painted_mask_drives_a_masked_edit(host: Host, server: Server) -> None:
    host.connect()
    host.run("edit_image", {"images": [coffee()], "function": "adjust", "prompt": "grayscale"})
    app = host.app()
    wait_for_result(app)
    app.get_by_role("button", name="Paint mask").click()
    app.locator("#brush-size").fill("30")
    canvas = app.locator("#mask")
    box = canvas.bounding_box()
    assert box is not None
    scale = box["width"] / 600  # coffee.png is 600×400; the canvas is the image's size
    # Over the spoon: a stroke in image pixels.
    stroke = [(405, 85), (392, 150), (378, 215), (368, 280), (362, 310)]
    mouse = host.page.mouse
    mouse.move(box["x"] + stroke[0][0] * scale, box["y"] + stroke[0][1] * scale)
    mouse.down()
    for x, y in stroke[1:]:
        mouse.move(box["x"] + x * scale, box["y"] + y * scale, steps=4)
    mouse.up()
    keep(host, "app-paint.png")
    app.get_by_label("Function").select_option("description_edit_with_mask")
    app.get_by_label("Vendor").select_option("local")
    app.get_by_role("button", name="Edit", exact=True).click()

    app.wait_for_function(
        "() => document.getElementById('task-id').textContent"
        ".includes('description_edit_with_mask')"
    )
    wait_for_result(app)
    task_id = task_id_told(host)
    calls = [c for c in host.events()["appCalls"] if c["name"] == "edit_image"]
    assert calls[-1]["arguments"]["mask"].startswith("data:image/png;base64,")

    # In a thread of its own: Playwright's sync API holds this thread's event loop.
    with ThreadPoolExecutor(1) as pool:
        mask = pool.submit(asyncio.run, stored_mask(server.settings, task_id)).result()
    assert mask.size == (600, 400)
    values = np.asarray(mask.convert("L")).astype(int)
    assert set(np.unique(values)) <= {0, 255}
    radius = 30 / 2 / scale
    distance = distance_to(stroke, values.shape)
    white = values == 255
    assert white[distance <= radius * 0.7].all()  # the stroke is covered
    assert not white[distance > radius + 3].any()  # and nothing far from it
    app.locator("#split").fill("55")
    keep(host, "app-result.png")


def distance_to(polyline: list[tuple[int, int]], shape: tuple[int, ...]) -> np.ndarray:
    """Each pixel centre's distance to a polyline."""
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]]
    px, py = xs + 0.5, ys + 0.5
    best = np.full(shape[:2], np.inf)
    for (x0, y0), (x1, y1) in itertools.pairwise(polyline):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((px - x0) * dx + (py - y0) * dy) / (dx * dx + dy * dy), 0, 1)
        best = np.minimum(best, np.hypot(px - (x0 + t * dx), py - (y0 + t * dy)))
    return best


def test_a_dropped_image_is_uploaded_and_edited_and_a_non_image_refused(host: Host) -> None:
    host.connect()
    host.run("edit_image", {"images": [data_uri(png())], "function": "adjust", "prompt": "blur 1"})
    app = host.app()
    wait_for_result(app)

    drop(app, b"just some notes", "notes.txt", "text/plain")
    message = app.locator("#message")
    assert message.inner_text() == "notes.txt is not an image."
    drop(app, b"not a picture at all", "fake.png", "image/png")
    app.wait_for_function(
        "() => document.getElementById('message').textContent.includes('refused')"
    )
    assert "not an image" in message.inner_text()

    drop(app, (DATA / "chelsea.png").read_bytes(), "chelsea.png", "image/png")
    app.wait_for_function(
        "() => document.getElementById('message').textContent.startsWith('Uploaded')"
    )
    assert "451×300" in message.inner_text()
    app.get_by_label("Function").select_option("adjust")
    app.get_by_label("Prompt").fill("rotate 90")
    app.get_by_role("button", name="Edit", exact=True).click()
    app.wait_for_function(
        "() => document.getElementById('task-id').textContent.includes('adjust with local')"
        " && document.getElementById('app').dataset.state === 'succeeded'"
    )
    wait_for_result(app)
    calls = host.events()["appCalls"]
    uploads = [c for c in calls if c["name"] == "upload_image"]
    edits = [c for c in calls if c["name"] == "edit_image"]
    assert len(uploads) == 2  # fake.png (refused by the server) and chelsea.png
    [uri] = edits[-1]["arguments"]["images"]
    assert uri.startswith("retouch://uploads/")
    assert "300×451" in app.locator("#facts").inner_text()
    assert host.events()["refused"] == []


def test_variants_a_masked_edit_at_a_vendor_download_and_continue(
    host: Host, openai: FakeOpenAI
) -> None:
    host.connect()
    host.run(
        "edit_image",
        {
            "images": [data_uri(png((96, 64)))],
            "function": "edit",
            "vendor": "openai",
            "prompt": "three takes",
            "n": 3,
        },
    )
    app = host.app()
    wait_for_result(app)
    variants = app.locator("#variants button")
    assert variants.count() == 3
    variants.nth(2).click()
    assert variants.nth(2).get_attribute("aria-pressed") == "true"
    app.wait_for_function(
        "() => document.getElementById('facts').textContent.includes('full image')"
    )
    app.get_by_role("button", name="Download").click()
    host.page.wait_for_function("() => host.events.downloads.length > 0")
    [item] = host.events()["downloads"][0]["contents"]
    assert item["type"] == "resource" and item["resource"]["mimeType"] == "image/png"
    assert item["resource"]["uri"].endswith("-2.png")
    downloaded = Image.open(io.BytesIO(base64.b64decode(item["resource"]["blob"])))
    assert downloaded.size == (1536, 1024)  # the fake's size nearest the input's shape

    app.get_by_role("button", name="Continue from this result").click()
    assert "result 3 of task" in app.locator("#subject-label").inner_text()
    box = app.locator("#mask").bounding_box()
    assert box is not None
    host.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    app.get_by_label("Function").select_option("edit")
    app.get_by_label("Vendor").select_option("openai")
    app.get_by_label("Prompt").fill("a red dot")
    app.get_by_role("button", name="Edit", exact=True).click()
    app.wait_for_function(
        "() => document.getElementById('task-id').textContent.includes('edit with openai')"
        " && document.getElementById('app').dataset.state === 'succeeded'"
        " && document.getElementById('variants').hidden"
    )
    edit = [c for c in host.events()["appCalls"] if c["name"] == "edit_image"][-1]
    assert edit["arguments"]["images"][0].endswith("/2")  # result 3 of the first task
    assert edit["arguments"]["mask"].startswith("data:image/png;base64,")
    request = openai.requests_to("edits")[-1]
    assert [f.field for f in request.files if f.field == "mask"] == ["mask"]


def test_a_host_without_apps_gets_the_plain_result(host: Host) -> None:
    listed = host.connect(apps=False)
    names = [t["name"] for t in listed["tools"]]
    assert "upload_image" not in names and "task_input" not in names
    answer = host.run(
        "edit_image", {"images": [data_uri(png())], "function": "adjust", "prompt": "flip"}
    )
    assert answer["app"] is False
    assert host.page.locator("iframe").count() == 0
    result = answer["result"]
    assert [c["type"] for c in result["content"]] == ["text", "image", "resource_link"]
    assert result["structuredContent"]["status"] == "succeeded"
    assert "succeeded" in host.page.locator("pre").inner_text()


def test_the_app_only_tools_are_kept_from_the_model(host: Host) -> None:
    listed = host.connect()
    tools = {t["name"]: t for t in listed["tools"]}
    for app_only in ("upload_image", "task_input"):
        assert tools[app_only]["_meta"]["ui"]["visibility"] == ["app"]
        assert app_only not in host.page.evaluate("host.modelTools()")
    assert tools["edit_image"]["_meta"]["ui"]["resourceUri"] == "ui://retouch/editor"
    assert {"edit_image", "check_task"} <= set(host.page.evaluate("host.modelTools()"))


def test_dark_theme_narrow_column_and_keyboard(host: Host) -> None:
    host.connect(theme="dark", column=320)
    host.run("edit_image", {"images": [coffee()], "function": "adjust", "prompt": "grayscale"})
    app = host.app()
    wait_for_result(app)
    assert app.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    background = app.evaluate("getComputedStyle(document.body).backgroundColor")
    r, g, b = (int(v) for v in re.findall(r"\d+", background)[:3])
    assert max(r, g, b) < 60, background
    unnamed = app.evaluate(
        """() => [...document.querySelectorAll('button, input, select, textarea, [tabindex]')]
          .filter((e) => e.offsetParent !== null)
          .filter((e) => !(e.getAttribute('aria-label') || e.labels?.[0]?.textContent.trim()
                           || e.textContent.trim()))
          .map((e) => e.outerHTML.slice(0, 80))"""
    )
    assert unnamed == []
    # Tab through the page: every stop shows a focus ring.
    app.locator("body").focus()
    seen = set()
    for _ in range(30):
        host.page.keyboard.press("Tab")
        where = app.evaluate(
            """() => { const e = document.activeElement; const s = getComputedStyle(e);
              return [e.id || e.tagName, s.outlineStyle, parseFloat(s.outlineWidth)]; }"""
        )
        if where[0] == "BODY":
            break
        assert where[1] != "none" and where[2] >= 2, where
        seen.add(where[0])
    assert {"mode-paint", "split", "function", "prompt", "edit", "choose"} <= seen
    keep(host, "app-dark.png")
