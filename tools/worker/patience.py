"""The store as a task in hand sees it: through an outage, a call waits for the database to
come back instead of failing the task.

A worker driving a task holds what only it knows (the vendor's task id just returned, the
results just downloaded); failing the task because the database blinked would lose them, and
could bill the user twice. So each store call the driver and the result intake make is made
again, backing off, while the store answers ``StoreUnavailable``. Every such call is safe to
repeat: writes are guarded by the lease and the task's state, and blobs are content-addressed.
A worker that stops (a cancel) stops waiting at once.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from tools.errors import StoreUnavailable
from tools.store import Store

log = logging.getLogger("retouch.worker")

#: The first wait after a call met an outage, and the longest between two attempts.
FIRST_WAIT_S = 0.25
MAX_WAIT_S = 2.0


def next_wait(previous: float) -> float:
    """The wait after ``previous`` (0: the first), doubling up to ``MAX_WAIT_S``."""
    return min(max(previous * 2, FIRST_WAIT_S), MAX_WAIT_S)


class _Patient:
    def __init__(self, store: Store) -> None:
        self._store = store

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        return _patiently(attr)


def _patiently(call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(call)
    async def again(*args: Any, **kwargs: Any) -> Any:
        wait = 0.0
        while True:
            try:
                return await call(*args, **kwargs)
            except StoreUnavailable:
                if not wait:
                    log.warning("store unavailable: %s waits until it is back", call.__name__)
                wait = next_wait(wait)
                await asyncio.sleep(wait)

    return again


def patient(store: Store) -> Store:
    """``store``, whose coroutine methods wait out an outage (see the module's docstring)."""
    return cast(Store, _Patient(store))
