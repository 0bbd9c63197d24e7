"""A vendor's account caps with several worker processes: N wanx tasks queued by a front end
(an ``Editor`` without a worker, in this process) and run by 1 and then 4 ``retouch-worker``
processes (``python -m tools.worker``) on one SQLite store.

The vendor is the fake DashScope in its own process (bench/_vendor.py) with the account's
caps switched on: 2 unfinished tasks, 2 submissions a second, 20 task queries a second (it
answers 429 Throttling.RateQuota above any of them, and counts every request in a sliding
one-second window, refused ones too). Retouch runs DashScope's defaults (``max_concurrent =
2``, ``submit_rps = 2``, ``query_rps = 18``) with a poll every 50 ms, so that the query cap
binds as well (``--submit-rps``, ``--query-rps``: other rates, e.g. the caps themselves).
Task durations are drawn from 0.2–1.0 s (seeded; the same for every run).

Measured, from the vendor's own counters: the most submissions, queries and unfinished
tasks it saw in any second, its 429s; and wall time from the first task queued to the
last one ended, tasks/s, the share of the vendor-bound ideal (the slower of 2 submissions
a second and Σ durations / 2), how many worker processes held tasks.

Target (issue #13): with 4 worker processes the caps hold (≤ 2, ≤ 20, ≤ 2, no 429) and
every task succeeds.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    ROOT,
    data_uri,
    header,
    parser,
    png_bytes,
    print_table,
    settings,
    verdict,
    workdir,
)
from bench._vendor import VendorProcess, dashscope_toml

CAPS = {"submissions": 2, "queries": 20, "at once": 2}


def start_workers(config: str, count: int, folder: Path) -> list[subprocess.Popen[bytes]]:
    """``count`` worker processes, each started (its first line written) before returning."""
    procs = []
    for i in range(count):
        with open(folder / f"worker-{i}.log", "wb") as err:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "tools.worker", "--config", config],
                    cwd=str(ROOT),
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                )
            )
    for i, proc in enumerate(procs):
        log = folder / f"worker-{i}.log"
        while "retouch-worker " not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise RuntimeError(f"worker {i} exited:\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
    return procs


async def one_run(
    workers: int, durations: list[float], tag: int, rates: dict[str, float]
) -> dict[str, Any]:
    from tools.models import EditRequest
    from tools.service import Editor

    n = len(durations)
    folder = workdir(f"fleet-{workers}")
    fake = VendorProcess(qps_limit=20, submit_rps_limit=2, concurrency_limit=2)
    await asyncio.to_thread(fake.start)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        cfg = settings(
            folder,
            "[worker]\nidle_poll_s = 0.1\n"
            + dashscope_toml(
                "dashscope",
                fake.base_url,
                poll_interval_s=0.05,
                poll_max_interval_s=0.05,
                **rates,
            ),
        )
        procs = await asyncio.to_thread(start_workers, cfg.source, workers, folder)
        images = [data_uri(png_bytes((512, 512), (i % 256, tag, 90))) for i in range(n)]
        async with Editor(cfg, run_worker=False) as front:
            start = time.perf_counter()
            for i in range(n):
                await front.edit_image(
                    EditRequest(
                        images=[images[i]],
                        function="stylization_all",
                        prompt=f"task {i} dur={durations[i]:.3f}",
                        vendor="dashscope",
                    )
                )
            db = front.store.db  # type: ignore[attr-defined]
            owners: set[str] = set()
            while time.perf_counter() - start < 30 + 3 * n:
                rows = await db.execute_fetchall(
                    "SELECT status, lease_owner FROM tasks WHERE status IN ('queued', 'running')"
                )
                owners.update(r[1] for r in rows if r[1])
                if not rows:
                    break
                await asyncio.sleep(0.05)
            elapsed = time.perf_counter() - start
            statuses = await db.execute_fetchall("SELECT status, COUNT(*) FROM tasks GROUP BY 1")
        seen = fake.get("max_submit_rps_seen", "max_qps_seen", "max_concurrent_seen")
        answered = fake.statuses()
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(30)
        await asyncio.to_thread(fake.stop)
    refused = sum(by.get("429", 0) for by in answered.values())
    ideal = max(n / CAPS["submissions"], sum(durations) / CAPS["at once"])
    done = dict(statuses)
    return {
        "workers": workers,
        "held": len(owners),
        "n": n,
        "ok": done.get("succeeded", 0),
        "elapsed": elapsed,
        "per_s": n / elapsed,
        "ideal": ideal / elapsed,
        "submissions": seen["max_submit_rps_seen"],
        "queries": seen["max_qps_seen"],
        "at once": seen["max_concurrent_seen"],
        "429": refused,
        "queries_total": answered.get("task", {}).get("200", 0),
    }


async def main_async(args: Any) -> None:
    rng = random.Random(13)
    durations = [rng.uniform(0.2, 1.0) for _ in range(args.tasks)]
    rates = {"submit_rps": args.submit_rps, "query_rps": args.query_rps}
    runs = [await one_run(w, durations, tag, rates) for tag, w in enumerate(args.workers)]
    rows = []
    for r in runs:
        held = all(r[k] <= cap for k, cap in CAPS.items()) and r["429"] == 0
        rows.append(
            [
                r["workers"],
                r["held"],
                f"{r['ok']}/{r['n']}",
                r["elapsed"],
                r["per_s"],
                f"{r['ideal']:.0%}",
                f"{r['submissions']} / {CAPS['submissions']}",
                f"{r['queries']} / {CAPS['queries']}",
                f"{r['at once']} / {CAPS['at once']}",
                r["429"],
                verdict(held and r["ok"] == r["n"]),
            ]
        )
    print_table(
        [
            "worker processes",
            "held tasks",
            "succeeded",
            "wall s",
            "tasks/s",
            "of ideal",
            "most submissions in 1 s / cap",
            "most queries in 1 s / cap",
            "most at once / cap",
            "429s",
            "caps held",
        ],
        rows,
        f"Fleet: {args.tasks} wanx tasks of 0.2–1.0 s, polled every 50 ms, submit_rps "
        f"{args.submit_rps:g}, query_rps {args.query_rps:g}; DashScope's caps enforced by the "
        "fake",
    )


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, help="tasks (default 60; --quick 20, --full 200)")
    p.add_argument(
        "--workers",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[1, 4],
        help="worker processes per run, comma-separated (default 1,4)",
    )
    p.add_argument("--submit-rps", type=float, default=2, help="default 2 (DashScope's)")
    p.add_argument(
        "--query-rps", type=float, default=18, help="default 18 (DashScope's); 20 is the cap"
    )
    args = p.parse_args(argv)
    if args.tasks is None:
        args.tasks = 20 if args.quick else (200 if args.full else 60)
    header("vendor caps across worker processes (bench/fleet_caps.py)", args)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
