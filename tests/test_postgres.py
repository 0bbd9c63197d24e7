"""What only the PostgreSQL store does: migrations run once by whichever process comes first,
claims from several connections, task events across processes (LISTEN/NOTIFY), and
connections that come back after the database cut them; and the Editor on either backend.
The contract suite (tests/contract/) covers the rest on both. Every PostgreSQL test asks
for its database through tests/pg.py, which skips it without a server."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from tests.conftest import MakeSettings, data_uri, png
from tests.contract.test_task_store import new_task
from tests.pg import empty_url, fresh_url
from tools import service
from tools.config import Settings
from tools.models import EditRequest, TaskStatus
from tools.notifier import TaskEvent
from tools.service import Editor
from tools.store import FileBlobStore
from tools.store.pg_migrations import CORE, migrate
from tools.store.postgres import PostgresStore

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def url() -> str:
    return await empty_url()


@pytest.fixture
async def stores(url: str, tmp_path: Path) -> AsyncIterator[list[PostgresStore]]:
    """Two stores on one database, as two processes would have."""
    opened = [
        await PostgresStore.open(url, FileBlobStore(tmp_path / "files"), max_size=4)
        for _ in range(2)
    ]
    yield opened
    for store in opened:
        await store.close()


async def backend_pid(url: str, pid: int) -> None:
    """End the database session ``pid`` as an administrator (or a restart) would."""
    db = await asyncpg.connect(url)
    try:
        assert await db.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await db.close()


# ---- migrations ----------------------------------------------------------------------------


async def test_migrations_apply_once() -> None:
    db = await asyncpg.connect(await fresh_url())
    try:
        assert await migrate(db, CORE) == [step.__name__ for step in CORE]
        assert await migrate(db, CORE) == []
        rows = await db.fetch("SELECT name FROM _migrations ORDER BY name")
        assert [r[0] for r in rows] == sorted(step.__name__ for step in CORE)
    finally:
        await db.close()


OPEN_AT = """
import asyncio, sys, time
from tools.store import FileBlobStore
from tools.store.postgres import PostgresStore

async def main() -> None:
    await asyncio.sleep(float(sys.argv[2]) - time.time())  # both start at this moment
    store = await PostgresStore.open(sys.argv[1], FileBlobStore(sys.argv[3]))
    await store.close()

asyncio.run(main())
"""


async def test_two_processes_starting_at_once_migrate_once(tmp_path: Path) -> None:
    url = await fresh_url()
    at = str(time.time() + 1.5)  # after both interpreters have started
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", OPEN_AT, url, at, str(tmp_path), cwd=ROOT
        )
        for _ in range(2)
    ]
    assert [await p.wait() for p in procs] == [0, 0]
    db = await asyncpg.connect(url)
    try:
        rows = await db.fetch("SELECT name, count(*) FROM _migrations GROUP BY name")
        tables = await db.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema()"
        )
    finally:
        await db.close()
    assert sorted(r[0] for r in rows) == sorted(step.__name__ for step in CORE)
    assert {r[1] for r in rows} == {1}
    # _migrations, tasks, blobs, task_blobs, uploads, rate_turns, users, budget_overrides,
    # task_steps, rate_waits, console_sessions, idempotency_requests, task_tallies, task_ended
    assert tables == 14


# ---- claims --------------------------------------------------------------------------------


async def test_claims_skip_a_task_another_connection_holds(
    stores: list[PostgresStore], url: str
) -> None:
    first, second = [await new_task(stores[0]) for _ in range(2)]
    db = await asyncpg.connect(url)
    try:
        async with db.transaction():  # another statement is changing the oldest task
            await db.execute("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE", first)
            async with asyncio.timeout(5):  # skipped, not waited for
                taken = await stores[1].claim("local", "w", capacity=5, lease_s=30)
            assert [t.id for t in taken] == [second]
    finally:
        await db.close()
    [later] = await stores[1].claim("local", "w", capacity=5, lease_s=30)
    assert later.id == first


async def test_claims_from_two_connections_never_hand_a_task_to_both(
    stores: list[PostgresStore],
) -> None:
    ids = {await new_task(stores[0]) for _ in range(40)}
    taken: list[str] = []

    async def worker(store: PostgresStore, name: str) -> None:
        while len(taken) < len(ids):
            batch = await store.claim("local", name, capacity=40, lease_s=30)
            taken.extend(t.id for t in batch)
            for task in batch:
                assert await store.finish(task.id, name, TaskStatus.succeeded)
            await asyncio.sleep(0)

    async with asyncio.timeout(30):
        await asyncio.gather(*(worker(stores[i % 2], f"w{i}") for i in range(6)))
    assert sorted(taken) == sorted(ids)


async def test_capacity_holds_across_connections(stores: list[PostgresStore]) -> None:
    for _ in range(12):
        await new_task(stores[0])
    held: list[str] = []
    for _ in range(3):
        batches = await asyncio.gather(
            *(stores[i % 2].claim("local", f"w{i}", capacity=3, lease_s=30) for i in range(6))
        )
        held.extend(t.id for batch in batches for t in batch)
        assert len(held) == 3  # however many claim at once, never more than the capacity
    await stores[0].finish(held.pop(), None, TaskStatus.canceled)
    again = await asyncio.gather(
        *(stores[i % 2].claim("local", f"w{i}", capacity=3, lease_s=30) for i in range(6))
    )
    assert sum(len(b) for b in again) == 1


# ---- events across processes ---------------------------------------------------------------


async def heard(events: list[TaskEvent], wanted: TaskEvent, timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while wanted not in events:
            await asyncio.sleep(0.01)


async def test_changes_are_heard_by_every_store(stores: list[PostgresStore]) -> None:
    events: list[TaskEvent] = []
    await stores[1].listen(events.append)
    task_id = await new_task(stores[0])
    await heard(events, TaskEvent("queued", task_id, "local"))
    await stores[0].claim("local", "w", capacity=1, lease_s=30)
    await stores[0].renew("w", [task_id], 30)  # a lease renewal says nothing
    await stores[0].update(task_id, "w", progress="half")
    await heard(events, TaskEvent("changed", task_id, "local"))
    await stores[0].release("w")  # handed back: claimable again
    await heard(events, TaskEvent("queued", task_id, "local"))
    await stores[0].finish(task_id, None, TaskStatus.canceled)
    await heard(events, TaskEvent("ended", task_id, "local"))
    assert [e.kind for e in events] == ["queued", "changed", "queued", "ended"]


async def test_the_listener_reconnects_after_its_connection_is_cut(
    stores: list[PostgresStore], url: str
) -> None:
    events: list[TaskEvent] = []
    await stores[1].listen(events.append)
    listener = stores[1].listener
    assert listener is not None
    await backend_pid(url, listener.get_server_pid())
    await heard(events, TaskEvent("missed"))  # waiters and workers look again
    task_id = await new_task(stores[0])
    await heard(events, TaskEvent("queued", task_id, "local"))
    assert stores[1].listener is not listener


async def test_the_pool_reconnects_after_its_connections_are_cut(
    stores: list[PostgresStore], url: str
) -> None:
    task_id = await new_task(stores[0])
    db = await asyncpg.connect(url)
    try:
        cut = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await db.close()
    assert cut >= 2
    await asyncio.sleep(0.2)  # the cut reaches the client
    assert (await stores[0].get(task_id)).status == "queued"
    assert [t.id for t in await stores[1].claim("local", "w", capacity=1, lease_s=30)] == [task_id]


def pg_settings(make_settings: MakeSettings, url: str, toml: str = "") -> Settings:
    settings = make_settings(toml)
    settings.store.url = SecretStr(url)
    return settings


async def test_a_task_queued_in_one_process_starts_and_wakes_its_waiter_in_another(
    make_settings: MakeSettings, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A front end without a worker queues; a worker elsewhere whose idle poll is a minute
    starts it at once (NOTIFY), and the front end's check_task, whose own poll is a minute
    too, wakes when it ends."""
    monkeypatch.setattr(service, "WAIT_POLL_S", 60.0)
    lazy = pg_settings(make_settings, url)
    lazy.worker.idle_poll_s = 60
    async with Editor(lazy) as worker, Editor(lazy, run_worker=False) as front:
        await asyncio.sleep(0.2)  # the worker's first claim (of nothing) is behind it
        for angle in (90, 180, 270):
            request = EditRequest(
                images=[data_uri(png())], function="adjust", prompt=f"rotate {angle}"
            )
            queued = await front.edit_image(request)
            async with asyncio.timeout(10):  # without the wake-ups: 60 s
                task = await front.check_task(queued.id, wait_seconds=90)
            woke = time.time()
            assert task.status == TaskStatus.succeeded, task.error
            assert task.finished_at is not None
            # Woken by the end itself, not by check_task's poll (a minute here: a loaded
            # machine takes a while to relay the NOTIFY, never that long).
            assert woke - task.finished_at.timestamp() < 10
        assert worker.worker is not None
        # The end reaches the front end as it is written; the worker lets go of the task
        # just after (its bookkeeping, not the store's), so give it a moment.
        async with asyncio.timeout(5):
            while worker.worker.running:
                await asyncio.sleep(0.01)


# ---- the Editor on both backends -----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, make_settings: MakeSettings) -> Settings:
    if request.param == "sqlite":
        return make_settings()
    return pg_settings(make_settings, await empty_url())


async def test_the_editor_edits_cancels_and_restarts_on_either_backend(
    backend: Settings,
) -> None:
    async with Editor(backend, run_worker=False) as editor:
        request = EditRequest(images=[data_uri(png())], function="adjust", prompt="rotate 90")
        ids = [(await editor.edit_image(request, key=f"k{i}")).id for i in range(3)]
        assert (await editor.edit_image(request, key="k0")).id == ids[0]
        canceled = await editor.cancel_task(ids[2])
        assert canceled.status == TaskStatus.canceled
        # One task was being worked on by a process that then died (its lease ran out).
        [taken] = await editor.store.claim("local", "dead", capacity=1, lease_s=30)
        await editor.store.renew("dead", [taken.id], -1)
    async with Editor(backend) as editor:
        first, second = [await editor.check_task(i, wait_seconds=30) for i in ids[:2]]
        chained = await editor.edit_image(
            EditRequest(images=[first.results[0].uri], function="adjust", prompt="rotate 90"),
            wait_seconds=30,
        )
        listed = await editor.list_tasks()
        data, mime = await editor.result(chained.id, 0)
    assert (first.status, second.status, chained.status) == (TaskStatus.succeeded,) * 3
    assert (first.attempts, second.attempts) == (2, 1)
    assert (first.results[0].width, first.results[0].height) == (48, 64)
    assert (chained.results[0].width, chained.results[0].height) == (64, 48)
    assert mime == "image/png" and data.startswith(b"\x89PNG")
    assert [t.id for t in listed] == [chained.id, *reversed(ids)]
