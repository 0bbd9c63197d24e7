"""The store's contract for ``/metrics``: every task counted by status, vendor, function and
currency, with billed images, cost and the slots in use, from tallies the store keeps as
tasks change (equal, after any mix of changes, to counting the tasks); totals of the tasks
ended that retention does not lower; and each end a ``finish`` records observed once, in
the process that recorded it."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.contract.test_task_store import image, new_task
from tools import telemetry
from tools.models import TaskStatus
from tools.store import Store
from tools.store.base import Ended, Tally
from tools.store.sqlite import SQLiteStore


def ended(vendor: str, function: str, status: str) -> float:
    value = telemetry.REGISTRY.get_sample_value(
        "retouch_task_duration_seconds_count",
        {"vendor": vendor, "function": function, "status": status},
    )
    return value or 0.0


async def test_tallies_count_every_task_once(store: Store) -> None:
    assert await store.tallies() == []
    for _ in range(3):
        await new_task(store, vendor="fake")
    await new_task(store, vendor="local")
    live = await store.claim("fake", "w1", capacity=2, lease_s=60)
    assert len(live) == 2
    paid = await new_task(store, vendor="fake")
    before = ended("fake", "adjust", "succeeded"), ended("fake", "adjust", "failed")
    assert await store.finish(
        paid, None, TaskStatus.succeeded, billed_images=2, cost=0.5, currency="CNY"
    )
    assert await store.finish(live[0].id, "w1", TaskStatus.failed, error={"code": "x"})
    assert not await store.finish(paid, None, TaskStatus.failed)  # ended once: counted once
    assert ended("fake", "adjust", "succeeded") == before[0] + 1
    assert ended("fake", "adjust", "failed") == before[1] + 1

    tallies = sorted(await store.tallies(), key=lambda t: (t.vendor, t.status))
    assert tallies == [
        Tally("failed", "fake", "adjust", None, 1, 0, None, 0),
        Tally("queued", "fake", "adjust", None, 1, 0, None, 0),
        Tally("running", "fake", "adjust", None, 1, 0, None, 1),
        Tally("succeeded", "fake", "adjust", "CNY", 1, 2, 0.5, 0),
        Tally("queued", "local", "adjust", None, 1, 0, None, 0),
    ]
    # a lease run out is no slot in use (its process died), though the task is running
    later = await store.tallies(now=time.time() + 120)
    assert [t.live for t in later if t.status == "running"] == [0]


#: What ``tallies`` answered before m016: one aggregate statement over every task.
DIRECT = """
    SELECT status, vendor, function, currency, count(*), COALESCE(sum(billed_images), 0),
        sum(cost), sum(CASE WHEN status = 'running' AND lease_until >= {now} THEN 1 ELSE 0 END)
    FROM tasks GROUP BY status, vendor, function, currency
"""

Key = tuple[str, str, str, str | None]


async def direct(store: Store, now: float) -> dict[Key, tuple[int, int, float | None, int]]:
    """The tallies counted straight from the tasks table, on the store's own connection."""
    if isinstance(store, SQLiteStore):
        rows = [tuple(r) for r in await store.db.execute_fetchall(DIRECT.format(now="?"), (now,))]
    else:
        from tools.store.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        rows = [tuple(r) for r in await store.pool.fetch(DIRECT.format(now="$1"), now)]
    return {
        (s, v, f, c): (int(n), int(i), cost, int(live)) for s, v, f, c, n, i, cost, live in rows
    }


async def kept(store: Store, now: float) -> dict[Key, tuple[int, int, float | None, int]]:
    return {
        (t.status, t.vendor, t.function, t.currency): (t.tasks, t.images, t.cost, t.live)
        for t in await store.tallies(now=now)
    }


def same(a: dict[Key, tuple[int, int, float | None, int]], b: dict[Key, Any]) -> None:
    assert a.keys() == b.keys()
    for key, (tasks, images, cost, live) in a.items():
        assert (tasks, images, live) == (b[key][0], b[key][1], b[key][3]), key
        assert cost == (None if b[key][2] is None else pytest.approx(b[key][2])), key


async def created(store: Store, vendor: str, function: str) -> str:
    sha = await store.put_blob(image(7))
    record = await store.create_task(
        function=function,
        vendor=vendor,
        prompt="p",
        n=1,
        request={"images": ["x"]},
        inputs=[sha],
        mask=None,
    )
    return record.id


async def test_kept_tallies_equal_a_count_of_the_tasks_through_every_change(
    store: Store,
) -> None:
    """Creates, claims, polls, ends (paid or not), a reroute, a hand-back, a cancel and the
    deletes of retention: after each, the tallies the store keeps equal a GROUP BY over the
    tasks; the ended totals count each end once and retention does not lower them."""
    now = time.time()

    async def check() -> None:
        same(await kept(store, now), await direct(store, now))
        same(await kept(store, now + 3600), await direct(store, now + 3600))  # leases run out

    await check()
    a = [await created(store, "va", "adjust") for _ in range(4)]
    b = [await created(store, "vb", "upscale") for _ in range(3)]
    await check()
    held_a = await store.claim("va", "w1", capacity=3, lease_s=60)
    held_b = await store.claim("vb", "w2", capacity=2, lease_s=60)
    assert len(held_a) == 3 and len(held_b) == 2
    assert await store.update(held_a[0].id, "w1", polls=3, progress="50%")
    await check()
    assert await store.finish(
        held_a[0].id, "w1", TaskStatus.succeeded, billed_images=2, cost=0.3, currency="CNY"
    )
    assert await store.finish(held_a[1].id, "w1", TaskStatus.failed, error={"code": "x"})
    assert await store.finish(
        held_b[0].id, "w2", TaskStatus.succeeded, billed_images=1, cost=0.1, currency="USD"
    )
    assert not await store.finish(held_b[0].id, None, TaskStatus.failed)  # ended once
    await check()
    assert await store.reroute(held_b[1].id, "w2", "va", "vb refused it")  # now va, queued
    await store.release("w1", [held_a[2].id])  # handed back: running, no lease
    await check()
    await store.request_cancel(b[2])
    assert await store.finish(b[2], None, TaskStatus.canceled)
    again = await store.claim("va", "w3", capacity=5, lease_s=60)
    assert {t.id for t in again} >= {a[3], held_b[1].id}
    assert await store.finish(
        held_b[1].id, "w3", TaskStatus.succeeded, billed_images=3, cost=0.2, currency="CNY"
    )
    await check()

    def totals(ended: list[Ended]) -> dict[Key, tuple[int, int, float]]:
        return {
            (e.status, e.vendor, e.function, e.currency): (e.tasks, e.images, e.cost) for e in ended
        }

    before = totals(await store.ended())
    assert before == {
        ("canceled", "vb", "upscale", None): (1, 0, 0.0),
        ("failed", "va", "adjust", None): (1, 0, 0.0),
        ("succeeded", "va", "adjust", "CNY"): (1, 2, pytest.approx(0.3)),
        ("succeeded", "va", "upscale", "CNY"): (1, 3, pytest.approx(0.2)),
        ("succeeded", "vb", "upscale", "USD"): (1, 1, pytest.approx(0.1)),
    }
    await store.cleanup(retention_days=0)  # every ended task is forgotten
    await check()
    assert {t.status for t in await store.tallies()} <= {"queued", "running"}
    live = [t for t in again if t.id != held_b[1].id]
    for task in live:
        assert await store.finish(task.id, "w3", TaskStatus.failed, error={"code": "y"})
    await check()
    after = totals(await store.ended())
    failed = ("failed", "va", "adjust", None)
    assert after[failed][0] - before[failed][0] == len(live) > 0
    assert all(after[k][0] >= n for k, (n, _, _) in before.items())


async def test_slots_in_use_are_counted_through_an_index(store: Store) -> None:
    """The one live count of a scrape (running tasks whose lease holds) walks an index of
    the running tasks: it never reads the ended ones, however many the store keeps."""
    for _ in range(3):
        await new_task(store, vendor="fake")
    assert len(await store.claim("fake", "w1", capacity=2, lease_s=60)) == 2
    if isinstance(store, SQLiteStore):
        from tools.store.sqlite import TALLIES

        rows = await store.db.execute_fetchall(f"EXPLAIN QUERY PLAN {TALLIES}", (time.time(),))
        plan = [str(r[3]) for r in rows]
        assert any(line.startswith("SEARCH tasks USING INDEX") for line in plan), plan
        assert not any(line.startswith("SCAN tasks") for line in plan), plan
    else:
        from tools.store.postgres import TALLIES, PostgresStore

        assert isinstance(store, PostgresStore)
        async with store.pool.acquire() as db, db.transaction():
            # a table this small is read whole whatever the indexes: ask whether one serves
            await db.execute("SET LOCAL enable_seqscan = off")
            plan = [r[0] for r in await db.fetch(f"EXPLAIN {TALLIES}", time.time())]
        assert not any("Seq Scan on tasks" in line for line in plan), plan
        assert any("Index" in line and " on tasks" in line for line in plan), plan
