"""Moving house (``retouch migrate-store``): a SQLite store made by the real Editor and bot —
finished tasks with results, an upload, a chat's task and sent messages, a user's settings,
an unhandled update — copied into a fresh PostgreSQL database and another blob store (a folder
or S3), then served from there by an Editor and the bot's storage; run twice (nothing
duplicated), refused into a database holding other data, killed halfway and finished by a
second run."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from bots import storage
from tests.chaos.helpers import report_figures
from tests.conftest import MakeSettings, data_uri, png
from tests.pg import fresh_url
from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server
from tests.test_mcp import ROOT
from tools.cli import main
from tools.config import Settings
from tools.errors import IdempotencyConflict
from tools.models import BudgetLimits, EditRequest, TaskStatus
from tools.service import Editor
from tools.store import blob_key, open_store
from tools.store.moving import CORE, table_sets

CHAT, USER = -1001234567890, 7_000_000_001  # 64-bit ids, as Telegram's are
TABLES = [t.name for s in table_sets() for t in s.tables]


@dataclass
class Old:
    """The SQLite store to move, and what it holds."""

    settings: Settings
    tasks: list[str]  # oldest first
    results: dict[str, bytes]  # task id → its result's bytes
    upload: str


@pytest.fixture
async def old(make_settings: MakeSettings) -> Old:
    settings = make_settings('[vendors.local]\nesrgan = "off"\n')
    results = {}
    async with Editor(settings) as editor:
        tasks = []
        for angle in (90, 180, 270):
            request = EditRequest(
                images=[data_uri(png((40 + angle // 90, 30)))],
                function="adjust",
                prompt=f"rotate {angle}",
            )
            task = await editor.edit_image(request, owner="tg:1", key=f"k{angle}", wait_seconds=30)
            assert task.status == TaskStatus.succeeded, task.error
            tasks.append(task.id)
            results[task.id] = (await editor.result(task.id, 0))[0]
    async with Editor(settings, run_worker=False) as editor:
        canceled = await editor.edit_image(request, owner="tg:1")  # one that never ran
        assert (await editor.cancel_task(canceled.id)).status == TaskStatus.canceled
        tasks.append(canceled.id)
        upload = (await editor.put_upload(png((20, 20)), "tg:1")).uri
        await editor.users.add("bob")  # a user added at run time, and an owner's budget
        await editor.set_budget("tg:1", BudgetLimits(edits_per_hour=50))
    db = await storage.connect(settings.store.path)
    try:
        await storage.add_task(
            db,
            task_id=tasks[0],
            chat_id=CHAT,
            user_id=USER,
            request_message_id=5,
            status_message_id=6,
            status_text="✅ Done",
        )
        await storage.add_messages(db, CHAT, [(7, tasks[0], 0, "AgADfile")])
        await storage.save_user(db, storage.UserSettings(USER, "local", 2, 42, True))
        await storage.record_update(db, 99, '{"update_id": 99}')  # not handled yet
    finally:
        await db.close()
    return Old(settings, tasks, results, upload)


async def move(
    capsys: pytest.CaptureFixture[str], old: Old, url: str, *extra: str
) -> tuple[int, str]:
    """``retouch migrate-store`` in this process (its own event loop, in a thread): its exit
    code and what it printed."""
    args = ["--config", str(old.settings.store.path.parent / "config.toml"), "migrate-store"]
    args += ["--from", f"sqlite://{old.settings.store.path}", "--to", url, *extra]

    def run() -> int:
        with pytest.raises(SystemExit) as exited:
            main(args)
        return int(exited.value.code or 0)

    code = await asyncio.to_thread(run)
    return code, capsys.readouterr().err


async def counts(url: str) -> dict[str, int]:
    db = await asyncpg.connect(url)
    try:
        return {t: await db.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
    finally:
        await db.close()


def on_postgres(old: Old, url: str, **store: Any) -> Settings:
    settings = old.settings.model_copy(deep=True)
    settings.store.url = SecretStr(url)
    for name, value in store.items():
        setattr(settings.store, name, value)
    return settings


async def serves_the_old_history(old: Old, settings: Settings) -> None:
    """An Editor and the bot's storage on the new store answer as the old ones did."""
    async with Editor(settings) as editor:
        listed = await editor.list_tasks(owner="tg:1")
        assert [t.id for t in listed] == list(reversed(old.tasks))  # seq order kept
        for task_id, data in old.results.items():
            task = await editor.check_task(task_id)
            assert task.status == TaskStatus.succeeded
            assert await editor.result(task_id, 0) == (data, "image/png")
        assert (await editor.check_task(old.tasks[-1])).status == TaskStatus.canceled
        # The idempotency keys came along with their requests' fingerprints: the same
        # request starts no new task, another under that key is a conflict naming the task.
        same = EditRequest(images=[data_uri(png((41, 30)))], function="adjust", prompt="rotate 90")
        assert (await editor.edit_image(same, owner="tg:1", key="k90")).id == old.tasks[0]
        again = EditRequest(images=[data_uri(png())], function="adjust", prompt="rotate 90")
        with pytest.raises(IdempotencyConflict, match=old.tasks[0]):
            await editor.edit_image(again, owner="tg:1", key="k90")
        assert (await editor.upload(old.upload.rsplit("/", 1)[1], "tg:1")).width == 20
        assert [u.name for u in await editor.users.list() if u.active] == ["bob"]
        assert (await editor.limits("tg:1")).edits_per_hour == 50
        new = await editor.edit_image(again, owner="tg:1", wait_seconds=30)  # seq goes on
        assert [t.id for t in await editor.list_tasks(owner="tg:1", limit=2)] == [
            new.id,
            old.tasks[-1],
        ]
        assert new.status == TaskStatus.succeeded
        # Each task's log came along as it was (no step made up for copied tasks), and new
        # steps are numbered after the copied ones.
        moved = [s.kind for s in await editor.store.steps(old.tasks[0])]
        assert moved == ["queued", "claimed", "downloaded", "ended"]
        canceled = [s.kind for s in await editor.store.steps(old.tasks[-1])]
        assert canceled == ["queued", "cancel", "ended"]
        fresh = await editor.store.steps(new.id)
        assert [s.kind for s in fresh] == ["queued", "claimed", "downloaded", "ended"]
        copied = [s.id for t in old.tasks for s in await editor.store.steps(t)]
        assert fresh[0].id > max(copied)
    db = await storage.open_db(settings.store)
    try:
        row = await storage.get_task(db, old.tasks[0])
        assert row is not None and (row.chat_id, row.user_id, row.status_text) == (
            CHAT,
            USER,
            "✅ Done",
        )
        assert await storage.result_for_message(db, CHAT, 7) == (old.tasks[0], 0)
        assert await storage.get_user(db, USER) == storage.UserSettings(USER, "local", 2, 42, True)
        assert await storage.open_updates(db) == [(99, '{"update_id": 99}')]
    finally:
        await db.close()


# ---- the move --------------------------------------------------------------------------------


async def test_a_sqlite_store_moves_into_postgresql_and_a_second_run_changes_nothing(
    old: Old, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = await fresh_url()
    code, said = await move(capsys, old, url, "--to-blobs", str(tmp_path / "moved"))
    assert code == 0, said
    assert "tasks 4 (4 new)" in said and "tg_users 1 (1 new)" in said, said
    assert "nothing was deleted from the source" in said
    assert re.search(r"^tasks +4/4 +100% \[#+\]", said, re.M), said  # the progress bar
    first = await counts(url)
    assert first == {
        "blobs": 7,  # 3 inputs, 3 results, 1 upload (the canceled task shares an input)
        "tasks": 4,
        "idempotency_requests": 3,  # the three keyed tasks' fingerprints
        "task_blobs": 7,
        "task_steps": 15,  # queued, claimed, downloaded, ended ×3; queued, cancel, ended
        "uploads": 1,
        "users": 1,
        "budget_overrides": 1,
        "console_sessions": 0,
        "tg_tasks": 1,
        "tg_messages": 1,
        "tg_users": 1,
        "tg_inbox": 1,
    }
    # Each blob row is marked pending by the move itself, whatever the source's mark (a
    # Retouch already on the target keeps it until its tasks arrive).
    db = await asyncpg.connect(url)
    try:
        graced = await db.fetchval(
            "SELECT count(*) FROM blobs"
            " WHERE pending > 0 AND grace_until > extract(epoch FROM now())"
        )
    finally:
        await db.close()
    assert graced == first["blobs"]
    code, said = await move(capsys, old, url, "--to-blobs", str(tmp_path / "moved"))
    assert code == 0, said
    assert "tasks 4 (0 new)" in said and "blobs" in said, said
    assert await counts(url) == first  # nothing duplicated
    await serves_the_old_history(old, on_postgres(old, url, results_dir=tmp_path / "moved"))


async def test_the_metrics_tallies_and_ended_totals_move_too(
    old: Old, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The target shows the source's ``/metrics`` figures: the tallies of the tasks held
    (made again by the target's trigger as tasks arrive) and the totals of tasks ended,
    which count a task retention has forgotten; a second run does not add them again. A
    store from before the totals were kept carries its ended tasks counted instead."""
    with sqlite3.connect(old.settings.store.path) as db:  # retention forgot one ended task
        db.execute("PRAGMA foreign_keys = ON")
        db.execute("DELETE FROM tasks WHERE id = ?", (old.tasks[1],))
    source = await open_store(old.settings.store)
    try:
        tallies, ended = await source.tallies(now=0), await source.ended()
    finally:
        await source.close()
    assert sum(t.tasks for t in tallies) == 3 and sum(e.tasks for e in ended) == 4

    async def seen(url: str) -> tuple[list[Any], list[Any]]:
        target = await open_store(on_postgres(old, url).store)
        try:
            return await target.tallies(now=0), await target.ended()
        finally:
            await target.close()

    url = await fresh_url()
    for _ in range(2):
        code, said = await move(capsys, old, url, "--to-blobs", str(tmp_path / "moved"))
        assert code == 0, said
        assert await seen(url) == (tallies, ended)
    assert "task_ended 2 (0 new)" in said, said

    with sqlite3.connect(old.settings.store.path) as db:  # as a store from before m016
        db.execute("DROP TABLE task_ended")
    url = await fresh_url()
    code, said = await move(capsys, old, url, "--to-blobs", str(tmp_path / "moved2"))
    assert code == 0, said
    held, totals = await seen(url)
    assert held == tallies
    assert sum(e.tasks for e in totals) == 3  # the ended tasks it still holds


async def test_images_move_into_s3(
    old: Old,
    capsys: pytest.CaptureFixture[str],
    s3_server: S3Server,
    request: pytest.FixtureRequest,
) -> None:
    bucket = s3_server.new_bucket()
    old.settings.store.s3_endpoint_url = s3_server.endpoint_url
    old.settings.store.s3_region = REGION
    old.settings.store.s3_access_key_id = ACCESS_KEY_ID
    old.settings.store.s3_secret_access_key = SecretStr(SECRET_ACCESS_KEY)
    (old.settings.store.path.parent / "config.toml").write_text(
        '[store]\npath = "retouch.db"\nresults_dir = "results"\n'
        f's3_endpoint_url = "{s3_server.endpoint_url}"\ns3_region = "{REGION}"\n'
        f's3_access_key_id = "{ACCESS_KEY_ID}"\ns3_secret_access_key = "{SECRET_ACCESS_KEY}"\n'
    )
    url = await fresh_url()
    bulk_images(old, 40, 256 * 1024)  # 10 MB
    code, said = await move(capsys, old, url, "--to-blobs", f"s3://{bucket}/moved")
    assert code == 0, said
    assert SECRET_ACCESS_KEY not in said
    report_figures(request.config, f"migrate-store, images into S3 (moto): {rates(said)}")
    await serves_the_old_history(old, on_postgres(old, url, blobs=f"s3://{bucket}/moved"))


async def test_a_target_holding_other_data_is_refused(
    old: Old, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = await fresh_url()
    assert (await move(capsys, old, url, "--to-blobs", str(tmp_path / "moved")))[0] == 0
    db = await asyncpg.connect(url)
    try:
        await db.execute("UPDATE tasks SET prompt = 'something else' WHERE id = $1", old.tasks[1])
        await db.execute("DELETE FROM tg_users")
    finally:
        await db.close()
    code, said = await move(capsys, old, url, "--to-blobs", str(tmp_path / "moved"))
    assert code == 2
    assert f"retouch: the target already holds tasks {old.tasks[1]} with another prompt" in said
    assert "Traceback" not in said
    assert (await counts(url))["tg_users"] == 0  # stopped before the bot's tables

    other = await fresh_url()  # a PostgreSQL store already in use: its seq 1 is another task
    async with Editor(on_postgres(old, other, results_dir=tmp_path / "other")) as editor:
        await editor.edit_image(
            EditRequest(images=[data_uri(png())], function="adjust", prompt="rotate 90")
        )
    code, said = await move(capsys, old, other, "--to-blobs", str(tmp_path / "other"))
    assert code == 2 and "the target already holds other tasks (Key (seq)=(1)" in said, said


async def test_bad_places_are_one_line_errors(old: Old, capsys: pytest.CaptureFixture[str]) -> None:
    code, said = await move(capsys, old, "mysql://x/y")
    assert (code, said.strip()) == (2, "retouch: --to takes postgresql://… (or set store.url)")
    code, said = await move(capsys, old, "postgresql://nobody:pw@127.0.0.1:1/x")
    assert code == 2 and "cannot reach postgresql://nobody@127.0.0.1:1/x" in said, said
    assert "pw" not in said


# ---- killed halfway --------------------------------------------------------------------------


def grow(old: Old, count: int) -> None:
    """``count`` more tasks in the old database (copies of its first, with new ids)."""
    db = sqlite3.connect(old.settings.store.path)
    try:
        columns = [r[1] for r in db.execute("PRAGMA table_info(tasks)") if r[1] not in ("seq",)]
        template = db.execute(
            f"SELECT {', '.join(columns)} FROM tasks WHERE id = ?", (old.tasks[0],)
        ).fetchone()
        at = columns.index("id"), columns.index("idempotency_key"), columns.index("owner")
        rows = []
        for _ in range(count):
            row = list(template)
            row[at[0]], row[at[1]], row[at[2]] = uuid.uuid4().hex, None, "bulk"
            rows.append(row)
        marks = ", ".join("?" * len(columns))
        db.executemany(f"INSERT INTO tasks ({', '.join(columns)}) VALUES ({marks})", rows)
        db.commit()
    finally:
        db.close()


def bulk_images(old: Old, count: int, size: int) -> None:
    """``count`` more images of ``size`` random bytes in the old store (rows and files)."""
    db = sqlite3.connect(old.settings.store.path)
    try:
        for _ in range(count):
            data = os.urandom(size)
            sha = hashlib.sha256(data).hexdigest()
            path = old.settings.store.results_dir / blob_key(sha, "image/png")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            db.execute(
                "INSERT INTO blobs (sha256, mime_type, bytes, width, height, created_at)"
                " VALUES (?, 'image/png', ?, 1, 1, 0)",
                (sha, size),
            )
        db.commit()
    finally:
        db.close()


def rates(said: str) -> str:
    found = re.search(r"\((\d+ rows/s[^)]*)\)", said)
    return found.group(1) if found else "?"


async def test_a_move_killed_halfway_is_finished_by_running_it_again(
    old: Old, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    grow(old, 10_000)
    bulk_images(old, 40, 256 * 1024)  # 10 MB
    url = await fresh_url()
    command = [
        sys.executable,
        "-c",
        "import sys; from tools.cli import main; main(sys.argv[1:])",
        "--config",
        str(old.settings.store.path.parent / "config.toml"),
        "migrate-store",
        "--from",
        f"sqlite://{old.settings.store.path}",
        "--to",
        url,
        "--to-blobs",
        str(tmp_path / "moved"),
        "--batch",
        "200",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    assert child.stderr is not None
    seen = []
    for line in child.stderr:
        seen.append(line)
        if line.startswith("tasks") and int(line.split()[1].split("/")[0]) >= 3000:
            child.send_signal(signal.SIGKILL)  # as a crash or an impatient operator would
            break
    child.wait()
    assert child.returncode == -signal.SIGKILL, "".join(seen)
    images = [line for line in seen if line.startswith("blobs") and "MB/s" in line]
    folder_rate = images[-1].split()[-2] if images else "?"
    halfway = await counts(url)
    assert 0 < halfway["tasks"] < 10_004 and halfway["tg_tasks"] == 0, halfway

    finished = await asyncio.to_thread(
        subprocess.run, command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 0, finished.stderr
    assert (await counts(url))["tasks"] == 10_004
    assert f"tasks 10004 ({10_004 - halfway['tasks']} new)" in finished.stderr
    db = await asyncpg.connect(url)
    try:
        seqs = await db.fetchval("SELECT array_agg(seq ORDER BY seq) FROM tasks")
        next_seq = await db.fetchval("SELECT nextval(pg_get_serial_sequence('tasks', 'seq'))")
    finally:
        await db.close()
    source = sqlite3.connect(old.settings.store.path)
    try:
        assert seqs == [r[0] for r in source.execute("SELECT seq FROM tasks ORDER BY seq")]
    finally:
        source.close()
    assert next_seq == seqs[-1] + 1
    await serves_the_old_history(old, on_postgres(old, url, results_dir=tmp_path / "moved"))
    report_figures(
        request.config,
        f"migrate-store, SQLite → PostgreSQL and a folder: images at {folder_rate} MB/s; "
        f"killed at {halfway['tasks']} of 10 004 tasks, then finished ({rates(finished.stderr)})",
    )


def test_the_core_declares_its_tables_in_reference_order() -> None:
    assert [t.name for t in CORE.tables] == [
        "blobs",
        "tasks",
        "idempotency_requests",
        "task_blobs",
        "task_steps",
        "uploads",
        "users",
        "budget_overrides",
        "console_sessions",
    ]
    assert [s.name for s in table_sets()] == ["core", "telegram"]  # the bot's entry point
