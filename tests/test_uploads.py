"""Uploads through the real HTTP app (httpx against the Starlette app, lifespan and all):
``POST /uploads`` raw and multipart, every bad input of the hostile-input suite, owners kept
apart, expiry by an injected clock, an edit by reference, the ``/upload`` page, and
``retouch upload`` against a live server, and the MCP Inspector's CLI round trip (upload →
``edit_image`` by reference → the result's link)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from server.app import build_server
from server.http import build_http_app, starlette_app
from server.owners import LOCAL
from server.result_urls import ResultURLs
from server.uploads import MULTIPART_OVERHEAD
from tests.chaos.helpers import BOMB_SIZES, BOMBS, encoded
from tests.conftest import DATA, MakeSettings, png
from tests.optional import INSPECTOR, needs
from tests.servers import free_port, http_server
from tests.test_hostile import CORPUS, EXIF_TRICKS, POLYGLOT_REFUSED, jpeg_with_raw_exif
from tools.cli import main
from tools.config import Settings
from tools.errors import NotFound
from tools.service import Editor

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
BASE = "http://127.0.0.1:8765"
TOKEN = "upload-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Served:
    """An app being served in this process: a client for it, its Editor and MCP server."""

    http: httpx.AsyncClient
    editor: Editor
    mcp: Any
    urls: ResultURLs
    app: Any


@asynccontextmanager
async def serve(
    settings: Settings, clock: Callable[[], float] = time.time
) -> AsyncIterator[Served]:
    urls = ResultURLs.from_settings(settings, clock)
    mcp = build_server(settings, result_urls=urls)
    app = build_http_app(mcp, settings, urls)
    inner: Any = starlette_app(app)
    # The lifespan is entered and left by one task of its own (its task group needs that;
    # a fixture's set-up and tear-down may run in different tasks).
    ready, stop = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        async with inner.router.lifespan_context(inner):
            ready.set()
            await stop.wait()

    holder = asyncio.create_task(hold())
    await asyncio.wait([holder, asyncio.create_task(ready.wait())], return_when="FIRST_COMPLETED")
    if holder.done():
        holder.result()  # the lifespan failed: say why
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as http:
            yield Served(http, inner.state.editor, mcp, urls, app)
    finally:
        stop.set()
        await holder


@pytest.fixture
def token_settings(make_settings: MakeSettings) -> Settings:
    return make_settings(
        f'[mcp]\nauth_token = "{TOKEN}"\n[media]\nmax_bytes = 200000\nfetch_timeout_s = 0.5\n'
        '[vendors.local]\nesrgan = "off"\n'
    )


@pytest.fixture
async def served(token_settings: Settings) -> AsyncIterator[Served]:
    async with serve(token_settings) as running:
        yield running


def multipart(data: bytes, field: str = "file", mime: str = "image/png") -> dict[str, Any]:
    return {"files": {field: ("photo.png", data, mime)}}


async def post(served: Served, data: bytes, how: str = "raw", **kw: Any) -> httpx.Response:
    if how == "raw":
        headers = {**AUTH, "Content-Type": kw.pop("mime", "image/png")}
        return await served.http.post("/uploads", content=data, headers=headers, **kw)
    return await served.http.post("/uploads", headers=AUTH, **multipart(data), **kw)


async def stored_nothing(served: Served, settings: Settings) -> bool:
    rows = await served.editor.store.db.execute_fetchall("SELECT COUNT(*) FROM uploads")  # type: ignore[attr-defined]
    files = [p for p in settings.store.results_dir.rglob("*") if p.is_file()]
    return rows[0][0] == 0 and files == []


def refused(answer: httpx.Response, status: int | set[int], error: str | None = None) -> None:
    statuses = {status} if isinstance(status, int) else status
    assert answer.status_code in statuses, (answer.status_code, answer.text)
    body = answer.json()
    assert set(body) == {"error", "message"} and body["message"], body
    if error is not None:
        assert body["error"] == error, body


# ---- what a good upload answers -------------------------------------------------------------


@pytest.mark.parametrize("how", ["raw", "multipart"])
async def test_an_upload_answers_its_reference_raw_or_multipart(served: Served, how: str) -> None:
    photo = png((64, 48))
    answer = await post(served, photo, how)
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert set(body) == {"uri", "mime_type", "width", "height", "bytes", "expires_at"}
    assert re.fullmatch(r"retouch://uploads/[0-9a-f]{32}", body["uri"])
    assert (body["mime_type"], body["width"], body["height"]) == ("image/png", 64, 48)
    assert body["bytes"] == len(photo)
    stored = await served.editor.upload(body["uri"].rsplit("/", 1)[1], "default")
    assert stored.data == photo


async def test_the_type_comes_from_the_content_not_the_header(served: Served) -> None:
    jpeg = encoded("JPEG")
    answer = await post(served, jpeg, mime="image/png")
    assert answer.status_code == 201 and answer.json()["mime_type"] == "image/jpeg"
    octets = await post(served, jpeg, mime="application/octet-stream")
    assert octets.status_code == 201
    gif = await post(served, CORPUS["GIF-anim"], mime="image/gif")  # first frame, as PNG
    assert gif.status_code == 201 and gif.json()["mime_type"] == "image/png"


async def test_uploads_need_the_token_and_the_page_does_not(served: Served) -> None:
    answer = await served.http.post(
        "/uploads", content=png(), headers={"Content-Type": "image/png"}
    )
    refused(answer, 401, "unauthorized")
    wrong = await served.http.post(
        "/uploads",
        content=png(),
        headers={"Content-Type": "image/png", "Authorization": "Bearer nope"},
    )
    refused(wrong, 401)
    assert (await served.http.get("/upload")).status_code == 200
    assert (await served.http.get("/uploads")).status_code == 401  # only the page is open
    assert (await served.http.post("/upload", headers=AUTH)).status_code == 405


# ---- every bad input is a clear 4xx, and nothing is stored --------------------------------


@pytest.mark.parametrize("how", ["raw", "multipart"])
async def test_hostile_inputs_are_clear_refusals_and_store_nothing(
    served: Served, token_settings: Settings, how: str
) -> None:
    for fmt, bomb in sorted(BOMBS.items()):
        answer = await post(served, bomb(*BOMB_SIZES[fmt]), how)
        refused(answer, 413, "too_large")
        assert "decompression bombs" in answer.json()["message"], fmt
    for data in POLYGLOT_REFUSED.values():
        refused(await post(served, data, how), {400, 415}, None)
    svg = b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'
    refused(
        await post(served, svg, how, **({"mime": "image/svg+xml"} if how == "raw" else {})),
        415,
        "not_an_image",
    )
    refused(await post(served, b"just some text", how), 415, "not_an_image")
    for fmt in ("PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"):
        data = CORPUS[fmt]
        for cut in (1, 8, 16, len(data) // 2):
            refused(await post(served, data[:cut], how), {400, 415})
    huge = png((16, 16)) + b"\0" * 200_001
    refused(await post(served, huge, how), 413, "too_large")
    refused(await post(served, b"", how), 400, "empty")
    assert await stored_nothing(served, token_settings)


async def test_corrupt_and_mutated_files_never_crash_the_route(
    served: Served, token_settings: Settings
) -> None:
    rng = random.Random(11)
    accepted = 0
    samples = sorted(CORPUS.values()) + [jpeg_with_raw_exif(t) for t in EXIF_TRICKS.values()]
    for round_ in range(80):
        data = bytearray(rng.choice(samples))
        for _ in range(rng.randint(1, 6)):
            pos = rng.randrange(len(data))
            op = rng.choice(["set", "set", "insert", "delete", "cut"])
            if op == "set":
                data[pos] = rng.randrange(256)
            elif op == "insert":
                data[pos:pos] = rng.randbytes(rng.randint(1, 8))
            elif op == "delete":
                del data[pos : pos + rng.randint(1, 16)]
            else:
                del data[max(pos, 1) :]
        answer = await post(served, bytes(data), "multipart" if round_ % 2 else "raw")
        if answer.status_code == 201:
            accepted += 1
        else:
            refused(answer, {400, 413, 415})
    rows = await served.editor.store.db.execute_fetchall("SELECT COUNT(*) FROM uploads")  # type: ignore[attr-defined]
    assert rows[0][0] == accepted  # an upload row for each 201, none for a refusal


@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/json",
        "",
        "application/x-www-form-urlencoded",
        "imagé/png",
        "\xffimage/png",
        ";;;",
        "image",
    ],
)
async def test_a_body_of_another_type_is_refused_unread(served: Served, content_type: str) -> None:
    read: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        read.append(1)
        yield png()

    headers = {**AUTH, "Content-Type": content_type.encode("latin-1")} if content_type else AUTH
    answer = await served.http.post("/uploads", content=body(), headers=headers)
    refused(answer, 415, "unsupported_media_type")
    assert read == []


async def test_a_huge_body_is_refused_by_its_length_before_reading(served: Served) -> None:
    sent: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            sent.append(64 * 1024)
            yield b"\0" * (64 * 1024)

    declared = {**AUTH, "Content-Type": "image/png", "Content-Length": str(10**9)}
    refused(
        await served.http.post("/uploads", content=endless(), headers=declared), 413, "too_large"
    )
    assert sent == []
    # Without a length (chunked), reading stops one chunk past the limit.
    chunked = {**AUTH, "Content-Type": "image/png"}
    refused(
        await served.http.post("/uploads", content=endless(), headers=chunked), 413, "too_large"
    )
    assert sum(sent) <= 200_000 + 64 * 1024
    sent.clear()
    head = b'--x\r\nContent-Disposition: form-data; name="file"\r\n\r\n'

    async def endless_file() -> AsyncIterator[bytes]:
        yield head
        async for chunk in endless():
            yield chunk

    multi = {**AUTH, "Content-Type": "multipart/form-data; boundary=x"}
    refused(await served.http.post("/uploads", content=endless_file(), headers=multi), 413)
    assert sum(sent) <= 200_000 + 64 * 1024  # the file part is capped on its own
    sent.clear()
    other_field = b'--x\r\nContent-Disposition: form-data; name="junk"\r\n\r\n'

    async def endless_junk() -> AsyncIterator[bytes]:
        yield other_field
        async for chunk in endless():
            yield chunk

    refused(await served.http.post("/uploads", content=endless_junk(), headers=multi), 413)
    assert sum(sent) <= 200_000 + MULTIPART_OVERHEAD + 64 * 1024  # and the body as a whole


async def test_a_multipart_file_just_over_the_limit_is_too_large(served: Served) -> None:
    refused(await post(served, b"\0" * 200_001, "multipart"), 413, "too_large")


async def test_a_slow_body_times_out(served: Served) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        yield png()[:10]
        await asyncio.sleep(20)  # the idle limit is 0.5 s
        yield png()[10:]

    headers = {**AUTH, "Content-Type": "image/png"}
    started = time.monotonic()
    refused(await served.http.post("/uploads", content=trickle(), headers=headers), 408, "timeout")
    assert time.monotonic() - started < 10  # cut at the idle limit, not after the body


async def test_a_client_that_goes_away_mid_body_gets_an_answer_not_a_crash(
    served: Served, token_settings: Settings
) -> None:
    incoming = [
        {"type": "http.request", "body": png()[:20], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"content-type", b"image/png"), (b"host", b"127.0.0.1:8765")]
    headers.append((b"authorization", AUTH["Authorization"].encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/uploads",
        "raw_path": b"/uploads",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8765),
    }
    await served.app(scope, receive, send)
    assert sent[0]["status"] == 400 and b'"disconnected"' in sent[1]["body"]
    assert await stored_nothing(served, token_settings)


async def test_multipart_faults(served: Served, token_settings: Settings) -> None:
    http = served.http
    other = await http.post("/uploads", headers=AUTH, **multipart(png(), field="image"))
    refused(other, 422, "missing_field")
    text_field = await http.post(
        "/uploads",
        headers=AUTH,
        data={"file": "not a file"},
        files={"x": ("x.txt", b"x", "text/plain")},
    )
    refused(text_field, 415, "not_an_image")
    two = await http.post(
        "/uploads",
        headers=AUTH,
        files=[("file", ("a.png", png(), "image/png")), ("file", ("b.png", png(), "image/png"))],
    )
    refused(two, 400, "malformed")
    no_boundary = {**AUTH, "Content-Type": "multipart/form-data"}
    refused(await http.post("/uploads", content=b"x", headers=no_boundary), 400, "malformed")
    garbage = {**AUTH, "Content-Type": "multipart/form-data; boundary=b0undary"}
    refused(
        await http.post("/uploads", content=b"\r\n\r\nnot multipart at all" * 50, headers=garbage),
        400,
        "malformed",
    )
    whole = httpx.Request("POST", BASE, **multipart(png((30, 30)))).read()
    ctype = httpx.Request("POST", BASE, **multipart(png((30, 30)))).headers["content-type"]
    boundary = ctype.split("boundary=")[1]
    cut = await http.post(
        "/uploads",
        content=whole[: len(whole) // 2],
        headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    refused(cut, 400, "malformed")
    empty = await http.post("/uploads", headers=AUTH, **multipart(b""))
    refused(empty, 400, "empty")
    many_headers = (
        f"--{boundary}\r\n".encode()
        + b"".join(f"X-H{i}: v\r\n".encode() for i in range(50))
        + b'Content-Disposition: form-data; name="file"\r\n\r\n'
        + png()
        + f"\r\n--{boundary}--\r\n".encode()
    )
    refused(
        await http.post(
            "/uploads",
            content=many_headers,
            headers={**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"},
        ),
        400,
        "malformed",
    )
    assert await stored_nothing(served, token_settings)


async def test_a_cross_site_page_cannot_upload(make_settings: MakeSettings) -> None:
    settings = make_settings('[mcp]\npublic_url = "https://retouch.example.com"\n')
    async with serve(settings) as served:
        headers = {"Content-Type": "image/png"}
        for origin in ("https://evil.example", "null", "http://[::1", "http://127.0.0.1:1"):
            evil = {**headers, "Origin": origin}
            refused(await served.http.post("/uploads", content=png(), headers=evil), 403)
        for origin in (BASE, "https://retouch.example.com"):
            same = {**headers, "Origin": origin}
            assert (
                await served.http.post("/uploads", content=png(), headers=same)
            ).status_code == 201


# ---- owners, expiry, use ------------------------------------------------------------------


async def test_an_upload_is_its_owners_alone(
    make_settings: MakeSettings, token_settings: Settings
) -> None:
    # Two servers on one store: one with a token (owner "default"), one on loopback without
    # (owner "local"), the same owner as the in-memory MCP client.
    open_settings = make_settings(
        '[media]\nmax_bytes = 200000\n[vendors.local]\nesrgan = "off"\n', name="open.toml"
    )
    assert open_settings.store.path == token_settings.store.path
    async with serve(token_settings) as guarded:
        theirs = (await post(guarded, png((40, 40)))).json()["uri"]
        # The second server starts after that upload: a process's first clean-up can delete
        # a blob that another process has stored but not linked yet (see the report).
        async with serve(open_settings) as local:
            headers = {"Content-Type": "image/png"}
            answer = await local.http.post("/uploads", content=png((30, 20)), headers=headers)
            mine = answer.json()["uri"]
            async with Client(local.mcp) as client:
                edit = {"function": "adjust", "prompt": "rotate 90", "wait_seconds": 30}
                other = await client.call_tool("edit_image", {**edit, "images": [theirs]})
                unknown = await client.call_tool(
                    "edit_image", {**edit, "images": ["retouch://uploads/" + "0" * 32]}
                )
                own = await client.call_tool("edit_image", {**edit, "images": [mine]})
                as_mask = await client.call_tool(
                    "edit_image",
                    {"images": [mine], "mask": theirs, "function": "remove_watermark"},
                )
        assert await guarded.editor.upload(theirs.rsplit("/", 1)[1], "default")
    assert other.is_error and unknown.is_error
    # Another owner's upload reads exactly as an unknown one.
    assert other.content[0].text.replace(theirs, "X") == unknown.content[0].text.replace(
        "retouch://uploads/" + "0" * 32, "X"
    )
    assert "no such upload" in other.content[0].text
    assert as_mask.is_error and "no such upload" in as_mask.content[0].text
    assert not own.is_error and own.structured_content["status"] == "succeeded"
    assert (
        own.structured_content["results"][0]["width"],
        own.structured_content["results"][0]["height"],
    ) == (20, 30)


async def test_an_upload_expires_with_retention_unless_a_task_uses_it(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings("[media]\nmax_bytes = 200000\n", name="short.toml")
    settings.store.retention_days = 2
    now = [time.time()]
    async with serve(settings) as served:
        served.editor.clock = lambda: now[0]
        answer = await served.http.post(
            "/uploads", content=png(), headers={"Content-Type": "image/png"}
        )
        body = answer.json()
        upload_id = body["uri"].rsplit("/", 1)[1]
        expires = datetime.fromisoformat(body["expires_at"]).timestamp()
        assert abs(expires - (now[0] + 2 * 86400)) < 1
        request = {"images": [body["uri"]], "function": "adjust", "prompt": "rotate 90"}
        async with Client(served.mcp) as client:
            used = await client.call_tool("edit_image", {**request, "wait_seconds": 30})
            assert not used.is_error
            now[0] += 2 * 86400 + 1  # two days later
            late = await client.call_tool("edit_image", request)
        assert late.is_error and "no such upload" in late.content[0].text
        with pytest.raises(NotFound, match="no such upload"):
            await served.editor.upload(upload_id, LOCAL)
        # The row goes at clean-up (real time: made to look expired); the task keeps the bytes.
        await served.editor.store.db.execute(  # type: ignore[attr-defined]
            "UPDATE uploads SET expires_at = 0"
        )
        await served.editor.store.cleanup(retention_days=2)
        task_id = used.structured_content["id"]
        [sha] = await served.editor.store.task_blobs(task_id, "input")
        assert (await served.editor.store.read_blob(sha)).data == png()


async def test_a_tiny_retention_still_gives_an_upload_an_hour(make_settings: MakeSettings) -> None:
    settings = make_settings(name="zero.toml")
    settings.store.retention_days = 0
    async with serve(settings) as served:
        before = time.time()
        upload = await served.editor.put_upload(png(), "someone")
        assert upload.expires_at.timestamp() >= before + 3600 - 1


# ---- the page ------------------------------------------------------------------------------


class Page(HTMLParser):
    """Every tag with its attributes, and the text of script and style blocks."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.blocks: dict[str, list[str]] = {"script": [], "style": []}
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in = tag if tag in self.blocks else None

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in:
            self.blocks[self._in].append(data)


async def test_the_upload_page_is_self_contained_under_a_strict_csp(served: Served) -> None:
    answer = await served.http.get("/upload")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
    assert answer.headers["x-content-type-options"] == "nosniff"
    csp = dict(
        part.strip().split(" ", 1) for part in answer.headers["content-security-policy"].split(";")
    )
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert (
        csp["frame-ancestors"] == "'none'"
        and "unsafe" not in answer.headers["content-security-policy"]
    )
    page = Page()
    page.feed(answer.text)
    names = [tag for tag, _ in page.tags]
    assert "link" not in names and "iframe" not in names and "object" not in names
    for tag, attrs in page.tags:
        for name, value in attrs.items():
            assert not name.startswith("on"), (tag, name)  # no inline handlers (CSP blocks them)
            if name in ("src", "href", "action", "srcset", "poster", "data"):
                pytest.fail(f"<{tag} {name}={value!r}> loads something")
    assert [a for t, a in page.tags if t == "script"] == [{}]  # one inline script, no src
    for kind, blocks in page.blocks.items():
        [block] = blocks
        digest = base64.b64encode(hashlib.sha256(block.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp[f"{kind}-src"]
        assert not re.search(r"https?:|//[a-z]|@import", block, flags=re.I), kind
        assert "url(" not in block, kind
    assert "sessionStorage" in page.blocks["script"][0]
    assert "localStorage" not in page.blocks["script"][0]


# ---- retouch upload against a live server --------------------------------------------------


@pytest.fixture
def live_server(make_settings: MakeSettings) -> Iterator[tuple[str, Settings]]:
    port = free_port()
    settings = make_settings(f'[mcp]\nport = {port}\nauth_token = "{TOKEN}"\n')
    with http_server(settings.source, port) as (base, _):
        yield base, settings


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def retouch(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Ran]:
    """Runs the ``retouch`` command in this process: its exit code and output."""

    def run(*args: str, token_env: str | None = None) -> Ran:
        if token_env:
            monkeypatch.setenv("RETOUCH_TOKEN", token_env)
        else:
            monkeypatch.delenv("RETOUCH_TOKEN", raising=False)
        capsys.readouterr()
        with pytest.raises(SystemExit) as exited:
            main(list(args))
        out = capsys.readouterr()
        return Ran(int(exited.value.code or 0), out.out, out.err)

    return run


def test_retouch_upload_against_a_live_server(
    live_server: tuple[str, Settings], tmp_path: Path, retouch: Callable[..., Ran]
) -> None:
    base, settings = live_server
    photo = DATA / "coffee.png"
    done = retouch("upload", str(photo), "--server", base, "--token", TOKEN)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"retouch://uploads/[0-9a-f]{32}\n", done.stdout)
    as_json = retouch("upload", str(photo), "--server", base, "--json", token_env=TOKEN)
    assert as_json.returncode == 0, as_json.stderr
    assert '"width": ' in as_json.stdout and '"expires_at"' in as_json.stdout
    # Without --server and --token: the config's own server and token.
    own = retouch("--config", settings.source, "upload", str(photo))
    assert own.returncode == 0, own.stderr
    denied = retouch("upload", str(photo), "--server", base, "--token", "wrong")
    assert denied.returncode == 2 and "send Authorization" in denied.stderr
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    bad = retouch("upload", str(text), "--server", base, "--token", TOKEN)
    assert bad.returncode == 2 and "not an image" in bad.stderr
    missing = retouch("upload", str(tmp_path / "nope.png"), "--server", base, "--token", TOKEN)
    assert missing.returncode == 2 and "no file" in missing.stderr
    unreachable = retouch("upload", str(photo), "--server", f"http://127.0.0.1:{free_port()}")
    assert unreachable.returncode == 2 and "cannot reach" in unreachable.stderr


async def test_a_remote_agent_edits_an_upload_and_hands_over_a_link(
    live_server: tuple[str, Settings], retouch: Callable[..., Ran]
) -> None:
    """Over real HTTP with the SDK's client: upload, edit by reference, open the link."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    base, _ = live_server
    uploaded = await asyncio.to_thread(
        retouch, "upload", str(DATA / "chelsea.png"), "--server", base, "--token", TOKEN
    )
    uri = uploaded.stdout.strip()
    http = httpx2.AsyncClient(headers=AUTH, timeout=60)
    async with http, Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
        done = await client.call_tool(
            "edit_image",
            {"images": [uri], "function": "adjust", "prompt": "grayscale", "wait_seconds": 60},
        )
    assert not done.is_error, done.content
    [result] = done.structured_content["results"]
    async with httpx.AsyncClient() as browser:
        opened = await browser.get(result["url"])
    assert opened.status_code == 200
    assert hashlib.sha256(opened.content).hexdigest() == result["sha256"]


# ---- the MCP Inspector's CLI: the remote agent's round trip with a client not ours ---------


def inspector(base: str, *args: str) -> dict:
    """One Inspector CLI call to the server's MCP endpoint; its JSON answer."""
    done = subprocess.run(
        [
            str(INSPECTOR),
            "--cli",
            f"{base}/mcp",
            "--transport",
            "http",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


@needs("inspector")
def test_upload_edit_by_reference_and_open_the_link(
    live_server: tuple[str, Settings], retouch: Callable[..., Ran]
) -> None:
    base, _ = live_server
    uploaded = retouch("upload", str(DATA / "coffee.png"), "--server", base, "--token", TOKEN)
    assert uploaded.returncode == 0, uploaded.stderr
    uri = uploaded.stdout.strip()
    tools = inspector(base, "--method", "tools/list")
    assert "retouch://uploads/" in json.dumps(
        next(t for t in tools["tools"] if t["name"] == "edit_image")["inputSchema"]
    )
    answer = inspector(
        base,
        "--method",
        "tools/call",
        "--tool-name",
        "edit_image",
        "--tool-arg",
        f"images={json.dumps([uri])}",
        "--tool-arg",
        "function=adjust",
        "--tool-arg",
        "prompt=rotate 90",
        "--tool-arg",
        "wait_seconds=60",
    )
    assert answer["isError"] is False, answer["content"][0]
    task = answer["structuredContent"]
    assert task["status"] == "succeeded"
    [result] = task["results"]
    assert result["url"].startswith(f"{base}/results/{task['id']}/0?exp=")
    assert result["url"] in answer["content"][0]["text"]
    assert [c["type"] for c in answer["content"]] == ["text", "image", "resource_link"]
    opened = httpx.get(result["url"], timeout=30)  # a browser's request: no token
    assert opened.status_code == 200
    assert opened.headers["content-type"] == result["mime_type"]
    assert hashlib.sha256(opened.content).hexdigest() == result["sha256"]
    assert (result["width"], result["height"]) == (400, 600)  # coffee.png is 600×400
