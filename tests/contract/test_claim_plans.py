"""Claims read only the tasks they may take: a vendor's queued tasks and lapsed leases are
found through the claim indexes on both backends, never by walking the ended tasks the store
keeps (on SQLite a claim once took 6 ms with 50 000 of them, under the write lock)."""

from __future__ import annotations

import time

from tests.contract.test_task_store import new_task
from tools.store import Store
from tools.store.sqlite import SQLiteStore


async def test_both_claims_go_through_an_index(store: Store) -> None:
    for _ in range(3):
        await new_task(store, vendor="fake")
    [claimed] = await store.claim("fake", "w1", capacity=1, lease_s=60)
    if isinstance(store, SQLiteStore):
        from tools.store.sqlite import CLAIM, CLAIM_TASK

        now = time.time()
        for sql, params in (
            (CLAIM, ("w", now, now, 60.0, "fake", "fake", now, 2, "fake", now)),
            (CLAIM_TASK, ("w", now, now, 60.0, claimed.id, now, now, 2)),
        ):
            rows = await store.db.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
            plan = [str(r[3]) for r in rows]
            assert not any(line.startswith("SCAN tasks") for line in plan), plan
        return
    from tools.store.postgres import CLAIM, CLAIM_TASK, PostgresStore

    assert isinstance(store, PostgresStore)
    async with store.pool.acquire() as db:
        # 5 000 ended tasks of the vendor, and the statistics a live store has: the planner
        # then picks by cost, as it would in production
        columns = [
            r[0]
            for r in await db.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'tasks'"
                " AND column_name NOT IN ('id', 'status', 'seq') ORDER BY ordinal_position"
            )
        ]
        copied = ", ".join(columns)
        await db.execute(
            f"INSERT INTO tasks (id, status, {copied}) SELECT md5(g::text || 'ended'),"
            f" 'succeeded', {copied} FROM tasks, generate_series(1, 5000) AS g"
            " WHERE tasks.id = $1",
            claimed.id,
        )
        await db.execute("ANALYZE tasks")
        plans = {
            "claim": [r[0] for r in await db.fetch(f"EXPLAIN {CLAIM}", "fake", "w", 2, 60.0)],
            "claim_task": [
                r[0] for r in await db.fetch(f"EXPLAIN {CLAIM_TASK}", claimed.id, "w", 2, 60.0)
            ],
        }
    for name, plan in plans.items():
        assert not any("Seq Scan on tasks" in line for line in plan), (name, plan)
        assert any("using tasks_claim" in line for line in plan), (name, plan)
        assert any("using tasks_live" in line for line in plan), (name, plan)
