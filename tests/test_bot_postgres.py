"""The bot's tables on either database: every storage call on SQLite and on PostgreSQL, and
the bot end to end (edits, restarts, delivery exactly once) on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pydantic import SecretStr

from bots import storage
from tests import test_bot as harness
from tests.conftest import MakeSettings, png, sample
from tests.contract.test_task_store import new_task
from tests.fakes.telegram import FakeBotAPI
from tests.pg import empty_url
from tests.test_bot import USER, BotSettings, bot, says, wait_delivered
from tools.config import Settings
from tools.models import TaskStatus
from tools.service import Editor
from tools.store import Store, open_store

fake = harness.fake  # the bot harness's fixtures, shared
bot_settings = harness.bot_settings


@pytest.fixture(params=["sqlite", "postgres"])
async def settings_on(request: pytest.FixtureRequest, make_settings: MakeSettings) -> Settings:
    settings = make_settings()
    if request.param == "postgres":
        settings.store.url = SecretStr(await empty_url())
    return settings


@pytest.fixture
async def opened(settings_on: Settings) -> AsyncIterator[tuple[Store, storage.Db]]:
    """The core's store (its tables first: the bot's refer to them), then the bot's."""
    store = await open_store(settings_on.store)
    db = await storage.open_db(settings_on.store)
    yield store, db
    await db.close()
    await store.close()


async def test_every_storage_call_on_either_database(opened: tuple[Store, storage.Db]) -> None:
    store, db = opened
    task_id = await new_task(store)
    big = 7_000_000_000  # chat ids do not fit in 32 bits
    await storage.add_task(
        db, task_id=task_id, chat_id=-big, user_id=big, request_message_id=5, status_message_id=6
    )
    row = await storage.get_task(db, task_id)
    assert row is not None and (row.chat_id, row.user_id, row.delivery) == (-big, big, "pending")
    assert await storage.task_for_message(db, -big, 5) == task_id
    assert await storage.task_for_status_message(db, -big, 6) == task_id
    await storage.set_status_text(db, task_id, "⏳ Queued")
    assert [r.task_id for r in await storage.pending(db)] == [task_id]

    claimed = await storage.claim(db, task_id)
    assert claimed is not None and claimed.attempts == 1
    assert await storage.claim(db, task_id) is None  # one claimer only
    await storage.set_sent_items(db, task_id, 2)
    await storage.set_sent_items(db, task_id, 1)  # never goes back
    await storage.add_messages(db, -big, [(10, task_id, 0, "f0"), (11, task_id, 1, None)])
    await storage.add_messages(db, -big, [(10, task_id, 1, "f1")])  # sent again: replaced
    assert await storage.result_for_message(db, -big, 10) == (task_id, 1)
    assert await storage.result_for_message(db, -big, 12) is None
    await storage.retry_later(db, task_id, "timeout", 0)
    assert await storage.claim(db, task_id) is not None
    assert await storage.recover_interrupted(db) == 1  # a crash mid-delivery
    await storage.claim(db, task_id)
    await storage.mark_delivered(db, task_id)
    row = await storage.get_task(db, task_id)
    assert row is not None and (row.delivery, row.sent_items, row.status_text) == (
        "delivered",
        2,
        "⏳ Queued",
    )
    await storage.mark_failed(db, task_id, "too late")  # a delivered row stays delivered
    assert (await storage.get_task(db, task_id)).delivery == "delivered"  # type: ignore[union-attr]

    settings = await storage.get_user(db, big)
    assert (settings.vendor, settings.n, settings.originals) == (None, 1, False)
    settings.vendor, settings.n, settings.seed, settings.originals = "local", 3, 42, True
    await storage.save_user(db, settings)
    await storage.save_user(db, settings)  # saved again: updated in place
    assert await storage.get_user(db, big) == settings

    await storage.record_update(db, 900001, '{"update_id": 900001}')
    await storage.record_update(db, 900001, '{"update_id": 900001}')  # delivered twice
    await storage.record_update(db, 900002, '{"update_id": 900002}')
    assert not await storage.update_done(db, 900001)
    await storage.mark_update_done(db, 900001)
    assert await storage.update_done(db, 900001)
    assert [uid for uid, _ in await storage.open_updates(db)] == [900002]
    assert await storage.forget_handled_updates(db, -1) == 1

    # The bot's rows go with their task when the store forgets it.
    await store.finish(task_id, None, TaskStatus.canceled)
    await store.cleanup(retention_days=-1)
    assert await storage.get_task(db, task_id) is None
    assert await storage.result_for_message(db, -big, 10) is None


@pytest.fixture
async def pg_bot_settings(bot_settings: BotSettings) -> BotSettings:
    url = await empty_url()

    def make(extra: str = "", **telegram: object) -> Settings:
        settings = bot_settings(extra, **telegram)
        settings.store.url = SecretStr(url)
        return settings

    return make


async def test_the_bot_on_postgres_edits_and_delivers_once_across_restarts(
    fake: FakeBotAPI, pg_bot_settings: BotSettings
) -> None:
    settings = pg_bot_settings(max_concurrent_per_user=5)
    async with bot(settings) as app:
        fake.user_sends_photo(USER, USER, sample("chelsea.png"), "/adjust rotate 90")
        await fake.wait_for("sendPhoto")
        await fake.wait_for("editMessageText", predicate=says("✅ Done"))
        await wait_delivered(app)
    # Two more edits taken while no worker runs; they end elsewhere while the bot is down.
    async with bot(settings, run_worker=False):
        for caption in ["/adjust grayscale", "/lineart"]:
            fake.user_sends_photo(USER, USER, png((60, 40)), caption)
        await fake.wait_for("editMessageText", count=2, predicate=says("Queued"))
    async with Editor(settings) as editor:
        for task in await editor.list_tasks():
            assert (await editor.check_task(task.id, wait_seconds=30)).status == "succeeded"
    for _ in range(2):  # the first restart delivers them, the second nothing again
        async with bot(settings) as app:
            await fake.wait_for("sendPhoto", count=3)
            await wait_delivered(app)
    assert len(fake.calls_to("sendPhoto")) == 3
    assert not settings.store.path.exists()  # no SQLite file anywhere: all in PostgreSQL
