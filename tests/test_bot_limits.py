"""The bot within Telegram's limits and its own: texts and captions cut to fit wherever they
are sent, per-user limits counted exactly under a flood, strangers answered a few times and
then ignored, the inbox pruned while the bot runs, the webhook secret compared in constant
time. The real PTB Application against the fake Bot API, which refuses over-long texts with
Telegram's own 400s."""

from __future__ import annotations

import asyncio
import hmac
import random
import re
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from telegram import InputFile
from telegram.ext import Application

from bots import inbox
from bots import storage as chats
from bots.access import Limits, Refusals
from bots.lengths import ALERT, CAPTION, MARK, TEXT, fit, fit_call, units
from bots.sending import Sender
from bots.settings import TelegramSettings
from bots.telegram import build_application, running, serve_webhook
from tests import test_bot as harness
from tests.conftest import data_uri, png
from tests.fakes.telegram import FakeBotAPI
from tests.test_bot import STRANGER, USER, BotSettings, bot, rt_of, says, text_of
from tests.test_bot_cli import _free_port
from tools.models import EditRequest, ResultImage, Task, TaskStatus

fake = harness.fake  # the harness's fixtures, shared
bot_settings = harness.bot_settings

EMOJI = "🎨"  # two UTF-16 code units: Telegram counts it twice


def refused(fake: FakeBotAPI) -> list[str]:
    """Every Bot API call the fake refused, as ``method: description``."""
    return [
        f"{c.method}: {(c.error or {}).get('description')}"
        for c in fake.calls
        if c.status == 400 or (c.method != "getUpdates" and not c.ok)
    ]


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def handled(app: Application, count: int) -> None:
    """Until ``count`` updates are marked handled in the inbox."""

    async def done() -> bool:
        db = rt_of(app).db
        rows = await db.execute_fetchall(
            "SELECT COUNT(*) FROM tg_inbox WHERE done_at IS NOT NULL", ()
        )
        return int(next(iter(rows))[0]) >= count

    await until(done)


# ---- Telegram's lengths --------------------------------------------------------------------


def test_fit_counts_utf16_and_cuts_with_a_visible_mark() -> None:
    assert fit("short", TEXT) == "short"
    assert fit("x" * TEXT, TEXT) == "x" * TEXT  # exactly the limit: untouched
    cut = fit("x" * (TEXT + 1), TEXT)
    assert units(cut) == TEXT and cut.endswith(MARK)
    # 3 000 emoji are 3 000 characters but 6 000 code units: too long for Telegram.
    emoji = fit(EMOJI * 3000, TEXT)
    assert units(emoji) <= TEXT and emoji.endswith(MARK) and emoji.count(EMOJI) == 2047
    # Never half a surrogate pair, whatever the cut point.
    for limit in range(2, 40):
        out = fit("a" + EMOJI * 30, limit)
        assert units(out) <= limit and out.encode("utf-16-le").decode("utf-16-le") == out
    assert fit("ab " * 10, 7) == "ab ab" + MARK  # no space before the mark


def test_fit_call_cuts_each_method_to_its_own_limit() -> None:
    long = "y" * 5000
    calls = {
        "sendMessage": ({"text": long}, "text", TEXT),
        "editMessageText": ({"text": long}, "text", TEXT),
        "sendPhoto": ({"caption": long}, "caption", CAPTION),
        "sendDocument": ({"caption": long}, "caption", CAPTION),
        "editMessageCaption": ({"caption": long}, "caption", CAPTION),
        "answerCallbackQuery": ({"text": long}, "text", ALERT),
    }
    for method, (params, name, limit) in calls.items():
        fit_call(method, params)
        assert units(params[name]) == limit and params[name].endswith(MARK), method
    other = {"text": long, "chat_id": 1}
    fit_call("sendGift", other)  # a method the bot never calls: left as it is
    assert other["text"] == long


async def test_a_4090_character_reply_is_acknowledged_not_an_error(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    # Telegram lets a user send 4 096 characters; the acknowledgement echoes the prompt.
    async with bot(bot_settings()):
        photo = fake.user_sends_photo(USER, USER, png((40, 30)))
        await fake.wait_for("sendMessage", predicate=says("What should I do"))
        words = ("make it an oil painting please " * 200)[:4090]
        mark = fake.call_count
        fake.user_sends_text(USER, USER, words, reply_to_message_id=photo["message_id"])
        await fake.wait_for("sendPhoto", since=mark)
        ack = fake.calls_to("sendMessage", since=mark)[0]
        assert ack.ok and text_of(ack).startswith("👍 Got it: /style make it an oil painting")
        assert text_of(ack).endswith("— fetching the image…") and units(text_of(ack)) < 300
        assert not [c for c in fake.calls if "went wrong" in text_of(c)]
        assert refused(fake) == []


async def test_a_vendor_error_quoting_a_long_emoji_prompt_still_reaches_the_user(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    # 2 040 emoji: 4 087 code units (a message Telegram accepts), but only 2 047 characters,
    # so a cut by characters would not notice the status is twice too long for Telegram.
    async with bot(bot_settings()) as app:
        photo = fake.user_sends_photo(USER, USER, png((40, 30)))
        await fake.wait_for("sendMessage", predicate=says("What should I do"))
        prompt = "/style " + EMOJI * 2040
        fake.user_sends_text(USER, USER, prompt, reply_to_message_id=photo["message_id"])
        (failed,) = await fake.wait_for(
            "editMessageText", predicate=lambda c: c.ok and "no style matches" in text_of(c)
        )
        shown = fake.message(USER, failed.params["message_id"])["text"]
        assert shown.startswith("❌ Failed: /style") and shown.endswith(MARK)
        assert TEXT - 2 <= units(shown) <= TEXT
        await harness.wait_delivered(app)
        rows = await rt_of(app).db.execute_fetchall("SELECT delivery FROM tg_tasks", ())
        assert [r[0] for r in rows] == ["delivered"]
        assert refused(fake) == []


async def test_every_kind_of_send_is_cut_to_telegrams_limits(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    app = build_application(bot_settings())
    async with running(app, polling=False):
        tg = app.bot
        text = "word " * 900 + EMOJI * 200  # 4 900 code units
        sent = await tg.send_message(USER, text)
        assert units(sent.text) <= TEXT and sent.text.endswith(MARK)
        edited = await tg.edit_message_text(EMOJI * 3000, chat_id=USER, message_id=sent.id)
        assert not isinstance(edited, bool) and units(edited.text or "") <= TEXT
        photo = await tg.send_photo(USER, png(), caption="c" * 2000)
        assert units(photo.caption or "") == CAPTION
        doc = await tg.send_document(USER, InputFile(png(), filename="a.png"), caption=EMOJI * 600)
        assert units(doc.caption or "") <= CAPTION and (doc.caption or "").endswith(MARK)
        recaptioned = await tg.edit_message_caption(
            chat_id=USER, message_id=photo.id, caption=EMOJI * 1500
        )
        assert not isinstance(recaptioned, bool) and recaptioned.caption
        reply = await sent.reply_text("r" * 5000)  # the shortcuts go the same way
        assert units(reply.text) == TEXT
        query = fake.user_presses_button(USER, USER, sent.id, "anything")
        await tg.answer_callback_query(query["id"], "a" * 300, show_alert=True)
        assert fake.last_call("answerCallbackQuery").params["text"] == "a" * 199 + MARK

        # An album's caption is cut where it is built (media objects keep their captions).
        vendor = EMOJI * 700  # 1 400 code units in 700 characters
        results = [
            ResultImage(
                index=i, uri=f"retouch://tasks/t1/{i}", sha256="0" * 64,
                mime_type="image/png", width=64, height=48, bytes=200,
            )
            for i in range(2)
        ]  # fmt: skip
        now = datetime.now(UTC)
        task = Task(
            id="t1", status=TaskStatus.succeeded, function="stylization_all", vendor=vendor,
            prompt="oil painting", n=2, created_at=now, updated_at=now, results=results,
        )  # fmt: skip

        class Results:
            async def result(self, task_id: str, index: int) -> tuple[bytes, str]:
                return png(), "image/png"

        await Sender(Results(), tg).send_results(USER, task)  # type: ignore[arg-type]
        (group,) = fake.calls_to("sendMediaGroup")
        caption = group.params["media"][0]["caption"]
        assert group.ok and units(caption) <= CAPTION and caption.endswith(MARK)
    assert refused(fake) == []


async def test_status_of_many_long_edits_fits_in_one_message(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    async with bot(bot_settings(max_concurrent_per_user=40), run_worker=False) as app:
        editor = rt_of(app).editor
        for i in range(40):
            request = EditRequest(
                images=[data_uri(png((8, 8)))],
                function="stylization_all",
                prompt=f"oil painting {i} " + "with a great deal of detail " * 10,
            )
            await editor.edit_image(request, owner=f"tg:{USER}")
        status = await harness.ask(fake, "/status")
        assert status.ok and text_of(status).startswith("Running now:")
        assert units(text_of(status)) <= TEXT and "…" in text_of(status)
        history = await harness.ask(fake, "/history")
        assert history.ok and "Your last edits" in text_of(history)
        assert refused(fake) == []


# ---- exact per-user accounting ---------------------------------------------------------------


def slow_bookkeeping(monkeypatch: pytest.MonkeyPatch, seconds: float = 0.6) -> None:
    """The bot's own record of a new task (the step after the Editor stored it) takes a
    while, as on a busy disk: the moment an edit is both stored and still starting."""
    add_task = chats.add_task

    async def slow(*args: Any, **kw: Any) -> None:
        await asyncio.sleep(seconds)
        await add_task(*args, **kw)

    monkeypatch.setattr(chats, "add_task", slow)


async def test_a_flood_of_photos_starts_exactly_the_limit_and_refusals_say_the_truth(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    async with bot(bot_settings(max_concurrent_per_user=2), run_worker=False) as app:
        for i in range(10):  # ten at once
            fake.user_sends_photo(USER, USER, png((20 + i, 20)), f"/adjust rotate {90 * i}")
        refusals = await fake.wait_for("sendMessage", count=8, predicate=says("already have"))
        await handled(app, 10)
        assert len(await rt_of(app).editor.list_tasks()) == 2
        for call in refusals:
            assert text_of(call).startswith("You already have 2 edits running (the limit is 2)")
        assert len([c for c in fake.calls_to("sendMessage") if "already" in text_of(c)]) == 8


async def test_an_edit_being_recorded_is_counted_once(
    fake: FakeBotAPI, bot_settings: BotSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_bookkeeping(monkeypatch)
    async with bot(bot_settings(max_concurrent_per_user=2), run_worker=False) as app:
        editor = rt_of(app).editor
        # The first edit is stored and still being recorded: the second must still start.
        fake.user_sends_photo(USER, USER, png((20, 20)), "/adjust rotate 90")
        await until(lambda: _count(editor.list_tasks(), 1))
        fake.user_sends_photo(USER, USER, png((21, 20)), "/adjust rotate 180")
        await until(lambda: _count(editor.list_tasks(), 2))
        # Both stored, both still being recorded: a flood of eight is told "2", not "4".
        for i in range(8):
            fake.user_sends_photo(USER, USER, png((30 + i, 20)), "/adjust grayscale")
        refusals = await fake.wait_for("sendMessage", count=8, predicate=says("already have"))
        for call in refusals:
            assert text_of(call).startswith("You already have 2 edits running (the limit is 2)")
        await handled(app, 10)
        assert len(await editor.list_tasks()) == 2


async def test_edits_per_hour_are_counted_once_each(
    fake: FakeBotAPI, bot_settings: BotSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow_bookkeeping(monkeypatch, 0.4)
    settings = bot_settings(edits_per_hour=3, max_concurrent_per_user=10)
    async with bot(settings, run_worker=False) as app:
        editor = rt_of(app).editor
        for i in range(3):  # one after the other, each still being recorded
            fake.user_sends_photo(USER, USER, png((20 + i, 20)), "/adjust rotate 90")
            await until(lambda i=i: _count(editor.list_tasks(), i + 1))
        for _ in range(5):
            fake.user_sends_photo(USER, USER, png(), "/adjust grayscale")
        refusals = await fake.wait_for("sendMessage", count=5, predicate=says("in the last hour"))
        for call in refusals:
            assert text_of(call).startswith("You've made 3 edits in the last hour, the limit is 3")
        await handled(app, 8)
        assert len(await editor.list_tasks()) == 3


async def _count(tasks: Awaitable[list[Task]], n: int) -> bool:
    return len(await tasks) >= n


async def test_limits_stay_exact_under_many_concurrent_edits_of_one_user() -> None:
    """Limits alone, against an Editor stand-in whose store reads and writes yield to others
    at random: 40 edits of one user at once, each downloading for a random while."""
    rng = random.Random(7)
    stored: list[str] = []

    class Store:
        async def active_tasks(self, owner: str) -> list[str]:
            await asyncio.sleep(rng.random() / 500)
            return list(stored)

        async def usage(self, owner: str, since: float) -> tuple[int, float | None]:
            await asyncio.sleep(rng.random() / 500)
            return len(stored), time.time() if stored else None

    settings = TelegramSettings(max_concurrent_per_user=5, edits_per_hour=100)
    limits = Limits(Store(), settings)  # type: ignore[arg-type]
    said: list[int] = []

    async def edit(i: int) -> None:
        await asyncio.sleep(rng.random() / 50)
        async with limits.slot(USER) as slot:
            if slot.refusal is not None:
                said.append(int(re.findall(r"have (\d+) edit", slot.refusal)[0]))
                return
            await asyncio.sleep(rng.random() / 50)  # downloading

            async def create() -> str:
                await asyncio.sleep(rng.random() / 500)
                stored.append(f"task{i}")
                return f"task{i}"

            await slot.start(create)
            await asyncio.sleep(rng.random() / 50)  # the bot's own bookkeeping

    await asyncio.gather(*(edit(i) for i in range(40)))
    assert len(stored) == 5 and said == [5] * 35
    assert limits.reserved[USER] == 0


# ---- strangers -----------------------------------------------------------------------------


async def test_a_stranger_flooding_the_bot_is_answered_a_few_times_then_ignored(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    other = STRANGER + 1
    async with bot(bot_settings()) as app:  # by default: three answers an hour
        for i in range(12):
            fake.user_sends_text(STRANGER, STRANGER, f"/start {i}")
        fake.user_sends_photo(STRANGER, STRANGER, png(), "/adjust grayscale")
        await handled(app, 13)
        to_stranger = [c for c in fake.calls_to("sendMessage") if c.params["chat_id"] == STRANGER]
        assert len(to_stranger) == 3 and all("private" in text_of(c) for c in to_stranger)
        mark = fake.call_count
        fake.user_presses_button(STRANGER, STRANGER, to_stranger[0].result["message_id"], "x")
        await handled(app, 14)
        assert not fake.calls_to("answerCallbackQuery", since=mark)  # silence, not an alert
        assert not fake.calls_to("getFile") and await rt_of(app).editor.list_tasks() == []

        # Another stranger has a budget of their own; allowed users are not affected.
        fake.user_sends_text(other, other, "/start")
        (reply,) = await fake.wait_for("sendMessage", since=mark)
        assert reply.params["chat_id"] == other
        assert (await harness.ask(fake, "/help")).ok


async def test_a_silenced_stranger_is_answered_again_after_the_window(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    async with bot(bot_settings(stranger_replies=1, stranger_reply_window_s=1.0)) as app:
        fake.user_sends_text(STRANGER, STRANGER, "/start")
        fake.user_sends_text(STRANGER, STRANGER, "/start")
        await handled(app, 2)
        assert len(fake.calls_to("sendMessage")) == 1
        await asyncio.sleep(1.1)
        mark = fake.call_count
        fake.user_sends_text(STRANGER, STRANGER, "/start again")
        (again,) = await fake.wait_for("sendMessage", since=mark)
        assert again.params["chat_id"] == STRANGER and "private" in text_of(again)


def test_refusals_are_bounded_per_stranger_overall_and_in_memory() -> None:
    now = [0.0]
    budget = Refusals(3, 600.0, overall=10, tracked=50, clock=lambda: now[0])
    assert [budget.allow(1) for _ in range(5)] == [True, True, True, False, False]
    now[0] = 599.0
    assert not budget.allow(1)
    now[0] = 600.5  # the first answers left the window
    assert budget.allow(1)
    # A crowd of strangers: ten answers a minute in all, then silence until the minute ends.
    now[0] = 1000.0
    answered = sum(budget.allow(100 + i) for i in range(500))
    assert answered == 10
    now[0] = 1061.0
    assert budget.allow(9999)
    assert len(budget._by_user) <= 50  # the oldest strangers are forgotten


# ---- the inbox -----------------------------------------------------------------------------


async def test_the_inbox_is_pruned_while_the_bot_runs(
    fake: FakeBotAPI, bot_settings: BotSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "KEEP_HANDLED_S", 0.3)
    monkeypatch.setattr(inbox, "PRUNE_EVERY_S", 0.1)
    async with bot(bot_settings()) as app:
        db = rt_of(app).db
        await chats.record_update(db, 10**9, "{}")  # one never handled: it stays
        for _ in range(3):
            await harness.ask(fake, "/help")
        await handled(app, 3)

        async def pruned() -> bool:
            rows = await db.execute_fetchall("SELECT update_id FROM tg_inbox", ())
            return [r[0] for r in rows] == [10**9]

        await until(pruned, timeout=5)
        assert (await harness.ask(fake, "/help")).ok  # and the bot carries on


# ---- the webhook ---------------------------------------------------------------------------


async def test_webhook_secret_is_compared_in_constant_time(
    fake: FakeBotAPI, bot_settings: BotSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    port = _free_port()
    settings = bot_settings(webhook_url=f"https://bot.example/hook/{port}")
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve_webhook(build_application(settings), settings, "127.0.0.1", port, stop=stop)
    )
    try:
        (hook,) = await fake.wait_for("setWebhook")
        secret = hook.params["secret_token"]
        update = {
            "update_id": 1,
            "message": {
                "message_id": 1,
                "date": 0,
                "text": "/help",
                "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
                "chat": {"id": USER, "type": "private", "first_name": "U"},
                "from": {"id": USER, "is_bot": False, "first_name": "U"},
            },
        }
        url = f"http://127.0.0.1:{port}/hook/{port}"
        header = "X-Telegram-Bot-Api-Secret-Token"
        async with httpx.AsyncClient() as client:
            for _ in range(200):  # uvicorn may still be binding
                try:
                    await client.get(f"http://127.0.0.1:{port}/healthz")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")  # all but the end right
            for bad in (wrong, secret[:-1], secret + "x", ""):
                answer = await client.post(url, json=update, headers={header: bad})
                assert answer.status_code == 403, bad
            for odd in ("é".encode(), b"\xff\xfe" * 20):  # not ASCII: refused, not a 500
                answer = await client.post(url, json=update, headers=[(header.encode(), odd)])
                assert answer.status_code == 403
            assert compared and all(b == secret.encode() for _, b in compared)
            ok = await client.post(url, json=update, headers={header: secret})
            assert ok.status_code == 200
        await fake.wait_for("sendMessage", predicate=says("Examples"))
        assert len(fake.calls_to("sendMessage")) == 1  # only the right secret got through
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
