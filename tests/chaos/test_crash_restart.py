"""Crash-restart chaos: a real worker process (``python -m tests.chaos.worker``) is killed
with SIGKILL at random moments and started again, over and over, while it drives tasks on
a fake DashScope (wanx tasks of random durations, qwen edits that answer slowly) and on the
local engine. At the end:

- every task has ended;
- no vendor accepted any task twice (each task's prompt is unique: the fake's records are
  counted per prompt), and every task's vendor task id is the one task the vendor made
  from that prompt;
- every succeeded task's images are on disk and match their sha256;
- a task fails only when a process died *while* submitting it to a vendor that bills
  (it is not sent again); those are counted, split by whether the vendor had accepted it.

The suite runs a short version; ``make chaos`` (RETOUCH_CHAOS_KILLS=60) the long one.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from starlette.requests import Request
from starlette.responses import Response

from tests.chaos.helpers import report_figures
from tests.conftest import DATA, MakeSettings, data_uri, sample
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.http import Recorded, make_png
from tests.test_mcp import ROOT, env
from tools.models import EditRequest, TaskStatus
from tools.service import Editor
from tools.store import blob_key

KILLS = int(os.environ.get("RETOUCH_CHAOS_KILLS", "12"))
SEED = int(os.environ.get("RETOUCH_CHAOS_SEED", "5"))
INTERRUPTED = "the process stopped while submitting"
COMMAND = [sys.executable, "-m", "tests.chaos.worker"]


class ChaosDashScope(FakeDashScope):
    """Each wanx task lasts a random 0.2–3 s; each qwen edit answers after 0–1.5 s."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    async def _create(self, request: Request, rec: Recorded) -> Response:
        self.task_seconds = self.rng.uniform(0.2, 3.0)
        return await super()._create(request, rec)

    async def _generation(self, request: Request, rec: Recorded) -> Response:
        await self.sleep(self.rng.uniform(0, 1.5))
        return await super()._generation(request, rec)

    def accepted(self) -> collections.Counter[str]:
        """Submissions the vendor accepted (and would bill), per prompt."""
        counts: collections.Counter[str] = collections.Counter(
            task.prompt for task in self.tasks.values()
        )
        for rec in self.requests_to("generation"):
            if rec.status == 200:
                content = rec.json["input"]["messages"][0]["content"]
                counts[next(item["text"] for item in content if "text" in item)] += 1
        return counts


def new_requests(rng: random.Random, start: int, count: int) -> list[EditRequest]:
    """Cloud tasks (unique prompts) and local ones, mixed."""
    out = []
    for i in range(start, start + count):
        kind = rng.choice(["wanx", "wanx", "wanx", "qwen", "local"])
        photo = data_uri(make_png(512, 512, color=(i % 256, 80, 140), label=f"#{i}"))
        if kind == "wanx":
            function = rng.choice(["stylization_all", "colorization", "description_edit"])
            out.append(
                EditRequest(
                    images=[photo], function=function, prompt=f"chaos-{i:04d} ink", vendor="ds"
                )
            )
        elif kind == "qwen":
            out.append(EditRequest(images=[photo], prompt=f"chaos-{i:04d} a hat", vendor="ds"))
        else:
            function, prompt = rng.choice(
                [
                    ("adjust", "rotate 90; grayscale"),
                    ("lineart", ""),
                    ("stylization_all", "cartoon"),
                ]
            )
            image = data_uri(sample("chelsea.png")) if function == "stylization_all" else photo
            out.append(EditRequest(images=[image], function=function, prompt=prompt))
    return out


class Workers:
    """Starts worker processes (each in its own process group) and kills them."""

    def __init__(self, config: str, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self) -> None:
        with open(self.log, "ab") as err:
            self.proc = subprocess.Popen(
                [*COMMAND, "--config", self.config, "--backoff-base", "0.05"],
                cwd=str(ROOT),
                env=env(),
                stdout=subprocess.DEVNULL,
                stderr=err,
                start_new_session=True,
            )
        self.started += 1

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None


async def unfinished(editor: Editor) -> int:
    rows = await editor.store.db.execute_fetchall(
        "SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'running')"
    )
    return int(rows[0][0])


async def test_killed_workers_lose_and_duplicate_nothing(
    make_settings: MakeSettings,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(SEED)
    with ChaosDashScope(SEED) as fake:
        # The shortest lease allowed: a dead worker's tasks are taken over 5 s after its
        # last renewal. (The environment reaches the worker processes too.)
        monkeypatch.setenv("RETOUCH_WORKER__LEASE_S", "5")
        settings = make_settings(
            f'[vendors.ds]\nkind = "dashscope"\napi_key = "{fake.api_key}"\n'
            f'base_url = "{fake.base_url}"\npoll_interval_s = 0.1\npoll_max_interval_s = 0.5\n'
            "max_concurrent = 8\n"  # submit_rps stays 2: submissions wait their turn
            '[vendors.local]\nkind = "local"\nesrgan = "off"\n'
        )
        # The test process only queues tasks (between two workers, so never while one of
        # them cleans the store); the worker processes do everything else.
        queue = Editor(settings, run_worker=False)
        await queue.start()
        ids: list[str] = []
        asked: list[EditRequest] = []

        async def add(count: int) -> None:
            for req in new_requests(rng, len(asked), count):
                ids.append((await queue.edit_image(req)).id)
                asked.append(req)

        await add(24)
        workers = Workers(settings.source, tmp_path / "workers.log")
        started = time.monotonic()
        kills = 0
        try:
            while kills < KILLS:
                workers.start()
                await asyncio.sleep(rng.uniform(0.3, 2.5))  # startup included: any moment
                workers.kill()
                kills += 1
                if await unfinished(queue) < 16:
                    await add(4)
            workers.start()  # the last one is left to finish everything
            for _ in range(1200):  # a guard against a hang (2 minutes), not a measurement
                if await unfinished(queue) == 0:
                    break
                await asyncio.sleep(0.1)
        finally:
            if workers.proc is not None:
                workers.kill()
        elapsed = time.monotonic() - started
        tasks = [await queue.check_task(i) for i in ids]
        on_disk = [
            hashlib.sha256(
                queue.store.blobs.path(blob_key(r.sha256, r.mime_type)).read_bytes()
            ).hexdigest()
            == r.sha256
            for t in tasks
            for r in t.results
        ]
        temp_files = list(settings.store.results_dir.rglob("*.tmp"))
        await queue.close()
        accepted = fake.accepted()
        vendor_prompt = {task_id: task.prompt for task_id, task in fake.tasks.items()}

    log = (tmp_path / "workers.log").read_text(errors="replace")
    stuck = [t.id for t in tasks if not t.finished]
    assert stuck == [], f"{len(stuck)} tasks never ended\n{log[-3000:]}"
    assert len(tasks) == len(set(ids))  # none lost
    duplicated = {prompt: n for prompt, n in accepted.items() if n > 1}
    assert duplicated == {}
    for req, task in zip(asked, tasks, strict=True):
        if task.vendor_task_id:  # the id Retouch kept is the one the vendor made for it
            assert vendor_prompt[task.vendor_task_id] == req.prompt
    assert on_disk and all(on_disk)

    outcome: collections.Counter[str] = collections.Counter()
    for req, task in zip(asked, tasks, strict=True):
        cloud = req.vendor == "ds"
        if task.status == TaskStatus.succeeded:
            outcome["succeeded"] += 1
            assert accepted[req.prompt] == 1 or not cloud
            continue
        assert task.status == TaskStatus.failed and task.error is not None
        assert cloud and INTERRUPTED in task.error.message, (req, task.error)
        billed = accepted[req.prompt] == 1
        outcome[
            "failed: died mid-submission, vendor had accepted it"
            if billed
            else "failed: died mid-submission, never reached the vendor"
        ] += 1
    attempts = collections.Counter(min(t.attempts, 4) for t in tasks)
    line = (
        f"chaos: {kills} SIGKILLs survived ({workers.started} worker processes, lease 5 s) in "
        f"{elapsed:.0f} s; {len(tasks)} tasks ("
        + ", ".join(f"{k}: {v}" for k, v in sorted(outcome.items()))
        + f"); claims per task {dict(sorted(attempts.items()))} (4 = 4+); lost: 0, duplicated: "
        f"{len(duplicated)}; stray temp files: {len(temp_files)}"
    )
    report_figures(request.config, line)


def test_the_chaos_worker_module_is_importable() -> None:
    from tests.chaos import worker

    assert callable(worker.main) and Path(DATA).is_dir()
