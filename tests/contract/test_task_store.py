"""The task store's contract: leases, exactly-once ends, idempotency, blobs, clean-up."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import png
from tools import media
from tools.errors import NotFound
from tools.models import LOCAL_OWNER, ImageFailure, ResultImage, TaskStatus
from tools.store import Store, blob_key
from tools.store.base import Claim


async def new_task(store: Store, vendor: str = "local", **extra: object) -> str:
    sha = await store.put_blob(media.inspect(png(), media.MediaPolicy()))
    record = await store.create_task(
        function="adjust",
        vendor=vendor,
        prompt="rotate 90",
        n=1,
        request={"images": ["x"]},
        inputs=[sha],
        mask=None,
        **extra,  # type: ignore[arg-type]
    )
    return record.id


def image(seed: int) -> media.InputImage:
    """A distinct small PNG per seed."""
    return media.inspect(png((10, 10), (seed % 256, seed // 256, 3)), media.MediaPolicy())


async def result_of(store: Store, task_id: str, seed: int = 1) -> ResultImage:
    stored = image(seed)
    sha = await store.put_blob(stored)
    return ResultImage(
        index=0,
        uri=f"retouch://tasks/{task_id}/0",
        sha256=sha,
        mime_type=stored.mime_type,
        width=10,
        height=10,
        bytes=len(stored.data),
    )


async def succeeded_task(store: Store, seed: int = 1) -> tuple[str, ResultImage]:
    task_id = await new_task(store)
    [held] = await store.claim("local", "w", capacity=1, lease_s=30)
    assert held.id == task_id
    result = await result_of(store, task_id, seed)
    assert await store.finish(task_id, "w", TaskStatus.succeeded, results=[result])
    return task_id, result


# ---- claims and leases ---------------------------------------------------------------------


async def test_claim_respects_capacity_and_leases(store: Store) -> None:
    ids = [await new_task(store) for _ in range(3)]
    first = await store.claim("local", "w1", capacity=2, lease_s=30)
    assert [t.id for t in first] == ids[:2]  # oldest first
    assert await store.claim("local", "w2", capacity=2, lease_s=30) == []
    await store.release("w1")  # a clean stop hands them back at once
    again = await store.claim("local", "w2", capacity=2, lease_s=30)
    assert [t.id for t in again] == ids[:2]
    assert all(t.attempts == 2 for t in again)


async def test_expired_lease_is_reclaimed_and_old_holder_cannot_write(store: Store) -> None:
    task_id = await new_task(store)
    await store.claim("local", "dead", capacity=1, lease_s=30)
    await store.renew("dead", [task_id], -1)  # its process died: the lease runs out
    taken = await store.claim("local", "alive", capacity=1, lease_s=30)
    assert [t.id for t in taken] == [task_id]
    assert not await store.update(task_id, "dead", progress="zombie")
    assert await store.update(task_id, "alive", progress="working")
    assert not await store.finish(task_id, "dead", TaskStatus.failed)
    assert await store.finish(task_id, "alive", TaskStatus.succeeded)
    assert not await store.finish(task_id, "alive", TaskStatus.failed)  # only once
    assert (await store.get(task_id)).status == "succeeded"


async def test_a_claim_marks_the_task_running_under_the_lease(store: Store) -> None:
    task_id = await new_task(store)
    before = time.time()
    [task] = await store.claim("local", "w", capacity=1, lease_s=30)
    assert (task.id, task.status, task.lease_owner, task.attempts) == (task_id, "running", "w", 1)
    assert task.started_at is not None and task.started_at >= before - 1
    assert before + 29 <= task.lease_until <= time.time() + 31
    assert (await store.get(task_id)).lease_owner == "w"


async def test_capacity_counts_each_vendor_apart_and_every_holder(store: Store) -> None:
    a = [await new_task(store, "a") for _ in range(3)]
    b = [await new_task(store, "b") for _ in range(2)]
    assert [t.id for t in await store.claim("a", "w1", capacity=1, lease_s=30)] == a[:1]
    # w2 sees w1's live task: one more fits under a capacity of 2.
    assert [t.id for t in await store.claim("a", "w2", capacity=2, lease_s=30)] == a[1:2]
    assert await store.claim("a", "w2", capacity=2, lease_s=30) == []
    assert [t.id for t in await store.claim("b", "w1", capacity=5, lease_s=30)] == b
    assert await store.claim("a", "w3", capacity=0, lease_s=30) == []


async def test_many_claims_at_once_never_hand_out_a_task_twice(store: Store) -> None:
    ids = {await new_task(store) for _ in range(12)}
    batches = await asyncio.gather(
        *(store.claim("local", f"w{i}", capacity=12, lease_s=30) for i in range(6))
    )
    taken = [t.id for batch in batches for t in batch]
    assert sorted(taken) == sorted(ids)


async def test_one_task_is_claimed_by_its_id_only_when_a_claim_would_take_it_first(
    store: Store,
) -> None:
    first, second = await new_task(store), await new_task(store)
    # An older task of the same vendor waits: the younger one is left for claim().
    assert await store.claim_task(second, "w", capacity=5, lease_s=30) is None
    held = await store.claim_task(first, "w", capacity=5, lease_s=30)
    assert held is not None and held.id == first
    assert (held.status, held.lease_owner, held.attempts) == ("running", "w", 1)
    assert held.lease_until > time.time() + 20 and held.started_at is not None
    assert await store.claim_task(first, "w2", capacity=5, lease_s=30) is None  # taken
    # No free slot: one running task and a capacity of one.
    assert await store.claim_task(second, "w", capacity=1, lease_s=30) is None
    other = await new_task(store, vendor="other")  # other vendors count apart
    assert (await store.claim_task(other, "w", capacity=1, lease_s=30)) is not None
    taken = await store.claim_task(second, "w", capacity=2, lease_s=30)
    assert taken is not None and taken.id == second
    assert await store.claim("local", "w3", capacity=5, lease_s=30) == []


async def test_a_claim_by_id_waits_behind_a_dead_holders_task(store: Store) -> None:
    dead, fresh = await new_task(store), await new_task(store)
    await store.claim("local", "dead", capacity=1, lease_s=30)
    await store.renew("dead", [dead], -1)  # its process died: the lease ran out
    assert await store.claim_task(fresh, "w", capacity=5, lease_s=30) is None
    assert [t.id for t in await store.claim("local", "w", capacity=5, lease_s=30)] == [
        dead,
        fresh,
    ]
    with pytest.raises(NotFound):
        await store.get("nope")
    assert await store.claim_task("nope", "w", capacity=5, lease_s=30) is None


async def test_a_task_is_claimed_as_it_is_stored_when_claim_task_would_take_it(
    store: Store,
) -> None:
    """``create_task(claim=...)`` takes a new task as ``claim_task`` would just after: running
    under the worker's lease, or left queued behind an older task or with no free slot."""
    made = await store.get(await new_task(store, claim=Claim("w", 5, 30)))
    assert (made.status, made.lease_owner, made.attempts) == ("running", "w", 1)
    assert made.lease_until > time.time() + 20 and made.started_at is not None
    # No free slot: one running task and a capacity of one.
    full = await store.get(await new_task(store, claim=Claim("w", 1, 30)))
    assert (full.status, full.lease_owner, full.attempts) == ("queued", None, 0)
    # Behind an older queued task of its vendor, even with slots free.
    behind = await store.get(await new_task(store, claim=Claim("w", 5, 30)))
    assert behind.status == "queued"
    assert [t.id for t in await store.claim("local", "w", capacity=5, lease_s=30)] == [
        full.id,
        behind.id,
    ]
    # A task found by its key comes back as it is: not claimed again.
    keyed = await new_task(store, key="k", fingerprint="f")
    again = await store.create_task(
        function="adjust",
        vendor="local",
        prompt="rotate 90",
        n=1,
        request={"images": ["x"]},
        inputs=[],
        mask=None,
        key="k",
        fingerprint="f",
        claim=Claim("w2", 5, 30),
    )
    assert again.id == keyed and again.status == "queued" and again.lease_owner is None


async def test_renew_keeps_only_the_holders_leases(store: Store) -> None:
    task_id = await new_task(store)
    await store.claim("local", "w1", capacity=1, lease_s=30)
    await store.renew("w1", [task_id], -1)
    await store.renew("someone else", [task_id], 60)  # not theirs: no effect
    [taken] = await store.claim("local", "w2", capacity=1, lease_s=30)
    await store.renew("w2", [task_id], 60)
    assert taken.id == task_id
    assert (await store.get(task_id)).lease_until >= time.time() + 59
    assert await store.claim("local", "w3", capacity=2, lease_s=30) == []
    await store.renew("w2", [], 60)  # nothing to renew is fine


async def test_release_hands_back_only_the_named_tasks(store: Store) -> None:
    ids = [await new_task(store) for _ in range(2)]
    await store.claim("local", "w1", capacity=2, lease_s=30)
    await store.release("w1", [])
    await store.release("w1", [ids[1]])
    assert [t.id for t in await store.claim("local", "w2", capacity=3, lease_s=30)] == [ids[1]]
    assert (await store.get(ids[0])).lease_owner == "w1"


async def test_update_writes_only_the_writable_fields(store: Store) -> None:
    task_id = await new_task(store)
    await store.claim("local", "w", capacity=1, lease_s=30)
    assert await store.update(
        task_id, "w", progress="50%", polls=3, vendor_task_id="v-1", notes=["a", "b"]
    )
    record = await store.get(task_id)
    assert (record.progress, record.polls, record.vendor_task_id) == ("50%", 3, "v-1")
    assert record.notes == ["a", "b"]
    with pytest.raises(ValueError, match="not writable"):
        await store.update(task_id, "w", lease_owner="me")
    assert await store.find_by_vendor_task("local", "v-1") == await store.get(task_id)
    assert await store.find_by_vendor_task("other", "v-1") is None


# ---- ends ----------------------------------------------------------------------------------


async def test_a_task_ends_exactly_once_however_many_try(store: Store) -> None:
    task_id = await new_task(store)
    await store.claim("local", "w", capacity=1, lease_s=30)
    ends = await asyncio.gather(
        store.finish(task_id, "w", TaskStatus.succeeded),
        store.finish(task_id, None, TaskStatus.failed, error={"code": "x", "message": "y"}),
        store.finish(task_id, "w", TaskStatus.canceled),
        store.finish(task_id, None, TaskStatus.canceled),
    )
    assert sum(ends) == 1
    record = await store.get(task_id)
    assert record.finished and record.lease_owner is None and record.finished_at is not None


async def test_finish_records_the_outcome_and_links_the_results(store: Store) -> None:
    task_id = await new_task(store, notes=["queued"])
    await store.claim("local", "w", capacity=1, lease_s=30)
    await store.update(task_id, "w", progress="almost")
    result = await result_of(store, task_id)
    failure = ImageFailure(index=1, code="vendor_fault", message="one image was lost")
    assert await store.finish(
        task_id,
        "w",
        TaskStatus.succeeded,
        results=[result],
        failures=[failure],
        billed_images=2,
        cost=0.4,
        currency="CNY",
    )
    record = await store.get(task_id)
    assert record.results == [result.model_dump()]
    assert record.failures == [failure.model_dump()]
    assert (record.billed_images, record.cost, record.currency) == (2, 0.4, "CNY")
    assert record.notes == ["queued"] and record.progress is None  # notes=None keeps them
    assert await store.task_blobs(task_id, "result") == [result.sha256]
    public = record.public()
    assert public.status == TaskStatus.succeeded and public.results[0].uri == result.uri


async def test_a_queued_task_ends_without_a_worker(store: Store) -> None:
    task_id = await new_task(store)
    error = {"code": "vendor_fault", "message": "gone"}
    assert await store.finish(task_id, None, TaskStatus.failed, error=error, notes=["n"])
    record = await store.get(task_id)
    assert (record.status, record.error, record.notes) == ("failed", error, ["n"])
    assert await store.claim("local", "w", capacity=1, lease_s=30) == []


async def test_cancel_is_asked_for_then_honoured_once(store: Store) -> None:
    task_id = await new_task(store)
    await store.claim("local", "w", capacity=1, lease_s=30)
    asked = await store.request_cancel(task_id)
    assert asked.cancel_requested and asked.status == "running"
    # A result arriving after the cancel is not recorded over it...
    assert not await store.finish(task_id, "w", TaskStatus.succeeded, unless_canceled=True)
    # ...the worker ends it as canceled.
    assert await store.finish(task_id, "w", TaskStatus.canceled)
    ended = await store.request_cancel(task_id)  # too late: nothing changes
    assert ended.status == "canceled"
    with pytest.raises(NotFound):
        await store.request_cancel("0" * 32)


async def test_reroute_queues_the_task_again_for_another_vendor(store: Store) -> None:
    task_id = await new_task(store, vendor="a")
    await store.claim("a", "w", capacity=1, lease_s=30)
    await store.update(task_id, "w", vendor_task_id="a-1", polls=4)
    assert not await store.reroute(task_id, "not the holder", "b", "moved")
    assert await store.reroute(task_id, "w", "b", "a failed: trying b")
    record = await store.get(task_id)
    assert (record.status, record.vendor, record.lease_owner) == ("queued", "b", None)
    assert (record.vendor_task_id, record.polls) == (None, 0)
    assert record.notes[-1] == "a failed: trying b"
    assert await store.claim("a", "w", capacity=1, lease_s=30) == []
    [again] = await store.claim("b", "w2", capacity=1, lease_s=30)
    assert again.id == task_id and again.attempts == 2
    assert not await store.update(task_id, "w", progress="old holder")


# ---- finding tasks -------------------------------------------------------------------------


async def test_an_idempotency_key_makes_one_task(store: Store) -> None:
    first = await new_task(store, key="req-1")
    assert await new_task(store, key="req-1") == first
    other = await new_task(store, key="req-2")
    assert other != first
    found = await store.find_by_key("req-1")
    assert found is not None and found.id == first and found.idempotency_key == "req-1"
    assert await store.find_by_key("req-3") is None
    assert len(await store.list()) == 2


async def test_get_list_and_counts(store: Store) -> None:
    with pytest.raises(NotFound, match="no task"):
        await store.get("0" * 32)
    since = time.time() - 1
    mine = [await new_task(store, owner="me") for _ in range(3)]
    theirs = await new_task(store, owner="them")
    assert [t.id for t in await store.list()] == [theirs, *reversed(mine)]  # newest first
    assert [t.id for t in await store.list(owner="me", limit=2)] == mine[:0:-1]
    await store.finish(mine[0], None, TaskStatus.canceled)
    assert [t.id for t in await store.list(owner="me", unfinished=True)] == mine[:0:-1]
    assert [t.id for t in await store.active("me")] == mine[:0:-1]
    count, oldest = await store.usage("me", since)
    assert count == 3 and oldest is not None and oldest >= since
    assert await store.usage("me", time.time() + 60) == (0, None)
    assert {t.id for t in await store.get_many([mine[1], theirs, "0" * 32])} == {mine[1], theirs}
    assert await store.get_many([]) == []
    record = await store.get(theirs)
    assert (record.owner, record.status, record.function) == ("them", "queued", "adjust")


async def test_get_for_an_owner_answers_another_owners_task_as_an_unknown_one(
    store: Store,
) -> None:
    theirs = await new_task(store, owner="them")
    unknown = "0" * 32
    assert (await store.get(theirs, owner="them")).id == theirs
    assert (await store.get(theirs)).id == theirs  # no owner: no scoping
    with pytest.raises(NotFound) as foreign:
        await store.get(theirs, owner="me")
    with pytest.raises(NotFound) as missing:
        await store.get(unknown, owner="me")
    assert str(foreign.value).replace(theirs, "<id>") == str(missing.value).replace(unknown, "<id>")
    assert foreign.value.code == missing.value.code


async def test_a_task_stored_without_an_owner_is_the_local_owners(store: Store) -> None:
    old = await new_task(store)  # as tasks were stored before owners were kept
    mine = await new_task(store, owner=LOCAL_OWNER)
    theirs = await new_task(store, owner="them")
    assert (await store.get(old, owner=LOCAL_OWNER)).id == old
    with pytest.raises(NotFound):
        await store.get(old, owner="them")
    assert [t.id for t in await store.list(owner=LOCAL_OWNER)] == [mine, old]
    assert [t.id for t in await store.list(owner="them")] == [theirs]


# ---- blobs ---------------------------------------------------------------------------------


async def test_blobs_are_stored_once_and_read_back_whole(store: Store) -> None:
    picture = image(7)
    sha = await store.put_blob(picture)
    assert await store.put_blob(picture) == sha
    back = await store.read_blob(sha)
    assert (back.data, back.mime_type, back.width, back.height) == (
        picture.data,
        picture.mime_type,
        10,
        10,
    )
    with pytest.raises(NotFound):
        await store.read_blob("f" * 64)


async def test_a_tasks_images_keep_their_roles_and_order(store: Store) -> None:
    shas = [await store.put_blob(image(i)) for i in range(3)]
    mask = await store.put_blob(image(99))
    record = await store.create_task(
        function="fuse",
        vendor="local",
        prompt="",
        n=1,
        request={},
        inputs=[shas[2], shas[0], shas[1]],
        mask=mask,
    )
    assert await store.task_images(record.id) == {
        "input": [shas[2], shas[0], shas[1]],
        "mask": [mask],
    }
    assert await store.task_blobs(record.id, "mask") == [mask]
    assert await store.task_blobs(record.id, "result") == []


async def test_results_are_read_back_as_bytes(store: Store) -> None:
    task_id, result = await succeeded_task(store)
    data, mime = await store.read_result(task_id, 0)
    assert (data, mime) == (image(1).data, result.mime_type)
    known = (await store.get(task_id)).results
    assert await store.read_result(task_id, 0, known) == (data, mime)
    with pytest.raises(NotFound, match="no result 1"):
        await store.read_result(task_id, 1)


async def test_a_blob_cut_short_is_reported_lost_and_healed_by_the_next_put(
    store: Store,
) -> None:
    task_id, result = await succeeded_task(store)
    whole = image(1)
    await store.blobs.put(blob_key(result.sha256, result.mime_type), whole.data[:20])
    with pytest.raises(NotFound, match="damaged"):
        await store.read_result(task_id, 0)
    with pytest.raises(NotFound, match="damaged"):
        await store.read_blob(result.sha256)
    assert await store.put_blob(whole) == result.sha256  # stored again: mended
    assert (await store.read_result(task_id, 0))[0] == whole.data


# ---- clean-up ------------------------------------------------------------------------------


async def stored_keys(store: Store) -> set[str]:
    return {k async for k in store.blobs.iter_keys()}


async def test_cleanup_forgets_finished_tasks_past_retention_and_their_blobs(
    store: Store,
) -> None:
    task_id, result = await succeeded_task(store)
    pending = await new_task(store)  # unfinished: kept whatever its age
    assert await store.cleanup(retention_days=1) == 0  # still within retention
    assert await store.cleanup(retention_days=-1) == 1  # the result (the input is shared)
    with pytest.raises(NotFound, match="no task"):
        await store.read_result(task_id, 0)
    assert not await store.blobs.exists(blob_key(result.sha256, result.mime_type))
    [input_sha] = await store.task_blobs(pending, "input")
    assert (await store.read_blob(input_sha)).data
    assert (await store.get(pending)).status == "queued"
    # No blob is left that no task refers to.
    kept = await store.read_blob(input_sha)
    assert await stored_keys(store) == {blob_key(input_sha, kept.mime_type)}


async def test_cleanup_spares_a_blob_about_to_be_linked(store: Store) -> None:
    sha = await store.put_blob(image(5))  # an input whose task is not created yet
    assert await store.cleanup(retention_days=-1) == 0
    await store.create_task(
        function="adjust", vendor="local", prompt="", n=1, request={}, inputs=[sha], mask=None
    )
    assert (await store.read_blob(sha)).data


async def test_a_size_cap_evicts_the_oldest_finished_tasks_first(store: Store) -> None:
    done = [await succeeded_task(store, seed=i) for i in range(1, 6)]
    await new_task(store)  # unfinished: never evicted
    shared_input = len(media.inspect(png(), media.MediaPolicy()).data)  # counted once
    cap = shared_input + sum(r.bytes for _, r in done[2:])
    assert await store.cleanup(retention_days=7, max_bytes=cap) == 2
    kept = [task_id for task_id, _ in done if await exists(store, task_id)]
    assert kept == [task_id for task_id, _ in done[2:]]
    assert await store.cleanup(retention_days=7, max_bytes=0) == 3  # all finished ones go
    assert len(await store.list()) == 1


async def exists(store: Store, task_id: str) -> bool:
    try:
        await store.get(task_id)
    except NotFound:
        return False
    return True
