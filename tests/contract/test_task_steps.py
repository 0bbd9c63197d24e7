"""The store's log of each task's steps, its rate-limit waits and the console's sessions,
on every backend."""

from __future__ import annotations

import time

from tests.contract.test_task_store import new_task, result_of
from tools.models import TaskStatus
from tools.store import Store
from tools.store.base import ConsoleSession, TaskStep


def story(steps: list[TaskStep]) -> list[tuple[str, int, str | None]]:
    return [(s.kind, s.count, s.detail) for s in steps]


async def test_every_step_of_a_task_is_logged_by_the_statements_that_make_it(
    store: Store,
) -> None:
    task_id = await new_task(store, vendor="wanx")
    [held] = await store.claim("wanx", "w1", capacity=1, lease_s=30)
    assert held.id == task_id
    assert await store.update(task_id, "w1", progress="working with wanx")  # no step
    assert await store.update(task_id, "w1", vendor_task_id="vt-123", progress="wanx: PENDING")
    for _ in range(300):  # a long task's polls, all alike: one row
        assert await store.update(task_id, "w1", polls=held.polls + 1, progress="wanx: RUNNING")
        held.polls += 1
    await store.add_step(task_id, "retry", code="vendor_fault", detail="HTTP 500 <b>oops</b>")
    await store.add_step(task_id, "retry", code="vendor_fault", detail="HTTP 500 <b>oops</b>")
    assert await store.update(task_id, "w1", polls=held.polls + 1, progress="wanx: SUCCEEDED")
    await store.renew("w1", [task_id], 30)  # no step
    result = await result_of(store, task_id)
    assert await store.finish(task_id, "w1", TaskStatus.succeeded, results=[result])

    steps = await store.steps(task_id)
    assert story(steps) == [
        ("queued", 1, None),
        ("claimed", 1, "attempt 1"),
        ("submitted", 1, "vt-123"),
        ("poll", 300, "wanx: RUNNING"),
        ("retry", 2, "HTTP 500 <b>oops</b>"),
        ("poll", 1, "wanx: SUCCEEDED"),
        ("downloaded", 1, "1 result(s) stored"),
        ("ended", 1, "succeeded"),
    ]
    assert steps[1].worker == "w1" and steps[-1].worker == "w1"
    assert steps[4].code == "vendor_fault"
    assert all(s.vendor == "wanx" and s.task_id == task_id for s in steps)
    assert [s.id for s in steps] == sorted(s.id for s in steps)
    assert all(s.at <= s.last_at for s in steps)
    assert steps[3].last_at >= steps[3].at and steps[0].at <= steps[-1].at
    # the store's clock, in Unix seconds: the queued step is the task's creation
    created = (await store.get(task_id)).created_at
    assert abs(steps[0].at - created) < 60


async def test_a_failure_a_reroute_a_release_and_a_cancel_are_logged(store: Store) -> None:
    task_id = await new_task(store, vendor="a")
    await store.claim("a", "w1", capacity=1, lease_s=30)
    await store.release("w1")  # a clean stop hands it back
    await store.claim("a", "w2", capacity=1, lease_s=30)
    assert await store.reroute(task_id, "w2", "b", "a failed (HTTP 500); moved to b")
    await store.claim("b", "w3", capacity=1, lease_s=30)
    await store.request_cancel(task_id)
    error = {"code": "vendor_fault", "message": "b said <script>no</script>"}
    assert await store.finish(task_id, "w3", TaskStatus.failed, error=error)
    await store.request_cancel(task_id)  # ended: nothing more
    steps = await store.steps(task_id)
    assert [(s.kind, s.worker) for s in steps] == [
        ("queued", None),
        ("claimed", "w1"),
        ("released", "w1"),
        ("claimed", "w2"),
        ("rerouted", "w2"),
        ("claimed", "w3"),
        ("cancel", "w3"),
        ("ended", "w3"),
    ]
    assert steps[3].detail == "attempt 2" and steps[5].detail == "attempt 3"
    assert steps[4].vendor == "b" and steps[4].detail == "a failed (HTTP 500); moved to b"
    assert steps[-1].code == "vendor_fault"
    assert steps[-1].detail == "failed: b said <script>no</script>"


async def test_a_queued_task_canceled_ends_without_a_worker(store: Store) -> None:
    task_id = await new_task(store)
    await store.request_cancel(task_id)
    assert await store.finish(task_id, None, TaskStatus.canceled)
    assert story(await store.steps(task_id)) == [
        ("queued", 1, None),
        ("cancel", 1, "cancel asked for"),
        ("ended", 1, "canceled"),
    ]


async def test_a_step_for_no_task_writes_nothing_and_steps_go_with_their_task(
    store: Store,
) -> None:
    await store.add_step("0" * 32, "retry", code="x", detail="y")
    assert await store.steps("0" * 32) == []
    task_id = await new_task(store)
    [held] = await store.claim("local", "w", capacity=1, lease_s=30)
    assert await store.finish(held.id, "w", TaskStatus.succeeded)
    assert len(await store.steps(task_id)) == 3
    other = await new_task(store)
    await store.cleanup(retention_days=-1)  # past retention: the task and its log go
    assert await store.steps(task_id) == []
    assert [s.kind for s in await store.steps(other)] == ["queued"]  # unfinished: kept


async def test_alternating_retries_are_rows_each_and_steps_are_limited(store: Store) -> None:
    task_id = await new_task(store)
    for i in range(4):
        await store.add_step(task_id, "retry", code="throttled", detail=f"wait {i % 2}")
    steps = await store.steps(task_id)
    assert [s.count for s in steps] == [1, 1, 1, 1, 1]
    assert len(await store.steps(task_id, limit=2)) == 2


async def test_rate_limit_waits_are_counted_per_vendor_and_kind(store: Store) -> None:
    assert await store.rate_waits() == []
    await store.note_wait("wanx", "submit", 0.5)
    await store.note_wait("wanx", "submit", 1.5)
    await store.note_wait("wanx", "query", 0.25)
    taken = await store.take_turn("qwen", "submit", 1.0, hold_s=2.0)
    assert taken.id is not None
    waits = {(w.vendor, w.kind): w for w in await store.rate_waits()}
    assert set(waits) == {("wanx", "submit"), ("wanx", "query"), ("qwen", "submit")}
    submit = waits["wanx", "submit"]
    assert (submit.waits_minute, submit.waits_hour) == (2, 2)
    assert abs(submit.waited_s_hour - 2.0) < 1e-6 and submit.last_wait_at is not None
    assert submit.held_now == 0 and submit.next_free_at is None
    held = waits["qwen", "submit"]
    assert (held.waits_hour, held.held_now) == (0, 1)
    assert held.next_free_at is not None and held.next_free_at > time.time()
    await store.cleanup(retention_days=30)  # waits of the last day stay
    assert len(await store.rate_waits()) == 3


async def test_console_sessions_are_shared_and_signed_out_once(store: Store, twin: Store) -> None:
    now = time.time()
    live = ConsoleSession("a" * 64, "op1", now, now + 3600)
    await store.add_console_session(live)
    assert await twin.console_session("a" * 64) == live  # another process sees it
    assert await twin.console_session("b" * 64) is None
    assert await twin.end_console_session("a" * 64, now + 1)
    assert not await store.end_console_session("a" * 64, now + 2)  # once
    ended = await store.console_session("a" * 64)
    assert ended is not None and ended.ended_at == now + 1
    await store.add_console_session(ConsoleSession("c" * 64, "op1", now - 7200, now - 3600))
    await store.cleanup(retention_days=30)  # expired ones go
    assert await store.console_session("c" * 64) is None
    assert await store.console_session("a" * 64) is not None
