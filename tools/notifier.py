"""Task-change events inside one process, and those the store relays from others.

Whoever changes a task says so (``changed``); whoever waits for a task is woken
(``wait``). A progress update alone wakes only the callers that show progress
(``watching``): for the rest it is not worth reading the task again. A store that hears
other processes' changes (PostgreSQL's LISTEN) hands them to ``event``, which wakes the
waiters and tells the subscribers (the worker's scheduler, which claims on ``queued``).
A store that hears nothing (SQLite), or a notification lost on the way, leaves waiters to
their timeout: they poll.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

#: queued: a task can be claimed (new, rerouted, or handed back); changed: its progress or
#: a cancel; ended: it finished; missed: events may have been lost (the store's listening
#: connection was down), so look at everything again.
EventKind = Literal["queued", "changed", "ended", "missed"]


@dataclass(frozen=True)
class TaskEvent:
    """A change to a task made in any process (``missed``: task_id and vendor are empty)."""

    kind: EventKind
    task_id: str = ""
    vendor: str = ""


Subscriber = Callable[[TaskEvent], None]


class Notifier:
    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._woken_by: dict[str, Literal["ended", "changed"]] = {}
        self._watchers: Counter[str] = Counter()  # task → callers showing progress
        self._subscribers: list[Subscriber] = []

    def changed(self, task_id: str, ended: bool = True) -> None:
        """The task changed: at its end (``ended``), or in its progress."""
        if not ended and not self._watchers.get(task_id):
            return
        event = self._events.get(task_id)
        if event is not None:
            if self._woken_by.get(task_id) != "ended":
                self._woken_by[task_id] = "ended" if ended else "changed"
            event.set()

    def event(self, event: TaskEvent) -> None:
        """A change the store heard of (from any process, this one included)."""
        if event.kind == "missed":
            for waiting in self._events.values():
                waiting.set()
        elif event.kind != "queued":
            self.changed(event.task_id, ended=event.kind == "ended")
        for subscriber in list(self._subscribers):
            subscriber(event)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Hand every ``event`` to ``subscriber`` too; returns how to stop."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber)

    def expect(self, task_id: str) -> None:
        """A caller is about to read the task, then ``wait`` for it: a change made from now
        on, even before that wait begins, ends it."""
        self._events.setdefault(task_id, asyncio.Event())

    async def wait(self, task_id: str, timeout: float) -> Literal["ended", "changed"] | None:
        """Return when the task changes, or after ``timeout`` seconds: what this process
        heard (its end, or a progress change), None if nothing (the store may still have a
        change this process could not hear of: SQLite's from another process)."""
        event = self._events.setdefault(task_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
        event.clear()
        return self._woken_by.pop(task_id, None)

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
        self._woken_by.pop(task_id, None)
