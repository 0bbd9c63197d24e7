"""tools/png.py: libspng's pixels are Pillow's, and each kind it does not decode the same way
goes to Pillow; the pixel-stream check gives one verdict whether libdeflate inflates the
stream at once or zlib inflates it in slices."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import pytest
from PIL import Image

from tools import media, png
from tools.errors import ImageError

POLICY = media.MediaPolicy()


def noise(mode: str, size: tuple[int, int] = (37, 23)) -> Image.Image:
    """Random pixels (every filter type gets used by the encoder)."""
    grey = Image.effect_noise(size, 90)
    if mode == "L":
        return grey
    bands = [grey.rotate(90 * i, expand=False) for i in range(len(mode))]
    return Image.merge(mode, bands)


def encoded(image: Image.Image, **options: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **options)
    return buf.getvalue()


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def with_chunk(data: bytes, kind: bytes, body: bytes) -> bytes:
    """The PNG with one more chunk right after IHDR."""
    return data[:33] + chunk(kind, body) + data[33:]


def rgb_png(width: int, height: int, packed: bytes) -> bytes:
    """An RGB PNG whose chunks are well formed around an already deflated pixel stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", packed) + chunk(b"IEND", b"")
    )


def rows(width: int, height: int, filters: list[int] | None = None) -> bytes:
    filters = filters or [i % 5 for i in range(height)]
    return b"".join(
        bytes([f]) + bytes((y + x) % 256 for x in range(3 * width)) for y, f in enumerate(filters)
    )


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA"])
def test_libspng_decodes_the_common_kinds_to_pillows_pixels(mode: str) -> None:
    data = encoded(noise(mode))
    assert png.fast(data)
    fast = png.decode(data)
    assert fast is not None
    assert (fast.mode, fast.size, fast.format) == (mode, (37, 23), "PNG")
    assert fast.tobytes() == Image.open(io.BytesIO(data)).tobytes()


def test_a_gamma_chunk_changes_no_pixel() -> None:
    image = noise("RGB")
    data = with_chunk(encoded(image), b"gAMA", struct.pack(">I", 100000))
    fast = png.decode(data)
    assert fast is not None and fast.tobytes() == image.tobytes()


@pytest.mark.parametrize(
    "kind",
    ["palette", "transparent colour", "16-bit grey", "interlaced", "grey and alpha"],
)
def test_other_kinds_are_left_to_pillow(kind: str) -> None:
    if kind == "palette":
        data = encoded(noise("RGB").convert("P"))
    elif kind == "transparent colour":
        data = encoded(noise("RGB"), transparency=(1, 2, 3))
    elif kind == "16-bit grey":
        data = encoded(noise("L").convert("I;16"))
    elif kind == "interlaced":
        # Pillow cannot write Adam7: the header's interlace byte is set by hand.
        plain = encoded(noise("RGB"))
        ihdr = plain[16:28] + b"\x01"
        data = plain[:8] + chunk(b"IHDR", ihdr) + plain[33:]
    else:
        data = encoded(noise("LA"))
    assert not png.fast(data)
    assert png.decode(data) is None


@pytest.mark.parametrize("cut", ["the file in half", "the pixel stream, chunks well formed"])
def test_bytes_libspng_refuses_get_pillows_verdict(cut: str) -> None:
    if cut == "the file in half":
        data = encoded(noise("RGB", (200, 150)))
        broken = data[: len(data) // 2]
    else:
        broken = rgb_png(60, 40, zlib.compress(rows(60, 40))[:-40])
    assert png.fast(broken)
    assert png.decode(broken) is None
    with pytest.raises(ImageError, match="corrupt"):
        media.inspect_decoded(broken, POLICY)


def test_a_result_is_decoded_by_libspng_within_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    data = encoded(noise("RGB", (300, 200)))
    seen: list[Image.Image | None] = []
    decode = png.decode

    def spy(payload: bytes) -> Image.Image | None:
        seen.append(decoded := decode(payload))
        return decoded

    monkeypatch.setattr(media.png, "decode", spy)
    checked, pixels = asyncio.run(
        media.check_keeping(data, POLICY, "result", keep_px=300 * 200, bounded=False)
    )
    assert seen and seen[0] is pixels
    assert (checked.width, checked.height, checked.data) == (300, 200, data)
    assert pixels.tobytes() == Image.open(io.BytesIO(data)).tobytes()


STREAMS = {
    "sound": (rows(60, 40), None),
    "a row's filter type is 9": (rows(60, 40, [1] * 30 + [9] + [1] * 9), "filter"),
    "cut short": (None, "cut"),
    "garbage": (b"\x78\x9c" + bytes(range(200)), "garbage"),
    "ends cleanly one row early": (rows(60, 39), None),
    "one row more than the header": (rows(60, 41), None),
}


@pytest.mark.parametrize("road", ["whole", "slices"])
@pytest.mark.parametrize("case", list(STREAMS))
def test_both_roads_give_one_verdict(case: str, road: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw, broken = STREAMS[case]
    if case == "cut short":
        packed = zlib.compress(rows(60, 40))[:-40]
    elif case == "garbage":
        assert raw is not None
        packed = raw
    else:
        assert raw is not None
        packed = zlib.compress(raw)
    data = rgb_png(60, 40, packed)
    if road == "slices":
        monkeypatch.setattr(png, "WHOLE_STREAM_MAX", 0)
    head = png.header(data)
    assert head is not None
    pillow_refuses = False
    try:
        Image.open(io.BytesIO(data)).load()
    except Exception:
        pillow_refuses = True
    if broken:
        assert pillow_refuses  # the check refuses what Pillow's decoder refuses
        with pytest.raises(png.Corrupt):
            png.verify(data, head)
    else:
        assert not pillow_refuses
        png.verify(data, head)


def test_a_stream_split_over_many_chunks_is_read_whole() -> None:
    packed = zlib.compress(rows(60, 40))
    ihdr = struct.pack(">IIBBBBB", 60, 40, 8, 2, 0, 0, 0)
    idats = b"".join(chunk(b"IDAT", packed[i : i + 50]) for i in range(0, len(packed), 50))
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idats + chunk(b"IEND", b"")
    head = png.header(data)
    assert head is not None
    png.verify(data, head)
    assert media.inspect(data, POLICY) == media.inspect_decoded(data, POLICY)[0]


def test_the_whole_road_is_taken_for_a_sound_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    data = rgb_png(60, 40, zlib.compress(rows(60, 40)))
    head = png.header(data)
    assert head is not None

    def no_slices(*_: object) -> None:
        raise AssertionError("inflated in slices")

    monkeypatch.setattr(png, "_verify_in_slices", no_slices)
    png.verify(data, head)
