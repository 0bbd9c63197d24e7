"""The pixel budget: how many bytes of decoded images one process may hold at once.

Every place that decodes an image (inputs, vendor results, the local engine, fitting an
image for a vendor, previews) reads the image's size from its header first, works out what
decoding and working on it costs in memory, and holds that much of the process's budget,
:data:`PIXELS`, while it works. What does not fit waits its turn (first come, first served,
so a large image is not passed over forever). A client's request waits at most ``wait_s``
and is then refused with :class:`~tools.errors.Busy`; work already accepted (a task's engine
run, its results) waits as long as it takes. One image that costs more than the whole
budget is let in alone.

The budget is shared by every event loop and thread of the process: its state is guarded
by a thread lock and waiters are woken on their own loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

from tools.errors import Busy

MB = 1024 * 1024
T = TypeVar("T")

#: Bytes per pixel of a decoded Pillow image, by mode (Pillow keeps RGB in 4 bytes).
BYTES_PER_PIXEL = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2}
#: Modes not named above take 4 bytes a pixel (RGB, RGBA, LA, CMYK, I, F, ...).
WIDE = 4


def decoded_bytes(width: int, height: int, mode: str = "RGB") -> int:
    """The bytes of one decoded image of this size and Pillow mode."""
    return max(0, width) * max(0, height) * BYTES_PER_PIXEL.get(mode, WIDE)


@dataclass(eq=False)
class _Waiter:
    cost: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[None]
    granted: bool = False


class PixelBudget:
    """A weighted, first-come-first-served semaphore over bytes of decoded images."""

    def __init__(self, capacity: int, wait_s: float = 30) -> None:
        self._lock = threading.Lock()
        self._used = 0
        self._queue: deque[_Waiter] = deque()
        self.capacity = capacity
        self.wait_s = wait_s

    def configure(self, capacity: int, wait_s: float) -> None:
        """Resize the budget (the Editor does, from ``media.decode_budget_mb``)."""
        if capacity < 1:
            raise ValueError("a pixel budget needs at least one byte")
        with self._lock:
            self.capacity, self.wait_s = capacity, wait_s
            self._grant()

    @property
    def in_use(self) -> int:
        """Bytes held now."""
        return self._used

    @property
    def waiting(self) -> int:
        """How many are waiting for room."""
        return len(self._queue)

    @asynccontextmanager
    async def hold(
        self, cost: int, *, bounded: bool = True, label: str = "an image"
    ) -> AsyncIterator[None]:
        """Hold ``cost`` bytes of the budget for the block. ``bounded``: wait at most
        ``wait_s``, then raise Busy (a client's request); else wait as long as it takes."""
        held = min(max(int(cost), 0), self.capacity)
        if held:
            await self._acquire(held, self.wait_s if bounded else None, label, cost)
        try:
            yield
        finally:
            if held:
                self._release(held)

    async def run(self, cost: int, fn: Callable[..., T], *args: object, bounded: bool = True) -> T:
        """``fn(*args)`` in a worker thread, holding ``cost`` bytes while it runs."""
        async with self.hold(cost, bounded=bounded):
            return await asyncio.to_thread(fn, *args)

    # ---- the queue -----------------------------------------------------------------------

    async def _acquire(self, held: int, wait_s: float | None, label: str, cost: int) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if not self._queue and self._used + held <= self.capacity:
                self._used += held
                return
            waiter = _Waiter(held, loop, loop.create_future())
            self._queue.append(waiter)
        try:
            async with asyncio.timeout(wait_s):
                await waiter.future
        except BaseException as exc:
            with self._lock:
                if waiter.granted:  # room came just as it gave up: hand it on
                    self._used -= held
                else:
                    self._queue.remove(waiter)
                self._grant()
            if isinstance(exc, TimeoutError):
                raise Busy(
                    "server busy: too many large images at once, try again "
                    f"({label} needs {cost / MB:.0f} MB of the {self.capacity / MB:.0f} MB "
                    f"decoding budget; waited {wait_s:g} s)"
                ) from None
            raise

    def _release(self, held: int) -> None:
        with self._lock:
            self._used -= held
            self._grant()

    def _grant(self) -> None:
        """Let in waiters from the front while they fit (the lock is held)."""
        while self._queue and (self._used + self._queue[0].cost <= self.capacity or not self._used):
            waiter = self._queue.popleft()
            try:
                waiter.loop.call_soon_threadsafe(_wake, waiter.future)
            except RuntimeError:  # its loop has closed: nobody is waiting any more
                continue
            waiter.granted = True
            self._used += waiter.cost


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


#: The process's budget: 4 images of 50 MP at 4 bytes a pixel (763 MB) until the Editor
#: sizes it from the settings.
PIXELS = PixelBudget(4 * 50_000_000 * WIDE)
