"""Processes with one job each: ``retouch-worker`` processes (``python -m tools.worker``) run
the tasks that front ends started with ``--no-worker`` only queue, all on one store, and the
vendors' account-wide limits hold across all of them."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.conftest import DATA, MakeSettings, data_uri, decode
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.http import make_png
from tests.pg import empty_url
from tests.test_mcp import ROOT, env
from tools.config import Settings
from tools.models import EditRequest, TaskStatus
from tools.service import Editor
from tools.store.sqlite import SQLiteStore

WORKER = [sys.executable, "-m", "tools.worker"]


class Workers:
    """``retouch-worker`` processes on one config, each logging to its own file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, settings: Settings, count: int = 1) -> list[str]:
        """Start ``count`` workers on these settings' config file (and this process's
        environment); return their ids once each has started."""
        started = [self.spawn(settings) for _ in range(count)]
        return [self.ready(i) for i in started]

    def spawn(self, settings: Settings) -> int:
        """Start one worker without waiting for it; its index."""
        i = len(self.procs)
        with open(self.log(i), "wb") as err:
            self.procs.append(
                subprocess.Popen(
                    [*WORKER, "--config", settings.source],
                    cwd=str(ROOT),
                    env=env(),
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
            )
        return i

    def kill(self, i: int) -> None:
        """SIGKILL worker ``i`` (its whole process group) and reap it."""
        os.killpg(self.procs[i].pid, signal.SIGKILL)
        self.procs[i].wait(30)

    def pause(self, i: int) -> None:
        """SIGSTOP worker ``i``: it claims nothing until ``resume``."""
        os.killpg(self.procs[i].pid, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        os.killpg(self.procs[i].pid, signal.SIGCONT)

    def log(self, i: int) -> Path:
        return self.folder / f"worker-{i}.log"

    def ready(self, i: int, timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log(i).read_text(errors="replace").splitlines():
                if line.startswith("retouch-worker "):
                    return line.split()[1].rstrip(":")
            assert self.procs[i].poll() is None, self.logs()
            time.sleep(0.05)
        raise AssertionError(f"worker {i} did not start\n{self.logs()}")

    def stop(self, i: int, sig: int = signal.SIGTERM) -> int:
        """Signal worker ``i`` and wait for it to exit; its exit status."""
        self.procs[i].send_signal(sig)
        return self.procs[i].wait(30)

    def logs(self) -> str:
        return "\n".join(
            self.log(i).read_text(errors="replace")[-2000:] for i in range(len(self.procs))
        )

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    fleet = Workers(tmp_path)
    try:
        yield fleet
    finally:
        fleet.kill_all()


@pytest.fixture
def settings_for_fleet(make_settings: MakeSettings, fake: FakeDashScope) -> Settings:
    return fleet_settings(make_settings, fake)


@pytest.fixture
def fake() -> Iterator[FakeDashScope]:
    with FakeDashScope() as server:
        yield server


def fleet_settings(make_settings: MakeSettings, fake: FakeDashScope) -> Settings:
    """DashScope's own limits (2 tasks at once, 2 submissions a second, 18 queries a second
    under the account's 20) with a poll every 50 ms, so that the query cap binds."""
    return make_settings(
        f'[vendors.ds]\nkind = "dashscope"\napi_key = "{fake.api_key}"\n'
        f'base_url = "{fake.base_url}"\npoll_interval_s = 0.05\npoll_max_interval_s = 0.05\n'
        '[vendors.local]\nkind = "local"\nesrgan = "off"\n'
    )


def most_in_a_second(times: Sequence[float]) -> int:
    """The most events in any window of one second (half-open, as a vendor counts them)."""
    ordered = sorted(times)
    most, start = 0, 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - 1.0:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_most_in_a_second_counts_sliding_windows() -> None:
    assert most_in_a_second([]) == 0
    assert most_in_a_second([0.0, 0.5, 1.0, 1.5]) == 2
    assert most_in_a_second([0.0, 0.5, 0.99, 1.5]) == 3


def sqlite_write_lock_free(path: Path) -> bool:
    """Whether a writer could start on the SQLite file now (nobody holds its write lock)."""
    db = sqlite3.connect(path, timeout=0.5, isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        db.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_four_workers_keep_the_account_limits(
    backend: str,
    make_settings: MakeSettings,
    fake: FakeDashScope,
    workers: Workers,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Four worker processes, 20 wanx tasks of 1 s: the fake's own log shows no second with
    more than 2 submissions or 20 queries, never more than 2 tasks at once, and no 429.

    The work is shared by design, not by the OS scheduler's luck: the worker that ran the
    first task is paused (SIGSTOP, idle: it holds no task, no turn and no lock) while the
    others are queued, so another one must claim; it carries on once one has. (Left alone,
    the worker whose task ends claims the next one at once, and on a loaded machine one
    worker was seen to run all 20.)"""
    if backend == "postgres":  # the environment reaches the workers too
        monkeypatch.setenv("RETOUCH_STORE__URL", await empty_url())
    settings = fleet_settings(make_settings, fake)
    assert bool(settings.store.url.get_secret_value()) == (backend == "postgres")
    fake.task_seconds = 1.0
    fake.qps_limit, fake.submit_rps_limit, fake.concurrency_limit = 20, 2, 2
    ids = workers.start(settings, 4)
    count = 20

    def request(i: int) -> EditRequest:
        return EditRequest(
            images=[data_uri(make_png(512, 512, color=(i, 90, 140)))],
            function="stylization_all",
            prompt=f"fleet-{i:02d} ink",
            vendor="ds",
        )

    async with Editor(settings, run_worker=False) as front:
        owners: set[str] = set()
        most_running = 0

        async def watch() -> None:
            nonlocal most_running
            while True:
                unfinished = await front.store.list(unfinished=True, limit=count)
                held = [t.lease_owner for t in unfinished if t.status == "running"]
                owners.update(o for o in held if o)
                most_running = max(most_running, len(held))
                await asyncio.sleep(0.05)

        watcher = asyncio.create_task(watch())
        started = time.monotonic()
        try:
            tasks = [await front.edit_image(request(0))]
            first = await front.check_task(tasks[0].id, wait_seconds=60)
            assert first.status == TaskStatus.succeeded, workers.logs()
            [ran_first] = {s.worker for s in await front.store.steps(first.id) if s.worker}
            idle = ids.index(ran_first)
            workers.pause(idle)
            try:
                if isinstance(front.store, SQLiteStore):  # paused mid-write, it would hold
                    path = Path(front.store.path)  # every claim back: let it finish the write
                    while not await asyncio.to_thread(sqlite_write_lock_free, path):
                        workers.resume(idle)
                        await asyncio.sleep(0.05)
                        workers.pause(idle)
                tasks += [await front.edit_image(request(i)) for i in range(1, count)]
                async with asyncio.timeout(60):  # a guard against a hang, not a measurement
                    while not owners - {ran_first}:
                        await asyncio.sleep(0.05)
            finally:
                workers.resume(idle)
            async with asyncio.timeout(120):  # a guard against a hang, not a measurement
                done = [await front.check_task(t.id, wait_seconds=120) for t in tasks]
        finally:
            watcher.cancel()
        elapsed = time.monotonic() - started
        owners.add(ran_first)
    assert [t.status for t in done] == [TaskStatus.succeeded] * count, workers.logs()
    submissions = [r.time for r in fake.requests_to("create")]
    queries = [r.time for r in fake.requests_to("task")]
    refused = [r for r in fake.requests if r.status == 429]
    print(
        f"\nfleet ({backend}): 4 workers, {count} tasks in {elapsed:.1f} s; most in one second: "
        f"{most_in_a_second(submissions)} submissions (cap 2), {most_in_a_second(queries)} "
        f"queries (cap 20); most at once: {fake.max_concurrent_seen} at the vendor, "
        f"{most_running} running in the store (cap 2); 429s: {len(refused)}; "
        f"{len(owners & set(ids))} workers held tasks"
    )
    assert fake.submissions == len(submissions) == count
    assert most_in_a_second(submissions) <= 2
    assert most_in_a_second(queries) <= 20
    assert fake.max_submit_rps_seen <= 2 and fake.max_qps_seen <= 20
    assert fake.max_concurrent_seen <= 2 and most_running <= 2
    assert refused == []
    assert most_in_a_second(queries) >= 10  # the query cap was really in play
    assert len(owners & set(ids)) >= 2  # the work was shared


async def test_a_front_end_without_a_worker_queues_and_a_worker_finishes(
    settings_for_fleet: Settings, workers: Workers
) -> None:
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "server", "--config", settings_for_fleet.source, "--no-worker"],
        env=env(),
        cwd=str(ROOT),
    )
    async with Client(params) as client:
        started = await client.call_tool(
            "edit_image",
            {
                "images": [str(DATA / "chelsea.png")],
                "function": "adjust",
                "prompt": "rotate 90",
                "wait_seconds": 1,
            },
        )
        task = started.structured_content
        assert task["status"] == "queued", task  # nobody runs it yet
        workers.start(settings_for_fleet)
        done = await client.call_tool("check_task", {"task_id": task["id"], "wait_seconds": 30})
        task = done.structured_content
        assert task["status"] == "succeeded", (task, workers.logs())
        resource = await client.read_resource(task["results"][0]["uri"])  # from the store
        image = decode(base64.b64decode(resource.contents[0].blob))  # type: ignore[union-attr]
        assert image.size == (300, 451)  # chelsea.png is 451×300, rotated
    assert workers.stop(0, signal.SIGINT) == 0


async def test_a_stopped_worker_hands_its_task_to_the_next(
    settings_for_fleet: Settings, fake: FakeDashScope, workers: Workers
) -> None:
    fake.task_plan = ["RUNNING"]  # the vendor works on it until the test says otherwise
    [first] = workers.start(settings_for_fleet)
    async with Editor(settings_for_fleet, run_worker=False) as front:
        task = await front.edit_image(
            EditRequest(images=[data_uri(make_png(512, 512))], function="colorization", vendor="ds")
        )
        for _ in range(600):
            record = await front.store.get(task.id)
            if record.vendor_task_id:
                break
            await asyncio.sleep(0.05)
        assert record.lease_owner == first and record.vendor_task_id, workers.logs()
        assert workers.stop(0) == 0  # SIGTERM
        handed = await front.store.get(task.id)
        assert (handed.status, handed.lease_owner, handed.lease_until) == ("running", None, 0)
        fake.tasks[handed.vendor_task_id].plan = ("SUCCEEDED",)  # type: ignore[index]
        [second] = workers.start(settings_for_fleet)
        done = await front.check_task(task.id, wait_seconds=30)
    assert done.status == TaskStatus.succeeded, (done, workers.logs())
    assert second != first and fake.submissions == 1  # polled again, never sent twice


def test_front_ends_take_no_worker_flag(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bots.__main__ as bot_main
    import server.__main__ as server_main
    from tools.errors import ConfigError

    assert server_main.parse_args([]).worker is True
    assert server_main.parse_args(["--no-worker"]).worker is False
    asked: list[bool] = []

    def build_application(settings: Settings, *, run_worker: bool = True) -> None:
        asked.append(run_worker)
        raise ConfigError("stop here")

    monkeypatch.setattr(bot_main, "build_application", build_application)
    settings = make_settings('[telegram]\ntoken = "123:abc"\n')
    assert bot_main.main(["--config", settings.source, "--no-worker"]) == 2
    assert bot_main.main(["--config", settings.source]) == 2
    assert asked == [False, True]


def test_a_worker_with_a_bad_config_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.worker.__main__ import main

    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "retouch-worker: config file not found" in err
