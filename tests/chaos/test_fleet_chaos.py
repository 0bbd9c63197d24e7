"""Chaos over the whole fleet: three ``retouch-worker`` processes and two front ends
(``retouch-mcp --no-worker --transport http``) on one PostgreSQL server of the test's own
(``private_pg``: the machine's server is never touched) and one S3 server (moto in server
mode). Edits go in through the front ends with the mcp SDK's client over HTTP; the workers
are killed with SIGKILL at random moments (each started again at once), and half way through
PostgreSQL is stopped and started again. At the end:

- every task has ended, none was lost, and the fake DashScope accepted no task twice;
- the vendor's account caps held by its own counters (2 submissions a second, 20 queries a
  second, 2 tasks at once), and it never had to answer 429;
- every object in the bucket is a blob a task or an upload refers to, or one stored within
  its grace period (``pending``) by a process that died before linking it: no orphans;
- while the database was down both front ends answered "store unavailable, try again" (tool
  calls and the upload route), never a traceback, and the workers that lived through the
  restart claimed tasks again by themselves.

The suite runs a short version; ``make chaos`` (RETOUCH_CHAOS_KILLS=60) the long one.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.chaos.helpers import report_figures
from tests.chaos.test_crash_restart import INTERRUPTED, ChaosDashScope, new_requests
from tests.conftest import MakeSettings, png
from tests.pg import PrivateServer
from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server
from tests.servers import free_port, start_http_server, wait_healthy
from tests.test_fleet import Workers, most_in_a_second
from tools.models import EditRequest
from tools.store import blob_key, open_store
from tools.store.postgres import PostgresStore

KILLS = int(os.environ.get("RETOUCH_CHAOS_KILLS", "8"))
SEED = int(os.environ.get("RETOUCH_CHAOS_SEED", "7"))
WORKERS = 3
OUTAGE_S = 3.0
TOKEN = "fleet-chaos-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TRY_AGAIN = "store unavailable, try again"
BACK = "the store is back"


def arguments(req: EditRequest) -> dict[str, Any]:
    """``edit_image``'s arguments for a request, answered at once (the task queued)."""
    args: dict[str, Any] = {
        "images": req.images,
        "function": req.function,
        "prompt": req.prompt,
        "wait_seconds": 0,
    }
    if req.vendor:
        args["vendor"] = req.vendor
    return args


async def unfinished(store: PostgresStore) -> int:
    count = await store.pool.fetchval(
        "SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')"
    )
    return int(count)


async def bucket_audit(store: PostgresStore) -> tuple[list[str], int, int]:
    """The bucket's objects against the blobs' rows: those nothing accounts for (orphans),
    how many are kept only by a pending put within its grace, and how many in all."""
    rows = await store.pool.fetch(
        "SELECT sha256, mime_type, pending > 0 AND grace_until > extract(epoch FROM now())"
        " AS in_grace, EXISTS (SELECT 1 FROM task_blobs tb WHERE tb.sha256 = b.sha256)"
        " OR EXISTS (SELECT 1 FROM uploads u WHERE u.sha256 = b.sha256) AS used FROM blobs b"
    )
    rows_by_key = {blob_key(r["sha256"], r["mime_type"]): r for r in rows}
    keys = [key async for key in store.blobs.iter_keys()]
    orphans = [
        k
        for k in keys
        if k not in rows_by_key or not (rows_by_key[k]["used"] or rows_by_key[k]["in_grace"])
    ]
    graced = sum(1 for k in keys if k in rows_by_key and not rows_by_key[k]["used"])
    return orphans, graced - len([k for k in orphans if k in rows_by_key]), len(keys)


async def probe_outage(clients: list[Client], ports: list[int], task_id: str) -> list[str]:
    """Every front end's answers while the database is down; the problems found."""
    problems: list[str] = []
    edit = {"images": [png_uri()], "function": "adjust", "prompt": "grayscale", "wait_seconds": 0}
    calls = [("list_tasks", {}), ("check_task", {"task_id": task_id}), ("edit_image", edit)]
    for n, client in enumerate(clients):
        for name, args in calls:
            try:
                answer = await client.call_tool(name, args)
            except MCPError as exc:  # a JSON-RPC error, not the tool's own answer
                problems.append(f"front end {n}, {name}: {exc.code} {exc.message} {exc.data}")
                continue
            text = " ".join(getattr(c, "text", "") for c in answer.content)
            if not answer.is_error or TRY_AGAIN not in text or "Traceback" in text:
                problems.append(f"front end {n}, {name}: {text[:300]}")
    async with httpx.AsyncClient(headers=AUTH, timeout=30) as http:
        for port in ports:
            upload = await http.post(
                f"http://127.0.0.1:{port}/uploads",
                content=png(),
                headers={"Content-Type": "image/png"},
            )
            if (
                upload.status_code != 503
                or upload.json().get("error") != "store_unavailable"
                or "Traceback" in upload.text
            ):
                problems.append(f"upload on {port}: {upload.status_code} {upload.text[:300]}")
    return problems


@contextlib.contextmanager
def front_ends(config: str, ports: list[int], logs: Path) -> Iterator[list[str]]:
    """``retouch-mcp --no-worker --transport http`` once per port, started together, each
    logging to ``logs/front-<port>.log``; yields their MCP URLs once every one answers."""
    with contextlib.ExitStack() as stack:
        outputs = [stack.enter_context(open(logs / f"front-{p}.log", "wb")) for p in ports]
        procs = [
            start_http_server(config, "--no-worker", "--port", str(port), output=out)
            for port, out in zip(ports, outputs, strict=True)
        ]
        try:
            for proc, port in zip(procs, ports, strict=True):
                wait_healthy(proc, f"http://127.0.0.1:{port}", seconds=60)
            yield [f"http://127.0.0.1:{port}/mcp" for port in ports]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(20)


def back(workers: Workers, i: int) -> bool:
    """Whether worker ``i`` has said it claims tasks again after an outage."""
    return BACK in workers.log(i).read_text(errors="replace")


def png_uri() -> str:
    from tests.conftest import data_uri

    return data_uri(png((48, 32), (30, 90, 200)))


async def test_the_fleet_survives_kills_and_a_database_restart(
    private_pg: PrivateServer,
    s3_server: S3Server,
    make_settings: MakeSettings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    rng = random.Random(SEED)
    # The environment reaches every process the test starts: one database, one bucket.
    for name, value in {
        "RETOUCH_STORE__URL": await private_pg.new_database(),
        "RETOUCH_STORE__BLOBS": f"s3://{s3_server.new_bucket()}/fleet",
        "RETOUCH_STORE__S3_ENDPOINT_URL": s3_server.endpoint_url,
        "RETOUCH_STORE__S3_REGION": REGION,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
        "RETOUCH_WORKER__LEASE_S": "5",  # the shortest lease: a dead worker's tasks move on
    }.items():
        monkeypatch.setenv(name, value)
    with ChaosDashScope(SEED) as fake:
        # The account's caps: the fake refuses what goes over them (429), and counts.
        fake.qps_limit, fake.submit_rps_limit = 20, 2
        settings = make_settings(
            f'[mcp]\nauth_token = "{TOKEN}"\n'
            f'[vendors.ds]\nkind = "dashscope"\napi_key = "{fake.api_key}"\n'
            # A poll every 50 ms: two tasks at once would ask 40 times a second, so the
            # query cap (18 a second, account-wide) binds.
            f'base_url = "{fake.base_url}"\npoll_interval_s = 0.05\npoll_max_interval_s = 0.05\n'
            '[vendors.local]\nkind = "local"\nesrgan = "off"\n'
        )
        store = await open_store(settings.store)
        assert isinstance(store, PostgresStore)
        workers = Workers(tmp_path)
        ports = [free_port(), free_port()]
        ids: list[str] = []
        asked: list[EditRequest] = []
        kills, outage_s, reconnected_s = 0, 0.0, 0.0
        outage_problems: list[str] = []
        survivors: list[int] = []
        try:
            slots = [workers.spawn(settings) for _ in range(WORKERS)]
            with front_ends(settings.source, ports, tmp_path) as urls:
                async with contextlib.AsyncExitStack() as stack:
                    clients: list[Client] = []
                    for url in urls:
                        http = await stack.enter_async_context(
                            httpx2.AsyncClient(headers=AUTH, timeout=60)
                        )
                        clients.append(
                            await stack.enter_async_context(
                                Client(streamable_http_client(url, http_client=http))
                            )
                        )

                    async def add(count: int) -> None:
                        for req in new_requests(rng, len(asked), count):
                            front = clients[len(asked) % len(clients)]
                            answer = await front.call_tool("edit_image", arguments(req))
                            assert not answer.is_error, answer.content
                            ids.append(answer.structured_content["id"])
                            asked.append(req)

                    await add(20)
                    started = time.monotonic()
                    while kills < KILLS:
                        await asyncio.sleep(rng.uniform(0.3, 2.0))
                        slot = rng.randrange(WORKERS)
                        workers.kill(slots[slot])
                        kills += 1
                        slots[slot] = workers.spawn(settings)
                        if kills == KILLS // 2:  # the database restarts in the middle
                            if await unfinished(store) < 12:
                                await add(8)  # work in hand and queued across the restart
                            survivors = list(slots)
                            for i in survivors:  # each has connected once
                                await asyncio.to_thread(workers.ready, i)
                            await asyncio.to_thread(private_pg.stop)
                            down = time.monotonic()
                            outage_problems = await probe_outage(clients, ports, ids[-1])
                            await asyncio.sleep(max(0.0, down + OUTAGE_S - time.monotonic()))
                            await asyncio.to_thread(private_pg.start)
                            up = time.monotonic()
                            outage_s = up - down
                            # Every worker that lived through it claims again by itself.
                            for _ in range(600):  # a guard (30 s), not a measurement
                                if all(back(workers, i) for i in survivors):
                                    break
                                await asyncio.sleep(0.05)
                            reconnected_s = time.monotonic() - up
                        if await unfinished(store) < 12:
                            await add(4)
                    for _ in range(3600):  # a guard against a hang (3 minutes)
                        if await unfinished(store) == 0:
                            break
                        await asyncio.sleep(0.05)
                    elapsed = time.monotonic() - started
        finally:
            workers.kill_all()
        try:
            tasks = [await store.get(task_id) for task_id in ids]
            readable = []
            for task in tasks:
                for result in task.results:
                    data, _ = await store.read_result(task.id, result["index"], task.results)
                    readable.append(hashlib.sha256(data).hexdigest() == result["sha256"])
            orphans, graced, objects = await bucket_audit(store)
        finally:
            await store.close()
        accepted = fake.accepted()
        vendor_prompt = {task_id: task.prompt for task_id, task in fake.tasks.items()}
        submissions = [r.time for r in fake.requests_to("create")]
        queries = [r.time for r in fake.requests_to("task")]
        refused = [r for r in fake.requests if r.status == 429]
        caps = (fake.max_submit_rps_seen, fake.max_qps_seen, fake.max_concurrent_seen)

    fronts = {port: (tmp_path / f"front-{port}.log").read_text(errors="replace") for port in ports}
    worker_logs = workers.logs()
    stuck = [t.id for t in tasks if t.status in ("queued", "running")]
    assert stuck == [], f"{len(stuck)} tasks never ended\n{worker_logs[-3000:]}"
    assert len(tasks) == len(set(ids)) == len(asked)  # none lost
    duplicated = {prompt: n for prompt, n in accepted.items() if n > 1}
    assert duplicated == {}
    for req, task in zip(asked, tasks, strict=True):
        if task.vendor_task_id:  # the id Retouch kept is the one the vendor made for it
            assert vendor_prompt[task.vendor_task_id] == req.prompt
    assert readable and all(readable)
    assert orphans == [], orphans
    assert outage_problems == []
    for port, log in fronts.items():
        assert "Traceback" not in log, (port, log[-3000:])
    assert all(back(workers, i) for i in survivors), worker_logs
    assert most_in_a_second(submissions) <= 2 and caps[0] <= 2
    assert most_in_a_second(queries) <= 20 and caps[1] <= 20
    assert caps[2] <= 2
    assert refused == []

    outcome: collections.Counter[str] = collections.Counter()
    for req, task in zip(asked, tasks, strict=True):
        if task.status == "succeeded":
            outcome["succeeded"] += 1
            assert req.vendor != "ds" or accepted[req.prompt] == 1
            continue
        assert task.status == "failed" and task.error is not None, task
        assert req.vendor == "ds" and INTERRUPTED in task.error["message"], (req, task.error)
        billed = accepted[req.prompt] == 1
        outcome[
            "failed: died mid-submission, vendor had accepted it"
            if billed
            else "failed: died mid-submission, never reached the vendor"
        ] += 1
    line = (
        f"fleet chaos: {WORKERS} workers + 2 front ends on PostgreSQL and S3; {kills} SIGKILLs "
        f"({len(workers.procs)} worker processes, lease 5 s) in {elapsed:.0f} s; PostgreSQL "
        f"down {outage_s:.1f} s, workers claiming again {reconnected_s:.1f} s after; "
        f"{len(tasks)} tasks ("
        + ", ".join(f"{k}: {v}" for k, v in sorted(outcome.items()))
        + f"); lost: 0, duplicated: {len(duplicated)}; vendor peaks: {caps[0]} submissions/s "
        f"(cap 2), {caps[1]} queries/s (cap 20), {caps[2]} at once (cap 2), 429s: "
        f"{len(refused)}; bucket: {objects} objects, orphans: {len(orphans)}, kept by a "
        f"pending put in its grace: {graced}"
    )
    report_figures(request.config, line)
