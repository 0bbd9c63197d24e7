"""The task store (SQLite through aiosqlite, WAL) and the image files on disk.

Images, inputs and results alike, are content-addressed: ``<results_dir>/<aa>/<sha256>.<ext>``,
written once, atomically. Tasks are claimed with a lease, so a second backend (PostgreSQL,
several processes on several machines) can implement the same calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from tools.errors import NotFound
from tools.media import EXTENSIONS, InputImage
from tools.models import ErrorInfo, ImageFailure, ResultImage, Task, TaskStatus
from tools.store.migrations import CORE, migrate

#: How long a blob stored but not yet linked to a task is protected from clean-up.
ORPHAN_GRACE_S = 3600.0
JSON_FIELDS = {"request", "results", "failures", "error", "notes"}
WRITABLE = {
    "status",
    "vendor",
    "progress",
    "vendor_task_id",
    "submit_started_at",
    "next_poll_at",
    "polls",
    "notes",
    "started_at",
    "attempts",
}


@dataclass
class TaskRecord:
    """A task row, with the fields only the worker needs."""

    seq: int
    id: str
    status: str
    function: str
    vendor: str
    prompt: str
    n: int
    request: dict[str, Any]
    owner: str | None
    created_at: float
    updated_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int
    lease_owner: str | None
    lease_until: float
    submit_started_at: float | None
    vendor_task_id: str | None
    next_poll_at: float | None
    polls: int
    progress: str | None
    results: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    error: dict[str, Any] | None
    notes: list[str]
    billed_images: int
    cost: float | None
    currency: str | None
    cancel_requested: int
    idempotency_key: str | None = None

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> TaskRecord:
        data = dict(row)
        for name in JSON_FIELDS:
            if data[name] is not None:
                data[name] = json.loads(data[name])
        return cls(**data)

    @property
    def finished(self) -> bool:
        return TaskStatus(self.status).finished

    def public(self) -> Task:
        def ts(value: float | None) -> datetime | None:
            return datetime.fromtimestamp(value, UTC) if value else None

        return Task(
            id=self.id,
            status=TaskStatus(self.status),
            function=self.function,
            vendor=self.vendor,
            prompt=self.prompt,
            n=self.n,
            input_count=len(self.request.get("images", [])) or 1,
            created_at=ts(self.created_at),  # type: ignore[arg-type]
            updated_at=ts(self.updated_at),  # type: ignore[arg-type]
            started_at=ts(self.started_at),
            finished_at=ts(self.finished_at),
            progress=self.progress,
            attempts=self.attempts,
            vendor_task_id=self.vendor_task_id,
            results=[ResultImage(**r) for r in self.results],
            failures=[ImageFailure(**f) for f in self.failures],
            error=ErrorInfo(**self.error) if self.error else None,
            notes=self.notes,
            billed_images=self.billed_images,
            cost=self.cost,
            currency=self.currency,
        )


COLUMNS = [f.name for f in fields(TaskRecord)]


def new_task_id() -> str:
    return uuid.uuid4().hex


class Store:
    """One SQLite database plus its directory of image files."""

    def __init__(self, db: aiosqlite.Connection, files: Path) -> None:
        self.db = db
        self.files = files
        self._write = asyncio.Lock()
        self._unlinked: dict[str, float] = {}  # sha256 → when put_blob stored it

    @classmethod
    async def open(cls, path: Path | str, files: Path | str) -> Store:
        path, files = Path(path), Path(files)
        if str(path) != ":memory:":
            path.parent.mkdir(parents=True, exist_ok=True)
        files.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(str(path), timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        await db.execute("PRAGMA busy_timeout=30000")
        await migrate(db, CORE)
        return cls(db, files)

    async def close(self) -> None:
        await self.db.close()

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
            except BaseException:
                await self.db.rollback()
                raise

    async def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        """One write statement, atomic on its own; returns its rows (RETURNING).

        The connection is in autocommit mode, so a lone statement is its own transaction:
        one trip to the database thread instead of three (BEGIN, statement, COMMIT). The
        lock still keeps it out of another writer's open transaction."""
        async with self._write:
            return list(await self.db.execute_fetchall(sql, params))

    # ---- blobs -------------------------------------------------------------------------

    def blob_path(self, sha256: str, mime_type: str) -> Path:
        return self.files / sha256[:2] / f"{sha256}.{EXTENSIONS.get(mime_type, 'bin')}"

    async def put_blob(self, image: InputImage) -> str:
        """Store an image once. Until a task links it (``create_task``, ``finish``),
        clean-up in this process leaves it alone (for up to ORPHAN_GRACE_S)."""
        sha = hashlib.sha256(image.data).hexdigest()
        self._unlinked[sha] = time.time()
        path = self.blob_path(sha, image.mime_type)
        row = self.execute(
            "INSERT OR IGNORE INTO blobs (sha256, mime_type, bytes, width, height, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (sha, image.mime_type, len(image.data), image.width, image.height, time.time()),
        )
        if _holds(path, len(image.data)):
            await row
        else:  # the row and the file at once (the grace above keeps the pair from clean-up)
            await asyncio.gather(row, asyncio.to_thread(_write_atomic, path, image.data))
        return sha

    def _linked(self, shas: Iterable[str | None]) -> None:
        for sha in shas:
            self._unlinked.pop(sha or "", None)

    async def read_blob(self, sha256: str) -> InputImage:
        rows = await self.db.execute_fetchall("SELECT * FROM blobs WHERE sha256 = ?", (sha256,))
        if not rows:
            raise NotFound(f"image {sha256[:12]}… is not in the store")
        row = rows[0]
        path = self.blob_path(sha256, row["mime_type"])
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFound(f"image {sha256[:12]}… is missing from {self.files}") from None
        if len(data) != row["bytes"]:
            raise NotFound(f"image {sha256[:12]}… is damaged on disk (cut short)")
        return InputImage(data, row["mime_type"], row["width"], row["height"])

    async def task_blobs(self, task_id: str, role: str) -> list[str]:
        return (await self.task_images(task_id, role)).get(role, [])

    async def task_images(self, task_id: str, role: str | None = None) -> dict[str, list[str]]:
        """A task's images by role ("input", "mask", "result"), in order; one query."""
        rows = await self.db.execute_fetchall(
            "SELECT role, sha256 FROM task_blobs WHERE task_id = ? AND role = COALESCE(?, role)"
            " ORDER BY role, idx",
            (task_id, role),
        )
        out: dict[str, list[str]] = {}
        for r in rows:
            out.setdefault(r[0], []).append(r[1])
        return out

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
    ) -> TaskRecord:
        """A new queued task; with ``key``, the task already made with that key if any."""
        task_id, now = new_task_id(), time.time()
        async with self.transaction() as db:
            rows = await db.execute_fetchall(
                "INSERT INTO tasks (id, status, function, vendor, prompt, n, request, owner,"
                " created_at, updated_at, notes, idempotency_key)"
                " VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING"
                f" RETURNING {', '.join(COLUMNS)}",
                (
                    task_id,
                    function,
                    vendor,
                    prompt,
                    n,
                    json.dumps(request),
                    owner,
                    now,
                    now,
                    json.dumps(notes or []),
                    key,
                ),
            )
            if not rows:  # made before with this key
                rows = await db.execute_fetchall(
                    "SELECT * FROM tasks WHERE idempotency_key = ?", (key,)
                )
                return TaskRecord.from_row(next(iter(rows)))
            links = [(task_id, "input", i, sha) for i, sha in enumerate(inputs)]
            if mask:
                links.append((task_id, "mask", 0, mask))
            await db.executemany(
                "INSERT INTO task_blobs (task_id, role, idx, sha256) VALUES (?, ?, ?, ?)", links
            )
        self._linked([*inputs, mask])
        return TaskRecord.from_row(next(iter(rows)))

    async def find_by_key(self, key: str) -> TaskRecord | None:
        rows = await self.db.execute_fetchall(
            "SELECT * FROM tasks WHERE idempotency_key = ?", (key,)
        )
        return TaskRecord.from_row(rows[0]) if rows else None

    async def get(self, task_id: str) -> TaskRecord:
        rows = await self.db.execute_fetchall("SELECT * FROM tasks WHERE id = ?", (task_id,))
        if not rows:
            raise NotFound(f"no task {task_id!r}")
        return TaskRecord.from_row(rows[0])

    async def list(
        self, *, owner: str | None = None, limit: int = 20, unfinished: bool = False
    ) -> list[TaskRecord]:
        where, params = [], []
        if owner is not None:
            where.append("owner = ?")
            params.append(owner)
        if unfinished:
            where.append("status IN ('queued', 'running')")
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.execute_fetchall(
            f"SELECT * FROM tasks {clause} ORDER BY seq DESC LIMIT ?", (*params, limit)
        )
        return [TaskRecord.from_row(r) for r in rows]

    async def count_active(self, owner: str) -> int:
        rows = await self.db.execute_fetchall(
            "SELECT COUNT(*) FROM tasks WHERE owner = ? AND status IN ('queued', 'running')",
            (owner,),
        )
        return int(rows[0][0])

    async def count_since(self, owner: str, since: float) -> int:
        rows = await self.db.execute_fetchall(
            "SELECT COUNT(*) FROM tasks WHERE owner = ? AND created_at >= ?", (owner, since)
        )
        return int(rows[0][0])

    async def claim(
        self, vendor: str, worker: str, *, capacity: int, lease_s: float
    ) -> list[TaskRecord]:
        """Take up to ``capacity`` minus the vendor's live tasks: queued ones, or running ones
        whose lease ran out (their process died). Oldest first."""
        now = time.time()
        rows = await self.execute(
            f"""
            UPDATE tasks SET status = 'running', lease_owner = ?, lease_until = ?,
                attempts = attempts + 1, started_at = COALESCE(started_at, ?), updated_at = ?
            WHERE id IN (
                SELECT id FROM tasks
                WHERE vendor = ? AND (status = 'queued' OR (status = 'running' AND lease_until < ?))
                ORDER BY seq
                LIMIT max(0, ? - (SELECT COUNT(*) FROM tasks WHERE vendor = ?
                                  AND status = 'running' AND lease_until >= ?))
            )
            RETURNING {", ".join(COLUMNS)}
            """,
            (worker, now + lease_s, now, now, vendor, now, capacity, vendor, now),
        )
        return sorted((TaskRecord.from_row(r) for r in rows), key=lambda t: t.seq)

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
                WHERE id = ? AND {guard} RETURNING id""",
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
        return TaskRecord.from_row(rows[0]) if rows else None

    async def result_path(self, task_id: str, index: int) -> Path:
        return (await self.result_file(task_id, index))[0]

    async def result_file(
        self, task_id: str, index: int, results: list[dict[str, Any]] | None = None
    ) -> tuple[Path, str]:
        """Where a task's result ``index`` is stored, and its MIME type (``results``: the
        task's, when the caller has just read them)."""
        if results is None:
            results = (await self.get(task_id)).results
        for result in results:
            if result["index"] == index:
                path = self.blob_path(result["sha256"], result["mime_type"])
                try:
                    size = path.stat().st_size
                except FileNotFoundError:
                    raise NotFound(f"result {index} of task {task_id} was cleaned up") from None
                if size != result["bytes"]:
                    raise NotFound(f"result {index} of task {task_id} is damaged on disk")
                return path, result["mime_type"]
        raise NotFound(f"task {task_id} has no result {index}")

    # ---- clean-up ----------------------------------------------------------------------

    async def cleanup(self, retention_days: float, max_bytes: int | None = None) -> int:
        """Forget finished tasks past retention, then the oldest finished ones while the
        stored files exceed ``max_bytes``; delete files no task refers to, and temp files
        left by a crash. Returns how many files were deleted."""
        cutoff = time.time() - retention_days * 86400
        await self.execute(
            "DELETE FROM task_blobs WHERE task_id IN (SELECT id FROM tasks"
            " WHERE finished_at IS NOT NULL AND finished_at < ?)",
            (cutoff,),
        )
        await self.execute(
            "DELETE FROM tasks WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)
        )
        removed, _ = await self._delete_orphans()
        if max_bytes is not None:
            removed += await self._evict(max_bytes)
        return removed + await asyncio.to_thread(self._delete_stale_temp_files)

    def _delete_stale_temp_files(self) -> int:
        """Temp files a process killed while writing a blob left behind."""
        stale, count = time.time() - ORPHAN_GRACE_S, 0
        for tmp in self.files.glob("*/*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < stale:
                    tmp.unlink()
                    count += 1
        return count

    async def _delete_orphans(self, task_shas: list[str] | None = None) -> tuple[int, int]:
        """Delete blobs no task refers to, and their files (only ``task_shas`` if given);
        returns how many and their bytes.

        A blob this process stored but has not linked yet is kept: it is an input or a
        result about to be linked (deleting it made that task's insert fail)."""
        recent = time.time() - ORPHAN_GRACE_S
        for sha in [k for k, at in self._unlinked.items() if at < recent]:
            del self._unlinked[sha]  # never linked: its caller failed
        keep = list(self._unlinked)
        where, params = "", tuple(keep)
        if task_shas is not None:
            if not task_shas:
                return 0, 0
            where = f" AND sha256 IN ({','.join('?' * len(task_shas))})"
            params += tuple(task_shas)
        rows = await self.execute(
            "DELETE FROM blobs WHERE NOT EXISTS"
            " (SELECT 1 FROM task_blobs tb WHERE tb.sha256 = blobs.sha256)"
            f" AND sha256 NOT IN ({','.join('?' * len(keep))}){where}"
            " RETURNING sha256, mime_type, bytes",
            params,
        )
        for sha, mime, _ in rows:
            again = await self.db.execute_fetchall("SELECT 1 FROM blobs WHERE sha256 = ?", (sha,))
            if not again:  # not stored anew meanwhile
                self.blob_path(sha, mime).unlink(missing_ok=True)
        return len(rows), sum(int(r[2]) for r in rows)

    async def _evict(self, max_bytes: int) -> int:
        """Forget finished tasks, oldest first, until the stored files fit in ``max_bytes``.
        Sizes are counted per file, so a file several tasks share is freed only with the
        last of them."""
        rows = await self.db.execute_fetchall("SELECT COALESCE(SUM(bytes), 0) FROM blobs")
        total, removed = int(rows[0][0]), 0
        while total > max_bytes:
            oldest = await self.db.execute_fetchall(
                "SELECT id FROM tasks WHERE finished_at IS NOT NULL ORDER BY finished_at LIMIT 1"
            )
            if not oldest:
                break
            task_id = oldest[0][0]
            shas = [
                r[0]
                for r in await self.execute(
                    "DELETE FROM task_blobs WHERE task_id = ? RETURNING sha256", (task_id,)
                )
            ]
            await self.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
            count, freed = await self._delete_orphans(list(dict.fromkeys(shas)))
            removed, total = removed + count, total - freed
        return removed

    # ---- owner queries -----------------------------------------------------------------

    async def active(self, owner: str) -> list[TaskRecord]:
        """``owner``'s tasks still queued or running, newest first."""
        rows = await self.db.execute_fetchall(
            "SELECT * FROM tasks WHERE owner = ? AND status IN ('queued', 'running')"
            " ORDER BY seq DESC",
            (owner,),
        )
        return [TaskRecord.from_row(r) for r in rows]

    async def usage(self, owner: str, since: float) -> tuple[int, float | None]:
        """How many tasks ``owner`` created at or after ``since``, and when the first was."""
        rows = await self.db.execute_fetchall(
            "SELECT COUNT(*), MIN(created_at) FROM tasks WHERE owner = ? AND created_at >= ?",
            (owner, since),
        )
        count, oldest = rows[0]
        return int(count), oldest

    async def get_many(self, task_ids: Sequence[str]) -> list[TaskRecord]:
        """The tasks among ``task_ids`` that exist, in no particular order."""
        if not task_ids:
            return []
        marks = ",".join("?" * len(task_ids))
        rows = await self.db.execute_fetchall(
            f"SELECT * FROM tasks WHERE id IN ({marks})", tuple(task_ids)
        )
        return [TaskRecord.from_row(r) for r in rows]


def _holds(path: Path, size: int) -> bool:
    """The file is there, whole (a missing or cut-short one is written again)."""
    try:
        return path.stat().st_size == size
    except FileNotFoundError:
        return False


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per call: two tasks storing the same image at once must not share a temp file.
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    # No fsync: the database commits with synchronous=NORMAL, so a power cut can take back
    # its latest transactions anyway; a file cut short by one is caught by its recorded size
    # when read (read_blob, result_file) and reported as lost, never served damaged.
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
