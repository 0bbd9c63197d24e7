"""Stores for the benchmarks that weigh a schema's triggers: a fresh SQLite file or a
PostgreSQL schema of its own (dropped by ``drop_schemas``), with some triggers dropped to
stand for the store before they came; one edit's writes, as a worker makes them; and the
interleaved comparison of the two stores."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from bench._common import median, png_bytes, workdir

#: The PostgreSQL schemas made by ``open_store`` in this process.
SCHEMAS: list[str] = []


async def open_store(
    kind: str,
    url: str,
    label: str,
    *,
    sqlite_triggers: Sequence[str] = (),
    pg_triggers: Sequence[str] = (),
) -> Any:
    """A new store of ``kind`` ("sqlite" or "postgres" at ``url``) without the named
    triggers (SQLite's by name, PostgreSQL's on ``tasks``)."""
    from tools.store import FileBlobStore
    from tools.store.sqlite import SQLiteStore

    if kind == "sqlite":
        folder = workdir(label)
        store = await SQLiteStore.open(folder / "retouch.db", FileBlobStore(folder / "results"))
        for name in sqlite_triggers:
            await store.db.execute(f"DROP TRIGGER {name}")
        return store
    import asyncpg

    from tools.store.postgres import PostgresStore

    schema = f"bench_{uuid.uuid4().hex[:10]}"  # dropped by drop_schemas
    SCHEMAS.append(schema)
    db = await asyncpg.connect(url)
    try:
        await db.execute(f"CREATE SCHEMA {schema}")
    finally:
        await db.close()
    where = f"{url}{'&' if '?' in url else '?'}search_path={schema}"
    store = await PostgresStore.open(where, FileBlobStore(workdir("pg")))
    for name in pg_triggers:
        await store.pool.execute(f"DROP TRIGGER {name} ON tasks")
    return store


async def drop_schemas(url: str) -> None:
    """Drop every schema ``open_store`` made."""
    if not SCHEMAS:
        return
    import asyncpg

    db = await asyncpg.connect(url)
    try:
        while SCHEMAS:
            await db.execute(f"DROP SCHEMA {SCHEMAS.pop()} CASCADE")
    finally:
        await db.close()


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


async def compare_writes(
    with_: Any, without: Any, count: int, polls: int, rounds: int
) -> dict[str, float]:
    """Milliseconds per edit's writes (median of rounds) on two stores, alternating which
    goes first so the machine's load falls on both alike; the stores are closed after."""
    times: dict[bool, list[float]] = {True: [], False: []}
    stores = {True: with_, False: without}
    try:
        await edits(with_, 5, polls)  # warm both up
        await edits(without, 5, polls)
        for r in range(rounds):
            for on in (True, False) if r % 2 == 0 else (False, True):
                times[on].append(await edits(stores[on], count, polls) / count)
    finally:
        for store in stores.values():
            await store.close()
    return {"on": median(times[True]) * 1000, "off": median(times[False]) * 1000}
