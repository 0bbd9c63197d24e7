"""Hostile input: whatever a client sends, Retouch answers with one of its typed errors
(``RetouchError``) or does the edit — never another exception, a hang, a private-network
request, a decoded bomb or a file outside its store.

Property tests (hypothesis, derandomized so every run tries the same inputs) cover the
media functions, the catalogue, ``Editor.edit_image`` and the MCP tools; crafted files cover
bombs, corrupt, truncated and polyglot images, animations and EXIF; then SSRF forms, the
streaming byte cap, and path traversal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import ipaddress
import json
import os
import re
import resource
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from mcp import Client
from PIL import GifImagePlugin, Image, ImageFile, PngImagePlugin
from pydantic import ValidationError

from server.app import build_server
from tests.chaos.helpers import (
    BOMB_SIZES,
    BOMBS,
    LoopThread,
    RawImageHost,
    encoded,
    gif_bomb,
    with_exif_orientation,
)
from tests.conftest import DATA, MakeSettings, data_uri, png, sample
from tools import catalog, media
from tools.errors import (
    ImageError,
    InvalidParameter,
    NotFound,
    RetouchError,
    UnsafeURL,
)
from tools.models import EditRequest, TaskStatus
from tools.service import Editor

# Pillow warns about the corrupt files it is fed here on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
POLICY = media.MediaPolicy(max_bytes=2_000_000, max_pixels=4_000_000)
PROPERTY = hsettings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
    ],
)

# ---- shared pools of hostile material ---------------------------------------------------

PUBLIC_IP = "93.184.216.34"
RESOLVES = {
    "public.test": [PUBLIC_IP],
    "metadata.test": ["169.254.169.254"],
    "rebind.test": [PUBLIC_IP, "10.1.2.3"],
    "six.test": ["2002:7f00:1::1"],
    "localhost": ["127.0.0.1", "::1"],
    "localhost.localdomain": ["127.0.0.1"],
    "127.0.0.1.nip.io": ["127.0.0.1"],
    "10.0.0.1.xip.io": ["10.0.0.1"],
    "v6only.test": ["::1"],
    "mixed.test": ["8.8.8.8", "127.0.0.1"],
    "evil.test": [PUBLIC_IP],
}


async def stub_resolver(host: str, port: int) -> list[str]:
    """DNS without a network: the table above, IP literals as the C library reads them
    (octal, hex, short forms), anything else unknown."""
    if host in RESOLVES:
        return RESOLVES[host]
    try:
        return await asyncio.wait_for(media.system_resolver(host, port), 2)
    except (OSError, TimeoutError, UnicodeError, ValueError):
        raise OSError("unknown host") from None


def corpus() -> dict[str, bytes]:
    """Small valid files of every accepted format and a few awkward modes."""
    out = {fmt: encoded(fmt) for fmt in ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")}
    out["WEBP-lossless"] = encoded("WEBP", lossless=True)
    out["TIFF-lzw"] = encoded("TIFF", compression="tiff_lzw")
    out["TIFF-I;16"] = encoded("TIFF", mode="I;16")
    out["TIFF-F"] = encoded("TIFF", mode="F")
    out["TIFF-CMYK"] = encoded("TIFF", mode="CMYK")
    out["PNG-LA"] = encoded("PNG", mode="LA")
    out["PNG-P"] = encoded("PNG", mode="P")
    out["JPEG-exif6"] = with_exif_orientation("JPEG", 6)
    frames = [Image.new("P", (20, 10), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out["GIF-anim"] = buf.getvalue()
    buf = io.BytesIO()
    Image.new("RGB", (20, 10)).save(
        buf, "PNG", save_all=True, append_images=[Image.new("RGB", (20, 10), (9, 9, 9))]
    )
    out["APNG"] = buf.getvalue()
    return out


CORPUS = corpus()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid file with a few bytes changed, inserted, deleted, or its tail cut."""
    data = bytearray(draw(st.sampled_from(sorted(CORPUS.values()))))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["set", "set", "insert", "delete", "cut"]))
        if op == "set":
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        else:
            del data[pos:]
    return bytes(data)


IMAGE_BYTES = st.one_of(
    st.binary(max_size=512), mutated(), st.sampled_from(sorted(CORPUS.values()))
)

URL_HOSTS = st.one_of(
    st.sampled_from(
        [*RESOLVES, "127.1", "0x7f000001", "2130706433", "0177.0.0.1", "[::1]", "[::]", "0"]
    ),
    st.from_regex(r"[a-z0-9.-]{1,16}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
SCHEMES = ["http", "https", "HTTP", "ftp", "file", "gopher", "dict", "retouch", "data", "jar"]
INTERESTING = [
    str(DATA / "coffee.png"),
    str(DATA / "chelsea.png"),
    "/etc/passwd",
    "/proc/self/environ",
    "/proc/self/pagemap",
    "/dev/zero",
    "/dev/stdin",
    "/",
    "~",
    "~nosuchuser/x.png",
    "a\0b.png",
    "../../../../etc/passwd",
    "x" * 5000,
    "retouch://tasks/" + "0" * 32 + "/0",
    "retouch://tasks/../../etc/passwd/0",
    "data:image/png;base64,",
    "data:,",
    "data:image/png;base64,@@@",
    data_uri(png((64, 48))),
    data_uri(png((64, 48)), "text/html"),
    f"http://public.test/{'a' * 10}.png",
    "http://metadata.test/latest/meta-data/",
    "javascript:alert(1)",
    "\thttp://127.0.0.1/\n",
    "",
    " ",
]
SOURCES = st.one_of(
    st.text(max_size=60),
    st.sampled_from(INTERESTING),
    st.builds(
        lambda scheme, host, path: f"{scheme}://{host}/{path}",
        st.sampled_from(SCHEMES),
        URL_HOSTS,
        st.text(max_size=12),
    ),
    st.builds(
        lambda data, mime: data_uri(data, mime),
        IMAGE_BYTES,
        st.sampled_from(["image/png", "image/jpeg", "text/html", ""]),
    ),
)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
LIKELY = st.fixed_dictionaries(  # requests the local engine could run, with hostile extras
    {
        "images": st.lists(
            st.sampled_from(
                [data_uri(png((64, 48))), str(DATA / "coffee.png"), "http://public.test/a.png"]
            ),
            min_size=1,
            max_size=1,
        ),
        "function": st.sampled_from(["adjust", "lineart", "stylization_all", "super_resolution"]),
        "prompt": st.sampled_from(["rotate 90", "oil painting", "blur 2; grayscale"])
        | st.text(max_size=60),
    },
    optional={
        "watermark": st.none() | st.booleans() | st.text(max_size=120),
        "upscale_factor": st.none() | st.integers(-1, 6),
        "options": st.dictionaries(st.sampled_from(["style", "method"]), JSON, max_size=1),
        "vendor": st.sampled_from(["local", "LOCAL", "nope"]),
    },
)
REQUESTS = st.fixed_dictionaries(
    {"images": st.lists(SOURCES, min_size=1, max_size=3)},
    optional={
        "prompt": st.text(max_size=120) | st.sampled_from(["oil painting", "rotate 90", "'; --"]),
        "function": st.sampled_from(sorted(catalog.FUNCTIONS)) | st.text(max_size=20),
        "mask": st.none() | SOURCES,
        "vendor": st.sampled_from(["local", "nope", "LOCAL", "", "../local"]) | st.none(),
        "n": st.integers(-3, 12),
        "seed": st.integers(-1, 2**40),
        "negative_prompt": st.none() | st.text(max_size=40),
        "watermark": st.none() | st.booleans() | st.text(max_size=120),
        "size": st.none()
        | st.text(max_size=12)
        | st.sampled_from(["1024x1024", "auto", "0x0", "99999x1", "1024*768", "-1x5"]),
        "expand": st.none()
        | st.dictionaries(
            st.sampled_from(["top", "bottom", "left", "right", "x"]), st.floats(), max_size=4
        ),
        "upscale_factor": st.none() | st.integers(-1, 10),
        "options": st.dictionaries(
            st.sampled_from(["style", "method", "x", ""]) | st.text(max_size=6), JSON, max_size=3
        ),
    },
)


@pytest.fixture
def hostile_settings(make_settings: MakeSettings) -> Any:
    # Real-ESRGAN off: a valid super_resolution must cost milliseconds, not seconds.
    return make_settings('[media]\nfetch_timeout_s = 2\n[vendors.local]\nesrgan = "off"\n')


def image_transport(requests: list[httpx.Request]) -> httpx.MockTransport:
    """A stand-in for the internet: records every request, answers a small PNG."""
    photo = png((64, 48))

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=photo, headers={"content-type": "image/png"})

    return httpx.MockTransport(handle)


# ---- property tests ----------------------------------------------------------------------


@PROPERTY
@given(data=IMAGE_BYTES)
def test_inspect_raises_only_image_errors(data: bytes) -> None:
    try:
        image = media.inspect(data, POLICY)
    except ImageError:
        return
    assert image.width * image.height <= POLICY.max_pixels
    decoded = image.to_pil()  # what was accepted decodes again, as declared
    assert decoded.size == (image.width, image.height)
    assert media.FORMATS[decoded.format] == image.mime_type


@PROPERTY
@given(uri=st.one_of(st.text(max_size=200), SOURCES.filter(lambda s: s.startswith("data:"))))
def test_decode_data_uri_raises_only_image_errors(uri: str) -> None:
    with contextlib.suppress(ImageError):
        assert isinstance(media.decode_data_uri(uri, POLICY), bytes)


def test_load_raises_only_typed_errors_and_never_leaves_public_space(tmp_path: Path) -> None:
    requests: list[httpx.Request] = []
    policies = [
        media.MediaPolicy(resolver=stub_resolver, allow_local_paths=allow, timeout_s=2)
        for allow in (False, True)
    ]

    async def lookup(task_id: str, index: int) -> Path:
        raise NotFound("no such result")

    with LoopThread() as loop:
        client = httpx.AsyncClient(transport=image_transport(requests))

        @PROPERTY
        @given(source=SOURCES, allow=st.booleans())
        def check(source: str, allow: bool) -> None:
            with contextlib.suppress(RetouchError):
                loop.run(media.load(source, policies[allow], client, lookup))

        try:
            check()
        finally:
            loop.run(client.aclose())
    # Every request that left went to a public address (an IP literal, or the one public
    # name, pinned to its address).
    assert requests and all(is_public(r.url.host) for r in requests)


def is_public(host: str) -> bool:
    return all(media._public(ip) for ip in media._reaches(ipaddress.ip_address(host)))


@PROPERTY
@given(body=REQUESTS | LIKELY)
def test_catalogue_validation_raises_only_typed_errors(body: dict[str, Any]) -> None:
    try:
        request = EditRequest(**body)
    except ValidationError:
        return  # the model is the first gate (MCP turns this into a tool error)
    with contextlib.suppress(RetouchError):
        catalog.validate(request)


def test_edit_image_raises_only_typed_errors(hostile_settings: Any) -> None:
    requests: list[httpx.Request] = []
    outcomes = {"stored": 0, "refused": 0, "invalid model": 0}
    with LoopThread() as loop:
        editor = Editor(
            hostile_settings, allow_local_paths=True, resolver=stub_resolver, run_worker=False
        )
        loop.run(editor.start())
        real_fetcher = editor.fetcher
        editor.fetcher = httpx.AsyncClient(transport=image_transport(requests))

        @PROPERTY
        @given(body=REQUESTS | LIKELY)
        def check(body: dict[str, Any]) -> None:
            try:
                request = EditRequest(**body)
            except ValidationError:
                outcomes["invalid model"] += 1
                return
            try:
                task = loop.run(editor.edit_image(request))
            except RetouchError as exc:
                assert exc.message and exc.code
                outcomes["refused"] += 1
                return
            assert task.status == TaskStatus.queued
            outcomes["stored"] += 1

        try:
            check()
        finally:
            loop.run(editor.fetcher.aclose())
            editor.fetcher = real_fetcher
            loop.run(editor.close())
    print(f"\nedit_image property test: {outcomes}")
    assert outcomes["stored"] and outcomes["refused"]  # both paths were exercised
    assert all(is_public(r.url.host) for r in requests)
    assert_store_names_only_hashes(hostile_settings.store.results_dir)


TOOLS = {
    "edit_image": [
        "images",
        "prompt",
        "function",
        "mask",
        "vendor",
        "n",
        "seed",
        "negative_prompt",
        "watermark",
        "size",
        "expand",
        "upscale_factor",
        "options",
        "wait_seconds",
    ],
    "check_task": ["task_id", "wait_seconds"],
    "cancel_task": ["task_id"],
    "list_tasks": ["limit"],
    "list_functions": ["vendor"],
}


@st.composite
def tool_calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(TOOLS)))
    if name == "edit_image" and draw(st.booleans()):
        args: dict[str, Any] = draw(REQUESTS | LIKELY)  # well-typed, hostile values
    else:
        keys = st.sampled_from(TOOLS[name]) | st.text(max_size=8)
        args = draw(st.dictionaries(keys, JSON | SOURCES, max_size=4))
    # Never make a call wait long: a valid edit would then run its operation to the end.
    args["wait_seconds"] = draw(st.sampled_from([0, 0.05, -1, "soon", None, 601]))
    if name not in ("edit_image", "check_task"):
        args.pop("wait_seconds")
    return name, args


def test_mcp_tools_answer_hostile_arguments_with_tool_errors(
    hostile_settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(media, "system_resolver", stub_resolver)
    server = build_server(hostile_settings, allow_local_paths=True)
    counts = {"ok": 0, "tool error": 0}
    with LoopThread() as loop:
        opened: asyncio.Future[Client] = loop.loop.create_future()
        stop = asyncio.Event()

        async def hold() -> None:
            async with Client(server) as client:
                opened.set_result(client)
                await stop.wait()

        holder = asyncio.run_coroutine_threadsafe(hold(), loop.loop)

        async def opened_client() -> Client:
            return await opened

        client = loop.run(opened_client())

        @PROPERTY
        @given(call=tool_calls())
        def check(call: tuple[str, dict[str, Any]]) -> None:
            name, args = call
            result = loop.run(client.call_tool(name, args))
            if not result.is_error:
                counts["ok"] += 1
                return
            counts["tool error"] += 1
            text = " ".join(getattr(c, "text", "") for c in result.content)
            # A crash reads exactly "Error executing tool <name>"; ours say what was wrong.
            assert text.strip() != f"Error executing tool {name}", args
            assert "Traceback" not in text

        try:
            check()
        finally:
            loop.loop.call_soon_threadsafe(stop.set)
            holder.result(30)
    print(f"\nMCP property test: {counts}")
    assert counts["ok"] and counts["tool error"]


# ---- crafted files -----------------------------------------------------------------------


@pytest.fixture
def decode_spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Records the size of every image Pillow decodes (ImageFile.load)."""
    seen: list[tuple[int, int]] = []
    real = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        seen.append(self.size)
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    return seen


@pytest.mark.parametrize("fmt", sorted(BOMBS))
def test_bombs_with_huge_headers_are_refused_before_decoding(
    fmt: str, decode_spy: list[tuple[int, int]]
) -> None:
    width, height = BOMB_SIZES[fmt]
    bomb = BOMBS[fmt](width, height)
    assert len(bomb) < 1024 and width * height > 250_000_000
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageError, match="decompression bombs"):
        media.inspect(bomb, media.MediaPolicy())  # the defaults: 50 MP
    assert decode_spy == []  # refused from the header alone
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100


@pytest.mark.parametrize("fmt", sorted(BOMBS))
def test_bombs_are_refused_from_every_source(fmt: str, tmp_path: Path) -> None:
    bomb = BOMBS[fmt](*BOMB_SIZES[fmt])
    path = tmp_path / f"bomb.{fmt.lower()}"
    path.write_bytes(bomb)
    policy = media.MediaPolicy(allow_local_paths=True)

    async def run() -> None:
        async with httpx.AsyncClient() as client:
            for source in (data_uri(bomb), str(path)):
                with pytest.raises(ImageError, match="decompression bombs"):
                    await media.load(source, policy, client)

    asyncio.run(run())


def test_a_10000_frame_gif_is_not_decoded_frame_by_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    frames_read: list[int] = []
    for plugin in (GifImagePlugin.GifImageFile, PngImagePlugin.PngImageFile):
        monkeypatch.setattr(plugin, "_seek", spying(plugin._seek, frames_read))
    animation = gif_bomb(1, 1, frames=10_000)
    image = media.inspect(animation, media.MediaPolicy())
    assert (image.mime_type, image.width, image.height) == ("image/png", 1, 1)
    assert set(frames_read) == {0}  # the first frame only
    # An APNG with many frames: only the first is decoded, too.
    frames_read.clear()
    buf = io.BytesIO()
    first = Image.new("RGB", (8, 8), (1, 2, 3))
    first.save(buf, "PNG", save_all=True, append_images=[first] * 300)
    assert media.inspect(buf.getvalue(), media.MediaPolicy()).width == 8
    assert set(frames_read) <= {0}


def spying(real: Any, log: list[int]) -> Any:
    def seek(self: Any, frame: int, *args: Any, **kw: Any) -> Any:
        log.append(frame)
        return real(self, frame, *args, **kw)

    return seek


def test_frames_larger_than_the_screen_are_measured() -> None:
    # A 1×1 GIF screen whose first frame is 60000×60000: Pillow grows the size, we refuse.
    head = gif_bomb(1, 1)[: 13 + 6]
    frame = b"\x2c" + (0).to_bytes(4, "little") + (60000).to_bytes(2, "little") * 2
    with pytest.raises(ImageError, match="decompression bombs"):
        media.inspect(head + frame + b"\x00\x02\x02\x44\x01\x00\x3b", media.MediaPolicy())


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "TIFF", "BMP"])
def test_corrupt_and_truncated_files_are_clear_errors(fmt: str) -> None:
    data = CORPUS[fmt]
    outcomes = set()
    for cut in (1, 8, 16, len(data) // 4, len(data) // 2, len(data) - 8, len(data) - 1):
        try:
            media.inspect(data[:cut], POLICY)
            outcomes.add("accepted")
        except ImageError:
            outcomes.add("refused")
    assert "refused" in outcomes
    garbled = bytearray(data)
    for i in range(len(garbled) // 3, len(garbled), 7):
        garbled[i] ^= 0x5A
    with contextlib.suppress(ImageError):
        media.inspect(bytes(garbled), POLICY)


POLYGLOT_REFUSED = {
    "svg with script": b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    "html": b"<!doctype html><img src=x onerror=alert(1)>",
    "pdf with a png inside": b"%PDF-1.4\n" + encoded("PNG"),
    "eps (Ghostscript)": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
    "psd": b"8BPS\x00\x01"
    + b"\x00" * 6
    + b"\x00\x03"
    + b"\x00\x00\x00\x10" * 2
    + b"\x00\x08\x00\x03",
    "ico": b"\x00\x00\x01\x00\x01\x00\x10\x10\x00\x00\x01\x00\x20\x00" + b"\x00" * 40,
    "zip": b"PK\x03\x04" + b"\x00" * 40,
    "png signature then html": b"\x89PNG\r\n\x1a\n<html><script>alert(1)</script>",
}


@pytest.mark.parametrize("name", sorted(POLYGLOT_REFUSED))
def test_non_images_and_broken_polyglots_are_refused(name: str) -> None:
    with pytest.raises(ImageError):
        media.inspect(POLYGLOT_REFUSED[name], POLICY)


def test_polyglots_are_typed_by_content_and_gif_payloads_are_dropped() -> None:
    # A valid PNG with a ZIP (or a script) appended is a PNG: typed by its bytes, whatever
    # the data: URI claims. It is only ever sent on to a vendor, never served back.
    zip_tail = b"PK\x03\x04" + b"<?php system($_GET['c']); ?>" * 4
    image = asyncio.run(load_any(data_uri(encoded("PNG") + zip_tail, "text/html")))
    assert (image.mime_type, image.width, image.height) == ("image/png", 40, 30)
    jpeg = encoded("JPEG", comment=b"<script>alert(1)</script>")
    assert media.inspect(jpeg, POLICY).mime_type == "image/jpeg"
    # GIFs are re-encoded as PNG: a script in a comment extension does not survive.
    buf = io.BytesIO()
    Image.new("P", (10, 10)).save(buf, "GIF", comment=b"*/=alert(1);/*")
    out = media.inspect(buf.getvalue(), POLICY)
    assert out.mime_type == "image/png" and b"alert" not in out.data


async def load_any(source: str) -> media.InputImage:
    async with httpx.AsyncClient() as client:
        return await media.load(source, POLICY, client)


@pytest.mark.parametrize(
    ("orientation", "size"),
    [
        (1, (40, 20)),
        (2, (40, 20)),
        (3, (40, 20)),
        (4, (40, 20)),
        (5, (20, 40)),
        (6, (20, 40)),
        (7, (20, 40)),
        (8, (20, 40)),
        (0, (40, 20)),
        (9, (40, 20)),
        (255, (40, 20)),
        (65535, (40, 20)),
    ],
)
def test_exif_orientation_values(orientation: int, size: tuple[int, int]) -> None:
    image = media.inspect(with_exif_orientation("JPEG", orientation), POLICY)
    assert (image.width, image.height) == size
    assert image.to_pil().size == size


@pytest.mark.parametrize("fmt", ["PNG", "WEBP", "TIFF"])
def test_exif_orientation_in_other_containers(fmt: str) -> None:
    image = media.inspect(with_exif_orientation(fmt, 6), POLICY)
    assert (image.width, image.height) == (20, 40)


def jpeg_with_raw_exif(ifd: bytes, order: bytes = b"MM") -> bytes:
    """A 40×20 JPEG whose EXIF block is ``order`` + a TIFF header + ``ifd`` as given."""
    buf = io.BytesIO()
    head = order + (b"\x00*\x00\x00\x00\x08" if order == b"MM" else b"*\x00\x08\x00\x00\x00")
    Image.new("RGB", (40, 20), (200, 10, 10)).save(buf, "JPEG", exif=b"Exif\x00\x00" + head + ifd)
    return buf.getvalue()


def entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
    return tag.to_bytes(2, "big") + kind.to_bytes(2, "big") + count.to_bytes(4, "big") + value


EXIF_TRICKS = {
    "orientation 6 (the real thing)": b"\x00\x01" + entry(0x112, 3, 1, b"\x00\x06\x00\x00"),
    "orientation as text": b"\x00\x01" + entry(0x112, 2, 2, b"6\x00\x00\x00"),
    "orientation as a long": b"\x00\x01" + entry(0x112, 4, 1, b"\x00\x00\x00\x06"),
    "orientation as a rational": b"\x00\x01" + entry(0x112, 5, 1, b"\x00\x00\x00\x1a"),
    "orientation, count 4000": b"\x00\x01" + entry(0x112, 3, 4000, b"\x00\x00\x00\x1a"),
    "65535 entries, none there": b"\xff\xff",
    "next IFD is itself": b"\x00\x01"
    + entry(0x112, 3, 1, b"\x00\x06\x00\x00")
    + b"\x00\x00\x00\x08",
    "value offset past the end": b"\x00\x01" + entry(0x112, 3, 9, b"\x7f\xff\xff\xff"),
    "sub-IFD pointing back": b"\x00\x01" + entry(0x8769, 4, 1, b"\x00\x00\x00\x08"),
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(EXIF_TRICKS))
def test_exif_tricks_never_escape_as_other_errors(name: str) -> None:
    try:
        image = media.inspect(jpeg_with_raw_exif(EXIF_TRICKS[name]), POLICY)
    except ImageError:
        return
    assert {image.width, image.height} == {20, 40}
    if name.startswith("orientation 6"):
        assert (image.width, image.height) == (20, 40)


# ---- SSRF --------------------------------------------------------------------------------

#: Every form must be refused before any connection. (tests/test_media.py holds 26 more.)
SSRF_FORMS = [
    "http://0/a.png",
    "http://0x7f.0x0.0x0.0x1/a.png",
    "http://0177.1/a.png",
    "http://127.000.000.001/a.png",
    "http://127.0.0.1./a.png",
    "http://2852039166/latest/meta-data/",  # 169.254.169.254 as one decimal number
    "http://0xa9fea9fe/latest/meta-data/",
    "http://0251.0376.0251.0376/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/a.png",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[0000::1]/a.png",
    "http://[2002:7f00:1::]/a.png",  # 6to4 around 127.0.0.1
    "http://[2002:a9fe:a9fe::1]/",  # 6to4 around the metadata service
    "http://[64:ff9b::7f00:1]/a.png",  # NAT64 around 127.0.0.1
    "http://[::127.0.0.1]/a.png",  # IPv4-compatible
    "http://[fec0::1]/a.png",
    "http://[ff02::1]/a.png",
    "http://[2001:db8::1]/a.png",
    "http://255.255.255.255/a.png",
    "http://192.0.0.170/a.png",
    "http://192.0.2.1/a.png",
    "http://240.0.0.1/a.png",
    "http://LOCALHOST/a.png",
    "http://localhost.localdomain/a.png",
    "http://127.0.0.1.nip.io/a.png",
    "http://10.0.0.1.xip.io/a.png",
    "http://six.test/a.png",  # a name that resolves to 6to4(127.0.0.1)
    "http://v6only.test/a.png",
    "http://mixed.test/a.png",  # one public and one private address
    "http://rebind.test/a.png",
    "http://evil.test@127.0.0.1/a.png",
    "http://127.0.0.1:80@evil.test/a.png",
    "http://127.0.0.1#@evil.test/a.png",
    "http://127.0.0.1:6379/",
    "http://[::]:8765/mcp",
    "http://0.0.0.0:8765/mcp",
    "http://①②⑦.⓪.⓪.①/a.png",
    "FILE:///etc/passwd",
    "dict://127.0.0.1:11211/stat",
    "gopher://127.0.0.1:6379/_INFO",
    "ldap://127.0.0.1/",
    "jar:http://evil.test/x.jar!/a.png",
    "netdoc:///etc/passwd",
    "ws://127.0.0.1/",
    "sftp://127.0.0.1/a.png",
]


@pytest.mark.parametrize("url", SSRF_FORMS)
async def test_ssrf_forms_are_refused_before_any_connection(url: str) -> None:
    requests: list[httpx.Request] = []
    policy = media.MediaPolicy(resolver=stub_resolver)
    async with httpx.AsyncClient(transport=image_transport(requests)) as client:
        with pytest.raises((UnsafeURL, ImageError, InvalidParameter)):
            await media.load(url, policy, client)
    assert requests == []


async def test_public_urls_work_with_the_address_pinned_and_resolved_once() -> None:
    requests: list[httpx.Request] = []
    asked: list[str] = []
    answers = iter([[PUBLIC_IP], ["127.0.0.1"]])  # a rebinding resolver

    async def rebinding(host: str, port: int) -> list[str]:
        asked.append(host)
        return next(answers)

    policy = media.MediaPolicy(resolver=rebinding)
    async with httpx.AsyncClient(transport=image_transport(requests)) as client:
        image = await media.load("https://photos.example/cat.png", policy, client)
    assert (image.width, image.height) == (64, 48)
    assert asked == ["photos.example"]  # one lookup per hop: the answer is used, not redone
    (request,) = requests
    assert request.url.host == PUBLIC_IP and request.headers["host"] == "photos.example"
    assert request.extensions["sni_hostname"] == "photos.example"


REDIRECT_TARGETS = [
    "http://127.0.0.1/a.png",
    "http://[::1]/a.png",
    "http://0x7f000001/",
    "http://169.254.169.254/latest/meta-data/",
    "http://metadata.test/",
    "http://[::ffff:10.0.0.1]/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_",
    "http://user:pw@public.test/a.png",
    "//127.0.0.1/a.png",
]


@pytest.mark.parametrize("target", REDIRECT_TARGETS)
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_into_private_space_are_refused(target: str, status: int) -> None:
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(status, headers={"location": target})

    policy = media.MediaPolicy(resolver=stub_resolver)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(UnsafeURL):
            await media.load("http://public.test/start", policy, client)
    assert [r.url.host for r in requests] == [PUBLIC_IP]  # nothing after the redirect


async def test_redirect_loops_end() -> None:
    requests: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(302, headers={"location": "/again"})

    policy = media.MediaPolicy(resolver=stub_resolver, max_redirects=5)
    async with httpx.AsyncClient(transport=httpx.MockTransport(handle)) as client:
        with pytest.raises(ImageError, match="more than 5 redirects"):
            await media.load("http://public.test/start", policy, client)
    assert len(requests) == 6


def endless(chunk: int = 64 * 1024, total: int = 1 << 30) -> Iterator[bytes]:
    block = b"\0" * chunk
    for _ in range(total // chunk):
        yield block


OPEN_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n"


async def test_download_is_capped_while_streaming() -> None:
    # 1 GB on offer, no Content-Length: the client must hang up soon after 300 kB.
    limit = 300_000
    async with RawImageHost(OPEN_HEAD, endless) as host:
        policy = media.MediaPolicy(
            allow_networks=["127.0.0.0/8"], resolver=stub_resolver, max_bytes=limit
        )
        async with httpx.AsyncClient() as client:
            with pytest.raises(ImageError, match="larger than"):
                await media.fetch(f"http://127.0.0.1:{host.port}/big.png", policy, client)
        served = await host.wait_done()
    assert served.closed_by_peer
    # What the kernel buffers on loopback is at most a few MB: never the gigabyte.
    assert served.sent < limit + 16 * 1024 * 1024


async def test_a_declared_length_past_the_limit_is_refused_before_the_body() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 1073741824\r\n\r\n"
    async with RawImageHost(head, endless) as host:
        policy = media.MediaPolicy(allow_networks=["127.0.0.0/8"], max_bytes=300_000)
        async with httpx.AsyncClient() as client:
            with pytest.raises(ImageError, match=r"1073\.7 MB"):
                await media.fetch(f"http://127.0.0.1:{host.port}/big.png", policy, client)
        served = await host.wait_done()
    assert served.closed_by_peer and served.sent < 16 * 1024 * 1024


async def test_a_dribbling_server_cannot_hold_a_download_forever() -> None:
    # One byte every 20 ms: no single read ever times out, the whole download must.
    def drip() -> Iterator[bytes]:
        while True:
            yield b"\0"

    async with RawImageHost(OPEN_HEAD, drip, pause=0.02) as host:
        policy = media.MediaPolicy(allow_networks=["127.0.0.0/8"], timeout_s=0.5)
        async with httpx.AsyncClient() as client:
            async with asyncio.timeout(30):  # a guard against a hang, not a measurement
                with pytest.raises(ImageError, match="took longer than"):
                    await media.fetch(f"http://127.0.0.1:{host.port}/slow.png", policy, client)
        served = await host.wait_done()
    assert served.closed_by_peer


async def test_a_forged_callback_cannot_make_retouch_fetch_private_urls() -> None:
    # Result URLs of an outcome that did not come from the vendor's own answer (a completion
    # callback, which nothing authenticates) are fetched like user URLs.
    from tools.vendors.base import OutputImage
    from tools.worker import fetch_result

    requests: list[httpx.Request] = []
    policy = media.MediaPolicy(resolver=stub_resolver)
    async with httpx.AsyncClient(transport=image_transport(requests)) as client:
        for url in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:8765/mcp"):
            with pytest.raises(UnsafeURL):
                await fetch_result(OutputImage(url=url), client, "softsugar", policy)
        ok = await fetch_result(OutputImage(url="http://public.test/r.png"), client, "x", policy)
    assert ok.width == 64 and [r.url.host for r in requests] == [PUBLIC_IP]


async def test_a_forged_callback_through_the_editor_fails_its_task_unfetched(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(
        '[vendors.sugar]\nkind = "softsugar"\napp_id = "app"\napp_key = "key"\n'
        'base_url = "http://sugar.test"\ncallback_url = "https://retouch.test/callbacks/sugar"\n'
    )
    requests: list[httpx.Request] = []
    async with Editor(settings, resolver=stub_resolver, run_worker=False) as editor:
        editor.fetcher = httpx.AsyncClient(transport=image_transport(requests))
        editor.http = httpx.AsyncClient(transport=image_transport(requests))
        sha = await editor.store.put_blob(media.inspect(png((64, 64)), media.MediaPolicy()))
        record = await editor.store.create_task(
            function="description_edit",
            vendor="sugar",
            prompt="a hat",
            n=1,
            request={},
            inputs=[sha],
            mask=None,
            owner=None,
        )
        await editor.store.claim("sugar", "w", capacity=1, lease_s=60)
        assert await editor.store.update(record.id, "w", vendor_task_id="st-1")
        body = {
            "taskId": "st-1",
            "status": "SUCCEEDED",
            "code": 0,
            "images": ["http://169.254.169.254/latest/meta-data/"],
        }
        await editor.vendor_callback("sugar", json.dumps(body).encode(), {})
        task = await editor.check_task(record.id)
    assert task.status == TaskStatus.failed
    assert requests == []  # neither client was asked for the metadata address


# ---- path traversal ----------------------------------------------------------------------

TASK = "0123456789abcdef" * 2
RESULT_URIS = [
    "retouch://tasks/../../etc/passwd/0",
    "retouch://tasks/%2e%2e%2f%2e%2e%2fetc%2fpasswd/0",
    f"retouch://tasks/{TASK}/0/../../../../etc/passwd",
    f"retouch://tasks/{TASK}/-1",
    f"retouch://tasks/{TASK}/1000",
    f"retouch://tasks/{TASK.upper()}/0",
    f"retouch://tasks/{TASK}%00/0",
    f"retouch://tasks/{TASK}/0?path=/etc/passwd",
    f"retouch://tasks/{TASK}/0#/etc/passwd",
    f"retouch://TASKS/{TASK}/0",
    f"retouch:/tasks/{TASK}/0",
    "retouch://tasks//0",
    f"retouch://tasks/{TASK}/",
    f"retouch://tasks/{TASK[:-1]}/0",
    f"retouch://tasks/{TASK}/0/",
    f"retouch://tasks/{TASK}/0\\..\\..\\x",
]


@pytest.mark.parametrize("uri", RESULT_URIS)
async def test_result_uris_cannot_reach_other_files(editor: Editor, uri: str) -> None:
    with pytest.raises((InvalidParameter, NotFound)):
        await editor._load(uri, "image")


@pytest.mark.parametrize(
    ("task_id", "index"),
    [
        ("../../etc/passwd", 0),
        ("'; DROP TABLE tasks; --", 0),
        (TASK, -1),
        (TASK + "/../" + TASK, 0),
        ("", 0),
        ("%2e%2e", 0),
    ],
)
async def test_results_and_task_ids_cannot_reach_other_files(
    editor: Editor, task_id: str, index: int
) -> None:
    with pytest.raises(NotFound):
        await editor.result(task_id, index)
    with pytest.raises(NotFound):
        await editor.check_task(task_id)
    assert await editor.store.db.execute_fetchall("SELECT COUNT(*) FROM tasks")  # table intact


async def test_mcp_resources_refuse_traversal(hostile_settings: Any) -> None:
    async with Client(build_server(hostile_settings)) as client:
        for uri in (
            "retouch://tasks/..%2f..%2fetc%2fpasswd/0",
            f"retouch://tasks/{TASK}/..%2f..%2fx",
            f"retouch://tasks/{TASK}/-1",
        ):
            with pytest.raises(Exception, match=r"no result|Unknown resource"):
                await client.read_resource(uri)


LOCAL_REFUSALS = {
    "/etc/passwd": "not an image",
    "/proc/self/environ": "not an image",
    "/proc/self/pagemap": "larger than",  # claims 0 bytes, never ends: read is capped
    "/dev/zero": "not a file",
    "/dev/stdin": "not a file|no readable file|not an image",
    "/": "not a file",
    "a\0b.png": "no readable file",
    "~nosuchuser-retouch/x.png": "no readable file",
    "x" * 5000: "no readable file",
}


@pytest.mark.parametrize("path", sorted(LOCAL_REFUSALS))
def test_local_paths_that_are_not_images(path: str) -> None:
    if not Path("/proc/self/pagemap").exists() and path.startswith("/proc"):
        pytest.skip("no /proc here")
    policy = media.MediaPolicy(allow_local_paths=True)
    with pytest.raises(ImageError, match=LOCAL_REFUSALS[path]) as err:
        asyncio.run(load_any_with(path, policy))
    assert "root:" not in err.value.message  # never the file's content


def test_local_fifo_symlink_and_growing_files(tmp_path: Path) -> None:
    policy = media.MediaPolicy(allow_local_paths=True, max_bytes=100_000)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)  # opening it for reading would block forever
    with pytest.raises(ImageError, match="not a file"):
        asyncio.run(load_any_with(str(fifo), policy))
    link = tmp_path / "link.png"
    link.symlink_to("/etc/hostname" if Path("/etc/hostname").exists() else "/etc/passwd")
    with pytest.raises(ImageError, match="not an image"):
        asyncio.run(load_any_with(str(link), policy))
    photo = tmp_path / "photo.png"
    photo.write_bytes(png((64, 48)))
    (tmp_path / "sub").mkdir()
    assert asyncio.run(load_any_with(f"{tmp_path}/sub/../photo.png", policy)).width == 64
    assert asyncio.run(load_any_with(str(photo), policy)).width == 64


@pytest.mark.parametrize("path", ["/etc/passwd", str(DATA / "coffee.png"), "~/x.png", "C:\\x"])
def test_local_paths_are_refused_when_not_allowed(path: str) -> None:
    with pytest.raises(UnsafeURL, match="local paths are not accepted"):
        asyncio.run(load_any_with(path, media.MediaPolicy()))


async def load_any_with(source: str, policy: media.MediaPolicy) -> media.InputImage:
    async with httpx.AsyncClient() as client:
        return await media.load(source, policy, client)


STORE_NAME = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.(png|jpg|webp|bmp|tif|gif)$")


def assert_store_names_only_hashes(results_dir: Path) -> None:
    names = [p.relative_to(results_dir).as_posix() for p in results_dir.rglob("*") if p.is_file()]
    assert names and all(STORE_NAME.match(n) for n in names), names


async def test_file_names_come_only_from_content_hashes(
    hostile_settings: Any, tmp_path: Path
) -> None:
    weird = tmp_path / "in" / "..photo;rm -rf ~;.png"
    weird.parent.mkdir()
    weird.write_bytes(sample("coffee.png"))
    before = {p for p in tmp_path.rglob("*")}
    async with Editor(hostile_settings, allow_local_paths=True) as editor:
        tasks = [
            await editor.edit_image(
                EditRequest(images=[src], function="adjust", prompt="rotate 90", watermark=mark),
                wait_seconds=30,
            )
            for src, mark in [
                (str(weird), "../../../../tmp/evil"),
                (f"{weird.parent}/../in/{weird.name}", "%2e%2e/x"),
                (data_uri(png((64, 48))), "con.png\0"),
            ]
        ]
    assert [t.status for t in tasks] == [TaskStatus.succeeded] * 3, [t.error for t in tasks]
    results_dir = hostile_settings.store.results_dir
    for task in tasks:
        for result in task.results:
            assert Path(result.path).parent.parent == results_dir
            assert result.uri == f"retouch://tasks/{task.id}/{result.index}"
    assert_store_names_only_hashes(results_dir)
    created = {p for p in tmp_path.rglob("*")} - before
    outside = [
        p
        for p in created
        if results_dir not in p.parents and p != results_dir and not p.name.startswith("retouch.db")
    ]
    assert outside == []


def test_stored_requests_keep_no_image_bytes() -> None:
    from tools.service import _recordable

    secretish = base64.b64encode(b"\x89PNG" + b"private pixels" * 100).decode()
    request = EditRequest(images=[f"data:image/png;base64,{secretish}"], function="lineart")
    assert secretish not in json.dumps(_recordable(request))


def test_png_text_chunks_are_not_a_way_in() -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<script>alert(1)</script>" * 100)
    info.add_text("XML:com.adobe.xmp", "<x:xmpmeta>" + "A" * 10_000)
    buf = io.BytesIO()
    Image.new("RGB", (10, 10)).save(buf, "PNG", pnginfo=info)
    assert media.inspect(buf.getvalue(), POLICY).mime_type == "image/png"
