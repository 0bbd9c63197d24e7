"""The path users take: ``retouch-mcp`` launched over stdio by the SDK's ``Client``, as Claude
Desktop launches it, against instant fake vendors, side by side with the raw vendor call.

Back ends (each fake in its own process, 127.0.0.1 only, answering with a real photo):

- openai: the fake ``/v1/images/edits`` answering a 1024² PNG as ``b64_json``;
- qwen: the fake DashScope's synchronous ``edit`` (qwen-image-edit; the result is a URL);
- wanx: the fake DashScope's asynchronous ``stylization_all`` (tasks of 0 s: upload, create,
  poll once after ``poll_interval_s``, download);
- local: the local engine's ``adjust "brightness 1.1"``.

The input is a 512² photo (PNG) given as a local path. After a warm-up, R rounds (default 3)
of N calls (default 10) per back end, interleaved (raw, Retouch, raw, Retouch… by back end,
round after round), each call sequential on one session: p50/p90 per call and the p50
Retouch adds to the raw call measured in the same run. The raw calls are made by this process
with one keep-alive httpx client: openai = one multipart POST and the JSON's base64 decoded;
qwen = the DashScope adapter's ``submit`` and the result's download; wanx = the adapter's
submit, a sleep of ``poll_interval_s``, one poll and the download; local = the engine alone
(decode, adjust, encode) in this process.

Then: calls/s at concurrency 1 and 8 on one session (openai); start-up to ``initialized``
(median of 5 launches) and the CPU time the server had used by then, beside the same for
the smallest server the SDK makes (``bench/_empty_mcp.py``: the floor); the server's RSS
idle after start-up and its peak (VmHWM) over the run; and where each millisecond of an edit
goes, from the stages the server stamps when a call asks for them (``_meta``
``retouch/timings``), between the client's send and receive.

``--before PATH`` runs a second ``retouch-mcp`` from another checkout of Retouch (e.g. the
main branch) beside this one, on its own store, with its calls interleaved with the others:
the change measured under the same load.

``--profile FILE`` records the server with py-spy (``pip install py-spy``) during the
rounds, as collapsed stacks (``--format raw``), and prints where its samples fall.

``--compare LABEL=COMMAND`` (repeatable, optional) also launches another MCP image server
over stdio, in its own scratch folder, with ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` pointing
at the same fake, and calls its ``--compare-tool`` with ``--compare-args`` (JSON; ``{image}``
is replaced by the input's path, ``{image_data}`` by its data: URI) in the openai slot of each
round, interleaved with the rest; then calls/s beside Retouch's, and a side-by-side table
(p50/p90, added p50, CPU per call, start-up, RSS, what a result holds). ``--compare-tool
LABEL=TOOL``, ``--compare-args LABEL=JSON`` and ``--compare-env LABEL:KEY=VALUE`` are for one
server only; without the prefix, for all (see ``bench/_compare.py``). A server whose
first call fails is still measured for start-up and memory, its error shown instead of times.
Their code is never part of Retouch: point ``COMMAND`` at a copy of your own (the server
itself, not a launcher such as ``uvx``: its RSS and CPU are read from the process the bench
starts).

Targets (issue #15): added p50 ≤ 15 ms for a synchronous vendor; ≥ 60 calls/s at
concurrency 8; start-up ≤ 400 ms; idle ≤ 90 MiB; wanx: fake task end → result stored
≤ poll_interval_s + 50 ms.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench import _compare
from bench._common import (
    ROOT,
    children_of,
    header,
    median,
    parser,
    percentile,
    photo,
    print_table,
    settings,
    status_kb,
    verdict,
    with_bytecode,
    workdir,
)
from bench._vendor import KEY, OPENAI_KEY, VendorProcess, dashscope_toml, openai_toml

POLL = 0.5  # wanx poll_interval_s in this run (DashScope's default is 2 s)
TIMINGS = "retouch/timings"
MiB = 1024 * 1024

ARGS = {
    "openai": {"function": "edit", "vendor": "openai", "prompt": "make the sky purple"},
    "qwen": {"function": "edit", "vendor": "dashscope", "prompt": "make the sky purple"},
    "wanx": {"function": "stylization_all", "vendor": "dashscope", "prompt": "oil painting"},
    "local": {"function": "adjust", "vendor": "local", "prompt": "brightness 1.1"},
}


@dataclass
class Case:
    raw: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    before: list[float] = field(default_factory=list)  # --before: the other checkout
    cpu: float = 0.0  # seconds of retouch-mcp's CPU over the timed calls
    cpu_before: float = 0.0  # the same for --before's server
    stages: list[dict[str, float]] = field(default_factory=list)


# ---- the raw vendor calls ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_calls(
    image: bytes, openai_url: str, dashscope_url: str
) -> AsyncIterator[dict[str, Callable[[], Awaitable[None]]]]:
    import httpx

    from tools import media
    from tools.vendors.base import Finished, Job
    from tools.vendors.dashscope import DashScopeSettings, DashScopeVendor
    from tools.vendors.local import LocalSettings, LocalVendor
    from tools.worker import fetch_result

    loaded = media.inspect(image, media.MediaPolicy())
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10)) as http:
        ds = DashScopeVendor(
            "dashscope",
            DashScopeSettings(kind="dashscope", api_key=KEY, base_url=dashscope_url),
            http,
        )
        local = LocalVendor("local", LocalSettings(kind="local", esrgan="off"), None)  # type: ignore[arg-type]

        async def openai() -> None:
            response = await http.post(
                f"{openai_url}/v1/images/edits",
                data={"prompt": ARGS["openai"]["prompt"], "model": "gpt-image-1"},
                files=[("image", ("image_1.png", image, "image/png"))],
                headers={"Authorization": f"Bearer {OPENAI_KEY}"},
            )
            response.raise_for_status()
            assert base64.b64decode(response.json()["data"][0]["b64_json"])

        def job(case: str) -> Job:
            a = ARGS[case]
            return Job(task_id="raw", function=a["function"], prompt=a["prompt"], images=[loaded])

        async def qwen() -> None:
            done = await ds.submit(job("qwen"))
            assert isinstance(done, Finished)
            await fetch_result(done.images[0], http, "dashscope")

        async def wanx() -> None:
            outcome = await ds.submit(job("wanx"))
            while not isinstance(outcome, Finished):
                await asyncio.sleep(POLL)
                outcome = await ds.poll(outcome.vendor_task_id)
            await fetch_result(outcome.images[0], http, "dashscope")

        async def local_() -> None:
            done = await local.submit(job("local"))
            assert done.images[0].data

        yield {"openai": openai, "qwen": qwen, "wanx": wanx, "local": local_}


# ---- Retouch over stdio ------------------------------------------------------------------


def server_params(config: str, root: Path = ROOT) -> Any:
    """``retouch-mcp`` of the checkout at ``root`` (this one by default)."""
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "server", "--config", config],
        env={**os.environ, "PYTHONPATH": str(root)},
        cwd=str(root),
    )


@contextlib.asynccontextmanager
async def launched(
    params: Any, errlog: TextIO | None = None
) -> AsyncIterator[tuple[Any, int, float]]:
    """A client session on a freshly launched server: (client, server pid, seconds from
    launch to ``initialized``). The server's stderr goes to ``errlog`` (default: ours)."""
    from mcp import Client
    from mcp.client.stdio import stdio_client

    before = set(children_of(os.getpid()))
    start = time.perf_counter()
    async with Client(stdio_client(params, errlog) if errlog else params) as client:
        took = time.perf_counter() - start
        pids = [p for p in children_of(os.getpid()) if p not in before]
        if len(pids) != 1:
            raise RuntimeError(f"cannot tell the server's process among {pids}")
        yield client, pids[0], took


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def startup(params: Any, launches: int, errlog: TextIO | None = None) -> dict[str, float]:
    """Median wall and CPU time to ``initialized`` over ``launches``, and idle RSS."""
    walls, cpus, idle = [], [], []
    for _ in range(launches):
        async with launched(params, errlog) as (_client, pid, took):
            walls.append(took)
            cpus.append(cpu_s(pid))
            await asyncio.sleep(0.5)
            idle.append(status_kb(pid, "VmRSS") / 1024)
    return {"wall": median(walls) * 1000, "cpu": median(cpus) * 1000, "idle": median(idle)}


async def edit(client: Any, path: str, case: str, stages: list[dict[str, float]] | None) -> Any:
    sent = time.time()
    result = await client.call_tool(
        "edit_image",
        {"images": [path], "wait_seconds": 60, **ARGS[case]},
        meta={TIMINGS: True} if stages is not None else None,
    )
    received = time.time()
    task = result.structured_content or {}
    if task.get("status") != "succeeded":
        raise RuntimeError(f"{case}: the edit did not succeed: {result.content}")
    if stages is not None:
        marks = (result.meta or {}).get(TIMINGS) or {}
        stages.append({"client sent": sent, **marks, "client received": received})
    return result


async def timed(call: Callable[[], Awaitable[None]], into: list[float]) -> None:
    start = time.perf_counter()
    await call()
    into.append(time.perf_counter() - start)


async def throughput(call: Callable[[], Awaitable[None]], concurrency: int, total: int) -> float:
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await call()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - start)


# ---- the breakdown -----------------------------------------------------------------------


def breakdown(samples: list[dict[str, float]]) -> list[list[Any]]:
    """Median milliseconds between consecutive stages, in the order the stages happened."""
    if not samples or len(samples[0]) <= 2:
        return []
    order = sorted(samples[0], key=lambda k: samples[0][k])
    rows = []
    for before, after in itertools.pairwise(order):
        gaps = [(s[after] - s[before]) * 1000 for s in samples if before in s and after in s]
        rows.append([f"{before} → {after}", median(gaps), percentile(gaps, 90)])
    total = [(s["client received"] - s["client sent"]) * 1000 for s in samples]
    rows.append(["whole call", median(total), percentile(total, 90)])
    return rows


# ---- profile -----------------------------------------------------------------------------


def profiler(pid: int, path: str) -> subprocess.Popen[bytes]:
    beside = Path(sys.executable).with_name("py-spy")
    spy = str(beside) if beside.exists() else shutil.which("py-spy")
    if spy is None:
        raise SystemExit("--profile needs py-spy beside this Python or on PATH")
    return subprocess.Popen(
        [spy, "record", "-p", str(pid), "-o", path, "--format", "raw", "-r", "250"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def summarise_profile(path: str, top: int = 25) -> None:
    """Share of samples in each function (anywhere on the stack) and at the top of it."""
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    total = 0
    for line in Path(path).read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [
            f.split(" (")[0] + " " + f.split("(")[-1].split(":")[0].rsplit("/", 1)[-1]
            for f in stack.split(";")
        ]
        n = int(count)
        total += n
        for frame in set(frames):
            inclusive[frame] += n
        leaf[frames[-1]] += n
    rows = [[f, 100 * n / total, 100 * leaf[f] / total] for f, n in inclusive.most_common(top)]
    print_table(["function (file)", "% on stack", "% at top"], rows, f"py-spy: {total} samples")
    rows = [[f, 100 * n / total] for f, n in leaf.most_common(top)]
    print_table(["function (file)", "% at top"], rows, "py-spy: where the samples end")


# ---- the run -----------------------------------------------------------------------------


async def main_async(args: Any) -> None:
    rounds, calls = args.rounds, args.calls
    folder = workdir("stdio")
    source = photo(512)
    path = folder / "photo512.png"
    path.write_bytes(source)
    with (
        VendorProcess(kind="openai", instant=True) as openai,
        VendorProcess(instant=True, task_plan=["SUCCEEDED"], task_seconds=0) as dashscope,
    ):
        toml = (
            '[vendors.local]\nkind = "local"\nesrgan = "off"\n'
            + openai_toml("openai", openai.base_url)
            + dashscope_toml("dashscope", dashscope.base_url, poll_interval_s=POLL)
            + "".join(f"{line}\n" for line in args.set)
        )
        cfg = settings(folder, toml)
        # Python servers launch with a bytecode cache, as an installed package has one (this
        # machine sets PYTHONDONTWRITEBYTECODE: ~90 ms of every launch compiled Retouch).
        cache = workdir("stdio-pycache")
        params = with_bytecode(server_params(cfg.source), cache)
        cases = {name: Case() for name in args.cases}

        from mcp import StdioServerParameters

        floor = await startup(
            with_bytecode(
                StdioServerParameters(
                    command=sys.executable,
                    args=["-m", "bench._empty_mcp"],
                    env=dict(os.environ),
                    cwd=str(ROOT),
                ),
                cache,
            ),
            args.launches,
        )
        ours = await startup(params, args.launches)
        old: dict[str, Any] = {}
        if args.before:
            cfg_old = settings(workdir("stdio-before"), toml)
            old["params"] = with_bytecode(
                server_params(cfg_old.source, Path(args.before).resolve()), cache
            )
            old["startup"] = await startup(old["params"], args.launches)
        others = _compare.others(
            args.compare,
            args.compare_tool,
            args.compare_args,
            args.compare_env,
            str(path),
            openai.base_url,
        )
        for other in others:
            other.startup = await startup(other.params, args.launches, other.errlog)
        async with contextlib.AsyncExitStack() as stack:
            raw = await stack.enter_async_context(
                raw_calls(source, openai.base_url, dashscope.base_url)
            )
            client, pid, _ = await stack.enter_async_context(launched(params))
            if old:
                old["client"], old["pid"], _ = await stack.enter_async_context(
                    launched(old["params"])
                )
            for other in others:
                other.client, other.pid, _ = await stack.enter_async_context(
                    launched(other.params, other.errlog)
                )
            await asyncio.sleep(1)
            idle = status_kb(pid, "VmRSS") / 1024
            if old:
                old["idle"] = status_kb(old["pid"], "VmRSS") / 1024
            for other in others:
                other.idle = status_kb(other.pid, "VmRSS") / 1024
            ours_result = ("", 0)
            for name in cases:  # warm-up: connections, first imports, the engine
                await raw[name]()
                result = await edit(client, str(path), name, None)
                if name == "openai":
                    ours_result = _compare.describe(result)
                if old:
                    await edit(old["client"], str(path), name, None)
            for other in others:
                await other.warm_up()
            others_ok = [o for o in others if not o.failed]
            spy = profiler(pid, args.profile) if args.profile else None
            cpu_before = cpu_s(pid)
            for _ in range(rounds):
                for name, case in cases.items():
                    for _ in range(calls):
                        await timed(raw[name], case.raw)
                    spent = cpu_s(pid)
                    for _ in range(calls):
                        await timed(
                            lambda n=name, c=case: edit(client, str(path), n, c.stages), case.e2e
                        )
                    case.cpu += cpu_s(pid) - spent
                    spent = cpu_s(old["pid"]) if old else 0.0
                    for _ in range(calls if old else 0):
                        await timed(
                            lambda n=name: edit(old["client"], str(path), n, None), case.before
                        )
                    case.cpu_before += cpu_s(old["pid"]) - spent if old else 0.0
                    for other in others_ok if name == "openai" else []:
                        spent = cpu_s(other.pid)
                        for _ in range(calls):
                            await timed(other.call, other.times)
                        other.cpu += cpu_s(other.pid) - spent
            server_cpu = (cpu_s(pid) - cpu_before) / sum(len(c.e2e) for c in cases.values())
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(60)
            rates: dict[str, dict[str, float]] = {}
            cpu: dict[str, list[float]] = {}  # CPU ms per call: client, server, fake
            for name in args.rate_cases:
                rates[name] = {}
                fake = openai if name == "openai" else dashscope
                for c in (1, 8):
                    total = max(8, calls * rounds)
                    rates[name][f"raw c={c}"] = await throughput(raw[name], c, total)
                    before = (time.process_time(), cpu_s(pid), cpu_s(fake.pid))
                    rates[name][f"retouch c={c}"] = await throughput(
                        lambda n=name: edit(client, str(path), n, None), c, total
                    )
                    after = (time.process_time(), cpu_s(pid), cpu_s(fake.pid))
                    spent = [(b - a) / total * 1000 for a, b in zip(before, after, strict=True)]
                    cpu[f"{name} c={c}"] = spent
                    if old:
                        rates[name][f"before c={c}"] = await throughput(
                            lambda n=name: edit(old["client"], str(path), n, None), c, total
                        )
                    for other in others_ok if name == "openai" else []:
                        rates[name][f"{other.label} c={c}"] = await throughput(other.call, c, total)
            peak = status_kb(pid, "VmHWM") / 1024
            if old:
                old["peak"] = status_kb(old["pid"], "VmHWM") / 1024
            for other in others:
                other.peak = status_kb(other.pid, "VmHWM") / 1024
            rss_end = status_kb(pid, "VmRSS") / 1024
        wanx_lag = []
        if "wanx" in cases:
            wanx_lag = wanx_lags(dashscope.tasks(), cases["wanx"].stages)
    report(cases, rates, (ours, floor), idle, peak, rss_end, wanx_lag)
    if old:
        report_before(cases, ours, idle, peak, old)
    if others:
        raw50 = median(cases["openai"].raw) * 1000
        openai_case = cases["openai"]
        _compare.report(
            [
                _compare.row(
                    "retouch-mcp",
                    openai_case.e2e,
                    raw50,
                    openai_case.cpu,
                    ours,
                    idle,
                    peak,
                    ours_result,
                ),
                *(
                    _compare.row(
                        o.label,
                        o.times,
                        raw50,
                        o.cpu,
                        o.startup,
                        o.idle,
                        o.peak,
                        (o.failed or o.result, o.result_bytes),
                    )
                    for o in others
                ),
            ],
            others,
        )
    if cpu:
        print_table(
            ["Retouch calls", "client (this process)", "retouch-mcp", "fake vendor", "all"],
            [[k, *v, sum(v)] for k, v in cpu.items()],
            "CPU ms per call, by process (2 cores: 2000 ms of CPU a second at most)",
        )
    print(f"Server CPU per call over the rounds (all back ends): {server_cpu * 1000:.1f} ms\n")
    if args.profile:
        summarise_profile(args.profile)


def report_before(
    cases: dict[str, Case],
    ours: dict[str, float],
    idle: float,
    peak: float,
    old: dict[str, Any],
) -> None:
    rows = []
    for name, case in cases.items():
        raw = median(case.raw) * 1000
        rows.append(
            [
                name,
                raw,
                median(case.before) * 1000,
                median(case.before) * 1000 - raw,
                median(case.e2e) * 1000,
                median(case.e2e) * 1000 - raw,
                case.cpu_before / max(1, len(case.before)) * 1000,
                case.cpu / max(1, len(case.e2e)) * 1000,
            ]
        )
    print_table(
        [
            "back end",
            "raw p50",
            "before p50",
            "before added",
            "after p50",
            "after added",
            "before CPU/call",
            "after CPU/call",
        ],
        rows,
        "Before (--before) and after, per call over stdio, ms, interleaved in one run "
        "(CPU: the server process's user + system time)",
    )
    then = old["startup"]
    print_table(
        ["", "before", "after"],
        [
            [
                "start-up to initialized: wall / server CPU, ms",
                f"{then['wall']:.0f} / {then['cpu']:.0f}",
                f"{ours['wall']:.0f} / {ours['cpu']:.0f}",
            ],
            ["RSS idle, MiB", f"{old['idle']:.0f}", f"{idle:.0f}"],
            ["peak RSS over the run, MiB", f"{old['peak']:.0f}", f"{peak:.0f}"],
        ],
        "Before and after: start-up and memory",
    )


def wanx_lags(tasks: list[dict[str, Any]], stages: list[dict[str, float]]) -> list[float]:
    """Seconds from each wanx task's end at the fake to its result stored by Retouch."""
    stored = sorted(s["result stored"] for s in stages if "result stored" in s)
    ends = sorted(t["submitted"] + (t["task_seconds"] or 0) for t in tasks)
    lags = []
    for when in stored:
        before = [e for e in ends if e <= when]
        if before:
            lags.append(when - before[-1])
    return lags


def report(
    cases: dict[str, Case],
    rates: dict[str, dict[str, float]],
    startups: tuple[dict[str, float], dict[str, float]],
    idle: float,
    peak: float,
    rss_end: float,
    wanx_lag: list[float],
) -> None:
    rows = []
    for name, case in cases.items():
        raw50, e2e50 = median(case.raw) * 1000, median(case.e2e) * 1000
        rows.append(
            [
                name,
                raw50,
                percentile(case.raw, 90) * 1000,
                e2e50,
                percentile(case.e2e, 90) * 1000,
                e2e50 - raw50,
                len(case.e2e),
            ]
        )
    print_table(
        ["back end", "raw p50", "raw p90", "Retouch p50", "Retouch p90", "added p50", "calls"],
        rows,
        "Per call over stdio, ms (raw = the vendor call alone, same run, interleaved)",
    )
    for name, case in cases.items():
        rows = breakdown(case.stages)
        if rows:
            print_table(
                ["stage", "p50 ms", "p90 ms"], rows, f"Where the time goes: {name} (per call)"
            )
    for name, figures in rates.items():
        print_table(
            ["calls/s", *figures], [[name, *figures.values()]], "Throughput on one stdio session"
        )
    ours, floor = startups
    memory = [
        [
            "start-up to initialized: wall / server CPU",
            f"{ours['wall']:.0f} / {ours['cpu']:.0f} ms",
            f"{floor['wall']:.0f} / {floor['cpu']:.0f} ms",
        ],
        ["RSS idle after start-up", f"{idle:.0f} MiB", f"{floor['idle']:.0f} MiB"],
        ["RSS at the end of the run", f"{rss_end:.0f} MiB", ""],
        ["peak RSS over the run (VmHWM)", f"{peak:.0f} MiB", ""],
    ]
    if wanx_lag:
        memory.append(
            [
                "wanx: fake task end → result stored, p50 / max",
                f"{median(wanx_lag) * 1000:.0f} / {max(wanx_lag) * 1000:.0f} ms "
                f"(poll_interval_s {POLL * 1000:.0f} ms)",
                "",
            ]
        )
    print_table(
        ["", "retouch-mcp", "the SDK's smallest server"], memory, "Start-up, memory, polling"
    )
    sync = [n for n in ("openai", "qwen", "local") if n in cases]
    added = {n: median(cases[n].e2e) * 1000 - median(cases[n].raw) * 1000 for n in sync}
    targets = [
        [f"added p50 ≤ 15 ms, {n} (synchronous)", f"{a:.1f} ms", verdict(a <= 15)]
        for n, a in added.items()
    ]
    targets += [
        [
            "≥ 60 calls/s at concurrency 8 (openai)",
            f"{rates.get('openai', {}).get('retouch c=8', float('nan')):.1f}",
            verdict(rates.get("openai", {}).get("retouch c=8", 0) >= 60 if rates else None),
        ],
        [
            "start-up ≤ 400 ms",
            f"{ours['wall']:.0f} ms (the SDK alone: {floor['wall']:.0f})",
            verdict(ours["wall"] <= 400),
        ],
        ["idle ≤ 90 MiB", f"{idle:.0f} MiB", verdict(idle <= 90)],
    ]
    if wanx_lag:
        targets.append(
            [
                "wanx lag ≤ poll interval + 50 ms",
                f"{median(wanx_lag) * 1000:.0f} ms",
                verdict(median(wanx_lag) <= POLL + 0.05),
            ]
        )
    print_table(["target", "measured", "verdict"], targets, "Targets (issue #15)")


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3)")
    p.add_argument("--calls", type=int, help="calls per back end per round (default 10)")
    p.add_argument("--launches", type=int, default=5, help="launches for start-up times")
    p.add_argument(
        "--cases",
        default="openai,qwen,wanx,local",
        help="back ends, comma-separated (openai, qwen, wanx, local)",
    )
    p.add_argument("--rate-cases", default="openai", help="back ends for the calls/s run")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="TOML",
        help='extra config lines for Retouch, e.g. --set "[worker]" --set "idle_poll_s = 0.1"',
    )
    p.add_argument("--profile", metavar="FILE", help="py-spy the server during the rounds")
    p.add_argument("--before", metavar="PATH", help="another Retouch checkout to run beside")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=COMMAND",
        help="another MCP server over stdio, against the fake OpenAI (needs the openai case)",
    )
    p.add_argument(
        "--compare-tool",
        action="append",
        default=[],
        metavar="[LABEL=]TOOL",
        help="the tool to call (default edit_image); LABEL= for one server only",
    )
    p.add_argument(
        "--compare-env",
        action="append",
        default=[],
        metavar="[LABEL:]KEY=VALUE",
        help="an environment variable for the servers ({openai_url}: the fake's base URL); "
        "LABEL: for one server only",
    )
    p.add_argument(
        "--compare-args",
        action="append",
        default=[],
        metavar="[LABEL=]JSON",
        help="JSON arguments for the tool ({image}: the input's path, {image_data}: its "
        'data: URI; default {"image": "{image}", "prompt": ...}); LABEL= for one server only',
    )
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.calls = args.calls or (5 if args.quick else 10)
    args.cases = [c for c in args.cases.split(",") if c]
    args.rate_cases = [c for c in args.rate_cases.split(",") if c in args.cases]
    if args.compare and "openai" not in args.cases:
        p.error("--compare runs against the fake OpenAI: keep openai in --cases")
    header("the stdio path (bench/stdio.py)", args)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
