"""Fault injection under load: 500 tasks across DashScope (wanx and qwen edit), an
OpenAI-style vendor and ai-nebula, with about one request in five answered by a fault —
429 with and without Retry-After, 500, 503, connection resets, timeouts, malformed JSON on
submits, polls, uploads to temporary storage and result downloads, expired result URLs
and partial failures.

Then: no task is stuck or lost; no task was accepted by a vendor twice; each failure has the
typed error its faults explain; each result on disk matches its sha256. The figures are
printed (pytest -s) and added to the terminal summary.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import json
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import Response

from tests.chaos.helpers import report_figures
from tests.conftest import MakeSettings, data_uri, png
from tests.fakes import dashscope as ds_fake
from tests.fakes import nebula as nb_fake
from tests.fakes import openai as oa_fake
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.http import Fault, Recorded, fake_meta, make_png
from tests.fakes.nebula import FakeNebula
from tests.fakes.openai import FakeOpenAI
from tools import limits
from tools.models import EditRequest, Task, TaskStatus
from tools.service import Editor
from tools.store import blob_key

TASKS = {"wanx": 330, "qwen": 70, "openai": 50, "nebula": 50}  # 500 in all
FAULT_RATE = 0.23  # of the requests to the routes that fail: ~20 % of all requests
#: Each vendor's timeout_s (a "timeout" fault answers after twice that). ai-nebula's fake
#: draws 1 MP results inside the request, which takes a while on a loaded 2-core machine.
TIMEOUT_S = {"dashscope": 1.0, "openai": 1.0, "nebula": 4.0}
SEED = 20240605

#: What a client sees, by fault (the same for every vendor, in each one's own dialect).
KINDS = ["429", "429+retry-after", "500", "503", "reset", "timeout", "malformed"]
UPLOAD_KINDS = ["429", "500", "503", "reset"]
FILE_KINDS = ["expired", "500", "503", "reset"]
#: The error codes a task may end with when one of its requests met this fault and
#: retrying could not help (non-retryable) or ran out of attempts (retryable).
SUBMIT_EXPLAINS = {
    "429": {"throttled"},
    "429+retry-after": {"throttled"},
    "500": {"vendor_fault"},
    "503": {"vendor_fault"},
    "reset": {"vendor_fault"},  # may have reached the vendor: never sent again
    "timeout": {"timeout"},  # idem
    "malformed": {"vendor_fault"},  # idem: the task may exist
}
POLL_EXPLAINS = {kind: {"throttled", "vendor_fault", "timeout"} for kind in KINDS}
UPLOAD_EXPLAINS = {kind: {"throttled", "vendor_fault"} for kind in UPLOAD_KINDS}
FILE_EXPLAINS = {kind: {"vendor_fault", "timeout"} for kind in FILE_KINDS}
EXPLAINS = {
    "submit": SUBMIT_EXPLAINS,
    "poll": POLL_EXPLAINS,
    "upload": UPLOAD_EXPLAINS,
    "files": FILE_EXPLAINS,
}
ROUTE_ROLE = {
    "create": "submit",
    "generation": "submit",
    "edits": "submit",
    "generations": "submit",
    "task": "poll",
    "files": "files",
    "oss_upload": "upload",
}


def menu(dialect: str) -> dict[str, Fault]:
    """The faults of one vendor, in its own error format."""
    if dialect == "dashscope":
        throttled, retry, internal = (
            ds_fake.rate_limited(),
            ds_fake.rate_limited(retry_after=0.05),
            ds_fake.internal_error(),
        )
    elif dialect == "openai":
        throttled = oa_fake.rate_limited()
        retry = oa_fake.rate_limited(retry_after_ms=50)
        internal = oa_fake.server_error()
    else:
        throttled = nb_fake.rate_limited()
        retry = nb_fake.rate_limited(retry_after=0.05)
        internal = nb_fake.server_error()
    return {
        "429": throttled,
        "429+retry-after": retry,
        "500": internal,
        "503": Fault.status(503, "Service Unavailable", {"Content-Type": "text/plain"}),
        "reset": Fault.reset(),
        "timeout": Fault.delay(2 * TIMEOUT_S[dialect]),
        "malformed": Fault.malformed(),
        "expired": Fault.status(404, "<Error><Code>NoSuchKey</Code></Error>"),
    }


class Flaky:
    """Mixed into a fake: answers a share of the requests to the routes it names with a
    random fault from its menu, and remembers which Retouch task each request served."""

    _lock: Any
    _requests: list[Recorded]
    tasks: dict[str, Any]

    def setup_faults(self, dialect: str, routes: dict[str, list[str]], seed: int) -> None:
        self.rng = random.Random(seed)
        self.faults = menu(dialect)
        self.routes = routes
        self.rate = FAULT_RATE
        self.injected: dict[int, str] = {}  # id(Recorded) -> fault kind
        self.file_owner: dict[str, str] = {}  # /files/<name> -> prompt
        self.upload_owner: dict[str, str] = {}  # sha256 of an uploaded file -> prompt
        self._current: Recorded | None = None

    async def _record(self, request: Request, name: str) -> Recorded:
        rec = await super()._record(request, name)  # type: ignore[misc]
        self._current = rec
        return rec

    def _next_fault(self, route: str) -> Fault | None:
        queued = super()._next_fault(route)  # type: ignore[misc]
        if queued is not None or route not in self.routes:
            return queued
        with self._lock:
            if self.rng.random() >= self.rate:
                return None
            kind = self.rng.choice(self.routes[route])
            assert self._current is not None
            self.injected[id(self._current)] = kind
        return self.faults[kind]

    def put_file(self, data: bytes, ext: str = "png", content_type: str | None = None) -> str:
        url = super().put_file(data, ext, content_type)  # type: ignore[misc]
        meta = fake_meta(data) if ext == "png" else None
        if meta and meta.get("prompt"):
            self.file_owner[url.rsplit("/", 1)[1]] = meta["prompt"]
        return url

    def prompt_of(self, rec: Recorded) -> str | None:
        """The prompt (hence the Retouch task) a recorded request belongs to."""
        if rec.route == "create" and isinstance(rec.json, dict):
            return rec.json["input"]["prompt"]
        if rec.route == "generation" and isinstance(rec.json, dict):
            content = rec.json["input"]["messages"][0]["content"]
            return next(item["text"] for item in content if "text" in item)
        if rec.route == "generations" and isinstance(rec.json, dict):
            return rec.json.get("prompt")
        if rec.route == "edits":
            return rec.form.get("prompt")
        if rec.route == "task":
            task = self.tasks.get(rec.path_params.get("task_id", ""))
            return task.prompt if task else None
        if rec.route == "files":
            return self.file_owner.get(rec.path_params.get("name", ""))
        if rec.route == "oss_upload" and rec.files:
            return self.upload_owner.get(hashlib.sha256(rec.files[0].data).hexdigest())
        return None

    def accepted(self) -> collections.Counter[str]:
        """Submissions the vendor accepted (and would bill), per prompt."""
        counts: collections.Counter[str] = collections.Counter()
        for rec in self._requests:
            if rec.route in ("generation", "edits", "generations") and rec.status == 200:
                counts[self.prompt_of(rec) or "?"] += 1
        for task in getattr(self, "tasks", {}).values():
            counts[task.prompt] += 1
        return counts


class FlakyDashScope(Flaky, FakeDashScope):
    async def _create(self, request: Request, rec: Recorded) -> Response:
        response = await super()._create(request, rec)
        if response.status_code == 200 and "#partial" in rec.json["input"]["prompt"]:
            task_id = json.loads(response.body)["output"]["task_id"]
            self.tasks[task_id].partial_failures = 1  # one of its two images fails
        return response


class FlakyOpenAI(Flaky, FakeOpenAI):
    pass


class FlakyNebula(Flaky, FakeNebula):
    tasks: dict[str, Any] = {}  # noqa: RUF012  (no async tasks: nothing to map)


OUTCOMES = [
    "succeeded",
    "succeeded after retries",
    "of which partial (1 of 2 images)",
    "failed with a typed error",
    "of which timed out with no fault injected",
]


@dataclass
class Figures:
    requests: int = 0
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


@pytest.fixture
def vendors() -> Iterator[tuple[FlakyDashScope, FlakyOpenAI, FlakyNebula]]:
    ds, oa, nb = FlakyDashScope(), FlakyOpenAI(), FlakyNebula()
    ds.setup_faults(
        "dashscope",
        {
            "create": KINDS,
            "generation": KINDS,
            "task": KINDS,
            "oss_upload": UPLOAD_KINDS,
            "files": FILE_KINDS,
        },
        SEED,
    )
    oa.setup_faults("openai", {"edits": KINDS, "files": FILE_KINDS}, SEED + 1)
    nb.setup_faults("nebula", {"generations": KINDS, "files": FILE_KINDS}, SEED + 2)
    ds.task_plan = ["RUNNING", "SUCCEEDED"]
    with ds, oa, nb:
        yield ds, oa, nb


def vendor_tables(ds: FakeDashScope, oa: FakeOpenAI, nb: FakeNebula) -> str:
    def common(dialect: str) -> str:
        return (
            f"timeout_s = {TIMEOUT_S[dialect]}\npoll_interval_s = 0.02\n"
            "poll_max_interval_s = 0.1\nmax_concurrent = 16\nsubmit_rps = 1000\n"
            "query_rps = 1000\nmax_retries = 6\n"
        )

    return (
        f'[vendors.ds]\nkind = "dashscope"\napi_key = "{ds.api_key}"\n'
        f'base_url = "{ds.base_url}"\n{common("dashscope")}'
        f'[vendors.oa]\nkind = "openai"\napi_key = "{oa.api_key}"\nbase_url = "{oa.base_url}/v1"\n'
        f'model = "dall-e-2"\nresponse_format = "url"\n{common("openai")}'
        f'[vendors.nb]\nkind = "nebula"\napi_key = "{nb.api_key}"\nbase_url = "{nb.base_url}"\n'
        f"{common('nebula')}"
    )


def requests_to_make() -> list[EditRequest]:
    rng = random.Random(SEED)
    photos = [
        data_uri(make_png(512, 512, color=(rng.randrange(256), 90, 160), label=str(i)))
        for i in range(4)
    ]
    out: list[EditRequest] = []
    for i in range(TASKS["wanx"]):
        partial = i % 15 == 0
        # Its own image: the upload to temporary storage is traced back to it by its bytes.
        own = png((512, 512), (i % 256, i // 256, 200))
        out.append(
            EditRequest(
                images=[data_uri(own)],
                function=["stylization_all", "colorization", "description_edit"][i % 3],
                prompt=f"fault-{len(out):03d} warm light" + (" #partial" if partial else ""),
                n=2 if partial else 1,
                vendor="ds",
            )
        )
    for vendor, count, size in (
        ("ds", TASKS["qwen"], "512x512"),
        ("oa", TASKS["openai"], "256x256"),
    ):
        for _ in range(count):
            out.append(
                EditRequest(
                    images=[photos[len(out) % 4]],
                    prompt=f"fault-{len(out):03d} a red hat",
                    size=size,
                    vendor=vendor,
                )
            )
    for _ in range(TASKS["nebula"]):
        out.append(
            EditRequest(
                images=[photos[len(out) % 4]], prompt=f"fault-{len(out):03d} a hat", vendor="nb"
            )
        )
    return out


async def test_500_tasks_under_injected_faults(
    make_settings: MakeSettings,
    vendors: tuple[FlakyDashScope, FlakyOpenAI, FlakyNebula],
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    monkeypatch.setattr(limits, "BACKOFF_BASE_S", 0.01)
    ds, oa, nb = vendors
    settings = make_settings(vendor_tables(ds, oa, nb))
    asked = requests_to_make()
    assert len(asked) == 500
    for req in asked:  # a wanx image is uploaded as it is (512 px PNG: nothing to fit)
        if req.vendor == "ds" and req.function != "edit":
            data = base64.b64decode(req.images[0].split(",", 1)[1])
            ds.upload_owner[hashlib.sha256(data).hexdigest()] = req.prompt
    async with Editor(settings) as editor:
        started = time.monotonic()
        ids = [(await editor.edit_image(r)).id for r in asked]
        for _ in range(2400):  # a guard against a hang (4 minutes), not a measurement
            rows = await editor.store.db.execute_fetchall(
                "SELECT COUNT(*) FROM tasks WHERE status IN ('queued', 'running')"
            )
            if rows[0][0] == 0:
                break
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
        tasks = [await editor.check_task(i) for i in ids]
        files_ok = [
            hashlib.sha256(
                editor.store.blobs.path(blob_key(r.sha256, r.mime_type)).read_bytes()
            ).hexdigest()
            == r.sha256
            for t in tasks
            for r in t.results
        ]

    stuck = [t.id for t in tasks if not t.finished]
    assert stuck == [], f"{len(stuck)} tasks never ended"
    assert len({t.id for t in tasks}) == 500  # none lost
    assert files_ok and all(files_ok)  # every result on disk, byte for byte

    # Which faults each task met, by the prompt its requests carried.
    met: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    figures = Figures()
    for fake in (ds, oa, nb):
        for rec in fake.requests:
            figures.requests += 1
            kind = fake.injected.get(id(rec))
            if kind is None:
                continue
            role = ROUTE_ROLE[rec.route]
            figures.faults[f"{role}:{kind}"] += 1
            prompt = fake.prompt_of(rec)
            assert prompt is not None, rec  # every fault is traced to its task
            met[prompt].append((role, kind))

    duplicated = {p: n for fake in (ds, oa, nb) for p, n in fake.accepted().items() if n > 1}
    assert duplicated == {}, duplicated

    unexplained = []
    for asked_request, task in zip(asked, tasks, strict=True):
        faults = met.get(asked_request.prompt, [])
        partial = "#partial" in asked_request.prompt
        if task.status == TaskStatus.succeeded:
            figures.outcomes["succeeded after retries" if faults else "succeeded"] += 1
            if task.failures:
                figures.outcomes["of which partial (1 of 2 images)"] += 1
                assert partial or any(role == "files" for role, _ in faults), task
            continue
        assert task.status == TaskStatus.failed and task.error is not None
        code = task.error.code
        figures.outcomes["failed with a typed error"] += 1
        figures.errors[code] += 1
        explains = set()
        for role, kind in faults:
            explains |= EXPLAINS[role][kind]
        if not faults and code == "timeout":  # a fake too slow under load: a real timeout
            figures.outcomes["of which timed out with no fault injected"] += 1
        elif code not in explains:
            unexplained.append((asked_request.prompt, code, task.error.message, faults))
    assert unexplained == [], unexplained[:5]
    billed_failed = sum(
        1
        for asked_request, task in zip(asked, tasks, strict=True)
        if task.status == TaskStatus.failed
        and any(f.accepted()[asked_request.prompt] for f in (ds, oa, nb))
    )
    injected = sum(figures.faults.values())
    line = (
        f"faults: {len(tasks)} tasks, {figures.requests} vendor requests, {injected} faults "
        f"injected ({injected / figures.requests:.0%}) in {elapsed:.0f} s; "
        + ", ".join(f"{k}: {figures.outcomes[k]}" for k in OUTCOMES)
        + f"; errors: {dict(figures.errors)}; failed but billed by the vendor (it accepted "
        f"before the fault): {billed_failed}; stuck: {len(stuck)}, lost: 0, duplicated: "
        f"{len(duplicated)}"
    )
    report_figures(request.config, line)
    report_figures(
        request.config,
        "faults by kind: " + ", ".join(f"{k}={v}" for k, v in sorted(figures.faults.items())),
    )
    assert figures.outcomes["succeeded after retries"] > 50  # retrying really happened
    assert injected > 0.15 * figures.requests


async def colorize_at(fake: FakeDashScope, make_settings: MakeSettings, extra: str = "") -> Task:
    """One wanx colorization through an Editor on the fake, waited for."""
    settings = make_settings(
        f'[vendors.ds]\nkind = "dashscope"\napi_key = "{fake.api_key}"\n'
        f'base_url = "{fake.base_url}"\npoll_interval_s = 0.02\n{extra}'
    )
    async with Editor(settings) as editor:
        request = EditRequest(
            images=[data_uri(png((512, 512)))], function="colorization", vendor="ds"
        )
        return await editor.edit_image(request, wait_seconds=30)


async def test_a_retry_after_of_a_day_is_capped(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(limits, "MAX_RETRY_AFTER_S", 0.05)
    with FakeDashScope() as fake:
        fake.inject("create", ds_fake.rate_limited(retry_after=86400))
        fake.inject("task", ds_fake.rate_limited(retry_after=86400))
        task = await colorize_at(fake, make_settings)
    assert task.status == TaskStatus.succeeded, task.error
    assert len(fake.requests_to("create")) == 2 and fake.submissions == 1


async def test_a_worker_woken_as_it_stops_still_stops(make_settings: MakeSettings) -> None:
    # A finishing task wakes the claim loop in the very iteration stop() cancels it; with
    # asyncio.wait_for (Python 3.11) the cancel was swallowed and stop() waited forever.
    async with Editor(make_settings()) as editor:
        for _ in range(3):
            assert editor.worker is not None
            await asyncio.sleep(0.1)
            editor.worker.wake()
            stopping = asyncio.create_task(editor.worker.stop())
            done, _ = await asyncio.wait({stopping}, timeout=10)  # a guard, not a measurement
            assert stopping in done, "stop() hung"
            await editor.worker.start()


@pytest.mark.parametrize("grace", [10, 0])
async def test_a_clean_stop_lets_a_submission_in_flight_reach_the_store(
    make_settings: MakeSettings, grace: float
) -> None:
    # A deploy's SIGTERM while wanx is answering a submission: cut off there, the vendor
    # has the task but the store does not know it, so the next process can only fail it
    # (it never sends twice). With the grace, the stop waits for the answer to be stored.
    with FakeDashScope() as fake:
        fake.task_seconds = 0.3
        fake.inject("create", Fault.delay(1.0))
        settings = make_settings(
            f'[vendors.ds]\nkind = "dashscope"\napi_key = "{fake.api_key}"\n'
            f'base_url = "{fake.base_url}"\npoll_interval_s = 0.05\n'
        )
        settings.worker.stop_grace_s = grace
        request = EditRequest(images=[data_uri(png((512, 512)))], function="colorization")
        async with Editor(settings) as editor:
            task = await editor.edit_image(request.model_copy(update={"vendor": "ds"}))
            for _ in range(500):  # until the submission has left
                if fake.requests_to("create"):
                    break
                await asyncio.sleep(0.01)
            assert editor.worker is not None
            await editor.worker.stop()
            stopped = await editor.store.get(task.id)
        async with Editor(settings) as editor:
            done = await editor.check_task(task.id, wait_seconds=30)
    assert fake.submissions == 1
    if grace:
        assert stopped.vendor_task_id, "the vendor's task id did not reach the store"
        assert done.status == TaskStatus.succeeded, done.error
    else:  # what a stop without grace costs: the task the vendor accepted is failed
        assert not stopped.vendor_task_id
        assert done.status == TaskStatus.failed and done.error is not None
        assert "not billed twice" in done.error.message


async def test_a_task_query_throttled_past_max_retries_is_asked_again_not_failed(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The vendor has the task (and bills it): a throttled status query is not a reason to
    # give up after max_retries, only after worker.callback_timeout_s.
    monkeypatch.setattr(limits, "BACKOFF_BASE_S", 0.01)
    with FakeDashScope() as fake:
        fake.inject("task", *[ds_fake.rate_limited() for _ in range(6)])
        task = await colorize_at(fake, make_settings, "max_retries = 2\n")
    assert task.status == TaskStatus.succeeded, task.error
    assert len(fake.requests_to("task")) >= 7 and fake.submissions == 1
