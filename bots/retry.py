"""Retrying Bot API calls: Telegram's 429 (``RetryAfter``) and network failures.

:class:`RetryingLimiter` plugs into PTB as the Application's rate limiter, so *every* Bot API
call the bot makes (except ``getUpdates``, which PTB's updater retries itself) passes it: its
texts and captions are cut to Telegram's limits (``bots.lengths``), and it waits out a
429's ``retry_after`` and tries again, and retries a failed connection or a timeout a few
times with backoff. PTB's own ``AIORateLimiter`` would need the ``aiolimiter`` package; this
one reacts to 429s instead of throttling ahead of them, which suits a bot that sends about as
many messages as it receives.

A retried *send* whose answer was lost after Telegram processed it shows the message twice;
Telegram offers no idempotency key, so a rare duplicate is the price of not losing results.

File downloads do not pass through the limiter; wrap them in :func:`retrying`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from telegram.error import BadRequest, NetworkError, RetryAfter
from telegram.ext import BaseRateLimiter

from bots.lengths import fit_call

log = logging.getLogger("retouch.bot.retry")
T = TypeVar("T")

MAX_ATTEMPTS = 4
MAX_RETRY_AFTER_S = 60.0
BACKOFF_S = (0.5, 1.5, 4.0)


def retry_after_seconds(exc: RetryAfter) -> float:
    """``retry_after`` in seconds (PTB gives an int or, opted in, a timedelta)."""
    value = exc.retry_after
    total = getattr(value, "total_seconds", None)
    return float(total()) if callable(total) else float(value)


async def retrying(
    call: Callable[[], Awaitable[T]], *, what: str = "request", attempts: int = MAX_ATTEMPTS
) -> T:
    """Run ``call`` again after a 429 (waiting as told) or a network failure (backoff).

    A ``BadRequest`` (and any other Telegram refusal) is raised at once: retrying would
    not change the answer.
    """
    for attempt in range(1, attempts + 1):
        try:
            return await call()
        except RetryAfter as exc:
            wait = retry_after_seconds(exc)
            if attempt == attempts or wait > MAX_RETRY_AFTER_S:
                raise
            log.warning("%s: Telegram asked to wait %.0f s (429); retrying", what, wait)
            await asyncio.sleep(wait)
        except BadRequest:
            raise
        except NetworkError as exc:
            if attempt == attempts:
                raise
            delay = BACKOFF_S[min(attempt - 1, len(BACKOFF_S) - 1)]
            log.warning("%s failed (%s); retry %d in %.1f s", what, exc, attempt, delay)
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


class RetryingLimiter(BaseRateLimiter[None]):
    """PTB rate limiter that fits texts to Telegram's limits and retries 429s and network
    failures (see the module docstring)."""

    def __init__(self, attempts: int = MAX_ATTEMPTS) -> None:
        self.attempts = attempts

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, bool | dict[str, Any] | list[dict[str, Any]]]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: None,
    ) -> bool | dict[str, Any] | list[dict[str, Any]]:
        fit_call(endpoint, data)  # ``data`` is the dict the call is about to send
        return await retrying(
            lambda: callback(*args, **kwargs), what=endpoint, attempts=self.attempts
        )
