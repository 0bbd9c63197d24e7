"""Run every benchmark, one after the other, each in its own process (``make bench``).

    python -m bench                 # the default runs (about 25 minutes on 2 cores)
    python -m bench --quick         # shorter, rougher
    python -m bench --full          # the long runs the targets name (an hour or more)
    python -m bench store gateway   # only these

Each benchmark prints the machine, its tables and its targets; run one alone with
``python -m bench.<name>`` (``--help`` lists its options).
"""

from __future__ import annotations

import subprocess
import sys
import time

from bench._common import ROOT, machine

ORDER = [
    "store",
    "steps",
    "tallies",
    "blobs",
    "gateway",
    "context",
    "stdio",
    "startup",
    "queueing",
    "polling",
    "engine",
    "telegram",
    "fleet_caps",
    "scaleout",
]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in args if a.startswith("-")]
    chosen = [a for a in args if not a.startswith("-")] or ORDER
    unknown = [c for c in chosen if c not in ORDER]
    if unknown or "-h" in flags or "--help" in flags:
        print(__doc__)
        print("benchmarks:", ", ".join(ORDER))
        return 2 if unknown else 0
    print(machine())
    print(f"Running: {', '.join(chosen)} {' '.join(flags)}\n", flush=True)
    failed = []
    started = time.perf_counter()
    for name in chosen:
        print("=" * 100)
        print(f"bench.{name}", flush=True)
        print("=" * 100, flush=True)
        t0 = time.perf_counter()
        code = subprocess.call([sys.executable, "-m", f"bench.{name}", *flags], cwd=str(ROOT))
        print(f"[bench.{name}: exit {code}, {time.perf_counter() - t0:.0f} s]\n", flush=True)
        if code:
            failed.append(name)
    print(f"All benchmarks: {time.perf_counter() - started:.0f} s; failed: {failed or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
