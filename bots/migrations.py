"""The bot's own tables, as numbered steps of the store's migration runner.

The steps were part of the core's set until the bot took its data along; they keep their
names (and numbers), so a database that already ran them does not run them again. Their
tables refer to the core's ``tasks`` (``ON DELETE CASCADE``): a bot row goes with its task.
Never edit a step that has shipped; append a new one.
"""

from __future__ import annotations

import aiosqlite

from tools.store.migrations import Migrations

#: The Telegram bot's set (``tg_*`` tables).
BOT = Migrations("telegram")
migration = BOT.step


@migration
async def m003_telegram(db: aiosqlite.Connection) -> None:
    """The Telegram bot's state: chat ↔ task mapping with delivery state, sent result
    messages (so a reply to a result edits it), and per-user settings."""
    await db.execute(
        """
        CREATE TABLE tg_tasks (
            task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
            chat_id INTEGER NOT NULL,
            user_id INTEGER NOT NULL,
            request_message_id INTEGER,
            status_message_id INTEGER,
            status_text TEXT,
            note TEXT,
            delivery TEXT NOT NULL DEFAULT 'pending'
                CHECK (delivery IN ('pending', 'sending', 'delivered', 'failed')),
            sent_items INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            created_at REAL NOT NULL,
            claimed_at REAL,
            delivered_at REAL
        )
        """
    )
    await db.execute("CREATE INDEX tg_tasks_delivery ON tg_tasks (delivery, next_attempt_at)")
    await db.execute("CREATE INDEX tg_tasks_user ON tg_tasks (user_id, created_at)")
    await db.execute(
        """
        CREATE TABLE tg_messages (
            chat_id INTEGER NOT NULL,
            message_id INTEGER NOT NULL,
            task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
            idx INTEGER NOT NULL,
            file_id TEXT,
            PRIMARY KEY (chat_id, message_id)
        )
        """
    )
    await db.execute("CREATE INDEX tg_messages_task ON tg_messages (task_id)")
    await db.execute(
        """
        CREATE TABLE tg_users (
            user_id INTEGER PRIMARY KEY,
            vendor TEXT,
            n INTEGER NOT NULL DEFAULT 1,
            seed INTEGER,
            originals INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL
        )
        """
    )


@migration
async def m005_telegram_inbox(db: aiosqlite.Connection) -> None:
    """Every update the bot receives, kept until it has been handled: Telegram forgets an
    update once the next poll confirms it, so a bot killed after that poll but before its
    handler ran would otherwise lose the request."""
    await db.execute(
        """
        CREATE TABLE tg_inbox (
            update_id INTEGER PRIMARY KEY,
            body TEXT NOT NULL,
            received_at REAL NOT NULL,
            done_at REAL
        )
        """
    )
    await db.execute("CREATE INDEX tg_inbox_open ON tg_inbox (done_at)")
    await db.execute("CREATE INDEX tg_tasks_message ON tg_tasks (chat_id, request_message_id)")


@migration
async def m009_telegram_inbox_done_with_its_task(db: aiosqlite.Connection) -> None:
    """A request's task row marks its inbox update handled in the same write: a bot killed
    between writing the row and marking the update left a handled request open, and a next
    bot stopped during its start-up never replayed it. Album parts are left to the inbox
    (marking the captioned part early would rebuild the album without its caption)."""
    await db.execute(
        """
        CREATE TRIGGER tg_inbox_done_with_its_task AFTER INSERT ON tg_tasks BEGIN
            UPDATE tg_inbox SET done_at = NEW.created_at
            WHERE done_at IS NULL
              AND json_extract(body, '$.message.chat.id') = NEW.chat_id
              AND json_extract(body, '$.message.message_id') = NEW.request_message_id
              AND json_extract(body, '$.message.media_group_id') IS NULL;
        END
        """
    )
