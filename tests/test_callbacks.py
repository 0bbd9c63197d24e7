"""Vendor callbacks through the real HTTP app (issue 16, defects 1 and 2): the secret in the
URL, only a task waiting on that vendor, at most its ``n`` results, once; the body limits;
and the task record clients see (no vendor task id, no server path)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from server import callbacks as route
from server.app import build_server
from server.http import starlette_app
from tests.conftest import MakeSettings, png
from tests.fakes.http import make_png
from tests.fakes.softsugar import FakeSoftSugar
from tests.servers import free_port, start_http_server, wait_healthy
from tests.test_secrets import http_app
from tools.callbacks import SECRET_DIR, callback_secrets, load_secret
from tools.cli import main as cli
from tools.config import Settings
from tools.errors import ConfigError, NotFound, StoreUnavailable, VendorFault
from tools.models import WITHHELD, EditRequest, ImageFailure, Task, TaskStatus, hide_paths
from tools.service import Editor
from tools.store import TaskRecord
from tools.vendors.base import Finished, OutputImage
from tools.worker.intake import at_most

SECRET = "callbacks-test-secret-0123456789abcdefgh"
OTHER_SECRET = "callbacks-other-secret-0123456789abcdefg"
#: The fake numbers its tasks from here, so a vendor task id is easy to look for.
FIRST_VENDOR_ID = 730_001_337


def sugar_table(name: str, fake: FakeSoftSugar, secret: str | None) -> str:
    table = (
        f'[vendors."{name}"]\nkind = "softsugar"\napp_id = "{fake.app_id}"\n'
        f'app_key = "{fake.app_key}"\nbase_url = "{fake.base_url}"\n'
        f'callback_url = "https://retouch.example.com/callbacks/{name}"\n'
    )
    return table + (f'callback_secret = "{secret}"\n' if secret else "")


@pytest.fixture
def fake() -> Iterator[FakeSoftSugar]:
    with FakeSoftSugar() as server:
        server.task_seconds = None  # the vendor never finishes by itself: the test calls back
        server._next_id = FIRST_VENDOR_ID
        yield server


@pytest.fixture
def sugar_settings(make_settings: MakeSettings, fake: FakeSoftSugar) -> Settings:
    return make_settings(
        '[media]\nallow_networks = ["127.0.0.0/8"]\n'
        + sugar_table("softsugar", fake, SECRET)
        + sugar_table("sugar2", fake, OTHER_SECRET)
    )


@dataclass
class App:
    """The real Starlette app in process, its Editor, and the fake vendor."""

    client: httpx.AsyncClient
    editor: Editor
    fake: FakeSoftSugar

    async def post(
        self, body: bytes | dict[str, Any], path: str = f"/callbacks/softsugar/{SECRET}", **kw: Any
    ) -> httpx.Response:
        content = kw.pop("content", json.dumps(body).encode() if isinstance(body, dict) else body)
        headers = {"Content-Type": "application/json", **kw.pop("headers", {})}
        return await self.client.post(path, content=content, headers=headers, **kw)

    async def waiting(self, n: int = 1) -> TaskRecord:
        """A task that SoftSugar has accepted and that waits for its callback."""
        image = self.fake.put_file(make_png(64, 48))
        task = await self.editor.edit_image(
            EditRequest(images=[image], prompt="a hat", vendor="softsugar", n=n)
        )
        for _ in range(400):
            record = await self.editor.store.get(task.id)
            if record.vendor_task_id:
                assert record.status == TaskStatus.running
                return record
            await asyncio.sleep(0.025)
        raise AssertionError("SoftSugar never took the task")

    def done(self, record: TaskRecord, images: int = 1) -> dict[str, Any]:
        urls = [self.fake.put_file(png((40, 30), (10, 20 + i, 30))) for i in range(images)]
        return {"taskId": record.vendor_task_id, "status": "SUCCEEDED", "code": 0, "images": urls}

    async def still_waiting(self, record: TaskRecord) -> None:
        now = await self.editor.store.get(record.id)
        assert (now.status, now.results, now.error) == (TaskStatus.running, [], None)


@contextlib.asynccontextmanager
async def running(settings: Settings, fake: FakeSoftSugar) -> AsyncIterator[App]:
    """The app for one test (entered and left in the test's own task, as anyio wants)."""
    async with http_app(settings) as (asgi, client):
        yield App(client, starlette_app(asgi).state.editor, fake)


# ---- the secret ------------------------------------------------------------------------------


async def test_a_forged_callback_without_the_secret_changes_nothing(
    sugar_settings: Settings, fake: FakeSoftSugar
) -> None:
    """Defect 2: anyone who knew a vendor task id could end a waiting task."""
    async with running(sugar_settings, fake) as app:
        record = await app.waiting()
        forged = app.done(record)
        failed = {"taskId": record.vendor_task_id, "status": "FAILED", "code": 5001, "message": "x"}
        wrong = [
            "/callbacks/softsugar",
            "/callbacks/softsugar/",
            "/callbacks/softsugar/wrong",
            f"/callbacks/softsugar/{SECRET[:-1]}",
            f"/callbacks/softsugar/{SECRET}x",
            f"/callbacks/softsugar/{SECRET.upper()}",
            f"/callbacks/softsugar/{SECRET}%00",
            f"/callbacks/softsugar/{OTHER_SECRET}",  # another instance's secret
            f"/callbacks/sugar2/{SECRET}",
            f"/callbacks/local/{SECRET}",
            f"/callbacks/nope/{SECRET}",
            "/callbacks/softsugar/%C3%A9t%C3%A9",
        ]
        for path in wrong:
            for body in (forged, failed):
                answer = await app.post(body, path)
                assert answer.status_code in (400, 404, 405, 307), (path, answer.status_code)
                assert answer.status_code != 200
            await app.still_waiting(record)
        named = [p for p in wrong if p.count("/") == 3 and not p.endswith("/")]
        refusals = {(await app.post(forged, p)).text for p in named}
        assert refusals == {'{"code":"not_found","message":"no such callback URL"}'}
        answer = await app.post(forged)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"code": 0, "task_id": record.id, "ended": True}
        task = await app.editor.check_task(record.id)
        assert task.status == TaskStatus.succeeded and len(task.results) == 1


async def test_the_secret_is_compared_whole_for_every_vendor(
    sugar_settings: Settings, fake: FakeSoftSugar
) -> None:
    async with running(sugar_settings, fake) as app:
        editor = app.editor
        assert editor.callback_secret_matches("softsugar", SECRET)
        assert editor.callback_secret_matches("sugar2", OTHER_SECRET)
        for vendor, given in [
            ("softsugar", ""),
            ("softsugar", SECRET[:-1]),
            ("softsugar", SECRET + "a"),
            ("softsugar", OTHER_SECRET),
            ("softsugar", SECRET[:-1] + "é"),
            ("softsugar", "\x00" * len(SECRET)),
            ("local", SECRET),
            ("local", ""),
            ("nope", SECRET),
        ]:
            assert not editor.callback_secret_matches(vendor, given), (vendor, given)


async def test_the_vendors_own_signature_is_checked_before_parsing(
    sugar_settings: Settings, fake: FakeSoftSugar, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(sugar_settings, fake) as app:
        record = await app.waiting()
        vendor = app.editor.vendors["softsugar"]
        monkeypatch.setattr(vendor, "verify_callback", lambda body, headers: False)

        def never(body: bytes, headers: object) -> None:
            raise AssertionError("parsed before the signature was checked")

        monkeypatch.setattr(vendor, "parse_callback", never)
        answer = await app.post(app.done(record))
        assert answer.status_code == 404 and "signature" in answer.json()["message"]
        await app.still_waiting(record)


# ---- which task, how many results, how often -------------------------------------------------


async def test_only_a_task_waiting_on_that_vendor_takes_a_callback(
    sugar_settings: Settings, fake: FakeSoftSugar
) -> None:
    async with running(sugar_settings, fake) as app:
        record = await app.waiting()
        other = f"/callbacks/sugar2/{OTHER_SECRET}"
        # Another instance of the same kind, with its own secret, cannot end this task.
        answer = await app.post(app.done(record), other)
        assert answer.status_code == 404 and answer.json()["code"] == "not_found"
        # No task has that vendor id; the answer does not echo a huge id back.
        unknown = {**app.done(record), "taskId": "9" * 5000}
        answer = await app.post(unknown)
        assert answer.status_code == 404 and len(answer.text) < 300
        await app.still_waiting(record)
        # A queued task does not take a callback either (no worker may claim it meanwhile).
        assert app.editor.worker is not None
        await app.editor.worker.stop()
        app.editor.worker = None  # stopped once: the Editor's close must not stop it again
        store: Any = app.editor.store
        await store.execute("UPDATE tasks SET status = 'queued' WHERE id = ?", (record.id,))
        answer = await app.post(app.done(record))
        assert answer.status_code == 404
        await store.execute("UPDATE tasks SET status = 'running' WHERE id = ?", (record.id,))
        assert (await app.post(app.done(record))).json()["ended"] is True
        # Ended: a forged failure (or another success) changes nothing.
        before = await app.editor.check_task(record.id)
        failed = {"taskId": record.vendor_task_id, "status": "FAILED", "code": 5001, "message": "x"}
        for body in (failed, app.done(record, images=2)):
            answer = await app.post(body)
            assert answer.status_code == 200
            assert answer.json()["ended"] is False and "nothing changed" in answer.json()["message"]
        after = await app.editor.check_task(record.id)
        assert after == before and after.status == TaskStatus.succeeded


async def test_forty_results_for_n_1_keep_one(
    sugar_settings: Settings, fake: FakeSoftSugar
) -> None:
    """Defect 2: one forged callback for a task of n = 1 stored 40 results. The first n are
    kept (the vendor has the task and bills it; refusing would lose a paid result), the rest
    are neither fetched nor stored nor billed, and a note says so."""
    async with running(sugar_settings, fake) as app:
        record = await app.waiting(n=1)
        fetched = len(app.fake.requests_to("files"))
        answer = await app.post(app.done(record, images=40))
        assert answer.status_code == 200 and answer.json()["ended"] is True
        task = await app.editor.check_task(record.id)
        assert task.status == TaskStatus.succeeded
        assert len(task.results) == 1 and task.billed_images == 1
        assert any("delivered 40 image(s)" in n and "first 1 kept" in n for n in task.notes)
        assert len(app.fake.requests_to("files")) - fetched == 1


def test_at_most_n_counts_failures_too() -> None:
    images = [OutputImage(url=f"https://x/{i}.png") for i in range(3)]
    failures = [ImageFailure(index=i, code="x", message="m") for i in range(5)]
    kept = at_most(Finished(images=images, failures=failures), 2, "v")
    assert (len(kept.images), kept.failures, kept.billed_images) == (2, [], 2)
    kept = at_most(Finished(images=[], failures=failures, billed_images=0), 4, "v")
    assert (len(kept.failures), kept.billed_images) == (4, 0)
    same = Finished(images=images[:1], failures=failures[:1])
    assert at_most(same, 2, "v") is same


async def test_a_replayed_callback_is_taken_once(
    sugar_settings: Settings, fake: FakeSoftSugar
) -> None:
    async with running(sugar_settings, fake) as app:
        record = await app.waiting()
        body = app.done(record)
        fetched = len(app.fake.requests_to("files"))
        answers = await asyncio.gather(*(app.post(body) for _ in range(6)))
        assert [a.status_code for a in answers] == [200] * 6
        assert sorted(a.json()["ended"] for a in answers) == [False] * 5 + [True]
        for _ in range(3):  # the vendor retries later
            assert (await app.post(body)).json()["ended"] is False
        task = await app.editor.check_task(record.id)
        assert len(task.results) == 1
        assert len(app.fake.requests_to("files")) - fetched == 1


# ---- bad input: a clear 4xx, never a 5xx ---------------------------------------------------


def nested(depth: int) -> bytes:
    return b'{"taskId": "1", "images": ' + b"[" * depth + b"]" * depth + b"}"


BAD_BODIES = {
    "deep within the size limit": (nested(30_000), 400),
    "100 000 deep": (b"[" * 100_000, 413),
    "deep objects": (b'{"a":' * 20_000 + b"1" + b"}" * 20_000, 413),
    "33 deep": (nested(33), 400),
    "not JSON": (b"taskId=1&status=SUCCEEDED", 400),
    "not UTF-8": (b'{"taskId": "\xff\xfe"}', 400),
    "a list": (b"[1, 2, 3]", 400),
    "a huge list": (json.dumps([1] * 20_000).encode(), 400),
    "empty": (b"", 400),
    "null": (b"null", 400),
    "no task": (b'{"status": "SUCCEEDED", "images": ["https://x/y.png"]}', 400),
    "a task id that is an object": (b'{"taskId": {"a": 1}}', 400),
    "one byte too many": (b" " * route.MAX_CALLBACK_BYTES + b"{}", 413),
    "a list of a million URLs": (json.dumps(["https://x/y.png"] * 1_000_000).encode(), 413),
}


@pytest.mark.parametrize("case", list(BAD_BODIES))
async def test_bad_bodies_get_a_clear_4xx(
    sugar_settings: Settings, fake: FakeSoftSugar, case: str
) -> None:
    """Defect 1: a body nested 100 000 deep was a 500 with a RecursionError."""
    async with running(sugar_settings, fake) as app:
        record = await app.waiting()
        body, status = BAD_BODIES[case]
        answer = await app.post(body)
        assert answer.status_code == status, answer.text
        reply = answer.json()
        assert set(reply) == {"code", "message"} and "Traceback" not in answer.text
        await app.still_waiting(record)
        assert (await app.post(app.done(record))).json()["ended"] is True


async def test_deep_nesting_is_refused_before_the_parser(
    sugar_settings: Settings, fake: FakeSoftSugar
) -> None:
    async with running(sugar_settings, fake) as app:
        with pytest.raises(VendorFault, match="nests deeper"):
            await app.editor.vendor_callback("softsugar", b"[" * 100_000, {})
        inner = json.dumps({"taskId": "1", "images": "[" * 60_000}).encode()  # JSON in a string
        with pytest.raises(NotFound):  # read without a RecursionError: no task "1" waits
            await app.editor.vendor_callback("softsugar", inner, {})


async def test_a_store_outage_is_a_503_the_vendor_retries(
    sugar_settings: Settings, fake: FakeSoftSugar, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(sugar_settings, fake) as app:
        record = await app.waiting()

        async def down(*args: object) -> None:
            raise StoreUnavailable(cause="test")

        with monkeypatch.context() as patch:
            patch.setattr(app.editor.store, "find_by_vendor_task", down)
            answer = await app.post(app.done(record))
        assert answer.status_code == 503 and answer.headers["Retry-After"]
        assert answer.json()["error"] == "store_unavailable"
        await app.still_waiting(record)
        assert (await app.post(app.done(record))).json()["ended"] is True


@pytest.mark.parametrize(
    ("content_type", "status"),
    [
        ("text/plain", 415),
        ("application/x-www-form-urlencoded", 415),
        ("multipart/form-data; boundary=x", 415),
        ("application/xml", 415),
        ("image/png", 415),
        ("application/json; charset=utf-8", 200),
        ("Application/JSON", 200),
        ("application/vnd.softsugar+json", 200),
        (None, 200),
    ],
)
async def test_content_types(
    sugar_settings: Settings, fake: FakeSoftSugar, content_type: str | None, status: int
) -> None:
    async with running(sugar_settings, fake) as app:
        record = await app.waiting()
        body = json.dumps(app.done(record)).encode()
        headers = {"Content-Type": content_type} if content_type else {}
        request = app.client.build_request(
            "POST", f"/callbacks/softsugar/{SECRET}", content=body, headers=headers
        )
        if content_type is None:
            request.headers.pop("Content-Type", None)
        answer = await app.client.send(request)
        assert answer.status_code == status, answer.text
        if status != 200:
            assert answer.json()["code"] == "unsupported_media_type"
            await app.still_waiting(record)


async def test_a_streamed_body_is_cut_at_the_limit(
    sugar_settings: Settings, fake: FakeSoftSugar
) -> None:
    async with running(sugar_settings, fake) as app:
        record = await app.waiting()
        sent = 0

        async def endless() -> AsyncIterator[bytes]:
            nonlocal sent
            for _ in range(200):  # 200 MB, no Content-Length
                sent += 1 << 20
                yield b" " * (1 << 20)

        answer = await app.post(b"", content=endless())
        assert answer.status_code == 413 and answer.json()["code"] == "too_large"
        assert sent <= 2 << 20  # read one chunk past the limit, not the 200 MB
        # A Content-Length past the limit is refused before a byte of the body is read.
        answer = await app.post(b"{}", headers={"Content-Length": str(200 << 20)})
        assert answer.status_code == 413
        answer = await app.post(b"{}", headers={"Content-Length": "lots"})
        assert answer.status_code == 400
        await app.still_waiting(record)


async def test_a_slow_body_is_cut_in_time(
    sugar_settings: Settings, fake: FakeSoftSugar, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(sugar_settings, fake) as app:
        monkeypatch.setattr(route, "READ_TIMEOUT_S", 0.3)
        record = await app.waiting()

        async def slow() -> AsyncIterator[bytes]:
            for _ in range(400):  # 20 s
                yield b" "
                await asyncio.sleep(0.05)

        started = time.monotonic()
        answer = await app.post(b"", content=slow())
        # cut at the read limit, not after the body (a loaded machine is slow, not that slow)
        assert answer.status_code == 408 and time.monotonic() - started < 10
        await app.still_waiting(record)


async def test_other_methods_and_paths(sugar_settings: Settings, fake: FakeSoftSugar) -> None:
    async with running(sugar_settings, fake) as app:
        assert (await app.client.get(f"/callbacks/softsugar/{SECRET}")).status_code == 405
        assert (await app.client.put(f"/callbacks/softsugar/{SECRET}")).status_code == 405
        answer = await app.post(b"{}", f"/callbacks/softsugar/{SECRET}/more")
        assert answer.status_code == 404


# ---- the record clients see ----------------------------------------------------------------


async def test_clients_see_no_vendor_task_id_and_no_server_path(
    sugar_settings: Settings,
    fake: FakeSoftSugar,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with running(sugar_settings, fake) as app:
        record = await app.waiting()
        vendor_id = str(record.vendor_task_id)
        assert vendor_id == str(FIRST_VENDOR_ID)
        data_dir = str(sugar_settings.store.dir)
        message = f"the content is sensitive (see {data_dir}/results/ab/cd.png)"
        body = {"taskId": vendor_id, "status": "FAILED", "code": 5001, "message": message}
        assert (await app.post(body)).json()["ended"] is True
        task = await app.editor.check_task(record.id)
        assert task.status == TaskStatus.failed and task.error is not None
        assert task.vendor_task_id == vendor_id  # Retouch's own code still has it
        shown = {
            "dump": task.model_dump_json(),
            "python dump": json.dumps(task.model_dump(mode="json")),
        }
        async with Client(build_server(sugar_settings)) as client:
            result = await client.call_tool("check_task", {"task_id": record.id})
            shown["mcp"] = json.dumps(result.structured_content) + str(result.content)
            listed = await client.call_tool("list_tasks", {})
            shown["mcp list"] = json.dumps(listed.structured_content) + str(listed.content)
        with contextlib.suppress(SystemExit):  # the CLI runs its own event loop
            await asyncio.to_thread(
                cli, ["--config", sugar_settings.source, "task", record.id, "--json"]
            )
        shown["cli"] = capsys.readouterr().out
        for where, text in shown.items():
            assert vendor_id not in text, where
            assert data_dir not in text and "/results/ab" not in text, where
        assert json.loads(shown["cli"])["vendor_task_id"] == WITHHELD
        assert result.structured_content is not None
        assert result.structured_content["vendor_task_id"] == WITHHELD
        assert "cd.png" in result.structured_content["error"]["message"]


def test_server_paths_leave_messages_and_notes() -> None:
    cases = {
        "Real-ESRGAN crashed: decode image /tmp/retouch-x1/in.png failed": (
            "Real-ESRGAN crashed: decode image …/in.png failed"
        ),
        "cannot identify image file '/home/u/.local/share/retouch/results/ab.png'": (
            "cannot identify image file '…/ab.png'"
        ),
        r"C:\Users\me\AppData\retouch\x.png is locked": "…/x.png is locked",
        # Not paths on the server: URLs, route names, dates.
        "see https://cdn.example/tmp/a/b.png": "see https://cdn.example/tmp/a/b.png",
        "http://[::1]/var/x/y": "http://[::1]/var/x/y",
        "register /callbacks/softsugar/<secret>": "register /callbacks/softsugar/<secret>",
        "on 2026/01/02": "on 2026/01/02",
    }
    for text, shown in cases.items():
        assert hide_paths(text) == shown
    now = "2026-01-01T00:00:00Z"
    task = Task.model_validate(
        {
            "id": "t",
            "status": "failed",
            "function": "edit",
            "vendor": "local",
            "created_at": now,
            "updated_at": now,
            "vendor_task_id": "v-123",
            "notes": ["wrote /var/lib/retouch/tmp/x.png"],
            "failures": [{"index": 0, "code": "engine_error", "message": "at /tmp/a/b.png"}],
            "error": {"code": "x", "message": "at /srv/data/c.png", "vendor_task_id": "v-123"},
        }
    )
    text = task.model_dump_json()
    assert "v-123" not in text and "/var/lib" not in text and "/tmp/a" not in text
    assert "/srv" not in text and task.vendor_task_id == "v-123"


# ---- where the secret comes from -----------------------------------------------------------


def test_a_secret_is_generated_once_and_kept_private(
    make_settings: MakeSettings, fake: FakeSoftSugar
) -> None:
    settings = make_settings(sugar_table("softsugar", fake, None))
    first = callback_secrets(settings)
    path = Path(str(settings.store.dir)) / SECRET_DIR / "softsugar"
    assert first == {"softsugar": path.read_text().strip()}
    assert len(first["softsugar"]) >= 43
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert callback_secrets(settings) == first  # kept, not made again
    # Processes starting at once on one data directory end up with one secret.
    other = Path(str(settings.store.dir)) / "elsewhere"
    with ThreadPoolExecutor(8) as pool:
        made = set(pool.map(lambda _: load_secret("sugar", "", other), range(16)))
    assert len(made) == 1
    assert sorted(p.name for p in (other / SECRET_DIR).iterdir()) == ["sugar"]  # no leftovers


def test_a_configured_secret_wins_and_bad_ones_are_refused(
    make_settings: MakeSettings, fake: FakeSoftSugar
) -> None:
    settings = make_settings(sugar_table("softsugar", fake, SECRET))
    assert callback_secrets(settings) == {"softsugar": SECRET}
    assert not (Path(str(settings.store.dir)) / SECRET_DIR).exists()
    for bad in ("short", "x" * 31, "a/b" + "x" * 40, "a b" + "x" * 40, "é" * 40):
        with pytest.raises(ConfigError, match="callback_secret"):
            make_settings(sugar_table("softsugar", fake, bad)).enabled_vendors()
    with pytest.raises(ConfigError, match="callback vendor's name"):
        callback_secrets(make_settings(sugar_table("soft sugar", fake, None)))
    assert callback_secrets(make_settings(sugar_table("soft sugar", fake, SECRET)))
    folder = Path(str(settings.store.dir)) / "broken"
    (folder / SECRET_DIR).mkdir(parents=True)
    (folder / SECRET_DIR / "softsugar").write_text("too short\n")
    with pytest.raises(ConfigError, match="delete it"):
        load_secret("softsugar", "", folder)


async def test_the_adapter_says_what_to_register() -> None:
    from tools.vendors.softsugar import SoftSugarVendor

    async with httpx.AsyncClient() as http:
        settings = SoftSugarVendor.Settings(kind="softsugar")
        message = SoftSugarVendor("ss", settings, http)._no_callback().message
    assert "/callbacks/ss" in message and "/<its callback secret>" in message


# ---- the real server -------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
async def test_the_real_server_with_a_generated_secret(
    make_settings: MakeSettings, fake: FakeSoftSugar
) -> None:
    """The vendor calls the URL the operator registered, made of the generated secret; a
    200 MB body is refused early without the server's memory growing with it (defect 1)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    settings = make_settings(
        f'[mcp]\nport = {port}\n[media]\nallow_networks = ["127.0.0.0/8"]\n'
        + sugar_table("softsugar", fake, None)
    )
    proc = start_http_server(settings.source)
    try:
        wait_healthy(proc, base)
        secret = (Path(str(settings.store.dir)) / SECRET_DIR / "softsugar").read_text().strip()
        fake.callback_url = f"{base}/callbacks/softsugar/{secret}"
        fake.task_seconds = 0.1
        async with Client(f"{base}/mcp") as client:
            done = await client.call_tool(
                "edit_image",
                {
                    "images": [fake.put_file(make_png(64, 48))],
                    "prompt": "a hat",
                    "vendor": "softsugar",
                    "wait_seconds": 30,
                },
            )
        assert done.structured_content is not None
        assert done.structured_content["status"] == "succeeded", done.content
        assert [c.status for c in fake.callbacks] == [200]

        before = rss_kib(proc.pid)
        chunk = b" " * (1 << 20)
        for path in (f"/callbacks/softsugar/{secret}", "/callbacks/softsugar/x", "/callbacks/x"):
            started = time.monotonic()
            with contextlib.suppress(httpx.TransportError), httpx.Client(timeout=30) as http:
                answer = http.post(f"{base}{path}", content=iter([chunk] * 200))
                assert answer.status_code in (400, 404, 413), answer.text
            assert time.monotonic() - started < 20
        assert rss_kib(proc.pid) - before < 40 * 1024, "the body was held in memory"
        assert httpx.get(f"{base}/health").status_code == 200
    finally:
        proc.terminate()
        out = proc.communicate(timeout=10)[0].decode(errors="replace")
    assert "Traceback" not in out, out[-3000:]
    assert secret not in out


def test_secret_file_is_not_readable_by_others_even_with_a_loose_umask(
    tmp_path: Path,
) -> None:
    old = os.umask(0)
    try:
        load_secret("v", "", tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / SECRET_DIR / "v").stat().st_mode) == 0o600
