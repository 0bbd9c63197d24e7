"""PNG pixel data, read fast: decoded by libspng and inflated by libdeflate (both through
``imagecodecs``, which lets go of the GIL while they run) where Pillow would take twice as
long, with Pillow's own answer wherever these differ.

A 1024² photo as PNG (Paeth-filtered, 1.3 MB) on the 2-core test machine: Pillow decodes it
in 25 ms (13 of them inflating), libspng in 16; its pixel stream inflates in 4.7 ms with
libdeflate against 12.8 with zlib. Only the common kind takes the fast road: 8 bits a sample,
grey, RGB or RGBA, not interlaced, no palette or ``tRNS`` transparency (where Pillow keeps
what libspng would drop). A file the fast decoder refuses goes to Pillow, whose verdict
stands, so nothing is refused here that Pillow takes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from PIL import Image

#: PNG colour type → samples per pixel.
SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: Colour types libspng decodes to exactly Pillow's pixels (grey, RGB, RGBA at 8 bits).
_FAST_COLOURS = {0, 2, 6}
#: A pixel stream inflates in one piece below this size; above it, in slices (memory).
WHOLE_STREAM_MAX = 64 * 1024 * 1024
#: The size of the rows inflated at a time in slices.
SLICE = 1024 * 1024


class Corrupt(Exception):
    """The PNG's pixel data is cut off or corrupt."""


@dataclass(frozen=True)
class Header:
    width: int
    height: int
    depth: int
    colour: int
    interlaced: bool

    @property
    def stride(self) -> int:
        """Bytes of one row as stored: its filter byte, then its samples."""
        return 1 + (self.width * self.depth * SAMPLES.get(self.colour, 1) + 7) // 8

    @property
    def rows_bytes(self) -> int:
        return self.stride * self.height


def chunks(data: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Each chunk's kind and where its body starts and ends, read by their lengths (as a
    decoder reads them), up to IEND or the end of the bytes."""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = int.from_bytes(data[pos : pos + 4], "big"), data[pos + 4 : pos + 8]
        yield kind, pos + 8, pos + 8 + length
        if kind == b"IEND":
            return
        pos += 12 + length


def header(data: bytes) -> Header | None:
    """The IHDR chunk's fields, or None if the bytes do not start with one."""
    for kind, start, end in chunks(data):
        if kind != b"IHDR" or end - start < 13 or end > len(data):
            return None
        body = data[start:end]
        return Header(
            width=int.from_bytes(body[0:4], "big"),
            height=int.from_bytes(body[4:8], "big"),
            depth=body[8],
            colour=body[9],
            interlaced=body[12] != 0,
        )
    return None


def fast(data: bytes) -> bool:
    """Whether :func:`decode` takes these bytes (checked from the chunks, nothing inflated)."""
    head = header(data)
    if head is None or head.depth != 8 or head.colour not in _FAST_COLOURS or head.interlaced:
        return False
    return not any(kind == b"tRNS" for kind, _, _ in chunks(data))


def decode(data: bytes) -> Image.Image | None:
    """The PNG decoded by libspng, or None: not a kind it decodes as Pillow does (see
    :func:`fast`), or bytes it refuses (Pillow then decides). Peak memory: the pixels twice
    (libspng's array, then Pillow's copy)."""
    if not fast(data):
        return None
    try:
        pixels = _codecs().spng_decode(data)
    except Exception:  # imagecodecs.SpngError, or the import failed
        return None
    image = Image.fromarray(pixels)
    image.format = "PNG"  # what it was decoded from, as Pillow's own decode says
    return image


def verify(data: bytes, head: Header) -> None:
    """A non-interlaced PNG's pixel stream is whole: its IDAT chunks inflate to ``height``
    rows of the size its header gives, or to the end of a deflate stream that closes
    cleanly, and every row starts with a filter type a decoder knows (0–4). What Pillow's
    decoder refuses, this refuses (a stream cut off or corrupt, a bad filter type); it does
    not undo the filters. Raises :class:`Corrupt`."""
    if head.colour not in SAMPLES or head.interlaced:
        raise Corrupt("not a non-interlaced PNG")
    stream = _pixel_stream(data)
    expected = head.rows_bytes
    if expected <= WHOLE_STREAM_MAX:
        rows = _inflate_whole(stream, expected)
        if rows is not None:  # libdeflate inflated exactly the rows the header gives
            if max(rows[:: head.stride], default=0) > 4:
                raise Corrupt("a row has an unknown filter type")
            return
    _verify_in_slices(stream, head.stride, expected)


def _pixel_stream(data: bytes) -> list[bytes]:
    """The IDAT chunks' bodies, in order (they are consecutive: the stream ends at the first
    other chunk after them)."""
    parts: list[bytes] = []
    for kind, start, end in chunks(data):
        if kind == b"IDAT":
            parts.append(data[start:end])
        elif parts:
            break
    if not parts:
        raise Corrupt("no pixel data")
    return parts


def _inflate_whole(stream: list[bytes], expected: int) -> bytes | None:
    """The stream inflated at once by libdeflate, if it holds exactly ``expected`` bytes;
    None otherwise (shorter, longer, corrupt, or no libdeflate: the slices then decide)."""
    try:
        rows = _codecs().deflate_decode(b"".join(stream), out=expected)
    except Exception:
        return None
    return rows if len(rows) == expected else None


def _verify_in_slices(stream: list[bytes], stride: int, expected: int) -> None:
    """:func:`verify` with zlib, ``SLICE`` bytes of rows at a time."""
    inflater = zlib.decompressobj()
    seen = 0  # bytes of rows inflated so far
    for body in stream:
        pending = body
        while pending and seen < expected:
            try:
                rows = inflater.decompress(pending, SLICE)
            except zlib.error:
                raise Corrupt("the pixel stream does not inflate") from None
            pending = inflater.unconsumed_tail
            first = -seen % stride  # the filter byte of every row that starts in this slice
            if max(rows[first : expected - seen : stride], default=0) > 4:
                raise Corrupt("a row has an unknown filter type")
            seen += len(rows)
            if not rows:
                break
        if seen >= expected or inflater.eof:  # Pillow takes a stream that ends early
            return  # and cleanly as it is (the missing rows stay black)
    raise Corrupt("the pixel stream is cut off")


def _codecs() -> Any:
    """imagecodecs, imported on first use (it brings numpy: ~50 ms, off the event loop)."""
    import imagecodecs

    return imagecodecs
