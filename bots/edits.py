"""Edits: a photo or image file with a caption, an album, or words in reply to an image
(including the bot's own results) become a task; the tracker takes it from there."""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass

from pydantic import ValidationError
from telegram import Bot, Message, Update
from telegram.constants import ChatType, FileSizeLimit
from telegram.error import BadRequest, TelegramError
from telegram.ext import ContextTypes

from bots import captions, storage
from bots.access import owner
from bots.captions import EXAMPLES, CaptionError, Plan
from bots.lengths import fit
from bots.rendering import ECHO
from bots.replies import UserError, edit_text, say
from bots.retry import retrying
from bots.state import Runtime, runtime
from tools.errors import IdempotencyConflict, RetouchError
from tools.models import EditRequest, FunctionInfo, Task
from tools.service import Editor

log = logging.getLogger("retouch.bot")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class Source:
    """One input image: a Telegram file, or one of our own stored results."""

    label: str
    file_id: str | None = None
    file_size: int | None = None
    mime: str = "image/jpeg"
    result: tuple[str, int] | None = None


# ---- images --------------------------------------------------------------------------------


def _is_image_document(message: Message) -> bool:
    doc = message.document
    if doc is None:
        return False
    if doc.mime_type and doc.mime_type.startswith("image/"):
        return True
    return (doc.file_name or "").lower().endswith(IMAGE_EXTENSIONS)


async def source_of(db: storage.Db, message: Message, *, label: str = "image") -> Source | None:
    """The image a message holds (None: it holds none). A non-image file is a UserError."""
    if message.from_user is not None and message.from_user.id == message.get_bot().id:
        found = await storage.result_for_message(db, message.chat_id, message.message_id)
        if found is not None:
            return Source(label, result=found)
    if message.photo:
        size = message.photo[-1]
        return Source(label, size.file_id, size.file_size, "image/jpeg")
    if message.document is not None:
        doc = message.document
        if not _is_image_document(message):
            kind = doc.mime_type or "unknown type"
            raise UserError(
                f"That file ({doc.file_name or 'unnamed'}, {kind}) isn't an image. Send a "
                "photo, or an image file: JPEG, PNG, WEBP, BMP, TIFF or GIF."
            )
        mime = doc.mime_type if (doc.mime_type or "").startswith("image/") else "image/png"
        return Source(label, doc.file_id, doc.file_size, mime or "image/png")
    return None


def check_size(source: Source) -> None:
    limit = FileSizeLimit.FILESIZE_DOWNLOAD
    if source.file_size is not None and source.file_size > limit:
        raise UserError(
            f"That {source.label} is {source.file_size / 1e6:.1f} MB, and Telegram lets bots "
            f"download only up to {limit / 1e6:.0f} MB. Please send a smaller file (or send "
            "it as a photo, which Telegram compresses)."
        )


async def fetch(editor: Editor, bot: Bot, source: Source) -> str:
    """A ``data:`` URI of the image's bytes (never a Telegram file URL: it holds the token)."""
    if source.result is not None:
        data, mime = await editor.result(*source.result)
    else:
        assert source.file_id is not None
        try:
            file = await bot.get_file(source.file_id)
        except BadRequest as exc:
            if "too big" in str(exc).lower():
                raise UserError(
                    f"That {source.label} is over the 20 MB that Telegram lets bots download. "
                    "Please send a smaller file."
                ) from None
            raise
        data = bytes(await retrying(file.download_as_bytearray, what="file download"))
        mime = source.mime
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# ---- starting an edit ----------------------------------------------------------------------


async def start_edit(
    rt: Runtime, bot: Bot, message: Message, plan: Plan, sources: list[Source]
) -> Task | None:
    """Check, acknowledge at once, fetch the images, create the task, and hand it to the
    tracker. Every refusal is a reply that says what to do instead."""
    user = message.from_user
    assert user is not None
    if await storage.task_for_message(rt.db, message.chat_id, message.message_id):
        return None  # this message was handled before a restart: its task runs already
    command = plan.command
    info = rt.functions.get(plan.function)
    if info is None:
        await say(
            message,
            f"{command} isn't available here: no enabled vendor can run {plan.function}. "
            "See /functions for what is.",
        )
        return None
    count = len(sources)
    if not info.min_images <= count <= info.max_images:
        await say(message, _count_problem(info, command, count))
        return None
    try:
        for source in sources:
            check_size(source)
    except UserError as exc:
        await say(message, exc.message)
        return None
    settings = await storage.get_user(rt.db, user.id)
    async with rt.limits.slot(user.id) as slot:
        if slot.refusal is not None:
            await say(message, slot.refusal)
            return None
        images = f"{count} images" if count > 1 else "the image"
        what = fit(plan.describe(), ECHO)  # the prompt may be 4 096 characters long
        ack = await say(message, f"👍 Got it: {what} — fetching {images}…")
        try:
            uris = [await fetch(rt.editor, bot, s) for s in sources]
            request, notes = build_request(rt.editor, plan, uris, settings, info)
            # Keyed by the message: handled again after a crash, it starts no second task.
            key = f"telegram:{message.chat_id}:{message.message_id}"
            task = await slot.start(lambda: _started(rt.editor, request, owner(user.id), key))
        except (UserError, RetouchError) as exc:
            await edit_text(ack, f"❌ {exc.message}")
            return None
        except TelegramError as exc:
            log.warning("fetching images for user %s failed: %s", user.id, exc)
            await edit_text(
                ack,
                "❌ I couldn't download the image from Telegram just now "
                f"({exc.message}). Please send it again.",
            )
            return None
        except Exception:
            log.exception("starting an edit for user %s failed", user.id)
            await edit_text(ack, "❌ Sorry — something went wrong on my side. Please try again.")
            return None
        note = " ".join(n for n in [plan.chosen, *notes] if n) or None
        await storage.add_task(
            rt.db,
            task_id=task.id,
            chat_id=message.chat_id,
            user_id=user.id,
            request_message_id=message.message_id,
            status_message_id=ack.message_id,
            status_text=ack.text,
            note=note,
        )
    log.info("user %s started task %s (%s, %d image(s))", user.id, task.id, task.function, count)
    rt.tracker.watch(task.id)
    return task


async def _started(editor: Editor, request: EditRequest, who: str, key: str) -> Task:
    """The task a message starts; or the one it started before a crash, if the chat's
    settings changed since (the core then finds the request different): one message makes
    one task."""
    try:
        return await editor.edit_image(request, owner=who, key=key)
    except IdempotencyConflict as exc:
        log.warning("message key %s started task %s before: following it", key, exc.task_id)
        return await editor.check_task(exc.task_id, owner=who)


def _count_problem(info: FunctionInfo, command: str, count: int) -> str:
    if info.max_images == 1:
        return (
            f"{command} works on one image at a time, and you sent {count}. Send the photos "
            "one by one"
            + (", or use /edit, which combines up to 3." if command != "/edit" else ".")
        )
    return (
        f"{command} takes {info.min_images} to {info.max_images} images (that's what the "
        f"vendors accept), and you sent {count}. Send at most {info.max_images} in one album."
    )


def build_request(
    editor: Editor,
    plan: Plan,
    uris: list[str],
    settings: storage.UserSettings,
    info: FunctionInfo,
) -> tuple[EditRequest, list[str]]:
    """The EditRequest for a plan plus the user's settings, and notes on what was adapted."""
    notes: list[str] = []
    base: dict[str, object] = {"images": uris, "prompt": plan.prompt, "function": plan.function}
    if plan.upscale_factor:
        base["upscale_factor"] = plan.upscale_factor
    if plan.expand:
        base["expand"] = plan.expand
    if plan.options:
        base["options"] = plan.options
    if settings.vendor:
        if settings.vendor in info.vendors:
            base["vendor"] = settings.vendor
        else:
            notes.append(f"Your vendor {settings.vendor} can't run {plan.command}, so I chose one.")
    params = info.parameters.get("properties", {})
    extras: dict[str, object] = {}
    if settings.n > 1 and "n" in params:
        extras["n"] = settings.n
    if settings.seed is not None and "seed" in params:
        extras["seed"] = settings.seed
    try:
        request = EditRequest.model_validate({**base, **extras})
        if extras:
            try:
                editor.route(request)
            except RetouchError:
                request = EditRequest.model_validate(base)
                asked = ", ".join(f"{k}={v}" for k, v in extras.items())
                notes.append(f"Your setting {asked} isn't supported here, so it was left out.")
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"That request isn't valid: {where}: {err['msg']}") from None
    return request, notes


def _plan(rt: Runtime, text: str | None) -> Plan | None:
    return captions.parse(text, rt.functions, rt.bot_username)


# ---- message handlers ----------------------------------------------------------------------


async def on_media(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A photo, or a document: an edit when it is an image with a caption."""
    rt = runtime(context)
    message = update.effective_message
    assert message is not None
    if message.media_group_id is not None:
        rt.albums.add(message)
        return
    try:
        source = await source_of(rt.db, message, label="image")
        plan = _plan(rt, message.caption)
    except (UserError, CaptionError) as exc:
        await say(message, exc.message)
        return
    if source is None:
        return
    if plan is None:
        if message.chat.type == ChatType.PRIVATE:
            await say(
                message,
                "What should I do with this image? Reply to it with words — e.g. “oil "
                "painting” — or a command like /adjust rotate 90. See /help for more.",
            )
        return
    await start_edit(rt, context.bot, message, plan, [source])


async def on_album(rt: Runtime, bot: Bot, parts: list[Message]) -> None:
    """A whole album (collected by bots.albums): one edit of all its images."""
    first = next((m for m in parts if m.caption), parts[0])
    try:
        sources = [await source_of(rt.db, m, label=f"image {i + 1}") for i, m in enumerate(parts)]
        plan = _plan(rt, first.caption)
    except (UserError, CaptionError) as exc:
        await say(first, exc.message)
        return
    images = [s for s in sources if s is not None]
    if plan is None:
        if first.chat.type == ChatType.PRIVATE:
            await say(
                first,
                f"What should I do with these {len(images)} images? Send the album again "
                "with a caption (e.g. /edit put them side by side), or reply to one of them "
                "to edit just that one.",
            )
        return
    await start_edit(rt, bot, first, plan, images)


async def on_reply_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Text (words or a function command) replying to a message: edit the image it holds."""
    rt = runtime(context)
    message = update.effective_message
    assert message is not None and message.reply_to_message is not None
    try:
        source = await source_of(rt.db, message.reply_to_message, label="image")
        plan = _plan(rt, message.text)
    except (UserError, CaptionError) as exc:
        await say(message, exc.message)
        return
    if plan is None:
        return
    if source is None:
        if message.chat.type == ChatType.PRIVATE:
            await say(message, "Reply to a photo (or an image file) to edit it. See /help.")
        return
    await start_edit(rt, context.bot, message, plan, [source])


async def on_function_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/style, /adjust, ... as a text message: an edit when it replies to an image."""
    message = update.effective_message
    assert message is not None
    if message.reply_to_message is not None:
        await on_reply_text(update, context)
        return
    parts = captions.split_command(message.text or "")
    example = EXAMPLES.get(parts[0] if parts else "", "/style oil painting")
    await say(
        message,
        f"Send a photo with the caption {example} — or reply to a photo with it.",
    )
