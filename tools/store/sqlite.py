"""The SQLite backend of the store (through aiosqlite, WAL): one database file, any number
of processes on one machine. Blobs' bytes are in the store's ``BlobStore`` (files on disk
by default), their rows here. A database still locked by another process when the busy
timeout runs out is reported as ``StoreUnavailable`` (``outages.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite

from tools import idempotency, telemetry
from tools.errors import NotFound, StorageFull
from tools.media import InputImage
from tools.models import LOCAL_OWNER, BudgetLimits, ImageFailure, ResultImage, TaskStatus
from tools.notifier import TaskEvent
from tools.store.base import (
    JSON_FIELDS,
    ORPHAN_GRACE_S,
    WRITABLE,
    ActiveTask,
    Admission,
    Claim,
    ConsoleSession,
    Ended,
    OwnerUsage,
    PendingPuts,
    RateWaits,
    Store,
    Tally,
    TaskFilter,
    TaskRecord,
    TaskStep,
    TaskSummary,
    Turn,
    UploadRecord,
    UserRecord,
    Windows,
    new_task_id,
)
from tools.store.blobs import (
    BlobDamaged,
    BlobMissing,
    BlobStore,
    FileBlobStore,
    blob_key,
    content_hash,
)
from tools.store.migrations import CORE, Migrations, migrate
from tools.store.outages import reports_outages

T = TypeVar("T")

COLUMNS = [f.name for f in fields(TaskRecord)]
#: The database's clock in Unix seconds (to the millisecond), the same value throughout one
#: statement.
NOW = "((julianday('now') - 2440587.5) * 86400.0)"
MB = 1024 * 1024
#: Orphaned blobs deleted per transaction (their bytes too, under the write lock).
ORPHAN_BATCH = 200
#: Tries at opening (and migrating) a database that another process is opening too.
OPEN_ATTEMPTS = 20


#: What ``tallies`` reads: each group's row, and for running groups the tasks whose lease
#: holds (``tasks_claim`` finds them by vendor, status and lease).
TALLIES = """
    SELECT t.status, t.vendor, t.function, t.currency, t.tasks, t.images,
        CASE WHEN t.priced > 0 THEN t.cost END,
        CASE WHEN t.status = 'running' THEN (
            SELECT count(*) FROM tasks WHERE tasks.vendor = t.vendor AND tasks.status = 'running'
              AND tasks.lease_until >= ? AND tasks.function = t.function
              AND COALESCE(tasks.currency, '') = t.currency) ELSE 0 END
    FROM task_tallies AS t WHERE t.tasks > 0
    ORDER BY t.status, t.vendor, t.function, t.currency
"""


#: ``claim``: a vendor's queued tasks and those whose lease ran out, oldest first, up to its
#: free slots. The two kinds are looked up apart, each from the ``tasks_claim`` index
#: (vendor, status, lease_until): looked up as one (queued OR lease run out), SQLite walked
#: every task of the vendor in ``seq`` order, ended ones included, holding the write lock
#: (5 ms a claim with 50 000 tasks stored; 15 µs so).
CLAIM = f"""
    UPDATE tasks SET status = 'running', lease_owner = ?, lease_until = ?,
        attempts = attempts + 1, started_at = COALESCE(started_at, ?), updated_at = ?
    WHERE id IN (
        SELECT id FROM (
            SELECT id, seq FROM tasks WHERE vendor = ? AND status = 'queued'
            UNION ALL
            SELECT id, seq FROM tasks WHERE vendor = ? AND status = 'running' AND lease_until < ?)
        ORDER BY seq
        LIMIT max(0, ? - (SELECT COUNT(*) FROM tasks WHERE vendor = ?
                          AND status = 'running' AND lease_until >= ?))
    )
    RETURNING {", ".join(COLUMNS)}
"""

#: ``claim_task``: one queued task, if no older one of its vendor waits and a slot is free.
#: "No older one waits" is asked as two questions, each answered from ``tasks_claim``: among
#: the vendor's queued tasks, and among its running ones whose lease ran out (``+seq``: not
#: through ``tasks_vendor_seq``, which SQLite prefers otherwise and which walks every older
#: task, ended ones included: 1 ms a claim with 10 000 tasks stored, 6 ms with 50 000).
CLAIM_TASK = f"""
    UPDATE tasks SET status = 'running', lease_owner = ?, lease_until = ?,
        attempts = attempts + 1, started_at = COALESCE(started_at, ?), updated_at = ?
    WHERE id = ? AND status = 'queued'
      AND NOT EXISTS (
        SELECT 1 FROM tasks AS older WHERE older.vendor = tasks.vendor
          AND older.status = 'queued' AND +older.seq < tasks.seq)
      AND NOT EXISTS (
        SELECT 1 FROM tasks AS older WHERE older.vendor = tasks.vendor
          AND older.status = 'running' AND older.lease_until < ? AND +older.seq < tasks.seq)
      AND (SELECT COUNT(*) FROM tasks AS live WHERE live.vendor = tasks.vendor
           AND live.status = 'running' AND live.lease_until >= ?) < ?
    RETURNING {", ".join(COLUMNS)}
"""


async def connect(path: Path | str, migrations: Migrations) -> aiosqlite.Connection:
    """A connection to the SQLite database at ``path`` in WAL mode, with foreign keys and a
    30 s busy timeout, migrated by ``migrations``: the store's, and the bot's tables.

    Processes opening one new file at once (a fleet's first start): a change of journal
    mode, a WAL recovery or a lock one side must give up is answered "locked" at once,
    without the busy timeout. Each step is a transaction of its own, so opening again
    finishes the work (up to ``OPEN_ATTEMPTS`` times)."""
    for attempt in range(1, OPEN_ATTEMPTS + 1):
        db = await aiosqlite.connect(str(path), timeout=30, isolation_level=None)
        try:
            db.row_factory = sqlite3.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA foreign_keys=ON")
            await db.execute("PRAGMA busy_timeout=30000")
            await migrate(db, migrations)
            return db
        except BaseException as exc:
            # Its thread is not a daemon: left open, it would keep the process from exiting.
            await db.close()
            locked = isinstance(exc, sqlite3.OperationalError) and "locked" in str(exc)
            if not locked or attempt == OPEN_ATTEMPTS:
                raise
        await asyncio.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


@reports_outages
class SQLiteStore(Store):
    """One SQLite database, and the blob store holding its images' bytes."""

    def __init__(
        self, db: aiosqlite.Connection, blobs: BlobStore, path: Path | str = ":memory:"
    ) -> None:
        self.db = db
        self.blobs = blobs
        self._write = asyncio.Lock()
        self._pending = PendingPuts()
        self.path = path
        self._reader: aiosqlite.Connection | None = None  # for tallies (see there)
        self._opening_reader = asyncio.Lock()
        self._chores: set[asyncio.Task[Any]] = set()  # see _background

    @classmethod
    async def open(cls, path: Path | str, blobs: BlobStore | Path | str) -> SQLiteStore:
        """The database at ``path``, made and migrated if need be, with its images in
        ``blobs`` (a blob store, or the folder of a ``FileBlobStore``)."""
        path = Path(path)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        if not isinstance(blobs, BlobStore):
            blobs = FileBlobStore(blobs)
        return cls(await connect(path, CORE), blobs, path)

    def _background(self, chore: Awaitable[Any]) -> None:
        """Run ``chore`` (a write nobody waits for) beside the caller; its failure is let
        go: what it would hand back is handed back anyway when the lease runs out."""
        task = asyncio.ensure_future(chore)
        self._chores.add(task)
        task.add_done_callback(lambda done: self._chores.discard(done) or _let_go(done))

    async def close(self) -> None:
        for chore in list(self._chores):
            with contextlib.suppress(BaseException):
                await chore
        if self._reader is not None:
            await self._reader.close()
        await self.db.close()
        await self.blobs.close()

    async def listen(self, on_event: Callable[[TaskEvent], None]) -> None:
        """Nothing: SQLite cannot tell one process what another changed (they poll)."""

    # ---- transactions ------------------------------------------------------------------

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """An immediate transaction on the shared connection. Every write goes through here
        (one connection cannot nest transactions, so writers take turns)."""
        async with self._write:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                yield self.db
                await self.db.commit()
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    await self.db.rollback()
                self._raise_if_full(exc)
                raise

    async def execute(
        self, sql: str, params: tuple[Any, ...] | dict[str, Any] = ()
    ) -> list[sqlite3.Row]:
        """One write statement, atomic on its own; returns its rows (RETURNING).

        The connection is in autocommit mode, so a lone statement is its own transaction:
        one trip to the database thread instead of three (BEGIN, statement, COMMIT). The
        lock still keeps it out of another writer's open transaction."""
        async with self._write:
            try:
                return list(await self.db.execute_fetchall(sql, params))
            except sqlite3.OperationalError as exc:
                self._raise_if_full(exc)
                raise

    async def _on_thread(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """``work`` run on the connection's own thread, given its ``sqlite3`` connection: one
        trip there and back however many statements it makes. Each of aiosqlite's calls is a
        trip of its own (~80 µs of handing over between threads, most of it the event loop's
        time), and a task is stored, found by its key or counted in several statements."""
        db = self.db
        # aiosqlite's own way to its thread (every one of its calls goes through it).
        return await db._execute(lambda: work(db._conn))

    async def _in_transaction(
        self,
        work: Callable[[sqlite3.Connection], T],
        orphaned: Callable[[T], None] | None = None,
    ) -> T:
        """``work`` in an immediate transaction, run whole on the connection's thread
        (``_on_thread``): BEGIN, its statements and COMMIT in one trip. Writers take turns
        as in ``transaction``. A caller cancelled before the commit leaves nothing behind
        (rolled back); one cancelled as it commits never sees what it wrote, which
        ``orphaned`` is then given."""
        abandoned = False

        def run(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = work(conn)
                if abandoned:  # its caller is gone: nobody would know of what it wrote
                    raise _Abandoned
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.rollback()
                raise
            conn.commit()
            return out

        async with self._write:
            running = asyncio.ensure_future(self._on_thread(run))
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                abandoned = True  # the thread may still be running it: it rolls back
                running.add_done_callback(lambda done: _hand_over(done, orphaned))
                raise
            except BaseException as exc:
                self._raise_if_full(exc)
                raise

    def _raise_if_full(self, exc: BaseException) -> None:
        """A database that cannot grow is StorageFull naming it, not a bare sqlite3 error."""
        if (
            isinstance(exc, sqlite3.OperationalError)
            and exc.sqlite_errorcode == sqlite3.SQLITE_FULL
        ):
            raise StorageFull(
                f"storage full: the database {self.path} cannot grow (no space left)"
            ) from None

    # ---- blobs -------------------------------------------------------------------------

    async def put_blob(
        self, image: InputImage, *, owner: str | None = None, strict: bool = True
    ) -> str:
        sha = await content_hash(image.data)
        size = len(image.data)
        # The row first, marked pending (m015): from then on no process's clean-up deletes
        # the bytes (one deleting them holds the write lock until they are gone, so we wait,
        # then find them missing and store them anew).
        values = (sha, image.mime_type, size, image.width, image.height, time.time())
        upsert = (
            "INSERT INTO blobs (sha256, mime_type, bytes, width, height, created_at, pending,"
            f" grace_until) VALUES (?, ?, ?, ?, ?, ?, 1, {NOW} + {ORPHAN_GRACE_S})"
            " ON CONFLICT (sha256) DO UPDATE SET pending = pending + 1,"
            " grace_until = excluded.grace_until"
        )
        if self.limits.max_bytes is None:
            await self.execute(upsert, values)
        else:  # room is made and the row counted in one transaction: the cap holds
            async with self.transaction() as db:
                known = await db.execute_fetchall("SELECT 1 FROM blobs WHERE sha256 = ?", (sha,))
                gone = [] if known else await self._make_room(db, size, owner, strict)
                await db.execute(upsert, values)
                if not known:  # counted in its owner's share until a task links it
                    self._pending.add(sha, owner, size)
                await self._delete_files(gone)
        key = blob_key(sha, image.mime_type)
        try:
            if await self.blobs.size(key) != size:  # none yet, or one cut short
                await self.blobs.put(key, image.data)
        except BaseException:
            await asyncio.shield(self._forget_unwritten(sha, key))
            raise
        return sha

    async def _forget_unwritten(self, sha: str, key: str) -> None:
        """After a failed put: its pending mark goes, and the row too when nothing else
        holds it, so no row counts bytes that never landed."""
        self._pending.drop([sha])
        with contextlib.suppress(Exception):
            async with self.transaction() as db:
                await db.execute(
                    "UPDATE blobs SET pending = max(pending - 1, 0) WHERE sha256 = ?", (sha,)
                )
                gone = await db.execute_fetchall(
                    "DELETE FROM blobs WHERE sha256 = ? AND pending = 0 AND NOT EXISTS"
                    " (SELECT 1 FROM task_blobs tb WHERE tb.sha256 = blobs.sha256) AND NOT EXISTS"
                    " (SELECT 1 FROM uploads u WHERE u.sha256 = blobs.sha256) RETURNING 1",
                    (sha,),
                )
                if gone:
                    await self.blobs.delete(key)

    async def _make_room(
        self, db: aiosqlite.Connection, size: int, owner: str | None, strict: bool
    ) -> list[sqlite3.Row]:
        """Forget the oldest finished tasks (``owner``'s first while they are over their
        share) until ``size`` more bytes fit; returns the blobs' rows that went, whose bytes
        the caller deletes after the commit. StorageFull if they cannot fit and ``strict``."""
        gone: list[sqlite3.Row] = []
        share = self.limits.share()
        if share is not None and owner is not None:
            while (used := await self._owner_bytes(db, owner)) + size > share:
                rows = await self._forget_oldest(db, owner)
                if rows is None:
                    if strict:
                        raise StorageFull(
                            f"storage full for {owner}: their tasks keep {used / MB:.1f} MB of "
                            f"a {share / MB:.1f} MB share (store.owner_share) and none of "
                            "them has finished; try again when one has"
                        )
                    break
                gone += rows
        cap = self.limits.max_bytes
        assert cap is not None
        while (total := await self._total_bytes(db)) + size > cap:
            rows = await self._forget_oldest(db, None)
            if rows is None:
                if strict:
                    raise StorageFull(
                        f"storage full: the store keeps {total / MB:.1f} MB of its "
                        f"{cap / MB:.0f} MB (store.max_results_mb) for tasks that have not "
                        f"finished, and {size / MB:.1f} MB more does not fit; try again later"
                    )
                break
            gone += rows
        return gone

    async def _forget_oldest(
        self, db: aiosqlite.Connection, owner: str | None
    ) -> list[sqlite3.Row] | None:
        """Forget the oldest finished task (of ``owner`` if given); the rows of the blobs
        that no task uses any more, deleted; None if there was no such task."""
        where = "finished_at IS NOT NULL" + (f" AND {_of(owner)}" if owner is not None else "")
        oldest = await db.execute_fetchall(
            f"SELECT id FROM tasks WHERE {where} ORDER BY finished_at LIMIT 1",
            (owner,) if owner is not None else (),
        )
        if not oldest:
            return None
        task_id = oldest[0][0]
        shas = [
            r[0]
            for r in await db.execute_fetchall(
                "DELETE FROM task_blobs WHERE task_id = ? RETURNING sha256", (task_id,)
            )
        ]
        await db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
        return await self._orphan_rows(db, list(dict.fromkeys(shas)))

    async def _total_bytes(self, db: aiosqlite.Connection) -> int:
        rows = await db.execute_fetchall("SELECT COALESCE(SUM(bytes), 0) FROM blobs")
        return int(rows[0][0])

    async def _owner_bytes(self, db: aiosqlite.Connection, owner: str) -> int:
        """The blobs of ``owner``'s tasks and uploads, each once, and those this process is
        storing for them that nothing links yet."""
        rows = await db.execute_fetchall(
            "SELECT COALESCE(SUM(bytes), 0) FROM blobs WHERE sha256 IN (SELECT tb.sha256"
            f" FROM task_blobs tb JOIN tasks t ON t.id = tb.task_id WHERE {_of(owner)}"
            " UNION SELECT sha256 FROM uploads WHERE owner = ?)",
            (owner, owner),
        )
        pending = self._pending.bytes_of(owner)
        return int(rows[0][0]) + pending

    async def stored_bytes(self, owner: str | None = None) -> int:
        if owner is None:
            return await self._total_bytes(self.db)
        return await self._owner_bytes(self.db, owner)

    def _linked(self, shas: Iterable[str | None]) -> None:
        self._pending.drop(shas)  # the database's pending marks went with the links (m015)

    async def read_blob(self, sha256: str) -> InputImage:
        rows = await self.db.execute_fetchall("SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
        if not rows:
            raise NotFound(f"image {sha256[:12]}… is not in the store")
        row = rows[0]
        try:
            data = await self.blobs.get(blob_key(sha256, row["mime_type"]), row["bytes"])
        except BlobDamaged:
            raise NotFound(f"image {sha256[:12]}… is damaged on disk (cut short)") from None
        except BlobMissing:
            raise NotFound(f"image {sha256[:12]}… is missing from the store") from None
        return InputImage(data, row["mime_type"], row["width"], row["height"])

    async def task_images(self, task_id: str, role: str | None = None) -> dict[str, list[str]]:
        rows = await self.db.execute_fetchall(
            "SELECT role, sha256 FROM task_blobs WHERE task_id = ? AND role = COALESCE(?, role)"
            " ORDER BY role, idx",
            (task_id, role),
        )
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(r[1])
        return out

    # ---- uploads -----------------------------------------------------------------------

    async def create_upload(
        self, *, owner: str, sha256: str, created_at: float, expires_at: float
    ) -> UploadRecord:
        upload = UploadRecord(new_task_id(), owner, sha256, created_at, expires_at)
        await self.execute(
            "INSERT INTO uploads (id, owner, sha256, created_at, expires_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (upload.id, owner, sha256, created_at, expires_at),
        )
        self._linked([sha256])
        return upload

    async def get_upload(self, upload_id: str, owner: str) -> UploadRecord | None:
        rows = await self.db.execute_fetchall(
            "SELECT id, owner, sha256, created_at, expires_at FROM uploads"
            " WHERE id = ? AND owner = ?",
            (upload_id, owner),
        )
        return UploadRecord(*rows[0]) if rows else None

    # ---- tasks -------------------------------------------------------------------------

    async def create_task(
        self,
        *,
        function: str,
        vendor: str,
        prompt: str,
        n: int,
        request: dict[str, Any],
        inputs: list[str],
        mask: str | None,
        owner: str | None = None,
        notes: list[str] | None = None,
        key: str | None = None,
        created_at: float | None = None,
        admission: Admission | None = None,
        fingerprint: str | None = None,
        keys_since: float | None = None,
        claim: Claim | None = None,
    ) -> TaskRecord:
        """A new queued task; with ``key``, the task already made with that key if any (or
        IdempotencyConflict). The transaction is immediate: it holds the database's write
        lock from the start, so reading the key, an admission's count, the insert and the
        ``claim`` (``CLAIM_TASK``) are one step for every process.

        A caller cancelled as the transaction commits never gets the task: one it claimed
        is handed back at once (``release``), for the claim loop to take, rather than held
        until its lease runs out."""
        task_id, now = new_task_id(), time.time()
        links = [(task_id, "input", i, sha) for i, sha in enumerate(inputs)]
        if mask:
            links.append((task_id, "mask", 0, mask))

        def make(db: sqlite3.Connection) -> TaskRecord | None:
            """The insert, or None when the key's task is the answer (``made``)."""
            nonlocal made
            if key is not None and (found := _by_key(db, key)) is not None:
                earlier, first = found
                if keys_since is None or earlier.created_at >= keys_since:
                    idempotency.check(earlier.id, first, fingerprint)
                    made = earlier
                    return None
                _free_keys(db, [earlier.id])  # expired: free for this request
            if admission is not None and owner is not None:
                admission.check(_usage(db, owner, admission.windows))
            row = db.execute(
                "INSERT INTO tasks (id, status, function, vendor, prompt, n, request, owner,"
                " created_at, updated_at, notes, idempotency_key)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                f" RETURNING {', '.join(COLUMNS)}",
                (
                    task_id,
                    function,
                    vendor,
                    prompt,
                    n,
                    json.dumps(request),
                    owner,
                    now if created_at is None else created_at,
                    now,
                    json.dumps(notes or []),
                    key,
                ),
            ).fetchone()
            if key is not None and fingerprint is not None:
                db.execute(
                    "INSERT INTO idempotency_requests (task_id, fingerprint) VALUES (?, ?)",
                    (task_id, fingerprint),
                )
            db.executemany(
                "INSERT INTO task_blobs (task_id, role, idx, sha256) VALUES (?, ?, ?, ?)", links
            )
            if claim is not None:
                at = time.time()
                claimed = db.execute(
                    CLAIM_TASK,
                    (claim.worker, at + claim.lease_s, at, at, task_id, at, at, claim.capacity),
                ).fetchone()
                row = claimed if claimed is not None else row
            return _record(row)

        def orphaned(record: TaskRecord | None) -> None:
            if record is None:
                return
            self._linked([*inputs, mask])
            if claim is not None and record.lease_owner == claim.worker:
                self._background(self.release(claim.worker, [record.id]))

        made: TaskRecord | None = None
        record = await self._in_transaction(make, orphaned)
        if record is None:
            assert made is not None
            return made
        self._linked([*inputs, mask])
        return record

    async def find_by_key(
        self, key: str, *, since: float | None = None, fingerprint: str | None = None
    ) -> TaskRecord | None:
        # Between writers: on the one connection, a transaction under way would show its
        # task before the fingerprint that goes with it.
        async with self._write:
            found = await self._on_thread(lambda db: _by_key(db, key, since))
        if found is None:
            return None
        idempotency.check(found[0].id, found[1], fingerprint)
        return found[0]

    async def expire_keys(self, before: float) -> int:
        def expire(db: sqlite3.Connection) -> int:
            rows = db.execute(
                "SELECT id FROM tasks WHERE idempotency_key IS NOT NULL AND created_at < ?",
                (before,),
            ).fetchall()
            ids = [r[0] for r in rows]
            for start in range(0, len(ids), 500):
                _free_keys(db, ids[start : start + 500])
            return len(ids)

        return await self._in_transaction(expire)

    async def get(self, task_id: str, *, owner: str | None = None) -> TaskRecord:
        rows = await self.db.execute_fetchall(
            f"SELECT * FROM tasks WHERE id = ?{'' if owner is None else ' AND ' + _of(owner)}",
            (task_id,) if owner is None else (task_id, owner),
        )
        if not rows:
            raise NotFound(f"no task {task_id!r}")
        return _record(rows[0])

    async def list(
        self, *, owner: str | None = None, limit: int = 20, unfinished: bool = False
    ) -> list[TaskRecord]:
        where, params = [], []
        if owner is not None:
            where.append(_of(owner))
            params.append(owner)
        if unfinished:
            where.append("status IN ('queued', 'running')")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.execute_fetchall(
            f"SELECT * FROM tasks {clause} ORDER BY seq DESC LIMIT ?", (*params, limit)
        )
        return [_record(r) for r in rows]

    async def page(
        self, where: TaskFilter, *, before: int | None = None, limit: int = 50
    ) -> list[TaskRecord]:
        conds, params = _filter(where, before)
        clause = f"WHERE {' AND '.join(conds)}" if conds else ""
        rows = await self.db.execute_fetchall(
            f"SELECT * FROM tasks {clause} ORDER BY seq DESC LIMIT ?", (*params, limit)
        )
        return [_record(r) for r in rows]

    async def summaries(self, since: float) -> list[TaskSummary]:
        rows = await self.db.execute_fetchall(
            f"""
            SELECT {_SUMMARY}, json_extract(error, '$.code') AS error_code FROM tasks
            WHERE created_at >= ? OR status IN ('queued', 'running') ORDER BY seq
            """,
            (since,),
        )
        return [_summary(r) for r in rows]

    async def tallies(self, now: float | None = None) -> list[Tally]:
        """One row a group from ``task_tallies`` (kept by the triggers of m016), and the
        running tasks whose lease holds counted through ``tasks_claim`` (vendor, status,
        lease_until): a walk over the running tasks, never over the ended ones. Read on a
        connection of its own (read-only; WAL lets it read beside the writer)."""
        db = await self._read_connection()
        rows = await db.execute_fetchall(TALLIES, (time.time() if now is None else now,))
        return [Tally(s, v, f, c or None, *rest) for s, v, f, c, *rest in rows]

    async def ended(self) -> list[Ended]:
        db = await self._read_connection()
        rows = await db.execute_fetchall(
            "SELECT status, vendor, function, currency, tasks, images, cost FROM task_ended"
            " ORDER BY status, vendor, function, currency"
        )
        return [Ended(s, v, f, c or None, *rest) for s, v, f, c, *rest in rows]

    async def _read_connection(self) -> aiosqlite.Connection:
        if str(self.path) == ":memory:":
            return self.db
        async with self._opening_reader:
            if self._reader is None:
                uri = f"{Path(self.path).resolve().as_uri()}?mode=ro"
                reader = await aiosqlite.connect(uri, uri=True, timeout=30)
                await reader.execute("PRAGMA busy_timeout=30000")
                self._reader = reader
        return self._reader

    async def claim(
        self, vendor: str, worker: str, *, capacity: int, lease_s: float
    ) -> list[TaskRecord]:
        """Take up to ``capacity`` minus the vendor's live tasks: queued ones, or running ones
        whose lease ran out (their process died). Oldest first (``CLAIM``)."""
        now = time.time()
        rows = await self.execute(
            CLAIM, (worker, now + lease_s, now, now, vendor, vendor, now, capacity, vendor, now)
        )
        return sorted((_record(r) for r in rows), key=lambda t: t.seq)

    async def claim_task(
        self, task_id: str, worker: str, *, capacity: int, lease_s: float
    ) -> TaskRecord | None:
        """Take one queued task now if ``claim`` would take it first (``CLAIM_TASK``)."""
        now = time.time()
        rows = await self.execute(
            CLAIM_TASK, (worker, now + lease_s, now, now, task_id, now, now, capacity)
        )
        return _record(rows[0]) if rows else None

    async def renew(self, worker: str, task_ids: list[str], lease_s: float) -> None:
        if not task_ids:
            return
        marks = ",".join("?" * len(task_ids))
        await self.execute(
            f"UPDATE tasks SET lease_until = ? WHERE lease_owner = ? AND status = 'running'"
            f" AND id IN ({marks})",
            (time.time() + lease_s, worker, *task_ids),
        )

    async def release(self, worker: str, task_ids: list[str] | None = None) -> None:
        """Hand tasks back at once (a clean stop): another process may take them now."""
        sql = (
            "UPDATE tasks SET lease_until = 0, lease_owner = NULL WHERE lease_owner = ?"
            " AND status = 'running'"
        )
        params: tuple[Any, ...] = (worker,)
        if task_ids is not None:
            if not task_ids:
                return
            sql += f" AND id IN ({','.join('?' * len(task_ids))})"
            params += tuple(task_ids)
        await self.execute(sql, params)

    async def update(self, task_id: str, worker: str, **values: Any) -> bool:
        """Change a running task this worker holds; False if it lost the lease."""
        bad = set(values) - WRITABLE
        if bad:
            raise ValueError(f"not writable: {bad}")
        values["updated_at"] = time.time()
        sets = ", ".join(f"{k} = ?" for k in values)
        params = [json.dumps(v) if k in JSON_FIELDS else v for k, v in values.items()]
        rows = await self.execute(
            f"UPDATE tasks SET {sets} WHERE id = ? AND lease_owner = ? AND status = 'running'"
            " RETURNING id",
            (*params, task_id, worker),
        )
        return bool(rows)

    async def finish(
        self,
        task_id: str,
        worker: str | None,
        status: TaskStatus,
        *,
        results: list[ResultImage] = (),  # type: ignore[assignment]
        failures: list[ImageFailure] = (),  # type: ignore[assignment]
        error: dict[str, Any] | None = None,
        notes: list[str] | None = None,
        billed_images: int = 0,
        cost: float | None = None,
        currency: str | None = None,
        unless_canceled: bool = False,
    ) -> bool:
        """Record a task's end, once. With ``worker`` the lease must still be held; with
        ``unless_canceled``, not if a cancel has been asked for meanwhile."""
        now = time.time()
        guard = (
            "lease_owner = ? AND status = 'running'"
            if worker
            else "status IN ('queued', 'running')"
        )
        if unless_canceled:
            guard += " AND cancel_requested = 0"
        # One statement: the trigger of migration m004 links the results to their files.
        rows = await self.execute(
            f"""UPDATE tasks SET status = ?, finished_at = ?, updated_at = ?, progress = NULL,
                    lease_owner = NULL, lease_until = 0, results = ?, failures = ?, error = ?,
                    notes = COALESCE(?, notes), billed_images = ?, cost = ?, currency = ?
                WHERE id = ? AND {guard} RETURNING vendor, function, owner, created_at""",
            (
                status.value,
                now,
                now,
                json.dumps([r.model_dump() for r in results]),
                json.dumps([f.model_dump() for f in failures]),
                json.dumps(error) if error else None,
                json.dumps(notes) if notes is not None else None,
                billed_images,
                cost,
                currency,
                task_id,
                *((worker,) if worker else ()),
            ),
        )
        self._linked(r.sha256 for r in results)
        for vendor, function, owner, created_at in rows:
            telemetry.task_ended(task_id, status.value, vendor, function, owner, now - created_at)
        return bool(rows)

    async def reroute(self, task_id: str, worker: str, vendor: str, note: str) -> bool:
        """Queue a held task again for another vendor (a fallback), from the start."""
        rows = await self.execute(
            "UPDATE tasks SET vendor = ?, status = 'queued', lease_owner = NULL, lease_until = 0,"
            " vendor_task_id = NULL, submit_started_at = NULL, polls = 0,"
            " notes = json_insert(notes, '$[#]', ?), updated_at = ?"
            " WHERE id = ? AND lease_owner = ? AND status = 'running' RETURNING id",
            (vendor, note, time.time(), task_id, worker),
        )
        return bool(rows)

    async def request_cancel(self, task_id: str) -> TaskRecord:
        await self.get(task_id)
        await self.execute(
            "UPDATE tasks SET cancel_requested = 1, updated_at = ? WHERE id = ?"
            " AND status IN ('queued', 'running')",
            (time.time(), task_id),
        )
        return await self.get(task_id)

    async def find_by_vendor_task(self, vendor: str, vendor_task_id: str) -> TaskRecord | None:
        rows = await self.db.execute_fetchall(
            "SELECT * FROM tasks WHERE vendor = ? AND vendor_task_id = ?", (vendor, vendor_task_id)
        )
        return _record(rows[0]) if rows else None

    async def read_result(
        self, task_id: str, index: int, results: list[dict[str, Any]] | None = None
    ) -> tuple[bytes, str]:
        if results is None:
            results = (await self.get(task_id)).results
        for result in results:
            if result["index"] == index:
                key = blob_key(result["sha256"], result["mime_type"])
                try:
                    data = await self.blobs.get(key, result["bytes"])
                except BlobDamaged:
                    raise NotFound(f"result {index} of task {task_id} is damaged on disk") from None
                except BlobMissing:
                    raise NotFound(f"result {index} of task {task_id} was cleaned up") from None
                return data, result["mime_type"]
        raise NotFound(f"task {task_id} has no result {index}")

    # ---- a task's steps ----------------------------------------------------------------

    async def add_step(
        self,
        task_id: str,
        kind: str,
        *,
        vendor: str | None = None,
        worker: str | None = None,
        code: str | None = None,
        detail: str | None = None,
    ) -> None:
        """One statement: a new row, or (an upsert on the id of the task's last step, when
        that one is the same) that row counted again."""
        await self.execute(
            f"""INSERT INTO task_steps (id, task_id, kind, at, last_at, count, vendor, worker,
                    code, detail)
                SELECT (SELECT id FROM task_steps WHERE id = (SELECT MAX(id) FROM task_steps
                        WHERE task_id = :task) AND kind = :kind AND code IS :code
                        AND detail IS :detail),
                    id, :kind, {NOW}, {NOW}, 1, COALESCE(:vendor, vendor), :worker, :code,
                    :detail
                FROM tasks WHERE id = :task
                ON CONFLICT (id) DO UPDATE SET count = count + 1, last_at = excluded.at""",
            {
                "task": task_id,
                "kind": kind,
                "vendor": vendor,
                "worker": worker,
                "code": code,
                "detail": detail,
            },
        )

    async def steps(self, task_id: str, *, limit: int = 500) -> list[TaskStep]:
        rows = await self.db.execute_fetchall(
            "SELECT id, task_id, kind, at, last_at, count, vendor, worker, code, detail"
            " FROM task_steps WHERE task_id = ? ORDER BY id LIMIT ?",
            (task_id, limit),
        )
        return [TaskStep(*row) for row in rows]

    # ---- vendors' rate limits ----------------------------------------------------------

    async def take_turn(
        self, vendor: str, kind: str, rate: float, *, hold_s: float, burst: int = 1
    ) -> Turn:
        """One statement looks and takes: it holds the database's write lock from its start,
        and reads the clock once (SQLite's ``'now'`` is fixed within a statement), so turns
        taken by any process are ordered and spaced by that one clock. Only a refused turn
        asks a second time, for how long to wait (a hint for sleeping; it grants nothing)."""
        interval, span = 1.0 / rate, burst / rate
        key = {"vendor": vendor, "kind": kind}
        taken = await self.execute(
            f"""INSERT INTO rate_turns (vendor, kind, taken_at, free_at)
                SELECT :vendor, :kind, c.now, c.now + :hold + 1.0 FROM (SELECT {NOW} AS now) c
                WHERE (SELECT COUNT(*) FROM rate_turns WHERE vendor = :vendor
                       AND kind = :kind AND taken_at > c.now - :span) < :burst
                  AND (SELECT COUNT(*) FROM rate_turns WHERE vendor = :vendor AND kind = :kind
                       AND free_at > c.now) < :slots
                RETURNING id""",
            {**key, "hold": hold_s, "span": span, "burst": burst, "slots": max(1, int(rate))},
        )
        if taken:
            return Turn(int(taken[0][0]), 0.0)
        rows = await self.db.execute_fetchall(
            f"""SELECT (SELECT taken_at FROM rate_turns WHERE vendor = :vendor AND kind = :kind
                        ORDER BY taken_at DESC LIMIT 1 OFFSET :burst - 1),
                       COUNT(CASE WHEN free_at > c.now THEN 1 END),
                       MIN(CASE WHEN free_at > c.now THEN free_at END), c.now
                FROM rate_turns, (SELECT {NOW} AS now) c
                WHERE vendor = :vendor AND kind = :kind""",
            {**key, "burst": burst},
        )
        oldest, held, first_free, now = rows[0]  # oldest: of the last ``burst`` turns
        wait = oldest + span - now if oldest is not None else 0.0
        if held >= max(1, int(rate)) and first_free is not None:
            # a turn still in flight may end sooner than its hold: ask again soon
            wait = max(wait, min(first_free - now, max(interval, 0.05)))
        return Turn(None, max(wait, 0.001))

    async def end_turn(self, turn_id: int) -> None:
        await self.execute(
            f"UPDATE rate_turns SET free_at = min(free_at, {NOW} + 1.0) WHERE id = ?", (turn_id,)
        )

    async def note_wait(self, vendor: str, kind: str, waited_s: float) -> None:
        await self.execute(
            f"""INSERT INTO rate_waits (vendor, kind, minute, waits, waited_s, last_at)
                VALUES (?, ?, CAST({NOW} / 60 AS INTEGER), 1, ?, {NOW})
                ON CONFLICT (vendor, kind, minute) DO UPDATE SET waits = waits + 1,
                    waited_s = waited_s + excluded.waited_s, last_at = excluded.last_at""",
            (vendor, kind, waited_s),
        )

    async def rate_waits(self) -> list[RateWaits]:
        rows = await self.db.execute_fetchall(
            f"""WITH c AS (SELECT {NOW} AS now),
                w AS (SELECT vendor, kind,
                        SUM(CASE WHEN last_at > c.now - 60 THEN waits ELSE 0 END) AS minute,
                        SUM(waits) AS hour, SUM(waited_s) AS waited, MAX(last_at) AS last
                      FROM rate_waits, c WHERE minute >= CAST((c.now - 3600) / 60 AS INTEGER)
                      GROUP BY vendor, kind),
                t AS (SELECT vendor, kind, COUNT(*) AS held, MIN(free_at) AS free
                      FROM rate_turns, c WHERE free_at > c.now GROUP BY vendor, kind),
                k AS (SELECT vendor, kind FROM w UNION SELECT vendor, kind FROM t)
                SELECT k.vendor, k.kind, COALESCE(w.minute, 0), COALESCE(w.hour, 0),
                       COALESCE(w.waited, 0.0), w.last, COALESCE(t.held, 0), t.free
                FROM k LEFT JOIN w USING (vendor, kind) LEFT JOIN t USING (vendor, kind)
                ORDER BY k.vendor, k.kind"""
        )
        return [RateWaits(*row) for row in rows]

    # ---- the console's sessions --------------------------------------------------------

    async def add_console_session(self, session: ConsoleSession) -> None:
        await self.execute(
            "INSERT INTO console_sessions (id, operator, created_at, expires_at, ended_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (session.id, session.operator, session.created_at, session.expires_at, None),
        )

    async def console_session(self, session_id: str) -> ConsoleSession | None:
        rows = await self.db.execute_fetchall(
            "SELECT id, operator, created_at, expires_at, ended_at FROM console_sessions"
            " WHERE id = ?",
            (session_id,),
        )
        return ConsoleSession(*rows[0]) if rows else None

    async def end_console_session(self, session_id: str, ended_at: float) -> bool:
        rows = await self.execute(
            "UPDATE console_sessions SET ended_at = ? WHERE id = ? AND ended_at IS NULL"
            " RETURNING id",
            (ended_at, session_id),
        )
        return bool(rows)

    # ---- clean-up ----------------------------------------------------------------------

    async def cleanup(self, retention_days: float, max_bytes: int | None = None) -> int:
        cutoff = time.time() - retention_days * 86400
        await self.execute("DELETE FROM console_sessions WHERE expires_at < ?", (time.time(),))
        await self.execute(
            f"DELETE FROM rate_waits WHERE minute < CAST(({NOW} - 86400) / 60 AS INTEGER)"
        )
        await self.execute(
            "DELETE FROM task_blobs WHERE task_id IN (SELECT id FROM tasks"
            " WHERE finished_at IS NOT NULL AND finished_at < ?)",
            (cutoff,),
        )
        await self.execute(
            "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)
        )
        await self.execute("DELETE FROM uploads WHERE expires_at < ?", (time.time(),))
        removed, _ = await self._delete_orphans()
        if max_bytes is not None:
            removed += await self._evict(max_bytes)
        return removed + await self.blobs.sweep(ORPHAN_GRACE_S)

    async def _delete_orphans(self, task_shas: list[str] | None = None) -> tuple[int, int]:
        """Delete blobs no task or upload refers to, rows and bytes (only ``task_shas`` if
        given); returns how many and their bytes.

        The bytes go inside the transaction that deletes their rows, a batch at a time: a
        process storing the same image meanwhile (``put_blob``'s row comes first) waits for
        the write lock, then stores the bytes anew."""
        count = freed = 0
        while True:
            async with self.transaction() as db:
                rows = await self._orphan_rows(db, task_shas, limit=ORPHAN_BATCH)
                await self._delete_files(rows)
            count += len(rows)
            freed += sum(int(r[2]) for r in rows)
            if len(rows) < ORPHAN_BATCH:
                return count, freed

    async def _orphan_rows(
        self,
        db: aiosqlite.Connection,
        task_shas: list[str] | None = None,
        *,
        limit: int = -1,
    ) -> list[sqlite3.Row]:
        """Delete the rows of blobs no task or upload refers to (only ``task_shas`` if given,
        at most ``limit``) in the caller's transaction; return them (sha256, mime_type,
        bytes), whose bytes the caller deletes before that commits (:meth:`_delete_files`).

        A blob some process stored but has not linked yet (``pending``, within its grace:
        m015) is kept: it is an input or a result about to be linked."""
        where: str = ""
        params: tuple[Any, ...] = ()
        if task_shas is not None:
            if not task_shas:
                return []
            where = f" AND sha256 IN ({','.join('?' * len(task_shas))})"
            params = tuple(task_shas)
        return list(
            await db.execute_fetchall(
                "DELETE FROM blobs WHERE sha256 IN (SELECT sha256 FROM blobs b WHERE NOT EXISTS"
                " (SELECT 1 FROM task_blobs tb WHERE tb.sha256 = b.sha256)"
                " AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.sha256 = b.sha256)"
                f" AND (b.pending = 0 OR b.grace_until < {NOW}){where} LIMIT ?)"
                " RETURNING sha256, mime_type, bytes",
                (*params, limit),
            )
        )

    async def _delete_files(self, rows: Iterable[sqlite3.Row]) -> None:
        """Delete the bytes of blobs whose rows went, in the transaction that deletes them."""
        for sha, mime, _ in rows:
            await self.blobs.delete(blob_key(sha, mime))

    async def _evict(self, max_bytes: int) -> int:
        """Forget finished tasks, oldest first, until the stored files fit in ``max_bytes``.
        Sizes are counted per file, so a file several tasks share is freed only with the
        last of them."""
        removed = 0
        while await self._total_bytes(self.db) > max_bytes:
            async with self.transaction() as db:
                rows = await self._forget_oldest(db, None)
                if rows is None:
                    break
                await self._delete_files(rows)
            removed += len(rows)
        return removed

    # ---- owner queries -----------------------------------------------------------------

    async def active(self, owner: str) -> list[TaskRecord]:
        """``owner``'s tasks still queued or running, newest first."""
        rows = await self.db.execute_fetchall(
            "SELECT * FROM tasks WHERE owner = ? AND status IN ('queued', 'running')"
            " ORDER BY seq DESC",
            (owner,),
        )
        return [_record(r) for r in rows]

    async def usage(self, owner: str, since: float) -> tuple[int, float | None]:
        """How many tasks ``owner`` created at or after ``since``, and when the first was."""
        rows = await self.db.execute_fetchall(
            "SELECT COUNT(*), MIN(created_at) FROM tasks WHERE owner = ? AND created_at >= ?",
            (owner, since),
        )
        count, oldest = rows[0]
        return int(count), oldest

    async def owner_usage(self, owner: str, windows: Windows) -> OwnerUsage:
        return await self._on_thread(lambda db: _usage(db, owner, windows))

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        """The tasks among ``task_ids`` that exist, in no particular order."""
        if not task_ids:
            return []
        marks = ",".join("?" * len(task_ids))
        rows = await self.db.execute_fetchall(
            f"SELECT * FROM tasks WHERE id IN ({marks})", tuple(task_ids)
        )
        return [_record(r) for r in rows]

    # ---- users and budget overrides ----------------------------------------------------

    async def add_user(self, name: str, token_sha256: str, created_at: float) -> UserRecord | None:
        async with self.transaction() as db:
            await db.execute(
                "DELETE FROM users WHERE lower(name) = lower(?) AND revoked_at IS NOT NULL", (name,)
            )
            added = await db.execute_fetchall(
                "INSERT INTO users (name, token_sha256, created_at) VALUES (?, ?, ?)"
                " ON CONFLICT DO NOTHING RETURNING name",
                (name, token_sha256, created_at),
            )
        return UserRecord(name, token_sha256, created_at) if added else None

    async def users(self) -> list[UserRecord]:
        rows = await self.db.execute_fetchall(
            "SELECT name, token_sha256, created_at, revoked_at FROM users ORDER BY lower(name)"
        )
        return [UserRecord(*row) for row in rows]

    async def revoke_user(self, name: str, revoked_at: float) -> UserRecord | None:
        rows = await self.execute(
            "UPDATE users SET revoked_at = ? WHERE lower(name) = lower(?) AND revoked_at IS NULL"
            " RETURNING name, token_sha256, created_at, revoked_at",
            (revoked_at, name),
        )
        return UserRecord(*rows[0]) if rows else None

    async def set_budget_override(self, owner: str, limits: BudgetLimits | None) -> None:
        if limits is None:
            await self.execute("DELETE FROM budget_overrides WHERE owner = ?", (owner,))
            return
        await self.execute(
            "INSERT INTO budget_overrides (owner, limits, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (owner) DO UPDATE SET limits = excluded.limits,"
            " updated_at = excluded.updated_at",
            (owner, limits.model_dump_json(exclude_defaults=True), time.time()),
        )

    async def budget_overrides(self, owner: str | None = None) -> dict[str, BudgetLimits]:
        rows = await self.db.execute_fetchall(
            "SELECT owner, limits FROM budget_overrides WHERE owner = COALESCE(?, owner)",
            (owner,),
        )
        return {row[0]: BudgetLimits.model_validate_json(row[1]) for row in rows}


def _of(owner: str) -> str:
    """The condition that a task is ``owner``'s (one parameter: the owner): the local
    owner's tasks include those stored without one. Other owners' keep to the index."""
    return "(owner = ? OR owner IS NULL)" if owner == LOCAL_OWNER else "owner = ?"


class _Abandoned(Exception):
    """A transaction rolled back because its caller had gone (``_in_transaction``)."""


def _hand_over(done: asyncio.Future[T], orphaned: Callable[[T], None] | None) -> None:
    """What a transaction whose caller had gone wrote, to ``orphaned`` (nothing if it was
    rolled back or failed: the outcome is looked at either way, so none is left unread)."""
    if done.cancelled() or done.exception() is not None:
        return
    if orphaned is not None:
        orphaned(done.result())


def _let_go(done: asyncio.Future[Any]) -> None:
    if not done.cancelled():
        done.exception()  # looked at, so that asyncio does not report it


def _fields(row: sqlite3.Row) -> dict[str, Any]:
    """A row as a dict: ``dict(row)`` looks each column up by name, comparing names one by
    one (7 µs for a task's row; this takes 1.4)."""
    return dict(zip(row.keys(), row, strict=True))


def _record(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord.from_row(_fields(row))


def _by_key(
    db: sqlite3.Connection, key: str, since: float | None = None
) -> tuple[TaskRecord, str | None] | None:
    """The task holding ``key`` (made at or after ``since``) and its request's fingerprint
    (on the connection's thread: ``SQLiteStore._on_thread``)."""
    row = db.execute(
        "SELECT tasks.*, r.fingerprint AS _fingerprint FROM tasks"
        " LEFT JOIN idempotency_requests r ON r.task_id = tasks.id"
        " WHERE idempotency_key = ? AND created_at >= COALESCE(?, 0)",
        (key, since),
    ).fetchone()
    if row is None:
        return None
    data = _fields(row)
    first = data.pop("_fingerprint")
    return TaskRecord.from_row(data), first


def _free_keys(db: sqlite3.Connection, task_ids: list[str]) -> None:
    marks = ", ".join("?" * len(task_ids))
    db.execute(f"UPDATE tasks SET idempotency_key = NULL WHERE id IN ({marks})", task_ids)
    db.execute(f"DELETE FROM idempotency_requests WHERE task_id IN ({marks})", task_ids)


def _usage(db: sqlite3.Connection, owner: str, since: Windows) -> OwnerUsage:
    """What ``owner`` has used (on the connection's thread: ``SQLiteStore._on_thread``)."""
    who = _of(owner)
    active = db.execute(
        f"SELECT vendor, function, n FROM tasks WHERE {who} AND status IN ('queued', 'running')",
        (owner,),
    ).fetchall()
    [(edits, first)] = db.execute(
        f"SELECT COUNT(*), MIN(created_at) FROM tasks WHERE {who} AND created_at >= ?",
        (owner, since.hour),
    ).fetchall()
    costs = db.execute(
        "SELECT currency, SUM(CASE WHEN created_at >= ? THEN cost ELSE 0 END), SUM(cost)"
        f" FROM tasks WHERE {who} AND created_at >= ? AND cost IS NOT NULL"
        " AND currency IS NOT NULL GROUP BY currency",
        (since.day, owner, since.month),
    ).fetchall()
    return OwnerUsage(
        active=[ActiveTask(*row) for row in active],
        edits=int(edits),
        first_edit_at=first,
        day_cost={c: float(day) for c, day, _ in costs},
        month_cost={c: float(month) for c, _, month in costs},
    )


#: The columns of a ``TaskSummary`` but its error's code.
_SUMMARY = (
    "seq, vendor, function, COALESCE(owner, '" + LOCAL_OWNER + "') AS owner, status, "
    "created_at, started_at, finished_at, cost, currency, lease_until"
)


def _summary(row: sqlite3.Row) -> TaskSummary:
    code = row["error_code"]
    return TaskSummary(**{**_fields(row), "error_code": None if code is None else str(code)})


def _filter(where: TaskFilter, before: int | None) -> tuple[list[str], list[Any]]:
    """``Store.page``'s conditions and their parameters."""
    conds: list[str] = []
    params: list[Any] = []
    for column in ("status", "vendor", "function"):
        if (value := getattr(where, column)) is not None:
            conds.append(f"{column} = ?")
            params.append(value)
    if where.owner is not None:
        conds.append(_of(where.owner))
        params.append(where.owner)
    if where.since is not None:
        conds.append("created_at >= ?")
        params.append(where.since)
    if where.until is not None:
        conds.append("created_at < ?")
        params.append(where.until)
    if before is not None:
        conds.append("seq < ?")
        params.append(before)
    return conds, params
