"""Image input: formats by content, limits, bombs, and SSRF refusals."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse

from tests.conftest import data_uri, png, sample
from tests.fakes.http import FakeServer, Recorded
from tools import media
from tools.errors import ImageError, InvalidParameter, UnsafeURL

POLICY = media.MediaPolicy(max_bytes=2_000_000, max_pixels=4_000_000)


def encoded(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    color = (10, 200, 10) if mode == "RGB" else 1
    Image.new(mode, size, color).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mime"),
    [
        ("JPEG", "image/jpeg"),
        ("PNG", "image/png"),
        ("WEBP", "image/webp"),
        ("BMP", "image/bmp"),
        ("TIFF", "image/tiff"),
    ],
)
def test_formats_are_recognised_by_content(fmt: str, mime: str) -> None:
    image = media.inspect(encoded(fmt), POLICY)
    assert (image.mime_type, image.width, image.height) == (mime, 40, 30)


def test_gif_becomes_its_first_frame_as_png() -> None:
    frames = [Image.new("P", (20, 10), i) for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    image = media.inspect(buf.getvalue(), POLICY)
    assert image.mime_type == "image/png" and (image.width, image.height) == (20, 10)


def test_exif_rotation_is_applied() -> None:
    img = Image.new("RGB", (40, 20))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    image = media.inspect(buf.getvalue(), POLICY)
    assert (image.width, image.height) == (20, 40)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        encoded("PNG")[:60],
        b"GIF89a" + b"\0" * 20,
        b"%PDF-1.4\n" + encoded("PNG"),
    ],
)
def test_garbage_and_truncated_images_are_refused(data: bytes) -> None:
    with pytest.raises(ImageError):
        media.inspect(data, POLICY)


def test_too_many_bytes() -> None:
    with pytest.raises(ImageError, match="limit is"):
        media.inspect(b"\x89PNG" + b"\0" * 3_000_000, POLICY)


def bmp_header_only(width: int, height: int) -> bytes:
    """A BMP that claims huge dimensions and carries almost no pixel data."""
    import struct

    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    head = struct.pack("<2sIHHI", b"BM", 14 + 40 + 16, 0, 0, 14 + 40)
    return head + info + b"\0" * 16


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "TIFF", "BMP"])
def test_decompression_bomb_is_refused_before_decoding(fmt: str) -> None:
    # 20000x20000 (400 MP) in a file of a few KB.
    if fmt == "BMP":
        bomb = bmp_header_only(20_000, 20_000)
    else:
        extra = {"compression": "group4"} if fmt == "TIFF" else {}
        buf = io.BytesIO()
        Image.new("1", (20_000, 20_000), 1).save(buf, fmt, **extra)
        bomb = buf.getvalue()
    assert len(bomb) < 2_000_000
    with pytest.raises(ImageError, match="decompression bombs"):
        media.inspect(bomb, POLICY)


def test_data_uri_and_local_paths(tmp_path: Path) -> None:
    assert media.decode_data_uri(data_uri(b"abc"), POLICY) == b"abc"
    with pytest.raises(ImageError, match="base64"):
        media.decode_data_uri("data:image/png;base64,@@@", POLICY)
    path = tmp_path / "a.png"
    path.write_bytes(png())
    allowed = media.MediaPolicy(allow_local_paths=True)
    assert media._read_local(str(path), allowed, "image") == path.read_bytes()
    with pytest.raises(UnsafeURL, match="local paths are not accepted"):
        media._read_local(str(path), POLICY, "image")


async def test_other_schemes_and_bad_result_uris() -> None:
    async with httpx.AsyncClient() as client:
        for src in ("file:///etc/passwd", "ftp://example.com/a.png", "gopher://x/"):
            with pytest.raises(UnsafeURL):
                await media.load(src, POLICY, client)
        for src in (
            "retouch://tasks/../../etc/passwd/0",
            "retouch://tasks/abc/0",
            "retouch://tasks/" + "a" * 32 + "/../1",
        ):
            with pytest.raises(InvalidParameter, match="result URI"):
                await media.load(src, POLICY, client)


def resolver_for(table: dict[str, list[str]]) -> media.Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        if host in table:
            return table[host]
        return await media.system_resolver(host, port)

    return resolve


SSRF = [
    "http://127.0.0.1/a.png",
    "http://127.1/a.png",
    "http://0177.0.0.1/a.png",
    "http://0x7f000001/a.png",
    "http://2130706433/a.png",
    "http://0.0.0.0/a.png",
    "http://[::1]/a.png",
    "http://[::]/a.png",
    "http://[::ffff:127.0.0.1]/a.png",
    "http://[::ffff:7f00:1]/a.png",
    "http://localhost/a.png",
    "http://localhost./a.png",
    "http://10.0.0.1/a.png",
    "http://172.16.5.4/a.png",
    "http://192.168.1.1/a.png",
    "http://169.254.169.254/latest/meta-data/",
    "http://[fe80::1]/a.png",
    "http://[fd00::1]/a.png",
    "http://100.64.0.1/a.png",
    "http://198.18.0.1/a.png",
    "http://224.0.0.1/a.png",
    "http://metadata.internal.test/a.png",
    "http://rebind.example.test/a.png",
    "https://127.0.0.1:8443/a.png",
    "http://user:pw@example.com/a.png",
    "http://a@127.0.0.1/a.png",
]


@pytest.mark.parametrize("url", SSRF)
async def test_private_addresses_are_refused(url: str) -> None:
    policy = media.MediaPolicy(
        resolver=resolver_for(
            {
                "metadata.internal.test": ["169.254.169.254"],
                "rebind.example.test": ["93.184.216.34", "10.1.2.3"],
                "example.com": ["93.184.216.34"],
            }
        )
    )
    async with httpx.AsyncClient() as client:
        with pytest.raises(UnsafeURL):
            await media.fetch(url, policy, client)


@pytest.fixture
def image_host() -> Iterator[FakeServer]:
    server = FakeServer()
    photo = sample("chelsea.png")

    async def image(request: Request, rec: Recorded) -> Response:
        return Response(photo, media_type="image/png")

    async def to_private(request: Request, rec: Recorded) -> Response:
        return RedirectResponse("http://10.0.0.1/secret.png", status_code=302)

    async def to_image(request: Request, rec: Recorded) -> Response:
        return RedirectResponse("/image.png", status_code=302)

    async def endless(request: Request, rec: Recorded) -> Response:
        async def body() -> object:
            for _ in range(100):
                yield b"\0" * 65536

        return StreamingResponse(body(), media_type="image/png")

    server.add_route("/image.png", "image", ["GET"], image)
    server.add_route("/private", "private", ["GET"], to_private)
    server.add_route("/hop", "hop", ["GET"], to_image)
    server.add_route("/endless", "endless", ["GET"], endless)
    with server:
        yield server


async def test_public_urls_are_fetched_with_the_address_pinned(image_host: FakeServer) -> None:
    # "photos.test" stands for a public host; loopback is allowed only for this test.
    policy = media.MediaPolicy(
        allow_networks=["127.0.0.0/8"], resolver=resolver_for({"photos.test": ["127.0.0.1"]})
    )
    url = f"http://photos.test:{image_host.port}/hop"
    async with httpx.AsyncClient() as client:
        image = await media.load(url, policy, client)
    assert (image.width, image.height) == (451, 300)
    assert image_host.last("image").headers["host"] == f"photos.test:{image_host.port}"


async def test_redirect_into_private_space_is_refused(image_host: FakeServer) -> None:
    policy = media.MediaPolicy(allow_networks=["127.0.0.0/8"])
    async with httpx.AsyncClient() as client:
        with pytest.raises(UnsafeURL):
            await media.fetch(f"{image_host.base_url}/private", policy, client)


async def test_download_stops_at_the_byte_limit(image_host: FakeServer) -> None:
    policy = media.MediaPolicy(allow_networks=["127.0.0.0/8"], max_bytes=300_000)
    async with httpx.AsyncClient() as client:
        with pytest.raises(ImageError, match="larger than"):
            await media.fetch(f"{image_host.base_url}/endless", policy, client)


def test_fit_downscales_upscales_and_reencodes() -> None:
    big = media.inspect(encoded("BMP", (5000, 1000)), media.MediaPolicy(max_bytes=50_000_000))
    out, notes = media.fit(big, min_side=512, max_side=4096, formats=("png", "jpeg"))
    assert max(out.width, out.height) == 4096 and out.mime_type == "image/png"
    assert any("downscaled 5000×1000" in n for n in notes)
    assert any("re-encoded BMP as PNG" in n for n in notes)
    small = media.inspect(encoded("PNG", (300, 200)), POLICY)
    out, notes = media.fit(small, min_side=512, max_side=4096)
    assert min(out.width, out.height) == 512
    thin = media.inspect(encoded("PNG", (4000, 100)), POLICY)
    with pytest.raises(InvalidParameter, match="aspect ratio"):
        media.fit(thin, min_side=512, max_side=4096)


def test_fit_mask_matches_shape() -> None:
    mask = media.inspect(encoded("PNG", (100, 50), mode="L"), POLICY)
    out, notes = media.fit_mask(mask, (200, 100))
    assert (out.width, out.height) == (200, 100) and notes
    with pytest.raises(InvalidParameter, match="shape"):
        media.fit_mask(mask, (100, 100))


# ---- proving a PNG or JPEG whole without decoding it in full --------------------------------


def png_of(rows: bytes, width: int, height: int, *, split: int = 0) -> bytes:
    """An RGB PNG, 8 bits, whose chunks are well formed (right lengths and CRCs) around
    whatever pixel stream ``rows`` is (filter bytes included); ``split`` cuts the deflated
    stream into IDAT chunks of that size."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    packed = zlib.compress(rows)
    parts = [packed[i : i + split] for i in range(0, len(packed), split)] if split else [packed]
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + b"".join(chunk(b"IDAT", p) for p in parts)
        + chunk(b"IEND", b"")
    )


def rows_of(width: int, height: int, filters: list[int] | None = None) -> bytes:
    filters = filters or [i % 5 for i in range(height)]
    return b"".join(bytes([f]) + bytes(range(y, y + 3 * width)) for y, f in enumerate(filters))


@pytest.mark.parametrize("split", [0, 7, 100])
def test_a_sound_png_passes_the_check_and_matches_a_full_decode(split: int) -> None:
    data = png_of(rows_of(60, 40), 60, 40, split=split)
    assert media.inspect(data, POLICY) == media.inspect_decoded(data, POLICY)[0]
    assert (media.inspect(data, POLICY).width, media.inspect(data, POLICY).height) == (60, 40)


def png_chunks(width: int, height: int, packed: bytes) -> bytes:
    """An RGB PNG around an already deflated pixel stream, chunks well formed."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", packed) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "case",
    ["a row's filter type is 9", "the deflate stream is cut short", "the stream is garbage"],
)
def test_a_png_whose_pixels_are_broken_is_refused_without_a_full_decode(case: str) -> None:
    import zlib

    width, height = 60, 40
    if case == "a row's filter type is 9":
        data = png_of(rows_of(width, height, [1] * 30 + [9] + [1] * 9), width, height)
    elif case == "the deflate stream is cut short":  # inside well-formed chunks
        data = png_chunks(width, height, zlib.compress(rows_of(width, height))[:-40])
    else:
        data = png_chunks(width, height, b"\x78\x9c" + bytes(range(200)))
    # Pillow's full decode refuses each of them too: the cheaper check refuses what it does.
    with pytest.raises(ImageError):
        media.inspect_decoded(data, POLICY)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        media.inspect(data, POLICY)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        asyncio.run(media.check(data, POLICY))


def test_a_png_stream_that_ends_cleanly_but_early_is_taken_as_pillow_takes_it() -> None:
    import zlib

    width, height = 60, 40
    data = png_chunks(width, height, zlib.compress(rows_of(width, height)[: -(1 + 3 * width)]))
    assert media.inspect(data, POLICY) == media.inspect_decoded(data, POLICY)[0]


def test_a_cut_jpeg_is_refused_by_the_reduced_scale_check() -> None:
    buf = io.BytesIO()
    noise = Image.effect_noise((256, 256), 80).convert("RGB")
    noise.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    assert media.inspect(data, POLICY) == media.inspect_decoded(data, POLICY)[0]
    cut = data[: len(data) // 2]
    assert media.verifiable(Image.open(io.BytesIO(cut)), cut)
    with pytest.raises(ImageError, match="corrupt or truncated"):
        media.inspect(cut, POLICY)
