"""What ``/metrics`` costs the store, before and after m016's tallies, and what the tallies'
triggers add to every edit.

1. Scrape: a store filled with N tasks (default 100 000: mostly ended, 1 % queued, 1 %
   running with a live lease, all at one vendor; 4 vendors, 5 functions, 3 currencies),
   then, alternating, R times each: the statement ``Store.tallies`` ran before m016 (a
   GROUP BY over every task) and what a scrape reads now (``Store.tallies`` and
   ``Store.ended``: the kept groups, and the running tasks through an index). Medians. The
   plan of the new read is printed (it must not scan the tasks). On PostgreSQL the read
   also folds the trigger's rows of changes: timed before and after VACUUM takes the dead
   rows of folding the fill's rows of changes, and a read after 200 edits.
2. Writes: one edit's store writes as ``bench/steps.py`` makes them (create, claim,
   submission, vendor id, polls, finish), on a store with the tallies' triggers and on one
   whose tallies' triggers were dropped, rounds alternating.

SQLite always; PostgreSQL too when ``--postgres URL`` is given (schemas of its own, dropped).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench._common import header, median, parser, print_table
from bench._stores import compare_writes, drop_schemas, edits
from bench._stores import open_store as open_bench_store

#: The statement ``Store.tallies`` ran before m016 (``?`` / ``$1``: now).
BEFORE = """
    SELECT status, vendor, function, currency, count(*), COALESCE(sum(billed_images), 0),
        sum(cost), COALESCE(sum(CASE WHEN status = 'running' AND lease_until >= {now}
                                THEN 1 ELSE 0 END), 0)
    FROM tasks GROUP BY status, vendor, function, currency
"""
#: One task of the fill, from its number ``i`` (SQLite and PostgreSQL alike).
FILL = """
    SELECT 'bench-' || i,
        CASE WHEN i % 100 = 0 THEN 'queued' WHEN i % 100 = 1 THEN 'running'
             WHEN i % 10 = 2 THEN 'failed' ELSE 'succeeded' END,
        'f' || (i % 5), 'v' || (i % 4), {request}, {now} - i, {now} - i,
        CASE WHEN i % 100 > 1 THEN {now} - i + 30 END,
        CASE WHEN i % 100 = 1 THEN {now} + 3600 ELSE 0 END,
        CASE WHEN i % 100 = 1 THEN 'w1' END,
        CASE WHEN i % 100 > 1 AND i % 10 <> 2 THEN 1 ELSE 0 END,
        CASE WHEN i % 100 > 1 AND i % 10 <> 2 AND i % 3 > 0 THEN 0.14 END,
        CASE WHEN i % 100 > 1 AND i % 10 <> 2 AND i % 3 = 1 THEN 'CNY'
             WHEN i % 100 > 1 AND i % 10 <> 2 AND i % 3 = 2 THEN 'USD' END
"""
COLUMNS = (
    "id, status, function, vendor, request, created_at, updated_at, finished_at, lease_until,"
    " lease_owner, billed_images, cost, currency"
)
SQLITE_TRIGGERS = ("inserted", "changed", "deleted", "ended")


async def open_store(kind: str, url: str, tallied: bool = True) -> Any:
    """A new store, with m016's triggers or (``tallied=False``) without them."""
    if tallied:
        return await open_bench_store(kind, url, "tallies-on")
    return await open_bench_store(
        kind,
        url,
        "tallies-off",
        sqlite_triggers=[f"task_tallies_{name}" for name in SQLITE_TRIGGERS],
        pg_triggers=["task_tallies_inserted", "task_tallies_updated"],
    )


async def fill(store: Any, kind: str, count: int) -> float:
    now = time.time()
    started = time.perf_counter()
    if kind == "sqlite":
        await store.db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
            f" INSERT INTO tasks ({COLUMNS}) {FILL.format(request=repr('{}'), now=now)} FROM n",
            (count,),
        )
        await store.db.commit()
    else:
        await store.pool.execute(
            f"INSERT INTO tasks ({COLUMNS})"
            f" {FILL.format(request=repr('{}') + '::jsonb', now=now)}"
            " FROM generate_series(1, $1) AS i",
            count,
        )
        await store.pool.execute("VACUUM ANALYZE tasks")
    return time.perf_counter() - started


async def before(store: Any, kind: str) -> int:
    now = time.time()
    if kind == "sqlite":
        db = await store._read_connection()  # where the old statement ran
        return len(await db.execute_fetchall(BEFORE.format(now="?"), (now,)))
    return len(await store.pool.fetch(BEFORE.format(now="$1"), now))


async def after(store: Any) -> int:
    return len(await store.tallies()) + len(await store.ended())


async def plan(store: Any, kind: str) -> list[str]:
    if kind == "sqlite":
        from tools.store.sqlite import TALLIES

        rows = await store.db.execute_fetchall(f"EXPLAIN QUERY PLAN {TALLIES}", (time.time(),))
        return [r[3] for r in rows]
    from tools.store.postgres import TALLIES

    rows = await store.pool.fetch(f"EXPLAIN (ANALYZE, COSTS OFF) {TALLIES}", time.time())
    return [r[0] for r in rows]


async def timed(call: Any) -> float:
    started = time.perf_counter()
    await call
    return time.perf_counter() - started


async def scrape(kind: str, url: str, count: int, rounds: int) -> list[list[Any]]:
    store = await open_store(kind, url)
    try:
        filled = await fill(store, kind, count)
        print(f"{kind}: {count} tasks stored in {filled:.1f} s (tallies' triggers on)")
        assert await before(store, kind) == len(await store.tallies())  # the same groups
        await after(store)  # warm up (and fold the fill's rows, on PostgreSQL)
        rows = []
        for vacuumed in (False, True) if kind == "postgres" else (True,):
            if vacuumed and kind == "postgres":
                await store.pool.execute("VACUUM task_tallies, task_ended")
            old: list[float] = []
            new: list[float] = []
            for r in range(rounds):
                pair = [("old", before(store, kind)), ("new", after(store))]
                for name, call in pair if r % 2 == 0 else reversed(pair):
                    (old if name == "old" else new).append(await timed(call))
            if vacuumed:
                rows.append(
                    [kind, count, "GROUP BY over tasks (before)", f"{median(old) * 1000:.1f}"]
                )
            label = (
                "tallies + ended (after)"
                if vacuumed
                else ("after, the fill's rows of changes folded, not vacuumed yet")
            )
            rows.append([kind, count, label, f"{median(new) * 1000:.2f}"])
        print(f"{kind}: plan of the new read:")
        for line in await plan(store, kind):
            print(f"    {line}")
        if kind == "postgres":
            await edits(store, 200, 2)  # 200 edits' changes, not folded yet
            rows.append(
                [
                    kind,
                    count,
                    "after, first read after 200 edits (folds)",
                    f"{await timed(after(store)) * 1000:.2f}",
                ]
            )
        return rows
    finally:
        await store.close()


async def writes(kind: str, url: str, count: int, polls: int, rounds: int) -> dict[str, float]:
    with_ = await open_store(kind, url, tallied=True)
    without = await open_store(kind, url, tallied=False)
    return await compare_writes(with_, without, count, polls, rounds)


async def main_async(args: Any) -> None:
    tasks = args.tasks or (20_000 if args.quick else 100_000)
    count = 50 if args.quick else (500 if args.full else 200)
    rounds = 3 if args.quick else (9 if args.full else 5)
    kinds = ["sqlite"] + (["postgres"] if args.postgres else [])
    try:
        scrapes = []
        for kind in kinds:
            scrapes += await scrape(kind, args.postgres, tasks, rounds * 2 + 1)
        rows = []
        for kind in kinds:
            for polls in (0, 10):
                ms = await writes(kind, args.postgres, count, polls, rounds)
                extra = ms["on"] - ms["off"]
                share = f"{extra / ms['off'] * 100:+.1f}%"
                rows.append(
                    [kind, polls, f"{ms['off']:.3f}", f"{ms['on']:.3f}", f"{extra:+.3f}", share]
                )
    finally:
        await drop_schemas(args.postgres or "")
    print_table(
        ["store", "tasks", "read", "ms (median)"],
        scrapes,
        f"The store's part of one scrape ({rounds * 2 + 1} reads each)",
    )
    print_table(
        ["store", "polls", "ms/edit, no tallies", "ms/edit, tallies", "tallies add", "share"],
        rows,
        f"One edit's store writes ({count} edits a round, medians of {rounds} rounds)",
    )


def main(argv: list[str] | None = None) -> None:
    cli = parser(__doc__ or "")
    cli.add_argument("--postgres", default="", help="a PostgreSQL URL to measure too")
    cli.add_argument("--tasks", type=int, default=0, help="tasks in the store (100 000)")
    args = cli.parse_args(argv)
    header("tallies (bench/tallies.py)", args)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
