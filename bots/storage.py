"""The bot's own tables (created by ``bots/migrations.py``), one function per question.

    tg_tasks     one row per task a chat asked for: where to answer (chat, request message,
                 status message) and the delivery state of its results:
                 pending → sending → delivered | failed; ``sent_items`` counts results
                 already sent, so an interrupted delivery resumes after the last one sent.
    tg_messages  every result message the bot sent → (task, result index), so a reply to a
                 result edits the stored original, not Telegram's recompressed copy.
    tg_users     per-user settings: vendor, n, seed, originals.
    tg_inbox     every update received, until its handlers have run (``bots/inbox.py``).

The bot opens its own connection (:func:`open_db`) to the store's database: to its SQLite
file, whose own locking (WAL, ``BEGIN IMMEDIATE``, busy timeout) then orders its writes with
the Editor's instead of interleaving statements on one shared connection; or a pool of its
own on the store's PostgreSQL database (``store.url``). Every write here is a single
statement, so each is atomic on its own, and each is written once for both databases (``?``
marks, numbered for PostgreSQL). Rows go away with their task (``ON DELETE
CASCADE``) when the store forgets tasks past retention. Nothing here reads the core's
tables: what the bot needs to know about tasks it asks the Editor.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import aiosqlite
import asyncpg

from bots.migrations import BOT
from bots.pg_migrations import BOT_PG
from tools.config import StoreSettings
from tools.store import pg_migrations
from tools.store import sqlite as sqlite_store
from tools.store.moving import Table, TableSet
from tools.store.outages import is_outage, unavailable

#: The bot's tables, in the order ``retouch migrate-store`` moves them into PostgreSQL (the
#: entry point ``retouch.tables`` in pyproject.toml): the inbox too, so that updates not yet
#: handled are handled after the move.
TABLES = TableSet(
    "telegram",
    BOT_PG,
    (
        Table("tg_tasks", ("task_id",)),
        Table("tg_messages", ("chat_id", "message_id")),
        Table("tg_users", ("user_id",)),
        Table("tg_inbox", ("update_id",)),
    ),
)

#: The bot's database: a SQLite connection, or a pool of PostgreSQL connections.
Db = aiosqlite.Connection | asyncpg.Pool

PENDING, SENDING, DELIVERED, FAILED = "pending", "sending", "delivered", "failed"


@dataclass
class ChatTask:
    task_id: str
    chat_id: int
    user_id: int
    request_message_id: int | None
    status_message_id: int | None
    status_text: str | None
    note: str | None
    delivery: str
    sent_items: int
    attempts: int
    next_attempt_at: float
    last_error: str | None
    created_at: float
    claimed_at: float | None
    delivered_at: float | None

    @classmethod
    def from_row(cls, row: sqlite3.Row | asyncpg.Record) -> ChatTask:
        return cls(**{f.name: row[f.name] for f in fields(cls)})


@dataclass
class UserSettings:
    user_id: int
    vendor: str | None = None
    n: int = 1
    seed: int | None = None
    originals: bool = False


async def open_db(settings: StoreSettings) -> Db:
    """The bot's own way into the store's database: PostgreSQL at ``store.url`` if set,
    else the SQLite file at ``store.path``; its tables made if need be."""
    url = settings.url.get_secret_value()
    if not url:
        return await connect(settings.path)
    size = settings.pool_max_size
    pool = await asyncpg.create_pool(url, min_size=min(settings.pool_min_size, size), max_size=size)
    try:
        async with pool.acquire() as db:
            await pg_migrations.migrate(db, BOT_PG)
    except BaseException:
        await pool.close()
        raise
    return pool


async def connect(path: Path | str) -> aiosqlite.Connection:
    """A connection to the store's SQLite database, opened as the store opens its own."""
    return await sqlite_store.connect(path, BOT)


async def _one(db: Db, sql: str, params: tuple[Any, ...]) -> list[Any]:
    """One statement, its own transaction (SQLite in autocommit mode; a pool's connection
    outside any transaction). Its rows are read by column name or position. While the
    database cannot be reached: StoreUnavailable, as from the core's store."""
    try:
        if isinstance(db, aiosqlite.Connection):
            return list(await db.execute_fetchall(sql, params))
        return list(await db.fetch(_numbered(sql), *params))
    except Exception as exc:
        if not is_outage(exc):
            raise
        if isinstance(db, asyncpg.Pool):  # its idle connections may be broken: new ones
            await db.expire_connections()
        raise unavailable(exc) from exc


def _numbered(sql: str) -> str:
    """``?`` marks as PostgreSQL's ``$1``, ``$2``… (no statement here has a ``?`` in text)."""
    count = iter(range(1, sql.count("?") + 1))
    return re.sub(r"\?", lambda _: f"${next(count)}", sql)


# ---- tasks ---------------------------------------------------------------------------------


async def add_task(
    db: Db,
    *,
    task_id: str,
    chat_id: int,
    user_id: int,
    request_message_id: int | None,
    status_message_id: int | None,
    status_text: str | None = None,
    note: str | None = None,
) -> None:
    await _one(
        db,
        "INSERT INTO tg_tasks (task_id, chat_id, user_id, request_message_id, status_message_id,"
        " status_text, note, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (
            task_id,
            chat_id,
            user_id,
            request_message_id,
            status_message_id,
            status_text,
            note,
            time.time(),
        ),
    )


async def get_task(db: Db, task_id: str) -> ChatTask | None:
    rows = await _one(db, "SELECT * FROM tg_tasks WHERE task_id = ?", (task_id,))
    return ChatTask.from_row(rows[0]) if rows else None


async def set_status_text(db: Db, task_id: str, text: str) -> None:
    await _one(db, "UPDATE tg_tasks SET status_text = ? WHERE task_id = ?", (text, task_id))


async def pending(db: Db, *, limit: int = 500) -> list[ChatTask]:
    """Rows still to deliver whose retry time has come, oldest first."""
    rows = await _one(
        db,
        "SELECT * FROM tg_tasks WHERE delivery = 'pending' AND next_attempt_at <= ?"
        " ORDER BY created_at LIMIT ?",
        (time.time(), limit),
    )
    return [ChatTask.from_row(r) for r in rows]


async def claim(db: Db, task_id: str) -> ChatTask | None:
    """Take a row for delivery, atomically: only one claimer ever gets a pending row."""
    rows = await _one(
        db,
        "UPDATE tg_tasks SET delivery = 'sending', attempts = attempts + 1, claimed_at = ?"
        " WHERE task_id = ? AND delivery = 'pending' RETURNING *",
        (time.time(), task_id),
    )
    return ChatTask.from_row(rows[0]) if rows else None


async def set_sent_items(db: Db, task_id: str, count: int) -> None:
    await _one(
        db,
        "UPDATE tg_tasks SET sent_items = ? WHERE task_id = ? AND sent_items < ?",
        (count, task_id, count),
    )


async def mark_delivered(db: Db, task_id: str) -> None:
    await _one(
        db,
        "UPDATE tg_tasks SET delivery = 'delivered', delivered_at = ?, last_error = NULL"
        " WHERE task_id = ? AND delivery = 'sending'",
        (time.time(), task_id),
    )


async def retry_later(db: Db, task_id: str, error: str, delay_s: float) -> None:
    """A transient failure: back to pending, not before ``delay_s``."""
    await _one(
        db,
        "UPDATE tg_tasks SET delivery = 'pending', last_error = ?, next_attempt_at = ?"
        " WHERE task_id = ? AND delivery = 'sending'",
        (error[:500], time.time() + delay_s, task_id),
    )


async def mark_failed(db: Db, task_id: str, error: str) -> None:
    """A permanent failure (the chat is gone, the bot was blocked): stop trying."""
    await _one(
        db,
        "UPDATE tg_tasks SET delivery = 'failed', last_error = ? WHERE task_id = ?"
        " AND delivery IN ('pending', 'sending')",
        (error[:500], task_id),
    )


async def recover_interrupted(db: Db) -> int:
    """At start-up: deliveries a previous process left half-done go back to pending.

    One bot process serves a token (Telegram refuses two pollers), so a row still
    'sending' when the bot starts belongs to a process that died mid-delivery. Its results
    already recorded in ``sent_items`` are not sent again; the one in flight at the crash
    is — a rare duplicate beats a result that never arrives.
    """
    rows = await _one(
        db,
        "UPDATE tg_tasks SET delivery = 'pending', next_attempt_at = 0"
        " WHERE delivery = 'sending' RETURNING task_id",
        (),
    )
    return len(rows)


# ---- sent result messages ------------------------------------------------------------------


async def add_messages(db: Db, chat_id: int, sent: list[tuple[int, str, int, str | None]]) -> None:
    """Record sent result messages: (message_id, task_id, result index, file_id)."""
    if not sent:
        return
    marks = ", ".join(["(?, ?, ?, ?, ?)"] * len(sent))
    await _one(
        db,
        f"INSERT INTO tg_messages (chat_id, message_id, task_id, idx, file_id) VALUES {marks}"
        " ON CONFLICT (chat_id, message_id) DO UPDATE SET task_id = excluded.task_id,"
        " idx = excluded.idx, file_id = excluded.file_id",
        tuple(v for row in sent for v in (chat_id, *row)),
    )


async def result_for_message(db: Db, chat_id: int, message_id: int) -> tuple[str, int] | None:
    """The (task id, result index) a bot message shows, if it is one of our results."""
    rows = await _one(
        db,
        "SELECT task_id, idx FROM tg_messages WHERE chat_id = ? AND message_id = ?",
        (chat_id, message_id),
    )
    return (rows[0][0], rows[0][1]) if rows else None


async def task_for_status_message(db: Db, chat_id: int, message_id: int) -> str | None:
    rows = await _one(
        db,
        "SELECT task_id FROM tg_tasks WHERE chat_id = ? AND status_message_id = ?",
        (chat_id, message_id),
    )
    return rows[0][0] if rows else None


# ---- user settings -------------------------------------------------------------------------


async def get_user(db: Db, user_id: int) -> UserSettings:
    rows = await _one(db, "SELECT * FROM tg_users WHERE user_id = ?", (user_id,))
    if not rows:
        return UserSettings(user_id)
    r = rows[0]
    return UserSettings(user_id, r["vendor"], r["n"], r["seed"], bool(r["originals"]))


async def save_user(db: Db, s: UserSettings) -> None:
    await _one(
        db,
        "INSERT INTO tg_users (user_id, vendor, n, seed, originals, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET vendor = excluded.vendor,"
        " n = excluded.n, seed = excluded.seed, originals = excluded.originals,"
        " updated_at = excluded.updated_at",
        (s.user_id, s.vendor, s.n, s.seed, int(s.originals), time.time()),
    )


# ---- the inbox of updates ------------------------------------------------------------------


async def record_update(db: Db, update_id: int, body: str) -> None:
    await _one(
        db,
        "INSERT INTO tg_inbox (update_id, body, received_at) VALUES (?, ?, ?)"
        " ON CONFLICT (update_id) DO NOTHING",
        (update_id, body, time.time()),
    )


async def update_done(db: Db, update_id: int) -> bool:
    rows = await _one(db, "SELECT done_at FROM tg_inbox WHERE update_id = ?", (update_id,))
    return bool(rows) and rows[0][0] is not None


async def mark_update_done(db: Db, update_id: int) -> None:
    await _one(db, "UPDATE tg_inbox SET done_at = ? WHERE update_id = ?", (time.time(), update_id))


async def open_updates(db: Db) -> list[tuple[int, str]]:
    """Updates received but not handled (a previous process died first), oldest first."""
    rows = await _one(
        db, "SELECT update_id, body FROM tg_inbox WHERE done_at IS NULL ORDER BY update_id", ()
    )
    return [(int(r[0]), str(r[1])) for r in rows]


async def forget_handled_updates(db: Db, older_than_s: float) -> int:
    rows = await _one(
        db,
        "DELETE FROM tg_inbox WHERE done_at IS NOT NULL AND done_at < ? RETURNING update_id",
        (time.time() - older_than_s,),
    )
    return len(rows)


async def task_for_message(db: Db, chat_id: int, message_id: int) -> str | None:
    """The task a request message already started (an update handled twice starts none)."""
    rows = await _one(
        db,
        "SELECT task_id FROM tg_tasks WHERE chat_id = ? AND request_message_id = ?",
        (chat_id, message_id),
    )
    return str(rows[0][0]) if rows else None
