"""The backends the contract suite runs on: one factory each."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.pg import empty_url
from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server
from tools.store import BlobStore, FileBlobStore, Store
from tools.store.s3 import S3BlobStore
from tools.store.sqlite import SQLiteStore


async def sqlite_store(tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    return await SQLiteStore.open(tmp_path / "t.db", FileBlobStore(tmp_path / "files"))


async def sqlite_s3_store(tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    """SQLite with its images in S3: clean-up and eviction delete objects in the bucket."""
    blobs = await s3_blobs(tmp_path, request)
    return await SQLiteStore.open(tmp_path / "t.db", blobs.store)


async def postgres_store(tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    """The run's PostgreSQL database, emptied (skipped without a server)."""
    from tools.store.postgres import PostgresStore

    return await PostgresStore.open(await empty_url(), FileBlobStore(tmp_path / "files"))


async def postgres_s3_store(tmp_path: Path, request: pytest.FixtureRequest) -> Store:
    """PostgreSQL with its images in S3: what every machine of a fleet shares."""
    from tools.store.postgres import PostgresStore

    url = await empty_url()
    return await PostgresStore.open(url, (await s3_blobs(tmp_path, request)).store)


#: name → an open, empty store (closed by the fixture); ``request`` gives a factory the
#: session's servers. Called again in one test, a factory opens the same database again, as
#: a second process would (before the test has written anything).
STORES: dict[str, Callable[[Path, pytest.FixtureRequest], Awaitable[Store]]] = {
    "sqlite": sqlite_store,
    "sqlite+s3": sqlite_s3_store,
    "postgres": postgres_store,
    "postgres+s3": postgres_s3_store,
}


@dataclass
class Blobs:
    """A blob store under test, and a way to leave what a write cut off by a crash leaves."""

    store: BlobStore
    leave_partial: Callable[[str, bytes, float], Awaitable[None]]  # key, bytes, seconds ago


async def file_blobs(tmp_path: Path, request: pytest.FixtureRequest) -> Blobs:
    blobs = FileBlobStore(tmp_path / "files")

    async def leave_partial(key: str, data: bytes, age_s: float) -> None:
        target = blobs.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f"{target.suffix}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        then = time.time() - age_s
        os.utime(tmp, (then, then))

    return Blobs(blobs, leave_partial)


async def s3_blobs(tmp_path: Path, request: pytest.FixtureRequest) -> Blobs:
    """A fresh bucket on the test run's S3 server (moto), under a prefix."""
    server: S3Server = request.getfixturevalue("s3_server")
    bucket = server.new_bucket()
    blobs = await S3BlobStore.open(
        f"s3://{bucket}/some/prefix",
        endpoint_url=server.endpoint_url,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
    )

    async def leave_partial(key: str, data: bytes, age_s: float) -> None:
        name = blobs.prefix + key
        upload = await blobs.client.create_multipart_upload(Bucket=bucket, Key=name)
        await blobs.client.upload_part(
            Bucket=bucket, Key=name, UploadId=upload["UploadId"], PartNumber=1, Body=data
        )
        server.backdate_parts(bucket, upload["UploadId"], age_s)

    return Blobs(blobs, leave_partial)


#: name → an empty blob store (closed by the fixture); ``request`` gives a factory the
#: session's servers.
BLOB_STORES: dict[str, Callable[[Path, pytest.FixtureRequest], Awaitable[Blobs]]] = {
    "file": file_blobs,
    "s3": s3_blobs,
}


@pytest.fixture(params=list(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await STORES[request.param](tmp_path, request)
    yield opened
    await opened.close()


@pytest.fixture
async def twin(
    store: Store, request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Store]:
    """The database of ``store`` opened a second time: what another process sees."""
    backend = request.node.callspec.params["store"]
    opened = await STORES[backend](tmp_path, request)
    yield opened
    await opened.close()


@pytest.fixture(params=list(BLOB_STORES))
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Blobs]:
    made = await BLOB_STORES[request.param](tmp_path, request)
    yield made
    await made.store.close()
