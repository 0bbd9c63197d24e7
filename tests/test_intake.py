"""Result intake, shared by the worker and the vendor-callback route."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import data_uri, png
from tools import media
from tools.config import Settings
from tools.errors import VendorFault
from tools.models import EditRequest, TaskStatus
from tools.service import Editor
from tools.vendors.base import Finished, OutputImage


async def test_an_error_outcome_fails_the_task_and_wakes_its_waiters(settings: Settings) -> None:
    async with Editor(settings, run_worker=False) as editor:
        task = await editor.edit_image(EditRequest(images=[data_uri(png())], function="lineart"))
        [record] = await editor.store.claim("local", "w", capacity=1, lease_s=60)
        waiting = asyncio.create_task(editor.notifier.wait(task.id, 60))
        await asyncio.sleep(0)
        ended = await editor.intake.take(
            record, editor.vendors["local"], VendorFault("boom"), client=editor.http, worker="w"
        )
        await asyncio.wait_for(waiting, 10)  # woken by the end, not by its 60 s timeout
        done = await editor.check_task(task.id)
    assert ended
    assert done.status == TaskStatus.failed and done.error is not None
    assert done.error.message == "boom"


async def test_a_task_that_has_ended_takes_nothing_in(settings: Settings) -> None:
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, content=png())

    async with Editor(settings, run_worker=False) as editor:
        task = await editor.edit_image(EditRequest(images=[data_uri(png())], function="lineart"))
        await editor.cancel_task(task.id)
        record = await editor.store.get(task.id)
        outcome = Finished(images=[OutputImage(url="http://vendor.test/r.png")])
        local = editor.vendors["local"]
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            ended = await editor.intake.take(record, local, outcome, client=client)
        done = await editor.check_task(task.id)
    assert not ended and requests == []
    assert done.status == TaskStatus.canceled and done.results == []


async def test_a_local_result_is_taken_with_its_pixels_not_decoded_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local engine hands its PNG over with the image it encoded: the intake does not
    decode the bytes to check them, and the image kept for the preview is what they show."""
    decodes: list[int] = []
    check_keeping = media.check_keeping

    async def counted(data: bytes, policy: Any, label: str, **kwargs: Any) -> Any:
        if label == "result":  # the input is checked too, by the same function
            decodes.append(len(data))
        return await check_keeping(data, policy, label, **kwargs)

    monkeypatch.setattr(media, "check_keeping", counted)
    request = EditRequest(images=[data_uri(png())], function="adjust", prompt="brightness 1.2")
    async with Editor(settings) as editor:
        task = await editor.edit_image(request, wait_seconds=30)
        assert task.status == TaskStatus.succeeded
        kept = editor.decoded_result(task.id, 0)
        stored, _mime = await editor.result(task.id, 0)
    assert decodes == []
    assert kept is not None
    shown = Image.open(io.BytesIO(stored))
    assert (shown.mode, shown.size) == (kept.mode, kept.size)
    assert shown.tobytes() == kept.tobytes()


@pytest.mark.parametrize("shown", [True, False])
async def test_a_vendors_result_is_decoded_only_when_its_pixels_are_shown(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, shown: bool
) -> None:
    """Bytes from a vendor are checked: decoded once when a waiting caller's preview is made
    from them, else checked without a full decode (a PNG's rows inflated, not unfiltered)."""
    calls: list[str] = []
    for name in ("_decode", "_checked"):
        real = getattr(media, name)

        def counted(*args: Any, _real: Any = real, _name: str = name) -> Any:
            calls.append(_name)
            return _real(*args)

        monkeypatch.setattr(media, name, counted)
    result = png()
    decoded: dict[int, Image.Image] | None = {} if shown else None
    async with Editor(settings, run_worker=False) as editor:
        await editor.edit_image(EditRequest(images=[data_uri(png())], function="lineart"))
        calls.clear()  # the input's check
        [record] = await editor.store.claim("local", "w", capacity=1, lease_s=60)
        outcome = Finished(images=[OutputImage(data=result)])
        local = editor.vendors["local"]
        assert await editor.intake.take(
            record, local, outcome, client=editor.http, worker="w", decoded=decoded
        )
    assert calls == (["_decode"] if shown else ["_checked"])
    if decoded is not None:
        assert decoded[0].tobytes() == Image.open(io.BytesIO(result)).tobytes()
