"""Moving house: a SQLite store (its database and its images) copied into PostgreSQL, and its
images into the new store's blob store, so that a user who outgrows SQLite keeps their history.

    retouch migrate-store --from sqlite:///srv/retouch/retouch.db --to postgresql://… \\
        [--to-blobs s3://bucket/prefix]

Tables go over in an order that keeps every reference valid — blobs, tasks (their ``seq``
kept, and the sequence moved past the last), the links, uploads, users added at run time and
owners' budgets, the totals of tasks ended (``/metrics``' counters; the tallies of the tasks
held are made again by the target's trigger as the tasks arrive) — then each front end's own
tables. A front end declares those as a
``TableSet`` in the entry-point group ``retouch.tables`` (the tables in order, their keys,
the PostgreSQL migrations that make them), so the core moves the bot's state without knowing
the bot, and another front end's by declaring one more entry point.

Idempotent and resumable. Rows go in batches, each one statement that inserts only the rows
the target lacks; a row the target already has must equal the source's, or the move stops
with ``StoreConflict`` before writing anything of that batch. A blob's bytes are stored before
its row, so a row in the target means its bytes are there. A move killed at any point is
finished by running it again; running it twice changes nothing. The source is only read.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import aiosqlite
import asyncpg
from pydantic import SecretStr

from tools.config import StoreSettings, redacted
from tools.errors import ConfigError, StoreConflict
from tools.store import pg_migrations
from tools.store.base import ORPHAN_GRACE_S
from tools.store.blobs import BlobMissing, BlobStore, FileBlobStore, blob_key
from tools.store.postgres import NOW

#: The entry-point group a front end declares its tables in (a ``TableSet``).
GROUP = "retouch.tables"
#: Blob copies under way at once (S3 uploads gain from it; files do not mind).
PARALLEL_BLOBS = 8


@dataclass(frozen=True)
class Table:
    """A table to move: its primary key, the columns it is read in order of (default: the
    key), values for new rows' columns set on the target whatever the source holds (SQL
    expressions: a blob's ``pending`` mark is the move's own, not the source's), and
    whether its rows are blobs (``sha256``, ``mime_type``, ``bytes``) whose bytes move too."""

    name: str
    key: tuple[str, ...]
    order: tuple[str, ...] = ()
    fill: Mapping[str, str] = field(default_factory=dict)
    blobs: bool = False
    serial: str | None = None  # a column numbered by the database: its sequence moves on

    @property
    def read_order(self) -> tuple[str, ...]:
        return self.order or self.key


@dataclass(frozen=True)
class TableSet:
    """A subsystem's tables in the store's database, in the order they are moved (a table
    after those it refers to), and the PostgreSQL migrations that make them."""

    name: str
    migrations: pg_migrations.PgMigrations
    tables: tuple[Table, ...]


#: A blob row arrives before the tasks that link it: marked pending for ORPHAN_GRACE_S, so
#: that a Retouch already running on the target does not clean it up meanwhile.
_PENDING = {"pending": "1", "grace_until": f"{NOW} + {ORPHAN_GRACE_S}"}
#: The core's tables (not ``rate_turns`` nor ``rate_waits``: a vendor's turns last seconds,
#: and its waits are about the vendor's account as the old store used it).
CORE = TableSet(
    "core",
    pg_migrations.CORE,
    (
        Table("blobs", ("sha256",), fill=_PENDING, blobs=True),
        Table("tasks", ("id",), order=("seq",), serial="seq"),
        Table("idempotency_requests", ("task_id",)),
        Table("task_blobs", ("task_id", "role", "idx")),
        Table("task_steps", ("id",), serial="id"),
        Table("uploads", ("id",)),
        Table("users", ("name",)),
        Table("budget_overrides", ("owner",)),
        Table("console_sessions", ("id",)),
    ),
)


def table_sets() -> list[TableSet]:
    """The core's tables, then every installed front end's (``retouch.tables``)."""
    found = [CORE]
    for point in entry_points(group=GROUP):
        tables = point.load()
        if not isinstance(tables, TableSet):
            raise ConfigError(f"entry point {point.name} of {GROUP} is not a TableSet")
        if tables.name not in {t.name for t in found}:  # the first on sys.path wins
            found.append(tables)
    return found


@dataclass
class Moved:
    """What one table's move did."""

    table: str
    rows: int = 0  # in the source
    new: int = 0  # inserted now (the rest were there already)
    bytes: int = 0  # blob bytes copied now
    missing: int = 0  # blobs whose bytes the source did not have
    seconds: float = 0.0


@dataclass
class Summary:
    moved: list[Moved]
    skipped: list[str]  # tables the source has but the target cannot take
    seconds: float

    def describe(self) -> str:
        parts = []
        for m in self.moved:
            extra = f", {_size(m.bytes)} of images" if m.bytes else ""
            parts.append(f"{m.table} {m.rows} ({m.new} new{extra})")
        rows, nbytes = sum(m.rows for m in self.moved), sum(m.bytes for m in self.moved)
        rate = f"{rows / max(self.seconds, 1e-6):.0f} rows/s"
        blobs = [m for m in self.moved if m.bytes]
        if blobs:
            rate += f", images {nbytes / 1e6 / max(sum(m.seconds for m in blobs), 1e-6):.1f} MB/s"
        lines = [f"moved in {self.seconds:.1f} s ({rate}): " + ", ".join(parts)]
        missing = sum(m.missing for m in self.moved)
        if missing:
            lines.append(
                f"{missing} image(s) were missing from the source's folder: their rows were "
                "copied, and reading them answers 'not found' as before"
            )
        lines += [f"not moved: {name}" for name in self.skipped]
        lines.append("nothing was deleted from the source")
        return "\n".join(lines)


# ---- progress --------------------------------------------------------------------------------


class Progress:
    """One bar per table on ``stream``: redrawn in place on a terminal, else a line at each
    tenth of the table (and at its end)."""

    WIDTH = 24

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._table = ""
        self._total = 0
        self._done = 0
        self._bytes = 0
        self._started = 0.0
        self._shown = -1

    def start(self, table: str, total: int) -> None:
        self._table, self._total, self._done, self._bytes = table, total, 0, 0
        self._started, self._shown = time.monotonic(), -1
        self._show()

    def advance(self, rows: int, nbytes: int = 0) -> None:
        self._done += rows
        self._bytes += nbytes
        self._show()

    def finish(self) -> None:
        if self.tty or self._shown < 10:
            self._show(final=True)
        if self.tty:
            print(file=self.stream, flush=True)

    def _show(self, final: bool = False) -> None:
        tenth = self._done * 10 // self._total if self._total else 10
        if not (self.tty or final or tenth > self._shown):
            return
        self._shown = tenth
        share = self._done / self._total if self._total else 1.0
        bar = "#" * round(share * self.WIDTH)
        elapsed = max(time.monotonic() - self._started, 1e-6)
        line = (
            f"{self._table:<12} {self._done:>8}/{self._total:<8} {share:4.0%}"
            f" [{bar:<{self.WIDTH}}] {self._done / elapsed:8.0f} rows/s"
        )
        if self._bytes:
            line += f" {_size(self._bytes):>9} {self._bytes / 1e6 / elapsed:6.1f} MB/s"
        if self.tty:
            print(f"\r\033[K{line}", end="", file=self.stream, flush=True)
        else:
            print(line, file=self.stream, flush=True)


# ---- the move ----------------------------------------------------------------------------------


def sqlite_path(url: str) -> Path:
    """``sqlite:///srv/retouch.db`` (or a plain path) → the file."""
    if url.startswith("sqlite://"):
        return Path("/" + url[len("sqlite://") :].lstrip("/"))
    if "://" in url:
        raise ConfigError(f"--from takes sqlite:///path/to/retouch.db, not {url.split(':')[0]}:")
    return Path(url)


async def migrate_store(
    settings: StoreSettings,
    *,
    source: str | None = None,
    target: str | None = None,
    source_blobs: str | None = None,
    target_blobs: str | None = None,
    batch: int = 500,
    progress: Progress | None = None,
) -> Summary:
    """Move the store at ``source`` (default: the settings' SQLite file) into PostgreSQL at
    ``target`` (default: ``store.url``), its images from ``source_blobs`` (default: the
    settings' results folder for their own file, else ``results`` beside the file) into
    ``target_blobs`` (a folder or ``s3://bucket/prefix``; default: the settings' blob store).
    """
    from tools.store import open_blob_store

    path = sqlite_path(source) if source else settings.path
    url = target or settings.url.get_secret_value()
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError("--to takes postgresql://… (or set store.url)")
    if not path.is_file():
        raise ConfigError(f"no SQLite database at {path}")
    if source_blobs is None:
        own = path.resolve() == settings.path.resolve()
        source_blobs = str(settings.results_dir if own else path.parent / "results")
    if target_blobs is not None:
        s3 = target_blobs.startswith("s3://")
        update = {"blobs": target_blobs} if s3 else {"blobs": "", "results_dir": Path(target_blobs)}
        settings = settings.model_copy(update=update)
    source_store = _folder(source_blobs)
    target_store = await open_blob_store(settings)
    try:
        return await move(path, url, source_store, target_store, batch=batch, progress=progress)
    finally:
        await target_store.close()
        await source_store.close()


def _folder(where: str) -> BlobStore:
    if where.startswith("s3://") or not Path(where).is_dir():
        raise ConfigError(f"--from-blobs: no folder {where} (the source's results folder)")
    return FileBlobStore(where)


async def move(
    source: Path,
    url: str,
    source_blobs: BlobStore,
    target_blobs: BlobStore,
    *,
    batch: int = 500,
    progress: Progress | None = None,
) -> Summary:
    """Copy every table of every ``table_sets()`` from the SQLite file ``source`` into the
    PostgreSQL database at ``url`` (made or migrated first), and the blobs' bytes."""
    started = time.monotonic()
    progress = progress or Progress()
    sets = table_sets()
    src = await aiosqlite.connect(f"file:{quote(str(source))}?mode=ro", uri=True)
    src.row_factory = sqlite3.Row
    try:
        if not await src.execute_fetchall("SELECT 1 FROM sqlite_master WHERE name = 'tasks'"):
            raise ConfigError(f"{source} is not a Retouch database (it has no tasks)")
        try:
            db = await asyncpg.connect(url)
        except (OSError, asyncpg.PostgresError) as exc:
            where = redacted(SecretStr(url))
            raise ConfigError(f"cannot reach {where}: {type(exc).__name__}") from None
        try:
            for tables in sets:
                await pg_migrations.migrate(db, tables.migrations)
            # The tasks' steps are copied from the source: the trigger that logs them as
            # tasks change must not log copied tasks as new ones (m012_task_events).
            await db.execute("SET retouch.moving = 'on'")
            mover = _Mover(src, db, source_blobs, target_blobs, batch, progress)
            for tables in sets:
                for table in tables.tables:
                    await mover.move(table)
                if tables is CORE:
                    await mover.carry_ended()
        finally:
            await db.close()
    finally:
        await src.close()
    return Summary(mover.moved, mover.skipped, time.monotonic() - started)


class _Mover:
    def __init__(
        self,
        src: aiosqlite.Connection,
        db: asyncpg.Connection,
        source_blobs: BlobStore,
        target_blobs: BlobStore,
        batch: int,
        progress: Progress,
    ) -> None:
        self.src, self.db = src, db
        self.source_blobs, self.target_blobs = source_blobs, target_blobs
        self.batch, self.progress = batch, progress
        self.moved: list[Moved] = []
        self.skipped: list[str] = []

    async def move(self, table: Table) -> None:
        source_columns = await self._source_columns(table.name)
        if not source_columns:
            return  # an older store: it never had this table
        types = await self._target_types(table.name)
        count = (await self.src.execute_fetchall(f"SELECT COUNT(*) FROM {table.name}"))[0][0]
        if not types:
            if count:
                self.skipped.append(f"{table.name} ({count} rows: the target has no such table)")
            return
        columns = [c for c in source_columns if c in types and c not in table.fill]
        fill = {k: v for k, v in table.fill.items() if k in types}
        done = Moved(table.name, rows=count)
        started = time.monotonic()
        self.progress.start(table.name, count)
        async for rows in _Batches(self.src, table, columns, self.batch):
            values = [tuple(_cast(types[c], r[c]) for c in columns) for r in rows]
            fresh = await self._unknown(table, columns, types, values)
            copied = 0
            if table.blobs:
                blobs = [dict(zip(columns, v, strict=True)) for v in fresh]
                copied, missing = await self._copy_bytes(blobs)
                done.bytes += copied
                done.missing += missing
            await self._insert(table, columns, types, fill, fresh)
            done.new += len(fresh)
            self.progress.advance(len(rows), copied)
        if table.serial:
            await self.db.execute(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{table.serial}'),"
                f" max({table.serial})) FROM {table.name} HAVING max({table.serial}) IS NOT NULL"
            )
        self.progress.finish()
        done.seconds = time.monotonic() - started
        self.moved.append(done)

    async def carry_ended(self) -> None:
        """The source's totals of tasks ended (m016's ``task_ended``; for a store from
        before it, its ended tasks counted), as the target's ``origin = 'moved'`` rows, so
        the counters ``/metrics`` shows go on from where they were. (``task_tallies`` is not
        copied: the target's trigger counts each task as it is inserted.) Once: a second run
        finds them, and they must be the source's."""
        if await self._source_columns("task_ended"):
            query = "SELECT status, vendor, function, currency, tasks, images, cost FROM task_ended"
        else:
            query = (
                "SELECT status, vendor, function, COALESCE(currency, '') AS currency,"
                " count(*) AS tasks, sum(billed_images) AS images,"
                " COALESCE(sum(cost), 0) AS cost FROM tasks WHERE finished_at IS NOT NULL"
                " GROUP BY 1, 2, 3, 4"
            )
        source = {
            (r["status"], r["vendor"], r["function"], r["currency"]): (
                int(r["tasks"]),
                int(r["images"]),
                float(r["cost"]),
            )
            for r in await self.src.execute_fetchall(query)
        }
        done = Moved("task_ended", rows=len(source))
        started = time.monotonic()
        self.progress.start("task_ended", len(source))
        there = {
            (r[0], r[1], r[2], r[3]): (int(r[4]), int(r[5]), float(r[6]))
            for r in await self.db.fetch(
                "SELECT status, vendor, function, currency, sum(tasks), sum(images), sum(cost)"
                " FROM task_ended WHERE origin = 'moved' GROUP BY 1, 2, 3, 4"
            )
        }
        if there:
            if there.keys() != source.keys() or any(
                there[k][:2] != v[:2] or abs(there[k][2] - v[2]) > 1e-6 * max(1.0, abs(v[2]))
                for k, v in source.items()
            ):
                raise StoreConflict(
                    "the target already holds other totals of ended tasks moved from a store: "
                    "move into an empty database, or into the one this move filled"
                )
        elif source:
            rows = [(*k, *v) for k, v in source.items()]
            async with self.db.transaction():  # all or none: a second run compares them
                await self.db.executemany(
                    "INSERT INTO task_ended (status, vendor, function, currency, tasks, images,"
                    " cost, origin) VALUES ($1, $2, $3, $4, $5, $6, $7, 'moved')",
                    rows,
                )
            done.new = len(rows)
        self.progress.advance(len(source))
        self.progress.finish()
        done.seconds = time.monotonic() - started
        self.moved.append(done)

    async def _source_columns(self, name: str) -> list[str]:
        rows = await self.src.execute_fetchall(f"PRAGMA table_info({name})")
        return [r["name"] for r in rows]

    async def _target_types(self, name: str) -> dict[str, str]:
        rows = await self.db.fetch(
            "SELECT column_name, udt_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = $1",
            name,
        )
        return {r[0]: r[1] for r in rows}

    async def _unknown(
        self, table: Table, columns: list[str], types: dict[str, str], values: list[tuple[Any, ...]]
    ) -> list[tuple[Any, ...]]:
        """The rows the target lacks; StoreConflict if it holds one of these keys with
        other values."""
        at = [columns.index(k) for k in table.key]
        keys = [tuple(v[i] for i in at) for v in values]
        arrays = [list(col) for col in zip(*keys, strict=True)]
        casts = ", ".join(f"${i + 1}::{types[k]}[]" for i, k in enumerate(table.key))
        there = await self.db.fetch(
            f"SELECT {', '.join(columns)} FROM {table.name} WHERE ({', '.join(table.key)})"
            f" IN (SELECT * FROM unnest({casts}))",
            *arrays,
        )
        held = {tuple(r[k] for k in table.key): r for r in there}
        fresh = []
        for key, row in zip(keys, values, strict=True):
            found = held.get(key)
            if found is None:
                fresh.append(row)
                continue
            for column, value in zip(columns, row, strict=True):
                if _comparable(types[column], value) != _comparable(types[column], found[column]):
                    raise StoreConflict(
                        f"the target already holds {table.name} {_label(key)} with another "
                        f"{column}: it holds other data, or the source changed since the last "
                        "move (stop Retouch on the source first). Move into an empty database, "
                        "or into the one this move filled."
                    )
        return fresh

    async def _insert(
        self,
        table: Table,
        columns: list[str],
        types: dict[str, str],
        fill: dict[str, str],
        rows: list[tuple[Any, ...]],
    ) -> None:
        if not rows:
            return
        arrays = [list(col) for col in zip(*rows, strict=True)]
        casts = ", ".join(f"${i + 1}::{types[c]}[]" for i, c in enumerate(columns))
        names = ", ".join([*columns, *fill])
        extra = "".join(f", {v}" for v in fill.values())
        try:
            await self.db.execute(
                f"INSERT INTO {table.name} ({names}) SELECT *{extra} FROM unnest({casts})"
                f" ON CONFLICT ({', '.join(table.key)}) DO NOTHING",
                *arrays,
            )
        except asyncpg.UniqueViolationError as exc:  # another unique column: seq, a key
            raise StoreConflict(
                f"the target already holds other {table.name} ({exc.detail or exc}): move "
                "into an empty database, or into the one this move filled"
            ) from None

    async def _copy_bytes(self, rows: list[dict[str, Any]]) -> tuple[int, int]:
        """Copy the bytes of these blobs the target store lacks; (bytes copied, missing)."""
        slots = asyncio.Semaphore(PARALLEL_BLOBS)
        copied, missing = 0, 0

        async def copy(row: dict[str, Any]) -> None:
            nonlocal copied, missing
            key, size = blob_key(row["sha256"], row["mime_type"]), int(row["bytes"])
            async with slots:
                if await self.target_blobs.size(key) == size:
                    return
                try:
                    data = await self.source_blobs.get(key, size)
                except BlobMissing:
                    missing += 1
                    return
                await self.target_blobs.put(key, data)
                copied += size

        async with asyncio.TaskGroup() as group:
            for row in rows:
                group.create_task(copy(row))
        return copied, missing


class _Batches:
    """A table's rows in ``table.read_order``, ``size`` at a time (keyset paging)."""

    def __init__(
        self, src: aiosqlite.Connection, table: Table, columns: list[str], size: int
    ) -> None:
        self.src, self.table, self.columns, self.size = src, table, columns, size

    def __aiter__(self) -> _Batches:
        self._after: Sequence[Any] | None = None
        return self

    async def __anext__(self) -> list[sqlite3.Row]:
        order = ", ".join(self.table.read_order)
        where, params = "", ()
        if self._after is not None:
            marks = ", ".join("?" * len(self._after))
            where, params = f"WHERE ({order}) > ({marks})", tuple(self._after)
        rows = await self.src.execute_fetchall(
            f"SELECT {', '.join(self.columns)} FROM {self.table.name} {where}"
            f" ORDER BY {order} LIMIT ?",
            (*params, self.size),
        )
        if not rows:
            raise StopAsyncIteration
        last = rows[-1]
        self._after = [last[c] for c in self.table.read_order]
        return list(rows)


# ---- values ------------------------------------------------------------------------------------


def _cast(udt: str, value: Any) -> Any:
    """A SQLite value as the target column's type wants it (SQLite keeps any type anywhere)."""
    if value is None:
        return None
    if udt in ("float4", "float8", "numeric"):
        return float(value)
    if udt in ("int2", "int4", "int8"):
        return int(value)
    if udt == "bool":
        return bool(value)
    if udt in ("json", "jsonb"):
        return value if isinstance(value, str) else json.dumps(value)
    if udt == "text":
        return str(value)
    return value


def _comparable(udt: str, value: Any) -> Any:
    """A value as it compares across the two databases (JSON by its meaning, not its text)."""
    if value is not None and udt in ("json", "jsonb"):
        return json.loads(value) if isinstance(value, str) else value
    return _cast(udt, value)


def _size(count: int) -> str:
    return f"{count / 1e3:.0f} kB" if count < 1e6 else f"{count / 1e6:.1f} MB"


def _label(key: tuple[Any, ...]) -> str:
    return " / ".join(str(k) for k in key)
