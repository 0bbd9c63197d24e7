"""Rate limits, backoff and Retry-After caps, shared by the worker's calls to every vendor.

A vendor's rate limits hold for its whole account, so the turns are kept in the store that
every worker process shares (``Store.take_turn``), not in any one process."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tools.store import Store

#: Base of the capped, jittered backoff between retries (tests lower it).
BACKOFF_BASE_S = 1.0
#: A vendor's Retry-After (or poll hint) is honoured up to this: a broken or hostile answer
#: ("retry in a day") must not park a task, and its concurrency slot, for that long.
MAX_RETRY_AFTER_S = 120.0
#: A call reaches its vendor within this many seconds of its turn (uploads before a
#: submission included), so its turn can be counted as ended this long after it was taken
#: (a synchronous call that runs longer keeps no turn for its whole length).
TURN_HOLD_S = 2.0


@contextlib.asynccontextmanager
async def turn(
    store: Store, vendor: str, kind: str, rate: float | None, *, burst: int = 1
) -> AsyncIterator[None]:
    """Wait for a turn to call ``vendor`` (``kind``: "submit", "query"…) and hold it while
    the call inside runs: at most ``rate`` calls a second across every process on ``store``
    (``Store.take_turn``), up to ``burst`` of them at once (1: evenly spaced). A process
    that dies mid-call holds its turn for ``TURN_HOLD_S`` + 1 s. No rate (None): no limit,
    and no trip to the store. A call that had to wait is counted once it has ended
    (``Store.note_wait``: the console shows whether a vendor's limits bind)."""
    if rate is None:
        yield
        return
    started, waited = time.monotonic(), False
    while (
        taken := await store.take_turn(vendor, kind, rate, hold_s=TURN_HOLD_S, burst=burst)
    ).id is None:
        waited = True
        await asyncio.sleep(taken.wait)
    wait_s = time.monotonic() - started
    try:
        yield
    finally:
        # Not ended (the store is unreachable): the turn ends by itself after its hold.
        with contextlib.suppress(Exception):
            await store.end_turn(taken.id)
            if waited:
                await store.note_wait(vendor, kind, wait_s)


def burst_of(rate: float | None) -> int:
    """How many calls may go at once under ``rate`` a second: all the whole calls of one
    second. Safe because each turn is held until a second after its call ends, so no one
    second at the vendor can hold more than ``floor(rate)`` calls, bursts or not."""
    return max(1, math.floor(rate or 1))


def backoff(attempt: int, base: float = 1.0, cap: float = 60.0) -> float:
    """Capped exponential backoff with full jitter (attempt counts from 0)."""
    return random.uniform(base / 2, min(cap, base * 2**attempt))


def capped(seconds: float) -> float:
    """A vendor's wait (Retry-After, poll hint), honoured up to ``MAX_RETRY_AFTER_S``."""
    return min(seconds, MAX_RETRY_AFTER_S)


def delay(retry_after: float | None, attempt: int) -> float:
    """Seconds before the next attempt: the vendor's Retry-After (capped), else backoff."""
    if retry_after:
        return capped(float(retry_after))
    return backoff(attempt, base=BACKOFF_BASE_S)
