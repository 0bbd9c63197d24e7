"""Tests of the fake vendor servers themselves.

Plain httpx against each fake, so we know the fakes behave as the vendor documents say
(vendors.md and the seeds) before any adapter is tested against them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes import dashscope as ds
from tests.fakes import nebula as nb
from tests.fakes import openai as oa
from tests.fakes import softsugar as ss
from tests.fakes.dashscope import FakeDashScope
from tests.fakes.http import (
    CallbackReceiver,
    FakeServer,
    Fault,
    fake_meta,
    image_format,
    image_size,
    make_mask_png,
    make_png,
)
from tests.fakes.nebula import FakeNebula
from tests.fakes.openai import FakeOpenAI
from tests.fakes.softsugar import FakeSoftSugar

DS_KEY = "sk-ds-test"
OA_KEY = "sk-oa-test"
NB_KEY = "sk-nb-test"
CREATE = "/api/v1/services/aigc/image2image/image-synthesis"
GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"

# Everything here is plain HTTP on loopback: verify=False spares the ~150 ms that loading the
# CA bundle costs per client, and one shared client keeps connections alive.
WEB = httpx.Client(verify=False, timeout=10)


# ============================================================================ fixtures


@pytest.fixture(scope="module", autouse=True)
def _close_web() -> Iterator[None]:
    yield
    WEB.close()


@pytest.fixture(scope="module")
def dash_server() -> Iterator[FakeDashScope]:
    with FakeDashScope(api_key=DS_KEY) as fake:
        yield fake


@pytest.fixture
def dash(dash_server: FakeDashScope) -> FakeDashScope:
    dash_server.reset()
    return dash_server


@pytest.fixture(scope="module")
def dash_client(dash_server: FakeDashScope) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {DS_KEY}"}
    with httpx.Client(base_url=dash_server.base_url, headers=headers, verify=False) as client:
        yield client


@pytest.fixture
def dc(dash: FakeDashScope, dash_client: httpx.Client) -> httpx.Client:
    return dash_client


@pytest.fixture(scope="module")
def oai_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=OA_KEY) as fake:
        yield fake


@pytest.fixture
def oai(oai_server: FakeOpenAI) -> FakeOpenAI:
    oai_server.reset()
    return oai_server


@pytest.fixture(scope="module")
def oai_client(oai_server: FakeOpenAI) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {OA_KEY}"}
    with httpx.Client(base_url=oai_server.base_url, headers=headers, verify=False) as client:
        yield client


@pytest.fixture
def oc(oai: FakeOpenAI, oai_client: httpx.Client) -> httpx.Client:
    return oai_client


@pytest.fixture(scope="module")
def neb_server() -> Iterator[FakeNebula]:
    with FakeNebula(api_key=NB_KEY) as fake:
        yield fake


@pytest.fixture
def neb(neb_server: FakeNebula) -> FakeNebula:
    neb_server.reset()
    return neb_server


@pytest.fixture(scope="module")
def sugar_server() -> Iterator[FakeSoftSugar]:
    with FakeSoftSugar(app_id="app-1", app_key="key-1") as fake:
        yield fake


@pytest.fixture
def sugar(sugar_server: FakeSoftSugar) -> FakeSoftSugar:
    sugar_server.reset()
    return sugar_server


@pytest.fixture(scope="module")
def receiver_server() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as rx:
        yield rx


@pytest.fixture
def receiver(receiver_server: CallbackReceiver) -> CallbackReceiver:
    receiver_server.reset()
    return receiver_server


# ============================================================================ helpers


def wanx(url: str, function: str = "stylization_all", **params: Any) -> dict[str, Any]:
    return {
        "model": "wanx2.1-imageedit",
        "input": {"function": function, "prompt": "make it blue", "base_image_url": url},
        "parameters": params,
    }


def submit(dc: httpx.Client, body: dict[str, Any], **headers: str) -> str:
    r = dc.post(CREATE, json=body, headers={"X-DashScope-Async": "enable", **headers})
    assert r.status_code == 200, r.text
    out = r.json()["output"]
    assert out["task_status"] == "PENDING" and r.json()["request_id"]
    return out["task_id"]


def poll(dc: httpx.Client, task_id: str, until: tuple[str, ...] = ("SUCCEEDED", "FAILED")) -> dict:
    for _ in range(20):
        body = dc.get(f"/api/v1/tasks/{task_id}").json()
        if body["output"]["task_status"] in until:
            return body
    raise AssertionError(f"task stuck: {body}")


def qwen(*content: dict[str, str], model: str = "qwen-image-edit-plus", **params: Any) -> dict:
    return {
        "model": model,
        "input": {"messages": [{"role": "user", "content": list(content)}]},
        "parameters": params,
    }


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def get_policy(dc: httpx.Client) -> dict[str, Any]:
    r = dc.get("/api/v1/uploads", params={"action": "getPolicy", "model": "wanx2.1-imageedit"})
    assert r.status_code == 200, r.text
    return r.json()["data"]


def oss_form(policy: dict[str, Any], key: str, data: bytes) -> list[tuple[str, Any]]:
    """The documented PostObject fields, in the documented order, file last."""
    return [
        ("OSSAccessKeyId", (None, policy["oss_access_key_id"])),
        ("Signature", (None, policy["signature"])),
        ("policy", (None, policy["policy"])),
        ("x-oss-object-acl", (None, policy["x_oss_object_acl"])),
        ("x-oss-forbid-overwrite", (None, policy["x_oss_forbid_overwrite"])),
        ("key", (None, key)),
        ("success_action_status", (None, "200")),
        ("file", ("photo.png", data, "image/png")),
    ]


# ============================================================================ harness


def test_server_starts_and_stops_fast_without_leaking_threads() -> None:
    before = threading.active_count()
    fake = FakeServer()
    t0 = time.monotonic()
    fake.start()
    started = time.monotonic() - t0
    url = fake.put_file(make_png(32, 16))
    assert fake.base_url.startswith("http://127.0.0.1:")
    assert WEB.get(url).status_code == 200
    t0 = time.monotonic()
    fake.stop()
    assert time.monotonic() - t0 < 1.0
    assert started < 2.0
    assert threading.active_count() == before
    with pytest.raises(RuntimeError):
        _ = fake.base_url
    # a fake that renders results in worker threads leaves none behind either
    with FakeDashScope(api_key="k") as dash:
        body = qwen({"image": data_uri(make_png(400, 400))}, {"text": "x"})
        r = WEB.post(dash.url(GENERATION), json=body, headers={"Authorization": "Bearer k"})
        assert r.status_code == 200
    assert threading.active_count() == before


def test_stop_is_quick_even_during_a_delayed_request() -> None:
    fake = FakeServer().start()
    url = fake.put_file(b"x", "bin")
    fake.inject("files", Fault.delay(30))
    worker = threading.Thread(target=lambda: WEB.get(url, timeout=10), daemon=True)
    worker.start()
    assert fake.wait_for(lambda: len(fake.requests) == 1)
    t0 = time.monotonic()
    fake.stop()
    assert time.monotonic() - t0 < 10  # not held by the 30 s delay (a loaded machine is slow)
    worker.join(5)


async def test_fake_works_from_async_tests(dash: FakeDashScope) -> None:
    async with httpx.AsyncClient(base_url=dash.base_url, verify=False) as client:
        r = await client.get("/api/v1/tasks/nope", headers={"Authorization": f"Bearer {DS_KEY}"})
    assert r.json()["output"]["task_status"] == "UNKNOWN"


def test_reset_fault_is_a_transport_error(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.inject("task", Fault.reset())
    with pytest.raises(httpx.TransportError):
        dc.get("/api/v1/tasks/abc")
    assert dash.last("task").fault == "reset" and dash.last("task").status is None
    assert dc.get("/api/v1/tasks/abc").status_code == 200  # one-shot


def test_faults_are_one_shot_in_order_and_wildcard(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.inject("task", Fault.status(503), Fault.status(504))
    dash.inject("*", Fault.status(418))
    assert [dc.get("/api/v1/tasks/x").status_code for _ in range(4)] == [503, 504, 418, 200]
    assert dash.pending_faults() == 0


def test_recording_captures_headers_query_and_json(dash: FakeDashScope, dc: httpx.Client) -> None:
    dc.get("/api/v1/uploads", params={"action": "getPolicy", "model": "m"}, headers={"X-A": "1"})
    rec = dash.last("policy")
    assert rec.method == "GET" and rec.path == "/api/v1/uploads"
    assert rec.query == {"action": "getPolicy", "model": "m"}
    assert rec.headers["x-a"] == "1" and rec.bearer == DS_KEY


def test_png_helpers() -> None:
    assert image_size(make_png(40, 30)) == (40, 30)
    assert image_format(make_mask_png(10, 10)) == "PNG"


# ============================================================================ DashScope wanx


def test_wanx_default_plan_then_result(dash: FakeDashScope, dc: httpx.Client) -> None:
    src = make_png(640, 512)
    task_id = submit(dc, wanx(dash.put_file(src), n=1, seed=7))
    statuses = [dc.get(f"/api/v1/tasks/{task_id}").json() for _ in range(4)]
    assert [s["output"]["task_status"] for s in statuses] == [
        "PENDING",
        "RUNNING",
        "SUCCEEDED",
        "SUCCEEDED",
    ]
    done = statuses[2]
    out = done["output"]
    assert out["task_metrics"] == {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}
    assert done["usage"] == {"image_count": 1}
    assert {"submit_time", "scheduled_time", "end_time"} <= out.keys()
    assert statuses[3]["output"]["results"] == out["results"]  # stable
    png = WEB.get(out["results"][0]["url"]).content
    assert image_size(png) == (640, 512) and png != src
    assert fake_meta(png)["task_id"] == task_id
    assert dash.submissions == 1 and dash.queries[task_id] == 4 and dash.total_queries == 4
    rec = dash.requests_to("create")[0]
    assert rec.headers["x-dashscope-async"] == "enable"
    assert rec.json["parameters"] == {"n": 1, "seed": 7}


def test_wanx_custom_plan_with_suspended_and_stuck(dash: FakeDashScope, dc: httpx.Client) -> None:
    url = dash.put_file(make_png(512, 512))
    dash.task_plan = ["RUNNING", "SUSPENDED", "RUNNING", "SUCCEEDED"]
    task_id = submit(dc, wanx(url))
    seen = [dc.get(f"/api/v1/tasks/{task_id}").json()["output"]["task_status"] for _ in range(4)]
    assert seen == ["RUNNING", "SUSPENDED", "RUNNING", "SUCCEEDED"]
    dash.task_plan = ["PENDING", "RUNNING"]  # never ends
    stuck = submit(dc, wanx(url))
    seen = [dc.get(f"/api/v1/tasks/{stuck}").json()["output"]["task_status"] for _ in range(6)]
    assert seen == ["PENDING"] + ["RUNNING"] * 5


def test_wanx_time_based_task(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.task_seconds = 0.6
    t0 = time.monotonic()
    task_id = submit(dc, wanx(dash.put_file(make_png(512, 512))))
    seen: list[str] = []
    while not seen or seen[-1] != "SUCCEEDED":
        status = dc.get(f"/api/v1/tasks/{task_id}").json()["output"]["task_status"]
        if not seen or seen[-1] != status:
            seen.append(status)
        assert time.monotonic() - t0 < 5
        time.sleep(0.05)
    assert seen == ["PENDING", "RUNNING", "SUCCEEDED"]
    assert time.monotonic() - t0 >= 0.6


def test_wanx_partial_failure(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.partial_failures = 1
    body = poll(dc, submit(dc, wanx(dash.put_file(make_png(512, 512)), n=3)))
    out = body["output"]
    assert out["task_status"] == "SUCCEEDED"
    assert out["task_metrics"] == {"TOTAL": 3, "SUCCEEDED": 2, "FAILED": 1}
    assert body["usage"]["image_count"] == 2
    assert [set(r) for r in out["results"]] == [{"url"}, {"url"}, {"code", "message"}]
    assert out["results"][2]["code"] == "InternalError.Timeout"
    urls = [r["url"] for r in out["results"][:2]]
    assert fake_meta(WEB.get(urls[0]).content)["index"] == 0
    assert fake_meta(WEB.get(urls[1]).content)["index"] == 1


def test_wanx_all_items_failed_is_failed(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.partial_failures = 2
    out = poll(dc, submit(dc, wanx(dash.put_file(make_png(512, 512)), n=2)))["output"]
    assert out["task_status"] == "FAILED" and out["code"] == "InternalError.Timeout"
    assert out["task_metrics"] == {"TOTAL": 2, "SUCCEEDED": 0, "FAILED": 2}


def test_wanx_fail_with(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.fail_with = ("InternalError", "boom")
    body = poll(dc, submit(dc, wanx(dash.put_file(make_png(512, 512)))))
    assert body["output"]["task_status"] == "FAILED"
    assert (body["output"]["code"], body["output"]["message"]) == ("InternalError", "boom")
    assert "usage" not in body


def test_wanx_unknown_and_expired_tasks(dash: FakeDashScope, dc: httpx.Client) -> None:
    body = dc.get("/api/v1/tasks/does-not-exist").json()
    assert body["output"] == {"task_id": "does-not-exist", "task_status": "UNKNOWN"}
    task_id = submit(dc, wanx(dash.put_file(make_png(512, 512))))
    dash.expire_tasks()
    assert dc.get(f"/api/v1/tasks/{task_id}").json()["output"]["task_status"] == "UNKNOWN"


def test_wanx_cancel_pending_only(dash: FakeDashScope, dc: httpx.Client) -> None:
    url = dash.put_file(make_png(512, 512))
    task_id = submit(dc, wanx(url))
    r = dc.post(f"/api/v1/tasks/{task_id}/cancel")
    assert r.status_code == 200 and r.json()["request_id"]
    assert dc.get(f"/api/v1/tasks/{task_id}").json()["output"]["task_status"] == "CANCELED"
    running = submit(dc, wanx(url))
    dc.get(f"/api/v1/tasks/{running}")
    dc.get(f"/api/v1/tasks/{running}")  # now RUNNING
    r = dc.post(f"/api/v1/tasks/{running}/cancel")
    assert r.status_code == 400
    assert r.json()["code"] == "UnsupportedOperation" and "RUNNING" in r.json()["message"]
    assert dc.post("/api/v1/tasks/nope/cancel").status_code == 400


def test_wanx_requires_async_header(dash: FakeDashScope, dc: httpx.Client) -> None:
    r = dc.post(CREATE, json=wanx("http://127.0.0.1/x.png"))
    assert r.status_code == 403
    assert r.json()["code"] == "AccessDenied" and "synchronous" in r.json()["message"]
    assert dash.submissions == 0


@pytest.mark.parametrize(
    ("path", "method"),
    [
        (CREATE, "POST"),
        ("/api/v1/tasks/x", "GET"),
        (GENERATION, "POST"),
        ("/api/v1/uploads", "GET"),
    ],
)
def test_dashscope_auth(dash: FakeDashScope, path: str, method: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = WEB.request(method, dash.base_url + path, headers=headers, json={})
        assert r.status_code == 401
        body = r.json()
        assert body["code"] == "InvalidApiKey" and body["message"] and body["request_id"]


def _bad(mutate: Any) -> dict[str, Any]:
    body = wanx("http://127.0.0.1:9/x.png")
    mutate(body)
    return body


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (_bad(lambda b: b.pop("model")), 400, "BadRequest.EmptyModel"),
        (_bad(lambda b: b.update(model="wanx-nope")), 404, "ModelNotFound"),
        (_bad(lambda b: b.pop("input")), 400, "BadRequest.EmptyInput"),
        (_bad(lambda b: b["input"].update(function="sharpen")), 400, "InvalidParameter"),
        (_bad(lambda b: b["input"].pop("prompt")), 400, "InvalidParameter"),
        (_bad(lambda b: b["input"].pop("base_image_url")), 400, "InvalidParameter"),
        (
            _bad(lambda b: b["input"].update(base_image_url="ftp://h/x.png")),
            400,
            "InvalidParameter",
        ),
        (
            _bad(lambda b: b["input"].update(base_image_url="data:image/png;base64,AA==")),
            400,
            "InvalidParameter",
        ),
        (
            _bad(lambda b: b["input"].update(base_image_url="http://h/图.png")),
            400,
            "InvalidParameter",
        ),
        (
            _bad(lambda b: b["input"].update(function="description_edit_with_mask")),
            400,
            "InvalidParameter",
        ),
        (_bad(lambda b: b["parameters"].update(n=5)), 400, "InvalidParameter"),
        (_bad(lambda b: b["parameters"].update(n=0)), 400, "InvalidParameter"),
        (_bad(lambda b: b["parameters"].update(seed=-1)), 400, "InvalidParameter"),
        (_bad(lambda b: b["parameters"].update(watermark="yes")), 400, "InvalidParameter"),
        (
            _bad(
                lambda b: (
                    b["input"].update(function="expand"),
                    b["parameters"].update(top_scale=2.5),
                )
            ),
            400,
            "InvalidParameter",
        ),
        (
            _bad(
                lambda b: (
                    b["input"].update(function="super_resolution"),
                    b["parameters"].update(upscale_factor=5),
                )
            ),
            400,
            "InvalidParameter",
        ),
    ],
)
def test_wanx_validation(
    dc: httpx.Client, dash: FakeDashScope, body: Any, status: int, code: str
) -> None:
    r = dc.post(CREATE, json=body, headers={"X-DashScope-Async": "enable"})
    assert r.status_code == status, r.text
    assert r.json()["code"] == code and r.json()["request_id"]
    assert dash.submissions == 0


def test_wanx_scales_ignored_outside_expand_and_no_mask_for_stylization_local(
    dash: FakeDashScope, dc: httpx.Client
) -> None:
    url = dash.put_file(make_png(512, 512))
    submit(dc, wanx(url, top_scale=9.0))
    submit(dc, wanx(url, "stylization_local"))
    assert dash.submissions == 2


def test_wanx_result_sizes_for_expand_and_super_resolution(
    dash: FakeDashScope, dc: httpx.Client
) -> None:
    url = dash.put_file(make_png(600, 512))
    expand = wanx(url, "expand", left_scale=1.5, right_scale=1.5, top_scale=2.0)
    sr = wanx(url, "super_resolution", upscale_factor=2)
    sizes = []
    for body in (expand, sr):
        out = poll(dc, submit(dc, body))["output"]
        sizes.append(image_size(WEB.get(out["results"][0]["url"]).content))
    assert sizes == [(900, 768), (1200, 1024)]


def test_wanx_fetch_failures_fail_the_task(dash: FakeDashScope, dc: httpx.Client) -> None:
    for url in (
        "http://127.0.0.1:9/gone.png",
        "https://example.com/a.png",
        dash.put_file(b"not an image"),
    ):
        out = poll(dc, submit(dc, wanx(url)))["output"]
        assert out["task_status"] == "FAILED" and out["code"] == "InvalidParameter", out
        assert out["task_metrics"]["FAILED"] == 1
    small = dash.put_file(make_png(300, 300))
    out = poll(dc, submit(dc, wanx(small)))["output"]
    assert out["task_status"] == "FAILED" and "512" in out["message"]


def test_wanx_remote_images_and_mask(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.remote_images["https://wanx.example/base.png"] = make_png(512, 512)
    dash.remote_images["https://wanx.example/mask.png"] = make_mask_png(512, 512, style="bw")
    dash.remote_images["https://wanx.example/bad-mask.png"] = make_mask_png(600, 512, style="bw")
    body = wanx("https://wanx.example/base.png", "description_edit_with_mask")
    body["input"]["mask_image_url"] = "https://wanx.example/mask.png"
    assert poll(dc, submit(dc, body))["output"]["task_status"] == "SUCCEEDED"
    body["input"]["mask_image_url"] = "https://wanx.example/bad-mask.png"
    out = poll(dc, submit(dc, body))["output"]
    assert out["task_status"] == "FAILED" and "mask" in out["message"]


# ============================================================================ upload flow


def test_upload_policy_then_oss_url(dash: FakeDashScope, dc: httpx.Client) -> None:
    policy = get_policy(dc)
    assert policy["upload_host"] == f"{dash.base_url}/oss-upload"
    assert {
        "upload_dir",
        "signature",
        "policy",
        "oss_access_key_id",
        "max_file_size_mb",
    } <= policy.keys()
    key = f"{policy['upload_dir']}/photo.png"
    data = make_png(512, 512)
    r = WEB.post(policy["upload_host"], files=oss_form(policy, key, data))
    assert r.status_code == 200, r.text
    assert dash.uploads[key] == data
    assert dash.last("oss_upload").parts[-1] == "file"
    ok = submit(dc, wanx(f"oss://{key}"), **{"X-DashScope-OssResourceResolve": "enable"})
    assert poll(dc, ok)["output"]["task_status"] == "SUCCEEDED"
    no_header = poll(dc, submit(dc, wanx(f"oss://{key}")))["output"]
    assert no_header["task_status"] == "FAILED" and "OssResourceResolve" in no_header["message"]
    dash.expire_uploads()
    gone = submit(dc, wanx(f"oss://{key}"), **{"X-DashScope-OssResourceResolve": "enable"})
    assert poll(dc, gone)["output"]["task_status"] == "FAILED"


def test_upload_rejections(dash: FakeDashScope, dc: httpx.Client) -> None:
    policy = get_policy(dc)
    key = f"{policy['upload_dir']}/a.png"
    data = make_png(8, 8)
    host = policy["upload_host"]

    def post(form: list[tuple[str, Any]]) -> httpx.Response:
        return WEB.post(host, files=form)

    form = oss_form(policy, key, data)
    file_first = [form[-1], *form[:-1]]
    r = post(file_first)
    assert r.status_code == 400 and "<Code>InvalidArgument</Code>" in r.text
    bad_sig = [(k, (None, "AAAA")) if k == "Signature" else (k, v) for k, v in form]
    assert "<Code>SignatureDoesNotMatch</Code>" in post(bad_sig).text
    bad_acl = [(k, (None, "public-read")) if k == "x-oss-object-acl" else (k, v) for k, v in form]
    assert post(bad_acl).status_code == 403
    outside = oss_form(policy, "elsewhere/a.png", data)
    assert post(outside).status_code == 403
    assert post(form).status_code == 200
    r = post(form)
    assert r.status_code == 409 and "FileAlreadyExists" in r.text
    dash.expire_policies()
    assert "Policy expired" in post(oss_form(policy, key + "2", data)).text
    r = dc.get("/api/v1/uploads", params={"action": "nope", "model": "m"})
    assert r.status_code == 400 and r.json()["code"] == "InvalidParameter"


# ============================================================================ qwen sync


def test_qwen_sync_edit_with_url_and_data_uri(dash: FakeDashScope, dc: httpx.Client) -> None:
    a = dash.put_file(make_png(512, 512))
    b = data_uri(make_png(800, 400))
    r = dc.post(GENERATION, json=qwen({"image": a}, {"image": b}, {"text": "merge"}, n=2))
    assert r.status_code == 200, r.text
    body = r.json()
    choice = body["output"]["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["role"] == "assistant"
    urls = [c["image"] for c in choice["message"]["content"]]
    assert len(urls) == 2 and body["usage"]["image_count"] == 2 and body["request_id"]
    w, h = body["usage"]["width"], body["usage"]["height"]
    assert w % 16 == 0 and h % 16 == 0 and abs(w / h - 2.0) < 0.05  # last image's aspect
    assert image_size(WEB.get(urls[0]).content) == (w, h)
    assert dash.generations == 1


def test_qwen_size_is_rounded_to_16(dc: httpx.Client, dash: FakeDashScope) -> None:
    img = data_uri(make_png(400, 400))
    r = dc.post(GENERATION, json=qwen({"image": img}, {"text": "x"}, size="1000*700"))
    assert (r.json()["usage"]["width"], r.json()["usage"]["height"]) == (1008, 704)


@pytest.mark.parametrize(
    "body",
    [
        qwen({"image": "IMG"}, {"text": "x"}, model="qwen-image-edit", n=2),
        qwen({"image": "IMG"}, {"text": "x"}, model="qwen-image-edit", size="1024*1024"),
        qwen({"image": "IMG"}, {"text": "x"}, n=7),
        qwen({"image": "IMG"}, {"text": "x"}, size="4096*1024"),
        qwen({"image": "IMG"}, {"text": "x"}, size="1024x1024"),
        qwen({"image": "IMG"}, {"text": "x"}, {"text": "y"}),
        qwen({"text": "x"}),
        qwen(*[{"image": "IMG"}] * 4, {"text": "x"}),
        qwen({"image": "IMG", "text": "x"}),
        {"model": "qwen-image-edit-plus", "input": {"messages": []}},
        {
            "model": "qwen-image-edit-plus",
            "input": {
                "messages": [{"role": "assistant", "content": [{"image": "IMG"}, {"text": "x"}]}]
            },
        },
        qwen({"image": "https://example.com/off-box.png"}, {"text": "x"}),
        qwen({"image": data_uri(make_png(200, 200))}, {"text": "x"}),
    ],
)
def test_qwen_validation(dc: httpx.Client, dash: FakeDashScope, body: dict[str, Any]) -> None:
    img = data_uri(make_png(400, 400))
    text = json.dumps(body).replace('"IMG"', json.dumps(img))
    r = dc.post(GENERATION, content=text, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["code"] == "InvalidParameter"
    assert dash.generations == 0


def test_qwen_plain_model_single_image_and_truncation(
    dc: httpx.Client, dash: FakeDashScope
) -> None:
    img = data_uri(make_png(400, 400))
    body = qwen(
        {"image": img}, {"text": "x" * 900}, model="qwen-image-edit", negative_prompt="n" * 600
    )
    r = dc.post(GENERATION, json=body)
    assert r.status_code == 200 and r.json()["usage"]["image_count"] == 1
    assert len(dash.last("generation").json["parameters"]["negative_prompt"]) == 600


def test_qwen_rejects_async_header_and_unknown_model(dc: httpx.Client) -> None:
    body = qwen({"image": data_uri(make_png(400, 400))}, {"text": "x"})
    r = dc.post(GENERATION, json=body, headers={"X-DashScope-Async": "enable"})
    assert r.status_code == 403 and "asynchronous" in r.json()["message"]
    r = dc.post(GENERATION, json={**body, "model": "qwen-vl-max"})
    assert r.status_code == 404 and r.json()["code"] == "ModelNotFound"


def test_qwen_accepts_oss_with_resolve_header(dash: FakeDashScope, dc: httpx.Client) -> None:
    policy = get_policy(dc)
    key = f"{policy['upload_dir']}/q.png"
    WEB.post(policy["upload_host"], files=oss_form(policy, key, make_png(400, 400)))
    body = qwen({"image": f"oss://{key}"}, {"text": "x"})
    assert dc.post(GENERATION, json=body).status_code == 400
    r = dc.post(GENERATION, json=body, headers={"X-DashScope-OssResourceResolve": "enable"})
    assert r.status_code == 200, r.text


# ============================================================================ DashScope faults


def test_dashscope_injected_errors(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.inject(
        "task",
        ds.rate_limited(retry_after=1),
        ds.rate_limited(),
        ds.free_quota_exhausted(),
        ds.allocation_quota_exceeded(),
        ds.invalid_api_key(),
        ds.invalid_parameter("bad"),
        ds.data_inspection_failed(),
        ds.internal_error(),
    )
    got = [dc.get("/api/v1/tasks/x") for _ in range(9)]
    assert [r.status_code for r in got] == [429, 429, 429, 429, 401, 400, 400, 500, 200]
    assert got[0].json()["code"] == "Throttling.RateQuota" and got[0].headers["retry-after"] == "1"
    assert got[1].json()["code"] == "Throttling.RateQuota" and "retry-after" not in got[1].headers
    assert got[2].json() | {"request_id": ""} == {
        "request_id": "",
        "code": "Throttling.AllocationQuota",
        "message": "Free allocated quota exceeded.",
    }
    assert "Free" not in got[3].json()["message"]
    assert [r.json()["code"] for r in got[4:8]] == [
        "InvalidApiKey",
        "InvalidParameter",
        "DataInspectionFailed",
        "InternalError",
    ]


def test_dashscope_500_then_success_on_create(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.inject("create", ds.internal_error())
    body = wanx(dash.put_file(make_png(512, 512)))
    r = dc.post(CREATE, json=body, headers={"X-DashScope-Async": "enable"})
    assert r.status_code == 500 and dash.submissions == 0
    submit(dc, body)
    assert dash.submissions == 1


def test_dashscope_blocked_words(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.blocked_words = {"forbidden"}
    body = wanx(dash.put_file(make_png(512, 512)))
    body["input"]["prompt"] = "a FORBIDDEN thing"
    r = dc.post(CREATE, json=body, headers={"X-DashScope-Async": "enable"})
    assert r.status_code == 400 and r.json()["code"] == "DataInspectionFailed"


def test_dashscope_delay_malformed_and_expired_results(
    dash: FakeDashScope, dc: httpx.Client
) -> None:
    dash.inject("task", Fault.delay(0.6), Fault.malformed())
    with pytest.raises(httpx.ReadTimeout):
        dc.get("/api/v1/tasks/x", timeout=0.2)
    # the server still answers the abandoned request later; let it finish inside this test
    assert dash.wait_for(lambda: dash.requests_to("task")[0].status is not None)
    r = dc.get("/api/v1/tasks/x")
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        r.json()
    out = poll(dc, submit(dc, wanx(dash.put_file(make_png(512, 512)))))["output"]
    url = out["results"][0]["url"]
    assert WEB.get(url).status_code == 200
    dash.expire_results()
    assert WEB.get(url).status_code == 404


def test_dashscope_qps_counter_and_limit(dash: FakeDashScope, dc: httpx.Client) -> None:
    for _ in range(25):
        dc.get("/api/v1/tasks/x")
    assert dash.max_qps_seen >= 20 and dash.total_queries == 25 and dash.queries["x"] == 25
    dash.reset()  # forget the burst above
    dash.qps_limit = 20
    codes = [dc.get("/api/v1/tasks/y").status_code for _ in range(25)]
    assert 429 in codes and codes[0] == 200


def test_dashscope_concurrency_limit(dash: FakeDashScope, dc: httpx.Client) -> None:
    dash.concurrency_limit = 2
    body = wanx(dash.put_file(make_png(512, 512)))
    submit(dc, body)
    submit(dc, body)
    r = dc.post(CREATE, json=body, headers={"X-DashScope-Async": "enable"})
    assert r.status_code == 429 and r.json()["code"] == "Throttling.RateQuota"
    assert dash.max_concurrent_seen == 2


def test_dashscope_path_prefix() -> None:
    with FakeDashScope(api_key="k", path_prefix="/aliyun") as fake:
        body = qwen({"image": data_uri(make_png(400, 400))}, {"text": "x"})
        headers = {"Authorization": "Bearer k"}
        r = WEB.post(fake.url(GENERATION), json=body, headers=headers)
        assert r.status_code == 200 and fake.url("/x") == f"{fake.base_url}/aliyun/x"
        assert WEB.post(fake.base_url + GENERATION, json=body, headers=headers).status_code == 404


# ============================================================================ OpenAI / DGrid


def edit_files(*images: bytes, mask: bytes | None = None, field: str = "image[]") -> list:
    files = [(field, (f"in{i}.png", data, "image/png")) for i, data in enumerate(images)]
    if mask is not None:
        files.append(("mask", ("mask.png", mask, "image/png")))
    return files


def test_openai_gpt_image_edit(oai: FakeOpenAI, oc: httpx.Client) -> None:
    a, b = make_png(600, 400), make_png(300, 300)
    data = {
        "model": "gpt-image-1",
        "prompt": "put them together",
        "n": "2",
        "size": "1536x1024",
        "quality": "high",
        "output_format": "jpeg",
        "output_compression": "80",
        "input_fidelity": "high",
    }
    r = oc.post("/v1/images/edits", data=data, files=edit_files(a, b, mask=make_mask_png(600, 400)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-request-id"].startswith("req_")
    assert len(body["data"]) == 2 and set(body["data"][0]) == {"b64_json"}
    jpeg = base64.b64decode(body["data"][0]["b64_json"])
    assert image_format(jpeg) == "JPEG" and image_size(jpeg) == (1536, 1024)
    assert fake_meta(jpeg)["prompt"] == "put them together"
    assert (
        body["output_format"] == "jpeg"
        and body["size"] == "1536x1024"
        and body["quality"] == "high"
    )
    usage = body["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert set(usage["input_tokens_details"]) == {"text_tokens", "image_tokens"}
    rec = oai.last("edits")
    assert [f.field for f in rec.files] == ["image[]", "image[]", "mask"]
    assert rec.files[0].filename == "in0.png" and rec.files[0].content_type == "image/png"
    assert rec.files[1].data == b and rec.form["n"] == "2"


def test_openai_auto_size_and_single_image_field(oc: httpx.Client) -> None:
    data = {"model": "gpt-image-1", "prompt": "x", "response_format": "url"}
    r = oc.post("/v1/images/edits", data=data, files=edit_files(make_png(400, 700), field="image"))
    assert r.status_code == 200, r.text
    png = base64.b64decode(r.json()["data"][0]["b64_json"])  # gpt-image: always b64
    assert image_size(png) == (1024, 1536)


def test_openai_dalle2_url_results_expire(oai: FakeOpenAI, oc: httpx.Client) -> None:
    r = oc.post(
        "/v1/images/edits",
        data={"model": "dall-e-2", "prompt": "x", "size": "256x256"},
        files=edit_files(make_png(64, 64), field="image"),
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert "usage" not in body
    url = body["data"][0]["url"]
    assert image_size(WEB.get(url).content) == (256, 256)
    oai.expire_results()
    assert WEB.get(url).status_code == 404


@pytest.mark.parametrize(
    ("mask", "fragment"),
    [
        (make_mask_png(500, 400), "does not match"),
        (make_mask_png(600, 400, style="rgb"), "alpha channel"),
    ],
)
def test_openai_mask_rules(oc: httpx.Client, mask: bytes, fragment: str) -> None:
    files = edit_files(make_png(600, 400), mask=mask)
    r = oc.post("/v1/images/edits", data={"model": "gpt-image-1", "prompt": "x"}, files=files)
    assert r.status_code == 400
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == "mask" and fragment in err["message"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": "11"}, "n"),
        ({"n": "0"}, "n"),
        ({"size": "800x600"}, "size"),
        ({"model": "gpt-9"}, "model"),
        ({"quality": "ultra"}, "quality"),
        ({"output_format": "png", "output_compression": "50"}, "output_compression"),
        ({"background": "transparent", "output_format": "jpeg"}, "background"),
        ({"model": "gpt-image-1-mini", "input_fidelity": "high"}, "input_fidelity"),
        ({"model": "dall-e-2", "background": "opaque"}, "background"),
        ({"response_format": "xml"}, "response_format"),
        ({"prompt": ""}, "prompt"),
    ],
)
def test_openai_field_validation(oc: httpx.Client, fields: dict[str, str], param: str) -> None:
    data = {"model": "gpt-image-1", "prompt": "x", **fields}
    r = oc.post("/v1/images/edits", data=data, files=edit_files(make_png(64, 64)))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_openai_request_shape_errors(oc: httpx.Client) -> None:
    r = oc.post("/v1/images/edits", json={"model": "gpt-image-1", "prompt": "x"})
    assert r.status_code == 400 and "multipart/form-data" in r.json()["error"]["message"]
    r = oc.post(
        "/v1/images/edits",
        data={"model": "gpt-image-1", "prompt": "x"},
        files={"user": (None, "u")},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "image"
    octet = [("image[]", ("blob", make_png(64, 64), "application/octet-stream"))]
    r = oc.post("/v1/images/edits", data={"model": "gpt-image-1", "prompt": "x"}, files=octet)
    assert r.status_code == 400 and r.json()["error"]["code"] == "unsupported_file_mimetype"
    r = oc.post(
        "/v1/images/edits",
        data={"model": "dall-e-2", "prompt": "x"},
        files=edit_files(make_png(64, 32), field="image"),
    )
    assert r.status_code == 400 and "square" in r.json()["error"]["message"]


def test_openai_auth(oai: FakeOpenAI) -> None:
    url = oai.url()
    files = edit_files(make_png(64, 64))
    r = WEB.post(url, data={"prompt": "x"}, files=files)
    assert r.status_code == 401 and r.json()["error"]["code"] is None
    r = WEB.post(
        url, data={"prompt": "x"}, files=files, headers={"Authorization": "Bearer sk-wrong-key"}
    )
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def test_openai_injected_errors(oai: FakeOpenAI, oc: httpx.Client) -> None:
    oai.inject(
        "edits",
        oa.moderation_blocked(),
        oa.rate_limited(retry_after=2, retry_after_ms=1500),
        oa.rate_limited(),
        oa.insufficient_quota(),
        oa.invalid_api_key(),
        oa.server_error(),
    )

    def call() -> httpx.Response:
        data = {"model": "gpt-image-1", "prompt": "x"}
        return oc.post("/v1/images/edits", data=data, files=edit_files(make_png(64, 64)))

    got = [call() for _ in range(7)]
    assert [r.status_code for r in got] == [400, 429, 429, 429, 401, 500, 200]
    moderated = got[0].json()["error"]
    assert (moderated["type"], moderated["code"]) == (
        "image_generation_user_error",
        "moderation_blocked",
    )
    assert got[1].json()["error"]["code"] == "rate_limit_exceeded"
    assert got[1].headers["retry-after"] == "2" and got[1].headers["retry-after-ms"] == "1500"
    assert "retry-after" not in got[2].headers
    quota = got[3].json()["error"]
    assert (
        quota["code"] == "insufficient_quota" and "exceeded your current quota" in quota["message"]
    )
    assert got[4].json()["error"]["code"] == "invalid_api_key"
    assert got[5].json()["error"]["type"] == "server_error"
    assert oai.edits == 1


def test_openai_blocked_words(oai: FakeOpenAI, oc: httpx.Client) -> None:
    oai.blocked_words = {"gore"}
    data = {"model": "gpt-image-1", "prompt": "add gore"}
    r = oc.post("/v1/images/edits", data=data, files=edit_files(make_png(64, 64)))
    assert r.status_code == 400 and r.json()["error"]["code"] == "moderation_blocked"


def test_dgrid_flavor() -> None:
    with FakeOpenAI(api_key="dg", flavor="dgrid") as fake:
        headers = {"Authorization": "Bearer dg"}
        r = WEB.post(
            fake.url(),
            headers=headers,
            data={"model": "qwen-image-edit", "prompt": "x", "n": "1"},
            files=edit_files(make_png(320, 200), field="image"),
        )
        assert r.status_code == 200, r.text
        item = r.json()["data"][0]
        assert set(item) == {"url", "b64_json", "revised_prompt"} and item["b64_json"] == ""
        assert image_size(WEB.get(item["url"]).content) == (320, 200)
        assert "usage" in r.json()
        src = fake.put_file(make_png(300, 300))
        body = {
            "model": "wanx-v1",
            "input": {"messages": [{"role": "user", "content": f"edit {src}"}]},
        }
        r = WEB.post(fake.url(), headers=headers, json=body)
        assert r.status_code == 200, r.text
        assert image_size(WEB.get(r.json()["data"][0]["url"]).content) == (1024, 1024)


# ============================================================================ Nebula


def nebula_body(*parts: dict[str, str], **params: Any) -> dict[str, Any]:
    return {
        "model": "qwen-image-edit-plus",
        "prompt": "edit",
        "parameters": params,
        "contents": [{"role": "user", "parts": list(parts)}],
    }


def test_nebula_success_shape(neb: FakeNebula) -> None:
    img = neb.put_file(make_png(600, 400))
    body = nebula_body({"image": img}, {"image": data_uri(make_png(400, 400))}, {"text": "go"}, n=2)
    r = WEB.post(
        f"{neb.base_url}/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {NB_KEY}"},
    )
    assert r.status_code == 200, r.text
    payload = r.json()
    assert payload["code"] == 200 and payload["msg"]
    items = payload["data"]["data"]
    assert len(items) == 2 and items[0]["b64_json"] == "" and items[0]["revised_prompt"] == ""
    meta = payload["data"]["metadata"]
    assert [c["image"] for c in meta["output"]["choices"][0]["message"]["content"]] == [
        i["url"] for i in items
    ]
    assert meta["usage"]["image_count"] == 2 and meta["request_id"]
    assert image_size(WEB.get(items[0]["url"]).content) == (
        meta["usage"]["width"],
        meta["usage"]["height"],
    )
    assert isinstance(payload["data"]["created"], int)


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda b: b["contents"][0]["parts"].insert(0, {"image": "IMG"}) or None, None),
        (lambda b: b.pop("parameters"), "parameters"),
        (lambda b: b["parameters"].update(n=7), "n must"),
        (lambda b: b.update(model="qwen-image-edit"), "model"),
        (lambda b: b["contents"][0]["parts"].reverse(), "last"),
        (
            lambda b: b["contents"][0]["parts"].extend([{"image": "IMG"}] * 3),
            "Image quantity exceeds limit",
        ),
    ],
)
def test_nebula_validation(neb: FakeNebula, mutate: Any, fragment: str | None) -> None:
    img = data_uri(make_png(400, 400))
    body = nebula_body({"image": img}, {"text": "go"})
    mutate(body)
    body = json.loads(json.dumps(body).replace('"IMG"', json.dumps(img)))
    r = WEB.post(
        f"{neb.base_url}/v1/images/generations",
        json=body,
        headers={"Authorization": f"Bearer {NB_KEY}"},
    )
    if fragment is None:  # two images then text: fine
        assert r.status_code == 200
        return
    assert r.status_code == 400 and r.json()["code"] == 400 and r.json()["data"] is None
    assert fragment in r.json()["msg"]


def test_nebula_auth_and_faults(neb: FakeNebula) -> None:
    url = f"{neb.base_url}/v1/images/generations"
    r = WEB.post(url, json={}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json() == nb.error_body(401)
    neb.inject(
        "generations", nb.rate_limited(retry_after=3), nb.insufficient_balance(), nb.server_error()
    )
    auth = {"Authorization": f"Bearer {NB_KEY}"}
    got = [WEB.post(url, json={}, headers=auth) for _ in range(3)]
    assert [(r.status_code, r.json()["code"]) for r in got] == [(429, 429), (403, 403), (500, 500)]
    assert got[0].headers["retry-after"] == "3"


def test_nebula_non_mirrored_http_status() -> None:
    with FakeNebula(api_key="k", http_status_mirrors_code=False) as fake:
        r = WEB.post(
            f"{fake.base_url}/v1/images/generations", json={}, headers={"Authorization": "Bearer k"}
        )
        assert r.status_code == 200 and r.json()["code"] == 400


# ============================================================================ SoftSugar


def sign_in(
    sugar: FakeSoftSugar, *, timestamp: str | None = None, sign: str | None = None
) -> httpx.Response:
    ts = timestamp or str(int(time.time()))
    body = {
        "appId": "app-1",
        "timestamp": ts,
        "sign": sign or hashlib.md5(f"app-1{ts}key-1".encode()).hexdigest(),
        "grantType": "sign",
    }
    return WEB.post(f"{sugar.base_url}/api/uc/v1/access/api/token", json=body)


def edit(
    sugar: FakeSoftSugar, token: str, param: dict[str, Any] | str, name: str = "img"
) -> httpx.Response:
    raw = param if isinstance(param, str) else json.dumps(param)
    return WEB.post(
        f"{sugar.base_url}/api/2dvh/v1/material/single/image/edit",
        json={"imageName": name, "param": raw},
        headers={"Authorization": f"Bearer {token}"},
    )


def test_softsugar_sign_matches_faq_example() -> None:
    sign = FakeSoftSugar.sign(
        "c103af9ac77646ca9fb0122e75f30811", "1686730537", "89f81a207e5e4a1297ed1255879191ee"
    )
    assert sign == "f6ffecf33d2073d9b3b93ba157665cfc"


def test_softsugar_token(sugar: FakeSoftSugar) -> None:
    r = sign_in(sugar)
    assert r.status_code == 200 and r.json()["code"] == 0
    data = r.json()["data"]
    assert data["accessToken"] and data["expiresIn"] == 7200 and sugar.tokens_issued == 1
    assert sign_in(sugar, sign="0" * 32).json()["code"] == ss.PARAM_ERROR
    stale = str(int(time.time()) - 3600)
    assert "expired" in sign_in(sugar, timestamp=stale).json()["message"]
    assert sign_in(sugar, timestamp=str(int(time.time() * 1000))).json()["code"] == 0  # ms ok


def test_softsugar_edit_and_callback(sugar: FakeSoftSugar, receiver: CallbackReceiver) -> None:
    sugar.callback_url = receiver.url("/hooks/softsugar")
    token = sign_in(sugar).json()["data"]["accessToken"]
    src = sugar.put_file(make_png(640, 480))
    param = {
        "images": [src],
        "prompt": "sky",
        "resolution": [320, 240],
        "watermark": {"show": True, "content": "AI"},
    }
    r = edit(sugar, token, param)
    assert r.status_code == 200 and r.json()["code"] == 0 and isinstance(r.json()["data"], int)
    task_id = r.json()["data"]
    (hit,) = receiver.wait_for_requests(1)
    assert hit.path == "/hooks/softsugar" and hit.json["taskId"] == task_id
    assert hit.json["status"] == "SUCCEEDED" and hit.json["code"] == 0
    assert image_size(WEB.get(hit.json["images"][0]).content) == (320, 240)
    assert sugar.wait_callbacks(1)[0].status == 200
    assert json.loads(sugar.last("edit").json["param"]) == param


def test_softsugar_token_expiry_forces_refresh(sugar: FakeSoftSugar) -> None:
    sugar.task_seconds = None
    token = sign_in(sugar).json()["data"]["accessToken"]
    param = {"images": [sugar.put_file(make_png(64, 64))], "prompt": "x"}
    assert edit(sugar, token, param).json()["code"] == 0
    sugar.expire_tokens()
    r = edit(sugar, token, param)
    assert r.status_code == 401 and r.json()["code"] == 401
    fresh = sign_in(sugar).json()["data"]["accessToken"]
    assert edit(sugar, fresh, param).json()["code"] == 0
    assert edit(sugar, "garbage", param).status_code == 401


@pytest.mark.parametrize(
    "param",
    [
        "{not json",
        {"images": [], "prompt": "x"},
        {"images": ["http://127.0.0.1/a.png"] * 4, "prompt": "x"},
        {"images": ["http://127.0.0.1/a.png"]},
        {"images": ["http://127.0.0.1/a.png"], "prompt": "x", "resolution": [4096, 1024]},
        {"images": ["http://127.0.0.1/a.png"], "prompt": "x", "watermark": {"show": "yes"}},
    ],
)
def test_softsugar_param_validation(sugar: FakeSoftSugar, param: Any) -> None:
    token = sign_in(sugar).json()["data"]["accessToken"]
    r = edit(sugar, token, param)
    assert r.status_code == 200 and r.json()["code"] == ss.PARAM_ERROR and r.json()["data"] is None
    assert sugar.submissions == 0


def test_softsugar_failure_callbacks_and_manual_completion(
    sugar: FakeSoftSugar, receiver: CallbackReceiver
) -> None:
    sugar.callback_url = receiver.url()
    sugar.task_seconds = None
    token = sign_in(sugar).json()["data"]["accessToken"]
    bad = edit(sugar, token, {"images": ["http://127.0.0.1:9/none.png"], "prompt": "x"}).json()[
        "data"
    ]
    sugar.complete(bad)
    failed = receiver.wait_for_requests(1)[0].json
    assert failed["status"] == "FAILED" and failed["code"] != 0 and failed["images"] == []
    sugar.fail_with = (5001, "engine error")
    src = sugar.put_file(make_png(64, 64))
    task_id = edit(sugar, token, {"images": [src], "prompt": "x"}).json()["data"]
    sugar.complete(task_id)
    assert receiver.wait_for_requests(2)[1].json["code"] == 5001
    sugar.callback_url = None
    sugar.fail_with = None
    quiet = edit(sugar, token, {"images": [src], "prompt": "x"}).json()["data"]
    assert sugar.complete(quiet).callback_skipped and sugar.tasks[quiet].status == "SUCCEEDED"


def test_softsugar_callback_retry_on_receiver_error(
    sugar: FakeSoftSugar, receiver: CallbackReceiver
) -> None:
    receiver.status = 500
    sugar.callback_url = receiver.url()
    sugar.callback_retries = 1
    sugar.task_seconds = 0.05
    token = sign_in(sugar).json()["data"]["accessToken"]
    edit(sugar, token, {"images": [sugar.put_file(make_png(64, 64))], "prompt": "x"})
    attempts = sugar.wait_callbacks(2)
    assert [a.status for a in attempts] == [500, 500]
    assert len(receiver.requests_to("callback")) == 2


def test_softsugar_injected_token_error(sugar: FakeSoftSugar) -> None:
    token = sign_in(sugar).json()["data"]["accessToken"]
    sugar.inject("edit", ss.token_invalid())
    r = edit(sugar, token, {"images": ["http://127.0.0.1/a.png"], "prompt": "x"})
    assert r.status_code == 401
