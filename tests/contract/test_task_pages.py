"""The store's contract for the console: filtered pages of tasks by keyset (``seq``), and
the light summaries its statistics are computed from."""

from __future__ import annotations

from tests.contract.test_task_store import new_task
from tools.models import LOCAL_OWNER, TaskStatus
from tools.store import Store
from tools.store.base import TaskFilter

T0 = 1_800_000_000.0


async def test_pages_are_newest_first_filtered_and_keyed_by_seq(store: Store) -> None:
    ids = []
    for i in range(7):
        ids.append(
            await new_task(
                store,
                vendor="fake" if i % 2 else "local",
                owner=None if i == 0 else ("alice" if i < 4 else "tg:42"),
                created_at=T0 + i,
            )
        )
    await store.finish(ids[5], None, TaskStatus.failed, error={"code": "E1", "message": "x"})

    first = await store.page(TaskFilter(), limit=3)
    assert [r.id for r in first] == ids[6:3:-1]
    rest = await store.page(TaskFilter(), before=first[-1].seq, limit=10)
    assert [r.id for r in rest] == ids[3::-1]
    assert await store.page(TaskFilter(), before=rest[-1].seq) == []

    async def found(**where: object) -> list[str]:
        return [r.id for r in await store.page(TaskFilter(**where), limit=100)]  # type: ignore[arg-type]

    assert await found(vendor="fake") == [ids[5], ids[3], ids[1]]
    assert await found(owner="alice") == [ids[3], ids[2], ids[1]]
    assert await found(owner=LOCAL_OWNER) == [ids[0]]  # stored without an owner
    assert await found(owner="tg:42", status="failed") == [ids[5]]
    assert await found(status="queued", vendor="local") == [ids[6], ids[4], ids[2], ids[0]]
    assert await found(function="adjust", since=T0 + 2, until=T0 + 4) == [ids[3], ids[2]]
    assert await found(function="nothing") == []


async def test_summaries_hold_recent_and_unfinished_tasks(store: Store) -> None:
    await new_task(store, created_at=T0 - 86_400)  # old, but still queued
    done = await new_task(store, created_at=T0 - 90_000, owner="alice")
    await store.finish(done, None, TaskStatus.failed, error={"code": "E_X", "message": "no"})
    recent = await new_task(store, vendor="fake", owner="bob", created_at=T0 + 5)
    await store.finish(recent, None, TaskStatus.succeeded, cost=0.5, currency="USD")

    rows = await store.summaries(T0)
    assert [(r.vendor, r.owner, r.status) for r in rows] == [
        ("local", LOCAL_OWNER, "queued"),  # still queued, however old
        ("fake", "bob", "succeeded"),
    ]
    assert rows[1].cost == 0.5 and rows[1].currency == "USD" and rows[1].finished_at
    assert rows[1].seq > rows[0].seq and rows[0].error_code is None
    failed = [r for r in await store.summaries(T0 - 100_000) if r.status == "failed"]
    assert [(r.owner, r.error_code) for r in failed] == [("alice", "E_X")]
