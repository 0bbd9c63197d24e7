"""The inline buttons, each answered by its own handler: Cancel on a status message is its
owner's only, and a button no handler knows has expired."""

from __future__ import annotations

from tests import test_bot as harness
from tests.conftest import png
from tests.fakes.telegram import FakeBotAPI
from tests.test_bot import FRIEND, USER, BotSettings, bot, says

fake = harness.fake  # the bot harness's fixtures, shared
bot_settings = harness.bot_settings


async def test_cancel_button_is_the_owners_and_unknown_buttons_expire(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    async with bot(bot_settings(), run_worker=False) as app:  # nothing finishes
        fake.user_sends_photo(USER, USER, png(), "/adjust grayscale")
        (queued,) = await fake.wait_for("editMessageText", predicate=says("Queued"))
        (task,) = await harness.rt_of(app).editor.list_tasks()
        status = queued.params["message_id"]
        button = queued.params["reply_markup"]["inline_keyboard"][0][0]
        assert button["callback_data"] == f"cancel:{task.id}"

        mark = fake.call_count
        fake.user_presses_button(USER, FRIEND, status, button["callback_data"])
        (answer,) = await fake.wait_for("answerCallbackQuery", since=mark)
        assert answer.params["text"] == "That isn't one of your edits."
        assert (await harness.rt_of(app).editor.check_task(task.id)).status == "queued"

        mark = fake.call_count
        fake.user_presses_button(USER, USER, status, button["callback_data"])
        await fake.wait_for("answerCallbackQuery", since=mark)
        assert (await harness.rt_of(app).editor.check_task(task.id)).status == "canceled"
        (unmarked,) = await fake.wait_for("editMessageReplyMarkup", since=mark)
        assert unmarked.params["message_id"] == status and not unmarked.params.get("reply_markup")

        mark = fake.call_count
        fake.user_presses_button(USER, USER, status, "zoom:2")
        (answer,) = await fake.wait_for("answerCallbackQuery", since=mark)
        assert answer.params["text"] == "This button has expired."
