"""Task-change events inside one process.

Whoever changes a task says so (``changed``); whoever waits for a task is woken
(``wait``). A progress update alone wakes only the callers that show progress
(``watching``): for the rest it is not worth reading the task again. Tasks that another
process runs send no events here, so waiters also wake on a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Iterator


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._watchers: Counter[str] = Counter()  # task → callers showing progress

    def changed(self, task_id: str, ended: bool = True) -> None:
        """The task changed: at its end (``ended``), or in its progress."""
        if not ended and not self._watchers.get(task_id):
            return
        event = self._events.get(task_id)
        if event is not None:
            event.set()

    async def wait(self, task_id: str, timeout: float) -> None:
        """Return when the task changes, or after ``timeout`` seconds."""
        event = self._events.setdefault(task_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
        event.clear()

    @contextlib.contextmanager
    def watching(self, task_id: str) -> Iterator[None]:
        """While inside, progress updates of this task wake its waiters too."""
        self._watchers[task_id] += 1
        try:
            yield
        finally:
            self._watchers[task_id] -= 1
            if self._watchers[task_id] <= 0:
                del self._watchers[task_id]

    def forget(self, task_id: str) -> None:
        """Drop a task that has ended (nothing will change it again)."""
        self._events.pop(task_id, None)
