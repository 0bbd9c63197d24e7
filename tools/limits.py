"""Rate limiting, backoff and Retry-After caps, shared by the worker's calls to every vendor."""

from __future__ import annotations

import asyncio
import random
import time

#: Base of the capped, jittered backoff between retries (tests lower it).
BACKOFF_BASE_S = 1.0
#: A vendor's Retry-After (or poll hint) is honoured up to this: a broken or hostile answer
#: ("retry in a day") must not park a task, and its concurrency slot, for that long.
MAX_RETRY_AFTER_S = 120.0


class RateLimiter:
    """A token bucket: at most ``rate`` acquisitions a second, bursts of ``burst``."""

    def __init__(self, rate: float, burst: float | None = None) -> None:
        self.rate = rate
        # No burst by default: a bucket of `rate` tokens admits 2 × rate in some 1 s windows,
        # which is enough to trip a vendor's account-wide cap (DashScope: 20 queries/s).
        self.capacity = burst if burst is not None else 1.0
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


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
