"""Store: task creations, claims, status updates and finishes per second through tools/store/.

``Store.open`` on a fresh SQLite file (WAL, synchronous=NORMAL, as Retouch runs it), then:
create N tasks (``create_task``, one input blob), claim them (``claim``, 32 at a time), make
U status updates per task (``update``: progress + polls, what the worker writes while it
polls), and finish them (``finish`` with one result). Updates are measured sequentially
(one writer) and from 16 concurrent coroutines (many tasks polling at once).

Baseline: the same UPDATE statement through the plain ``sqlite3`` module on the same
database (autocommit, same pragmas), in the same run — what SQLite itself costs.

Target (issue #6): ≥ 2 000 updates/s.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from typing import Any

from bench._common import (
    header,
    median,
    parser,
    png_bytes,
    print_table,
    verdict,
    workdir,
)


async def one_round(tasks: int, updates: int) -> dict[str, float]:
    from tools.media import InputImage
    from tools.models import ResultImage, TaskStatus
    from tools.store.sqlite import SQLiteStore as Store

    folder = workdir("store")
    store = await Store.open(folder / "retouch.db", folder / "results")
    rates: dict[str, float] = {}
    try:
        image = InputImage(png_bytes((8, 8)), "image/png", 8, 8)
        sha = await store.put_blob(image)
        request = {"images": ["data:…(120 chars)"], "function": "adjust", "prompt": "rotate 90"}

        start = time.perf_counter()
        ids = []
        for _ in range(tasks):
            record = await store.create_task(
                function="adjust",
                vendor="v",
                prompt="rotate 90",
                n=1,
                request=request,
                inputs=[sha],
                mask=None,
            )
            ids.append(record.id)
        rates["create_task"] = tasks / (time.perf_counter() - start)

        start = time.perf_counter()
        claimed = 0
        while claimed < tasks:
            got = await store.claim("v", "w1", capacity=claimed + 32, lease_s=300)
            claimed += len(got)
            if not got:
                raise RuntimeError("claim returned nothing")
        rates["claim (32 a call), tasks/s"] = tasks / (time.perf_counter() - start)

        start = time.perf_counter()
        for n in range(updates):
            for task_id in ids:
                ok = await store.update(task_id, "w1", polls=n + 1, progress=f"v: RUNNING {n}")
                assert ok
        rates["update, 1 writer"] = tasks * updates / (time.perf_counter() - start)

        async def writer(chunk: list[str]) -> None:
            for n in range(updates):
                for task_id in chunk:
                    await store.update(task_id, "w1", polls=n + 1, progress="v: RUNNING")

        chunks = [ids[i::16] for i in range(16)]
        start = time.perf_counter()
        await asyncio.gather(*(writer(c) for c in chunks))
        rates["update, 16 concurrent writers"] = tasks * updates / (time.perf_counter() - start)

        start = time.perf_counter()
        for task_id in ids:
            await store.get(task_id)
        rates["get (read)"] = tasks / (time.perf_counter() - start)

        start = time.perf_counter()
        for task_id in ids:
            result = ResultImage(
                index=0,
                uri=f"retouch://tasks/{task_id}/0",
                sha256=sha,
                mime_type="image/png",
                width=8,
                height=8,
                bytes=len(image.data),
            )
            ok = await store.finish(task_id, "w1", TaskStatus.succeeded, results=[result])
            assert ok
        rates["finish"] = tasks / (time.perf_counter() - start)
        rates["db_bytes"] = float((folder / "retouch.db").stat().st_size)
        wal = folder / "retouch.db-wal"
        rates["wal_bytes"] = float(wal.stat().st_size if wal.exists() else 0)

        # The baseline: the same UPDATE through plain sqlite3, autocommit, same pragmas.
        raw = sqlite3.connect(str(folder / "retouch.db"), isolation_level=None)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=NORMAL")
        raw.execute("UPDATE tasks SET status = 'running', lease_owner = 'w1'")
        start = time.perf_counter()
        for n in range(updates):
            for task_id in ids:
                rows = raw.execute(
                    "UPDATE tasks SET polls = ?, progress = ?, updated_at = ? WHERE id = ?"
                    " AND lease_owner = ? AND status = 'running' RETURNING id",
                    (n + 1, json.dumps(f"v: RUNNING {n}"), time.time(), task_id, "w1"),
                ).fetchall()
                assert rows
        rates["raw sqlite3 update"] = tasks * updates / (time.perf_counter() - start)
        raw.close()
    finally:
        await store.close()
    return rates


async def main_async(args: Any) -> None:
    tasks = 200 if args.quick else (2000 if args.full else 500)
    updates = 3 if args.quick else (10 if args.full else 5)
    rounds = 1 if args.quick else (5 if args.full else 3)
    results = [await one_round(tasks, updates) for _ in range(rounds)]
    figures = {k: median(r[k] for r in results) for k in results[0]}
    raw = figures["raw sqlite3 update"]
    rows = []
    for name in (
        "create_task",
        "claim (32 a call), tasks/s",
        "update, 1 writer",
        "update, 16 concurrent writers",
        "get (read)",
        "finish",
    ):
        rows.append(
            [
                name,
                figures[name],
                1000 / figures[name],
                f"{figures[name] / raw:.2f}×" if name.startswith("update") else "—",
            ]
        )
    rows.append(["raw sqlite3 UPDATE (baseline)", raw, 1000 / raw, "1.00×"])
    print_table(
        ["operation", "per second", "ms each", "vs raw sqlite3"],
        rows,
        f"Store throughput ({tasks} tasks, {updates} updates each; medians of {rounds} round(s))",
    )
    print(
        f"Database after the run: {figures['db_bytes'] / 1024:.0f} KB (+ WAL "
        f"{figures['wal_bytes'] / 1024:.0f} KB) for {tasks} tasks\n"
    )
    seq = figures["update, 1 writer"]
    con = figures["update, 16 concurrent writers"]
    print_table(
        ["target", "measured", "verdict"],
        [
            ["≥ 2 000 updates/s (1 writer)", f"{seq:.0f}/s", verdict(seq >= 2000)],
            ["≥ 2 000 updates/s (16 writers)", f"{con:.0f}/s", verdict(con >= 2000)],
        ],
        "Targets",
    )


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args(argv)
    header("store (bench/store.py)", args)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
