"""Answering the user: replies that quote the message, errors the user can fix, and the
error handler that keeps one bad update from stopping the bot (and says "try again" while
the store is unavailable)."""

from __future__ import annotations

import contextlib
import logging

from telegram import Message, ReplyParameters, Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from tools.errors import StoreUnavailable

log = logging.getLogger("retouch.bot")


class UserError(Exception):
    """Something the user can fix; the message says how."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def reply_parameters(message_id: int | None) -> ReplyParameters | None:
    """Quote a message, and still send if it was deleted meanwhile."""
    if message_id is None:
        return None
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


async def say(message: Message, text: str, **kw: object) -> Message:
    """Reply to a message (quoting it, and still sending if it was deleted)."""
    return await message.reply_text(
        text, reply_parameters=reply_parameters(message.message_id), **kw
    )


async def edit_text(message: Message, text: str) -> None:
    """Best-effort edit of one of the bot's messages."""
    with contextlib.suppress(TelegramError):
        await message.edit_text(text)


#: The answer while the store's database cannot be reached.
STORE_UNAVAILABLE = (
    "⏳ My storage is unavailable just now (store unavailable), so I can't do that. "
    "Please try again in a minute."
)


async def on_error(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log, tell the user what went wrong, and carry on with the next update."""
    down = isinstance(context.error, StoreUnavailable)
    if down:  # expected while the database restarts: no traceback
        log.warning("an update met an outage: %s", context.error)
    else:
        log.error("error while handling an update: %r", context.error, exc_info=context.error)
    if not isinstance(update, Update):
        return
    with contextlib.suppress(Exception):
        if update.callback_query is not None:
            await update.callback_query.answer(
                STORE_UNAVAILABLE if down else "Sorry — that failed on my side."
            )
            return
        message = update.effective_message
        if message is not None:
            await say(
                message,
                STORE_UNAVAILABLE
                if down
                else "Sorry — something went wrong on my side while handling that. "
                "Please try again in a moment.",
            )
