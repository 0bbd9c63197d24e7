"""The Telegram bot end to end: the real PTB Application polling the fake Bot API on
127.0.0.1, with a real Editor (local engine) on a temporary SQLite store."""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from telegram.ext import Application

from bots import captions
from bots import storage as chats
from bots.state import Runtime, runtime
from bots.telegram import build_application, running
from tests.conftest import MakeSettings, data_uri, decode, png, sample
from tests.fakes.openai import FakeOpenAI
from tests.fakes.telegram import Call, FakeBotAPI
from tools.config import Settings
from tools.models import EditRequest
from tools.service import Editor

USER = 1001
FRIEND = 1002
STRANGER = 2002


# ---- harness -------------------------------------------------------------------------------


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


def table(name: str, values: dict[str, Any]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())


@pytest.fixture
def fake() -> Iterator[FakeBotAPI]:
    with FakeBotAPI() as api:
        yield api


BotSettings = Callable[..., Settings]


@pytest.fixture
def bot_settings(make_settings: MakeSettings, fake: FakeBotAPI) -> BotSettings:
    """Settings pointing at the fake: ``bot_settings(edits_per_hour=1, extra="[vendors.x]…")``."""

    def make(extra: str = "", **telegram: Any) -> Settings:
        tg = {
            "token": fake.token,
            "api_base_url": fake.api_base_url,
            "file_base_url": fake.file_base_url,
            "allowed_user_ids": [USER, FRIEND],
            "album_debounce_s": 0.2,
            **telegram,
        }
        local = table("vendors.local", {"kind": "local", "esrgan": "off"})
        return make_settings(table("telegram", tg) + local + extra)

    return make


@contextlib.asynccontextmanager
async def bot(settings: Settings, **kw: Any) -> AsyncIterator[Application]:
    kw.setdefault("scan_interval", 0.1)
    app = build_application(settings, **kw)
    async with running(app, poll_timeout=1):
        yield app


def rt_of(app: Application) -> Runtime:
    return runtime(app)


def text_of(call: Call) -> str:
    return str(call.params.get("text") or call.params.get("caption") or "")


def says(fragment: str) -> Callable[[Call], bool]:
    return lambda call: fragment.lower() in text_of(call).lower()


def jpeg(size: tuple[int, int], color: tuple[int, int, int] = (40, 120, 200)) -> bytes:
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 7):  # some structure
        image.putpixel((x, (x * 3) % size[1]), (250, 250, 0))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


async def wait_delivered(app: Application) -> None:
    """Until the tracker has nothing in flight and has scanned at least twice more."""
    tracker = rt_of(app).tracker
    start = tracker.scans
    await tracker.idle()
    while tracker.scans < start + 2:
        await fake_sleep()
    await tracker.idle()


async def fake_sleep() -> None:
    import asyncio

    await asyncio.sleep(0.02)


# ---- edits ---------------------------------------------------------------------------------


async def test_caption_edit_end_to_end(fake: FakeBotAPI, bot_settings: BotSettings) -> None:
    async with bot(bot_settings()) as app:
        sent = fake.user_sends_photo(USER, USER, sample("chelsea.png"), "/adjust rotate 90")
        (ack,) = await fake.wait_for("sendMessage")
        assert "/adjust rotate 90" in ack.params["text"]
        assert ack.params["reply_parameters"]["message_id"] == sent["message_id"]
        (photo,) = await fake.wait_for("sendPhoto")
        done = await fake.wait_for("editMessageText", predicate=says("✅ Done"))
        assert done[-1].params["message_id"] == ack.result["message_id"]
        assert fake.calls_to("sendChatAction")[-1].params["action"] == "upload_photo"
        image = decode(photo.file().data)
        assert image.size == (300, 451)  # chelsea is 451×300; rotated
        assert photo.params["reply_parameters"]["message_id"] == sent["message_id"]
        assert len(fake.calls_to("sendMessage")) == 1  # one status message, edited in place
        status = fake.message(USER, ack.result["message_id"])
        assert status["text"].startswith("✅ Done") and "reply_markup" not in status
        (task,) = await rt_of(app).editor.list_tasks(owner=f"tg:{USER}")
        assert task.function == "adjust" and task.status == "succeeded"
        # The image reached the Editor as bytes (data: URI), never as a Telegram URL.
        editor = rt_of(app).editor
        stored = await editor.store.get(task.id)
        assert stored.request["images"][0].startswith("data:")


async def test_plain_words_pick_a_local_function_and_say_so(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    async with bot(bot_settings()) as app:
        fake.user_sends_photo(USER, USER, png((96, 64)), "make it an oil painting")
        (ack,) = await fake.wait_for("sendMessage")
        assert "/style" in ack.params["text"]
        await fake.wait_for("sendPhoto")
        final = fake.message(USER, ack.result["message_id"])["text"]
        assert "No enabled vendor follows free-form instructions" in final
        assert "/style make it an oil painting" in final
        (task,) = await rt_of(app).editor.list_tasks()
        assert task.function == "stylization_all"


async def test_album_is_one_multi_image_edit(fake: FakeBotAPI, bot_settings: BotSettings) -> None:
    with FakeOpenAI() as oai:
        vendor = table(
            "vendors.openai",
            {"kind": "openai", "api_key": oai.api_key, "base_url": f"{oai.base_url}/v1"},
        )
        async with bot(bot_settings(extra=vendor)) as app:
            fake.user_sends_album(
                USER, USER, [jpeg((200, 150)), jpeg((160, 160))], caption="put them side by side"
            )
            await fake.wait_for("sendPhoto", timeout=15)
            (task,) = await rt_of(app).editor.list_tasks()
            assert task.function == "edit" and task.vendor == "openai"
            assert task.input_count == 2
            (request,) = oai.requests_to("edits")
            assert len([f for f in request.files if f.field.startswith("image")]) == 2

            # Four images are more than any vendor takes for edit: a clear reply, no task.
            mark = fake.call_count
            fake.user_sends_album(USER, USER, [jpeg((64, 64))] * 4, caption="/edit a collage")
            (reply,) = await fake.wait_for("sendMessage", since=mark)
            assert "1 to 3 images" in reply.params["text"] and "you sent 4" in reply.params["text"]
            assert len(await rt_of(app).editor.list_tasks()) == 1

            # Several results arrive as one album; a reply to any of them edits that one.
            fake.user_sends_text(USER, USER, "/settings n 2")
            await fake.wait_for("sendMessage", predicate=says("(n): 2"))
            fake.user_sends_photo(USER, USER, jpeg((120, 90)), "make it blue")
            (group,) = await fake.wait_for("sendMediaGroup", timeout=15)
            assert [item["type"] for item in group.params["media"]] == ["photo", "photo"]
            assert (
                len(group.result) == 2
                and "/edit make it blue" in group.params["media"][0]["caption"]
            )
            await wait_delivered(app)
            task = (await rt_of(app).editor.list_tasks())[0]
            assert task.n == 2 and len(task.results) == 2
            second = group.result[1]["message_id"]
            assert await chats.result_for_message(rt_of(app).db, USER, second) == (task.id, 1)


async def test_album_with_a_one_image_function_is_a_clear_reply(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    async with bot(bot_settings()) as app:
        fake.user_sends_album(USER, USER, [png((32, 32)), png((40, 40))], "/adjust grayscale")
        (reply,) = await fake.wait_for("sendMessage")
        assert "one image at a time" in reply.params["text"]
        assert await rt_of(app).editor.list_tasks() == []


async def test_reply_to_a_result_edits_it(fake: FakeBotAPI, bot_settings: BotSettings) -> None:
    async with bot(bot_settings()) as app:
        editor = rt_of(app).editor
        fake.user_sends_photo(USER, USER, sample("chelsea.png"), "/adjust rotate 90")
        (first,) = await fake.wait_for("sendPhoto")
        (task1,) = await editor.list_tasks()
        result_message = first.result["message_id"]

        fake.user_sends_text(USER, USER, "/adjust rotate 90", reply_to_message_id=result_message)
        await fake.wait_for("sendPhoto", count=2)
        task2, _ = await editor.list_tasks()
        assert task2.id != task1.id
        # The new task starts from the stored original result, not Telegram's JPEG copy.
        assert await editor.store.task_blobs(task2.id, "input") == [task1.results[0].sha256]
        second = fake.calls_to("sendPhoto")[1]
        assert decode(second.file().data).size == (451, 300)

        # Plain words in reply to the user's own photo edit that photo.
        mine = fake.user_sends_photo(USER, USER, png((50, 40)))
        await fake.wait_for("sendMessage", predicate=says("What should I do"))
        fake.user_sends_text(USER, USER, "rotate 90", reply_to_message_id=mine["message_id"])
        (third,) = (await fake.wait_for("sendPhoto", count=3))[2:]
        assert decode(third.file().data).size == (40, 50)


async def test_results_too_big_for_a_photo_are_sent_as_documents(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    async with bot(bot_settings()):
        fake.user_sends_photo(USER, USER, jpeg((1300, 1300)), "/upscale 4 lanczos")
        (doc,) = await fake.wait_for("sendDocument", timeout=30)
        assert "width + height" in doc.params["caption"]
        assert decode(doc.file().data).size == (5200, 5200)
        assert fake.calls_to("sendChatAction")[-1].params["action"] == "upload_document"
        assert not fake.calls_to("sendPhoto")


async def test_originals_setting_sends_files(fake: FakeBotAPI, bot_settings: BotSettings) -> None:
    async with bot(bot_settings()):
        fake.user_sends_text(USER, USER, "/settings originals on")
        await fake.wait_for("sendMessage", predicate=says("delivery: original files"))
        fake.user_sends_photo(USER, USER, png((64, 48)), "/adjust grayscale")
        (doc,) = await fake.wait_for("sendDocument")
        assert doc.file().filename.endswith(".jpg")  # Telegram made the photo a JPEG
        assert decode(doc.file().data).mode == "L"


# ---- access and fairness -------------------------------------------------------------------


async def test_strangers_are_refused_everywhere(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    async with bot(bot_settings()) as app:
        fake.user_sends_text(STRANGER, STRANGER, "/start")
        (reply,) = await fake.wait_for("sendMessage")
        assert str(STRANGER) in reply.params["text"] and "private" in reply.params["text"]

        mark = fake.call_count
        fake.user_sends_photo(STRANGER, STRANGER, png(), "/adjust grayscale")
        await fake.wait_for("sendMessage", since=mark)
        assert not fake.calls_to("getFile")

        # A refused user pressing a button on someone else's message changes nothing.
        fake.user_sends_text(USER, USER, "/vendor")
        (menu,) = await fake.wait_for("sendMessage", predicate=says("Which vendor"))
        query = fake.user_presses_button(USER, STRANGER, menu.result["message_id"], "vendor:local")
        (answer,) = await fake.wait_for("answerCallbackQuery")
        assert answer.params["callback_query_id"] == query["id"]
        assert str(STRANGER) in answer.params["text"] and answer.params["show_alert"] is True
        assert not fake.calls_to("editMessageText")
        assert await rt_of(app).editor.list_tasks() == []
        assert (await chats.get_user(rt_of(app).db, STRANGER)).vendor is None

        # In a group, an allowed sender is served and a stranger's chatter is ignored.
        group = -500
        mark = fake.call_count
        fake.user_sends_text(group, STRANGER, "hello all", chat_type="group")
        fake.user_sends_photo(group, USER, png((30, 20)), "/adjust rotate 90", chat_type="group")
        (photo,) = await fake.wait_for("sendPhoto", since=mark)
        assert photo.params["chat_id"] == group
        assert not [c for c in fake.calls_to("sendMessage", since=mark) if "private" in text_of(c)]


async def test_edits_per_hour_limit(fake: FakeBotAPI, bot_settings: BotSettings) -> None:
    async with bot(bot_settings(edits_per_hour=1)) as app:
        fake.user_sends_photo(USER, USER, png(), "/adjust grayscale")
        await fake.wait_for("sendPhoto")
        fake.user_sends_photo(USER, USER, png(), "/adjust rotate 90")
        (reply,) = await fake.wait_for("sendMessage", predicate=says("in the last hour"))
        assert "limit is 1" in reply.params["text"] and "try again" in reply.params["text"]
        assert len(await rt_of(app).editor.list_tasks()) == 1


async def test_concurrent_tasks_limit(fake: FakeBotAPI, bot_settings: BotSettings) -> None:
    settings = bot_settings(max_concurrent_per_user=1)
    async with bot(settings, run_worker=False) as app:  # nothing finishes
        fake.user_sends_photo(USER, USER, png(), "/adjust grayscale")
        await fake.wait_for("editMessageText", predicate=says("Queued"))
        fake.user_sends_photo(USER, USER, png(), "/adjust rotate 90")
        (reply,) = await fake.wait_for("sendMessage", predicate=says("already have 1 edit"))
        assert "/cancel" in reply.params["text"]
        assert len(await rt_of(app).editor.list_tasks()) == 1

        # /status shows it and /cancel ends it; the status message says so.
        fake.user_sends_text(USER, USER, "/status")
        (status,) = await fake.wait_for("sendMessage", predicate=says("Running now"))
        assert "/adjust grayscale" in status.params["text"]
        fake.user_sends_text(USER, USER, "/cancel")
        await fake.wait_for("sendMessage", predicate=says("Canceling 1 edit"))
        await fake.wait_for("editMessageText", predicate=says("🚫 Canceled"))


# ---- durability ----------------------------------------------------------------------------


async def received_then_died(fake: FakeBotAPI, settings: Settings) -> None:
    """What a bot process leaves when it dies after its next poll confirmed the queued
    updates (Telegram forgets them) but before their handlers ran: them, in the inbox."""
    async with httpx.AsyncClient() as client:
        url = f"{fake.api_base_url}{fake.token}/getUpdates"
        updates = (await client.post(url, data={"timeout": 0})).json()["result"]
        await client.post(url, data={"offset": updates[-1]["update_id"] + 1, "timeout": 0})
    db = await chats.connect(settings.store.path)
    for update in updates:
        await chats.record_update(db, update["update_id"], json.dumps(update))
    await db.close()


async def test_an_update_telegram_forgot_before_the_bot_handled_it_is_handled_at_start(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    # A bot process fetched this photo, its next poll confirmed it (Telegram forgets it),
    # and the process died before the handler ran: the inbox still has it.
    settings = bot_settings()
    fake.user_sends_photo(USER, USER, png((50, 40)), "/adjust grayscale")
    await received_then_died(fake, settings)

    async with bot(settings) as app:
        await fake.wait_for("sendPhoto")
        await wait_delivered(app)
        db = rt_of(app).db
        assert await chats.open_updates(db) == []
    assert len(fake.calls_to("sendPhoto")) == 1

    # Handled updates are not handled again by the next process.
    async with bot(settings) as app:
        await wait_delivered(app)
    assert len(fake.calls_to("sendPhoto")) == 1


async def test_a_message_whose_task_was_made_before_a_crash_follows_that_task(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    """A process stored the core's task for a message, then died before the bot's own row;
    handled again, the message's request differs (as if the chat's settings changed): the
    core calls it a conflict, and the bot follows the task its message made."""
    settings = bot_settings()
    sent = fake.user_sends_photo(USER, USER, png((50, 40)), "/adjust grayscale")
    await received_then_died(fake, settings)
    async with Editor(settings, run_worker=False) as editor:
        request = EditRequest(
            images=[data_uri(png((50, 40)))], function="adjust", prompt="rotate 90"
        )
        first = await editor.edit_image(
            request, owner=f"tg:{USER}", key=f"telegram:{USER}:{sent['message_id']}"
        )

    async with bot(settings) as app:
        (photo,) = await fake.wait_for("sendPhoto")
        await fake.wait_for("editMessageText", predicate=says("✅ Done"))
        await wait_delivered(app)
        assert [t.id for t in await rt_of(app).editor.list_tasks()] == [first.id]
        assert await chats.task_for_message(rt_of(app).db, USER, sent["message_id"])
    assert decode(photo.file().data).size == (40, 50)  # the first task's result: rotated
    assert not any(says("went wrong")(c) for c in fake.calls_to("editMessageText"))


async def test_an_album_in_flight_at_a_crash_is_gathered_again_from_the_inbox(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    with FakeOpenAI() as oai:
        vendor = table(
            "vendors.openai",
            {"kind": "openai", "api_key": oai.api_key, "base_url": f"{oai.base_url}/v1"},
        )
        settings = bot_settings(extra=vendor)
        # The album's parts were fetched and confirmed; the process died while it waited
        # for the rest of the album (parts stay unhandled in the inbox until then).
        fake.user_sends_album(USER, USER, [jpeg((200, 150)), jpeg((160, 160))], caption="mix")
        await received_then_died(fake, settings)

        async with bot(settings) as app:
            await fake.wait_for("sendPhoto", timeout=15)
            await wait_delivered(app)
            (task,) = await rt_of(app).editor.list_tasks()
            assert task.input_count == 2
            assert await chats.open_updates(rt_of(app).db) == []


async def test_restart_delivers_each_result_exactly_once(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    settings = bot_settings(max_concurrent_per_user=5)
    # 1. The bot takes three edits, but nothing runs them (worker off), and it stops.
    async with bot(settings, run_worker=False):
        for i, caption in enumerate(["/adjust rotate 90", "/adjust grayscale", "/lineart"]):
            fake.user_sends_photo(USER, USER, png((60 + i, 40)), caption)
        await fake.wait_for("editMessageText", count=3, predicate=says("Queued"))
    assert not fake.calls_to("sendPhoto")

    # 2. While the bot is down, the tasks finish (another process's worker).
    async with Editor(settings) as editor:
        tasks = await editor.list_tasks()
        assert len(tasks) == 3
        for task in tasks:
            assert (await editor.check_task(task.id, wait_seconds=30)).status == "succeeded"

    # 3. A fresh bot delivers each exactly once ...
    async with bot(settings) as app:
        photos = await fake.wait_for("sendPhoto", count=3)
        await wait_delivered(app)
        assert len(fake.calls_to("sendPhoto")) == 3
        targets = [p.params["reply_parameters"]["message_id"] for p in photos]
        assert len(set(targets)) == 3
        done = [m for m in fake.bot_messages(USER) if m.get("text", "").startswith("✅ Done")]
        assert len(done) == 3

    # 4. ... and a second restart sends nothing again.
    async with bot(settings) as app:
        await wait_delivered(app)
    assert len(fake.calls_to("sendPhoto")) == 3


async def test_delivery_interrupted_by_a_crash_resumes(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    settings = bot_settings()
    async with bot(settings, run_worker=False):
        fake.user_sends_photo(USER, USER, png((20, 10)), "/adjust rotate 90")
        fake.user_sends_photo(USER, USER, png((30, 10)), "/adjust rotate 90")
        await fake.wait_for("editMessageText", count=2, predicate=says("Queued"))
    async with Editor(settings) as editor:
        first, second = [
            await editor.check_task(t.id, wait_seconds=30) for t in await editor.list_tasks()
        ]
        assert first.status == second.status == "succeeded"
    # A crash after claiming both: the first had sent its result, the second had not.
    db = await chats.connect(settings.store.path)
    try:
        assert await chats.claim(db, first.id) and await chats.claim(db, second.id)
        assert await chats.claim(db, first.id) is None  # a claimed row is nobody else's
        await chats.set_sent_items(db, first.id, 1)
    finally:
        await db.close()
    async with bot(settings) as app:
        (photo,) = await fake.wait_for("sendPhoto")
        await wait_delivered(app)
        assert len(fake.calls_to("sendPhoto")) == 1
        shown = second.results[0]
        assert decode(photo.file().data).size == (shown.width, shown.height)  # the second's
        rows = await (await rt_of(app).db.execute("SELECT delivery FROM tg_tasks")).fetchall()
        assert [r[0] for r in rows] == ["delivered", "delivered"]


# ---- robustness ----------------------------------------------------------------------------


async def test_bad_updates_do_not_stop_the_bot(
    fake: FakeBotAPI, bot_settings: BotSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with bot(bot_settings()):
        fake.user_sends_document(
            USER, USER, b"%PDF-1.4 not an image", "report.pdf", caption="/adjust rotate 90"
        )
        (reply,) = await fake.wait_for("sendMessage")
        assert "isn't an image" in reply.params["text"] and "report.pdf" in reply.params["text"]

        # A handler that blows up: the error handler apologises, the bot carries on.
        def explode(*args: object, **kw: object) -> None:
            raise RuntimeError("injected failure")

        monkeypatch.setattr(captions, "parse", explode)
        fake.user_sends_photo(USER, USER, png(), "/adjust grayscale")
        await fake.wait_for("sendMessage", predicate=says("went wrong on my side"))
        monkeypatch.undo()

        fake.user_sends_text(USER, USER, "/nonsense")
        await fake.wait_for("sendMessage", predicate=says("I don't know /nonsense"))
        fake.user_sends_text(USER, USER, "hello")
        await fake.wait_for("sendMessage", predicate=says("Send me a photo"))
        fake.user_sends_photo(USER, USER, png(), "/style")
        await fake.wait_for("sendMessage", predicate=says("/style needs words"))
        fake.user_sends_photo(USER, USER, png(), "/style glitter")  # the engine refuses it
        await fake.wait_for("editMessageText", predicate=says("❌ Failed"))
        failed = fake.calls_to("editMessageText")[-1].params["text"]
        assert "glitter" in failed and "styles are" in failed

        # A document image works like a photo.
        fake.user_sends_document(USER, USER, png((40, 30)), "pic.png", caption="/adjust rotate 90")
        (photo,) = await fake.wait_for("sendPhoto")
        assert decode(photo.file().data).size == (30, 40)


async def test_files_over_the_download_limit_are_refused_before_getfile(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    async with bot(bot_settings()):
        big = b"\x89PNG\r\n\x1a\n" + bytes(21 * 1024 * 1024)
        fake.user_sends_document(USER, USER, big, "huge.png", caption="/adjust grayscale")
        (reply,) = await fake.wait_for("sendMessage")
        assert "20 MB" in reply.params["text"]
        assert not fake.calls_to("getFile")


async def test_telegram_429_and_network_errors_are_retried(
    fake: FakeBotAPI, bot_settings: BotSettings
) -> None:
    async with bot(bot_settings()):
        fake.fail_next("sendMessage", 429, retry_after=1)
        fake.user_sends_text(USER, USER, "/help")
        calls = await fake.wait_for("sendMessage", count=2)
        assert [c.status for c in calls] == [429, 200]
        assert "Examples" in calls[1].params["text"]

        fake.fail_next("getFile", 502)
        fake.drop_next("sendPhoto")
        fake.user_sends_photo(USER, USER, png(), "/adjust grayscale")
        photos = await fake.wait_for("sendPhoto", predicate=lambda c: c.ok, timeout=15)
        assert len(photos) == 1
        assert [c.status for c in fake.calls_to("getFile")][:2] == [502, 200]


# ---- commands ------------------------------------------------------------------------------


async def ask(fake: FakeBotAPI, text: str, **kw: Any) -> Call:
    """Send a text as USER and return the bot's next sendMessage."""
    mark = fake.call_count
    fake.user_sends_text(USER, USER, text, **kw)
    return (await fake.wait_for("sendMessage", since=mark))[0]


async def test_commands(fake: FakeBotAPI, bot_settings: BotSettings) -> None:
    async with bot(bot_settings()) as app:
        start = await ask(fake, "/start")
        assert "/style oil painting" in start.params["text"]
        assert {c["command"] for c in fake.commands} >= {"help", "functions", "history"}

        text = (await ask(fake, "/functions")).params["text"]
        assert "/adjust" in text and "/lineart" in text
        assert "/colorize" in text.split("Not available here")[1]  # no vendor colorizes here

        reply = await ask(fake, "/settings n 2")
        assert "(n): 2" in reply.params["text"]
        fake.user_presses_button(USER, USER, reply.result["message_id"], "set:n:1")
        await fake.wait_for("editMessageText", predicate=says("(n): 1"))
        assert (await chats.get_user(rt_of(app).db, USER)).n == 1
        assert "from 1 to 10" in (await ask(fake, "/settings n 99")).params["text"]

        menu = await ask(fake, "/vendor")
        assert "Which vendor" in menu.params["text"]
        fake.user_presses_button(USER, USER, menu.result["message_id"], "vendor:local")
        await fake.wait_for("editMessageText", predicate=says("Now: local"))
        assert (await chats.get_user(rt_of(app).db, USER)).vendor == "local"

        assert "No edits yet" in (await ask(fake, "/history")).params["text"]
        assert "Nothing is running" in (await ask(fake, "/status")).params["text"]
        assert "Nothing to cancel" in (await ask(fake, "/cancel")).params["text"]
        hint = await ask(fake, "/style oil painting")
        assert "Send a photo with the caption /style oil painting" in hint.params["text"]

        fake.user_sends_photo(USER, USER, png((40, 20)), "/lineart")
        await fake.wait_for("sendPhoto")
        hist = await ask(fake, "/history")
        assert "/lineart" in hist.params["text"]
        button = hist.params["reply_markup"]["inline_keyboard"][0][0]
        fake.user_presses_button(USER, USER, hist.result["message_id"], button["callback_data"])
        await fake.wait_for("sendPhoto", count=2)

        # Re-sent results chain too: a reply to the re-sent photo edits that result.
        resent = fake.calls_to("sendPhoto")[1].result["message_id"]
        fake.user_sends_text(USER, USER, "/adjust rotate 90", reply_to_message_id=resent)
        await fake.wait_for("sendPhoto", count=3)
        first, *_ = await rt_of(app).editor.list_tasks()
        assert first.function == "adjust"
