"""Tests of the fake Bot API, driven by the real python-telegram-bot Application / Bot."""

from __future__ import annotations

import contextlib
import io
import threading
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from PIL import Image
from telegram import Bot, InlineKeyboardButton, InlineKeyboardMarkup, InputMediaPhoto, Update
from telegram.error import BadRequest, InvalidToken, NetworkError, RetryAfter
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    MessageHandler,
    filters,
)

from tests.fakes.telegram import FakeBotAPI

USER = 4242


def make_image(width: int, height: int, fmt: str = "JPEG", color=(200, 40, 40)) -> bytes:
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 16):  # some structure so JPEG sizes are not trivial
        image.putpixel((x, x * height // width), (0, 0, 0))
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def image_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        return img.size


@pytest.fixture
def fake() -> Iterator[FakeBotAPI]:
    with FakeBotAPI() as api:
        yield api
    assert not api.server_errors  # exceptions inside the fake itself


@pytest.fixture
async def bot(fake: FakeBotAPI) -> AsyncIterator[Bot]:
    async with Bot(
        fake.token, base_url=fake.api_base_url, base_file_url=fake.file_base_url
    ) as the_bot:
        yield the_bot


def build_app(fake: FakeBotAPI) -> Application:
    return (
        ApplicationBuilder()
        .token(fake.token)
        .base_url(fake.api_base_url)
        .base_file_url(fake.file_base_url)
        .build()
    )


@contextlib.asynccontextmanager
async def polling(app: Application) -> AsyncIterator[Application]:
    await app.initialize()
    await app.start()
    await app.updater.start_polling(poll_interval=0, timeout=1)
    try:
        yield app
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()


# ----------------------------------------------------------------------------- handlers


async def echo(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await update.message.reply_text(update.message.text)


async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    await context.bot.send_chat_action(update.effective_chat.id, "typing")
    await update.message.reply_text(
        "<b>Hi</b> &amp; welcome",
        parse_mode="HTML",
        reply_markup=InlineKeyboardMarkup([[InlineKeyboardButton("Go", callback_data="go")]]),
    )


async def photo_back(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    data = await (await update.message.photo[-1].get_file()).download_as_bytearray()
    await update.message.reply_photo(bytes(data), caption="result")


async def reply_with_size(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    replied = update.message.reply_to_message
    data = await (await replied.photo[-1].get_file()).download_as_bytearray()
    await update.message.reply_text(f"{len(data)} bytes", do_quote=True)


async def button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    query = update.callback_query
    await query.answer("working")
    await query.edit_message_text(f"pressed {query.data}")


# ----------------------------------------------------------------------------- app tests


async def test_application_polls_echoes_and_shuts_down_cleanly(fake: FakeBotAPI) -> None:
    app = build_app(fake)
    app.add_handler(CommandHandler("start", start))
    app.add_handler(MessageHandler(filters.TEXT & ~filters.COMMAND, echo))
    async with polling(app):
        sent = fake.user_sends_text(USER, USER, "hello there")
        (call,) = await fake.wait_for("sendMessage")
        assert call.params["chat_id"] == USER
        assert call.params["text"] == "hello there"
        assert call.result["chat"]["id"] == USER
        assert call.result["message_id"] == sent["message_id"] + 1

        command = fake.user_sends_text(USER, USER, "/start now")
        assert command["entities"] == [{"type": "bot_command", "offset": 0, "length": 6}]
        await fake.wait_for("sendMessage", count=2)
        reply = fake.last_call("sendMessage")
        assert reply.params["parse_mode"] == "HTML"
        assert reply.result["text"] == "Hi & welcome"
        assert reply.result["entities"] == [{"type": "bold", "offset": 0, "length": 2}]
        assert reply.result["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "go"
        assert fake.last_call("sendChatAction").params["action"] == "typing"

    methods = [c.method for c in fake.calls]
    assert methods[0] == "getMe"
    assert methods.index("deleteWebhook") < methods.index("getUpdates")
    # PTB's shutdown: the pending long poll is cancelled (the fake ends it with 409 Conflict,
    # as Telegram would) and a final getUpdates(timeout=0) confirms the last offset.
    polls = fake.calls_to("getUpdates")
    final = [c for c in polls if c.params["timeout"] == 0]
    assert final and final[-1].ok
    assert fake.pending_updates == []
    assert [m["text"] for m in fake.bot_messages(USER)] == ["hello there", "Hi & welcome"]


async def test_photo_roundtrip_and_reply_to_bot_photo(fake: FakeBotAPI) -> None:
    app = build_app(fake)
    app.add_handler(MessageHandler(filters.PHOTO, photo_back))
    app.add_handler(MessageHandler(filters.REPLY & filters.TEXT, reply_with_size))
    original = make_image(1000, 700)
    async with polling(app):
        user_msg = fake.user_sends_photo(USER, USER, original, caption="fix this")
        sizes = user_msg["photo"]
        assert [(s["width"], s["height"]) for s in sizes] == [
            (90, 63),
            (320, 224),
            (800, 560),
            (1000, 700),
        ]
        (send,) = await fake.wait_for("sendPhoto")

        largest = sizes[-1]["file_id"]
        assert fake.last_call("getFile").params["file_id"] == largest
        download = fake.last_call("downloadFile")
        assert download.result == largest
        uploaded = send.file("photo")
        assert uploaded.data == fake.file_bytes(largest)
        assert image_size(uploaded.data) == (1000, 700)
        assert send.params["caption"] == "result"

        bot_photo = send.result
        assert bot_photo["caption"] == "result"
        assert bot_photo["photo"][-1]["width"] == 1000
        assert image_size(fake.photo_bytes(bot_photo)) == (1000, 700)

        # The user replies to the bot's result; the bot re-downloads it via getFile.
        fake.user_sends_text(USER, USER, "again", reply_to_message_id=bot_photo["message_id"])
        (answer,) = await fake.wait_for("sendMessage")
        assert answer.params["text"] == f"{len(fake.photo_bytes(bot_photo))} bytes"
        assert answer.params["reply_parameters"]["message_id"] == bot_photo["message_id"] + 1
        assert fake.last_call("getFile").params["file_id"] == bot_photo["photo"][-1]["file_id"]


async def test_callback_query_is_answered(fake: FakeBotAPI) -> None:
    app = build_app(fake)
    app.add_handler(CommandHandler("start", start))
    app.add_handler(CallbackQueryHandler(button))
    async with polling(app):
        fake.user_sends_text(USER, USER, "/start")
        (menu,) = await fake.wait_for("sendMessage")
        query = fake.user_presses_button(USER, USER, menu.result["message_id"], "go")
        (answer,) = await fake.wait_for("answerCallbackQuery")
        assert answer.ok
        assert answer.params["callback_query_id"] == query["id"]
        assert fake.callback_answers[query["id"]]["text"] == "working"
        (edit,) = await fake.wait_for("editMessageText")
        assert edit.result["text"] == "pressed go"
        assert "reply_markup" not in edit.result  # keyboard dropped: none was passed
        assert fake.message(USER, menu.result["message_id"])["text"] == "pressed go"


# ----------------------------------------------------------------------------- direct bot calls


async def test_media_group_roundtrip(fake: FakeBotAPI, bot: Bot) -> None:
    images = [make_image(640, 480), make_image(300, 900, "PNG")]
    messages = await bot.send_media_group(
        USER, [InputMediaPhoto(images[0], caption="one"), InputMediaPhoto(images[1])]
    )
    assert len(messages) == 2
    assert messages[0].media_group_id and messages[0].media_group_id == messages[1].media_group_id
    assert messages[0].caption == "one"
    assert (messages[1].photo[-1].width, messages[1].photo[-1].height) == (300, 900)
    call = fake.last_call("sendMediaGroup")
    assert [f.data for f in call.media_files()] == images
    assert [item["type"] for item in call.params["media"]] == ["photo", "photo"]

    # Sent photos can be re-downloaded, and re-sent by file_id without upload.
    file = await messages[1].photo[-1].get_file()
    assert image_size(bytes(await file.download_as_bytearray())) == (300, 900)
    again = await bot.send_photo(USER, messages[0].photo[-1].file_id)
    assert again.photo[-1].file_id == messages[0].photo[-1].file_id

    with pytest.raises(BadRequest):
        await bot.send_media_group(USER, [InputMediaPhoto(images[0])])


async def test_retry_after_and_other_faults(fake: FakeBotAPI, bot: Bot) -> None:
    fake.fail_next("sendMessage", error_code=429, retry_after=7)
    with pytest.raises(RetryAfter) as info:
        await bot.send_message(USER, "x")
    assert "retry in 7 seconds" in str(info.value).lower()
    assert fake.last_call("sendMessage").error == {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests: retry after 7",
        "parameters": {"retry_after": 7},
    }
    assert (await bot.send_message(USER, "x")).text == "x"  # only the next call failed

    fake.fail_next("sendMessage", error_code=502)
    with pytest.raises(NetworkError):
        await bot.send_message(USER, "y")

    fake.drop_next("sendMessage", processed=True)
    before = len(fake.bot_messages(USER))
    with pytest.raises(NetworkError):
        await bot.send_message(USER, "lost answer")
    assert fake.last_call("sendMessage").status == 0
    assert len(fake.bot_messages(USER)) == before + 1  # it *was* delivered


async def test_get_file_over_20_mb_is_refused(fake: FakeBotAPI, bot: Bot) -> None:
    big = fake.user_sends_document(USER, USER, b"\0" * (20 * 1024 * 1024 + 1), "big.bin")
    small = fake.user_sends_document(USER, USER, b"%PDF-1.4 tiny", "doc.pdf")
    assert small["document"]["mime_type"] == "application/pdf"
    with pytest.raises(BadRequest, match=r"(?i)file is too big"):
        await bot.get_file(big["document"]["file_id"])
    file = await bot.get_file(small["document"]["file_id"])
    assert bytes(await file.download_as_bytearray()) == b"%PDF-1.4 tiny"
    with pytest.raises(BadRequest, match=r"(?i)invalid file_id"):
        await bot.get_file("nope")


async def test_edit_message_text_not_modified(fake: FakeBotAPI, bot: Bot) -> None:
    message = await bot.send_message(USER, "Working…")
    with pytest.raises(BadRequest, match=r"(?i)message is not modified"):
        await bot.edit_message_text("Working… ", USER, message.message_id)  # trimmed: same
    edited = await bot.edit_message_text("Done", USER, message.message_id)
    assert edited.text == "Done"
    assert edited.edit_date is not None
    with pytest.raises(BadRequest, match=r"(?i)message to edit not found"):
        await bot.edit_message_text("Done", USER, 999)


async def test_photo_limits_and_text_validation(fake: FakeBotAPI, bot: Bot) -> None:
    with pytest.raises(BadRequest, match=r"(?i)photo_invalid_dimensions"):
        await bot.send_photo(USER, make_image(2100, 100))  # ratio 21 > 20
    with pytest.raises(BadRequest, match=r"(?i)image_process_failed"):
        await bot.send_photo(USER, b"not an image")
    with pytest.raises(BadRequest, match=r"(?i)can't parse entities"):
        await bot.send_message(USER, "1 < 2", parse_mode="HTML")
    with pytest.raises(BadRequest, match=r"(?i)reserved"):
        await bot.send_message(USER, "v1.2", parse_mode="MarkdownV2")
    with pytest.raises(BadRequest, match=r"(?i)message is too long"):
        await bot.send_message(USER, "x" * 4097)
    ok = await bot.send_message(USER, r"*v1\.2* done", parse_mode="MarkdownV2")
    assert ok.text == "v1.2 done"
    assert ok.entities[0].type == "bold"
    assert ok.entities[0].length == 4
    big = make_image(3000, 2250)
    sent = await bot.send_photo(USER, big)
    assert (sent.photo[-1].width, sent.photo[-1].height) == (2560, 1920)


async def test_long_poll_wakes_on_new_update(fake: FakeBotAPI, bot: Bot) -> None:
    timer = threading.Timer(0.3, fake.user_sends_text, args=(USER, USER, "ping"))
    timer.start()
    started = time.monotonic()
    updates = await bot.get_updates(timeout=30)
    assert time.monotonic() - started < 15  # woken by the update, not the poll's end
    assert [u.message.text for u in updates] == ["ping"]
    assert await bot.get_updates(offset=updates[-1].update_id + 1, timeout=0) == ()
    assert fake.pending_updates == []


async def test_wrong_token_and_unknown_method(fake: FakeBotAPI) -> None:
    async with httpx.AsyncClient() as client:
        unknown = await client.post(f"{fake.api_base_url}{fake.token}/frobnicate")
        assert unknown.status_code == 404
        assert unknown.json() == {"ok": False, "error_code": 404, "description": "Not Found"}
        unauthorized = await client.get(f"{fake.api_base_url}999:wrong/getMe")
        assert unauthorized.status_code == 401
        json_body = await client.post(
            f"{fake.api_base_url}{fake.token}/sendMessage", json={"chat_id": 7, "text": "123"}
        )
        assert json_body.json()["result"]["text"] == "123"
    assert fake.last_call("sendMessage").params == {"chat_id": 7, "text": "123"}

    wrong = Bot("999:wrong", base_url=fake.api_base_url, base_file_url=fake.file_base_url)
    try:
        with pytest.raises(InvalidToken):
            await wrong.initialize()
    finally:
        await wrong.shutdown()
