"""PostgreSQL for the tests: one database per run, an empty schema per test.

The server is the one ``RETOUCH_TEST_PG`` names (an admin URL: a superuser's), else
``postgres`` on 127.0.0.1:5432, else on the local socket. The first test that needs it
creates the database ``retouch_test_<random>``; the end of the run drops it. Each
``fresh_url()`` is a new schema in it, named in the URL (``?search_path=``), so a store opened
on it starts from nothing; ``empty_url()`` is one schema for the whole run, emptied each time
(quicker: its tables are migrated once). This module is a pytest plugin (``tests/conftest.py``
loads it).
"""

from __future__ import annotations

import asyncio
import functools
import os
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest

T = TypeVar("T")

CANDIDATES = (
    "postgresql://postgres@127.0.0.1:5432/postgres",
    "postgresql://postgres@/postgres?host=/var/run/postgresql",
)
_database: list[str] = []  # the run's database URL, once made
_reused: list[str] = []  # the URL of empty_url()'s schema, once made


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to its end from sync code, even inside a running event loop."""

    async def main() -> T:
        return await make()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def _usable(url: str) -> str | None:
    """Why ``url`` cannot serve the tests (None: it can)."""
    import asyncpg

    try:
        db = await asyncpg.connect(url, timeout=5)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    try:
        if not await db.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            return "its role is not a superuser (the tests make databases and empty tables)"
    finally:
        await db.close()
    return None


@functools.cache
def admin_url() -> tuple[str | None, str]:
    """The admin URL the tests use, or None and why there is none."""
    try:
        import asyncpg  # noqa: F401
    except ImportError:
        return None, "asyncpg is not installed (pip install -e .)"
    chosen = os.environ.get("RETOUCH_TEST_PG")
    reasons = []
    for url in [chosen] if chosen else CANDIDATES:
        why = run_sync(lambda url=url: _usable(url))
        if why is None:
            return url, ""
        reasons.append(f"{_where(url)}: {why}")
    fix = "start it: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
    return None, "no PostgreSQL server for the tests (" + "; ".join(reasons) + f"); {fix}"


def _where(url: str) -> str:
    parts = urlsplit(url)
    return parts.netloc.rpartition("@")[2] or parts.query


def with_database(url: str, name: str) -> str:
    """``url`` with another database."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


async def database_url() -> str:
    """The run's own database, made on first use."""
    import asyncpg

    from tests.optional import require

    require("postgres")
    if not _database:
        admin, _ = admin_url()
        assert admin is not None
        name = f"retouch_test_{uuid.uuid4().hex[:10]}"
        db = await asyncpg.connect(admin)
        try:
            await db.execute(f"CREATE DATABASE {name}")
        finally:
            await db.close()
        _database.append(with_database(admin, name))
    return _database[0]


async def fresh_url() -> str:
    """A URL whose connections see only a new, empty schema of the run's database."""
    import asyncpg

    url = await database_url()
    schema = f"t_{uuid.uuid4().hex[:12]}"
    db = await asyncpg.connect(url)
    try:
        await db.execute(f"CREATE SCHEMA {schema}")
    finally:
        await db.close()
    return f"{url}{'&' if '?' in url else '?'}search_path={schema}"


async def empty_url() -> str:
    """A URL whose connections see one schema, its tables (if any yet) emptied."""
    import asyncpg

    if not _reused:
        _reused.append(await fresh_url())
        return _reused[0]
    db = await asyncpg.connect(_reused[0])
    try:
        tables = await db.fetch(
            "SELECT quote_ident(tablename) FROM pg_tables"
            " WHERE schemaname = current_schema() AND tablename <> '_migrations'"
        )
        # DELETE, not TRUNCATE: for a few rows it is ten times quicker. As a replica, the
        # session fires no trigger: no foreign key checks, no task events.
        await db.execute("SET session_replication_role = replica")
        for (name,) in tables:
            await db.execute(f"DELETE FROM {name}")
    finally:
        await db.close()
    return _reused[0]


def pytest_sessionfinish(session: pytest.Session) -> None:
    if not _database:
        return
    import asyncpg

    admin, _ = admin_url()
    name = urlsplit(_database.pop()).path.lstrip("/")
    _reused.clear()

    async def drop() -> None:
        db = await asyncpg.connect(admin)
        try:
            await db.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        finally:
            await db.close()

    run_sync(drop)
