"""The commands (/start, /help, /functions, /vendor, /settings, /status, /cancel, /history)
and the answers to text that is not an edit."""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.constants import ChatType
from telegram.ext import ContextTypes

from bots import captions, storage
from bots.access import owner
from bots.captions import EXAMPLES, FUNCTION_COMMANDS
from bots.menus import apply_setting, settings_view, vendor_view
from bots.rendering import ICONS, describe_task
from bots.replies import UserError, say
from bots.state import Runtime, runtime
from tools import budgets
from tools.models import TaskStatus

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
    return "\n".join(lines)


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


async def cmd_vendor(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    message = update.effective_message
    assert message is not None and update.effective_user is not None
    settings = await storage.get_user(rt.db, update.effective_user.id)
    vendors = rt.editor.vendor_kinds()
    args = context.args or []
    if args:
        name = args[0]
        if name.lower() in ("auto", "automatic"):
            settings.vendor = None
        elif name in vendors:
            settings.vendor = name
        else:
            await say(message, f"No vendor {name!r} here; choose: {', '.join(vendors)} or auto.")
            return
        await storage.save_user(rt.db, settings)
    text, keyboard = vendor_view(rt.editor, settings.vendor)
    await say(message, text, reply_markup=keyboard)


async def cmd_settings(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    message = update.effective_message
    assert message is not None and update.effective_user is not None
    settings = await storage.get_user(rt.db, update.effective_user.id)
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
        await storage.save_user(rt.db, settings)
    text, keyboard = settings_view(settings)
    await say(message, text, reply_markup=keyboard)


async def cmd_status(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    message = update.effective_message
    user = update.effective_user
    assert message is not None and user is not None
    lines = []
    for task in await rt.editor.active_tasks(owner(user.id)):
        state = f"with {task.vendor}" if task.status == TaskStatus.running else "queued"
        lines.append(
            f"{ICONS[task.status]} {describe_task(task)} — {state}"
            + (f" ({task.progress})" if task.progress else "")
        )
    head = "Running now:\n" + "\n".join(lines) if lines else "Nothing is running."
    spending = budgets.describe(await rt.editor.budget(owner(user.id)))
    await say(message, f"{head}\n\n{await rt.limits.summary(user.id)}\n{spending}")


async def cmd_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    rt = runtime(context)
    message = update.effective_message
    user = update.effective_user
    assert message is not None and user is not None
    targets = [task.id for task in await rt.editor.active_tasks(owner(user.id))]
    replied = message.reply_to_message
    if replied is not None:
        one = await storage.task_for_status_message(rt.db, message.chat_id, replied.message_id)
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


# ---- other text --------------------------------------------------------------------------


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
