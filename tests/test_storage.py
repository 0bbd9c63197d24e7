"""Storage that never surprises: the size cap held on write (defect 7), a full disk reported
as that with nothing left behind (defect 8), a store checked usable at start.

The full disks are real: small tmpfs mounts (the optional part ``tmpfs``: root, as in CI).
Where a test needs a fault no filesystem gives on demand, it is injected where the blob
store meets the OS (its ``open``), and says so.
"""

from __future__ import annotations

import errno
import io
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from mcp import Client
from PIL import Image

from server.__main__ import main as mcp_main
from server.app import build_server
from tests.chaos.helpers import report_figures
from tests.conftest import data_uri
from tests.optional import require
from tools import media
from tools.config import Settings, load_settings
from tools.errors import ConfigError, StorageError, StorageFull
from tools.models import EditRequest, TaskStatus
from tools.service import Editor
from tools.store import FileBlobStore, blob_key, check_usable
from tools.store import blobs as blobs_module

MB = 1024 * 1024


def store_settings(tmp_path: Path, store: str = "") -> Settings:
    """Settings whose [store] table has ``store`` besides a database and folder here."""
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\npath = "retouch.db"\nresults_dir = "results"\n{store}'
        "[worker]\nidle_poll_s = 0.05\n"
    )
    return load_settings(config)


def noise_png(seed: int, side: int) -> bytes:
    """A PNG of about side² × 3 bytes that no two seeds share (noise does not compress)."""
    raw = random.Random(seed).randbytes(side * side * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), raw).save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.tmp")]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """``small_disk(kib, name)``: a folder on a tmpfs of that size, unmounted after."""
    require("tmpfs")
    mounted: list[Path] = []

    def mount(kib: int, name: str = "disk", *options: str) -> Path:
        where = tmp_path / name
        where.mkdir()
        opts = ",".join([f"size={kib}k", *options])
        subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], check=True)
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False)


# ---- the size cap, held on write ----------------------------------------------------------


async def test_twenty_edits_of_large_images_stay_under_the_cap_on_disk(tmp_path: Path) -> None:
    """Defect 7: store.max_results_mb = 20, then 20 edits of distinct 2.7 MB images left
    108 MB on disk: the cap was applied at start and then hourly."""
    settings = store_settings(tmp_path, "max_results_mb = 20\n")
    results = settings.store.results_dir
    tasks = []
    async with Editor(settings) as editor:
        for seed in range(20):
            image = noise_png(seed, 950)
            assert 2_600_000 < len(image) < 2_800_000  # 2.7 MB
            request = EditRequest(
                images=[data_uri(image)], function="adjust", prompt="flip horizontal"
            )
            task = await editor.edit_image(request, wait_seconds=60)
            assert task.status == TaskStatus.succeeded, task.error
            tasks.append(task.id)
            assert on_disk(results) <= 20 * MB, f"after {seed + 1} edits"
        assert await editor.store.stored_bytes() <= 20 * MB
        newest = await editor.check_task(tasks[-1])
        assert (await editor.result(newest.id, 0, newest))[0]  # the newest stay whole
        kept = {t.id for t in await editor.list_tasks(limit=100)}
    assert tasks[0] not in kept and tasks[-1] in kept  # the oldest finished went first


async def test_a_new_input_that_cannot_fit_is_refused_as_storage_full(tmp_path: Path) -> None:
    settings = store_settings(tmp_path, "max_results_mb = 3\n")
    async with Editor(settings, run_worker=False) as editor:  # tasks stay queued
        for seed in range(2):
            await editor.edit_image(
                EditRequest(images=[data_uri(noise_png(seed, 600))], function="lineart")
            )
        with pytest.raises(StorageFull, match=r"^storage full: the store keeps 2\.1 MB of its 3"):
            await editor.edit_image(
                EditRequest(images=[data_uri(noise_png(9, 600))], function="lineart")
            )
        assert len(await editor.list_tasks()) == 2


async def test_one_owner_cannot_take_the_whole_store(tmp_path: Path) -> None:
    settings = store_settings(tmp_path, "max_results_mb = 4\nowner_share = 0.5\n")
    async with Editor(settings, run_worker=False) as editor:
        request = EditRequest(images=[data_uri(noise_png(1, 600))], function="lineart")
        await editor.edit_image(request, owner="ann")
        with pytest.raises(StorageFull, match=r"^storage full for ann"):
            await editor.edit_image(
                EditRequest(images=[data_uri(noise_png(2, 600))], function="lineart"),
                owner="ann",
            )
        await editor.edit_image(
            EditRequest(images=[data_uri(noise_png(3, 600))], function="lineart"), owner="bob"
        )


# ---- a full disk ---------------------------------------------------------------------------


def disk_settings(tmp_path: Path, results: Path, db: Path | None = None) -> Settings:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\npath = "{db or tmp_path / "retouch.db"}"\nresults_dir = "{results}"\n'
        "[worker]\nidle_poll_s = 0.05\n"
    )
    return load_settings(config)


async def test_a_full_results_folder_is_reported_as_that_with_nothing_left_behind(
    tmp_path: Path, small_disk: Callable[..., Path], request: pytest.FixtureRequest
) -> None:
    """Defect 8: with the results folder full the client saw ``Error executing tool
    edit_image`` and no reason, and partial *.tmp files stayed."""
    disk = small_disk(1024)  # 1 MiB
    settings = disk_settings(tmp_path, disk)
    image = noise_png(1, 700)  # 1.5 MB
    async with Client(build_server(settings)) as client:
        started = time.monotonic()
        answer = await client.call_tool(
            "edit_image", {"images": [data_uri(image)], "function": "lineart"}
        )
        took = time.monotonic() - started
        listed = await client.call_tool("list_tasks", {})
    text = answer.content[0].text  # type: ignore[union-attr]
    assert answer.is_error
    assert f"storage full: no space left for images in {disk}" in text, text
    assert took < 5, f"the full disk took {took:.1f} s to report"
    report_figures(
        request.config,
        f"full disk: a 1.5 MB input to a full 1 MiB results folder refused as storage full "
        f"in {took * 1000:.0f} ms (call to the client's error), nothing left behind",
    )
    assert leftovers(disk) == []
    assert listed.structured_content["tasks"] == []  # nothing half stored


async def test_a_result_that_does_not_fit_fails_its_task_saying_why(
    tmp_path: Path, small_disk: Callable[..., Path]
) -> None:
    disk = small_disk(1024)
    settings = disk_settings(tmp_path, disk)
    async with Editor(settings) as editor:
        small = noise_png(2, 300)  # 270 kB in; 4 × the pixels out
        request = EditRequest(
            images=[data_uri(small)],
            function="super_resolution",
            upscale_factor=2,
            options={"method": "lanczos"},
        )
        task = await editor.edit_image(request, wait_seconds=60)
    assert task.status == TaskStatus.failed
    assert task.error is not None and task.error.code == "storage_full"
    # Task records show no server paths: the folder by its last part.
    assert f"storage full: no space left for images in …/{disk.name}" in task.error.message
    assert leftovers(disk) == []


async def test_a_full_database_is_reported_as_that(
    tmp_path: Path, small_disk: Callable[..., Path]
) -> None:
    disk = small_disk(4096)
    settings = disk_settings(tmp_path, tmp_path / "images", db=disk / "retouch.db")
    async with Editor(settings, run_worker=False) as editor:
        with pytest.raises(OSError) as filled, open(disk / "filler", "wb") as fh:
            while True:  # the rest of the disk
                fh.write(b"\0" * 4096)
                fh.flush()
        assert filled.value.errno == errno.ENOSPC
        request = EditRequest(images=[data_uri(noise_png(3, 40))], function="adjust")
        with pytest.raises(StorageFull) as err:
            for i in range(200):  # until the database's free pages run out
                await editor.edit_image(request.model_copy(update={"prompt": f"{'x' * 30000}{i}"}))
    assert err.value.message == (
        f"storage full: the database {disk / 'retouch.db'} cannot grow (no space left)"
    )


def test_an_unwritable_store_is_found_at_start(
    tmp_path: Path,
    small_disk: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    disk = small_disk(64, "readonly", "ro")
    settings = disk_settings(tmp_path, disk / "results")
    with pytest.raises(ConfigError, match=r"^store\.results_dir: cannot write in .*Read-only"):
        check_usable(settings.store)
    with pytest.raises(SystemExit) as exit_:
        mcp_main(["--config", settings.source])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("retouch-mcp: store.results_dir: cannot write in") and "\n" not in (
        err.strip()
    )


# ---- faults injected where the blob store meets the OS -------------------------------------


class HalfWritten(io.FileIO):
    """A file whose write stores half its bytes, then fails as a full (or broken) disk."""

    failure = errno.ENOSPC

    def write(self, data: bytes) -> int:  # type: ignore[override]
        super().write(bytes(data)[: len(data) // 2])
        raise OSError(self.failure, "injected")


@pytest.mark.parametrize(
    ("failure", "error", "message"),
    [
        (errno.ENOSPC, StorageFull, "storage full: no space left for images in"),
        (errno.EDQUOT, StorageFull, "storage full: no space left for images in"),
        (errno.EIO, StorageError, "cannot write images in"),
    ],
)
async def test_a_failed_write_is_a_clear_error_and_leaves_no_partial_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failure: int,
    error: type[StorageError],
    message: str,
) -> None:
    store = FileBlobStore(tmp_path / "images")
    monkeypatch.setattr(HalfWritten, "failure", failure)
    monkeypatch.setattr(blobs_module, "open", HalfWritten, raising=False)
    image = media.inspect(noise_png(4, 100), media.MediaPolicy())
    key = blob_key("a" * 64, image.mime_type)
    with pytest.raises(error) as err:
        await store.put(key, image.data)
    assert type(err.value) is error
    assert err.value.message.startswith(f"{message} {tmp_path / 'images'}")
    assert leftovers(tmp_path) == [] and not await store.exists(key)


def test_a_full_disk_is_no_outage() -> None:
    """A full disk is StorageFull, never "store unavailable, try again" (an outage): not as
    the raw error, nor as the StorageFull raised while handling it."""
    from tools.store.outages import is_outage

    assert not is_outage(OSError(errno.ENOSPC, "No space left on device"))
    assert not is_outage(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_outage(ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    try:
        try:
            raise OSError(errno.ECONNRESET, "reset")
        except OSError:
            raise StorageFull("storage full: test") from None
    except StorageFull as exc:
        assert not is_outage(exc)  # classified already
