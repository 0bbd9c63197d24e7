"""Gateway overhead: what Retouch adds to an edit, end to end through MCP.

One edit = ``edit_image`` (wait_seconds=30) → succeeded → the result resource read, through
``mcp.Client(build_server(settings))`` in memory. Two back ends:

(a) dashscope — the fake DashScope (its own process, see bench/_vendor.py) answering
    SUCCEEDED at the first query (``task_plan=["SUCCEEDED"]``), for ``stylization_all``
    (a wanx function: temporary upload, create, poll, result download). The baseline is
    the raw vendor call: the adapter's ``submit`` + one ``poll`` (after the same
    ``poll_interval_s`` sleep the worker makes) + the result download and check, with no
    store, no worker and no MCP.
(b) local — the local engine's ``adjust "brightness 1.0"``. The baseline is the raw engine
    call: ``LocalVendor.submit`` (decode, adjust, encode) on the same image.

Both use a 512×512 PNG for (a) (wanx's minimum side, so nothing is resized on the way) and a
64×64 PNG for (b), sent as data: URIs. Concurrency c means c clients each doing edits back
to back (a closed loop); the baseline is measured the same way, at the same c, in the same
run. Added latency = end-to-end minus baseline (median from medians, p99 from p99s).
Vendor limits (max_concurrent, submit_rps, query_rps) are lifted so that the gateway, not a
vendor's quota, is measured (the local vendor has only max_concurrent: it is raised, and no
rate cap is added); the local vendor is also measured with its defaults at c=128.

A third row, "Editor alone", makes the local edits through ``tools.service.Editor`` with
no MCP at all (edit_image, then the result's bytes): the difference between it and the MCP
row is what the SDK's round trips cost, the rest is the core's own durable path.

Targets (issue #6): median overhead ≤ 5 ms at c=1; ≥ 150 edits/s at c=128.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench._common import (
    data_uri,
    header,
    janitor_settled,
    median,
    parser,
    percentile,
    png_bytes,
    print_table,
    settings,
    verdict,
    workdir,
)
from bench._vendor import VendorProcess, dashscope_toml
from tools.memory import tune_malloc

POLL = 0.005  # poll_interval_s of the fake vendor (small: the vendor is instant)
POOL = 400
LIFTED = {"max_concurrent": 1000, "submit_rps": 100000, "query_rps": 100000}


async def closed_loop(
    call: Callable[[], Awaitable[None]], concurrency: int, per_worker: int
) -> tuple[list[float], float]:
    """``concurrency`` workers each making ``per_worker`` calls back to back."""
    latencies: list[float] = []

    async def worker() -> None:
        for _ in range(per_worker):
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - start


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    return {
        "median": median(latencies) * 1000,
        "p99": percentile(latencies, 99) * 1000,
        "rate": len(latencies) / elapsed,
    }


# ---- the two back ends ------------------------------------------------------------------


def local_toml(lifted: bool) -> str:
    # The local engine's only default limit is max_concurrent (it has no rate caps: a rate of
    # 100 000 would add the bookkeeping of a cap no default configuration has).
    extra = f"max_concurrent = {LIFTED['max_concurrent']}\n" if lifted else ""
    return (
        "[worker]\nidle_poll_s = 0.05\n"
        + '[vendors.local]\nkind = "local"\nesrgan = "off"\n'
        + extra
    )


class Images:
    """Distinct flat-colour PNGs, one per edit: two edits of the same bytes at once trip a
    race in Store.put_blob (see bench/README.md, "Findings"), so every edit gets its own."""

    def __init__(self, size: tuple[int, int], count: int = POOL) -> None:
        self.raw = [
            png_bytes(size, (i & 255, (i >> 8) & 255, 77 + (i >> 16))) for i in range(count)
        ]
        self.uris = [data_uri(b) for b in self.raw]
        self.next = 0

    def take(self) -> int:
        self.next = (self.next + 1) % len(self.raw)
        return self.next


def local_case() -> tuple[Callable[[], dict[str, Any]], Callable[[], Awaitable[None]]]:
    from tools import media
    from tools.vendors.base import Job
    from tools.vendors.local import LocalSettings, LocalVendor

    images = Images((64, 64))

    def arguments() -> dict[str, Any]:
        return {
            "images": [images.uris[images.take()]],
            "function": "adjust",
            "prompt": "brightness 1.0",
            "wait_seconds": 30,
        }

    vendor = LocalVendor("local", LocalSettings(kind="local", esrgan="off"), None)  # type: ignore[arg-type]
    policy = media.MediaPolicy()
    loaded = [media.inspect(b, policy) for b in images.raw]

    async def raw() -> None:
        image = loaded[images.take()]
        job = Job(task_id="x", function="adjust", prompt="brightness 1.0", images=[image])
        out = await vendor.submit(job)
        assert out.images and out.images[0].data

    return arguments, raw


@contextlib.asynccontextmanager
async def dashscope_case(fake: VendorProcess) -> Any:
    import httpx

    from tools import media
    from tools.vendors.base import Finished, Job
    from tools.vendors.dashscope import DashScopeSettings, DashScopeVendor
    from tools.worker import fetch_result

    images = Images((512, 512))

    def arguments() -> dict[str, Any]:
        return {
            "images": [images.uris[images.take()]],
            "function": "stylization_all",
            "prompt": "oil painting",
            "vendor": "dashscope",
            "wait_seconds": 30,
        }

    policy = media.MediaPolicy()
    loaded = [media.inspect(b, policy) for b in images.raw]
    async with httpx.AsyncClient(
        timeout=httpx.Timeout(60, connect=10), limits=httpx.Limits(max_connections=100)
    ) as http:
        from bench._vendor import KEY

        ds = DashScopeSettings(
            kind="dashscope", api_key=KEY, base_url=fake.base_url, poll_interval_s=POLL, **LIFTED
        )
        vendor = DashScopeVendor("dashscope", ds, http)

        async def raw() -> None:
            image = loaded[images.take()]
            job = Job(
                task_id="x", function="stylization_all", prompt="oil painting", images=[image]
            )
            pending = await vendor.submit(job)
            while True:
                await asyncio.sleep(POLL)
                outcome = await vendor.poll(pending.vendor_task_id)  # type: ignore[union-attr]
                if isinstance(outcome, Finished):
                    break
            stored = await fetch_result(outcome.images[0], http, "dashscope")
            assert stored.width == 512

        yield arguments, raw


# ---- one measurement ----------------------------------------------------------------------


async def measure_e2e(
    toml: str, arguments: Callable[[], dict[str, Any]], levels: list[tuple[int, int]]
) -> dict[int, dict[str, float]]:
    from mcp import Client

    from server.app import build_server

    cfg = settings(workdir("gateway"), toml)
    out: dict[int, dict[str, float]] = {}
    server = build_server(cfg)
    async with server.settings.lifespan(server) as editor, Client(server) as client:
        checks: list[float] = []  # the SDK client's own output-schema check (jsonschema)
        validate = client.session.validate_tool_result

        async def timed_validate(*a: Any, **k: Any) -> None:
            start = time.perf_counter()
            try:
                await validate(*a, **k)
            finally:
                checks.append(time.perf_counter() - start)

        client.session.validate_tool_result = timed_validate  # type: ignore[method-assign]
        await janitor_settled(editor)  # the Editor the client's session shares

        async def edit() -> None:
            result = await client.call_tool("edit_image", arguments())
            task = result.structured_content or {}
            if task.get("status") != "succeeded":
                raise RuntimeError(f"edit did not succeed: {result.content}")
            resource = await client.read_resource(task["results"][0]["uri"])
            assert resource.contents

        await closed_loop(edit, 4, 3)  # warm-up
        for concurrency, per_worker in levels:
            checks.clear()
            out[concurrency] = summary(*await closed_loop(edit, concurrency, per_worker))
            out[concurrency]["client_check"] = median(checks) * 1000
    return out


async def measure_editor(
    toml: str, arguments: Callable[[], dict[str, Any]], levels: list[tuple[int, int]]
) -> dict[int, dict[str, float]]:
    """The same edits through the Editor alone (no MCP): what the core itself adds."""
    from tools.models import EditRequest
    from tools.service import Editor

    cfg = settings(workdir("gateway-editor"), toml)
    out: dict[int, dict[str, float]] = {}
    async with Editor(cfg) as editor:
        await janitor_settled(editor)

        async def edit() -> None:
            args = arguments()
            wait = args.pop("wait_seconds")
            task = await editor.edit_image(EditRequest(**args), wait_seconds=wait)
            if task.status.value != "succeeded":
                raise RuntimeError(f"edit did not succeed: {task.error}")
            await editor.result(task.id, task.results[0].index)

        await closed_loop(edit, 4, 3)  # warm-up
        for concurrency, per_worker in levels:
            out[concurrency] = {**summary(*await closed_loop(edit, concurrency, per_worker))}
            out[concurrency]["client_check"] = 0.0
    return out


async def measure_raw(
    raw: Callable[[], Awaitable[None]], levels: list[tuple[int, int]]
) -> dict[int, dict[str, float]]:
    await closed_loop(raw, 4, 3)
    return {c: {**summary(*await closed_loop(raw, c, n)), "client_check": 0.0} for c, n in levels}


def combine(rounds: list[dict[int, dict[str, float]]]) -> dict[int, dict[str, float]]:
    """The median over rounds of each figure."""
    keys = rounds[0].keys()
    return {c: {k: median(r[c][k] for r in rounds) for k in rounds[0][c]} for c in keys}


async def main_async(args: Any) -> None:
    per_c1 = 40 if args.quick else (200 if args.full else 60)
    per_worker = 1 if args.quick else (4 if args.full else 1)
    levels = [(1, per_c1), (16, per_worker * 3), (128, per_worker)]
    rounds = 1 if args.quick else (5 if args.full else 3)
    results: dict[str, tuple[dict[int, dict[str, float]], dict[int, dict[str, float]]]] = {}

    # (b) local engine
    arguments, raw = local_case()
    raws, e2es = [], []
    for _ in range(rounds):
        raws.append(await measure_raw(raw, levels))
        e2es.append(await measure_e2e(local_toml(True), arguments, levels))
    results["local adjust (limits lifted)"] = (combine(raws), combine(e2es))
    editors = [await measure_editor(local_toml(True), arguments, levels) for _ in range(rounds)]
    results["local adjust, Editor alone (no MCP)"] = (combine(raws), combine(editors))
    defaults = [await measure_e2e(local_toml(False), arguments, [(128, per_worker)])]
    results["local adjust (default max_concurrent=2)"] = (
        {128: combine(raws)[128]},
        combine(defaults),
    )

    # (a) instant fake DashScope
    with VendorProcess(task_plan=["SUCCEEDED"]) as fake:
        toml = "[worker]\nidle_poll_s = 0.05\n" + dashscope_toml(
            "dashscope",
            fake.base_url,
            poll_interval_s=POLL,
            poll_max_interval_s=POLL,
            **LIFTED,
        )
        async with dashscope_case(fake) as (arguments, raw):
            raws, e2es = [], []
            for _ in range(rounds):
                raws.append(await measure_raw(raw, levels))
                e2es.append(await measure_e2e(toml, arguments, levels))
        results["dashscope wanx, instant fake"] = (combine(raws), combine(e2es))

    rows = []
    for name, (base, e2e) in results.items():
        for c in sorted(e2e):
            b, e = base[c], e2e[c]
            rows.append(
                [
                    name,
                    c,
                    b["median"],
                    e["median"],
                    e["median"] - b["median"],
                    b["p99"],
                    e["p99"],
                    e["p99"] - b["p99"],
                    e["client_check"],
                    b["rate"],
                    e["rate"],
                    f"{e['rate'] / b['rate']:.2f}×",
                ]
            )
    print_table(
        [
            "back end",
            "c",
            "raw med ms",
            "e2e med ms",
            "added med ms",
            "raw p99 ms",
            "e2e p99 ms",
            "added p99 ms",
            "client check ms",
            "raw /s",
            "e2e edits/s",
            "e2e/raw",
        ],
        rows,
        f"Gateway overhead (medians of {rounds} round(s); c = concurrent clients)",
    )
    targets = []
    for name in ("local adjust (limits lifted)", "dashscope wanx, instant fake"):
        base, e2e = results[name]
        added = e2e[1]["median"] - base[1]["median"]
        rate = e2e[128]["rate"]
        targets.append(
            [name, "median added latency at c=1 ≤ 5 ms", f"{added:.1f} ms", verdict(added <= 5)]
        )
        targets.append(
            [name, "throughput at c=128 ≥ 150 edits/s", f"{rate:.0f} edits/s", verdict(rate >= 150)]
        )
    print_table(["back end", "target", "measured", "verdict"], targets, "Targets")
    print(
        "client check ms = median time the MCP SDK client spends re-validating each result\n"
        "against the tool's output schema (jsonschema); it is inside 'e2e' and 'added' because\n"
        "client and server share one event loop in memory.\n"
    )
    await same_image_check()


async def same_image_check(count: int = 8) -> None:
    """Edits of the same bytes at the same moment (a user asking for variants of one photo)."""
    from tools.models import EditRequest
    from tools.service import Editor

    cfg = settings(workdir("gateway-same"), local_toml(True))
    uri = data_uri(png_bytes((64, 64), (10, 20, 30)))
    async with Editor(cfg) as editor:
        await janitor_settled(editor)
        outcomes = await asyncio.gather(
            *(
                editor.edit_image(
                    EditRequest(images=[uri], function="adjust", prompt="brightness 1.0"),
                    wait_seconds=30,
                )
                for _ in range(count)
            ),
            return_exceptions=True,
        )
    failed = [o for o in outcomes if isinstance(o, BaseException) or o.status.value != "succeeded"]
    reasons = sorted(
        {
            (f"{type(o).__name__}: {o}" if isinstance(o, BaseException) else str(o.error))[:110]
            for o in failed
        }
    )
    print_table(
        ["check", "edits", "failed", "reasons"],
        [[f"{count} simultaneous edits of one image", count, len(failed), "; ".join(reasons)]],
        "Same image, same moment (correctness check; expect 0 failed)",
    )


def main(argv: list[str] | None = None) -> None:
    tune_malloc()  # Retouch in this process, set up as retouch-mcp and retouch-bot set it up
    p = parser(__doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    header("gateway overhead (bench/gateway.py)", args)
    # As retouch-mcp does (logging.basicConfig at INFO): every vendor request is logged by
    # httpx. The records are formatted as in production, then discarded.
    logging.basicConfig(level=logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
