"""Contract tests of the DashScope adapter against FakeDashScope on 127.0.0.1 (real HTTP)."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from PIL import Image

from tests.fakes.dashscope import (
    FakeDashScope,
    access_denied,
    allocation_quota_exceeded,
    arrearage,
    free_quota_exhausted,
    internal_error,
    invalid_parameter,
    ip_infringement,
    model_not_found,
    rate_limited,
    service_unavailable,
)
from tests.fakes.http import Fault, image_size, make_mask_png
from tools.errors import (
    AuthError,
    ContentRejected,
    InvalidParameter,
    QuotaError,
    RetouchError,
    Throttled,
    Unsupported,
    VendorCanceled,
    VendorError,
    VendorFault,
    VendorRejected,
    VendorTimeout,
)
from tools.media import InputImage, encode
from tools.models import EditRequest, Expand
from tools.vendors.base import Finished, Job, Pending
from tools.vendors.dashscope import DashScopeSettings, DashScopeVendor

KEY = "sk-test-SECRET-0123456789"
UPLOAD_FIELDS = [
    "OSSAccessKeyId",
    "Signature",
    "policy",
    "x-oss-object-acl",
    "x-oss-forbid-overwrite",
    "key",
    "success_action_status",
    "file",
]


# ---- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeDashScope]:
    with FakeDashScope(api_key=KEY) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeDashScope) -> FakeDashScope:
    server.reset()
    return server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def make_vendor(
    fake: FakeDashScope, http: httpx.AsyncClient, prefix: str = "", **settings: object
) -> DashScopeVendor:
    options: dict[str, object] = {"api_key": KEY, "base_url": fake.base_url + prefix}
    options.update(settings)
    return DashScopeVendor("dashscope", DashScopeSettings(**options), http)


@pytest.fixture
def vendor(fake: FakeDashScope, http: httpx.AsyncClient) -> DashScopeVendor:
    return make_vendor(fake, http, timeout_s=5)


def image(w: int = 512, h: int = 512, fmt: str = "PNG", color: tuple[int, ...] = (40, 90, 160)):
    pil = Image.new("RGB", (w, h), color)
    pil.paste((230, 230, 230), (w // 4, h // 4, w // 2, h // 2))
    return encode(pil, fmt)


def mask(w: int, h: int) -> InputImage:
    data = make_mask_png(w, h, style="bw")
    return InputImage(data, "image/png", w, h)


def job(function: str = "stylization_all", prompt: str = "oil painting", **kw: object) -> Job:
    kw.setdefault("images", [image()])
    return Job(task_id="t" * 32, function=function, prompt=prompt, **kw)  # type: ignore[arg-type]


async def finish(vendor: DashScopeVendor, pending: Pending, polls: int = 10) -> Finished:
    """Poll until the task ends (the fake's plan advances per GET, so no waiting)."""
    seen = []
    for _ in range(polls):
        outcome = await vendor.poll(pending.vendor_task_id)
        if isinstance(outcome, Finished):
            return outcome
        seen.append(outcome.status)
    raise AssertionError(f"still pending after {polls} polls: {seen}")


async def fetch(http: httpx.AsyncClient, url: str) -> bytes:
    response = await http.get(url)
    assert response.status_code == 200
    return response.content


def assert_clean(exc: BaseException, j: Job | None = None) -> None:
    """The API key appears in no error text, stored form or note."""
    texts = [str(exc), repr(exc)]
    if isinstance(exc, RetouchError):
        texts.append(str(exc.to_dict()))
    if j is not None:
        texts.extend(j.notes)
    assert all(KEY not in t for t in texts), texts


async def raises(cls: type[VendorError] | type[RetouchError], coro, j: Job | None = None):
    with pytest.raises(cls) as info:
        await coro
    assert_clean(info.value, j)
    return info.value


# ---- settings and capabilities -------------------------------------------------------------


def test_settings_defaults() -> None:
    s = DashScopeSettings()
    assert s.kind == "dashscope"
    assert s.base_url == "https://dashscope.aliyuncs.com"
    assert (s.model, s.edit_model) == ("wanx2.1-imageedit", "qwen-image-edit-plus")
    assert (s.max_concurrent, s.submit_rps, s.query_rps) == (2, 2, 18)
    assert (s.poll_interval_s, s.poll_max_interval_s) == (2, 2.5)
    assert (s.min_side, s.max_side, s.max_bytes) == (512, 4096, 10 * 1024 * 1024)
    assert s.formats == ["jpeg", "png", "bmp", "tiff", "webp"]
    assert (s.edit_min_side, s.edit_max_side) == (384, 3072)
    assert (s.max_prompt_chars, s.max_negative_prompt_chars) == (800, 500)
    assert (s.price_per_image, s.currency, s.upload) == (0.14, "CNY", "auto")
    assert DashScopeSettings(base_url="https://api.302.ai/aliyun/").base_url.endswith("aliyun")
    with pytest.raises(ValueError):
        DashScopeSettings(bogus=1)
    with pytest.raises(ValueError):
        DashScopeSettings(formats=["heic"])


def test_capabilities(http: httpx.AsyncClient) -> None:
    plus = DashScopeVendor("d", DashScopeSettings(), http)
    caps = plus.capabilities
    wanx = {
        "stylization_all",
        "stylization_local",
        "description_edit",
        "description_edit_with_mask",
        "remove_watermark",
        "expand",
        "super_resolution",
        "colorization",
        "doodle",
        "control_cartoon_feature",
    }
    assert set(caps) == wanx | {"edit"}
    for name in wanx:
        assert caps[name].max_n == 4 and caps[name].max_images == 1
        assert {"n", "seed", "watermark"} <= caps[name].params
        assert "generative, wanx2.1-imageedit" in caps[name].note
    assert caps["expand"].params == {"n", "seed", "watermark", "expand"}
    assert caps["super_resolution"].params == {"n", "seed", "watermark", "upscale_factor"}
    assert caps["description_edit_with_mask"].mask == "required"
    assert caps["stylization_local"].mask == "none"
    edit = caps["edit"]
    assert (edit.max_n, edit.max_images, edit.mask) == (6, 3, "none")
    assert edit.params == {"n", "seed", "negative_prompt", "size", "watermark"}
    assert edit.options == {"prompt_extend"}

    plain = DashScopeVendor("d", DashScopeSettings(edit_model="qwen-image-edit"), http)
    edit = plain.capabilities["edit"]
    assert edit.max_n == 1 and "size" not in edit.params and not edit.options
    max_model = DashScopeVendor("d", DashScopeSettings(edit_model="qwen-image-edit-max"), http)
    assert max_model.capabilities["edit"].max_n == 6
    off = DashScopeVendor("d", DashScopeSettings(upload="off"), http)
    assert set(off.capabilities) == {"edit"}


def test_check_refuses_before_sending(http: httpx.AsyncClient) -> None:
    v = DashScopeVendor("d", DashScopeSettings(), http)
    with pytest.raises(Unsupported):  # wanx takes a mask only for description_edit_with_mask
        v.check(EditRequest(images=["x"], function="stylization_local", prompt="p", mask="m"))
    with pytest.raises(InvalidParameter):
        v.check(EditRequest(images=["x"], function="description_edit_with_mask", prompt="p"))
    with pytest.raises(Unsupported):
        v.check(EditRequest(images=["x"], function="edit", prompt="p", mask="m"))
    with pytest.raises(InvalidParameter):
        v.check(EditRequest(images=["x"], prompt="p", size="4000x1024"))
    with pytest.raises(InvalidParameter):
        v.check(EditRequest(images=["x"], prompt="p", options={"prompt_extend": "yes"}))
    with pytest.raises(InvalidParameter):
        v.check(EditRequest(images=["x"], function="doodle", prompt="p", n=5))
    v.check(EditRequest(images=["x"] * 3, prompt="p", n=6, size="1000x1000"))
    plain = DashScopeVendor("d", DashScopeSettings(edit_model="qwen-image-edit"), http)
    with pytest.raises(Unsupported):
        plain.check(EditRequest(images=["x"], prompt="p", size="1024x1024"))
    with pytest.raises(InvalidParameter):
        plain.check(EditRequest(images=["x"], prompt="p", n=2))
    with pytest.raises(InvalidParameter):
        plain.check(EditRequest(images=["x"], prompt="p", options={"prompt_extend": True}))


# ---- wanx: the request ---------------------------------------------------------------------


async def test_wanx_upload_create_and_poll_contract(
    fake: FakeDashScope, vendor: DashScopeVendor, http: httpx.AsyncClient
) -> None:
    j = job()
    pending = await vendor.submit(j)
    assert isinstance(pending, Pending) and pending.status == "PENDING"

    policy = fake.last("policy")
    assert policy.method == "GET" and policy.bearer == KEY
    assert policy.query == {"action": "getPolicy", "model": "wanx2.1-imageedit"}
    upload = fake.last("oss_upload")
    assert upload.parts == UPLOAD_FIELDS
    assert upload.form["success_action_status"] == "200" and upload.status == 200
    assert "authorization" not in upload.headers  # the key never goes to the storage host
    assert upload.file("file").data == j.images[0].data

    create = fake.last("create")
    assert create.bearer == KEY
    assert create.headers["x-dashscope-async"] == "enable"
    assert create.headers["x-dashscope-ossresourceresolve"] == "enable"
    assert create.headers["content-type"] == "application/json"
    key = upload.form["key"]
    assert create.json == {
        "model": "wanx2.1-imageedit",
        "input": {
            "function": "stylization_all",
            "prompt": "oil painting",
            "base_image_url": f"oss://{key}",
        },
        "parameters": {"n": 1},
    }
    assert pending.vendor_task_id == next(iter(fake.tasks))
    assert any("uploaded" in note and "48 h" in note for note in j.notes)

    statuses = []
    for _ in range(3):
        outcome = await vendor.poll(pending.vendor_task_id)
        statuses.append(outcome.status if isinstance(outcome, Pending) else "done")
    assert statuses == ["PENDING", "RUNNING", "done"]
    assert isinstance(outcome, Finished)
    assert outcome.billed_images == 1 and not outcome.failures and len(outcome.images) == 1
    out = outcome.images[0]
    assert out.url and out.data is None
    assert out.expires_at is not None
    assert timedelta(hours=23) < out.expires_at - datetime.now(UTC) <= timedelta(hours=24)
    assert image_size(await fetch(http, out.url)) == (512, 512)
    task_get = fake.last("task")
    assert task_get.path == f"/api/v1/tasks/{pending.vendor_task_id}" and task_get.bearer == KEY


@pytest.mark.parametrize(
    ("function", "extra", "parameters", "size"),
    [
        (
            "stylization_all",
            {"n": 2, "seed": 42, "watermark": True},
            {"n": 2, "seed": 42, "watermark": True},
            (512, 512),
        ),
        (
            "expand",
            {"expand": Expand(left=1.5, right=1.5)},
            {"n": 1, "top_scale": 1.0, "bottom_scale": 1.0, "left_scale": 1.5, "right_scale": 1.5},
            (768, 512),
        ),
        ("super_resolution", {"upscale_factor": 2}, {"n": 1, "upscale_factor": 2}, (1024, 1024)),
        ("super_resolution", {}, {"n": 1}, (512, 512)),
        # scales and factors are sent only to the function they belong to
        ("colorization", {"expand": Expand(top=2), "upscale_factor": 3}, {"n": 1}, (512, 512)),
    ],
)
async def test_wanx_parameters_only_where_they_apply(
    fake: FakeDashScope,
    vendor: DashScopeVendor,
    http: httpx.AsyncClient,
    function: str,
    extra: dict,
    parameters: dict,
    size: tuple[int, int],
) -> None:
    pending = await vendor.submit(job(function, "green fairy", **extra))
    assert fake.last("create").json["parameters"] == parameters
    assert "mask_image_url" not in fake.last("create").json["input"]
    done = await finish(vendor, pending)
    assert len(done.images) == parameters["n"] == done.billed_images
    assert image_size(await fetch(http, done.images[0].url)) == size


async def test_wanx_mask_is_fitted_to_the_fitted_base(
    fake: FakeDashScope, vendor: DashScopeVendor
) -> None:
    j = job("description_edit_with_mask", "a ceramic rabbit", images=[image(300, 300)])
    j.mask = mask(600, 600)
    done = await finish(vendor, await vendor.submit(j))
    assert len(done.images) == 1
    base_up, mask_up = fake.requests_to("oss_upload")
    assert len(fake.requests_to("policy")) == 1  # one policy serves both files
    assert image_size(base_up.file("file").data) == (512, 512)
    uploaded_mask = Image.open(io.BytesIO(mask_up.file("file").data))
    assert uploaded_mask.size == (512, 512)
    gray = uploaded_mask.convert("L")
    assert set(gray.histogram()[1:255]) == {0} and gray.getextrema() == (0, 255)  # pure b/w
    body = fake.last("create").json["input"]
    assert body["base_image_url"] == "oss://" + base_up.form["key"]
    assert body["mask_image_url"] == "oss://" + mask_up.form["key"]
    assert any("upscaled 300×300 → 512×512" in n for n in j.notes), j.notes
    assert any(n.startswith("mask: resized") for n in j.notes), j.notes


async def test_wanx_refuses_a_mask_it_cannot_use(
    fake: FakeDashScope, vendor: DashScopeVendor
) -> None:
    j = job("stylization_local", "wooden house")
    j.mask = mask(512, 512)
    await raises(Unsupported, vendor.submit(j))
    await raises(InvalidParameter, vendor.submit(job("description_edit_with_mask", "x")))
    await raises(InvalidParameter, vendor.submit(job(n=5)))
    await raises(InvalidParameter, vendor.submit(job(images=[image(), image()])))
    assert fake.requests == []


def encoded(fmt: str, mime: str, size: tuple[int, int] = (600, 520)) -> InputImage:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 10)).save(buf, fmt)
    return InputImage(buf.getvalue(), mime, *size)


async def test_wanx_reencodes_formats_it_does_not_take(
    fake: FakeDashScope, vendor: DashScopeVendor, http: httpx.AsyncClient
) -> None:
    j = job(images=[encoded("GIF", "image/gif")])
    await finish(vendor, await vendor.submit(j))
    sent = fake.last("oss_upload").file("file")
    assert sent.content_type == "image/png" and sent.filename.endswith(".png")
    assert Image.open(io.BytesIO(sent.data)).format == "PNG"
    assert any("re-encoded GIF as PNG" in n for n in j.notes), j.notes

    # BMP is on wanx's documented list, so it goes as it is by default...
    j = job(images=[encoded("BMP", "image/bmp")])
    await finish(vendor, await vendor.submit(j))
    assert fake.last("oss_upload").file("file").content_type == "image/bmp"
    assert not j.notes[:-1]  # only the upload note
    # ...and is re-encoded where an instance's formats leave it out.
    strict = make_vendor(fake, http, formats=["jpeg", "png"])
    j = job(images=[encoded("BMP", "image/bmp")])
    await finish(strict, await strict.submit(j))
    assert fake.last("oss_upload").file("file").content_type == "image/png"
    assert any("re-encoded BMP as PNG" in n for n in j.notes), j.notes


async def test_wanx_downscales_large_inputs(fake: FakeDashScope, http: httpx.AsyncClient) -> None:
    small_limit = make_vendor(fake, http, max_side=1024)
    j = job(images=[image(2048, 1024)])
    await finish(small_limit, await small_limit.submit(j))
    assert image_size(fake.last("oss_upload").file("file").data) == (1024, 512)
    assert any("downscaled 2048×1024 → 1024×512" in n for n in j.notes)


async def test_wanx_prompt_truncated_defaulted_or_required(
    fake: FakeDashScope, vendor: DashScopeVendor
) -> None:
    j = job(prompt="x" * 900)
    await vendor.submit(j)
    assert fake.last("create").json["input"]["prompt"] == "x" * 800
    assert any("900 characters" in n and "800" in n for n in j.notes), j.notes

    j = job("remove_watermark", prompt="")
    await vendor.submit(j)
    assert fake.last("create").json["input"]["prompt"]  # the API requires one
    assert any(n.startswith("prompt: none given") for n in j.notes)

    fake.clear_requests()
    await raises(InvalidParameter, vendor.submit(job("doodle", prompt="  ")))
    assert fake.requests == []


# ---- wanx: task states ---------------------------------------------------------------------


async def test_suspended_is_pending(fake: FakeDashScope, vendor: DashScopeVendor) -> None:
    fake.task_plan = ["SUSPENDED", "RUNNING", "SUCCEEDED"]
    pending = await vendor.submit(job())
    first = await vendor.poll(pending.vendor_task_id)
    assert isinstance(first, Pending) and first.status == "SUSPENDED"
    assert first.vendor_task_id == pending.vendor_task_id
    assert isinstance(await finish(vendor, pending), Finished)


async def test_partial_failure_is_kept_per_image(
    fake: FakeDashScope, vendor: DashScopeVendor
) -> None:
    fake.partial_failures = 1
    done = await finish(vendor, await vendor.submit(job(n=3)))
    assert len(done.images) == 2 and done.billed_images == 2
    assert [(f.index, f.code) for f in done.failures] == [(2, "InternalError.Timeout")]
    assert "timeout" in done.failures[0].message


FAILED_CODES = [
    ("InternalError", VendorFault, True),
    ("InternalError.Timeout", VendorFault, True),
    ("DataInspectionFailed", ContentRejected, False),
    ("IPInfringementSuspect", ContentRejected, False),
    ("InvalidParameter", VendorRejected, False),
    ("InvalidParameter.FileFormat", VendorRejected, False),
    ("SomethingNew", VendorFault, False),
]


async def test_failed_task_mapped_by_code(fake: FakeDashScope, vendor: DashScopeVendor) -> None:
    fake.fail_with = ("InternalError", "InternalError happened")
    pending = await vendor.submit(job())
    for code, cls, retryable in FAILED_CODES:
        if code != "InternalError":  # the fake's own FAILED body, with other codes
            output = {
                "task_id": "x",
                "task_status": "FAILED",
                "code": code,
                "message": f"{code} happened",
            }
            fake.inject("task", Fault.status(200, {"request_id": "rq", "output": output}))
        err = await raises(cls, finish(vendor, pending))
        assert type(err) is cls and err.retryable is retryable, code
        assert err.vendor == "dashscope" and err.vendor_code == code and err.request_id
        assert f"{code} happened" in str(err) and err.status is None


async def test_all_images_failed_is_a_failure(fake: FakeDashScope, vendor: DashScopeVendor) -> None:
    fake.partial_failures = 2
    err = await raises(VendorFault, finish(vendor, await vendor.submit(job(n=2))))
    assert err.retryable and err.vendor_code == "InternalError.Timeout"


async def test_unknown_and_expired_tasks(fake: FakeDashScope, vendor: DashScopeVendor) -> None:
    err = await raises(VendorFault, vendor.poll("no-such-task"))
    assert not err.retryable and "expired or unknown" in str(err)
    pending = await vendor.submit(job())
    fake.expire_tasks()
    err = await raises(VendorFault, vendor.poll(pending.vendor_task_id))
    assert not err.retryable and err.vendor_code == "UNKNOWN"


async def test_cancel(fake: FakeDashScope, vendor: DashScopeVendor) -> None:
    pending = await vendor.submit(job())
    assert await vendor.cancel(pending.vendor_task_id) is True
    cancel = fake.last("cancel")
    assert cancel.method == "POST" and cancel.bearer == KEY
    assert cancel.path == f"/api/v1/tasks/{pending.vendor_task_id}/cancel"
    err = await raises(VendorCanceled, vendor.poll(pending.vendor_task_id))
    assert not err.retryable and "canceled" in str(err)

    running = await vendor.submit(job())
    await vendor.poll(running.vendor_task_id)  # PENDING
    await vendor.poll(running.vendor_task_id)  # RUNNING
    assert await vendor.cancel(running.vendor_task_id) is False
    assert await vendor.cancel("no-such-task") is False
    fake.inject("cancel", internal_error())
    await raises(VendorFault, vendor.cancel(running.vendor_task_id))


# ---- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["create", "task", "policy"])
async def test_throttling_with_and_without_retry_after(
    fake: FakeDashScope, vendor: DashScopeVendor, route: str
) -> None:
    pending = await vendor.submit(job())
    fake.inject(route, rate_limited(retry_after=2), rate_limited(), allocation_quota_exceeded(7))
    call = (
        (lambda: vendor.poll(pending.vendor_task_id))
        if route == "task"
        else (lambda: vendor.submit(job()))
    )
    for expected in (2.0, None, 7.0):
        err = await raises(Throttled, call())
        assert err.retryable and err.retry_after == expected and err.status == 429
        assert err.vendor_code.startswith("Throttling")


async def test_free_quota_exhausted_is_not_retried(
    fake: FakeDashScope, vendor: DashScopeVendor
) -> None:
    fake.inject("create", free_quota_exhausted())
    err = await raises(QuotaError, vendor.submit(job()))
    assert not err.retryable and err.vendor_code == "Throttling.AllocationQuota"


@pytest.mark.parametrize(
    ("fault", "cls", "code", "status"),
    [
        (access_denied(), AuthError, "AccessDenied", 403),
        (arrearage(), QuotaError, "Arrearage", 403),
        (model_not_found(), VendorRejected, "ModelNotFound", 404),
        (invalid_parameter("bad n"), VendorRejected, "InvalidParameter", 400),
        (ip_infringement(), ContentRejected, "IPInfringementSuspect", 400),
        (internal_error(), VendorFault, "InternalError", 500),
        (service_unavailable(503), VendorFault, None, 503),
        (service_unavailable(504), VendorFault, None, 504),
    ],
)
async def test_http_errors_mapped(
    fake: FakeDashScope,
    vendor: DashScopeVendor,
    fault: Fault,
    cls: type,
    code: str | None,
    status: int,
) -> None:
    fake.inject("create", fault)
    j = job()
    err = await raises(cls, vendor.submit(j), j)
    assert type(err) is cls and err.status == status and err.vendor_code == code
    assert err.retryable is (cls is VendorFault)
    if code:
        assert err.request_id


async def test_bad_key_is_an_auth_error(fake: FakeDashScope, http: httpx.AsyncClient) -> None:
    wrong = make_vendor(fake, http, api_key="sk-wrong-key-9999")
    err = await raises(AuthError, wrong.submit(job()))
    assert err.status == 401 and err.vendor_code == "InvalidApiKey" and not err.retryable
    assert "sk-wrong-key-9999" not in str(err) + repr(err)
    err = await raises(AuthError, wrong.poll("any"))
    assert err.status == 401


async def test_content_moderation_on_the_real_path(
    fake: FakeDashScope, vendor: DashScopeVendor
) -> None:
    fake.blocked_words = {"forbidden"}
    err = await raises(ContentRejected, vendor.submit(job(prompt="a forbidden thing")))
    assert err.vendor_code == "DataInspectionFailed" and err.status == 400


async def test_slow_answer_is_a_timeout(fake: FakeDashScope, http: httpx.AsyncClient) -> None:
    quick = make_vendor(fake, http, timeout_s=0.3)
    fake.inject("create", Fault.delay(1.0))
    err = await raises(VendorTimeout, quick.submit(job()))
    assert err.retryable and err.details.get("maybe_submitted") is True
    pending = await quick.submit(job())
    fake.inject("task", Fault.delay(1.0))
    err = await raises(VendorTimeout, quick.poll(pending.vendor_task_id))
    assert "maybe_submitted" not in err.details


async def test_malformed_and_broken_answers(fake: FakeDashScope, vendor: DashScopeVendor) -> None:
    fake.inject("create", Fault.malformed())
    err = await raises(VendorFault, vendor.submit(job()))
    assert err.retryable and err.details.get("maybe_submitted") is True
    pending = await vendor.submit(job())
    fake.inject("task", Fault.malformed())
    err = await raises(VendorFault, vendor.poll(pending.vendor_task_id))
    assert "malformed" in str(err)
    fake.inject("task", Fault.status(200, {"request_id": "r"}))
    await raises(VendorFault, vendor.poll(pending.vendor_task_id))
    fake.inject("task", Fault.reset())
    err = await raises(VendorFault, vendor.poll(pending.vendor_task_id))
    assert err.retryable


async def test_upload_failures(fake: FakeDashScope, vendor: DashScopeVendor) -> None:
    fake.inject("policy", internal_error())
    await raises(VendorFault, vendor.submit(job()))
    fake.inject("policy", Fault.status(200, {"request_id": "r", "data": {}}))
    await raises(VendorFault, vendor.submit(job()))
    fake.expire_policies()
    fake.inject(
        "oss_upload",
        Fault.status(
            403,
            "<Error><Code>AccessDenied</Code><RequestId>ABC</RequestId></Error>",
            {"Content-Type": "application/xml"},
        ),
    )
    err = await raises(VendorFault, vendor.submit(job()))
    assert err.retryable and err.vendor_code == "AccessDenied" and err.request_id == "ABC"
    assert fake.requests_to("create") == []


async def test_key_echoed_by_the_vendor_is_scrubbed(
    fake: FakeDashScope, vendor: DashScopeVendor
) -> None:
    fake.inject("create", invalid_parameter(f"bad header Bearer {KEY}"))
    j = job()
    err = await raises(VendorRejected, vendor.submit(j), j)
    assert "***" in str(err)


# ---- qwen edit (sync) ----------------------------------------------------------------------


async def test_edit_one_image_inline(
    fake: FakeDashScope, vendor: DashScopeVendor, http: httpx.AsyncClient
) -> None:
    src = image(640, 480, "JPEG")
    j = job("edit", "make the sky pink", images=[src])
    done = await vendor.submit(j)
    assert isinstance(done, Finished) and len(done.images) == 1 and done.billed_images == 1
    rec = fake.last("generation")
    assert rec.bearer == KEY and rec.headers["content-type"] == "application/json"
    assert "x-dashscope-async" not in rec.headers
    assert "x-dashscope-ossresourceresolve" not in rec.headers
    assert rec.json == {
        "model": "qwen-image-edit-plus",
        "input": {
            "messages": [
                {
                    "role": "user",
                    "content": [{"image": src.data_uri()}, {"text": "make the sky pink"}],
                }
            ]
        },
        "parameters": {"n": 1},
    }
    assert fake.requests_to("policy") == []
    out = done.images[0]
    assert out.expires_at and out.expires_at - datetime.now(UTC) <= timedelta(hours=24)
    assert image_size(await fetch(http, out.url))[0] > 0


async def test_edit_three_images_and_every_parameter(
    fake: FakeDashScope, vendor: DashScopeVendor, http: httpx.AsyncClient
) -> None:
    images = [image(400, 400), image(500, 400, "JPEG"), image(300, 600)]
    j = job(
        "edit",
        "put the cat from image 1 on the sofa of image 2",
        images=images,
        n=3,
        seed=7,
        negative_prompt="blurry",
        watermark=True,
        size=(1000, 1000),
        options={"prompt_extend": False},
    )
    done = await vendor.submit(j)
    assert len(done.images) == 3 and done.billed_images == 3
    body = fake.last("generation").json
    content = body["input"]["messages"][0]["content"]
    assert [list(c) for c in content] == [["image"], ["image"], ["image"], ["text"]]
    assert all(c["image"].startswith("data:image/") for c in content[:3])
    assert body["parameters"] == {
        "n": 3,
        "negative_prompt": "blurry",
        "watermark": True,
        "seed": 7,
        "size": "1008*1008",
        "prompt_extend": False,
    }
    assert any("1000x1000 rounded to 1008x1008" in n for n in j.notes), j.notes
    # image 3 (300×600) was below 384 px and was upscaled
    assert any(n.startswith("image 3: upscaled 300×600 → 384×768") for n in j.notes), j.notes
    assert image_size(await fetch(http, done.images[0].url)) == (1008, 1008)


async def test_edit_validates_before_sending(fake: FakeDashScope, http: httpx.AsyncClient) -> None:
    plus = make_vendor(fake, http)
    await raises(InvalidParameter, plus.submit(job("edit", "x", size=(256, 1024))))
    await raises(InvalidParameter, plus.submit(job("edit", "x", images=[image()] * 4)))
    await raises(InvalidParameter, plus.submit(job("edit", "x", n=7)))
    await raises(InvalidParameter, plus.submit(job("edit", "", images=[image()])))
    await raises(InvalidParameter, plus.submit(job("edit", "x", options={"strength": 1})))
    j = job("edit", "x")
    j.mask = mask(512, 512)
    await raises(Unsupported, plus.submit(j))
    plain = make_vendor(fake, http, edit_model="qwen-image-edit")
    await raises(Unsupported, plain.submit(job("edit", "x", size=(1024, 1024))))
    await raises(InvalidParameter, plain.submit(job("edit", "x", n=2)))
    await raises(InvalidParameter, plain.submit(job("edit", "x", options={"prompt_extend": True})))
    assert fake.requests == []


async def test_edit_plain_model_and_truncation(
    fake: FakeDashScope, http: httpx.AsyncClient
) -> None:
    plain = make_vendor(fake, http, edit_model="qwen-image-edit")
    j = job("edit", "p" * 801, negative_prompt="n" * 600)
    done = await plain.submit(j)
    assert len(done.images) == 1
    body = fake.last("generation").json
    assert body["model"] == "qwen-image-edit"
    assert body["input"]["messages"][0]["content"][-1]["text"] == "p" * 800
    assert body["parameters"] == {"n": 1, "negative_prompt": "n" * 500}
    assert any(n.startswith("prompt: 801 characters") for n in j.notes)
    assert any(n.startswith("negative_prompt: 600 characters") for n in j.notes)


async def test_edit_large_images_go_through_the_upload(
    fake: FakeDashScope, http: httpx.AsyncClient
) -> None:
    v = make_vendor(fake, http, inline_max_bytes=1000)
    j = job("edit", "brighter", images=[image(), image(600, 600)])
    done = await v.submit(j)
    assert len(done.images) == 1
    assert fake.last("policy").query["model"] == "qwen-image-edit-plus"
    uploads = fake.requests_to("oss_upload")
    assert len(uploads) == 2 and all(u.parts == UPLOAD_FIELDS for u in uploads)
    rec = fake.last("generation")
    assert rec.headers["x-dashscope-ossresourceresolve"] == "enable"
    images = [c["image"] for c in rec.json["input"]["messages"][0]["content"][:2]]
    assert images == ["oss://" + u.form["key"] for u in uploads]
    assert any("image 1 and image 2: uploaded" in n for n in j.notes), j.notes


async def test_edit_errors(fake: FakeDashScope, vendor: DashScopeVendor) -> None:
    fake.blocked_words = {"forbidden"}
    await raises(ContentRejected, vendor.submit(job("edit", "forbidden")))
    fake.inject("generation", rate_limited(retry_after=3))
    assert (await raises(Throttled, vendor.submit(job("edit", "x")))).retry_after == 3
    fake.inject("generation", Fault.status(200, {"request_id": "r", "output": {"choices": []}}))
    await raises(VendorFault, vendor.submit(job("edit", "x")))
    fake.inject("generation", Fault.delay(1.0))
    quick = make_vendor(fake, vendor.http, timeout_s=0.3)
    err = await raises(VendorTimeout, quick.submit(job("edit", "x")))
    assert err.details.get("maybe_submitted") is True


# ---- 302.AI style prefix -------------------------------------------------------------------


async def test_base_url_with_a_path_prefix(http: httpx.AsyncClient) -> None:
    with FakeDashScope(api_key=KEY, path_prefix="/aliyun") as proxy:
        v = make_vendor(proxy, http, prefix="/aliyun/")
        done = await finish(v, await v.submit(job("colorization", "")))
        assert len(done.images) == 1
        edit = await v.submit(job("edit", "x"))
        assert len(edit.images) == 1
        paths = {r.path for r in proxy.requests if r.route != "oss_upload"}
        assert all(p.startswith("/aliyun/api/v1/") for p in paths), paths


async def test_upload_off_inlines_edit_and_refuses_wanx(
    fake: FakeDashScope, http: httpx.AsyncClient
) -> None:
    v = make_vendor(fake, http, upload="off", inline_max_bytes=0)
    done = await v.submit(job("edit", "x"))
    assert len(done.images) == 1 and fake.requests_to("policy") == []
    await raises(Unsupported, v.submit(job()))
