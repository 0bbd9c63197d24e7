"""Idempotency keys in the store: one task per key and request, a clear conflict for another
request under a used key, keys that expire — also when many calls (from two processes) race."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import png
from tools import media
from tools.errors import IdempotencyConflict
from tools.store import Store
from tools.store.base import Admission, OwnerUsage, TaskRecord, Windows
from tools.store.postgres import PostgresStore
from tools.store.sqlite import SQLiteStore

A, B = "v1:" + "a" * 64, "v1:" + "b" * 64  # two requests' fingerprints
T0 = 1_000_000.0  # an injected clock: tasks are made at T0 + whatever the test says


async def keyed(store: Store, key: str, fingerprint: str | None = A, **extra: Any) -> TaskRecord:
    sha = await store.put_blob(media.inspect(png(), media.MediaPolicy()), owner=extra.get("owner"))
    return await store.create_task(
        function="adjust",
        vendor="local",
        prompt="rotate 90",
        n=1,
        request={"images": ["x"]},
        inputs=[sha],
        mask=None,
        key=key,
        fingerprint=fingerprint,
        **extra,
    )


async def fingerprints(store: Store) -> int:
    """How many requests' fingerprints the store keeps (in its own table: read as SQL)."""
    sql = "SELECT count(*) FROM idempotency_requests"
    if isinstance(store, SQLiteStore):
        return int((await store.db.execute_fetchall(sql))[0][0])
    assert isinstance(store, PostgresStore)
    return int(await store.pool.fetchval(sql))


def roomy() -> Admission:
    """An admission that lets everything in (the owner's use is still counted, under the
    owner's lock where the backend takes one)."""

    def check(usage: OwnerUsage) -> None:
        return None

    return Admission(Windows(T0 - 3600, T0 - 86400, T0 - 30 * 86400), check)


async def test_the_same_request_gets_the_first_task_and_another_a_conflict_naming_it(
    store: Store,
) -> None:
    first = await keyed(store, "k1", created_at=T0)
    assert first.idempotency_key == "k1"
    found = await store.find_by_key("k1", fingerprint=A)
    assert found is not None and found.id == first.id
    with pytest.raises(IdempotencyConflict, match=first.id):
        await store.find_by_key("k1", fingerprint=B)
    assert (await keyed(store, "k1", created_at=T0 + 5)).id == first.id
    with pytest.raises(IdempotencyConflict, match=f"different request.*task {first.id}") as exc:
        await keyed(store, "k1", B, created_at=T0 + 5)
    assert exc.value.code == "idempotency_conflict"
    assert exc.value.to_dict()["task_id"] == first.id
    # a caller with no fingerprint, or a task stored before fingerprints, is not compared
    assert (await keyed(store, "k1", None)).id == first.id
    legacy = await keyed(store, "k2", None)
    assert (await keyed(store, "k2", B)).id == legacy.id
    assert await fingerprints(store) == 1  # none stored without one
    # another version of the fingerprint cannot tell requests apart either
    assert (await keyed(store, "k1", "v2:" + "c" * 64)).id == first.id
    assert len(await store.list()) == 2


async def test_a_key_expires_and_then_starts_a_new_task(store: Store) -> None:
    first = await keyed(store, "k", created_at=T0)
    day = 24 * 3600.0
    assert (await store.find_by_key("k", since=T0 - day)) is not None
    assert (await keyed(store, "k", created_at=T0 + 10, keys_since=T0 - day)).id == first.id
    # a day later the key is free: even another request under it starts a task
    assert await store.find_by_key("k", since=T0 + 1) is None
    second = await keyed(store, "k", B, created_at=T0 + day + 1, keys_since=T0 + 1)
    assert second.id != first.id
    assert (await store.get(first.id)).idempotency_key is None  # taken from the old task
    found = await store.find_by_key("k", since=T0 + 1)
    assert found is not None and found.id == second.id
    with pytest.raises(IdempotencyConflict, match=second.id):
        await keyed(store, "k", A, keys_since=T0 + 1)


async def test_expired_keys_are_pruned(store: Store) -> None:
    old = [(await keyed(store, f"old{i}", created_at=T0 + i)).id for i in range(3)]
    fresh = await keyed(store, "fresh", created_at=T0 + 100)
    unkeyed = await store.create_task(
        function="adjust", vendor="local", prompt="", n=1, request={}, inputs=[], mask=None
    )
    assert await fingerprints(store) == 4
    assert await store.expire_keys(T0 + 50) == 3
    assert await store.expire_keys(T0 + 50) == 0
    assert await fingerprints(store) == 1  # the fingerprints went with the keys
    for task_id in old:
        record = await store.get(task_id)
        assert record.idempotency_key is None and record.status == "queued"  # task kept
    assert await store.find_by_key("old0") is None
    assert (await store.get(fresh.id)).idempotency_key == "fresh"
    assert (await store.get(unkeyed.id)).idempotency_key is None
    assert (await keyed(store, "old0", B)).id not in old  # free again


async def test_a_key_being_stored_is_never_found_without_its_fingerprint(store: Store) -> None:
    """Looked for while its task is being stored (in this process, on the same connection):
    not there yet, or there with the fingerprint that makes another request a conflict."""

    async def watch() -> list[TaskRecord | None]:
        seen: list[TaskRecord | None] = []
        while True:
            try:
                seen.append(await store.find_by_key("k", fingerprint=B))
            except IdempotencyConflict:
                return seen
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    await asyncio.sleep(0)
    await keyed(store, "k", A)
    seen = await asyncio.wait_for(watcher, 30)
    assert seen and all(found is None for found in seen)


@pytest.mark.parametrize("admitted", [False, True], ids=["plain", "admitted"])
async def test_twenty_calls_at_once_with_one_key_and_request_make_one_task(
    store: Store, twin: Store, admitted: bool
) -> None:
    """Half the calls from a second process, with and without an owner's admission."""
    extra: dict[str, Any] = {"owner": "alice", "admission": roomy()} if admitted else {}
    made = await asyncio.gather(
        *(keyed(s, "once", created_at=T0, **extra) for s in [store, twin] * 10)
    )
    assert len({r.id for r in made}) == 1
    assert [r.id for r in await store.list()] == [made[0].id]


@pytest.mark.parametrize("admitted", [False, True], ids=["plain", "admitted"])
async def test_twenty_different_requests_at_once_under_one_key_one_task_and_conflicts(
    store: Store, twin: Store, admitted: bool
) -> None:
    """Each call looks for the key first, as the Editor does, then creates."""
    extra: dict[str, Any] = {"owner": "alice", "admission": roomy()} if admitted else {}
    prints = [f"v1:{i:064x}" for i in range(20)]

    async def ask(store: Store, fingerprint: str) -> TaskRecord:
        found = await store.find_by_key("once", fingerprint=fingerprint)
        return found if found is not None else await keyed(store, "once", fingerprint, **extra)

    outcomes = await asyncio.gather(
        *(ask([store, twin][i % 2], p) for i, p in enumerate(prints)), return_exceptions=True
    )
    made = [o for o in outcomes if isinstance(o, TaskRecord)]
    conflicts = [o for o in outcomes if isinstance(o, IdempotencyConflict)]
    assert len(made) == 1 and len(conflicts) == 19, outcomes
    assert all(c.details["task_id"] == made[0].id for c in conflicts)
    winner = prints[outcomes.index(made[0])]
    found = await twin.find_by_key("once", fingerprint=winner)
    assert found is not None and found.id == made[0].id
    assert [r.id for r in await store.list()] == [made[0].id]


async def test_twenty_calls_at_once_with_an_expired_key_make_one_new_task(
    store: Store, twin: Store
) -> None:
    old = await keyed(store, "k", created_at=T0)
    made = await asyncio.gather(
        *(keyed(s, "k", B, created_at=T0 + 99, keys_since=T0 + 1) for s in [store, twin] * 10)
    )
    assert len({r.id for r in made}) == 1 and made[0].id != old.id
    assert len(await store.list()) == 2
    found = await store.find_by_key("k")
    assert found is not None and found.id == made[0].id
