"""What the bot does with each update: edits from photos, albums and replies; the commands;
inline buttons; and the error handler that keeps one bad update from stopping the bot."""

from __future__ import annotations

import base64
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass

from pydantic import ValidationError
from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    Message,
    ReplyParameters,
    Update,
)
from telegram.constants import ChatType, FileSizeLimit
from telegram.error import BadRequest, TelegramError
from telegram.ext import ContextTypes

from bots import captions
from bots.access import owner
from bots.captions import COMMAND_FOR, EXAMPLES, FUNCTION_COMMANDS, CaptionError, Plan
from bots.delivery import cancel_keyboard, describe_task, file_id
from bots.retry import retrying
from bots.state import Runtime, runtime
from tools import chats
from tools.errors import NotFound, RetouchError
from tools.models import EditRequest, FunctionInfo, ResultImage, Task, TaskStatus

log = logging.getLogger("retouch.bot")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
ICONS = {
    TaskStatus.queued: "⏳",
    TaskStatus.running: "⚙️",
    TaskStatus.succeeded: "✅",
    TaskStatus.failed: "❌",
    TaskStatus.canceled: "🚫",
}


class UserError(Exception):
    """Something the user can fix; the message says how."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Source:
    """One input image: a Telegram file, or one of our own stored results."""

    label: str
    file_id: str | None = None
    file_size: int | None = None
    mime: str = "image/jpeg"
    result: tuple[str, int] | None = None


# ---- texts ---------------------------------------------------------------------------------


def help_text(rt: Runtime) -> str:
    fns = rt.functions
    lines = [
        "Send me a photo with a caption saying what to do, and I'll send back the edited "
        "image. Examples:",
    ]
    for command, function in FUNCTION_COMMANDS.items():
        if function in fns:
            lines.append(f"  {EXAMPLES[command]}")
    if "edit" in fns:
        lines.append("  make the sky pink  (plain words are an /edit)")
    else:
        lines.append("  oil painting  (plain words: I pick a local function and say which)")
    lines += [
        "",
        "• An album of photos is one edit of them all"
        + (" (/edit takes up to 3)." if "edit" in fns else "."),
        "• Reply to any photo — including my results — with words or a command to edit it again.",
        "• Images can be sent as files too (up to 20 MB).",
        "",
        "Commands: /functions what I can do · /vendor who does it · /settings number of "
        "results, seed, originals · /status · /cancel · /history",
    ]
    return "\n".join(lines)


def functions_text(rt: Runtime) -> str:
    lines = ["What I can do (with the vendors enabled here):"]
    for command, function in FUNCTION_COMMANDS.items():
        info = rt.functions.get(function)
        if info is None:
            continue
        images = f"{info.min_images}–{info.max_images} images" if info.max_images > 1 else "1 image"
        lines.append(f"\n/{command} — {info.summary} ({images}; {', '.join(info.vendors)})")
        lines.append(f"  e.g. {EXAMPLES[command]}")
        for vendor, note in info.notes.items():
            lines.append(f"  {vendor}: {note}")
    missing = [f"/{c}" for c, f in FUNCTION_COMMANDS.items() if f not in rt.functions]
    if missing:
        lines.append(f"\nNot available here (no enabled vendor runs them): {', '.join(missing)}")
    text = "\n".join(lines)
    return text if len(text) <= 4096 else text[:4095] + "…"


def _reply(message_id: int) -> ReplyParameters:
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


async def say(message: Message, text: str, **kw: object) -> Message:
    """Reply to a message (quoting it, and still sending if it was deleted)."""
    return await message.reply_text(text, reply_parameters=_reply(message.message_id), **kw)


# ---- images --------------------------------------------------------------------------------


def _is_image_document(message: Message) -> bool:
    doc = message.document
    if doc is None:
        return False
    if doc.mime_type and doc.mime_type.startswith("image/"):
        return True
    return (doc.file_name or "").lower().endswith(IMAGE_EXTENSIONS)


async def source_of(rt: Runtime, message: Message, *, label: str = "image") -> Source | None:
    """The image a message holds (None: it holds none). A non-image file is a UserError."""
    if message.from_user is not None and message.from_user.id == message.get_bot().id:
        found = await chats.result_for_message(rt.db, message.chat_id, message.message_id)
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


async def fetch(rt: Runtime, bot: Bot, source: Source) -> str:
    """A ``data:`` URI of the image's bytes (never a Telegram file URL: it holds the token)."""
    if source.result is not None:
        data, mime = await rt.editor.result(*source.result)
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
    if await chats.task_for_message(rt.db, message.chat_id, message.message_id):
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
    settings = await chats.get_user(rt.db, user.id)
    async with rt.limits.slot(user.id) as refusal:
        if refusal is not None:
            await say(message, refusal)
            return None
        images = f"{count} images" if count > 1 else "the image"
        ack = await say(message, f"👍 Got it: {plan.describe()} — fetching {images}…")
        try:
            uris = [await fetch(rt, bot, s) for s in sources]
            request, notes = build_request(rt, plan, uris, settings, info)
            # Keyed by the message: handled again after a crash, it starts no second task.
            key = f"telegram:{message.chat_id}:{message.message_id}"
            task = await rt.editor.edit_image(request, owner=owner(user.id), key=key)
        except (UserError, RetouchError) as exc:
            await _edit(ack, f"❌ {exc.message}")
            return None
        except TelegramError as exc:
            log.warning("fetching images for user %s failed: %s", user.id, exc)
            await _edit(
                ack,
                "❌ I couldn't download the image from Telegram just now "
                f"({exc.message}). Please send it again.",
            )
            return None
        except Exception:
            log.exception("starting an edit for user %s failed", user.id)
            await _edit(ack, "❌ Sorry — something went wrong on my side. Please try again.")
            return None
        note = " ".join(n for n in [plan.chosen, *notes] if n) or None
        await chats.add_task(
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
    rt: Runtime, plan: Plan, uris: list[str], settings: chats.UserSettings, info: FunctionInfo
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
                rt.editor.route(request)
            except RetouchError:
                request = EditRequest.model_validate(base)
                asked = ", ".join(f"{k}={v}" for k, v in extras.items())
                notes.append(f"Your setting {asked} isn't supported here, so it was left out.")
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"That request isn't valid: {where}: {err['msg']}") from None
    return request, notes


async def _edit(message: Message, text: str) -> None:
    with contextlib.suppress(TelegramError):
        await message.edit_text(text)


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
        source = await source_of(rt, message, label="image")
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
        sources = [await source_of(rt, m, label=f"image {i + 1}") for i, m in enumerate(parts)]
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
        source = await source_of(rt, message.reply_to_message, label="image")
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


async def on_text(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    if message is None or message.chat.type != ChatType.PRIVATE:
        return
    await say(
        message,
        "Send me a photo with a caption that says what to do (e.g. “/style oil painting”), "
        "or reply to a photo with words. /help has examples.",
    )


async def on_unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    if message is None:
        return
    parts = captions.split_command(message.text or "")
    rt = runtime(context)
    if parts and parts[1] and rt.bot_username and parts[1].lower() != rt.bot_username.lower():
        return  # a command for another bot in a group
    name = f"/{parts[0]}" if parts else "That"
    await say(message, f"I don't know {name}. See /help for what I understand.")


# ---- commands ------------------------------------------------------------------------------


async def cmd_start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    message = update.effective_message
    assert message is not None and update.effective_user is not None
    name = update.effective_user.first_name or "there"
    await say(message, f"Hi {name}! I'm Retouch, an image editor.\n\n{help_text(rt)}")


async def cmd_help(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    assert message is not None
    await say(message, help_text(runtime(context)))


async def cmd_functions(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    message = update.effective_message
    assert message is not None
    await say(message, functions_text(runtime(context)))


def vendor_view(rt: Runtime, current: str | None) -> tuple[str, InlineKeyboardMarkup]:
    vendors = rt.editor.vendors
    text = "Which vendor should run your edits? Automatic picks the first that can.\n"
    for name, vendor in vendors.items():
        runs = [f"/{COMMAND_FOR[f]}" for f in vendor.capabilities if f in COMMAND_FOR]
        text += f"\n{name} ({vendor.kind}): {' '.join(runs) or 'nothing the bot offers'}"
    text += f"\n\nNow: {current or 'automatic'}"
    mark = "✓ "
    rows = [
        [InlineKeyboardButton(("" if current else mark) + "Automatic", callback_data="vendor:")]
    ]
    rows += [
        [
            InlineKeyboardButton(
                ("" if current != name else mark) + name, callback_data=f"vendor:{name}"
            )
        ]
        for name in vendors
        if len(f"vendor:{name}".encode()) <= 64
    ]
    return text, InlineKeyboardMarkup(rows)


async def cmd_vendor(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    message = update.effective_message
    assert message is not None and update.effective_user is not None
    settings = await chats.get_user(rt.db, update.effective_user.id)
    args = context.args or []
    if args:
        name = args[0]
        if name.lower() in ("auto", "automatic"):
            settings.vendor = None
        elif name in rt.editor.vendors:
            settings.vendor = name
        else:
            await say(
                message, f"No vendor {name!r} here; choose: {', '.join(rt.editor.vendors)} or auto."
            )
            return
        await chats.save_user(rt.db, settings)
    text, keyboard = vendor_view(rt, settings.vendor)
    await say(message, text, reply_markup=keyboard)


def settings_view(s: chats.UserSettings) -> tuple[str, InlineKeyboardMarkup]:
    text = (
        "Your settings:\n"
        f"• results per edit (n): {s.n} — where the vendor can make several\n"
        f"• seed: {s.seed if s.seed is not None else 'random'} — the same seed repeats a "
        "result, where the vendor supports it\n"
        f"• delivery: {'original files' if s.originals else 'photos'}\n\n"
        "Change with the buttons or e.g. /settings n 2 · /settings seed 42 · "
        "/settings seed random · /settings originals on"
    )

    def tick(on: bool, label: str) -> str:
        return f"✓ {label}" if on else label

    rows = [
        [
            InlineKeyboardButton(tick(s.n == k, f"n={k}"), callback_data=f"set:n:{k}")
            for k in (1, 2, 3, 4)
        ],
        [
            InlineKeyboardButton(tick(s.seed is None, "Random seed"), callback_data="set:seed:"),
            InlineKeyboardButton("New fixed seed", callback_data="set:seed:new"),
        ],
        [
            InlineKeyboardButton(tick(not s.originals, "Photos"), callback_data="set:orig:0"),
            InlineKeyboardButton(tick(s.originals, "Original files"), callback_data="set:orig:1"),
        ],
    ]
    return text, InlineKeyboardMarkup(rows)


def apply_setting(s: chats.UserSettings, key: str, value: str) -> None:
    """Change one setting from a command or a button; UserError when the value is wrong."""
    key, value = key.lower(), value.strip().lower()
    if key == "n":
        if not value.isdigit() or not 1 <= int(value) <= 10:
            raise UserError("n is the number of results per edit, from 1 to 10: /settings n 2")
        s.n = int(value)
    elif key == "seed":
        if value in ("", "random", "off", "none"):
            s.seed = None
        elif value == "new":
            s.seed = secrets.randbelow(2_147_483_648)
        elif value.isdigit() and int(value) <= 2_147_483_647:
            s.seed = int(value)
        else:
            raise UserError("seed is a whole number from 0 to 2147483647, or random")
    elif key in ("originals", "orig", "files"):
        if value in ("on", "1", "yes", "true"):
            s.originals = True
        elif value in ("off", "0", "no", "false"):
            s.originals = False
        else:
            raise UserError("originals is on (send files) or off (send photos)")
    else:
        raise UserError(f"There's no setting {key!r}; the settings are n, seed and originals.")


async def cmd_settings(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    message = update.effective_message
    assert message is not None and update.effective_user is not None
    settings = await chats.get_user(rt.db, update.effective_user.id)
    args = context.args or []
    if args:
        if len(args) < 2 and args[0].lower() != "seed":
            await say(message, "Usage: /settings n 2 · /settings seed 42 · /settings originals on")
            return
        try:
            apply_setting(settings, args[0], " ".join(args[1:]))
        except UserError as exc:
            await say(message, exc.message)
            return
        await chats.save_user(rt.db, settings)
    text, keyboard = settings_view(settings)
    await say(message, text, reply_markup=keyboard)


async def cmd_status(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    message = update.effective_message
    user = update.effective_user
    assert message is not None and user is not None
    lines = []
    for task_id in await chats.active_for_user(rt.db, user.id):
        with contextlib.suppress(NotFound):
            task = await rt.editor.check_task(task_id)
            state = f"with {task.vendor}" if task.status == TaskStatus.running else "queued"
            lines.append(
                f"{ICONS[task.status]} {describe_task(task)} — {state}"
                + (f" ({task.progress})" if task.progress else "")
            )
    cfg = rt.settings.telegram
    recent = await rt.editor.store.count_since(owner(user.id), time.time() - 3600)
    head = "Running now:\n" + "\n".join(lines) if lines else "Nothing is running."
    await say(
        message,
        f"{head}\n\nEdits in the last hour: {recent} of {cfg.edits_per_hour}; at once: up to "
        f"{cfg.max_concurrent_per_user}.",
    )


async def cmd_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    message = update.effective_message
    user = update.effective_user
    assert message is not None and user is not None
    targets = await chats.active_for_user(rt.db, user.id)
    replied = message.reply_to_message
    if replied is not None:
        one = await chats.task_for_status_message(rt.db, message.chat_id, replied.message_id)
        targets = [t for t in targets if t == one]
    if not targets:
        await say(message, "Nothing to cancel: none of your edits is running.")
        return
    for task_id in targets:
        await rt.editor.cancel_task(task_id)
    n = len(targets)
    await say(
        message,
        f"Canceling {n} edit{'s' if n != 1 else ''}. Running ones stop as soon "
        "as the vendor allows.",
    )


async def cmd_history(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    message = update.effective_message
    user = update.effective_user
    assert message is not None and user is not None
    tasks = await rt.editor.list_tasks(owner=owner(user.id), limit=8)
    if not tasks:
        await say(message, "No edits yet. Send me a photo with a caption to start.")
        return
    lines, buttons = ["Your last edits (newest first):"], []
    for i, task in enumerate(tasks, 1):
        results = f", {len(task.results)} result(s)" if task.results else ""
        when = task.created_at.strftime("%Y-%m-%d %H:%M UTC")
        lines.append(
            f"{i}. {ICONS[task.status]} {describe_task(task)} — {task.vendor}, {when}{results}"
        )
        if task.results:
            buttons.append(
                InlineKeyboardButton(f"Send {i} again", callback_data=f"resend:{task.id}")
            )
    rows = [buttons[i : i + 3] for i in range(0, len(buttons), 3)]
    await say(message, "\n".join(lines), reply_markup=InlineKeyboardMarkup(rows) if rows else None)


# ---- inline buttons ------------------------------------------------------------------------


async def on_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    query = update.callback_query
    user = update.effective_user
    assert query is not None and user is not None
    kind, _, arg = (query.data or "").partition(":")
    if kind == "vendor":
        if arg and arg not in rt.editor.vendors:
            await query.answer("That vendor is no longer enabled.", show_alert=True)
            return
        settings = await chats.get_user(rt.db, user.id)
        settings.vendor = arg or None
        await chats.save_user(rt.db, settings)
        await query.answer(f"Vendor: {arg or 'automatic'}")
        text, keyboard = vendor_view(rt, settings.vendor)
        await _edit_query(query, text, keyboard)
    elif kind == "set":
        key, _, value = arg.partition(":")
        settings = await chats.get_user(rt.db, user.id)
        try:
            apply_setting(settings, key, value)
        except UserError as exc:
            await query.answer(exc.message[:200], show_alert=True)
            return
        await chats.save_user(rt.db, settings)
        await query.answer("Saved")
        text, keyboard = settings_view(settings)
        await _edit_query(query, text, keyboard)
    elif kind == "cancel":
        row = await chats.get_task(rt.db, arg)
        if row is None or row.user_id != user.id:
            await query.answer("That isn't one of your edits.", show_alert=True)
            return
        task = await rt.editor.cancel_task(arg)
        await query.answer("Canceling…" if not task.finished else "It has already ended.")
        with contextlib.suppress(TelegramError):
            await query.edit_message_reply_markup(cancel_keyboard(task))
    elif kind == "resend":
        row = await chats.get_task(rt.db, arg)
        if row is None or row.user_id != user.id:
            await query.answer("That isn't one of your edits.", show_alert=True)
            return
        try:
            task = await rt.editor.check_task(arg)
        except NotFound:
            await query.answer("That edit is no longer stored.", show_alert=True)
            return
        await query.answer("Sending…")
        chat_id = query.message.chat.id if query.message else user.id
        settings = await chats.get_user(rt.db, user.id)

        async def record(sent: list[tuple[Message, ResultImage]], done: int) -> None:
            await chats.add_messages(
                rt.db,
                chat_id,
                [(m.message_id, task.id, r.index, file_id(m)) for m, r in sent if file_id(m)],
            )

        try:
            await rt.tracker.sender.send_results(
                chat_id, task, originals=settings.originals, on_sent=record
            )
        except NotFound:
            await context.bot.send_message(chat_id, "Those results are no longer stored.")
    else:
        await query.answer("This button has expired.")


async def _edit_query(query: object, text: str, keyboard: InlineKeyboardMarkup) -> None:
    with contextlib.suppress(BadRequest):
        await query.edit_message_text(text, reply_markup=keyboard)  # type: ignore[attr-defined]


# ---- errors --------------------------------------------------------------------------------


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log, tell the user something went wrong, and carry on with the next update."""
    log.error("error while handling an update: %r", context.error, exc_info=context.error)
    if not isinstance(update, Update):
        return
    with contextlib.suppress(Exception):
        if update.callback_query is not None:
            await update.callback_query.answer("Sorry — that failed on my side.")
            return
        message = update.effective_message
        if message is not None:
            await say(
                message,
                "Sorry — something went wrong on my side while handling that. "
                "Please try again in a moment.",
            )
