"""The shared parts of a fleet for the benchmarks: a private PostgreSQL database, an S3 API
server (moto in server mode, in a process of its own), a config file naming them, and
``retouch-worker`` processes on it.

    with Postgres() as pg, MotoS3() as s3:
        url = pg.schema_url()                      # an empty schema of the bench's database
        cfg = write_config(folder, url=url, s3=s3, extra=vendor_tables)
        with Workers(cfg, 2, folder) as fleet:     # started, each ready
            fleet.pause(); ...; fleet.resume()
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from bench._common import ROOT

S3_KEY_ID = "AKIDRETOUCHBENCH"
S3_SECRET = "bench-secret-not-a-real-key"
S3_REGION = "us-east-1"


def cpu_s(pid: int) -> float:
    """CPU time (user + system) a process has used so far, in seconds; 0 once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---- PostgreSQL ---------------------------------------------------------------------------


class Postgres:
    """A database of the benchmark's own on the machine's server (tests/pg.py finds it:
    ``RETOUCH_TEST_PG`` or postgres@127.0.0.1:5432), dropped at the end."""

    def __init__(self) -> None:
        self.admin = ""
        self.url = ""
        self.name = f"retouch_bench_{uuid.uuid4().hex[:10]}"

    def __enter__(self) -> Self:
        from tests.pg import admin_url, run_sync, with_database

        admin, why = admin_url()
        if admin is None:
            raise SystemExit(f"PostgreSQL: {why}")
        self.admin = admin
        run_sync(lambda: self._execute(f"CREATE DATABASE {self.name}"))
        self.url = with_database(admin, self.name)
        return self

    def __exit__(self, *exc: object) -> None:
        from tests.pg import run_sync

        run_sync(lambda: self._execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)"))

    async def _execute(self, sql: str, url: str = "") -> None:
        import asyncpg

        db = await asyncpg.connect(url or self.admin)
        try:
            await db.execute(sql)
        finally:
            await db.close()

    async def schema_url(self) -> str:
        """A new, empty schema of the database, named in the URL's ``search_path``."""
        schema = f"s_{uuid.uuid4().hex[:10]}"
        await self._execute(f"CREATE SCHEMA {schema}", self.url)
        return f"{self.url}{'&' if '?' in self.url else '?'}search_path={schema}"

    async def backends(self) -> list[int]:
        """The server processes serving this database's connections (their CPU is ours)."""
        import asyncpg

        db = await asyncpg.connect(self.admin)
        try:
            rows = await db.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                self.name,
            )
        finally:
            await db.close()
        return [int(r["pid"]) for r in rows]

    async def size_mb(self) -> float:
        import asyncpg

        db = await asyncpg.connect(self.admin)
        try:
            size = await db.fetchval("SELECT pg_database_size($1)", self.name)
        finally:
            await db.close()
        return float(size) / 1024 / 1024

    def where(self) -> str:
        parts = urlsplit(self.url)
        return parts.netloc.rpartition("@")[2] or "the local socket"


# ---- S3 -----------------------------------------------------------------------------------


class MotoS3:
    """moto's S3 API server (``python -m moto.server``) on a free port of 127.0.0.1, in its
    own process (so its work shows as its own CPU), with one bucket."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.bucket = f"retouch-bench-{uuid.uuid4().hex[:8]}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        import httpx

        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(self.endpoint, timeout=1)
                break
            except httpx.HTTPError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto's S3 server did not start") from None
                time.sleep(0.1)
        import boto3

        boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=S3_REGION,
            aws_access_key_id=S3_KEY_ID,
            aws_secret_access_key=S3_SECRET,
        ).create_bucket(Bucket=self.bucket)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def toml(self, prefix: str) -> str:
        return (
            f'blobs = "s3://{self.bucket}/{prefix}"\n'
            f's3_endpoint_url = "{self.endpoint}"\ns3_region = "{S3_REGION}"\n'
            f's3_access_key_id = "{S3_KEY_ID}"\ns3_secret_access_key = "{S3_SECRET}"\n'
            's3_addressing_style = "path"\n'
        )


# ---- config and workers -------------------------------------------------------------------


def write_config(
    folder: Path,
    *,
    url: str = "",
    s3: MotoS3 | None = None,
    extra: str = "",
    worker: str = "",
    pool: int = 0,
) -> Any:
    """Settings from a config.toml in ``folder``: PostgreSQL at ``url`` (else SQLite in the
    folder), blobs in ``s3``'s bucket (else a folder), ``extra`` tables (vendors)."""
    from tools.config import load_settings

    for var in ("RETOUCH_CONFIG", "DASHSCOPE_API_KEY", "OPENAI_API_KEY", "RETOUCH_STORE__URL"):
        os.environ.pop(var, None)
    store = '[store]\npath = "retouch.db"\nresults_dir = "results"\n'
    if url:
        store += f'url = "{url}"\n'
    if pool:
        store += f"pool_max_size = {pool}\n"
    if s3 is not None:
        store += s3.toml(folder.name)
    path = folder / "config.toml"
    path.write_text(f'log_level = "WARNING"\n{store}[worker]\n{worker}{extra}', encoding="utf-8")
    return load_settings(path)


class Workers:
    """``count`` ``retouch-worker`` processes (``python -m tools.worker``) on one config,
    each ready (its first line written) once the ``with`` block starts."""

    def __init__(self, config: str, count: int, folder: Path) -> None:
        self.config, self.count, self.folder = config, count, folder
        self.procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Self:
        for i in range(self.count):
            with open(self.log(i), "wb") as err:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "tools.worker", "--config", self.config],
                        cwd=str(ROOT),
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                    )
                )
        for i, proc in enumerate(self.procs):
            while "retouch-worker " not in self.log(i).read_text(errors="replace"):
                if proc.poll() is not None:
                    raise RuntimeError(f"worker {i} exited:\n{self.log(i).read_text()}")
                time.sleep(0.05)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.resume()
        for proc in self.procs:
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def log(self, i: int) -> Path:
        return self.folder / f"worker-{i}.log"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def pause(self) -> None:
        """SIGSTOP every worker: tasks queued now wait for all of them at once."""
        for proc in self.procs:
            proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        for proc in self.procs:
            proc.send_signal(signal.SIGCONT)

    def peak_rss_mb(self) -> list[float]:
        from bench._common import status_kb

        return [status_kb(pid, "VmHWM") / 1024 for pid in self.pids]


async def until_ended(db: Any, timeout: float, query: str = "") -> float:
    """Wait (polling every 50 ms) until no task is queued or running; the seconds waited."""
    start = time.perf_counter()
    sql = query or "SELECT count(*) FROM tasks WHERE status IN ('queued', 'running')"
    while await db.fetchval(sql):
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"tasks still unfinished after {timeout:.0f} s")
        await asyncio.sleep(0.05)
    return time.perf_counter() - start
