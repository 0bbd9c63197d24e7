"""The task log's cost: the store writes of one edit with the log's triggers and without.

One edit's writes, as the worker makes them for an async vendor: ``create_task``,
``claim_task``, the submission's ``update`` (progress and marker), the vendor's task id,
P polls (``update`` of polls and progress; alike ones, so the log counts them in one row),
and ``finish`` with one result. Each round runs E edits on a store with the log (m012's
triggers) and E on the same kind of store whose triggers were dropped — what the store
cost before the log — alternating which goes first, so the machine's load falls on both
alike. Per-edit time is the median of the rounds.

SQLite always; PostgreSQL too when ``--postgres URL`` is given (a database it may fill).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from bench._common import header, median, parser, png_bytes, print_table, workdir

SCHEMAS: list[str] = []
SQLITE_TRIGGERS = [
    "queued",
    "claimed",
    "released",
    "submitted",
    "poll",
    "rerouted",
    "cancel",
    "ended",
]


async def open_store(kind: str, logged: bool, url: str) -> Any:
    from tools.store.sqlite import SQLiteStore

    if kind == "sqlite":
        folder = workdir(f"steps-{'on' if logged else 'off'}")
        store = await SQLiteStore.open(folder / "retouch.db", folder / "results")
        if not logged:
            for name in SQLITE_TRIGGERS:
                await store.db.execute(f"DROP TRIGGER task_steps_{name}")
        return store
    import asyncpg

    from tools.store import FileBlobStore
    from tools.store.postgres import PostgresStore

    schema = f"bench_steps_{uuid.uuid4().hex[:10]}"  # dropped by main_async
    SCHEMAS.append(schema)
    db = await asyncpg.connect(url)
    try:
        await db.execute(f"CREATE SCHEMA {schema}")
    finally:
        await db.close()
    where = f"{url}{'&' if '?' in url else '?'}search_path={schema}"
    store = await PostgresStore.open(where, FileBlobStore(workdir("pg")))
    if not logged:
        for name in ("inserted", "updated"):
            await store.pool.execute(f"DROP TRIGGER task_steps_{name} ON tasks")
    return store


async def edits(store: Any, count: int, polls: int) -> float:
    """Seconds for ``count`` edits' writes, one after the other."""
    from tools.media import InputImage
    from tools.models import ResultImage, TaskStatus

    image = InputImage(png_bytes((8, 8)), "image/png", 8, 8)
    sha = await store.put_blob(image)
    request = {"images": ["data:…(120 chars)"], "function": "adjust", "prompt": "rotate 90"}
    start = time.perf_counter()
    for _ in range(count):
        record = await store.create_task(
            function="adjust",
            vendor="v",
            prompt="rotate 90",
            n=1,
            request=request,
            inputs=[sha],
            mask=None,
        )
        held = await store.claim_task(record.id, "w1", capacity=1000, lease_s=300)
        assert held is not None
        await store.update(record.id, "w1", progress="working with v", submit_started_at=1.0)
        await store.update(record.id, "w1", vendor_task_id="vt", progress="v: PENDING")
        for n in range(polls):
            await store.update(record.id, "w1", polls=n + 1, progress="v: RUNNING")
        result = ResultImage(
            index=0,
            uri=f"retouch://tasks/{record.id}/0",
            sha256=sha,
            mime_type="image/png",
            width=8,
            height=8,
            bytes=len(image.data),
        )
        assert await store.finish(record.id, "w1", TaskStatus.succeeded, results=[result])
    return time.perf_counter() - start


async def measure(kind: str, url: str, count: int, polls: int, rounds: int) -> dict[str, float]:
    times: dict[bool, list[float]] = {True: [], False: []}
    stores = {logged: await open_store(kind, logged, url) for logged in (True, False)}
    try:
        await edits(stores[True], 5, polls)  # warm both up
        await edits(stores[False], 5, polls)
        for r in range(rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for logged in order:
                times[logged].append(await edits(stores[logged], count, polls) / count)
    finally:
        for store in stores.values():
            await store.close()
    return {"on": median(times[True]) * 1000, "off": median(times[False]) * 1000}


async def main_async(args: Any) -> None:
    count = 50 if args.quick else (500 if args.full else 200)
    rounds = 3 if args.quick else (9 if args.full else 5)
    kinds = ["sqlite"] + (["postgres"] if args.postgres else [])
    rows = []
    for kind in kinds:
        for polls in (0, 10):
            ms = await measure(kind, args.postgres or "", count, polls, rounds)
            extra = ms["on"] - ms["off"]
            rows.append(
                [
                    kind,
                    polls,
                    f"{ms['off']:.3f}",
                    f"{ms['on']:.3f}",
                    f"{extra:+.3f}",
                    f"{extra / ms['off'] * 100:+.1f}%",
                ]
            )
    if SCHEMAS:
        import asyncpg

        db = await asyncpg.connect(args.postgres)
        try:
            for schema in SCHEMAS:
                await db.execute(f"DROP SCHEMA {schema} CASCADE")
        finally:
            await db.close()
    print_table(
        ["store", "polls", "ms/edit, no log", "ms/edit, log", "log adds", "share"],
        rows,
        f"One edit's store writes ({count} edits a round, medians of {rounds} rounds)",
    )


def main(argv: list[str] | None = None) -> None:
    cli = parser(__doc__ or "")
    cli.add_argument("--postgres", default="", help="a PostgreSQL URL to measure too")
    args = cli.parse_args(argv)
    header("steps (bench/steps.py)", args)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
