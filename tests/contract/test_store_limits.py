"""The store's size limits, held as each image is written: the cap on all images, one
owner's share of it, and writes that fail leaving nothing counted."""

from __future__ import annotations

import hashlib
import random

import pytest
from PIL import Image

from tools import media
from tools.errors import NotFound, StorageFull
from tools.models import ResultImage, TaskStatus
from tools.store import Store, StoreLimits, blob_key

KB = 1024


def noise(seed: int, side: int = 40) -> media.InputImage:
    """The same PNG for the same seed, of about side² × 3 bytes (noise does not compress)."""
    raw = random.Random(seed).randbytes(side * side * 3)
    return media.encode(Image.frombytes("RGB", (side, side), raw), "PNG")


async def queued(store: Store, image: media.InputImage, owner: str | None = None) -> str:
    sha = await store.put_blob(image, owner=owner)
    record = await store.create_task(
        function="adjust",
        vendor="local",
        prompt="",
        n=1,
        request={"images": ["x"]},
        inputs=[sha],
        mask=None,
        owner=owner,
    )
    return record.id


async def finished(store: Store, seed: int, owner: str | None = None) -> str:
    """A succeeded task with its own input and result."""
    task_id = await queued(store, noise(seed), owner)
    [held] = await store.claim("local", "w", capacity=1, lease_s=30)
    assert held.id == task_id
    result = noise(seed + 1000)
    sha = await store.put_blob(result, owner=owner, strict=False)
    image = ResultImage(
        index=0,
        uri=f"retouch://tasks/{task_id}/0",
        sha256=sha,
        mime_type=result.mime_type,
        width=result.width,
        height=result.height,
        bytes=len(result.data),
    )
    assert await store.finish(task_id, "w", TaskStatus.succeeded, results=[image])
    return task_id


async def exists(store: Store, task_id: str) -> bool:
    try:
        await store.get(task_id)
    except NotFound:
        return False
    return True


async def test_stored_bytes_count_each_blob_once_and_by_owner(store: Store) -> None:
    picture = noise(1)
    assert await store.stored_bytes() == 0
    await queued(store, picture, "ann")
    await queued(store, picture, "bob")  # the same bytes again: stored once
    assert await store.stored_bytes() == len(picture.data)
    assert await store.stored_bytes("ann") == await store.stored_bytes("bob") == len(picture.data)
    assert await store.stored_bytes("cid") == 0


async def test_the_cap_holds_as_each_image_is_written_oldest_finished_first(
    store: Store,
) -> None:
    size = len(noise(0).data)
    store.limits = StoreLimits(max_bytes=7 * size + size // 2)
    tasks = []
    for seed in range(10):
        tasks.append(await finished(store, seed))
        assert await store.stored_bytes() <= store.limits.max_bytes  # type: ignore[operator]
    kept = [t for t in tasks if await exists(store, t)]
    assert kept == tasks[-3:]  # each task is two images: the newest three fit
    keys = {k async for k in store.blobs.iter_keys()}
    assert len(keys) == 6  # evicted images' bytes are gone too, not only their rows


async def test_an_input_that_cannot_fit_is_refused_and_leaves_nothing(store: Store) -> None:
    size = len(noise(0).data)
    store.limits = StoreLimits(max_bytes=2 * size + size // 2)
    first = await queued(store, noise(1))
    second = await queued(store, noise(2))  # unfinished: never evicted
    late = noise(3)
    with pytest.raises(StorageFull) as err:
        await store.put_blob(late)
    assert err.value.message.startswith("storage full: ")
    assert "store.max_results_mb" in err.value.message
    assert await store.stored_bytes() == 2 * size
    sha = media_sha(late)
    with pytest.raises(NotFound):
        await store.read_blob(sha)
    assert not await store.blobs.exists(blob_key(sha, late.mime_type))
    assert await exists(store, first) and await exists(store, second)
    assert await store.put_blob(noise(1))  # a blob already stored needs no room


def media_sha(image: media.InputImage) -> str:
    return hashlib.sha256(image.data).hexdigest()


async def test_a_result_is_kept_past_the_cap_when_nothing_can_go(store: Store) -> None:
    size = len(noise(0).data)
    store.limits = StoreLimits(max_bytes=size + size // 2)
    await queued(store, noise(1))
    result = noise(2)
    sha = await store.put_blob(result, strict=False)  # paid for: kept
    assert (await store.read_blob(sha)).data == result.data
    assert await store.stored_bytes() == 2 * size


async def test_an_owner_over_their_share_loses_their_own_oldest_tasks_first(
    store: Store,
) -> None:
    size = len(noise(0).data)
    store.limits = StoreLimits(max_bytes=20 * size, owner_share=0.25)  # 5 images each
    bob = [await finished(store, seed, "bob") for seed in (1, 2)]
    ann = [await finished(store, seed, "ann") for seed in range(10, 16)]
    assert all([await exists(store, t) for t in bob])  # another's tasks are left alone
    kept = [t for t in ann if await exists(store, t)]
    assert kept == ann[-2:]
    assert await store.stored_bytes("ann") <= 5 * size


async def test_an_owner_whose_share_is_all_unfinished_is_refused(store: Store) -> None:
    size = len(noise(0).data)
    store.limits = StoreLimits(max_bytes=10 * size, owner_share=0.2)  # 2 images each
    await queued(store, noise(1), "ann")
    await queued(store, noise(2), "ann")
    with pytest.raises(StorageFull, match=r"^storage full for ann: .*store\.owner_share"):
        await store.put_blob(noise(3), owner="ann")
    await queued(store, noise(4), "bob")  # others still have room
    await store.put_blob(noise(5))  # and callers without an owner have no share


async def test_a_write_that_fails_leaves_no_row_counting_its_bytes(store: Store) -> None:
    picture = noise(7)

    async def full(key: str, data: bytes) -> None:
        raise StorageFull("storage full: test")

    real = store.blobs.put
    store.blobs.put = full  # type: ignore[method-assign]
    for limits in (StoreLimits(), StoreLimits(max_bytes=100 * KB * KB)):
        store.limits = limits
        with pytest.raises(StorageFull):
            await store.put_blob(picture)
        assert await store.stored_bytes() == 0
    store.blobs.put = real  # type: ignore[method-assign]
    sha = await store.put_blob(picture)  # and it can be stored once there is room
    assert (await store.read_blob(sha)).data == picture.data
