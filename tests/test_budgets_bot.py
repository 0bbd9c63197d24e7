"""Budgets through the Telegram bot: the real PTB Application against the fake Bot API, its
edits sent to the fake DashScope (¥0.14 an image). The edit past the user's budget is
refused with the limit and when it resets, nothing reaches the vendor, /status shows what is
left, and the next day (an injected clock) the budget is whole again."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests import test_bot as harness
from tests.conftest import sample
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.telegram import FakeBotAPI
from tests.test_bot import FRIEND, USER, BotSettings, bot, rt_of, says, text_of
from tests.test_budgets import Clock
from tests.test_e2e_vendors import KEY, dashscope_table

fake = harness.fake  # the harness's fixtures, shared
bot_settings = harness.bot_settings


@pytest.fixture
def dashscope() -> Iterator[FakeDashScope]:
    with FakeDashScope(api_key=KEY) as server:
        yield server


async def test_the_bot_refuses_an_edit_past_the_budget_and_status_shows_what_is_left(
    fake: FakeBotAPI, bot_settings: BotSettings, dashscope: FakeDashScope
) -> None:
    extra = (
        dashscope_table("dashscope", dashscope)
        + '[routing]\norder = ["dashscope"]\n'
        + f'[budgets.owners."tg:{USER}"]\nday = {{ CNY = 0.2 }}\n'
    )
    clock = Clock(2030, 1, 30, 23, 0)
    async with bot(bot_settings(extra=extra)) as app:
        rt_of(app).editor.clock = clock

        async def colorize(user: int = USER) -> None:
            mark = fake.call_count
            fake.user_sends_photo(user, user, sample("coffee.png"), "/colorize")
            await fake.wait_for("sendPhoto", since=mark, timeout=30)

        await colorize()
        assert dashscope.submissions == 1
        mark = fake.call_count
        fake.user_sends_photo(USER, USER, sample("coffee.png"), "/colorize")
        (refusal,) = await fake.wait_for("editMessageText", since=mark, predicate=says("budget"))
        reply = text_of(refusal)
        assert reply.startswith("❌ Budget: this edit would cost 0.14 CNY"), reply
        assert "you have used 0.14 of your 0.2 CNY for today (UTC)" in reply
        assert "starts again at 2030-01-31 00:00 UTC (in 1 h 0 min)" in reply
        assert dashscope.submissions == 1  # nothing reached the vendor

        status = text_of(await harness.ask(fake, "/status"))
        assert "Spent today (UTC): 0.14 of 0.2 CNY (0.06 left)" in status, status
        await colorize(FRIEND)  # another user's budget is another
        assert dashscope.submissions == 2

        clock.set(2030, 1, 31, 0, 0, 1)  # a new day
        await colorize()
        assert dashscope.submissions == 3
        status = text_of(await harness.ask(fake, "/status"))
        assert "Spent today (UTC): 0.14 of 0.2 CNY (0.06 left); this month: 0.28 CNY" in status
