"""The SQLite store with files on disk: migrations, WAL, the files themselves.

What every backend must do is in tests/contract/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import png
from tests.contract.test_task_store import new_task
from tools import media
from tools.errors import NotFound
from tools.models import ResultImage, TaskStatus
from tools.store import FileBlobStore, blob_key
from tools.store.migrations import CORE as MIGRATIONS
from tools.store.sqlite import SQLiteStore


async def open_store(tmp_path: Path) -> SQLiteStore:
    return await SQLiteStore.open(tmp_path / "t.db", tmp_path / "files")


def files(store: SQLiteStore) -> FileBlobStore:
    assert isinstance(store.blobs, FileBlobStore)
    return store.blobs


async def result_path(store: SQLiteStore, task_id: str, index: int) -> Path:
    """The file of a task's result, once the store has read it back whole."""
    await store.read_result(task_id, index)
    [result] = [r for r in (await store.get(task_id)).results if r["index"] == index]
    return files(store).path(blob_key(result["sha256"], result["mime_type"]))


async def test_migrations_apply_once(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    await store.close()
    store = await open_store(tmp_path)
    rows = await store.db.execute_fetchall("SELECT name FROM _migrations ORDER BY name")
    assert [r[0] for r in rows] == [m.__name__ for m in MIGRATIONS]
    mode = await store.db.execute_fetchall("PRAGMA journal_mode")
    assert mode[0][0] == "wal"
    await store.close()


async def succeeded_task(store: SQLiteStore) -> tuple[str, media.InputImage, Path]:
    """A task that succeeded with one 10×10 result: its id, the result, the result's file."""
    task_id = await new_task(store)
    await store.claim("local", "w", capacity=1, lease_s=30)
    result = media.inspect(png((10, 10), (1, 2, 3)), media.MediaPolicy())
    sha = await store.put_blob(result)
    item = ResultImage(
        index=0,
        uri=f"retouch://tasks/{task_id}/0",
        sha256=sha,
        mime_type=result.mime_type,
        width=10,
        height=10,
        bytes=len(result.data),
    )
    await store.finish(task_id, "w", TaskStatus.succeeded, results=[item])
    return task_id, result, files(store).path(blob_key(sha, result.mime_type))


async def test_cleanup_forgets_old_tasks_and_their_files(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    task_id, _, path = await succeeded_task(store)
    assert await result_path(store, task_id, 0) == path
    assert await store.cleanup(retention_days=1) == 0  # still within retention
    await store.db.execute("UPDATE tasks SET finished_at = 1 WHERE id = ?", (task_id,))
    assert await store.cleanup(retention_days=1) == 2  # input and result
    assert not path.exists()
    await store.close()


async def test_a_file_cut_short_is_reported_lost_and_healed_by_the_next_put(
    tmp_path: Path,
) -> None:
    # Blob files are not fsynced (the database commits with synchronous=NORMAL): after a
    # power cut a file may be shorter than recorded. It is refused, never served damaged.
    store = await open_store(tmp_path)
    task_id, result, path = await succeeded_task(store)
    sha = path.stem
    path.write_bytes(result.data[:20])
    with pytest.raises(NotFound, match="damaged"):
        await result_path(store, task_id, 0)
    with pytest.raises(NotFound, match="damaged"):
        await store.read_blob(sha)
    assert await store.put_blob(result) == sha  # the same image stored again mends it
    assert await result_path(store, task_id, 0) == path
    assert (await store.read_blob(sha)).data == result.data
    await store.close()


async def test_two_processes_on_one_file_keep_each_others_blobs_until_linked(
    tmp_path: Path,
) -> None:
    """A ``--no-worker`` front end and a worker on one SQLite file (two stores, as two
    processes have): each one's clean-up leaves the other's just-stored, not yet linked blob
    alone (its ``pending`` mark is in the database), and takes it once its grace is over."""
    from tests.contract.test_task_store import result_of

    front, worker = await open_store(tmp_path), await open_store(tmp_path)
    try:
        photo = media.inspect(png(color=(10, 120, 30)), media.MediaPolicy())
        sha = await front.put_blob(photo)  # the front end's input, not linked yet
        assert await worker.cleanup(7) == 0  # the worker's janitor, meanwhile
        assert (await front.read_blob(sha)).data == photo.data
        task = await front.create_task(
            function="adjust",
            vendor="local",
            prompt="rotate 90",
            n=1,
            request={"images": ["x"]},
            inputs=[sha],
            mask=None,
        )
        [held] = await worker.claim("local", "w1", capacity=1, lease_s=30)
        assert held.id == task.id and await worker.read_blob(sha)
        result = await result_of(worker, task.id, seed=7)  # the worker's result, not linked
        assert await front.cleanup(7) == 0  # the front end's janitor, meanwhile
        assert await worker.finish(task.id, "w1", TaskStatus.succeeded, results=[result])
        assert (await front.read_result(task.id, 0))[1] == "image/png"
        rows = await front.db.execute_fetchall("SELECT pending FROM blobs")
        assert [r[0] for r in rows] == [0, 0]  # linked: nothing pending any more

        # A put nobody links (its process died): kept within its grace, then cleaned up.
        lost = await worker.put_blob(media.inspect(png(color=(1, 2, 3)), media.MediaPolicy()))
        assert await front.cleanup(7) == 0
        await front.execute("UPDATE blobs SET grace_until = 0 WHERE sha256 = ?", (lost,))
        assert await front.cleanup(7) == 1
        with pytest.raises(NotFound):
            await worker.read_blob(lost)
        assert not files(front).path(blob_key(lost, "image/png")).exists()
        assert (await front.read_blob(sha)).data == photo.data  # the linked ones stay
    finally:
        await front.close()
        await worker.close()


async def test_claims_read_only_the_tasks_they_may_take(tmp_path: Path) -> None:
    """Both claims find a vendor's queued tasks and its lapsed leases through the
    ``tasks_claim`` index: never by walking the vendor's tasks in ``seq`` order, which reads
    every ended task the store keeps (6 ms a claim, under the write lock, with 50 000)."""
    from tools.store.sqlite import CLAIM, CLAIM_TASK

    store = await open_store(tmp_path)
    try:
        plans = {}
        for name, sql, params in (
            ("claim", CLAIM, ("w", 1.0, 1.0, 1.0, "local", "local", 1.0, 2, "local", 1.0)),
            ("claim_task", CLAIM_TASK, ("w", 1.0, 1.0, 1.0, "x" * 32, 1.0, 1.0, 2)),
        ):
            rows = await store.db.execute_fetchall(f"EXPLAIN QUERY PLAN {sql}", params)
            plans[name] = [str(r[3]) for r in rows]
        for name, plan in plans.items():
            reads = [line for line in plan if line.startswith(("SEARCH", "SCAN tasks"))]
            assert len(reads) >= 3, (name, plan)
            for line in reads:
                assert line.startswith("SEARCH"), (name, plan)
                assert "tasks_claim" in line or "autoindex_tasks" in line, (name, plan)
    finally:
        await store.close()


async def test_a_task_claimed_as_it_was_stored_for_a_caller_gone_meanwhile_is_handed_back(
    tmp_path: Path,
) -> None:
    """A caller cancelled while its task was stored and claimed (committed, but not yet
    returned) never starts it: the claim is handed back at once, for the claim loop to take,
    instead of held until the lease runs out."""
    import asyncio

    from tools.store.base import Claim

    store = await open_store(tmp_path)
    try:
        committed, go_on = asyncio.Event(), asyncio.Event()
        on_thread = store._on_thread

        async def held_back(work):  # type: ignore[no-untyped-def]
            out = await on_thread(work)
            committed.set()
            await go_on.wait()  # the caller is cancelled here, after the commit
            return out

        store._on_thread = held_back  # type: ignore[method-assign]
        call = asyncio.create_task(new_task(store, claim=Claim("w", 5, 30)))
        await committed.wait()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        store._on_thread = on_thread  # type: ignore[method-assign]
        go_on.set()
        for _ in range(200):
            [task] = await store.list()
            if task.lease_owner is None:
                break
            await asyncio.sleep(0.01)
        assert (task.status, task.lease_owner, task.lease_until) == ("running", None, 0)
        [taken] = await store.claim("local", "w2", capacity=5, lease_s=30)
        assert taken.id == task.id and taken.attempts == 2
    finally:
        await store.close()


async def test_opening_a_file_another_process_is_opening_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite answers some lock conflicts of processes opening one new file together
    ("database is locked", at once, without the busy timeout): the open is tried again,
    and finishes the migration; any other error is not."""
    import sqlite3

    from tools.store import sqlite as backend

    real = backend.migrate
    calls: list[int] = []

    async def locked_twice(db: object, steps: object) -> list[str]:
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return await real(db, steps)  # type: ignore[arg-type]

    monkeypatch.setattr(backend, "migrate", locked_twice)
    store = await SQLiteStore.open(tmp_path / "r.db", tmp_path / "results")
    try:
        assert len(calls) == 3
        assert await store.db.execute_fetchall("SELECT 1 FROM _migrations") != []
    finally:
        await store.close()

    async def broken(db: object, steps: object) -> list[str]:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(backend, "migrate", broken)
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        await SQLiteStore.open(tmp_path / "s.db", tmp_path / "results")
