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
from typing import Any

from bench._common import header, parser, print_table
from bench._stores import compare_writes, drop_schemas, open_store

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


async def measure(kind: str, url: str, count: int, polls: int, rounds: int) -> dict[str, float]:
    with_log = await open_store(kind, url, "steps-on")
    without = await open_store(
        kind,
        url,
        "steps-off",
        sqlite_triggers=[f"task_steps_{name}" for name in SQLITE_TRIGGERS],
        pg_triggers=["task_steps_inserted", "task_steps_updated"],
    )
    return await compare_writes(with_log, without, count, polls, rounds)


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
    await drop_schemas(args.postgres or "")
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
