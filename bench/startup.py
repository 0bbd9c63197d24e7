"""Start-up of ``retouch-mcp`` over stdio, as Claude Desktop launches it: wall time from launch
to ``initialized``, to the first ``tools/list`` answer and to the first ``tools/call``
(``list_functions``, which needs the Editor started in the background), and the CPU the server
had used at each point.

Each launch is fresh: the SDK's ``Client`` starts the server, initializes, lists the tools and
closes. The smallest server the SDK makes (``bench/_empty_mcp.py``) is the floor; ``--before
PATH`` adds ``retouch-mcp`` from another checkout (e.g. the main branch). Launches are
interleaved (floor, before, this one, floor, …) so that all three see the same load; medians
over ``--launches`` (default 7). The config is ``bench/stdio.py``'s: local, openai and
dashscope vendors (the fakes are not started: nothing is called before the first edit).

The servers run with a bytecode cache, as an installed package does (pip compiles it), in a
folder of this run (``PYTHONPYCACHEPREFIX``) written by the warm-up launch: where
``PYTHONDONTWRITEBYTECODE`` is set, every launch would otherwise compile Retouch's sources
again (~90 ms). ``--no-bytecode`` measures that case.

Target (issue #15): ``initialized`` in ≤ 400 ms.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

from bench._common import (
    ROOT,
    children_of,
    header,
    median,
    parser,
    print_table,
    settings,
    with_bytecode,
    workdir,
)
from bench._vendor import dashscope_toml, openai_toml
from bench.stdio import cpu_s, server_params

TOML = (
    '[vendors.local]\nkind = "local"\nesrgan = "off"\n'
    + openai_toml("openai", "http://127.0.0.1:9")
    + dashscope_toml("dashscope", "http://127.0.0.1:9", poll_interval_s=0.2)
)


async def launch(params: Any, tool: str) -> tuple[float, ...]:
    """One launch: wall and CPU seconds to initialized, to the first tools/list answer, and to
    the answer of a first tools/call of ``tool``."""
    from mcp import Client

    before = set(children_of(os.getpid()))
    start = time.perf_counter()
    async with Client(params) as client:
        ready = time.perf_counter() - start
        pids = [p for p in children_of(os.getpid()) if p not in before]
        if len(pids) != 1:
            raise RuntimeError(f"cannot tell the server's process among {pids}")
        ready_cpu = cpu_s(pids[0])
        await client.list_tools()
        listed = time.perf_counter() - start
        listed_cpu = cpu_s(pids[0])
        result = await client.call_tool(tool, {})
        called = time.perf_counter() - start
        called_cpu = cpu_s(pids[0])
        if result.is_error:
            raise RuntimeError(f"{tool}: {result.content}")
    return ready, ready_cpu, listed, listed_cpu, called, called_cpu


async def main_async(args: Any) -> None:
    from mcp import StdioServerParameters

    # name: (how to launch it, the tool its first call calls: the cheapest that needs the
    # Editor for Retouch, the only one for the floor)
    servers: dict[str, tuple[Any, str]] = {
        "SDK's smallest server": (
            StdioServerParameters(
                command=sys.executable,
                args=["-m", "bench._empty_mcp"],
                env=dict(os.environ),
                cwd=str(ROOT),
            ),
            "ping",
        )
    }
    if args.before:
        cfg = settings(workdir("startup-before"), TOML)
        before = server_params(cfg.source, Path(args.before).resolve())
        servers[f"retouch-mcp ({args.before})"] = (before, "list_functions")
    cfg = settings(workdir("startup"), TOML)
    servers["retouch-mcp (this checkout)"] = (server_params(cfg.source), "list_functions")
    if not args.no_bytecode:
        cache = workdir("startup-pycache")
        servers = {k: (with_bytecode(p, cache), t) for k, (p, t) in servers.items()}
    for params, tool in servers.values():  # warm-up: the page cache, bytecode, the store
        await launch(params, tool)
    seen: dict[str, list[tuple[float, ...]]] = {name: [] for name in servers}
    for _ in range(args.launches):
        for name, (params, tool) in servers.items():
            seen[name].append(await launch(params, tool))
    rows = []
    for name, runs in seen.items():
        ms = [median(col) * 1000 for col in zip(*runs, strict=True)]
        rows.append([name, *(f"{ms[i]:.0f} / {ms[i + 1]:.0f}" for i in (0, 2, 4))])
    print_table(
        ["server", "initialized", "first tools/list", "first tools/call"],
        rows,
        title=f"Start-up over stdio: wall / server CPU, ms (medians of {args.launches} "
        f"interleaved launches{', no bytecode cache' if args.no_bytecode else ''})",
    )


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--launches", type=int, default=7, help="launches per server (default 7)")
    p.add_argument("--before", metavar="PATH", help="another Retouch checkout to run beside")
    p.add_argument(
        "--no-bytecode", action="store_true", help="no bytecode cache where none is written"
    )
    args = p.parse_args(argv)
    header("start-up over stdio (bench/startup.py)", args)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
