"""The bot's own counters, in the core's registry (``tools.telemetry``), so that the
exporter ``[telegram] metrics_port`` starts shows them with the rest."""

from __future__ import annotations

from prometheus_client import Counter
from telegram import Update

from tools.telemetry import REGISTRY

UPDATES = Counter(
    "retouch_bot_updates",
    "Updates the bot received, by kind and whether the sender was let through",
    ["kind", "outcome"],
    registry=REGISTRY,
)
DELIVERIES = Counter(
    "retouch_bot_deliveries",
    "Result images the bot sent to chats (sent), or failed to send (failed)",
    ["outcome"],
    registry=REGISTRY,
)
#: Update fields counted by name; anything else is "other".
KINDS = ("message", "edited_message", "callback_query", "channel_post", "my_chat_member")


def update_kind(update: object) -> str:
    if isinstance(update, Update):
        for kind in KINDS:
            if getattr(update, kind, None) is not None:
                return kind
    return "other"


def update_seen(update: object, allowed: bool) -> None:
    UPDATES.labels(update_kind(update), "allowed" if allowed else "refused").inc()


def delivered(count: int, ok: bool = True) -> None:
    if count > 0:
        DELIVERIES.labels("sent" if ok else "failed").inc(count)
