"""The short path: an edit is started by the request that queued it (``Worker.start_now``),
under a lease like any claimed task, in its vendor's turn; and a process killed mid-job is
recovered exactly as one whose worker had claimed the task."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import MakeSettings, data_uri, png
from tests.fakes import openai as oa_fake
from tests.fakes.http import Fault
from tests.fakes.openai import FakeOpenAI
from tools.config import load_settings
from tools.models import EditRequest
from tools.service import Editor

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-test-openai"


def adjust(prompt: str = "brightness 1.1", size: tuple[int, int] = (64, 48)) -> EditRequest:
    return EditRequest(images=[data_uri(png(size))], function="adjust", prompt=prompt)


async def test_an_edit_starts_at_once_without_the_claim_loop(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings('[vendors.local]\nkind = "local"\nesrgan = "off"\n')
    async with Editor(settings) as editor:
        assert editor.worker is not None
        woken = []
        editor.worker.wake = lambda: woken.append(True)  # type: ignore[method-assign]
        task = await editor.edit_image(adjust(), wait_seconds=30)
        assert task.status.value == "succeeded", task.error
        assert woken == []  # nobody asked the claim loop
        stamps = editor.timeline.of(task.id)
        assert stamps["received"] <= stamps["stored"] <= stamps["claimed"]
        assert stamps["claimed"] <= stamps["submit sent"] <= stamps["decoded"]
        assert stamps["decoded"] <= stamps["result stored"] <= stamps["ended"]
        # The result as decoded on arrival, once, for the caller that waited.
        image = editor.decoded_result(task.id, 0)
        assert image is not None and image.size == (64, 48)
        assert editor.decoded_result(task.id, 0) is None
        record = await editor.store.get(task.id)
        assert record.attempts == 1 and record.lease_owner is None


async def test_a_full_vendor_leaves_the_task_to_the_claim_loop_in_order(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(
        '[vendors.local]\nkind = "local"\nesrgan = "off"\nmax_concurrent = 1\n'
    )
    async with Editor(settings) as editor:
        assert editor.worker is not None
        started = []
        start_now = editor.worker.start_now

        async def spy(*args: object, **kwargs: object) -> asyncio.Task[None] | None:
            job = await start_now(*args, **kwargs)  # type: ignore[arg-type]
            started.append(job is not None)
            return job

        editor.worker.start_now = spy  # type: ignore[method-assign]
        tasks = await asyncio.gather(
            *(editor.edit_image(adjust(f"brightness 1.{i}"), wait_seconds=30) for i in range(4))
        )
        assert [t.status.value for t in tasks] == ["succeeded"] * 4
        assert started[0] and not all(started)  # one slot: the others waited their turn
        records = [await editor.store.get(t.id) for t in tasks]
        order = sorted(records, key=lambda r: r.seq)
        assert [r.started_at for r in order] == sorted(r.started_at or 0 for r in order)


async def test_a_caller_that_gives_up_does_not_stop_the_edit(make_settings: MakeSettings) -> None:
    settings = make_settings('[vendors.local]\nkind = "local"\nesrgan = "off"\n')
    async with Editor(settings) as editor:
        assert editor.worker is not None
        call = asyncio.create_task(editor.edit_image(adjust(), wait_seconds=30))
        while not editor.worker.running:  # started by the call, which now waits for it
            await asyncio.sleep(0.001)
        [task_id] = editor.worker.running
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        task = await editor.check_task(task_id, wait_seconds=30)
        assert task.status.value == "succeeded"


# ---- a process killed mid-job ----------------------------------------------------------------


@pytest.fixture
def openai() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


def config(folder: Path, base_url: str, idle_poll_s: float = 0.1) -> Path:
    path = folder / "config.toml"
    path.write_text(
        'log_level = "WARNING"\n[store]\npath = "retouch.db"\nresults_dir = "results"\n'
        f"[worker]\nlease_s = 5\nidle_poll_s = {idle_poll_s}\n"
        f'[vendors.openai]\nkind = "openai"\napi_key = "{KEY}"\nbase_url = "{base_url}/v1"\n'
        "max_retries = 6\n",
        encoding="utf-8",
    )
    return path


CHILD = """
import asyncio, sys
from tests.conftest import data_uri, png
from tools.config import load_settings
from tools.models import EditRequest
from tools.service import Editor

async def main():
    async with Editor(load_settings(sys.argv[1])) as editor:
        editor.worker.wake = lambda: print("woken", flush=True)
        request = EditRequest(images=[data_uri(png())], prompt="make it blue", vendor="openai")
        task = await editor.edit_image(request)
        print(task.id, flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def start_child(cfg: Path) -> tuple[subprocess.Popen[str], str]:
    """A process that queues one edit, which it starts at once (the claim loop sleeps for a
    minute and is never woken), and runs until killed."""
    child = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(cfg)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    task_id = child.stdout.readline().strip()
    assert len(task_id) == 32, task_id  # not "woken": the request started it itself
    return child, task_id


async def wait_for(check: object, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_results_are_kept_decoded_only_for_a_caller_still_waiting(
    tmp_path: Path, openai: FakeOpenAI
) -> None:
    openai.inject("edits", Fault.delay(1.0))
    settings = load_settings(config(tmp_path, openai.base_url))
    request = EditRequest(images=[data_uri(png())], prompt="make it blue", vendor="openai")
    async with Editor(settings) as editor:
        task = await editor.edit_image(request, wait_seconds=0.2)  # gives up before the end
        assert task.status.value == "running"
        done = await editor.check_task(task.id, wait_seconds=30)
        assert done.status.value == "succeeded"
        assert editor.decoded_result(task.id, 0) is None  # nobody was waiting: not kept
        again = await editor.edit_image(request, wait_seconds=30)
        assert again.status.value == "succeeded"
        assert editor.decoded_result(again.id, 0) is not None


async def test_a_process_killed_between_attempts_is_recovered_and_bills_once(
    tmp_path: Path, openai: FakeOpenAI
) -> None:
    # The first submission is throttled for 30 s: the process waits, having sent nothing
    # that was accepted, and is killed while it waits.
    openai.inject("edits", oa_fake.rate_limited(retry_after=30))
    cfg = config(tmp_path, openai.base_url, idle_poll_s=60)
    child, task_id = start_child(cfg)
    try:
        await wait_for(lambda: openai.requests_to("edits"))
        await asyncio.sleep(0.3)  # the 429 is read and the wait begun
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    config(tmp_path, openai.base_url)  # the next process polls for work as usual
    async with Editor(load_settings(cfg)) as editor:
        held = await editor.store.get(task_id)
        assert held.status == "running" and held.submit_started_at is None
        task = await editor.check_task(task_id, wait_seconds=30)
    assert task.status.value == "succeeded", task.error
    assert task.attempts == 2
    accepted = [r for r in openai.requests_to("edits") if r.status == 200]
    assert len(openai.requests_to("edits")) == 2 and len(accepted) == 1


async def test_a_process_killed_while_submitting_is_not_billed_twice(
    tmp_path: Path, openai: FakeOpenAI
) -> None:
    # The vendor holds the submission: the process dies not knowing whether it was taken.
    openai.inject("edits", Fault.delay(30))
    cfg = config(tmp_path, openai.base_url, idle_poll_s=60)
    child, task_id = start_child(cfg)
    try:
        await wait_for(lambda: openai.requests_to("edits"))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    config(tmp_path, openai.base_url)
    async with Editor(load_settings(cfg)) as editor:
        task = await editor.check_task(task_id, wait_seconds=30)
    assert task.status.value == "failed" and task.error is not None
    assert "not sent again" in task.error.message
    assert len(openai.requests_to("edits")) == 1
