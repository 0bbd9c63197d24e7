"""PostgreSQL for the tests: one database per run, an empty schema per test.

The server is the one ``RETOUCH_TEST_PG`` names (an admin URL: a superuser's), else
``postgres`` on 127.0.0.1:5432, else on the local socket. The first test that needs it
creates the database ``retouch_test_<random>``; the end of the run drops it. Each
``fresh_url()`` is a new schema in it, named in the URL (``?search_path=``), so a store opened
on it starts from nothing; ``empty_url()`` is one schema for the whole run, emptied each time
(quicker: its tables are migrated once). This module is a pytest plugin (``tests/conftest.py``
loads it).

A test that stops and starts the server uses a server of its own instead (``PrivateServer``,
the fixture ``private_pg``): a cluster made by ``initdb`` in a temporary folder, listening on
a free port of 127.0.0.1, so that the machine's server and other tests never notice.
"""

from __future__ import annotations

import asyncio
import functools
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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


# ---- a server of the tests' own, to stop and start ---------------------------------------


@functools.cache
def server_binaries() -> tuple[Path | None, str]:
    """The folder holding ``initdb`` and ``pg_ctl`` (the newest installed PostgreSQL's), or
    None and why there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version)
    if found:
        return Path(found[-1]).parent, ""
    on_path = shutil.which("pg_ctl")
    if on_path:
        return Path(on_path).parent, ""
    return None, "pg_ctl and initdb are not installed (apt-get install postgresql)"


def _version(path: str) -> float:
    try:
        return float(Path(path).parent.parent.name)
    except ValueError:
        return 0.0


class PrivateServer:
    """A PostgreSQL cluster of the tests' own: ``initdb`` into a temporary folder, served on
    a free port of 127.0.0.1 (trust authentication, fsync off). As root, its commands run as
    the ``postgres`` user, since PostgreSQL refuses to run as root."""

    def __init__(self) -> None:
        bindir, why = server_binaries()
        if bindir is None:
            raise RuntimeError(why)
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="retouch-pg-"))
        self.data = self.root / "data"
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c full_page_writes=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        """Stop at once, as an administrator would: sessions are cut, new ones refused."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        if self.running:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    async def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        import asyncpg

        name = f"t_{uuid.uuid4().hex[:12]}"
        db = await asyncpg.connect(self.url)
        try:
            await db.execute(f"CREATE DATABASE {name}")
        finally:
            await db.close()
        return with_database(self.url, name)


_private: list[PrivateServer] = []


@pytest.fixture
def private_pg() -> Iterator[PrivateServer]:
    """The run's private PostgreSQL server (made on first use), running at the start of the
    test; a test may stop it, and the fixture starts it again afterwards."""
    from tests.optional import require

    require("pg_ctl")
    if not _private:
        _private.append(PrivateServer())
    server = _private[0]
    if not server.running:
        server.start()
    yield server
    if not server.running:
        server.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    while _private:
        _private.pop().close()
