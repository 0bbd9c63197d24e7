"""The bot's own migration set: a database made before the bot took its tables out of the
core's set runs none of its old steps again (only the steps added since), keeps its rows,
schema and foreign keys, and serves the bot."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bots import storage
from bots.migrations import BOT
from tests import test_bot as harness
from tests.conftest import png
from tests.fakes.telegram import FakeBotAPI
from tests.test_bot import USER, BotSettings, bot, says, wait_delivered
from tools.store.migrations import CORE
from tools.store.sqlite import SQLiteStore as Store

fake = harness.fake  # the bot harness's fixtures, shared
bot_settings = harness.bot_settings

#: Made by the code of commit 93062b4, when the core's set held all six steps.
BEFORE = Path(__file__).resolve().parent / "data" / "retouch-93062b4.sql"
OLD_TASK = "0a86ec8095654bb6a1531436f8f73a30"
#: The steps that database ran, in the order the core's single set had them.
OLD_CORE = ["m001_tasks", "m002_blobs", "m004_link_results_in_the_database"]
OLD_CORE += ["m006_idempotency_keys"]
OLD_BOT = ["m003_telegram", "m005_telegram_inbox"]


def made_before(path: Path) -> None:
    con = sqlite3.connect(path)
    con.executescript(BEFORE.read_text(encoding="utf-8"))
    con.close()


def snapshot(path: Path) -> tuple[list[tuple[object, ...]], set[tuple[object, ...]]]:
    """The recorded steps (name, when applied) and the schema: each index, trigger and view
    (type, name, SQL), and each table's columns (name, type, not null, default, key) and
    foreign keys, so that a later step may add a column but not change or drop one."""
    con = sqlite3.connect(path)
    try:
        steps = con.execute("SELECT name, applied_at FROM _migrations ORDER BY name").fetchall()
        objects = con.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        schema = {o for o in objects if o[0] != "table"}
        for _, table, _ in (o for o in objects if o[0] == "table"):
            columns = con.execute(f"PRAGMA table_info('{table}')").fetchall()
            schema |= {("column", table, *c) for c in columns}
            keys = con.execute(f"PRAGMA foreign_key_list('{table}')").fetchall()
            schema |= {("foreign key", table, *k) for k in keys}
    finally:
        con.close()
    return steps, schema


def test_the_two_sets_are_the_old_steps_under_their_old_names(tmp_path: Path) -> None:
    made_before(tmp_path / "old.db")
    steps, _ = snapshot(tmp_path / "old.db")
    assert [s.__name__ for s in CORE][: len(OLD_CORE)] == OLD_CORE
    assert [s.__name__ for s in BOT][: len(OLD_BOT)] == OLD_BOT
    assert sorted([*OLD_CORE, *OLD_BOT]) == [name for name, _ in steps]


async def test_a_new_database_gets_the_schema_the_old_steps_made(tmp_path: Path) -> None:
    made_before(tmp_path / "old.db")
    store = await Store.open(tmp_path / "new.db", tmp_path / "files")
    db = await storage.connect(tmp_path / "new.db")
    await db.close()
    await store.close()
    # Everything the old steps made is made the same way (later steps only add, columns too).
    assert snapshot(tmp_path / "new.db")[1] >= snapshot(tmp_path / "old.db")[1]


async def test_an_old_database_runs_no_step_again_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "retouch.db"
    made_before(path)
    before = snapshot(path)
    store = await Store.open(path, tmp_path / "files")
    db = await storage.connect(path)
    try:
        steps, schema = snapshot(path)
        assert set(before[0]) <= set(steps)  # no old step applied again (same times)
        added = {name for name, _ in steps} - {name for name, _ in before[0]}
        assert added == {s.__name__ for s in [*CORE, *BOT]} - {*OLD_CORE, *OLD_BOT}
        assert schema >= before[1]  # nothing the old steps made was changed
        assert (await storage.get_user(db, USER)).originals
        assert await storage.result_for_message(db, USER, 3) == (OLD_TASK, 0)
        assert [uid for uid, _ in await storage.open_updates(db)] == [900001]
        # The bot's rows still go with their task (the old steps' foreign keys).
        await store.db.execute("UPDATE tasks SET finished_at = 1 WHERE id = ?", (OLD_TASK,))
        await store.cleanup(retention_days=1)
        assert await storage.get_task(db, OLD_TASK) is None
        assert await storage.result_for_message(db, USER, 3) is None
    finally:
        await db.close()
        await store.close()


async def test_the_bot_serves_from_an_old_database(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    settings = bot_settings()
    made_before(settings.store.path)
    before = snapshot(settings.store.path)
    async with bot(settings) as app:
        # The update the old process received but never handled is handled now.
        await fake.wait_for("sendMessage", predicate=says("Examples"))
        # The user's old setting (originals on) is read: the result comes as a file.
        fake.user_sends_photo(USER, USER, png((40, 30)), "/adjust grayscale")
        await fake.wait_for("sendDocument")
        await wait_delivered(app)
        assert await storage.open_updates(harness.rt_of(app).db) == []
    assert set(before[0]) <= set(snapshot(settings.store.path)[0])
