"""The inline buttons, one handler each; the callback data says which (``vendor:<name>``,
``set:<key>:<value>``, ``cancel:<task>``, ``resend:<task>``). :data:`BUTTONS` pairs each
pattern with its handler; a button none of them knows has expired."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable

from telegram import CallbackQuery, InlineKeyboardMarkup, Message, Update
from telegram.error import BadRequest, TelegramError
from telegram.ext import ContextTypes

from bots import storage
from bots.menus import apply_setting, settings_view, vendor_view
from bots.rendering import cancel_keyboard
from bots.replies import UserError
from bots.sending import sent_rows
from bots.state import Runtime, runtime
from tools.errors import NotFound
from tools.models import ResultImage

Callback = Callable[[Update, ContextTypes.DEFAULT_TYPE], Awaitable[None]]


def _pressed(
    update: Update, context: ContextTypes.DEFAULT_TYPE
) -> tuple[Runtime, CallbackQuery, int, str]:
    """The runtime, the query, who pressed, and the data after the button's ``kind:``."""
    query = update.callback_query
    user = update.effective_user
    assert query is not None and user is not None
    return runtime(context), query, user.id, (query.data or "").partition(":")[2]


async def _edit_menu(query: CallbackQuery, text: str, keyboard: InlineKeyboardMarkup) -> None:
    with contextlib.suppress(BadRequest):
        await query.edit_message_text(text, reply_markup=keyboard)


async def on_vendor(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/vendor's menu: who runs this user's edits (empty: automatic)."""
    rt, query, user_id, name = _pressed(update, context)
    if name and name not in rt.editor.vendor_kinds():
        await query.answer("That vendor is no longer enabled.", show_alert=True)
        return
    settings = await storage.get_user(rt.db, user_id)
    settings.vendor = name or None
    await storage.save_user(rt.db, settings)
    await query.answer(f"Vendor: {name or 'automatic'}")
    text, keyboard = vendor_view(rt.editor, settings.vendor)
    await _edit_menu(query, text, keyboard)


async def on_setting(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/settings' menu: ``set:<key>:<value>``."""
    rt, query, user_id, arg = _pressed(update, context)
    key, _, value = arg.partition(":")
    settings = await storage.get_user(rt.db, user_id)
    try:
        apply_setting(settings, key, value)
    except UserError as exc:
        await query.answer(exc.message, show_alert=True)
        return
    await storage.save_user(rt.db, settings)
    await query.answer("Saved")
    text, keyboard = settings_view(settings)
    await _edit_menu(query, text, keyboard)


async def on_cancel(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A status message's Cancel button."""
    rt, query, user_id, task_id = _pressed(update, context)
    row = await storage.get_task(rt.db, task_id)
    if row is None or row.user_id != user_id:
        await query.answer("That isn't one of your edits.", show_alert=True)
        return
    task = await rt.editor.cancel_task(task_id)
    await query.answer("Canceling…" if not task.finished else "It has already ended.")
    with contextlib.suppress(TelegramError):
        await query.edit_message_reply_markup(cancel_keyboard(task))


async def on_resend(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/history's "Send again": the results once more, recorded so replies to them edit."""
    rt, query, user_id, task_id = _pressed(update, context)
    row = await storage.get_task(rt.db, task_id)
    if row is None or row.user_id != user_id:
        await query.answer("That isn't one of your edits.", show_alert=True)
        return
    try:
        task = await rt.editor.check_task(task_id)
    except NotFound:
        await query.answer("That edit is no longer stored.", show_alert=True)
        return
    await query.answer("Sending…")
    chat_id = query.message.chat.id if query.message else user_id
    settings = await storage.get_user(rt.db, user_id)

    async def record(sent: list[tuple[Message, ResultImage]], done: int) -> None:
        await storage.add_messages(rt.db, chat_id, sent_rows(task.id, sent))

    try:
        await rt.tracker.sender.send_results(
            chat_id, task, originals=settings.originals, on_sent=record
        )
    except NotFound:
        await context.bot.send_message(chat_id, "Those results are no longer stored.")


async def on_expired(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Any other button (from an older version of the bot)."""
    assert update.callback_query is not None
    await update.callback_query.answer("This button has expired.")


#: (pattern of the callback data, handler), tried in order; then :func:`on_expired`.
BUTTONS: list[tuple[str, Callback]] = [
    (r"^vendor:", on_vendor),
    (r"^set:", on_setting),
    (r"^cancel:", on_cancel),
    (r"^resend:", on_resend),
]
