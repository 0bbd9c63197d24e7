"""Scale-out on PostgreSQL and S3 (issue #13, item 7): worker processes draining a queue,
the wake-up across processes, a queue of 100 000 tasks, and what PostgreSQL costs a front end.

Everything runs on one private database of the machine's PostgreSQL server (tests/pg.py finds
it; dropped at the end), each run in a new schema, and blobs in moto's S3 API server (a
process of its own). Fake vendors run in their own processes too (bench/_vendor.py).

1. **Throughput**: N tasks queued through an ``Editor`` without a worker (a front end, in
   this process) while 1, 2 and 4 ``retouch-worker`` processes are stopped (SIGSTOP), then
   the workers are continued together and drain them. Vendors: the fake OpenAI's
   ``/v1/images/edits`` answering at once (dall-e-2, 256² in and out, the result downloaded
   from its URL), and the local engine's identity ``adjust "brightness 1.0"`` on 64² PNGs.
   Tasks/s from the database's clock (first start → last end), against 1 process; and the
   CPU each part used (workers, PostgreSQL's backends of this database, the fake, moto), to
   say where the 2 cores bind.
2. **Claim-to-start latency**: a task queued every 100 ms by a front end; the time from its
   row's ``created_at`` to its ``started_at`` (both the database's clock): on PostgreSQL with
   the worker in another process (woken by LISTEN/NOTIFY), against SQLite with the worker in
   another process (no notification crosses processes: it waits for the claim loop's poll,
   ``worker.idle_poll_s`` = 0.5 s) and PostgreSQL with the worker in the same process (the
   request starts its own task). Target: median ≤ 20 ms across processes.
3. **100 000 queued tasks**: stored through ``Store.create_task`` (the statement
   ``edit_image`` ends with; 32 at once) after one real edit made the input blob; the
   front end's pages over them; then 4 workers drain them for ``--drain-s`` seconds (or all
   of them with ``--full``): tasks/s at that depth, claims in ``seq`` order, the vendor's
   ``max_concurrent`` held (most running in the store, sampled every 100 ms), workers' peak
   RSS, the database's size. A full drain's time is extrapolated unless ``--full``.
4. **Front-end overhead**: ``retouch-mcp`` over stdio (the SDK's ``Client``), one process
   doing everything, a local ``adjust`` of a 64² PNG by path: p50 per call on SQLite + files
   (the baseline), PostgreSQL + files and PostgreSQL + S3, interleaved in rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import (
    data_uri,
    header,
    median,
    parser,
    percentile,
    png_bytes,
    print_table,
    ratio,
    verdict,
    workdir,
)
from bench._fleet import MotoS3, Postgres, Workers, cpu_s, until_ended, write_config
from bench._vendor import VendorProcess, openai_toml

OPENAI_CAP = 16  # the fake OpenAI's max_concurrent here (a kind without a cap: 32)
#: tasks/s of each (vendor, workers) throughput run, for the deep queue's comparison
SHALLOW: dict[tuple[str, int], float] = {}
LOCAL_CAP = 8  # the local engine's, lifted from 2 so that 4 processes can share the work


def vendor_tables(openai_url: str) -> str:
    return (
        openai_toml("openai", openai_url, model="dall-e-2", max_concurrent=OPENAI_CAP)
        + f'[vendors.local]\nkind = "local"\nesrgan = "off"\nmax_concurrent = {LOCAL_CAP}\n'
    )


def request(vendor: str, i: int) -> Any:
    from tools.models import EditRequest

    color = (i % 256, (i // 256) % 256, 77)
    if vendor == "openai":
        return EditRequest(
            images=[data_uri(png_bytes((256, 256), color))],
            function="edit",
            vendor="openai",
            prompt="make it blue",
            size="256x256",
        )
    return EditRequest(
        images=[data_uri(png_bytes((64, 64), color))],
        function="adjust",
        vendor="local",
        prompt="brightness 1.0",
    )


class CPU:
    """CPU seconds used by groups of processes between ``start`` and ``stop``."""

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self.before: dict[str, dict[int, float]] = {}
        self.used: dict[str, float] = {}

    def start(self) -> None:
        self.before = {g: {p: cpu_s(p) for p in pids()} for g, pids in self.groups.items()}

    def stop(self) -> None:
        for group, pids in self.groups.items():
            then = self.before.get(group, {})
            self.used[group] = sum(cpu_s(p) - then.get(p, 0.0) for p in pids())


# ---- 1. throughput -----------------------------------------------------------------------


async def drain(
    pg: Postgres, s3: MotoS3, openai: VendorProcess, vendor: str, workers: int, n: int
) -> dict[str, Any]:
    import asyncpg

    from tools.service import Editor

    folder = workdir(f"scaleout-{vendor}-{workers}")
    url = await pg.schema_url()
    cfg = write_config(folder, url=url, s3=s3, extra=vendor_tables(openai.base_url))
    backends: list[int] = []
    with Workers(cfg.source, workers, folder) as fleet:
        fleet.pause()
        async with Editor(cfg, run_worker=False) as front:
            for i in range(n):
                await front.edit_image(request(vendor, i))
            db = await asyncpg.connect(url)
            try:
                backends = await pg.backends()
                cpu = CPU(
                    {
                        "workers": lambda: fleet.pids,
                        "PostgreSQL": lambda: backends,
                        "fake vendor": lambda: [openai.pid] if vendor == "openai" else [],
                        "S3 (moto)": lambda: [s3.pid],
                    }
                )
                cpu.start()
                fleet.resume()
                wall = await until_ended(db, 60 + n)
                cpu.stop()
                row = await db.fetchrow(
                    "SELECT count(*) FILTER (WHERE status = 'succeeded') AS ok,"
                    " min(started_at) AS first, max(finished_at) AS last,"
                    " percentile_cont(0.5) WITHIN GROUP (ORDER BY finished_at - started_at)"
                    " AS in_flight FROM tasks"
                )
            finally:
                await db.close()
    elapsed = float(row["last"] - row["first"])
    return {
        "vendor": vendor,
        "workers": workers,
        "n": n,
        "ok": int(row["ok"]),
        "elapsed": elapsed,
        "wall": wall,
        "per_s": n / elapsed,
        "in_flight": float(row["in_flight"]) * 1000,
        "cpu": cpu.used,
    }


async def throughput(pg: Postgres, s3: MotoS3, openai: VendorProcess, args: Any) -> None:
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for vendor in ("openai", "local"):  # warm-up: the fake renders its answer once
        await drain(pg, s3, openai, vendor, 1, 10)
    print(f"  load average before: {os.getloadavg()[0]:.1f}", flush=True)
    for _ in range(args.rounds):
        for vendor in ("openai", "local"):
            for workers in args.workers:
                r = await drain(pg, s3, openai, vendor, workers, args.tasks)
                print(
                    f"  {vendor}, {workers} workers: {r['ok']}/{r['n']} in {r['elapsed']:.2f} s"
                    f" ({r['per_s']:.1f}/s)",
                    flush=True,
                )
                runs.setdefault((vendor, workers), []).append(r)
    print(f"  load average after: {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for vendor in ("openai", "local"):
        base = median(r["per_s"] for r in runs[(vendor, args.workers[0])])
        for workers in args.workers:
            got = runs[(vendor, workers)]
            per_s = median(r["per_s"] for r in got)
            SHALLOW[(vendor, workers)] = per_s
            secs = median(r["elapsed"] for r in got)
            groups = got[0]["cpu"].keys()
            cpu = {g: median(r["cpu"][g] for r in got) for g in groups}
            total = sum(cpu.values())
            rows.append(
                [
                    "fake OpenAI, instant" if vendor == "openai" else "local adjust 64²",
                    workers,
                    f"{sum(r['ok'] for r in got)}/{sum(r['n'] for r in got)}",
                    per_s,
                    ratio(per_s, base),
                    median(r["in_flight"] for r in got),
                    f"{total / secs:.2f}",
                    2 * args.tasks / total,
                    *(f"{cpu[g] / args.tasks * 1000:.1f}" for g in groups),
                ]
            )
    print_table(
        [
            "vendor",
            "worker processes",
            "succeeded",
            "tasks/s",
            "vs 1",
            "task start → end p50 ms",
            "cores busy",
            "2 idle cores' bound (est.)",
            "worker CPU ms/task",
            "PostgreSQL ms/task",
            "fake vendor ms/task",
            "S3 ms/task",
        ],
        rows,
        f"Throughput: {args.tasks} queued tasks drained by worker processes (median of "
        f"{args.rounds}); PostgreSQL + S3 (moto); cores busy = CPU seconds of the parts "
        "listed / wall seconds; 2 idle cores' bound = tasks/s if those CPU seconds were all "
        "that ran on 2 cores (an estimate)",
    )


# ---- 2. claim-to-start latency ------------------------------------------------------------


async def latency_run(pg: Postgres | None, s3: MotoS3 | None, mode: str, args: Any) -> list[float]:
    from tools.service import Editor

    folder = workdir(f"scaleout-latency-{mode}")
    url = await pg.schema_url() if pg is not None else ""
    cfg = write_config(folder, url=url, s3=s3, extra=vendor_tables("http://127.0.0.1:9"))
    across = mode != "same"
    ids = []
    with Workers(cfg.source, 1 if across else 0, folder):
        async with Editor(cfg, run_worker=not across) as front:
            for i in range(args.samples + 3):
                task = await front.edit_image(request("local", i))
                ids.append(task.id)
                await asyncio.sleep(0.1)
            deadline = time.monotonic() + 60
            records = [await front.store.get(t) for t in ids]
            while any(r.started_at is None for r in records) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                records = [await front.store.get(t) for t in ids]
    return [(r.started_at - r.created_at) * 1000 for r in records[3:] if r.started_at]


async def latency(pg: Postgres, s3: MotoS3, args: Any) -> None:
    cases = [
        ("PostgreSQL, worker in another process (LISTEN/NOTIFY)", pg, "across"),
        ("SQLite, worker in another process (its poll, 0.5 s)", None, "sqlite"),
        ("PostgreSQL, worker in the same process (start_now)", pg, "same"),
    ]
    rows = []
    base = 0.0
    for label, where, mode in cases:
        got = await latency_run(where, s3 if where else None, mode, args)
        p50 = median(got)
        if mode == "across":
            base = p50
        rows.append(
            [
                label,
                f"{len(got)}/{args.samples}",
                p50,
                percentile(got, 95),
                max(got),
                ratio(p50, base),
                verdict(p50 <= 20) if mode == "across" else "—",
            ]
        )
    print_table(
        [
            "queued by a front end, started by",
            "started",
            "p50 ms",
            "p95 ms",
            "max ms",
            "vs PG",
            "≤ 20 ms",
        ],
        rows,
        "Claim-to-start latency: created_at → started_at of a task queued every 100 ms "
        "(the database's clock)",
    )


# ---- 3. a deep queue ----------------------------------------------------------------------


async def timed_ms(call: Callable[[], Any], times: int = 5) -> float:
    took = []
    for _ in range(times):
        start = time.perf_counter()
        await call()
        took.append((time.perf_counter() - start) * 1000)
    return median(took)


async def deep_queue(pg: Postgres, s3: MotoS3, openai: VendorProcess, args: Any) -> None:
    import asyncpg

    from tools.service import Editor
    from tools.store.base import TaskFilter

    folder = workdir("scaleout-deep")
    url = await pg.schema_url()
    cfg = write_config(
        folder, url=url, s3=s3, extra=vendor_tables(openai.base_url), pool=32
    )  # the workers get 32 connections too: they never open more than they use
    n = args.queue
    async with Editor(cfg, run_worker=False) as front:
        first = await front.edit_image(request("openai", 0))
        made = await front.store.get(first.id)
        inputs = (await front.store.task_images(first.id))["input"]
        store = front.store
        started = time.perf_counter()
        left = iter(range(n - 1))

        async def storer() -> None:
            for _ in left:
                await store.create_task(
                    function=made.function,
                    vendor=made.vendor,
                    prompt=made.prompt,
                    n=made.n,
                    request=made.request,
                    inputs=inputs,
                    mask=None,
                )

        await asyncio.gather(*(storer() for _ in range(32)))
        stored_s = time.perf_counter() - started
        print(f"  stored {n} tasks in {stored_s:.1f} s", flush=True)
        await asyncio.sleep(1)
        mid = made.seq + n // 2
        pages = {
            "newest 50 (the console's first page)": lambda: store.page(TaskFilter(), limit=50),
            "50 from the middle (before=seq)": lambda: store.page(TaskFilter(), before=mid),
            "50 queued from the middle": lambda: store.page(
                TaskFilter(status="queued"), before=mid
            ),
            "unfinished, newest 20 (list_tasks)": lambda: store.list(unfinished=True, limit=20),
            "one task by id": lambda: store.get(first.id),
        }
        paged = [[what, await timed_ms(call)] for what, call in pages.items()]
        size_mb = await pg.size_mb()
    db = await asyncpg.connect(url)
    most_running = 0
    try:
        with Workers(cfg.source, 4, folder) as fleet:
            t0 = time.perf_counter()
            budget = 3600 * 4 if args.full else args.drain_s
            while time.perf_counter() - t0 < budget:
                running, queued = await db.fetchrow(
                    "SELECT count(*) FILTER (WHERE status = 'running'),"
                    " count(*) FILTER (WHERE status = 'queued') FROM tasks"
                )
                most_running = max(most_running, running)
                if not running and not queued:
                    break
                await asyncio.sleep(0.1)
            rss = fleet.peak_rss_mb()
        row = await db.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'succeeded') AS ok,"
            " count(*) FILTER (WHERE status NOT IN ('queued', 'running', 'succeeded')) AS bad,"
            " min(started_at) AS first, max(finished_at) AS last,"
            " max(seq) FILTER (WHERE status <> 'queued') AS last_taken,"
            " min(seq) FILTER (WHERE status = 'queued') AS first_waiting FROM tasks"
        )
    finally:
        await db.close()
    ok = int(row["ok"])
    per_s = ok / float(row["last"] - row["first"]) if ok else float("nan")
    in_order = row["first_waiting"] is None or row["last_taken"] < row["first_waiting"]
    drained = ok == n
    print_table(
        ["", "value"],
        [
            ["tasks stored", f"{n} in {stored_s:.1f} s ({n / stored_s:.0f}/s, 32 at once)"],
            ["database size", f"{size_mb:.0f} MB ({size_mb * 1024 * 1024 / n:.0f} B a task)"],
            *[[f"page: {what}", f"{ms:.1f} ms"] for what, ms in paged],
            [
                "drained by 4 workers" if drained else f"drained in {args.drain_s:g} s (4 workers)",
                f"{ok} succeeded, {row['bad']} failed or canceled",
            ],
            [
                "tasks/s at this depth",
                f"{per_s:.1f} ({ratio(per_s, SHALLOW.get(('openai', 4), 0.0))} the rate of "
                f"4 workers on a queue of {args.tasks})",
            ],
            [
                "all of them" + ("" if drained else " (extrapolated)"),
                f"{n / per_s / 60:.0f} min",
            ],
            ["claimed in seq order", verdict(in_order)],
            ["most running at once / max_concurrent", f"{most_running} / {OPENAI_CAP}"],
            ["workers' peak RSS", " / ".join(f"{m:.0f}" for m in rss) + " MB"],
        ],
        f"A deep queue: {n} tasks for the instant fake OpenAI on PostgreSQL + S3",
    )


# ---- 4. front-end overhead ----------------------------------------------------------------


async def frontend(pg: Postgres, s3: MotoS3, args: Any) -> None:
    from mcp import Client

    from bench.stdio import TIMINGS, breakdown, server_params

    image = workdir("scaleout-image") / "small.png"
    image.write_bytes(png_bytes((64, 64), (10, 120, 200)))
    configs = {}
    for label, use_pg, use_s3, options in (
        ("SQLite + files", False, False, ""),
        ("PostgreSQL + files", True, False, ""),
        ("PostgreSQL + S3", True, True, ""),
        # The same, but commits do not wait for the WAL's flush to disk (fdatasync): what of
        # PostgreSQL's cost is the disk's. Not a recommendation: a crash may lose the last
        # commits (a submission marker among them).
        ("PostgreSQL + files, synchronous_commit off", True, False, "&synchronous_commit=off"),
    ):
        url = await pg.schema_url() + options if use_pg else ""
        folder = workdir("scaleout-mcp")
        cfg = write_config(
            folder, url=url, s3=s3 if use_s3 else None, extra=vendor_tables("http://127.0.0.1:9")
        )
        configs[label] = cfg.source
    took: dict[str, list[float]] = {label: [] for label in configs}
    stages: dict[str, list[dict[str, float]]] = {label: [] for label in configs}
    args_ = {
        "images": [str(image)],
        "function": "adjust",
        "vendor": "local",
        "prompt": "brightness 1.0",
        "wait_seconds": 30,
    }
    for _ in range(args.rounds + 1):
        for label, config in configs.items():
            async with Client(server_params(config)) as client:
                for _ in range(3):  # warm-up: the first loads the engine
                    await client.call_tool("edit_image", args_)
                for _ in range(args.calls):
                    sent = time.time()
                    result = await client.call_tool("edit_image", args_, meta={TIMINGS: True})
                    received = time.time()
                    took[label].append((received - sent) * 1000)
                    status = (result.structured_content or {}).get("status")
                    if status != "succeeded":
                        raise RuntimeError(f"{label}: {result.content}")
                    marks = (result.meta or {}).get(TIMINGS) or {}
                    stages[label].append(
                        {"client sent": sent, **marks, "client received": received}
                    )
    base = median(took["SQLite + files"])
    print_table(
        ["store", "calls", "p50 ms", "p95 ms", "vs SQLite"],
        [
            [label, len(t), median(t), percentile(t, 95), ratio(median(t), base)]
            for label, t in took.items()
        ],
        "Front-end overhead: an edit_image round trip through retouch-mcp over stdio (one "
        "process doing everything), local adjust of a 64² PNG given by path",
    )
    parts = {label: {r[0]: r[1] for r in breakdown(s)} for label, s in stages.items()}
    names = list(parts["SQLite + files"])
    print_table(
        ["stage (p50 ms)", *configs],
        [[name, *(parts[label].get(name, float("nan")) for label in configs)] for name in names],
        "Where the time goes (the server's own stamps, `retouch/timings`)",
    )


# ---- main ---------------------------------------------------------------------------------


async def main_async(args: Any) -> None:
    parts = set(args.only or ["throughput", "latency", "deep", "frontend"])
    with Postgres() as pg, MotoS3() as s3, VendorProcess(kind="openai", instant=True) as openai:
        print(f"PostgreSQL: database {pg.name} on {pg.where()}; S3: moto at {s3.endpoint}\n")
        if "throughput" in parts:
            await throughput(pg, s3, openai, args)
        if "latency" in parts:
            await latency(pg, s3, args)
        if "frontend" in parts:
            await frontend(pg, s3, args)
        if "deep" in parts:
            await deep_queue(pg, s3, openai, args)


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, help="tasks per throughput run (default 300)")
    p.add_argument("--rounds", type=int, help="rounds of each measurement (default 2)")
    p.add_argument(
        "--workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 2, 4],
        help="worker processes per throughput run (default 1,2,4; the first is the baseline)",
    )
    p.add_argument("--samples", type=int, help="latency samples per case (default 100)")
    p.add_argument("--calls", type=int, help="front-end calls per round and store (default 15)")
    p.add_argument("--queue", type=int, help="tasks in the deep queue (default 100 000)")
    p.add_argument("--drain-s", type=float, help="seconds to drain it (default 60; --full: all)")
    p.add_argument(
        "--only",
        action="append",
        choices=["throughput", "latency", "deep", "frontend"],
        help="run only this part (repeatable)",
    )
    args = p.parse_args(argv)
    quick = args.quick
    args.tasks = args.tasks or (100 if quick else 300)
    args.rounds = args.rounds or (1 if quick else 2)
    args.samples = args.samples or (40 if quick else 100)
    args.calls = args.calls or (8 if quick else 15)
    args.queue = args.queue or (20_000 if quick else 100_000)
    args.drain_s = args.drain_s or (20 if quick else 60)
    header("scale-out on PostgreSQL and S3 (bench/scaleout.py)", args)
    os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parent.parent))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
