"""End to end through the Editor and MCP against fake vendors on 127.0.0.1: the worker's
retries, polling, partial failures, fallbacks, costs and the result store."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import httpx
import pytest
from mcp import Client

from server.app import build_server
from tests.conftest import MakeSettings, data_uri, decode, sample
from tests.fakes.dashscope import FakeDashScope, free_quota_exhausted, rate_limited
from tests.fakes.http import Fault
from tests.fakes.softsugar import FakeSoftSugar
from tests.servers import free_port, http_server
from tools.config import Settings
from tools.models import EditRequest, TaskStatus
from tools.service import Editor

KEY = "sk-test-dashscope"
SUGAR_SECRET = "e2e-softsugar-callback-secret-0123456789"


@pytest.fixture
def fake() -> Iterator[FakeDashScope]:
    with FakeDashScope(api_key=KEY) as server:
        yield server


def dashscope_table(name: str, fake: FakeDashScope) -> str:
    return (
        f'[vendors.{name}]\nkind = "dashscope"\napi_key = "{KEY}"\n'
        f'base_url = "{fake.base_url}"\npoll_interval_s = 0.05\npoll_max_interval_s = 0.2\n'
    )


@pytest.fixture
def ds_settings(make_settings: MakeSettings, fake: FakeDashScope) -> Settings:
    return make_settings(dashscope_table("dashscope", fake))


def photo(name: str = "coffee.png") -> str:
    return data_uri(sample(name))


async def test_wanx_function_through_mcp_survives_expired_vendor_urls(
    ds_settings: Settings, fake: FakeDashScope
) -> None:
    async with Client(build_server(ds_settings)) as client:
        started = await client.call_tool(
            "edit_image",
            {
                "images": [photo()],
                "function": "stylization_all",
                "prompt": "French picture book",
                "vendor": "dashscope",
                "wait_seconds": 0,
            },
        )
        assert not started.is_error, started.content
        task_id = started.structured_content["id"]
        seen: list[tuple[float, str | None]] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            seen.append((value, message))

        done = await client.call_tool(
            "check_task", {"task_id": task_id, "wait_seconds": 30}, progress_callback=on_progress
        )
        task = done.structured_content
        assert task["status"] == "succeeded", task
        assert task["vendor_task_id"] and task["billed_images"] == 1
        assert (task["cost"], task["currency"]) == (0.14, "CNY")
        assert any("RUNNING" in (m or "") for _, m in seen), seen
        assert [v for v, _ in seen] == sorted({v for v, _ in seen})  # strictly increasing
        assert task["results"][0]["vendor_url"].startswith(fake.base_url)
        assert any("upscaled 600×400" in n for n in task["notes"])  # fitted to 512 px minimum
        fake.expire_results()
        with pytest.raises(httpx.HTTPStatusError):
            httpx.get(task["results"][0]["vendor_url"]).raise_for_status()
        resource = await client.read_resource(task["results"][0]["uri"])
        image = decode(base64.b64decode(resource.contents[0].blob))  # type: ignore[union-attr]
        assert image.width >= 512
    create = fake.last("create")
    assert create.headers["x-dashscope-async"] == "enable"
    assert create.json["input"]["function"] == "stylization_all"
    assert fake.submissions == 1


async def test_qwen_edit_with_two_images(ds_settings: Settings, fake: FakeDashScope) -> None:
    async with Editor(ds_settings) as editor:
        task = await editor.edit_image(
            EditRequest(
                images=[photo(), photo("chelsea.png")],
                prompt="the cat on the table",
                vendor="dashscope",
                n=2,
                seed=7,
            ),
            wait_seconds=30,
        )
    assert task.status == TaskStatus.succeeded, task.error
    assert len(task.results) == 2
    content = fake.last("generation").json["input"]["messages"][0]["content"]
    assert [list(part) for part in content] == [["image"], ["image"], ["text"]]


async def test_throttled_submission_is_retried_once_accepted(
    ds_settings: Settings, fake: FakeDashScope
) -> None:
    fake.inject("create", rate_limited(retry_after=0.1))
    async with Editor(ds_settings) as editor:
        task = await editor.edit_image(
            EditRequest(images=[photo()], function="colorization", vendor="dashscope"),
            wait_seconds=30,
        )
    assert task.status == TaskStatus.succeeded, task.error
    assert len(fake.requests_to("create")) == 2 and fake.submissions == 1


async def test_quota_exhaustion_is_not_retried(ds_settings: Settings, fake: FakeDashScope) -> None:
    fake.inject("create", free_quota_exhausted())
    async with Editor(ds_settings) as editor:
        task = await editor.edit_image(
            EditRequest(images=[photo()], function="colorization", vendor="dashscope"),
            wait_seconds=30,
        )
    assert task.status == TaskStatus.failed
    assert task.error is not None and task.error.code == "quota"
    assert len(fake.requests_to("create")) == 1
    assert KEY not in task.model_dump_json()


async def test_failed_task_is_reported_once_not_repolled(
    ds_settings: Settings, fake: FakeDashScope
) -> None:
    fake.fail_with = ("InternalError", "the model fell over")
    async with Editor(ds_settings) as editor:
        task = await editor.edit_image(
            EditRequest(images=[photo()], function="colorization", vendor="dashscope"),
            wait_seconds=30,
        )
    assert task.status == TaskStatus.failed
    assert task.error is not None and task.error.vendor_code == "InternalError"  # type: ignore[attr-defined]
    (vendor_id,) = fake.queries
    assert fake.queries[vendor_id] == 3  # PENDING, RUNNING, FAILED: the failure read once


async def test_partial_failure_keeps_each_image_and_bills_successes(
    ds_settings: Settings, fake: FakeDashScope
) -> None:
    fake.partial_failures = 1
    async with Editor(ds_settings) as editor:
        task = await editor.edit_image(
            EditRequest(
                images=[photo()], function="stylization_all", prompt="ink", n=2, vendor="dashscope"
            ),
            wait_seconds=30,
        )
    assert task.status == TaskStatus.succeeded
    assert len(task.results) == 1 and len(task.failures) == 1
    assert task.failures[0].code == "InternalError.Timeout"
    assert (task.billed_images, task.cost) == (1, 0.14)


async def test_result_url_gone_before_download_is_a_clear_failure(
    ds_settings: Settings, fake: FakeDashScope
) -> None:
    fake.inject("files", Fault.status(404, body="NoSuchKey"))
    async with Editor(ds_settings) as editor:
        task = await editor.edit_image(
            EditRequest(images=[photo()], function="colorization", vendor="dashscope"),
            wait_seconds=30,
        )
    assert task.status == TaskStatus.failed
    assert task.error is not None and "expired" in task.error.message


async def test_fallback_moves_a_lost_task_to_the_next_vendor(
    make_settings: MakeSettings, fake: FakeDashScope
) -> None:
    with FakeDashScope(api_key=KEY) as second:
        settings = make_settings(
            '[routing]\nfallback = ["ds", "ds2"]\n'
            + dashscope_table("ds", fake)
            + dashscope_table("ds2", second)
        )
        fake.task_plan = ["PENDING", "UNKNOWN"]
        async with Editor(settings) as editor:
            task = await editor.edit_image(
                EditRequest(images=[photo()], function="colorization", vendor="ds"), wait_seconds=30
            )
        assert task.status == TaskStatus.succeeded, task.error
        assert task.vendor == "ds2"
        assert any("moved to ds2" in n for n in task.notes)
        assert fake.submissions == 1 and second.submissions == 1


async def test_cancel_reaches_the_vendor(ds_settings: Settings, fake: FakeDashScope) -> None:
    fake.task_plan = ["PENDING"]  # stays pending until canceled
    async with Editor(ds_settings) as editor:
        task = await editor.edit_image(
            EditRequest(images=[photo()], function="colorization", vendor="dashscope")
        )
        for _ in range(100):
            task = await editor.check_task(task.id, wait_seconds=0.1)
            if task.vendor_task_id:
                break
        await editor.cancel_task(task.id)
        task = await editor.check_task(task.id, wait_seconds=10)
    assert task.status == TaskStatus.canceled
    assert len(fake.requests_to("cancel")) == 1


async def test_list_functions_shows_which_vendor_runs_what(ds_settings: Settings) -> None:
    async with Editor(ds_settings, run_worker=False) as editor:
        table = {f.name: f.vendors for f in editor.list_functions()}
    assert table["colorization"] == ["dashscope"]
    assert table["stylization_all"] == ["local", "dashscope"]
    assert table["adjust"] == ["local"]


@pytest.fixture
def softsugar_server(make_settings: MakeSettings) -> Iterator[tuple[str, FakeSoftSugar]]:
    with FakeSoftSugar() as vendor:
        port = free_port()
        settings = make_settings(
            f'[mcp]\nport = {port}\n[media]\nallow_networks = ["127.0.0.0/8"]\n'
            f'[vendors.softsugar]\nkind = "softsugar"\napp_id = "{vendor.app_id}"\n'
            f'app_key = "{vendor.app_key}"\nbase_url = "{vendor.base_url}"\n'
            f'callback_url = "http://127.0.0.1:{port}/callbacks/softsugar"\n'
            f'callback_secret = "{SUGAR_SECRET}"\n'
        )
        # What the operator registers in the SoftSugar console: the URL and its secret.
        vendor.callback_url = f"http://127.0.0.1:{port}/callbacks/softsugar/{SUGAR_SECRET}"
        with http_server(settings.source, port):
            yield f"http://127.0.0.1:{port}/mcp", vendor


async def test_softsugar_result_arrives_by_callback(
    softsugar_server: tuple[str, FakeSoftSugar],
) -> None:
    url, vendor = softsugar_server
    image_url = vendor.put_file(sample("chelsea.png"))
    async with Client(url) as client:
        result = await client.call_tool(
            "edit_image",
            {
                "images": [image_url],
                "prompt": "a hat on the cat",
                "vendor": "softsugar",
                "wait_seconds": 30,
            },
        )
    task = result.structured_content
    assert task["status"] == "succeeded", result.content
    assert len(task["results"]) == 1
    assert vendor.callbacks and vendor.callbacks[0].status == 200
    assert os.environ.get("RETOUCH_CONFIG") is None
