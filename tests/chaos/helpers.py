"""Helpers shared by the reliability and security tests: crafted hostile images, a raw TCP
image host that counts what it sent, and an event loop in a thread (for hypothesis tests,
which are synchronous, over async objects such as the Editor or an MCP client)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from PIL import Image

T = TypeVar("T")


# ---- crafted images --------------------------------------------------------------------


def encoded(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB", **kw: Any) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, (10, 200, 10) if mode == "RGB" else 1).save(buf, fmt, **kw)
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width×height (valid CRCs) over 64 bytes of pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _chunk(b"IEND", b"")
    )


def jpeg_bomb(width: int, height: int) -> bytes:
    """An 8×8 JPEG whose SOF0 header was patched to claim width×height (≤ 65535)."""
    data = bytearray(encoded("JPEG", (8, 8)))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def webp_bomb(width: int, height: int) -> bytes:
    """An 8×8 lossless WEBP whose VP8L header was patched to claim width×height (≤ 16384)."""
    data = bytearray(encoded("WEBP", (8, 8), lossless=True))
    assert data[12:16] == b"VP8L"
    bits = struct.unpack("<I", data[21:25])[0] & ~((1 << 28) - 1)
    data[21:25] = struct.pack("<I", bits | (width - 1) | ((height - 1) << 14))
    return bytes(data)


def gif_bomb(width: int, height: int, frames: int = 1) -> bytes:
    """A GIF of ``frames`` frames, screen and frames width×height, a few bytes each."""
    head = b"GIF89a" + struct.pack("<HH", width, height) + bytes([0x80, 0, 0])
    head += b"\0\0\0\xff\xff\xff"  # two-colour global palette
    frame = b"\x2c" + struct.pack("<HHHH", 0, 0, width, height) + b"\x00\x02\x02\x44\x01\x00"
    return head + frame * frames + b"\x3b"


def tiff_bomb(width: int, height: int) -> bytes:
    """A little-endian TIFF whose IFD claims width×height with one 16-byte strip."""
    entries = [
        (256, 4, width),
        (257, 4, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 8 + 2 + 12 * 9 + 4),
        (277, 3, 1),
        (278, 4, height),
        (279, 4, 16),
    ]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\0" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\0" * 16


def bmp_bomb(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return struct.pack("<2sIHHI", b"BM", 14 + 40 + 16, 0, 0, 14 + 40) + info + b"\0" * 16


BOMBS: dict[str, Callable[[int, int], bytes]] = {
    "PNG": png_bomb,
    "JPEG": jpeg_bomb,
    "WEBP": webp_bomb,
    "GIF": gif_bomb,
    "TIFF": tiff_bomb,
    "BMP": bmp_bomb,
}
#: The largest sides each format can claim, used for the bombs (all far above 50 MP).
BOMB_SIZES = {
    "PNG": (100_000, 100_000),
    "JPEG": (65_000, 65_000),
    "WEBP": (16_384, 16_384),
    "GIF": (65_535, 65_535),
    "TIFF": (100_000, 100_000),
    "BMP": (50_000, 50_000),
}


def with_exif_orientation(fmt: str, orientation: Any, size: tuple[int, int] = (40, 20)) -> bytes:
    image = Image.new("RGB", size, (200, 10, 10))
    exif = image.getexif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    image.save(buf, fmt, exif=exif)
    return buf.getvalue()


# ---- an event loop in a thread -----------------------------------------------------------


class LoopThread:
    """An asyncio loop running in a daemon thread; ``run(coro)`` waits for its result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- a raw image host that counts bytes --------------------------------------------------


@dataclass
class Served:
    """What one connection to a ``RawImageHost`` saw."""

    sent: int = 0
    closed_by_peer: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class RawImageHost:
    """A bare HTTP/1.1 server on 127.0.0.1 (asyncio streams, no framework buffering) that
    answers every GET with ``head`` and then ``body()`` chunk by chunk, recording how many
    bytes it managed to send before the client hung up. The send buffer is kept small so
    that "sent" is close to what the client really read."""

    def __init__(
        self,
        head: bytes,
        body: Callable[[], Any],
        pause: float = 0.0,
    ) -> None:
        self.head = head
        self.body = body
        self.pause = pause
        self.connections: list[Served] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> RawImageHost:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = Served()
        self.connections.append(served)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(self.head)
            await writer.drain()
            for chunk in self.body():
                writer.write(chunk)
                await writer.drain()
                served.sent += len(chunk)
                if self.pause:
                    await asyncio.sleep(self.pause)
        except (ConnectionError, asyncio.IncompleteReadError):
            served.closed_by_peer = True
        finally:
            served.done.set()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def wait_done(self, timeout: float = 20) -> Served:
        """The first connection, once its handler has ended (a guard, not a measurement)."""
        for _ in range(int(timeout * 100)):
            if self.connections:
                break
            await asyncio.sleep(0.01)
        served = self.connections[0]
        async with asyncio.timeout(timeout):
            await served.done.wait()
        return served


# ---- figures on the terminal summary -----------------------------------------------------


class _Figures:
    """A plugin registered at run time: its lines end pytest's terminal summary."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        terminalreporter.section("Retouch reliability figures")
        for line in self.lines:
            terminalreporter.write_line(line)


def report_figures(config: Any, line: str) -> None:
    """Print ``line`` now (seen with -s) and in the summary at the end of the run."""
    print(f"\n{line}")
    plugin = config.pluginmanager.get_plugin("retouch-figures")
    if plugin is None:
        plugin = _Figures()
        config.pluginmanager.register(plugin, "retouch-figures")
    plugin.lines.append(line)
