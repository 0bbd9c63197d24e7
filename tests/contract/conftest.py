"""The backends the contract suite runs on: one factory each."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tools.store import BlobStore, FileBlobStore, Store
from tools.store.sqlite import SQLiteStore


async def sqlite_store(tmp_path: Path) -> Store:
    return await SQLiteStore.open(tmp_path / "t.db", FileBlobStore(tmp_path / "files"))


#: name → an open, empty store in ``tmp_path`` (closed by the fixture).
STORES: dict[str, Callable[[Path], Awaitable[Store]]] = {"sqlite": sqlite_store}


@dataclass
class Blobs:
    """A blob store under test, and a way to leave what a write cut off by a crash leaves."""

    store: BlobStore
    leave_partial: Callable[[str, bytes, float], Awaitable[None]]  # key, bytes, seconds ago


async def file_blobs(tmp_path: Path) -> Blobs:
    blobs = FileBlobStore(tmp_path / "files")

    async def leave_partial(key: str, data: bytes, age_s: float) -> None:
        target = blobs.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f"{target.suffix}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        then = time.time() - age_s
        os.utime(tmp, (then, then))

    return Blobs(blobs, leave_partial)


#: name → an empty blob store in ``tmp_path`` (closed by the fixture).
BLOB_STORES: dict[str, Callable[[Path], Awaitable[Blobs]]] = {"file": file_blobs}


@pytest.fixture(params=list(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    opened = await STORES[request.param](tmp_path)
    yield opened
    await opened.close()


@pytest.fixture(params=list(BLOB_STORES))
async def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Blobs]:
    made = await BLOB_STORES[request.param](tmp_path)
    yield made
    await made.store.close()
