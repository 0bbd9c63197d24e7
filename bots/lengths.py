"""Telegram's length limits, and the one function that cuts a text to fit them.

Telegram refuses a message text over 4 096 characters ("message is too long"), a caption
over 1 024 ("message caption is too long") and a button's alert over 200. It counts in
UTF-16 code units (an emoji outside the Basic Multilingual Plane is two); a cut by that
measure fits however Telegram counts, since no text has more code points than code units.

Every Bot API call the bot makes passes :func:`fit_call` (``bots.retry.RetryingLimiter``
calls it), so no send or edit of a text, a caption or an alert can be refused for its
length: an over-long one is cut, and ends with :data:`MARK` so the reader sees it was.
Album captions travel inside their media objects, which :func:`fit_call` does not open;
``bots.sending`` cuts those with :func:`fit` as it builds them. The bot sends plain text
only (no ``parse_mode``), so a cut can break no markup.
"""

from __future__ import annotations

from typing import Any

from telegram.constants import CallbackQueryLimit, MessageLimit

TEXT = int(MessageLimit.MAX_TEXT_LENGTH)
CAPTION = int(MessageLimit.CAPTION_LENGTH)
ALERT = int(CallbackQueryLimit.ANSWER_CALLBACK_QUERY_TEXT_LENGTH)
MARK = "…"

#: (Bot API method, parameter) → the longest value Telegram takes; any ``caption`` is CAPTION.
LIMITS = {
    ("sendMessage", "text"): TEXT,
    ("editMessageText", "text"): TEXT,
    ("answerCallbackQuery", "text"): ALERT,
}


def units(text: str) -> int:
    """The length of ``text`` as Telegram counts it (UTF-16 code units)."""
    return len(text.encode("utf-16-le")) // 2


def fit(text: str, limit: int) -> str:
    """``text`` when it fits in ``limit`` UTF-16 code units; else its longest beginning
    that fits with :data:`MARK` after it (never half a surrogate pair)."""
    if units(text) <= limit:
        return text
    room = limit - units(MARK)
    used = 0
    for i, char in enumerate(text):
        used += 2 if ord(char) > 0xFFFF else 1
        if used > room:
            return text[:i].rstrip() + MARK
    raise AssertionError("unreachable: the text was too long")


def fit_call(method: str, params: dict[str, Any]) -> None:
    """Cut a Bot API call's text, caption or alert to Telegram's limit, in place."""
    for name in ("text", "caption"):
        value = params.get(name)
        limit = CAPTION if name == "caption" else LIMITS.get((method, name))
        if isinstance(value, str) and limit is not None:
            params[name] = fit(value, limit)
