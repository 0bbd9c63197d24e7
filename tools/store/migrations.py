"""Schemas as small numbered steps, applied in order and recorded in ``_migrations``.

Each subsystem keeps its own set (the core's tasks and blobs here; a front end's tables in
its own package); all sets record their steps in the one ``_migrations`` table, by name, so
a step moved from one set to another keeps its name and never runs twice. Add a step by
appending a function decorated with the set's ``step``; never edit one that has shipped.
Each step runs in the same transaction as its record.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator

import aiosqlite

Step = Callable[[aiosqlite.Connection], Awaitable[None]]


class Migrations:
    """One subsystem's ordered steps."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.steps: list[Step] = []

    def step(self, fn: Step) -> Step:
        self.steps.append(fn)
        return fn

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)


async def migrate(db: aiosqlite.Connection, migrations: Migrations) -> list[str]:
    """Apply the steps of ``migrations`` not yet applied; return their names."""
    await db.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
    )
    await db.commit()
    applied = {row[0] for row in await db.execute_fetchall("SELECT name FROM _migrations")}
    done = []
    for step in migrations:
        if step.__name__ in applied:
            continue
        try:
            await db.execute("BEGIN IMMEDIATE")
            # A second process may have applied it while we waited for the lock.
            again = await db.execute_fetchall(
                "SELECT 1 FROM _migrations WHERE name = ?", (step.__name__,)
            )
            if not again:
                await step(db)
                await db.execute(
                    "INSERT INTO _migrations (name, applied_at) VALUES (?, ?)",
                    (step.__name__, time.time()),
                )
                done.append(step.__name__)
            await db.commit()
        except BaseException:
            await db.rollback()
            raise
    return done


#: The core's set: tasks, blobs, idempotency keys, uploads, vendors' rate limits, users
#: and budget overrides.
CORE = Migrations("core")
migration = CORE.step


@migration
async def m001_tasks(db: aiosqlite.Connection) -> None:
    await db.execute(
        """
        CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            status TEXT NOT NULL,
            function TEXT NOT NULL,
            vendor TEXT NOT NULL,
            prompt TEXT NOT NULL DEFAULT '',
            n INTEGER NOT NULL DEFAULT 1,
            request TEXT NOT NULL,
            owner TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until REAL NOT NULL DEFAULT 0,
            submit_started_at REAL,
            vendor_task_id TEXT,
            next_poll_at REAL,
            polls INTEGER NOT NULL DEFAULT 0,
            progress TEXT,
            results TEXT NOT NULL DEFAULT '[]',
            failures TEXT NOT NULL DEFAULT '[]',
            error TEXT,
            notes TEXT NOT NULL DEFAULT '[]',
            billed_images INTEGER NOT NULL DEFAULT 0,
            cost REAL,
            currency TEXT,
            cancel_requested INTEGER NOT NULL DEFAULT 0
        )
        """
    )
    await db.execute("CREATE INDEX tasks_claim ON tasks (vendor, status, lease_until)")
    await db.execute("CREATE INDEX tasks_vendor_task ON tasks (vendor, vendor_task_id)")
    await db.execute("CREATE INDEX tasks_owner ON tasks (owner, seq)")
    await db.execute("CREATE INDEX tasks_finished ON tasks (finished_at)")


@migration
async def m002_blobs(db: aiosqlite.Connection) -> None:
    await db.execute(
        """
        CREATE TABLE blobs (
            sha256 TEXT PRIMARY KEY,
            mime_type TEXT NOT NULL,
            bytes INTEGER NOT NULL,
            width INTEGER NOT NULL,
            height INTEGER NOT NULL,
            created_at REAL NOT NULL
        )
        """
    )
    await db.execute(
        """
        CREATE TABLE task_blobs (
            task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            idx INTEGER NOT NULL,
            sha256 TEXT NOT NULL REFERENCES blobs (sha256),
            PRIMARY KEY (task_id, role, idx)
        )
        """
    )
    await db.execute("CREATE INDEX task_blobs_sha ON task_blobs (sha256)")


@migration
async def m004_link_results_in_the_database(db: aiosqlite.Connection) -> None:
    """A task's results are linked to their files (``task_blobs``, which protects them from
    clean-up) by the statement that records them: the end of a task is one statement, so
    one trip to the database thread, and cannot be half done."""
    await db.execute(
        """
        CREATE TRIGGER tasks_link_results AFTER UPDATE OF results ON tasks
        WHEN json_array_length(NEW.results) > 0
        BEGIN
            INSERT OR IGNORE INTO task_blobs (task_id, role, idx, sha256)
            SELECT NEW.id, 'result', json_extract(value, '$.index'),
                   json_extract(value, '$.sha256')
            FROM json_each(NEW.results);
        END
        """
    )


@migration
async def m006_idempotency_keys(db: aiosqlite.Connection) -> None:
    """A caller's key for a request, so that a request made twice (a retry, or a bot
    update handled again after a crash) starts one task."""
    await db.execute("ALTER TABLE tasks ADD COLUMN idempotency_key TEXT")
    await db.execute(
        "CREATE UNIQUE INDEX tasks_idempotency_key ON tasks (idempotency_key)"
        " WHERE idempotency_key IS NOT NULL"
    )


@migration
async def m007_uploads(db: aiosqlite.Connection) -> None:
    """Images people upload over HTTP (``retouch://uploads/<id>``): whose they are and until
    when. The row keeps the blob from clean-up until it expires; a task that uses the image
    links the blob itself (``task_blobs``), so the row can go before the task does."""
    await db.execute(
        """
        CREATE TABLE uploads (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            sha256 TEXT NOT NULL REFERENCES blobs (sha256),
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )
        """
    )
    await db.execute("CREATE INDEX uploads_expiry ON uploads (expires_at)")
    await db.execute("CREATE INDEX uploads_sha ON uploads (sha256)")


@migration
async def m008_rate_turns(db: aiosqlite.Connection) -> None:
    """Turns to call a vendor, kept for every process on the store (a vendor's limits are per
    account): one row per turn of a vendor and kind of call ("submit", "query"), held until
    ``free_at``. Rows past their time are deleted as new turns are taken."""
    await db.execute(
        """
        CREATE TABLE rate_turns (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            vendor TEXT NOT NULL,
            kind TEXT NOT NULL,
            taken_at REAL NOT NULL,
            free_at REAL NOT NULL
        )
        """
    )
    await db.execute("CREATE INDEX rate_turns_key ON rate_turns (vendor, kind, free_at)")
    await db.execute(
        """
        CREATE TRIGGER rate_turns_forget AFTER INSERT ON rate_turns
        BEGIN
            DELETE FROM rate_turns WHERE vendor = NEW.vendor AND kind = NEW.kind
                AND id < NEW.id AND free_at <= NEW.taken_at;
        END
        """
    )


@migration
async def m010_users_and_budgets(db: aiosqlite.Connection) -> None:
    """HTTP users added at run time (only their token's SHA-256; names unique case aside),
    owners' budget overrides (JSON limits), and an index to count an owner's tasks by the
    time they were asked for."""
    await db.execute(
        """
        CREATE TABLE users (
            name TEXT PRIMARY KEY,
            token_sha256 TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            revoked_at REAL
        )
        """
    )
    await db.execute("CREATE UNIQUE INDEX users_name ON users (lower(name))")
    await db.execute(
        """
        CREATE TABLE budget_overrides (
            owner TEXT PRIMARY KEY,
            limits TEXT NOT NULL,
            updated_at REAL NOT NULL
        )
        """
    )
    await db.execute("CREATE INDEX tasks_owner_created ON tasks (owner, created_at)")


@migration
async def m011_console_indexes(db: aiosqlite.Connection) -> None:
    """Indexes for the console: a page of tasks by status or vendor stays a short walk down
    ``seq``, and statistics read the tasks of the last day by the time they were asked for."""
    await db.execute("CREATE INDEX tasks_status_seq ON tasks (status, seq)")
    await db.execute("CREATE INDEX tasks_vendor_seq ON tasks (vendor, seq)")
    await db.execute("CREATE INDEX tasks_created ON tasks (created_at)")


#: The SQLite clock in Unix seconds, as the triggers below read it.
_NOW = "((julianday('now') - 2440587.5) * 86400.0)"
#: The task's last logged step (in a trigger on ``tasks``).
_LAST = "(SELECT MAX(id) FROM task_steps WHERE task_id = NEW.id)"


def _step(kind: str, *, worker: str = "NEW.lease_owner", code: str = "NULL", detail: str) -> str:
    """A trigger statement logging one step of the task ``NEW``."""
    return (
        "INSERT INTO task_steps (task_id, kind, at, last_at, count, vendor, worker, code,"
        f" detail) VALUES (NEW.id, '{kind}', {_NOW}, {_NOW}, 1, NEW.vendor, {worker}, {code},"
        f" {detail});"
    )


@migration
async def m012_task_events(db: aiosqlite.Connection) -> None:
    """A log of each task's steps for the console (``task_steps``), written by triggers in
    the very statements that change a task (no extra trip to the database: queued, claimed,
    released, submitted with the vendor's task id, polls, rerouted, cancel asked, results
    stored, ended) and by ``Store.add_step`` for what the row does not show (a retry and its
    error). A run of polls with the same progress is one row with a count. Rows go with
    their task (ON DELETE CASCADE). ``rate_waits``: the calls that waited for a vendor's
    rate-limit turn, per minute."""
    await db.execute(
        """
        CREATE TABLE task_steps (
            id INTEGER PRIMARY KEY,
            task_id TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
            kind TEXT NOT NULL,
            at REAL NOT NULL,
            last_at REAL NOT NULL,
            count INTEGER NOT NULL DEFAULT 1,
            vendor TEXT,
            worker TEXT,
            code TEXT,
            detail TEXT
        )
        """
    )
    await db.execute("CREATE INDEX task_steps_task ON task_steps (task_id, id)")
    triggers = {
        "queued": ("AFTER INSERT ON tasks", _step("queued", detail="NULL")),
        "claimed": (
            "AFTER UPDATE OF attempts ON tasks WHEN NEW.attempts > OLD.attempts",
            _step("claimed", detail="'attempt ' || NEW.attempts"),
        ),
        "released": (
            "AFTER UPDATE OF lease_owner ON tasks WHEN OLD.lease_owner IS NOT NULL"
            " AND NEW.lease_owner IS NULL AND NEW.status = 'running'",
            _step("released", worker="OLD.lease_owner", detail="'handed back'"),
        ),
        "submitted": (
            "AFTER UPDATE OF vendor_task_id ON tasks WHEN NEW.vendor_task_id IS NOT NULL"
            " AND NEW.vendor_task_id IS NOT OLD.vendor_task_id",
            _step("submitted", detail="NEW.vendor_task_id"),
        ),
        "poll": (
            "AFTER UPDATE OF polls ON tasks WHEN NEW.polls > OLD.polls",
            f"UPDATE task_steps SET count = count + NEW.polls - OLD.polls, last_at = {_NOW}"
            f" WHERE id = {_LAST} AND kind = 'poll' AND detail IS NEW.progress;"
            " INSERT INTO task_steps (task_id, kind, at, last_at, count, vendor, worker,"
            f" detail) SELECT NEW.id, 'poll', {_NOW}, {_NOW}, NEW.polls - OLD.polls,"
            " NEW.vendor, NEW.lease_owner, NEW.progress WHERE NOT EXISTS (SELECT 1 FROM"
            f" task_steps WHERE id = {_LAST} AND kind = 'poll' AND detail IS NEW.progress);",
        ),
        "rerouted": (
            "AFTER UPDATE OF vendor ON tasks WHEN NEW.vendor <> OLD.vendor",
            _step("rerouted", worker="OLD.lease_owner", detail="json_extract(NEW.notes, '$[#-1]')"),
        ),
        "cancel": (
            "AFTER UPDATE OF cancel_requested ON tasks"
            " WHEN NEW.cancel_requested > OLD.cancel_requested AND NEW.finished_at IS NULL",
            _step("cancel", detail="'cancel asked for'"),
        ),
        "ended": (
            "AFTER UPDATE OF finished_at ON tasks"
            " WHEN OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL",
            "INSERT INTO task_steps (task_id, kind, at, last_at, count, vendor, worker, detail)"
            f" SELECT NEW.id, 'downloaded', {_NOW}, {_NOW}, 1, NEW.vendor, OLD.lease_owner,"
            " json_array_length(NEW.results) || ' result(s) stored'"
            " WHERE json_array_length(NEW.results) > 0; "
            + _step(
                "ended",
                worker="OLD.lease_owner",
                code="json_extract(NEW.error, '$.code')",
                detail="NEW.status || COALESCE(': ' || json_extract(NEW.error, '$.message'), '')",
            ),
        ),
    }
    for name, (when, body) in triggers.items():
        await db.execute(f"CREATE TRIGGER task_steps_{name} {when} BEGIN {body} END")
    await db.execute(
        """
        CREATE TABLE rate_waits (
            vendor TEXT NOT NULL,
            kind TEXT NOT NULL,
            minute INTEGER NOT NULL,
            waits INTEGER NOT NULL,
            waited_s REAL NOT NULL,
            last_at REAL NOT NULL,
            PRIMARY KEY (vendor, kind, minute)
        )
        """
    )


@migration
async def m013_console_sessions(db: aiosqlite.Connection) -> None:
    """The console's sign-ins, so that a sign-out (or an operator token taken out of the
    config) holds for every process on the store: only the SHA-256 of a session's id is
    kept, with a keyed digest naming its operator token."""
    await db.execute(
        """
        CREATE TABLE console_sessions (
            id TEXT PRIMARY KEY,
            operator TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            ended_at REAL
        )
        """
    )
    await db.execute("CREATE INDEX console_sessions_expiry ON console_sessions (expires_at)")


@migration
async def m014_idempotency_requests(db: aiosqlite.Connection) -> None:
    """The fingerprint of each keyed task's request (``tools.idempotency``), so that its key
    sent again with another request is refused, not answered with this task; and the keyed
    tasks by age, for the keys that expire. A row lives while its task holds the key."""
    await db.execute(
        """
        CREATE TABLE idempotency_requests (
            task_id TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
            fingerprint TEXT NOT NULL
        )
        """
    )
    await db.execute(
        "CREATE INDEX tasks_keyed_created ON tasks (created_at) WHERE idempotency_key IS NOT NULL"
    )


@migration
async def m015_blob_grace(db: aiosqlite.Connection) -> None:
    """A blob stored but not linked yet is protected in the database, for every process on
    the file (a ``--no-worker`` front end's input, a worker's result): ``pending`` counts the
    puts not yet linked and ``grace_until`` bounds how long they keep clean-up away, as on
    PostgreSQL. A link (a task's input or result, an upload) takes one off ``pending``."""
    await db.execute("ALTER TABLE blobs ADD COLUMN pending INTEGER NOT NULL DEFAULT 0")
    await db.execute("ALTER TABLE blobs ADD COLUMN grace_until REAL NOT NULL DEFAULT 0")
    for table in ("task_blobs", "uploads"):
        await db.execute(
            f"""
            CREATE TRIGGER {table}_unpend AFTER INSERT ON {table}
            BEGIN
                UPDATE blobs SET pending = max(pending - 1, 0) WHERE sha256 = NEW.sha256;
            END
            """
        )


#: A task's group in ``task_tallies`` (``currency``: '' for none, so the key has no NULL).
def _group(row: str) -> str:
    return (
        f"status = {row}.status AND vendor = {row}.vendor AND function = {row}.function"
        f" AND currency = COALESCE({row}.currency, '')"
    )


def _add(row: str) -> str:
    """A trigger statement counting the task ``row`` (NEW) into its group."""
    return (
        "INSERT INTO task_tallies (status, vendor, function, currency, tasks, images, cost,"
        f" priced) VALUES ({row}.status, {row}.vendor, {row}.function,"
        f" COALESCE({row}.currency, ''), 1, {row}.billed_images, COALESCE({row}.cost, 0),"
        f" {row}.cost IS NOT NULL) ON CONFLICT (status, vendor, function, currency) DO UPDATE"
        " SET tasks = tasks + 1, images = images + excluded.images,"
        " cost = cost + excluded.cost, priced = priced + excluded.priced;"
    )


def _take(row: str) -> str:
    """Trigger statements taking the task ``row`` (OLD) out of its group (an empty group's
    row goes, so no rounding is left of its cost)."""
    return (
        f"UPDATE task_tallies SET tasks = tasks - 1, images = images - {row}.billed_images,"
        f" cost = cost - COALESCE({row}.cost, 0), priced = priced - ({row}.cost IS NOT NULL)"
        f" WHERE {_group(row)}; DELETE FROM task_tallies WHERE {_group(row)} AND tasks <= 0;"
    )


#: The columns a task's group and sums are made of.
TALLIED = ("status", "vendor", "function", "currency", "billed_images", "cost")


@migration
async def m016_task_tallies(db: aiosqlite.Connection) -> None:
    """What ``/metrics`` reads instead of counting every task at each scrape:

    - ``task_tallies``: the tasks held now by (status, vendor, function, currency), with
      their billed images and cost (``priced``: how many have a cost, so a group of none
      shows no cost rather than 0), kept by triggers in the very statements that insert,
      change or delete a task (a group's row goes when it is empty);
    - ``task_ended``: every task that ever ended here by (status, vendor, function,
      currency), its billed images and cost; added to when a task's ``finished_at`` is
      first set, never lowered (a task deleted after ``store.retention_days`` stays
      counted), so Prometheus can take rates of it.

    Both are filled from the tasks already stored (what ended before this step is counted
    as ended: those still kept)."""
    await db.execute(
        """
        CREATE TABLE task_tallies (
            status TEXT NOT NULL,
            vendor TEXT NOT NULL,
            function TEXT NOT NULL,
            currency TEXT NOT NULL,
            tasks INTEGER NOT NULL,
            images INTEGER NOT NULL,
            cost REAL NOT NULL,
            priced INTEGER NOT NULL,
            PRIMARY KEY (status, vendor, function, currency)
        )
        """
    )
    await db.execute(
        """
        CREATE TABLE task_ended (
            status TEXT NOT NULL,
            vendor TEXT NOT NULL,
            function TEXT NOT NULL,
            currency TEXT NOT NULL,
            tasks INTEGER NOT NULL,
            images INTEGER NOT NULL,
            cost REAL NOT NULL,
            PRIMARY KEY (status, vendor, function, currency)
        )
        """
    )
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in TALLIED)
    ended = (
        "INSERT INTO task_ended (status, vendor, function, currency, tasks, images, cost)"
        " VALUES (NEW.status, NEW.vendor, NEW.function, COALESCE(NEW.currency, ''), 1,"
        " NEW.billed_images, COALESCE(NEW.cost, 0)) ON CONFLICT (status, vendor, function,"
        " currency) DO UPDATE SET tasks = tasks + 1, images = images + excluded.images,"
        " cost = cost + excluded.cost;"
    )
    triggers = {
        "inserted": ("AFTER INSERT ON tasks", _add("NEW")),
        "changed": (
            f"AFTER UPDATE OF {', '.join(TALLIED)} ON tasks WHEN {changed}",
            _take("OLD") + " " + _add("NEW"),
        ),
        "deleted": ("AFTER DELETE ON tasks", _take("OLD")),
        "ended": (
            "AFTER UPDATE OF finished_at ON tasks"
            " WHEN OLD.finished_at IS NULL AND NEW.finished_at IS NOT NULL",
            ended,
        ),
    }
    for name, (when, body) in triggers.items():
        await db.execute(f"CREATE TRIGGER task_tallies_{name} {when} BEGIN {body} END")
    await db.execute(
        """
        INSERT INTO task_tallies (status, vendor, function, currency, tasks, images, cost, priced)
        SELECT status, vendor, function, COALESCE(currency, ''), count(*), sum(billed_images),
            COALESCE(sum(cost), 0), count(cost)
        FROM tasks GROUP BY 1, 2, 3, 4
        """
    )
    await db.execute(
        """
        INSERT INTO task_ended (status, vendor, function, currency, tasks, images, cost)
        SELECT status, vendor, function, COALESCE(currency, ''), count(*), sum(billed_images),
            COALESCE(sum(cost), 0)
        FROM tasks WHERE finished_at IS NOT NULL GROUP BY 1, 2, 3, 4
        """
    )
