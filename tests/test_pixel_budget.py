"""The pixel budget: decoding admitted by bytes, shared by every request of a process."""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator

import pytest
from PIL import Image

from server.app import BUSY_PREVIEW, budgeted_preview, preview_cost, task_result
from tests.conftest import MakeSettings, data_uri, png
from tools import media, pixel_budget
from tools.errors import Busy, ConfigError
from tools.models import EditRequest, TaskStatus
from tools.pixel_budget import PixelBudget
from tools.service import Editor
from tools.vendors.base import Finished, Job, OutputImage
from tools.vendors.local import engine_cost
from tools.worker.intake import fetch_result

MB = 1024 * 1024


@pytest.fixture(autouse=True)
def process_budget() -> Iterator[PixelBudget]:
    """The process's budget, put back as it was after each test."""
    saved = (pixel_budget.PIXELS.capacity, pixel_budget.PIXELS.wait_s)
    yield pixel_budget.PIXELS
    pixel_budget.PIXELS.configure(*saved)


async def started(coro: object) -> asyncio.Task[object]:
    task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
    for _ in range(5):
        await asyncio.sleep(0)
    return task


async def hold_for(pixels: PixelBudget, cost: int, until: asyncio.Event, **kw: bool) -> None:
    async with pixels.hold(cost, **kw):
        await until.wait()


# ---- the budget itself -------------------------------------------------------------------


async def test_what_does_not_fit_waits_its_turn_first_come_first_served() -> None:
    pixels = PixelBudget(100, wait_s=10)
    order: list[str] = []
    release = {name: asyncio.Event() for name in "abc"}

    async def take(name: str, cost: int) -> None:
        async with pixels.hold(cost):
            order.append(name)
            await release[name].wait()

    a = await started(take("a", 60))
    b = await started(take("b", 60))  # does not fit beside a
    c = await started(take("c", 10))  # would fit, but b came first
    assert order == ["a"] and pixels.in_use == 60 and pixels.waiting == 2
    release["a"].set()
    await a
    for _ in range(5):
        await asyncio.sleep(0)
    assert order == ["a", "b", "c"] and pixels.in_use == 70
    release["b"].set()
    release["c"].set()
    await asyncio.gather(b, c)
    assert pixels.in_use == 0 and pixels.waiting == 0


async def test_a_request_is_refused_after_the_wait_with_a_clear_error() -> None:
    pixels = PixelBudget(100 * MB, wait_s=0.05)
    free = asyncio.Event()
    holder = await started(hold_for(pixels, 80 * MB, free))
    with pytest.raises(Busy) as err:
        async with pixels.hold(50 * MB, label="image 2"):
            pass
    assert err.value.message.startswith("server busy: too many large images at once, try again")
    assert "image 2 needs 50 MB of the 100 MB" in err.value.message
    assert err.value.code == "busy" and err.value.retryable
    assert pixels.waiting == 0 and pixels.in_use == 80 * MB
    free.set()
    await holder
    assert pixels.in_use == 0


async def test_work_already_accepted_waits_as_long_as_it_takes() -> None:
    pixels = PixelBudget(100, wait_s=0.01)
    free = asyncio.Event()
    holder = await started(hold_for(pixels, 100, free))
    done = asyncio.Event()
    waiter = await started(hold_for(pixels, 50, done, bounded=False))
    await asyncio.sleep(0.1)  # ten times the bound
    assert not waiter.done() and pixels.waiting == 1
    free.set()
    await holder
    await asyncio.sleep(0)
    assert pixels.in_use == 50
    done.set()
    await waiter
    assert pixels.in_use == 0


async def test_an_image_larger_than_the_whole_budget_runs_alone() -> None:
    pixels = PixelBudget(100, wait_s=10)
    free = asyncio.Event()
    small = await started(hold_for(pixels, 10, free))
    big_done = asyncio.Event()
    big = await started(hold_for(pixels, 10_000, big_done))
    assert pixels.waiting == 1  # waits for the small one to go...
    free.set()
    await small
    await asyncio.sleep(0)
    assert pixels.in_use == 100  # ...then holds all of it
    late = await started(hold_for(pixels, 1, asyncio.Event()))
    assert pixels.waiting == 1
    big_done.set()
    await big
    await asyncio.sleep(0)
    assert pixels.in_use == 1
    late.cancel()


async def test_a_waiter_that_is_canceled_or_fails_holds_nothing() -> None:
    pixels = PixelBudget(100, wait_s=10)
    free = asyncio.Event()
    holder = await started(hold_for(pixels, 100, free))
    waiter = await started(hold_for(pixels, 30, asyncio.Event()))
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert pixels.waiting == 0
    free.set()
    await holder
    with pytest.raises(RuntimeError):
        async with pixels.hold(40):
            raise RuntimeError("the decoder failed")
    assert pixels.in_use == 0


async def test_zero_cost_takes_no_turn() -> None:
    pixels = PixelBudget(10, wait_s=0.01)
    async with pixels.hold(10), pixels.hold(0):
        assert pixels.in_use == 10


def test_one_budget_is_shared_by_every_event_loop_and_thread() -> None:
    pixels = PixelBudget(100, wait_s=10)
    held, release, admitted = threading.Event(), threading.Event(), threading.Event()

    async def first() -> None:
        async with pixels.hold(80):
            held.set()
            await asyncio.to_thread(release.wait)

    async def second() -> None:
        async with pixels.hold(80):
            admitted.set()

    one = threading.Thread(target=asyncio.run, args=(first(),))
    one.start()
    assert held.wait(5)
    two = threading.Thread(target=asyncio.run, args=(second(),))
    two.start()
    assert not admitted.wait(0.2)  # another loop's holder keeps it out
    release.set()
    assert admitted.wait(5)  # and its release wakes it on its own loop
    one.join(5)
    two.join(5)
    assert pixels.in_use == 0


async def test_shrinking_the_budget_below_a_waiter_lets_it_in_alone() -> None:
    pixels = PixelBudget(100, wait_s=10)
    free = asyncio.Event()
    holder = await started(hold_for(pixels, 90, free))
    done = asyncio.Event()
    waiter = await started(hold_for(pixels, 80, done))
    pixels.configure(50, 10)
    free.set()
    await holder
    await asyncio.sleep(0)
    assert pixels.in_use == 80  # never stranded behind a budget it can no longer fit
    done.set()
    await waiter


def test_decoded_sizes_follow_pillow_modes() -> None:
    assert pixel_budget.decoded_bytes(10, 10, "L") == 100
    assert pixel_budget.decoded_bytes(10, 10, "I;16") == 200
    assert pixel_budget.decoded_bytes(10, 10, "RGB") == 400  # Pillow keeps RGB in 4 bytes a pixel
    assert pixel_budget.decoded_bytes(10, 10, "RGBA") == 400
    assert pixel_budget.decoded_bytes(10, 10, "CMYK") == 400


# ---- every place that decodes holds its share -----------------------------------------------


def encoded(size: tuple[int, int], fmt: str = "PNG", mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, fmt)
    return buf.getvalue()


async def test_checking_an_image_holds_its_decoded_size_and_reads_only_its_header() -> None:
    data = encoded((400, 300))
    opened = Image.open(io.BytesIO(data))
    # Pillow's copy (4 bytes a pixel) beside libspng's array of RGB samples (tools/png.py)
    assert media.inspect_cost(opened, data) == 400 * 300 * (4 + 3)
    assert opened._im is None  # nothing was decoded to know it
    paletted = encoded((400, 300), mode="P")
    assert media.inspect_cost(Image.open(io.BytesIO(paletted)), paletted) == 400 * 300 * 9


async def test_a_png_rotated_by_exif_after_its_pixels_is_costed_as_rotated() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.new("RGB", (40, 20), 90).save(buf, "PNG", exif=exif)
    data = buf.getvalue()
    # Pillow writes eXIf before the pixels; move it after them, where readers still find it.
    start = data.index(b"eXIf") - 4
    end = start + 12 + int.from_bytes(data[start : start + 4], "big")
    chunk = data[start:end]
    late = data[:start] + data[end:-12] + chunk + data[-12:]
    opened = Image.open(io.BytesIO(late))
    assert media.inspect_cost(opened, late) == 40 * 20 * 4 * 3
    assert opened._im is None
    rotated = media.inspect(late, media.MediaPolicy())
    assert (rotated.width, rotated.height) == (20, 40)


async def test_a_busy_process_refuses_a_new_edit_with_a_clear_error(
    make_settings: MakeSettings, process_budget: PixelBudget
) -> None:
    settings = make_settings("[media]\ndecode_wait_s = 0.05\n")
    async with Editor(settings, run_worker=False) as editor:
        free = asyncio.Event()
        holder = await started(hold_for(process_budget, process_budget.capacity, free))
        request = EditRequest(images=[data_uri(png())], function="adjust", prompt="grayscale")
        with pytest.raises(Busy, match=r"^server busy: too many large images at once"):
            await editor.edit_image(request)
        assert await editor.list_tasks() == []  # nothing stored, nothing sent
        free.set()
        await holder
        task = await editor.edit_image(request)
    assert task.status == TaskStatus.queued


async def test_a_preview_is_left_out_not_failed_when_the_process_is_busy(
    process_budget: PixelBudget,
) -> None:
    process_budget.configure(process_budget.capacity, 0.05)
    data = encoded((300, 200))
    # the image and its thumbnail, and libspng's array of RGB samples beside them
    assert preview_cost(data, 512) == 2 * 300 * 200 * 4 + 300 * 200 * 3
    jpeg = encoded((4096, 2048), "JPEG")
    assert preview_cost(jpeg, 512) == 2 * 1024 * 512 * 4  # decoded at a quarter of its size
    free = asyncio.Event()
    holder = await started(hold_for(process_budget, process_budget.capacity, free))
    assert await budgeted_preview(data, 512) is None
    free.set()
    await holder
    assert await budgeted_preview(data, 512)


async def test_a_finished_task_shows_no_preview_but_its_links_when_busy(
    make_settings: MakeSettings, process_budget: PixelBudget
) -> None:
    settings = make_settings("[media]\ndecode_wait_s = 0.05\n")
    async with Editor(settings) as editor:
        task = await editor.edit_image(
            EditRequest(images=[data_uri(png())], function="adjust", prompt="grayscale"),
            wait_seconds=30,
        )
        editor.decoded_result(task.id, 0)  # its preview is made from the stored bytes
        free = asyncio.Event()
        holder = await started(hold_for(process_budget, process_budget.capacity, free))
        shown = await task_result(editor, task, 256)
        free.set()
        await holder
    kinds = [c.type for c in shown.content]
    assert kinds == ["text", "text", "resource_link"] and not shown.is_error
    assert BUSY_PREVIEW in shown.content[1].text  # type: ignore[union-attr]


async def test_results_and_local_edits_wait_for_room_instead_of_failing(
    make_settings: MakeSettings, process_budget: PixelBudget
) -> None:
    settings = make_settings("[media]\ndecode_wait_s = 0.01\n")
    async with Editor(settings, run_worker=False) as editor:
        image = await media.check(png((64, 48)), editor.policy)
        free = asyncio.Event()
        holder = await started(hold_for(process_budget, process_budget.capacity, free))
        job = Job(task_id="t", function="adjust", prompt="grayscale", images=[image])
        edit = await started(editor.vendors["local"].submit(job))
        result = await started(fetch_result(OutputImage(data=png()), editor.http, "local"))
        await asyncio.sleep(0.2)  # twenty times decode_wait_s
        assert not edit.done() and not result.done()
        free.set()
        await holder
        assert isinstance(await edit, Finished)
        assert (await result).width == 64  # type: ignore[attr-defined]


def test_local_edits_are_costed_by_their_input_and_largest_output() -> None:
    image = media.inspect(png((100, 50)), media.MediaPolicy())

    def cost(function: str, prompt: str = "", factor: int | None = None) -> int:
        job = Job(
            task_id="t", function=function, prompt=prompt, images=[image], upscale_factor=factor
        )
        return engine_cost(job)

    same = 3 * 4 * (5000 + 5000)
    assert cost("lineart") == cost("adjust", "grayscale; rotate 90") == same
    assert cost("super_resolution", factor=4) == 3 * 4 * (5000 + 16 * 5000)
    assert cost("adjust", "scale 2x; crop 0 0 10 10") == 3 * 4 * (5000 + 4 * 5000)
    assert cost("adjust", "resize 1000x0") == 3 * 4 * (5000 + 1000 * 500)
    assert cost("adjust", "rotate 45") > same


def test_the_budget_is_a_setting_that_must_hold_one_image(make_settings: MakeSettings) -> None:
    default = make_settings()
    assert default.media.decode_budget == 4 * 50_000_000 * 4
    small = make_settings("[media]\nmax_pixels = 1000000\n")
    assert small.media.decode_budget == 4 * 1_000_000 * 4
    set_ = make_settings("[media]\ndecode_budget_mb = 300\ndecode_wait_s = 5\n")
    assert set_.media.decode_budget == 300 * MB
    with pytest.raises(ConfigError, match=r"media\.decode_budget_mb.*needs at least 191"):
        make_settings("[media]\ndecode_budget_mb = 100\n")


async def test_the_editor_sizes_the_process_budget(
    make_settings: MakeSettings, process_budget: PixelBudget
) -> None:
    settings = make_settings("[media]\ndecode_budget_mb = 300\ndecode_wait_s = 7\n")
    Editor(settings, run_worker=False)
    assert (process_budget.capacity, process_budget.wait_s) == (300 * MB, 7)


async def test_a_console_thumbnail_is_busy_not_an_error_when_there_is_no_room(
    make_settings: MakeSettings, process_budget: PixelBudget
) -> None:
    from tests.test_console import console, console_toml, queued_task, sign_in

    settings = make_settings(console_toml("[media]\ndecode_wait_s = 0.05\n"))
    async with console(settings) as (client, editor, _):
        await sign_in(client)
        task_id = await queued_task(editor)
        free = asyncio.Event()
        holder = await started(hold_for(process_budget, process_budget.capacity, free))
        busy = await client.get(f"/console/thumbs/{task_id}/input/0")
        free.set()
        await holder
        thumb = await client.get(f"/console/thumbs/{task_id}/input/0")
    assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
    assert busy.text.startswith("server busy: too many large images at once")
    assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"


async def test_only_small_results_stay_decoded_for_the_caller_that_waited(
    make_settings: MakeSettings,
) -> None:
    """Decoded results kept for a waiting caller's preview live outside the budget: only
    small ones (up to KEEP_DECODED_PX) are kept; a large one is decoded again for its preview,
    within the budget."""
    settings = make_settings()
    async with Editor(settings) as editor:
        tasks = []
        for size in ((64, 48), (1600, 1500)):
            request = EditRequest(images=[data_uri(png(size))], function="adjust", prompt="invert")
            tasks.append(await editor.edit_image(request, wait_seconds=30))
        small, large = tasks
        assert small.status == large.status == TaskStatus.succeeded
        assert editor.decoded_result(small.id, 0) is not None
        assert editor.decoded_result(large.id, 0) is None
