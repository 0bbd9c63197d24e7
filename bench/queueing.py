"""Queueing at scale: N tasks submitted at once to one async vendor that runs 2 at a time.

The vendor is the fake DashScope in its own process (bench/_vendor.py: the real DashScope
protocol — temporary upload, create, poll, result download), with its concurrency cap
switched on (``concurrency_limit = 2``: a third unfinished task would get 429
Throttling.RateQuota) and each task's duration drawn uniformly from 20–200 ms (seeded).
Retouch runs the vendor with ``max_concurrent = 2``. All N ``Editor.edit_image`` calls are
made at once (``asyncio.gather``), each with its own 512×512 PNG (distinct bytes: identical
images submitted at the same moment trip a race in Store.put_blob, see README "Findings").

Checked: every task finishes and succeeds (none lost); tasks reach the vendor in
submission order (the store's ``seq``); the vendor never saw more than 2 at once.
Measured: wall time, tasks/s, peak RSS of this process (Retouch + the small driver; the
fake vendor is another process), database and result-file sizes. The default N fits the
time budget; the figures for 10 000 are then an extrapolation, printed as such
(``--full`` runs 10 000: about 10–15 minutes on 2 cores).

``submit_rps`` is lifted (default 50/s) so that the concurrency cap, not DashScope's
2 submissions/s, is what queues the tasks; ``--submit-rps 2`` shows the real quota.

Target (issue #6): all finish, in order, none lost; peak RSS ≤ 200 MB.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import re
import sqlite3
import time
from typing import Any

from bench._common import (
    data_uri,
    dir_size,
    header,
    janitor_settled,
    parser,
    peak_rss_mb,
    png_bytes,
    print_table,
    rss_mb,
    settings,
    status_kb,
    verdict,
    workdir,
)
from bench._vendor import VendorProcess, dashscope_toml
from tools.memory import tune_malloc

TASK = re.compile(r"^task (\d+) ")


def inversions(order: list[int]) -> tuple[int, int]:
    """(adjacent pairs out of order, largest displacement from sorted position)."""
    adjacent = sum(1 for a, b in itertools.pairwise(order) if b < a)
    ranks = {v: i for i, v in enumerate(sorted(order))}
    displacement = max((abs(i - ranks[v]) for i, v in enumerate(order)), default=0)
    return adjacent, displacement


async def run(args: Any) -> dict[str, Any]:
    from tools.models import EditRequest
    from tools.service import Editor

    n = args.tasks
    rng = random.Random(6)
    durations = [rng.uniform(0.02, 0.2) for _ in range(n)]
    rss_start = rss_mb()
    images = [
        data_uri(png_bytes((512, 512), (i & 255, (i >> 8) & 255, 100 + (i >> 16))))
        for i in range(n)
    ]
    folder = workdir("queueing")
    with VendorProcess(concurrency_limit=2) as fake:
        cfg = settings(
            folder,
            "[worker]\nidle_poll_s = 0.5\n"
            + dashscope_toml(
                "dashscope",
                fake.base_url,
                max_concurrent=2,
                submit_rps=args.submit_rps,
                query_rps=20,
                poll_interval_s=args.poll,
                poll_max_interval_s=args.poll_max,
            ),
        )
        rss_before = rss_mb()
        async with Editor(cfg) as editor:
            await janitor_settled(editor)
            rss_editor = rss_mb()
            samples: list[tuple[float, float, int]] = []
            start = time.perf_counter()

            async def submit(i: int) -> str:
                request = EditRequest(
                    images=[images[i]],
                    function="stylization_all",
                    prompt=f"task {i} dur={durations[i]:.3f}",
                    vendor="dashscope",
                )
                task = await editor.edit_image(request)
                images[i] = ""  # the caller lets go of its request, as a client would
                return task.id

            ids = await asyncio.gather(*(submit(i) for i in range(n)), return_exceptions=True)
            submitted = time.perf_counter() - start
            errors = [e for e in ids if isinstance(e, BaseException)]
            db = sqlite3.connect(str(cfg.store.path))
            while True:
                done, _ok = db.execute(
                    "SELECT COUNT(*), SUM(status = 'succeeded') FROM tasks"
                    " WHERE status NOT IN ('queued', 'running')"
                ).fetchone()
                samples.append((time.perf_counter() - start, rss_mb(), done))
                if done >= n - len(errors) or time.perf_counter() - start > args.timeout:
                    break
                if args.progress and len(samples) % 30 == 0:
                    print(f"  … {done}/{n} finished after {samples[-1][0]:.0f} s", flush=True)
                await asyncio.sleep(1)
            elapsed = time.perf_counter() - start
            rows = db.execute(
                "SELECT seq, prompt, status, started_at, finished_at, created_at FROM tasks"
                " ORDER BY seq"
            ).fetchall()
            db.close()
        peak = status_kb("self", "VmHWM") / 1024
        vendor_tasks = fake.tasks()
        seen = fake.get("max_concurrent_seen", "submissions", "total_queries")
    by_seq = [int(TASK.match(r[1]).group(1)) for r in rows]  # type: ignore[union-attr]
    seq_of = {task: i for i, task in enumerate(by_seq)}
    claimed = [seq_of[int(TASK.match(r[1]).group(1))] for r in sorted(rows, key=lambda r: r[3])]  # type: ignore[union-attr]
    vendor_order = [seq_of[int(TASK.match(t["prompt"]).group(1))] for t in vendor_tasks]  # type: ignore[union-attr]
    db_file = cfg.store.path
    wal = db_file.with_name(db_file.name + "-wal")
    return {
        "n": n,
        "errors": errors,
        "stored": len(rows),
        "succeeded": sum(1 for r in rows if r[2] == "succeeded"),
        "statuses": sorted({r[2] for r in rows}),
        "submitted_s": submitted,
        "elapsed": elapsed,
        "claim_inv": inversions(claimed),
        "vendor_inv": inversions(vendor_order),
        "vendor_tasks": len(vendor_tasks),
        "seen": seen,
        "peak": max(peak, peak_rss_mb()),
        "rss_start": rss_start,
        "rss_before": rss_before,
        "rss_editor": rss_editor,
        "db": db_file.stat().st_size,
        "wal": wal.stat().st_size if wal.exists() else 0,
        "results": dir_size(cfg.store.results_dir),
        "mean_duration": sum(durations) / n,
        "samples": samples,
    }


def report(r: dict[str, Any], args: Any) -> None:
    n = r["n"]
    rate = n / r["elapsed"]
    ideal = r["mean_duration"] * n / 2
    rows = [
        ["tasks submitted at once", n],
        ["edit_image calls that raised", len(r["errors"])],
        ["tasks in the store / succeeded", f"{r['stored']} / {r['succeeded']}"],
        ["statuses seen at the end", ", ".join(r["statuses"])],
        ["time to submit all (edit_image returns)", f"{r['submitted_s']:.1f} s"],
        ["time until all finished", f"{r['elapsed']:.1f} s"],
        ["throughput", f"{rate:.2f} tasks/s"],
        [
            "vendor-bound ideal (Σ durations / 2)",
            f"{ideal:.1f} s (Retouch reaches {ideal / r['elapsed']:.0%} of it)",
        ],
        ["claims out of seq order (adjacent pairs, max displacement)", str(r["claim_inv"])],
        ["vendor creates out of seq order (adjacent, max displacement)", str(r["vendor_inv"])],
        [
            "vendor: tasks created / most unfinished at once",
            f"{r['vendor_tasks']} / {r['seen']['max_concurrent_seen']}",
        ],
        [
            "vendor: task queries in all / per task",
            f"{r['seen']['total_queries']} / "
            f"{r['seen']['total_queries'] / max(1, r['vendor_tasks']):.1f}",
        ],
        [
            "RSS at start / inputs built / Editor started",
            f"{r['rss_start']:.0f} / {r['rss_before']:.0f} / {r['rss_editor']:.0f} MB",
        ],
        ["peak RSS (VmHWM) of this process", f"{r['peak']:.0f} MB"],
        [
            "database + WAL",
            f"{r['db'] / 1e6:.1f} MB + {r['wal'] / 1e6:.1f} MB "
            f"({(r['db'] + r['wal']) / n / 1024:.1f} KB per task)",
        ],
        ["result files", f"{r['results'] / 1e6:.1f} MB"],
    ]
    print_table(["queueing", "measured"], rows, f"Queueing: {n} tasks, max_concurrent = 2")
    samples = r["samples"]
    if len(samples) > 2:
        picks = [samples[int(i * (len(samples) - 1) / 6)] for i in range(7)]
        print_table(
            ["t (s)", "RSS MB", "finished"],
            [[f"{t:.0f}", f"{m:.0f}", d] for t, m, d in picks],
            "RSS over the run",
        )
    lost = n - r["succeeded"]
    # Claims must follow seq exactly; at the vendor, 2 slots submit side by side, so a
    # neighbour may arrive first (displacement 1), never more.
    in_order = r["claim_inv"][0] == 0 and r["vendor_inv"][1] <= 1
    targets = [
        ["all finish, none lost", f"{r['succeeded']}/{n} succeeded", verdict(lost == 0)],
        [
            "in submission order (claims; vendor within the 2 slots)",
            f"{r['claim_inv'][0]} claim inversions, vendor displacement ≤ {r['vendor_inv'][1]}",
            verdict(in_order),
        ],
        [
            "vendor cap of 2 respected",
            f"max {r['seen']['max_concurrent_seen']} at once",
            verdict(r["seen"]["max_concurrent_seen"] <= 2),
        ],
        ["peak RSS ≤ 200 MB", f"{r['peak']:.0f} MB", verdict(r["peak"] <= 200)],
    ]
    print_table(["target", "measured", "verdict"], targets, "Targets")
    if n < 10_000:
        per_task = r["elapsed"] / n
        growth = max(0.0, r["peak"] - r["rss_editor"]) / n
        db_per = (r["db"] + r["wal"]) / n
        print(
            "EXTRAPOLATION to 10 000 tasks (linear from this run, not measured):\n"
            f"  time ≈ {per_task * 10_000 / 60:.1f} min at {rate:.1f} tasks/s; with DashScope's "
            f"real submit quota (2/s) at least {10_000 / 2 / 60:.0f} min\n"
            f"  peak RSS ≈ {r['rss_editor'] + growth * 10_000:.0f} MB at most: all the growth "
            f"above the started Editor's RSS\n  ({growth * 1024:.1f} KB per task) is taken as "
            "per task (it includes the inputs the driver\n  holds until they are submitted)\n"
            f"  database ≈ {db_per * 10_000 / 1e6:.0f} MB\n"
            "  run `python -m bench.queueing --full` to measure it.\n"
        )


def main(argv: list[str] | None = None) -> None:
    tune_malloc()  # Retouch in this process, set up as retouch-mcp and retouch-bot set it up
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, help="tasks to submit (default 1000; --full 10000)")
    p.add_argument("--submit-rps", type=float, default=50, help="Retouch's submit_rps")
    p.add_argument("--poll", type=float, default=0.02, help="poll_interval_s")
    p.add_argument("--poll-max", type=float, default=0.1, help="poll_max_interval_s")
    p.add_argument("--timeout", type=float, default=3600, help="give up after this (s)")
    p.add_argument("--progress", action="store_true", help="print progress every 30 s")
    args = p.parse_args(argv)
    if args.tasks is None:
        args.tasks = 200 if args.quick else (10_000 if args.full else 1000)
    header("queueing at scale (bench/queueing.py)", args)
    result = asyncio.run(run(args))
    report(result, args)


if __name__ == "__main__":
    main()
