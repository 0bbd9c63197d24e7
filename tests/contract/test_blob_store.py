"""The blob store's contract: bytes under content keys, served only whole."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from tests.contract.conftest import Blobs
from tools.store.blobs import BlobDamaged, BlobMissing, blob_key


def key_of(data: bytes, mime: str = "image/png") -> str:
    return blob_key(hashlib.sha256(data).hexdigest(), mime)


async def test_a_blob_is_read_back_as_written(blobs: Blobs) -> None:
    store, data = blobs.store, os.urandom(3000)
    key = key_of(data)
    assert await store.size(key) is None and not await store.exists(key)
    await store.put(key, data)
    assert await store.get(key, len(data)) == data
    assert await store.size(key) == len(data) and await store.exists(key)


async def test_keys_are_content_addresses() -> None:
    sha = hashlib.sha256(b"x").hexdigest()
    assert blob_key(sha, "image/jpeg") == f"{sha[:2]}/{sha}.jpg"
    assert blob_key(sha, "application/x-unknown") == f"{sha[:2]}/{sha}.bin"


async def test_a_missing_blob_is_reported_missing(blobs: Blobs) -> None:
    with pytest.raises(BlobMissing):
        await blobs.store.get(key_of(b"never stored"), 12)


async def test_a_blob_of_the_wrong_size_is_refused_not_served(blobs: Blobs) -> None:
    data = os.urandom(500)
    key = key_of(data)
    await blobs.store.put(key, data[:20])  # what a write cut short by a power cut leaves
    with pytest.raises(BlobDamaged):
        await blobs.store.get(key, len(data))
    await blobs.store.put(key, data)  # stored again: mended
    assert await blobs.store.get(key, len(data)) == data


async def test_delete_forgets_and_does_not_mind_a_missing_blob(blobs: Blobs) -> None:
    data = os.urandom(100)
    key = key_of(data)
    await blobs.store.put(key, data)
    await blobs.store.delete(key)
    await blobs.store.delete(key)
    assert not await blobs.store.exists(key)
    with pytest.raises(BlobMissing):
        await blobs.store.get(key, len(data))


async def test_keys_lists_every_stored_blob_and_nothing_else(blobs: Blobs) -> None:
    datas = [os.urandom(64) for _ in range(5)]
    for data in datas:
        await blobs.store.put(key_of(data, "image/webp"), data)
    await blobs.leave_partial(key_of(b"half"), b"ha", 0)
    await blobs.store.delete(key_of(datas[0], "image/webp"))
    listed = {k async for k in blobs.store.iter_keys()}
    assert listed == {key_of(d, "image/webp") for d in datas[1:]}


async def test_many_writers_of_one_blob_at_once_leave_it_whole(blobs: Blobs) -> None:
    data = os.urandom(200_000)
    key = key_of(data)
    await asyncio.gather(*(blobs.store.put(key, data) for _ in range(8)))
    assert await blobs.store.get(key, len(data)) == data
    assert await blobs.store.sweep(0) == 0  # no write left anything behind


async def test_sweep_deletes_old_partial_writes_and_spares_recent_ones(blobs: Blobs) -> None:
    old, recent = key_of(b"old"), key_of(b"recent")
    await blobs.leave_partial(old, b"half an im", 2 * 3600)
    await blobs.leave_partial(recent, b"half an im", 0)  # its writer may still be busy
    assert await blobs.store.sweep(3600) == 1
    assert await blobs.store.sweep(3600) == 0
    with pytest.raises(BlobMissing):  # a partial write is never seen as the blob
        await blobs.store.get(recent, 10)
    assert await blobs.store.sweep(0) == 1
