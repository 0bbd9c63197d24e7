"""Vendors' rate limits in one process (``tools/limits.py``): calls under the limit go at once,
and no one-second window at the vendor ever holds more than the limit, however the calls'
arrivals jitter between their turn and their end."""

from __future__ import annotations

import asyncio
import random
import time

from tools.limits import RateLimiter, limiter, turn


async def test_calls_under_the_limit_are_not_spaced_out() -> None:
    limit = RateLimiter(5)
    start = time.monotonic()
    for _ in range(5):
        async with limit.turn():
            pass
    assert time.monotonic() - start < 0.2  # a token bucket of one spaced them 0.2 s apart


async def test_a_turn_is_held_until_a_second_after_its_call_ends() -> None:
    limit = RateLimiter(2)
    ended: list[float] = []

    async def call(seconds: float) -> float:
        async with limit.turn():
            began = time.monotonic()
            await asyncio.sleep(seconds)
            ended.append(time.monotonic())
        return began

    start = time.monotonic()
    first, second = await asyncio.gather(call(0.3), call(0.0))
    assert first - start < 0.1 and second - start < 0.1
    third = await call(0.0)  # waits for the older of the two turns: a second after its end
    assert third >= min(ended[:2]) + 1.0 - 0.01


async def test_no_second_at_the_vendor_holds_more_than_the_rate() -> None:
    rate, rng = 20.0, random.Random(7)
    limit = RateLimiter(rate)
    arrivals: list[float] = []

    async def call() -> None:
        async with limit.turn():
            began = time.monotonic()
            length = rng.uniform(0, 0.08)
            await asyncio.sleep(length)
            # The request reached the vendor at some moment between its turn and its end.
            arrivals.append(began + rng.uniform(0, length))

    await asyncio.gather(*(call() for _ in range(50)))
    arrivals.sort()
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    assert busiest <= rate
    assert arrivals[-1] - arrivals[0] < 3.5  # and it was not spaced out beyond the limit


async def test_a_rate_below_one_allows_one_call_per_interval() -> None:
    limit = RateLimiter(0.9)
    assert (limit.slots, round(limit.window, 3)) == (1, 1.111)
    assert RateLimiter(2.5).slots == 2  # never more than the rate in any one second


async def test_no_rate_means_no_limiter() -> None:
    assert limiter(None) is None
    start = time.monotonic()
    for _ in range(100):
        async with turn(None):
            pass
    assert time.monotonic() - start < 0.1
    assert isinstance(limiter(3), RateLimiter)
