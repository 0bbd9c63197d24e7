"""The notifier: task-change events wake the callers waiting for that task."""

from __future__ import annotations

import asyncio
import time

from tools.notifier import Notifier


async def woken(notifier: Notifier, task_id: str, change: bool, timeout: float = 5) -> bool:
    """Whether a waiter is woken by ``changed(task_id, ended=change)`` before ``timeout``."""
    waiting = asyncio.create_task(notifier.wait(task_id, timeout))
    await asyncio.sleep(0)  # the waiter is now waiting
    started = time.monotonic()
    notifier.changed(task_id, ended=change)
    await waiting
    return time.monotonic() - started < timeout / 2


async def test_an_end_wakes_the_waiters_of_that_task_only() -> None:
    notifier = Notifier()
    other = asyncio.create_task(notifier.wait("b", 0.3))
    assert await woken(notifier, "a", change=True)
    assert not other.done()
    await other  # its own timeout


async def test_a_progress_update_wakes_only_while_someone_shows_progress() -> None:
    notifier = Notifier()
    assert not await woken(notifier, "a", change=False, timeout=0.2)
    with notifier.watching("a"), notifier.watching("a"):
        assert await woken(notifier, "a", change=False)
    with notifier.watching("a"):
        assert await woken(notifier, "a", change=False)
    assert not await woken(notifier, "a", change=False, timeout=0.2)


async def test_a_change_before_anyone_waits_is_not_kept() -> None:
    notifier = Notifier()
    notifier.changed("a")  # nobody waits: nothing to wake
    started = time.monotonic()
    await notifier.wait("a", 0.1)
    assert time.monotonic() - started >= 0.1


async def test_a_forgotten_task_starts_afresh() -> None:
    notifier = Notifier()
    waiting = asyncio.create_task(notifier.wait("a", 0.1))
    await asyncio.sleep(0)
    notifier.forget("a")
    notifier.changed("a")  # the forgotten event is not set again
    await waiting
    assert await woken(notifier, "a", change=True)


async def test_events_from_the_store_wake_waiters_and_reach_subscribers() -> None:
    from tools.notifier import TaskEvent

    notifier = Notifier()
    heard: list[TaskEvent] = []
    stop = notifier.subscribe(heard.append)
    ending = asyncio.create_task(notifier.wait("a", 5))
    progressing = asyncio.create_task(notifier.wait("b", 0.3))
    await asyncio.sleep(0)
    started = time.monotonic()
    notifier.event(TaskEvent("queued", "c", "local"))  # a new task wakes no waiter
    notifier.event(TaskEvent("changed", "b", "local"))  # nobody shows b's progress
    notifier.event(TaskEvent("ended", "a", "local"))
    await ending
    assert time.monotonic() - started < 2.5  # woken, not timed out (5 s)
    await progressing
    assert time.monotonic() - started >= 0.3
    stop()
    notifier.event(TaskEvent("ended", "a", "local"))
    assert [e.kind for e in heard] == ["queued", "changed", "ended"]


async def test_missed_events_wake_every_waiter() -> None:
    from tools.notifier import TaskEvent

    notifier = Notifier()
    waiting = [asyncio.create_task(notifier.wait(t, 5)) for t in "abc"]
    await asyncio.sleep(0)
    started = time.monotonic()
    notifier.event(TaskEvent("missed"))  # the store's listener was down: look again
    await asyncio.gather(*waiting)
    assert time.monotonic() - started < 2.5  # woken, not timed out (5 s)


async def test_a_wait_says_what_woke_it_and_an_end_is_not_masked() -> None:
    notifier = Notifier()
    with notifier.watching("a"):
        waiting = asyncio.create_task(notifier.wait("a", 5))
        await asyncio.sleep(0)
        notifier.changed("a", ended=False)
        assert await waiting == "changed"
        notifier.expect("a")
        notifier.changed("a", ended=True)
        notifier.changed("a", ended=False)  # a late progress write does not hide the end
        assert await notifier.wait("a", 5) == "ended"
    assert await notifier.wait("a", 0.01) is None  # nothing heard: the timeout
