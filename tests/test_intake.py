"""Result intake, shared by the worker and the vendor-callback route."""

from __future__ import annotations

import asyncio

import httpx

from tests.conftest import data_uri, png
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
