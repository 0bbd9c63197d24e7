"""Helpers shared by the benchmarks: the machine, statistics, tables, memory, settings, images.

Nothing here is part of Retouch; the benchmarks are run by hand (``make bench``).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
if str(ROOT) not in sys.path:  # `python bench/x.py` as well as `python -m bench.x`
    sys.path.insert(0, str(ROOT))


# ---- the machine ---------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    mem = ""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = f", {int(line.split()[1]) / 1024 / 1024:.0f} GB RAM"
    except OSError:
        pass
    return (
        f"Machine: {cpu_model()}, {cores} cores{mem}; Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def header(title: str, args: argparse.Namespace | None = None) -> None:
    print(machine())
    print(f"Benchmark: {title} — {time.strftime('%Y-%m-%d %H:%M:%S')}")
    if args is not None:
        shown = {k: v for k, v in vars(args).items() if v not in (None, False)}
        print(f"Arguments: {shown}")
    print(flush=True)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a shorter, rougher run")
    size.add_argument("--full", action="store_true", help="the long run the targets name")
    return p


# ---- statistics ----------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    data = list(values)
    return statistics.median(data) if data else math.nan


def percentile(values: Iterable[float], q: float) -> float:
    """Nearest-rank percentile (q in 0–100)."""
    data = sorted(values)
    if not data:
        return math.nan
    rank = max(1, math.ceil(q / 100 * len(data)))
    return data[min(rank, len(data)) - 1]


def ratio(value: float, baseline: float) -> str:
    if not baseline or math.isnan(baseline) or math.isnan(value):
        return "—"
    return f"{value / baseline:.2f}×"


def verdict(ok: bool | None) -> str:
    return "—" if ok is None else ("MET" if ok else "MISSED")


# ---- tables --------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> str:
    cells = [[_cell(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    out = []
    if title:
        out.append(title)
    out.append("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        out.append(
            "| "
            + " | ".join(
                c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(row, widths, strict=True)
            )
            + " |"
        )
    return "\n".join(out)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "") -> None:
    print(table(headers, rows, title))
    print(flush=True)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def _numeric(text: str) -> bool:
    return bool(text) and (text[0].isdigit() or text[0] in "-+.") and not text.endswith(")")


# ---- memory --------------------------------------------------------------------------------


def status_kb(pid: int | str = "self", key: str = "VmHWM") -> int:
    """A /proc/<pid>/status field in kB (VmHWM = peak RSS, VmRSS = current RSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def peak_rss_mb() -> float:
    """This process's peak RSS (getrusage's ru_maxrss is in kB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb(pid: int | str = "self") -> float:
    return status_kb(pid, "VmRSS") / 1024


def children_of(pid: int) -> list[int]:
    """Direct children of ``pid``, read from /proc (no psutil)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            out.append(int(entry.name))
    return out


# ---- settings ------------------------------------------------------------------------------


def with_bytecode(params: Any, cache: Path) -> Any:
    """``params`` with Python writing and reading its bytecode under ``cache``."""
    env = {k: v for k, v in params.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return params.model_copy(update={"env": {**env, "PYTHONPYCACHEPREFIX": str(cache)}})


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"retouch-bench-{prefix}-"))


def settings(folder: Path, toml: str = "", name: str = "config.toml") -> Any:
    """Settings from a config.toml written into ``folder`` (store and results inside it)."""
    from tools.config import load_settings

    for var in ("RETOUCH_CONFIG", "DASHSCOPE_API_KEY", "OPENAI_API_KEY", "TELEGRAM_BOT_TOKEN"):
        os.environ.pop(var, None)
    body = '[store]\npath = "retouch.db"\nresults_dir = "results"\n' + toml
    path = folder / name
    path.write_text('log_level = "WARNING"\n' + body, encoding="utf-8")
    return load_settings(path)


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# ---- images --------------------------------------------------------------------------------


def png_bytes(size: tuple[int, int], color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def photo(size: int | tuple[int, int], name: str = "astronaut.png", fmt: str = "PNG") -> bytes:
    """A sample photo from tests/data resized to ``size`` (real content, not a flat colour)."""
    from PIL import Image

    wh = (size, size) if isinstance(size, int) else size
    with Image.open(DATA / name) as src:
        image = src.convert("RGB").resize(wh, Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def dumps(value: Any) -> str:
    return json.dumps(value, default=str)


async def janitor_settled(editor: Any, timeout: float = 10.0) -> None:
    """Wait until the Editor's janitor has finished its start-up clean-up.

    That clean-up used to delete the input blob of an edit being created at that moment
    (README "Findings", 2); waiting for it keeps the benchmarks about speed either way.
    """
    import asyncio

    task = getattr(editor, "_janitor", None)
    deadline = time.monotonic() + timeout
    while task is not None and not task.done() and time.monotonic() < deadline:
        waiting = task.get_coro().cr_await
        if waiting is not None and getattr(waiting, "__qualname__", "") == "sleep":
            return
        await asyncio.sleep(0.01)
