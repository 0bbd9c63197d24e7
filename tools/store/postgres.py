"""The PostgreSQL backend of the store (through asyncpg): any number of processes on any
number of machines. Blobs' bytes are in the store's ``BlobStore``, their rows here.

Times are the database's clock (seconds since the epoch), so leases mean the same on every
machine. A claim takes a per-vendor advisory lock, so that two processes claiming at once
cannot both fill the vendor's capacity, and skips rows other statements hold (``FOR UPDATE
SKIP LOCKED``). Task changes are announced by a trigger (``pg_migrations.m003``) and heard on
one connection that LISTENs and reconnects by itself (``listen``). A task whose owner's use
is checked first (an ``Admission``) is stored under a per-owner advisory lock, so that the
owner's requests are counted one after the other across processes. While the database cannot
be reached, calls raise ``StoreUnavailable`` (``outages.py``); the pool connects again as soon
as it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit

import asyncpg

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
from tools.store.blobs import BlobDamaged, BlobMissing, BlobStore, blob_key, content_hash
from tools.store.outages import one_line_outages, reports_outages
from tools.store.pg_migrations import CORE, migrate

log = logging.getLogger("retouch.store")

#: The database's clock, in seconds since the epoch (one value per statement).
NOW = "extract(epoch FROM statement_timestamp())::float8"
#: The advisory lock under which images are counted against the size cap.
CAP = "store:cap"
MB = 1024 * 1024
#: The channel the task trigger announces changes on.
CHANNEL = "retouch_tasks"
#: How often the listening connection is checked when nothing arrives (a dead network
#: closes no socket), and the longest wait between two attempts to reconnect.
LISTEN_CHECK_S = 10.0
RECONNECT_MAX_S = 5.0


R = TypeVar("R")


def _reports_full(
    method: Callable[..., Awaitable[R]],
) -> Callable[..., Awaitable[R]]:
    """A write whose database has no room left is StorageFull naming it (no password)."""

    @functools.wraps(method)
    async def write(self: PostgresStore, *args: Any, **kwargs: Any) -> R:
        try:
            return await method(self, *args, **kwargs)
        except asyncpg.DiskFullError:
            url = urlsplit(self._url)
            where = f"{url.hostname or 'localhost'}:{url.port or 5432}{url.path}"
            raise StorageFull(
                f"storage full: the database at {where} cannot grow (no space left)"
            ) from None

    return write


#: What ``tallies`` reads (after ``_fold``): each group, and for running groups the tasks
#: whose lease holds (``tasks_live``, the running tasks by vendor and lease, finds them).
#: The claim loop's take ($1 vendor, $2 worker, $3 capacity, $4 lease in seconds): the
#: vendor's queued tasks and lapsed leases, oldest first, through the ``tasks_claim`` and
#: ``tasks_live`` partial indexes (their predicates are named so the planner can use them),
#: never by walking the ended tasks the store keeps.
CLAIM = f"""
    WITH picked AS (
        SELECT id FROM tasks
        WHERE vendor = $1 AND status IN ('queued', 'running')
              AND (status = 'queued' OR lease_until < {NOW})
        ORDER BY seq
        LIMIT greatest(0, $3 - (SELECT count(*) FROM tasks WHERE vendor = $1
                                AND status = 'running' AND lease_until >= {NOW}))
        FOR UPDATE SKIP LOCKED
    )
    UPDATE tasks SET status = 'running', lease_owner = $2,
        lease_until = {NOW} + $4, attempts = attempts + 1,
        started_at = COALESCE(started_at, {NOW}), updated_at = {NOW}
    FROM picked WHERE tasks.id = picked.id
    RETURNING tasks.*
"""
#: One queued task taken now ($1 its id; $2–$4 as CLAIM's) if the claim loop would take it
#: first: no older task of its vendor waits, and the vendor has a slot free.
CLAIM_TASK = f"""
    UPDATE tasks SET status = 'running', lease_owner = $2,
        lease_until = {NOW} + $4, attempts = attempts + 1,
        started_at = COALESCE(started_at, {NOW}), updated_at = {NOW}
    WHERE id = $1 AND status = 'queued'
      AND NOT EXISTS (
        SELECT 1 FROM tasks AS older WHERE older.vendor = tasks.vendor
          AND older.seq < tasks.seq AND older.status IN ('queued', 'running')
          AND (older.status = 'queued' OR older.lease_until < {NOW}))
      AND (SELECT count(*) FROM tasks AS live WHERE live.vendor = tasks.vendor
           AND live.status = 'running' AND live.lease_until >= {NOW}) < $3
    RETURNING tasks.*
"""

TALLIES = """
    SELECT t.status, t.vendor, t.function, t.currency, t.tasks, t.images,
        CASE WHEN t.priced > 0 THEN t.cost END,
        CASE WHEN t.status = 'running' THEN (
            SELECT count(*) FROM tasks WHERE tasks.vendor = t.vendor AND tasks.status = 'running'
              AND tasks.lease_until >= $1 AND tasks.function = t.function
              AND COALESCE(tasks.currency, '') = t.currency) ELSE 0 END
    FROM (
        SELECT status, vendor, function, currency, sum(tasks)::bigint AS tasks,
            sum(images)::bigint AS images, sum(cost) AS cost, sum(priced) AS priced
        FROM task_tallies GROUP BY status, vendor, function, currency HAVING sum(tasks) > 0
    ) AS t
    ORDER BY t.status, t.vendor, t.function, t.currency
"""
#: Any constant, shared by every process: the one folding the tallies' rows.
FOLD_LOCK = 0x7461_6C6C_6965_73  # "tallies"


async def _fold(db: asyncpg.Connection) -> None:
    """Fold the rows of changes m016's trigger adds into one row a group (an empty group
    goes), in ``db``'s transaction. One process at a time (a transaction-scoped advisory
    lock; the others skip, their reads sum the rows as they are): two folds would not count
    anything twice, but could deadlock on each other's rows."""
    if not await db.fetchval("SELECT pg_try_advisory_xact_lock($1)", FOLD_LOCK):
        return
    await db.execute(
        """
        WITH gone AS (DELETE FROM task_tallies RETURNING *)
        INSERT INTO task_tallies (status, vendor, function, currency, tasks, images, cost,
            priced)
        SELECT status, vendor, function, currency, sum(tasks), sum(images), sum(cost),
            sum(priced)
        FROM gone GROUP BY status, vendor, function, currency HAVING sum(tasks) <> 0
        """
    )
    await db.execute(
        """
        WITH gone AS (DELETE FROM task_ended RETURNING *)
        INSERT INTO task_ended (status, vendor, function, currency, tasks, images, cost,
            origin)
        SELECT status, vendor, function, currency, sum(tasks), sum(images), sum(cost), origin
        FROM gone GROUP BY status, vendor, function, currency, origin
        """
    )


@reports_outages
class PostgresStore(Store):
    """A PostgreSQL database (a pool of connections), and the blob store holding the bytes."""

    def __init__(self, pool: asyncpg.Pool, url: str, blobs: BlobStore) -> None:
        self.pool = pool
        self.blobs = blobs
        self._url = url  # holds the password: never logged
        self._subscribers: list[Callable[[TaskEvent], None]] = []
        self._listening: asyncio.Task[None] | None = None
        self.listener: asyncpg.Connection | None = None  # the LISTEN connection (tests)
        self._pending = PendingPuts()

    @classmethod
    async def open(
        cls, url: str, blobs: BlobStore, *, min_size: int = 1, max_size: int = 10
    ) -> PostgresStore:
        """The database at ``url``, migrated if need be, with its images in ``blobs``."""
        one_line_outages("asyncpg.pool")
        pool = await asyncpg.create_pool(url, min_size=min(min_size, max_size), max_size=max_size)
        try:
            async with pool.acquire() as db:
                await migrate(db, CORE)
        except BaseException:
            await pool.close()
            raise
        return cls(pool, url, blobs)

    async def _after_outage(self) -> None:
        """Connections idle in the pool when the server went away may not know it yet: each
        is replaced at its next use instead of failing once more after the server is back."""
        await self.pool.expire_connections()

    async def close(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(BaseException):
                await self._listening
        try:
            async with asyncio.timeout(10):
                await self.pool.close()
        except TimeoutError:
            self.pool.terminate()  # a connection still busy after 10 s is cut
        await self.blobs.close()

    # ---- events --------------------------------------------------------------------------

    async def listen(self, on_event: Callable[[TaskEvent], None]) -> None:
        self._subscribers.append(on_event)
        if self._listening is None:
            ready = asyncio.Event()
            self._listening = asyncio.create_task(self._listen(ready), name="retouch-listen")
            # Listening before we return, so no event after it is missed; if the database is
            # down, the loop goes on trying and the callers' polls cover meanwhile.
            await ready.wait()

    def _publish(self, event: TaskEvent) -> None:
        for subscriber in list(self._subscribers):
            try:
                subscriber(event)
            except Exception:
                log.exception("a task event subscriber failed")

    def _heard(self, _db: object, _pid: int, _channel: str, payload: str) -> None:
        kind, _, rest = payload.partition(" ")
        vendor, _, task_id = rest.rpartition(" ")
        if kind in ("queued", "changed", "ended"):
            self._publish(TaskEvent(kind, task_id, vendor))  # type: ignore[arg-type]

    async def _listen(self, ready: asyncio.Event) -> None:
        """Keep one connection LISTENing. After it was lost, connect again (backing off) and
        publish ``missed``: what was announced meanwhile never reached us."""
        delay = 0.1
        while True:
            db: asyncpg.Connection | None = None
            try:
                db = await asyncpg.connect(self._url, timeout=LISTEN_CHECK_S)
                lost = asyncio.Event()
                db.add_termination_listener(lambda _db, lost=lost: lost.set())
                await db.add_listener(CHANNEL, self._heard)
                self.listener = db
                if ready.is_set():  # listening before, or listen() stopped waiting
                    self._publish(TaskEvent("missed"))
                    log.info("task events: listening again")
                ready.set()
                delay = 0.1
                while not lost.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(LISTEN_CHECK_S):
                            await lost.wait()
                    if not lost.is_set():  # quiet: is the connection still there?
                        async with asyncio.timeout(LISTEN_CHECK_S):
                            await db.execute("SELECT 1")
                log.warning("task events: the database closed the connection; reconnecting")
            except Exception as exc:  # the loop must outlive any failure
                log.warning("task events: connection lost (%s); reconnecting", type(exc).__name__)
            finally:
                self.listener = None
                if db is not None:
                    db.terminate()
            ready.set()  # listen() does not wait for a database that is down
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_S)

    # ---- blobs -------------------------------------------------------------------------

    @_reports_full
    async def put_blob(
        self, image: InputImage, *, owner: str | None = None, strict: bool = True
    ) -> str:
        sha = await content_hash(image.data)
        size = len(image.data)
        # The row first, marked pending: from then on no process's clean-up deletes the bytes
        # (one holding the row locked to delete it makes us wait, and we store it anew).
        insert = (
            "INSERT INTO blobs (sha256, mime_type, bytes, width, height, created_at, pending,"
            f" grace_until) VALUES ($1, $2, $3, $4, $5, {NOW}, 1, {NOW} + $6)"
            " ON CONFLICT (sha256) DO UPDATE SET pending = blobs.pending + 1,"
            " grace_until = EXCLUDED.grace_until"
        )
        values = (sha, image.mime_type, size, image.width, image.height, ORPHAN_GRACE_S)
        fits = True
        if self.limits.max_bytes is None:
            await self.pool.execute(insert, *values)
        else:  # room made and the row counted under one lock for every process: the cap holds
            async with self.pool.acquire() as db, db.transaction():
                await db.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", CAP)
                known = await db.fetchval("SELECT 1 FROM blobs WHERE sha256 = $1", sha)
                if not known:
                    fits = await self._make_room(db, size, owner)
                if known or fits or not strict:
                    await db.execute(insert, *values)
                    self._pending.add(sha, owner, size)
            if not fits and strict:
                raise self._full(size, owner)
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
            async with self.pool.acquire() as db, db.transaction():
                left = await db.fetchval(
                    "UPDATE blobs SET pending = greatest(pending - 1, 0) WHERE sha256 = $1"
                    " RETURNING pending",
                    sha,
                )
                gone = left == 0 and await db.fetchval(
                    "DELETE FROM blobs WHERE sha256 = $1 AND pending = 0 AND NOT EXISTS"
                    " (SELECT 1 FROM task_blobs tb WHERE tb.sha256 = $1) AND NOT EXISTS"
                    " (SELECT 1 FROM uploads u WHERE u.sha256 = $1) RETURNING 1",
                    sha,
                )
                if gone:
                    await self.blobs.delete(key)

    async def _make_room(self, db: asyncpg.Connection, size: int, owner: str | None) -> bool:
        """Forget the oldest finished tasks (``owner``'s first while they are over their
        share) until ``size`` more bytes fit, deleting the bytes of the blobs that go (their
        rows stay locked until then); False if they still do not fit."""
        share = self.limits.share()
        if share is not None and owner is not None:
            while await self._owner_bytes(db, owner) + size > share:
                if not await self._forget_oldest(db, owner):
                    return False
        cap = self.limits.max_bytes
        assert cap is not None
        while await self._total_bytes(db) + size > cap:
            if not await self._forget_oldest(db, None):
                return False
        return True

    def _full(self, size: int, owner: str | None) -> StorageFull:
        """Why ``size`` more bytes cannot be stored (after :meth:`_make_room` said so)."""
        share = self.limits.share()
        if share is not None and owner is not None:
            used = self._pending.bytes_of(owner)
            return StorageFull(
                f"storage full for {owner}: their tasks keep their {share / MB:.1f} MB share "
                f"(store.owner_share) and none of them has finished ({used / MB:.1f} MB being "
                "stored now); try again when one has"
            )
        cap = self.limits.max_bytes or 0
        return StorageFull(
            f"storage full: the store keeps its {cap / MB:.0f} MB (store.max_results_mb) for "
            f"tasks that have not finished, and {size / MB:.1f} MB more does not fit; try "
            "again later"
        )

    async def _forget_oldest(self, db: asyncpg.Connection, owner: str | None) -> bool:
        """Forget the oldest finished task (``owner``'s if given) and the bytes no task or
        upload uses any more; False if there is none."""
        where = "finished_at IS NOT NULL" + (f" AND {_of('$1', owner)}" if owner else "")
        task_id = await db.fetchval(
            f"SELECT id FROM tasks WHERE {where} ORDER BY finished_at LIMIT 1"
            " FOR UPDATE SKIP LOCKED",
            *((owner,) if owner else ()),
        )
        if task_id is None:
            return False
        shas = [
            r[0]
            for r in await db.fetch("SELECT sha256 FROM task_blobs WHERE task_id = $1", task_id)
        ]
        await db.execute("DELETE FROM tasks WHERE id = $1", task_id)  # links go too (CASCADE)
        rows = await db.fetch(
            "DELETE FROM blobs WHERE sha256 = ANY($1::text[]) AND NOT EXISTS"
            " (SELECT 1 FROM task_blobs tb WHERE tb.sha256 = blobs.sha256)"
            " AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.sha256 = blobs.sha256)"
            f" AND (pending = 0 OR grace_until < {NOW}) RETURNING sha256, mime_type",
            shas,
        )
        for sha, mime in rows:
            await self.blobs.delete(blob_key(sha, mime))
        return True

    async def _total_bytes(self, db: asyncpg.Connection | asyncpg.Pool) -> int:
        return int(await db.fetchval("SELECT COALESCE(sum(bytes), 0) FROM blobs"))

    async def _owner_bytes(self, db: asyncpg.Connection | asyncpg.Pool, owner: str) -> int:
        """The blobs of ``owner``'s tasks and uploads, each once, and those this process is
        storing for them that nothing links yet."""
        linked = await db.fetchval(
            "SELECT COALESCE(sum(bytes), 0) FROM blobs WHERE sha256 IN (SELECT tb.sha256"
            f" FROM task_blobs tb JOIN tasks t ON t.id = tb.task_id WHERE {_of('$1', owner)}"
            " UNION SELECT sha256 FROM uploads WHERE owner = $1)",
            owner,
        )
        pending = self._pending.bytes_of(owner)
        return int(linked) + pending

    async def stored_bytes(self, owner: str | None = None) -> int:
        if owner is None:
            return await self._total_bytes(self.pool)
        return await self._owner_bytes(self.pool, owner)

    def _linked(self, shas: Iterable[str | None]) -> None:
        self._pending.drop(shas)

    async def read_blob(self, sha256: str) -> InputImage:
        row = await self.pool.fetchrow(
            "SELECT mime_type, bytes, width, height FROM blobs WHERE sha256 = $1", sha256
        )
        if row is None:
            raise NotFound(f"image {sha256[:12]}… is not in the store")
        try:
            data = await self.blobs.get(blob_key(sha256, row["mime_type"]), row["bytes"])
        except BlobDamaged:
            raise NotFound(f"image {sha256[:12]}… is damaged on disk (cut short)") from None
        except BlobMissing:
            raise NotFound(f"image {sha256[:12]}… is missing from the store") from None
        return InputImage(data, row["mime_type"], row["width"], row["height"])

    async def task_images(self, task_id: str, role: str | None = None) -> dict[str, list[str]]:
        rows = await self.pool.fetch(
            "SELECT role, sha256 FROM task_blobs WHERE task_id = $1"
            " AND role = COALESCE($2, role) ORDER BY role, idx",
            task_id,
            role,
        )
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(r[1])
        return out

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

    # ---- uploads -----------------------------------------------------------------------

    @_reports_full
    async def create_upload(
        self, *, owner: str, sha256: str, created_at: float, expires_at: float
    ) -> UploadRecord:
        upload = UploadRecord(new_task_id(), owner, sha256, created_at, expires_at)
        # One statement: the upload row, and the put it links counted as linked.
        await self.pool.execute(
            "WITH unpended AS (UPDATE blobs SET pending = greatest(pending - 1, 0)"
            " WHERE sha256 = $3) INSERT INTO uploads (id, owner, sha256, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4, $5)",
            upload.id,
            owner,
            sha256,
            created_at,
            expires_at,
        )
        self._linked([sha256])
        return upload

    async def get_upload(self, upload_id: str, owner: str) -> UploadRecord | None:
        row = await self.pool.fetchrow(
            "SELECT id, owner, sha256, created_at, expires_at FROM uploads"
            " WHERE id = $1 AND owner = $2",
            upload_id,
            owner,
        )
        return UploadRecord(*row) if row else None

    # ---- tasks -------------------------------------------------------------------------

    @_reports_full
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
        """A new queued task and its links, in one statement; with ``key``, the task already
        made with that key if any (or IdempotencyConflict). With an ``admission``, the
        owner's use is counted and the task stored in one transaction holding the owner's
        advisory lock: the owner's other requests wait for it, then count this task. With a
        ``key``, the transaction holds the key's advisory lock too (after the owner's): the
        key's other requests wait, then find this task."""
        links = [("input", i, sha) for i, sha in enumerate(inputs)]
        if mask:
            links.append(("mask", 0, mask))
        roles, idxs, shas = (list(c) for c in zip(*links, strict=True)) if links else ([], [], [])
        values = (
            new_task_id(),
            function,
            vendor,
            prompt,
            n,
            json.dumps(request),
            owner,
            json.dumps(notes or []),
            key,
            roles,
            idxs,
            shas,
            created_at,
            fingerprint if key is not None else None,
        )
        admitting = admission is not None and owner is not None
        if key is None and not admitting:
            row = await self.pool.fetchrow(_CREATE, *values)
        else:
            async with self.pool.acquire() as db, db.transaction():
                if admitting:
                    await db.execute(_LOCK, f"owner:{owner}")
                if key is not None:
                    await db.execute(_LOCK, f"key:{key}")
                    if (found := await self._by_key(db, key)) is not None:
                        made, first = found
                        if keys_since is None or made.created_at >= keys_since:
                            idempotency.check(made.id, first, fingerprint)
                            return made
                        await db.execute(_FREE_KEYS, [made.id])  # expired: free for this one
                if admission is not None and owner is not None:
                    admission.check(await self._usage(db, owner, admission.windows))
                row = await db.fetchrow(_CREATE, *values)
        self._linked(shas)
        if row is None:  # made with this key by a process that took no lock (an older one)
            made = await self.find_by_key(key or "", fingerprint=fingerprint)
            if made is None:
                raise NotFound(f"no task with key {key!r}")  # deleted between the two reads
            return made
        record = TaskRecord.from_row(row)
        if claim is not None:  # under the vendor's claim lock, as claim_task takes it
            claimed = await self.claim_task(
                record.id, claim.worker, capacity=claim.capacity, lease_s=claim.lease_s
            )
            return claimed or record
        return record

    async def _by_key(
        self, db: asyncpg.Pool | asyncpg.Connection, key: str, since: float | None = None
    ) -> tuple[TaskRecord, str | None] | None:
        """The task holding ``key`` (made at or after ``since``) and its request's
        fingerprint."""
        row = await db.fetchrow(
            "SELECT tasks.*, r.fingerprint AS _fingerprint FROM tasks"
            " LEFT JOIN idempotency_requests r ON r.task_id = tasks.id"
            " WHERE idempotency_key = $1 AND created_at >= COALESCE($2::float8, 0)",
            key,
            since,
        )
        if row is None:
            return None
        data = dict(row)
        first = data.pop("_fingerprint")
        return TaskRecord.from_row(data), first

    async def find_by_key(
        self, key: str, *, since: float | None = None, fingerprint: str | None = None
    ) -> TaskRecord | None:
        found = await self._by_key(self.pool, key, since)
        if found is None:
            return None
        idempotency.check(found[0].id, found[1], fingerprint)
        return found[0]

    async def expire_keys(self, before: float) -> int:
        return int(
            await self.pool.fetchval(
                """
                WITH old AS (
                    SELECT id FROM tasks
                    WHERE idempotency_key IS NOT NULL AND created_at < $1 FOR UPDATE
                ), gone AS (
                    DELETE FROM idempotency_requests r USING old WHERE r.task_id = old.id
                ), freed AS (
                    UPDATE tasks t SET idempotency_key = NULL FROM old WHERE t.id = old.id
                    RETURNING 1
                )
                SELECT count(*) FROM freed
                """,
                before,
            )
        )

    async def get(self, task_id: str, *, owner: str | None = None) -> TaskRecord:
        if owner is None:
            row = await self.pool.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)
        else:
            row = await self.pool.fetchrow(
                f"SELECT * FROM tasks WHERE id = $1 AND {_of('$2', owner)}", task_id, owner
            )
        if row is None:
            raise NotFound(f"no task {task_id!r}")
        return TaskRecord.from_row(row)

    async def list(
        self, *, owner: str | None = None, limit: int = 20, unfinished: bool = False
    ) -> list[TaskRecord]:
        where, params = ["TRUE"], [limit]
        if owner is not None:
            params.append(owner)
            where.append(_of("$2", owner))
        if unfinished:
            where.append("status IN ('queued', 'running')")
        rows = await self.pool.fetch(
            f"SELECT * FROM tasks WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT $1",
            *params,
        )
        return [TaskRecord.from_row(r) for r in rows]

    async def page(
        self, where: TaskFilter, *, before: int | None = None, limit: int = 50
    ) -> list[TaskRecord]:
        conds, params = ["TRUE"], [limit]

        def arg(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        for column in ("status", "vendor", "function"):
            if (value := getattr(where, column)) is not None:
                conds.append(f"{column} = {arg(value)}")
        if where.owner is not None:
            conds.append(_of(arg(where.owner), where.owner))
        if where.since is not None:
            conds.append(f"created_at >= {arg(where.since)}")
        if where.until is not None:
            conds.append(f"created_at < {arg(where.until)}")
        if before is not None:
            conds.append(f"seq < {arg(before)}")
        rows = await self.pool.fetch(
            f"SELECT * FROM tasks WHERE {' AND '.join(conds)} ORDER BY seq DESC LIMIT $1",
            *params,
        )
        return [TaskRecord.from_row(r) for r in rows]

    async def summaries(self, since: float) -> list[TaskSummary]:
        rows = await self.pool.fetch(
            """
            SELECT seq, vendor, function, COALESCE(owner, $2) AS owner, status, created_at,
                started_at, finished_at, error->>'code' AS error_code, cost, currency,
                lease_until
            FROM tasks WHERE created_at >= $1 OR status IN ('queued', 'running') ORDER BY seq
            """,
            since,
            LOCAL_OWNER,
        )
        return [TaskSummary(**dict(r)) for r in rows]

    async def tallies(self, now: float | None = None) -> list[Tally]:
        """The groups of ``task_tallies`` (m016: rows of changes, folded here first), and
        the running tasks whose lease holds counted through ``tasks_live``."""
        async with self.pool.acquire() as db, db.transaction():
            await _fold(db)
            rows = await db.fetch(TALLIES, time.time() if now is None else now)
        return [Tally(s, v, f, c or None, *rest) for s, v, f, c, *rest in rows]

    async def ended(self) -> list[Ended]:
        """Summed over each group's rows (``tallies`` folds them; a read does not have to)."""
        rows = await self.pool.fetch(
            "SELECT status, vendor, function, currency, sum(tasks), sum(images), sum(cost)"
            " FROM task_ended GROUP BY status, vendor, function, currency"
            " ORDER BY status, vendor, function, currency"
        )
        return [Ended(s, v, f, c or None, int(n), int(i), c2) for s, v, f, c, n, i, c2 in rows]

    async def active(self, owner: str) -> list[TaskRecord]:
        """``owner``'s tasks still queued or running, newest first."""
        rows = await self.pool.fetch(
            "SELECT * FROM tasks WHERE owner = $1 AND status IN ('queued', 'running')"
            " ORDER BY seq DESC",
            owner,
        )
        return [TaskRecord.from_row(r) for r in rows]

    async def usage(self, owner: str, since: float) -> tuple[int, float | None]:
        """How many tasks ``owner`` created at or after ``since``, and when the first was."""
        row = await self.pool.fetchrow(
            "SELECT count(*), min(created_at) FROM tasks WHERE owner = $1 AND created_at >= $2",
            owner,
            since,
        )
        return int(row[0]), row[1]

    async def owner_usage(self, owner: str, windows: Windows) -> OwnerUsage:
        return await self._usage(self.pool, owner, windows)

    async def _usage(
        self, db: asyncpg.Pool | asyncpg.Connection, owner: str, since: Windows
    ) -> OwnerUsage:
        who = _of("$1", owner)
        active = await db.fetch(
            f"SELECT vendor, function, n FROM tasks WHERE {who}"
            " AND status IN ('queued', 'running')",
            owner,
        )
        edits, first = await db.fetchrow(
            f"SELECT count(*), min(created_at) FROM tasks WHERE {who} AND created_at >= $2",
            owner,
            since.hour,
        )
        costs = await db.fetch(
            "SELECT currency, sum(cost) FILTER (WHERE created_at >= $2), sum(cost)"
            f" FROM tasks WHERE {who} AND created_at >= $3 AND cost IS NOT NULL"
            " AND currency IS NOT NULL GROUP BY currency",
            owner,
            since.day,
            since.month,
        )
        return OwnerUsage(
            active=[ActiveTask(*row) for row in active],
            edits=int(edits),
            first_edit_at=first,
            day_cost={c: float(day or 0) for c, day, _ in costs},
            month_cost={c: float(month) for c, _, month in costs},
        )

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        """The tasks among ``task_ids`` that exist, in no particular order."""
        if not task_ids:
            return []
        rows = await self.pool.fetch(
            "SELECT * FROM tasks WHERE id = ANY($1::text[])", list(task_ids)
        )
        return [TaskRecord.from_row(r) for r in rows]

    async def find_by_vendor_task(self, vendor: str, vendor_task_id: str) -> TaskRecord | None:
        row = await self.pool.fetchrow(
            "SELECT * FROM tasks WHERE vendor = $1 AND vendor_task_id = $2", vendor, vendor_task_id
        )
        return TaskRecord.from_row(row) if row else None

    # ---- the worker's calls ------------------------------------------------------------

    async def claim(
        self, vendor: str, worker: str, *, capacity: int, lease_s: float
    ) -> list[TaskRecord]:
        """Take up to ``capacity`` minus the vendor's live tasks: queued ones, or running ones
        whose lease ran out (their process died). Oldest first."""
        async with self.pool.acquire() as db:
            # Idle polls stop here: one read, no lock.
            if not await db.fetchval(
                "SELECT EXISTS (SELECT 1 FROM tasks WHERE vendor = $1"
                " AND status IN ('queued', 'running') AND (status = 'queued'"
                f" OR lease_until < {NOW}))",
                vendor,
            ):
                return []
            async with db.transaction():
                # Claims of one vendor take turns, and each counts the live tasks after the
                # previous one committed (a statement's snapshot is taken when it starts).
                await db.execute(
                    "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"claim:{vendor}"
                )
                rows = await db.fetch(
                    CLAIM,
                    vendor,
                    worker,
                    capacity,
                    lease_s,
                )
        return sorted((TaskRecord.from_row(r) for r in rows), key=lambda t: t.seq)

    async def claim_task(
        self, task_id: str, worker: str, *, capacity: int, lease_s: float
    ) -> TaskRecord | None:
        """Take one queued task now if ``claim`` would take it first: under the same lock as
        ``claim``, so the two count the vendor's live tasks one after the other."""
        async with self.pool.acquire() as db, db.transaction():
            vendor = await db.fetchval(
                "SELECT vendor FROM tasks WHERE id = $1 AND status = 'queued'", task_id
            )
            if vendor is None:
                return None
            await db.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"claim:{vendor}"
            )
            row = await db.fetchrow(
                CLAIM_TASK,
                task_id,
                worker,
                capacity,
                lease_s,
            )
        return TaskRecord.from_row(row) if row else None

    async def renew(self, worker: str, task_ids: list[str], lease_s: float) -> None:
        if not task_ids:
            return
        await self.pool.execute(
            f"UPDATE tasks SET lease_until = {NOW} + $1 WHERE lease_owner = $2"
            " AND status = 'running' AND id = ANY($3::text[])",
            lease_s,
            worker,
            task_ids,
        )

    async def release(self, worker: str, task_ids: list[str] | None = None) -> None:
        """Hand tasks back at once (a clean stop): another process may take them now."""
        if task_ids is not None and not task_ids:
            return
        await self.pool.execute(
            "UPDATE tasks SET lease_until = 0, lease_owner = NULL WHERE lease_owner = $1"
            " AND status = 'running'" + ("" if task_ids is None else " AND id = ANY($2::text[])"),
            worker,
            *(() if task_ids is None else (task_ids,)),
        )

    async def update(self, task_id: str, worker: str, **values: Any) -> bool:
        """Change a running task this worker holds; False if it lost the lease."""
        bad = set(values) - WRITABLE
        if bad:
            raise ValueError(f"not writable: {bad}")
        sets = [
            f"{k} = ${i}::jsonb" if k in JSON_FIELDS else f"{k} = ${i}"
            for i, k in enumerate(values, start=3)
        ]
        params = [json.dumps(v) if k in JSON_FIELDS else v for k, v in values.items()]
        row = await self.pool.fetchrow(
            f"UPDATE tasks SET {', '.join(sets)}, updated_at = {NOW}"
            " WHERE id = $1 AND lease_owner = $2 AND status = 'running' RETURNING id",
            task_id,
            worker,
            *params,
        )
        return row is not None

    @_reports_full
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
        """Record a task's end, once, and link its results, in one statement. With
        ``worker`` the lease must still be held; with ``unless_canceled``, not if a cancel
        has been asked for meanwhile (checked by this same statement)."""
        guard = (
            "lease_owner = $12 AND status = 'running'"
            if worker
            else "status IN ('queued', 'running')"
        )
        if unless_canceled:
            guard += " AND cancel_requested = 0"
        ended = await self.pool.fetchrow(
            f"""
            WITH done AS (
                UPDATE tasks SET status = $2, finished_at = {NOW}, updated_at = {NOW},
                    progress = NULL, lease_owner = NULL, lease_until = 0, results = $3::jsonb,
                    failures = $4::jsonb, error = $5::jsonb, notes = COALESCE($6::jsonb, notes),
                    billed_images = $7, cost = $8, currency = $9
                WHERE id = $1 AND {guard}
                RETURNING id, vendor, function, owner, finished_at - created_at AS took
            ), linked AS (
                INSERT INTO task_blobs (task_id, role, idx, sha256)
                SELECT done.id, 'result', r.idx, r.sha
                FROM done, unnest($10::int[], $11::text[]) AS r (idx, sha)
                ON CONFLICT DO NOTHING
            ), {_UNPEND.format(shas="$11")}
            SELECT vendor, function, owner, took FROM done
            """,
            task_id,
            status.value,
            json.dumps([r.model_dump() for r in results]),
            json.dumps([f.model_dump() for f in failures]),
            json.dumps(error) if error else None,
            json.dumps(notes) if notes is not None else None,
            billed_images,
            cost,
            currency,
            [r.index for r in results],
            [r.sha256 for r in results],
            *((worker,) if worker else ()),
        )
        self._linked(r.sha256 for r in results)
        if ended is None:
            return False
        vendor, function, owner, took = ended
        telemetry.task_ended(task_id, status.value, vendor, function, owner, took)
        return True

    async def reroute(self, task_id: str, worker: str, vendor: str, note: str) -> bool:
        """Queue a held task again for another vendor (a fallback), from the start."""
        row = await self.pool.fetchrow(
            "UPDATE tasks SET vendor = $1, status = 'queued', lease_owner = NULL,"
            " lease_until = 0, vendor_task_id = NULL, submit_started_at = NULL, polls = 0,"
            f" notes = notes || jsonb_build_array($2::text), updated_at = {NOW}"
            " WHERE id = $3 AND lease_owner = $4 AND status = 'running' RETURNING id",
            vendor,
            note,
            task_id,
            worker,
        )
        return row is not None

    async def request_cancel(self, task_id: str) -> TaskRecord:
        row = await self.pool.fetchrow(
            f"UPDATE tasks SET cancel_requested = 1, updated_at = {NOW} WHERE id = $1"
            " AND status IN ('queued', 'running') RETURNING *",
            task_id,
        )
        return TaskRecord.from_row(row) if row else await self.get(task_id)

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
        """One statement: the task's last step counted again if it is the same, else a row."""
        await self.pool.execute(
            f"""
            WITH last AS (
                SELECT id, kind, code, detail FROM task_steps WHERE task_id = $1
                ORDER BY id DESC LIMIT 1
            ), again AS (
                UPDATE task_steps SET count = count + 1, last_at = {NOW} FROM last
                WHERE task_steps.id = last.id AND last.kind = $2
                  AND last.code IS NOT DISTINCT FROM $5 AND last.detail IS NOT DISTINCT FROM $6
                RETURNING task_steps.id
            )
            INSERT INTO task_steps (task_id, kind, at, last_at, vendor, worker, code, detail)
            SELECT id, $2, {NOW}, {NOW}, COALESCE($3, vendor), $4, $5, $6 FROM tasks
            WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM again)
            """,
            task_id,
            kind,
            vendor,
            worker,
            code,
            detail,
        )

    async def steps(self, task_id: str, *, limit: int = 500) -> list[TaskStep]:
        rows = await self.pool.fetch(
            "SELECT id, task_id, kind, at, last_at, count, vendor, worker, code, detail"
            " FROM task_steps WHERE task_id = $1 ORDER BY id LIMIT $2",
            task_id,
            limit,
        )
        return [TaskStep(*row) for row in rows]

    # ---- vendors' rate limits ----------------------------------------------------------

    async def take_turn(
        self, vendor: str, kind: str, rate: float, *, hold_s: float, burst: int = 1
    ) -> Turn:
        """Turns of one vendor and kind are taken one at a time (an advisory lock held to the
        end of the transaction), and the statement that looks and takes starts after the
        lock is held: it sees every turn taken before, and its clock is later than theirs.
        It also forgets the turns no longer needed. Only a refused turn asks a second time,
        for how long to wait (a hint for sleeping; it grants nothing)."""
        interval, span = 1.0 / rate, burst / rate
        slots = max(1, int(rate))
        async with self.pool.acquire() as db, db.transaction():
            await db.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"turn:{vendor}:{kind}"
            )
            taken = await db.fetchval(
                f"""
                WITH c AS (SELECT {NOW} AS now),
                gone AS (
                    DELETE FROM rate_turns USING c WHERE vendor = $1 AND kind = $2
                        AND free_at <= c.now AND taken_at <= c.now - $4
                )
                INSERT INTO rate_turns (vendor, kind, taken_at, free_at)
                SELECT $1, $2, c.now, c.now + $3 + 1.0 FROM c
                WHERE (SELECT count(*) FROM rate_turns WHERE vendor = $1 AND kind = $2
                       AND taken_at > c.now - $4) < $6
                  AND (SELECT count(*) FROM rate_turns WHERE vendor = $1 AND kind = $2
                       AND free_at > c.now) < $5
                RETURNING id
                """,
                vendor,
                kind,
                hold_s,
                span,
                slots,
                burst,
            )
        if taken is not None:
            return Turn(int(taken), 0.0)
        oldest, held, first_free, now = await self.pool.fetchrow(
            f"""SELECT (SELECT taken_at FROM rate_turns WHERE vendor = $1 AND kind = $2
                        ORDER BY taken_at DESC OFFSET $3 - 1 LIMIT 1),
                       count(*) FILTER (WHERE free_at > c.now),
                       min(free_at) FILTER (WHERE free_at > c.now), c.now
                FROM (SELECT {NOW} AS now) c
                LEFT JOIN rate_turns ON vendor = $1 AND kind = $2
                GROUP BY c.now""",
            vendor,
            kind,
            burst,
        )
        wait = oldest + span - now if oldest is not None else 0.0  # of the last ``burst``
        if held >= slots and first_free is not None:
            # a turn still in flight may end sooner than its hold: ask again soon
            wait = max(wait, min(first_free - now, max(interval, 0.05)))
        return Turn(None, max(wait, 0.001))

    async def end_turn(self, turn_id: int) -> None:
        await self.pool.execute(
            f"UPDATE rate_turns SET free_at = least(free_at, {NOW} + 1.0) WHERE id = $1", turn_id
        )

    async def note_wait(self, vendor: str, kind: str, waited_s: float) -> None:
        await self.pool.execute(
            f"""INSERT INTO rate_waits (vendor, kind, minute, waits, waited_s, last_at)
                VALUES ($1, $2, floor({NOW} / 60)::bigint, 1, $3, {NOW})
                ON CONFLICT (vendor, kind, minute) DO UPDATE SET
                    waits = rate_waits.waits + 1,
                    waited_s = rate_waits.waited_s + EXCLUDED.waited_s,
                    last_at = EXCLUDED.last_at""",
            vendor,
            kind,
            waited_s,
        )

    async def rate_waits(self) -> list[RateWaits]:
        rows = await self.pool.fetch(
            f"""WITH c AS (SELECT {NOW} AS now),
                w AS (SELECT vendor, kind,
                        sum(waits) FILTER (WHERE last_at > c.now - 60) AS minute,
                        sum(waits) AS hour, sum(waited_s) AS waited, max(last_at) AS last
                      FROM rate_waits, c WHERE minute >= floor((c.now - 3600) / 60)
                      GROUP BY vendor, kind),
                t AS (SELECT vendor, kind, count(*) AS held, min(free_at) AS free
                      FROM rate_turns, c WHERE free_at > c.now GROUP BY vendor, kind),
                k AS (SELECT vendor, kind FROM w UNION SELECT vendor, kind FROM t)
                SELECT k.vendor, k.kind, COALESCE(w.minute, 0)::int, COALESCE(w.hour, 0)::int,
                       COALESCE(w.waited, 0.0)::float8, w.last, COALESCE(t.held, 0)::int, t.free
                FROM k LEFT JOIN w USING (vendor, kind) LEFT JOIN t USING (vendor, kind)
                ORDER BY k.vendor, k.kind"""
        )
        return [RateWaits(*row) for row in rows]

    # ---- the console's sessions --------------------------------------------------------

    async def add_console_session(self, session: ConsoleSession) -> None:
        await self.pool.execute(
            "INSERT INTO console_sessions (id, operator, created_at, expires_at)"
            " VALUES ($1, $2, $3, $4)",
            session.id,
            session.operator,
            session.created_at,
            session.expires_at,
        )

    async def console_session(self, session_id: str) -> ConsoleSession | None:
        row = await self.pool.fetchrow(
            "SELECT id, operator, created_at, expires_at, ended_at FROM console_sessions"
            " WHERE id = $1",
            session_id,
        )
        return ConsoleSession(*row) if row else None

    async def end_console_session(self, session_id: str, ended_at: float) -> bool:
        row = await self.pool.fetchval(
            "UPDATE console_sessions SET ended_at = $2 WHERE id = $1 AND ended_at IS NULL"
            " RETURNING id",
            session_id,
            ended_at,
        )
        return row is not None

    # ---- clean-up ----------------------------------------------------------------------

    async def cleanup(self, retention_days: float, max_bytes: int | None = None) -> int:
        await self.pool.execute(f"DELETE FROM console_sessions WHERE expires_at < {NOW}")
        await self.pool.execute(
            f"DELETE FROM rate_waits WHERE minute < floor(({NOW} - 86400) / 60)"
        )
        await self.pool.execute(  # their links go with them (ON DELETE CASCADE)
            f"DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < {NOW} - $1",
            retention_days * 86400,
        )
        await self.pool.execute(f"DELETE FROM uploads WHERE expires_at < {NOW}")
        async with self.pool.acquire() as db, db.transaction():
            await _fold(db)  # even where nobody scrapes, the tallies' rows stay few
        removed, _ = await self._delete_orphans()
        if max_bytes is not None:
            removed += await self._evict(max_bytes)
        return removed + await self.blobs.sweep(ORPHAN_GRACE_S)

    async def _delete_orphans(self, task_shas: Iterable[str] | None = None) -> tuple[int, int]:
        """Delete blobs no task or upload refers to, rows and bytes (only ``task_shas`` if given);
        returns how many and their bytes.

        A blob some process has stored but not linked yet (``pending``, within its grace) is
        kept: it is an input or a result about to be linked. The rows stay locked until their
        bytes are gone, so a process storing the same image meanwhile waits, then stores it
        anew."""
        only = () if task_shas is None else (list(task_shas),)
        async with self.pool.acquire() as db, db.transaction():
            rows = await db.fetch(
                "SELECT sha256, mime_type, bytes FROM blobs WHERE NOT EXISTS"
                " (SELECT 1 FROM task_blobs tb WHERE tb.sha256 = blobs.sha256)"
                " AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.sha256 = blobs.sha256)"
                f" AND (pending = 0 OR grace_until < {NOW})"
                + (" AND sha256 = ANY($1::text[])" if only else "")
                + " FOR UPDATE SKIP LOCKED",
                *only,
            )
            for sha, mime, _ in rows:
                await self.blobs.delete(blob_key(sha, mime))
            await db.execute(
                "DELETE FROM blobs WHERE sha256 = ANY($1::text[])", [r[0] for r in rows]
            )
        return len(rows), sum(int(r[2]) for r in rows)

    async def _evict(self, max_bytes: int) -> int:
        """Forget finished tasks, oldest first, until the stored files fit in ``max_bytes``.
        Sizes are counted per file, so a file several tasks share is freed only with the
        last of them."""
        total = int(await self.pool.fetchval("SELECT COALESCE(sum(bytes), 0) FROM blobs"))
        removed = 0
        while total > max_bytes:
            async with self.pool.acquire() as db, db.transaction():
                task_id = await db.fetchval(
                    "SELECT id FROM tasks WHERE finished_at IS NOT NULL"
                    " ORDER BY finished_at LIMIT 1 FOR UPDATE SKIP LOCKED"
                )
                if task_id is None:
                    break
                shas = await db.fetch("SELECT sha256 FROM task_blobs WHERE task_id = $1", task_id)
                await db.execute("DELETE FROM tasks WHERE id = $1", task_id)
            count, freed = await self._delete_orphans({r[0] for r in shas})
            removed, total = removed + count, total - freed
        return removed

    # ---- users and budget overrides ----------------------------------------------------

    async def add_user(self, name: str, token_sha256: str, created_at: float) -> UserRecord | None:
        async with self.pool.acquire() as db, db.transaction():
            await db.execute(
                "DELETE FROM users WHERE lower(name) = lower($1) AND revoked_at IS NOT NULL", name
            )
            # An unrevoked user of that name (added by another process meanwhile too) wins.
            added = await db.fetchval(
                "INSERT INTO users (name, token_sha256, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING RETURNING name",
                name,
                token_sha256,
                created_at,
            )
        return UserRecord(name, token_sha256, created_at) if added else None

    async def users(self) -> list[UserRecord]:
        rows = await self.pool.fetch(
            "SELECT name, token_sha256, created_at, revoked_at FROM users ORDER BY lower(name)"
        )
        return [UserRecord(*row) for row in rows]

    async def revoke_user(self, name: str, revoked_at: float) -> UserRecord | None:
        row = await self.pool.fetchrow(
            "UPDATE users SET revoked_at = $1 WHERE lower(name) = lower($2)"
            " AND revoked_at IS NULL RETURNING name, token_sha256, created_at, revoked_at",
            revoked_at,
            name,
        )
        return UserRecord(*row) if row else None

    async def set_budget_override(self, owner: str, limits: BudgetLimits | None) -> None:
        if limits is None:
            await self.pool.execute("DELETE FROM budget_overrides WHERE owner = $1", owner)
            return
        await self.pool.execute(
            "INSERT INTO budget_overrides (owner, limits, updated_at)"
            f" VALUES ($1, $2::jsonb, {NOW}) ON CONFLICT (owner) DO UPDATE"
            " SET limits = EXCLUDED.limits, updated_at = EXCLUDED.updated_at",
            owner,
            limits.model_dump_json(exclude_defaults=True),
        )

    async def budget_overrides(self, owner: str | None = None) -> dict[str, BudgetLimits]:
        rows = await self.pool.fetch(
            "SELECT owner, limits::text FROM budget_overrides WHERE owner = COALESCE($1, owner)",
            owner,
        )
        return {row[0]: BudgetLimits.model_validate_json(row[1]) for row in rows}


#: A CTE that counts puts as linked: each of the statement's ``shas`` (an array parameter,
#: duplicates counted) takes one off its blob's ``pending``. The rows are taken in sha256
#: order, so two statements sharing blobs cannot deadlock.
_UNPEND = """unpended AS (
                UPDATE blobs SET pending = greatest(blobs.pending - c.n, 0)
                FROM (SELECT s AS sha, count(*) AS n FROM unnest({shas}::text[]) AS s
                      GROUP BY s ORDER BY s) AS c
                WHERE blobs.sha256 = c.sha
            )"""


#: A transaction's advisory lock on a name ("owner:…", "key:…"), held until it ends.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"

#: Expired keys taken from their tasks ($1: the tasks' ids), their fingerprints with them.
_FREE_KEYS = """
    WITH gone AS (DELETE FROM idempotency_requests WHERE task_id = ANY($1::text[]))
    UPDATE tasks SET idempotency_key = NULL WHERE id = ANY($1::text[])"""

#: A new queued task and its links: one statement (parameters as ``create_task`` passes
#: them; a NULL created_at is the database's clock).
_CREATE = f"""
    WITH new AS (
        INSERT INTO tasks (id, status, function, vendor, prompt, n, request, owner,
            created_at, updated_at, notes, idempotency_key)
        VALUES ($1, 'queued', $2, $3, $4, $5, $6::jsonb, $7, COALESCE($13::float8, {NOW}),
            {NOW}, $8::jsonb, $9)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING *
    ), fingerprinted AS (
        INSERT INTO idempotency_requests (task_id, fingerprint)
        SELECT new.id, $14::text FROM new
        WHERE new.idempotency_key IS NOT NULL AND $14::text IS NOT NULL
    ), linked AS (
        INSERT INTO task_blobs (task_id, role, idx, sha256)
        SELECT new.id, l.role, l.idx, l.sha
        FROM new, unnest($10::text[], $11::int[], $12::text[]) AS l (role, idx, sha)
    ), {_UNPEND.format(shas="$12")}
    SELECT * FROM new
"""


def _of(param: str, owner: str) -> str:
    """The condition that a task is ``owner``'s, given as ``param``: the local owner's tasks
    include those stored without one. Other owners' keep to the index."""
    return f"(owner = {param} OR owner IS NULL)" if owner == LOCAL_OWNER else f"owner = {param}"
