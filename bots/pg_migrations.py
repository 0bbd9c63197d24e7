"""The bot's own tables on PostgreSQL: the steps of ``bots/migrations.py`` under the same
names, in PostgreSQL's types (chat, user, message and update ids are 64-bit).

Like the SQLite set, the tables refer to the core's ``tasks`` (``ON DELETE CASCADE``), so
the core's set runs first (the Editor opens the store before the bot opens its tables).
Never edit a step that has shipped; append a new one (here and in the SQLite set).
"""

from __future__ import annotations

import asyncpg

from tools.store.pg_migrations import PgMigrations

#: The Telegram bot's set (``tg_*`` tables) on PostgreSQL.
BOT_PG = PgMigrations("telegram")
migration = BOT_PG.step


@migration
async def m003_telegram(db: asyncpg.Connection) -> None:
    """The Telegram bot's state: chat ↔ task mapping with delivery state, sent result
    messages (so a reply to a result edits it), and per-user settings."""
    await db.execute(
        """
        CREATE TABLE tg_tasks (
            task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
            chat_id BIGINT NOT NULL,
            user_id BIGINT NOT NULL,
            request_message_id BIGINT,
            status_message_id BIGINT,
            status_text TEXT,
            note TEXT,
            delivery TEXT NOT NULL DEFAULT 'pending'
                CHECK (delivery IN ('pending', 'sending', 'delivered', 'failed')),
            sent_items INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            claimed_at DOUBLE PRECISION,
            delivered_at DOUBLE PRECISION
        )
        """
    )
    await db.execute("CREATE INDEX tg_tasks_delivery ON tg_tasks (delivery, next_attempt_at)")
    await db.execute("CREATE INDEX tg_tasks_user ON tg_tasks (user_id, created_at)")
    await db.execute(
        """
        CREATE TABLE tg_messages (
            chat_id BIGINT NOT NULL,
            message_id BIGINT NOT NULL,
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
            user_id BIGINT PRIMARY KEY,
            vendor TEXT,
            n INTEGER NOT NULL DEFAULT 1,
            seed BIGINT,
            originals INTEGER NOT NULL DEFAULT 0,
            updated_at DOUBLE PRECISION NOT NULL
        )
        """
    )


@migration
async def m005_telegram_inbox(db: asyncpg.Connection) -> None:
    """Every update the bot receives, kept until it has been handled (see the SQLite set)."""
    await db.execute(
        """
        CREATE TABLE tg_inbox (
            update_id BIGINT PRIMARY KEY,
            body TEXT NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            done_at DOUBLE PRECISION
        )
        """
    )
    await db.execute("CREATE INDEX tg_inbox_open ON tg_inbox (done_at)")
    await db.execute("CREATE INDEX tg_tasks_message ON tg_tasks (chat_id, request_message_id)")


@migration
async def m009_telegram_inbox_done_with_its_task(db: asyncpg.Connection) -> None:
    """A request's task row marks its inbox update handled in the same write (see the
    SQLite set)."""
    await db.execute(
        """
        CREATE FUNCTION tg_inbox_done_with_its_task() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            UPDATE tg_inbox SET done_at = NEW.created_at
            WHERE done_at IS NULL
              AND (body::jsonb #>> '{message,chat,id}')::bigint = NEW.chat_id
              AND (body::jsonb #>> '{message,message_id}')::bigint = NEW.request_message_id
              AND body::jsonb #> '{message,media_group_id}' IS NULL;
            RETURN NULL;
        END
        $$
        """
    )
    await db.execute(
        "CREATE TRIGGER tg_inbox_done_with_its_task AFTER INSERT ON tg_tasks"
        " FOR EACH ROW EXECUTE FUNCTION tg_inbox_done_with_its_task()"
    )
