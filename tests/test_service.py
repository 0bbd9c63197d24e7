"""The Editor on the embedded defaults: edits end to end, restarts, cancel, bad input."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.conftest import DATA, MakeSettings, data_uri, decode, png, sample
from tools.config import Settings
from tools.errors import ImageError, InvalidParameter, NotFound, UnsafeURL, Unsupported
from tools.models import EditRequest, Task, TaskStatus
from tools.service import Editor


def chelsea(**kw: object) -> EditRequest:
    kw.setdefault("images", [str(DATA / "chelsea.png")])
    return EditRequest(**kw)  # type: ignore[arg-type]


async def test_adjust_end_to_end(editor: Editor) -> None:
    task = await editor.edit_image(
        chelsea(function="adjust", prompt="rotate 90; grayscale"), wait_seconds=30
    )
    assert task.status == TaskStatus.succeeded, task.error
    assert len(task.results) == 1 and task.vendor == "local"
    data, mime = await editor.result(task.id, 0)
    image = decode(data)
    assert image.size == (300, 451) and mime == "image/png"
    assert task.results[0].uri == f"retouch://tasks/{task.id}/0"
    assert task.cost is None and task.billed_images == 1


async def test_results_chain_into_the_next_edit(editor: Editor) -> None:
    first = await editor.edit_image(
        chelsea(function="adjust", prompt="resize 50%"), wait_seconds=30
    )
    second = await editor.edit_image(
        EditRequest(images=[first.results[0].uri], function="adjust", prompt="rotate 180"),
        wait_seconds=30,
    )
    assert second.status == TaskStatus.succeeded
    assert (second.results[0].width, second.results[0].height) == (226, 150)


async def test_text_watermark_is_stamped_after_any_function(editor: Editor) -> None:
    plain = await editor.edit_image(chelsea(function="adjust", prompt="grayscale"), wait_seconds=30)
    marked = await editor.edit_image(
        chelsea(function="adjust", prompt="grayscale", watermark="© Retouch"), wait_seconds=30
    )
    a = decode((await editor.result(plain.id, 0))[0])
    b = decode((await editor.result(marked.id, 0))[0])
    assert a.size == b.size and a.tobytes() != b.tobytes()


async def test_progress_is_reported_while_waiting(editor: Editor) -> None:
    seen: list[str] = []

    async def on_progress(task: object) -> None:
        seen.append(task.status.value)  # type: ignore[attr-defined]

    task = await editor.edit_image(
        chelsea(function="lineart"), wait_seconds=30, on_progress=on_progress
    )
    assert task.status == TaskStatus.succeeded
    assert set(seen) <= {"queued", "running"}


@pytest.mark.parametrize(
    ("request_kw", "error", "message"),
    [
        ({"function": "colorization"}, Unsupported, "dashscope"),
        ({"function": "expand", "expand": {"left": 1.5}}, Unsupported, "no enabled vendor"),
        ({"function": "stylization_local", "prompt": "oil painting"}, InvalidParameter, "mask"),
        (
            {"function": "adjust", "prompt": "x", "vendor": "nope"},
            InvalidParameter,
            "unknown or disabled vendor",
        ),
        ({"function": "stylization_all", "prompt": "oil painting", "n": 2}, Unsupported, "'n'"),
        (
            {"function": "adjust", "prompt": "x", "images": ["http://127.0.0.1/x.png"]},
            UnsafeURL,
            "private",
        ),
        (
            {"function": "adjust", "prompt": "x", "images": ["http://169.254.169.254/x"]},
            UnsafeURL,
            "private",
        ),
        (
            {"function": "adjust", "prompt": "x", "images": ["file:///etc/passwd"]},
            UnsafeURL,
            "file: scheme",
        ),
        (
            {"function": "adjust", "prompt": "x", "images": ["data:image/png;base64,AAAA"]},
            ImageError,
            "not an image",
        ),
    ],
)
async def test_bad_requests_are_clear_errors(
    editor: Editor, request_kw: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        await editor.edit_image(chelsea(**request_kw))
    assert await editor.list_tasks() == []  # nothing stored for a refused request


async def test_engine_failure_fails_the_task_with_its_error(editor: Editor) -> None:
    task = await editor.edit_image(
        chelsea(function="stylization_all", prompt="make it look like a hologram"),
        wait_seconds=30,
    )
    assert task.status == TaskStatus.failed
    assert task.error is not None and task.error.code == "invalid_parameter"
    assert "oil_painting" in task.error.message


async def test_unknown_task_and_result(editor: Editor) -> None:
    with pytest.raises(NotFound):
        await editor.check_task("0" * 32)
    with pytest.raises(NotFound):
        await editor.result("0" * 32, 0)


async def test_cancel_a_queued_task(settings: Settings) -> None:
    async with Editor(settings, run_worker=False) as editor:
        task = await editor.edit_image(EditRequest(images=[data_uri(png())], function="lineart"))
        canceled = await editor.cancel_task(task.id)
        assert canceled.status == TaskStatus.canceled
    async with Editor(settings) as editor:
        again = await editor.check_task(task.id, wait_seconds=0.5)
        assert again.status == TaskStatus.canceled and again.results == []


@pytest.mark.parametrize("cancel", [False, True])
async def test_a_cancel_asked_while_the_vendor_worked_wins_over_its_results(
    settings: Settings, cancel: bool
) -> None:
    from tools.vendors.base import Finished, OutputImage

    async with Editor(settings, run_worker=False) as editor:
        task = await editor.edit_image(EditRequest(images=[data_uri(png())], function="lineart"))
        [record] = await editor.store.claim("local", "w", capacity=1, lease_s=60)
        if cancel:
            await editor.store.request_cancel(task.id)
        outcome = Finished(images=[OutputImage(data=png((20, 20)))])
        ended = await editor.intake.take(
            record, editor.vendors["local"], outcome, client=editor.http, worker="w", notes=[]
        )
        done = await editor.check_task(task.id)
    assert ended
    assert done.status == (TaskStatus.canceled if cancel else TaskStatus.succeeded)
    assert len(done.results) == (0 if cancel else 1)


async def test_tasks_queued_before_a_restart_finish_exactly_once(settings: Settings) -> None:
    async with Editor(settings, run_worker=False) as editor:
        ids = [
            (
                await editor.edit_image(
                    EditRequest(
                        images=[data_uri(sample("coffee.png"))],
                        function="adjust",
                        prompt=f"rotate {angle}",
                    )
                )
            ).id
            for angle in (90, 180, 270)
        ]
        # One task was being worked on by a process that then died (its lease ran out).
        taken = await editor.store.claim("local", "dead-process", capacity=1, lease_s=30)
        await editor.store.db.execute(
            "UPDATE tasks SET lease_until = ? WHERE id = ?", (time.time() - 1, taken[0].id)
        )
    async with Editor(settings) as editor:
        tasks = [await editor.check_task(i, wait_seconds=30) for i in ids]
    assert [t.status for t in tasks] == [TaskStatus.succeeded] * 3
    assert [len(t.results) for t in tasks] == [1, 1, 1]
    assert tasks[0].attempts == 2 and tasks[1].attempts == 1
    assert (tasks[0].results[0].width, tasks[0].results[0].height) == (400, 600)


async def test_interrupted_submission_to_a_billing_vendor_is_not_resent(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(
        '[vendors.ds]\nkind = "dashscope"\napi_key = "sk-test"\nbase_url = "http://127.0.0.1:9"\n'
    )
    async with Editor(settings, run_worker=False) as editor:
        task = await editor.edit_image(
            EditRequest(images=[data_uri(png((600, 600)))], function="colorization", vendor="ds")
        )
        await editor.store.claim("ds", "dead", capacity=1, lease_s=30)
        await editor.store.db.execute(
            "UPDATE tasks SET lease_until = 0, submit_started_at = ? WHERE id = ?",
            (time.time(), task.id),
        )
    async with Editor(settings) as editor:
        done = await editor.check_task(task.id, wait_seconds=10)
    assert done.status == TaskStatus.failed
    assert done.error is not None and "not billed twice" in done.error.message


def test_list_functions_is_honest(editor: Editor) -> None:
    functions = {f.name: f for f in editor.list_functions()}
    assert functions["stylization_all"].vendors == ["local"]
    assert "not a generative model" in functions["stylization_all"].notes["local"]
    assert functions["colorization"].vendors == []
    assert functions["super_resolution"].parameters["properties"]["upscale_factor"]


async def test_a_request_made_again_with_its_key_returns_the_first_task(
    settings: Settings,
) -> None:
    async with Editor(settings, run_worker=False) as editor:
        request = EditRequest(images=[data_uri(png())], function="lineart")
        first = await editor.edit_image(request, key="client:42")
        again = await editor.edit_image(request, key="client:42")
        other = await editor.edit_image(request, key="client:43")
        # the store itself refuses a second task for a key (two callers at the same moment)
        record = await editor.store.create_task(
            function="lineart",
            vendor="local",
            prompt="",
            n=1,
            request={},
            inputs=[],
            mask=None,
            key="client:42",
        )
        tasks = await editor.list_tasks()
    assert again.id == first.id == record.id and other.id != first.id
    assert len(tasks) == 2


@pytest.mark.parametrize("ends_at_once", [True, False])
async def test_a_progress_step_is_shown_unless_the_end_follows_at_once(
    settings: Settings, ends_at_once: bool
) -> None:
    """A caller that shows progress gets a step once it has stood for
    ``PROGRESS_SETTLE_S``; a step the end follows within that costs no read and shows
    nothing (an edit that ends at once sent a notification nobody saw)."""
    from tools.service import PROGRESS_SETTLE_S

    shown: list[str | None] = []

    async def on_progress(task: Task) -> None:
        shown.append(task.progress)

    async with Editor(settings, run_worker=False) as editor:
        task = await editor.edit_image(chelsea(function="lineart", images=[data_uri(png())]))
        assert await editor.store.claim("local", "w", capacity=1, lease_s=60)
        waiting = asyncio.create_task(editor.check_task(task.id, 30, on_progress))
        await asyncio.sleep(0.05)
        await editor.store.update(task.id, "w", progress="halfway")
        editor.notifier.changed(task.id, ended=False)
        if not ends_at_once:
            await asyncio.sleep(PROGRESS_SETTLE_S * 4)
        await editor.store.finish(
            task.id, "w", TaskStatus.failed, error={"code": "x", "message": "stopped"}
        )
        editor.notifier.changed(task.id)
        done = await asyncio.wait_for(waiting, 10)
    assert done.status == TaskStatus.failed
    assert shown == ([] if ends_at_once else ["halfway"])
