"""The inbox's promise at its edges: a request that started its task is never left
unhandled (an edge the bot's chaos test, tests/chaos/, hit), and an update is handled once."""

from __future__ import annotations

import httpx
import pytest
from telegram import Update

from bots import storage as chats
from bots.telegram import build_application, running
from tests.conftest import png
from tests.fakes.telegram import FakeBotAPI
from tests.test_bot import USER, BotSettings, bot, bot_settings, fake, rt_of, says, wait_delivered

__all__ = ["bot_settings", "fake"]  # fixtures used by name


async def test_a_request_whose_task_row_is_written_is_handled_even_if_the_process_dies_then(
    fake: FakeBotAPI, bot_settings: BotSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The process dies after the handler wrote the task row and before the inbox marked the
    # update: here, the inbox never marks it. The update must not stay open, or a next
    # process stopped during its start-up leaves a handled request "unhandled" for good.
    async def died_first(db: object, update_id: int) -> None:
        return None

    monkeypatch.setattr(chats, "mark_update_done", died_first)
    async with bot(bot_settings(), run_worker=False) as app:
        fake.user_sends_photo(USER, USER, png((50, 40)), "/adjust grayscale")
        await fake.wait_for("editMessageText", predicate=says("Queued"))
        assert await chats.open_updates(rt_of(app).db) == []


async def test_an_update_queued_twice_at_once_is_handled_once(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    # After a crash the same update arrives twice: replayed from the inbox, and fetched again
    # because its confirmation never reached Telegram. Both copies can be in hand at once.
    fake.user_sends_photo(USER, USER, png((50, 40)), "/adjust grayscale")
    async with httpx.AsyncClient() as client:
        url = f"{fake.api_base_url}{fake.token}/getUpdates"
        (body,) = (await client.post(url, data={"timeout": 0})).json()["result"]
    app = build_application(bot_settings(), scan_interval=0.1)
    async with running(app, polling=False):
        for _ in range(2):
            await app.update_queue.put(Update.de_json(body, app.bot))
        await fake.wait_for("sendPhoto")
        await wait_delivered(app)
    assert len(fake.calls_to("sendMessage")) == 1  # one acknowledgement, no error reply
