"""The store's contract for uploads: owned, found only by their owner, kept until they
expire, and their bytes kept after that only while a task uses them."""

from __future__ import annotations

import time

import pytest

from tests.conftest import png
from tools import media
from tools.errors import NotFound
from tools.store import Store, blob_key


def image(seed: int) -> media.InputImage:
    return media.inspect(png((12, 8), (seed, 40, 90)), media.MediaPolicy())


async def upload(store: Store, owner: str, seed: int = 1, ttl_s: float = 3600) -> tuple[str, str]:
    """An upload of a distinct image: (upload id, blob sha256)."""
    sha = await store.put_blob(image(seed))
    now = time.time()
    record = await store.create_upload(
        owner=owner, sha256=sha, created_at=now, expires_at=now + ttl_s
    )
    assert (record.owner, record.sha256, record.expires_at) == (owner, sha, now + ttl_s)
    return record.id, sha


async def test_an_upload_is_found_by_its_owner_only(store: Store) -> None:
    upload_id, sha = await upload(store, "alice")
    other_id, _ = await upload(store, "alice", seed=2)
    assert upload_id != other_id and len(upload_id) == 32
    found = await store.get_upload(upload_id, "alice")
    assert found is not None and found.sha256 == sha and found.owner == "alice"
    assert await store.get_upload(upload_id, "bob") is None
    assert await store.get_upload("0" * 32, "alice") is None
    assert (await store.read_blob(sha)).data == image(1).data


async def test_an_expired_upload_is_still_returned_until_cleaned_up(store: Store) -> None:
    # Whether it may be used is the caller's decision (its clock); clean-up uses real time.
    upload_id, sha = await upload(store, "alice", ttl_s=-60)
    found = await store.get_upload(upload_id, "alice")
    assert found is not None and found.expires_at < time.time()
    await store.cleanup(retention_days=7)
    assert await store.get_upload(upload_id, "alice") is None
    assert not await store.blobs.exists(blob_key(sha, "image/png"))  # no task used it
    with pytest.raises(NotFound):
        await store.read_blob(sha)


async def test_an_upload_keeps_its_blob_until_it_expires(store: Store) -> None:
    upload_id, sha = await upload(store, "alice")
    await store.cleanup(retention_days=-1, max_bytes=0)  # the harshest clean-up there is
    assert await store.get_upload(upload_id, "alice") is not None
    assert (await store.read_blob(sha)).data == image(1).data


async def test_a_task_that_used_an_upload_keeps_its_bytes_after_the_upload_expires(
    store: Store,
) -> None:
    upload_id, sha = await upload(store, "alice", ttl_s=-1)
    task = await store.create_task(
        function="adjust", vendor="local", prompt="", n=1, request={}, inputs=[sha], mask=None
    )
    await store.cleanup(retention_days=7)
    assert await store.get_upload(upload_id, "alice") is None  # the upload is gone
    assert await store.task_blobs(task.id, "input") == [sha]
    assert (await store.read_blob(sha)).data == image(1).data  # the task's input is not


async def test_two_uploads_of_the_same_bytes_share_one_blob(store: Store) -> None:
    first, sha = await upload(store, "alice", ttl_s=-1)
    second, again = await upload(store, "bob")
    assert sha == again and first != second
    await store.cleanup(retention_days=7)
    assert await store.get_upload(first, "alice") is None
    assert (await store.read_blob(sha)).data  # bob's upload still holds it
