"""Bounded resources: concurrent downloads, bytes read, decoded pixels, local-engine time,
result disk usage, and SQLite writers that never see "database is locked"."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from starlette.requests import Request
from starlette.responses import Response

from tests.chaos.helpers import png_bomb
from tests.conftest import MakeSettings, data_uri, png, sample
from tests.fakes.http import FakeServer, Recorded
from tests.test_mcp import ROOT, env
from tools import media
from tools.errors import EngineError, ImageError, InvalidParameter
from tools.models import EditRequest, ImageFailure, ResultImage, TaskStatus
from tools.service import Editor
from tools.store import Store
from tools.vendors.base import Job, OutputImage
from tools.vendors.local import LocalSettings, LocalVendor
from tools.worker import fetch_result

# ---- downloads ---------------------------------------------------------------------------


@pytest.fixture
def slow_host() -> Iterator[tuple[FakeServer, dict[str, int]]]:
    """Serves a PNG after 0.2 s and counts how many requests it holds at once."""
    server = FakeServer()
    counts = {"now": 0, "max": 0, "total": 0}
    lock = threading.Lock()
    photo = png((64, 48))

    async def image(request: Request, rec: Recorded) -> Response:
        with lock:
            counts["now"] += 1
            counts["total"] += 1
            counts["max"] = max(counts["max"], counts["now"])
        await server.sleep(0.2)
        with lock:
            counts["now"] -= 1
        return Response(photo, media_type="image/png")

    server.add_route("/img/{n}", "image", ["GET"], image)
    with server:
        yield server, counts


async def test_concurrent_downloads_are_limited(
    make_settings: MakeSettings, slow_host: tuple[FakeServer, dict[str, int]]
) -> None:
    server, counts = slow_host
    settings = make_settings(
        '[media]\nmax_concurrent_downloads = 3\nallow_networks = ["127.0.0.0/8"]\n'
    )

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    async with Editor(settings, resolver=resolve, run_worker=False) as editor:
        tasks = await asyncio.gather(
            *(
                editor.edit_image(
                    EditRequest(
                        images=[f"http://photos.test:{server.port}/img/{i}"], function="lineart"
                    )
                )
                for i in range(12)
            )
        )
    assert len(tasks) == 12 and counts["total"] == 12
    assert counts["max"] <= 3


async def test_bytes_are_capped_for_every_source(
    make_settings: MakeSettings, tmp_path: Path
) -> None:
    settings = make_settings("[media]\nmax_bytes = 100000\n")
    big = sample("chelsea.png")  # ~ 390 kB
    assert len(big) > 100_000
    path = tmp_path / "big.png"
    path.write_bytes(big)
    async with Editor(settings, allow_local_paths=True, run_worker=False) as editor:
        for source in (data_uri(big), str(path)):
            with pytest.raises(ImageError, match="limit"):
                await editor.edit_image(EditRequest(images=[source], function="lineart"))
        # A data: URI is measured before it is decoded.
        huge = "data:image/png;base64," + "A" * 10_000_000
        with pytest.raises(ImageError, match="larger than"):
            media.decode_data_uri(huge, editor.policy)


async def test_decoded_pixels_are_capped(make_settings: MakeSettings) -> None:
    settings = make_settings("[media]\nmax_pixels = 10000\n")
    async with Editor(settings, run_worker=False) as editor:
        await editor.edit_image(EditRequest(images=[data_uri(png((100, 100)))], function="lineart"))
        with pytest.raises(ImageError, match="decompression bombs"):
            await editor.edit_image(
                EditRequest(images=[data_uri(png((101, 100)))], function="lineart")
            )


async def test_vendor_results_are_capped_too() -> None:
    # A vendor answering a 30000×30000 image (in 100 bytes) is refused before decoding.
    bomb = png_bomb(30_000, 30_000)
    with pytest.raises(ImageError, match="decompression bombs"):
        await fetch_result(OutputImage(data=bomb), None, "vendor")  # type: ignore[arg-type]


# ---- local-engine time -------------------------------------------------------------------


def children_running(marker: str) -> list[int]:
    """Child processes of this one whose command line contains ``marker``."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == os.getpid() and marker in cmdline:
            found.append(int(proc.name))
    return found


def slow_input() -> media.InputImage:
    """16 MP: an oil painting of it takes many seconds on any CPU."""
    photo = Image.open(io.BytesIO(sample("chelsea.png"))).convert("RGB").resize((4000, 4000))
    return media.encode(photo, "JPEG", 85)


async def test_a_local_operation_past_its_time_limit_is_killed() -> None:
    vendor = LocalVendor("local", LocalSettings(timeout_s=1), None)  # type: ignore[arg-type]
    job = Job(task_id="t", function="stylization_all", prompt="oil painting", images=[slow_input()])
    with pytest.raises(EngineError, match=r"past its 1 s limit \(local.timeout_s\)"):
        await vendor.submit(job)
    assert children_running("tools.vendors.local") == []


async def test_a_time_limited_operation_gives_the_same_image() -> None:
    image = media.inspect(sample("coffee.png"), media.MediaPolicy())
    job = Job(task_id="t", function="lineart", prompt="", images=[image])
    inline = await LocalVendor("local", LocalSettings(), None).submit(job)  # type: ignore[arg-type]
    isolated = await LocalVendor(
        "local",
        LocalSettings(timeout_s=60),
        None,  # type: ignore[arg-type]
    ).submit(job)
    assert inline.images[0].data == isolated.images[0].data
    assert inline.notes == isolated.notes
    # An error raised in the child comes back typed, with its message.
    bad = Job(task_id="t", function="adjust", prompt="crop 1000 1000 2000 2000", images=[image])
    isolated_vendor = LocalVendor("local", LocalSettings(timeout_s=60), None)  # type: ignore[arg-type]
    with pytest.raises(InvalidParameter, match="does not fit the 600×400 image"):
        await isolated_vendor.submit(bad)


async def test_a_slow_local_task_fails_and_frees_its_slot(make_settings: MakeSettings) -> None:
    settings = make_settings("[vendors.local]\nmax_concurrent = 1\ntimeout_s = 1\n")
    slow = slow_input()
    async with Editor(settings) as editor:
        stuck = await editor.edit_image(
            EditRequest(images=[slow.data_uri()], function="stylization_all", prompt="oil painting")
        )
        quick = await editor.edit_image(
            EditRequest(images=[data_uri(png((64, 48)))], function="adjust", prompt="rotate 90")
        )
        stuck = await editor.check_task(stuck.id, wait_seconds=60)
        quick = await editor.check_task(quick.id, wait_seconds=60)
    assert stuck.status == TaskStatus.failed and stuck.error is not None
    assert stuck.error.code == "engine_error" and "limit" in stuck.error.message
    # The slot was freed: the next task ran. (Under heavy load even its child process may
    # pass the 1 s limit; then it too ends with the limit error, never stuck.)
    assert quick.status == TaskStatus.succeeded or (
        quick.error is not None and "limit" in quick.error.message
    )
    assert children_running("tools.vendors.local") == []


# ---- result disk usage -------------------------------------------------------------------


async def open_store(tmp_path: Path) -> Store:
    return await Store.open(tmp_path / "r.db", tmp_path / "files")


async def finished_task(
    store: Store, input_png: bytes, result_png: bytes, finished_at: float
) -> str:
    inp = await store.put_blob(media.inspect(input_png, media.MediaPolicy()))
    record = await store.create_task(
        function="adjust", vendor="local", prompt="", n=1, request={}, inputs=[inp], mask=None
    )
    await store.claim("local", "w", capacity=100, lease_s=30)
    image = media.inspect(result_png, media.MediaPolicy())
    sha = await store.put_blob(image)
    result = ResultImage(
        index=0,
        uri=f"retouch://tasks/{record.id}/0",
        sha256=sha,
        mime_type=image.mime_type,
        width=image.width,
        height=image.height,
        bytes=len(image.data),
    )
    await store.finish(record.id, "w", TaskStatus.succeeded, results=[result])
    await store.db.execute(
        "UPDATE tasks SET finished_at = ? WHERE id = ?", (finished_at, record.id)
    )
    return record.id


def noisy_png(side: int = 160) -> bytes:
    """A PNG of random pixels: every call a different image of about side² × 3 bytes."""
    image = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def disk_bytes(files: Path) -> int:
    return sum(p.stat().st_size for p in files.rglob("*") if p.is_file())


async def test_retention_forgets_old_tasks_but_keeps_shared_and_unfinished_files(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path)
    shared = noisy_png()
    old = await finished_task(store, shared, noisy_png(), finished_at=time.time() - 10 * 86400)
    recent = await finished_task(store, shared, noisy_png(), finished_at=time.time())
    pending = await store.put_blob(media.inspect(noisy_png(), media.MediaPolicy()))
    await store.create_task(
        function="adjust", vendor="local", prompt="", n=1, request={}, inputs=[pending], mask=None
    )
    assert await store.cleanup(retention_days=7) == 1  # the old task's result only
    with pytest.raises(Exception, match="no task"):
        await store.get(old)
    assert (await store.get(recent)).status == "succeeded"
    assert (await store.result_path(recent, 0)).is_file()
    for sha in [*await store.task_blobs(recent, "input"), pending]:
        assert (await store.read_blob(sha)).data
    await store.close()


async def test_size_cap_evicts_the_oldest_finished_tasks_first(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    shared = noisy_png()  # one input shared by every task: counted once
    now = time.time()
    ids = [
        await finished_task(store, shared, noisy_png(), finished_at=now - 100 + i)
        for i in range(1, 9)
    ]
    sizes = {
        task_id: (await store.get(task_id)).results[0]["bytes"] for task_id in ids
    }  # room for the shared input and the four newest results:
    cap = len(shared) + sum(sizes[i] for i in ids[4:])
    removed = await store.cleanup(retention_days=7, max_bytes=cap)
    assert removed == 4
    assert disk_bytes(tmp_path / "files") <= cap
    kept = [i for i in ids if await exists(store, i)]
    assert kept == ids[4:]  # the newest survive
    await store.close()


async def exists(store: Store, task_id: str) -> bool:
    try:
        await store.get(task_id)
    except Exception:
        return False
    return True


async def test_cleanup_does_not_delete_an_image_about_to_be_linked(tmp_path: Path) -> None:
    # Editor.start runs a clean-up at once; the first edit_image stores its input, then the
    # task. A clean-up in between used to delete the input (FOREIGN KEY failure).
    store = await open_store(tmp_path)
    sha = await store.put_blob(media.inspect(noisy_png(), media.MediaPolicy()))
    assert await store.cleanup(retention_days=0) == 0
    record = await store.create_task(
        function="adjust", vendor="local", prompt="", n=1, request={}, inputs=[sha], mask=None
    )
    assert (await store.read_blob(sha)).data
    # Results too: stored one by one, linked when the task finishes.
    await store.claim("local", "w", capacity=1, lease_s=30)
    image = media.inspect(noisy_png(), media.MediaPolicy())
    result_sha = await store.put_blob(image)
    await store.cleanup(retention_days=0)
    result = ResultImage(
        index=0,
        uri=f"retouch://tasks/{record.id}/0",
        sha256=result_sha,
        mime_type=image.mime_type,
        width=image.width,
        height=image.height,
        bytes=len(image.data),
    )
    assert await store.finish(
        record.id,
        "w",
        TaskStatus.succeeded,
        results=[result],
        failures=[ImageFailure(index=1, code="x", message="y")],
    )
    assert (await store.result_path(record.id, 0)).is_file()
    await store.close()


async def test_cleanup_removes_temp_files_a_crash_left(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    folder = tmp_path / "files" / "ab"
    folder.mkdir(parents=True)
    stale, fresh = folder / f"{'ab' * 32}.png.123.tmp", folder / f"{'ab' * 32}.png.456.tmp"
    for tmp in (stale, fresh):
        tmp.write_bytes(b"half an image")
    os.utime(stale, (time.time() - 2 * 3600, time.time() - 2 * 3600))
    assert await store.cleanup(retention_days=7) == 1
    assert not stale.exists() and fresh.exists()  # a writer may still be busy with it
    await store.close()


# ---- SQLite under concurrent writers -----------------------------------------------------

WRITER = """
import asyncio, sys, time
from tools.store import Store
from tools.models import TaskStatus

async def main(db, files, name, count):
    store = await Store.open(db, files)
    for i in range(count):
        record = await store.create_task(function="adjust", vendor=name, prompt=str(i), n=1,
                                         request={}, inputs=[], mask=None)
        claimed = await store.claim(name, name, capacity=1, lease_s=30)
        assert [t.id for t in claimed] == [record.id], claimed
        assert await store.update(record.id, name, progress=f"step {i}", polls=i)
        assert await store.finish(record.id, name, TaskStatus.succeeded)
    await store.close()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


def test_processes_writing_one_database_never_see_it_locked(tmp_path: Path) -> None:
    db, files = tmp_path / "shared.db", tmp_path / "files"  # a fresh file: migrations race too
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), str(files), f"p{i}", "150"],
            env=env(),
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert not any("locked" in out for out in outputs)

    async def count() -> int:
        store = await Store.open(db, files)
        rows = await store.db.execute_fetchall(
            "SELECT COUNT(*) FROM tasks WHERE status = 'succeeded'"
        )
        await store.close()
        return int(rows[0][0])

    assert asyncio.run(count()) == 450


async def test_two_stores_in_one_process_write_concurrently(tmp_path: Path) -> None:
    a, b = await open_store(tmp_path), await open_store(tmp_path)

    async def writer(store: Store, name: str) -> None:
        for i in range(100):
            record = await store.create_task(
                function="adjust", vendor=name, prompt=str(i), n=1, request={}, inputs=[], mask=None
            )
            await store.claim(name, name, capacity=5, lease_s=30)
            await store.update(record.id, name, progress="x")
            await store.finish(record.id, name, TaskStatus.succeeded)

    await asyncio.gather(writer(a, "a"), writer(b, "b"), writer(a, "c"), writer(b, "d"))
    rows = await a.db.execute_fetchall("SELECT status, COUNT(*) FROM tasks GROUP BY status")
    assert [tuple(r) for r in rows] == [("succeeded", 400)]
    await a.close()
    await b.close()
