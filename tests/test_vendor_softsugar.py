"""Contract tests of the SoftSugar adapter against FakeSoftSugar on 127.0.0.1 (real HTTP)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from PIL import Image

from tests.fakes.http import CallbackReceiver, Fault, fake_meta, image_size
from tests.fakes.softsugar import FakeSoftSugar, error, param_error, token_invalid
from tools.config import MB
from tools.errors import (
    AuthError,
    ConfigError,
    ContentRejected,
    InvalidParameter,
    QuotaError,
    RetouchError,
    Throttled,
    Unsupported,
    VendorError,
    VendorFault,
    VendorRejected,
    VendorTimeout,
)
from tools.media import InputImage, encode
from tools.models import EditRequest
from tools.vendors.base import Finished, Job, Pending
from tools.vendors.softsugar import SoftSugarSettings, SoftSugarVendor

APP_ID = "test-app-id-0001"
APP_KEY = "app-key-SECRET-0123456789abcdef"
SRC = "https://example.com/a.png"
CALLBACK = "https://retouch.example.com/callbacks/softsugar"


# ---- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeSoftSugar]:
    with FakeSoftSugar(app_id=APP_ID, app_key=APP_KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def receiver() -> Iterator[CallbackReceiver]:
    with CallbackReceiver() as rx:
        yield rx


@pytest.fixture
def fake(server: FakeSoftSugar) -> FakeSoftSugar:
    server.reset()
    server.task_seconds = None  # tasks finish when a test says so
    return server


@pytest.fixture
def rx(receiver: CallbackReceiver, fake: FakeSoftSugar) -> CallbackReceiver:
    receiver.reset()
    fake.callback_url = receiver.url("/callbacks/softsugar")
    return receiver


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def make_vendor(
    fake: FakeSoftSugar, http: httpx.AsyncClient, **settings: object
) -> SoftSugarVendor:
    options: dict[str, object] = {
        "app_id": APP_ID,
        "app_key": APP_KEY,
        "base_url": fake.base_url,
        "callback_url": CALLBACK,
        "timeout_s": 5,
    }
    options.update(settings)
    return SoftSugarVendor("softsugar", SoftSugarSettings(**options), http)


@pytest.fixture
def vendor(fake: FakeSoftSugar, http: httpx.AsyncClient) -> SoftSugarVendor:
    return make_vendor(fake, http)


def image(w: int = 320, h: int = 240, color=(40, 90, 160)) -> InputImage:
    pil = Image.new("RGB", (w, h), color)
    pil.paste((230, 230, 230), (w // 4, h // 4, w // 2, h // 2))
    return encode(pil, "PNG")


def job(fake: FakeSoftSugar, *images: InputImage, prompt: str = "dog beside girl", **kw) -> Job:
    """A job whose images are served by the fake itself (the vendor fetches them by URL)."""
    images = images or (image(),)
    kw.setdefault("source_urls", [fake.put_file(i.data) for i in images])
    return Job(task_id="t" * 32, function="edit", prompt=prompt, images=list(images), **kw)


def request(**kw: object) -> EditRequest:
    kw.setdefault("images", [SRC])
    kw.setdefault("prompt", "dog beside girl")
    return EditRequest(**kw)  # type: ignore[arg-type]


def secrets_of(vendor: SoftSugarVendor) -> list[str]:
    return [APP_KEY, *([vendor._token] if vendor._token else [])]


def assert_clean(exc: BaseException, vendor: SoftSugarVendor) -> None:
    texts = [str(exc), repr(exc)]
    if isinstance(exc, RetouchError):
        texts.append(str(exc.to_dict()))
    assert all(s not in t for s in secrets_of(vendor) for t in texts), texts


async def raises(cls: type[RetouchError], vendor: SoftSugarVendor, coro):
    with pytest.raises(cls) as info:
        await coro
    assert_clean(info.value, vendor)
    return info.value


async def complete(fake: FakeSoftSugar, task_id: str) -> None:
    await asyncio.to_thread(fake.complete, int(task_id))


# ---- settings and capabilities -------------------------------------------------------------


def test_settings_defaults() -> None:
    s = SoftSugarSettings(kind="softsugar")
    assert s.base_url == "https://aigc.softsugar.com"
    assert (s.app_id, s.app_key.get_secret_value(), s.callback_url) == ("", "", "")
    assert (s.max_images, s.max_side, s.max_bytes) == (3, 2048, 10 * MB)
    assert s.price_per_image is None
    with pytest.raises(ValueError):
        SoftSugarSettings(kind="softsugar", poll_url="x")


def test_capabilities_and_check(vendor: SoftSugarVendor, http: httpx.AsyncClient) -> None:
    cap = vendor.capabilities["edit"]
    assert set(vendor.capabilities) == {"edit"} and vendor.completion == "callback"
    assert cap.params == {"watermark", "size"} and cap.mask == "none"
    assert (cap.max_images, cap.max_n) == (3, 1)
    assert APP_KEY not in repr(vendor) and APP_KEY not in str(vendor.settings)
    vendor.check(request(images=[SRC] * 3, size="2048x1024", watermark=True))
    vendor.check(request(watermark="© me", size="auto"))
    for kw in ({"seed": 1}, {"negative_prompt": "x"}, {"mask": SRC}, {"n": 2}):
        with pytest.raises(Unsupported):
            vendor.check(request(**kw))
    with pytest.raises(InvalidParameter, match="2048"):
        vendor.check(request(size="2049x1000"))
    with pytest.raises(Unsupported, match="public image URLs"):
        vendor.check(request(images=[SRC, "data:image/png;base64,iVBORw0KGgo="]))
    with pytest.raises(ConfigError, match="app_id and app_key"):
        SoftSugarVendor(
            "softsugar", SoftSugarSettings(kind="softsugar", callback_url=CALLBACK), http
        ).check(request())


def test_refused_without_a_callback_url(http: httpx.AsyncClient) -> None:
    vendor = SoftSugarVendor(
        "ss", SoftSugarSettings(kind="softsugar", app_id=APP_ID, app_key=APP_KEY), http
    )
    with pytest.raises(Unsupported) as info:
        vendor.check(request())
    message = str(info.value)
    assert "only by callback" in message and "vendors.ss.callback_url" in message
    assert "/callbacks/ss" in message and "SoftSugar console" in message


async def test_submit_refuses_without_callback_url_or_urls(
    fake: FakeSoftSugar, http: httpx.AsyncClient
) -> None:
    no_callback = make_vendor(fake, http, callback_url="")
    await raises(Unsupported, no_callback, no_callback.submit(job(fake)))
    vendor = make_vendor(fake, http)
    await raises(Unsupported, vendor, vendor.submit(job(fake, source_urls=[])))
    await raises(Unsupported, vendor, vendor.submit(job(fake, source_urls=[None])))
    big = image(2100, 300)
    err = await raises(InvalidParameter, vendor, vendor.submit(job(fake, big)))
    assert "cannot shrink" in str(err)
    assert fake.requests_to("token") == [] and fake.requests_to("edit") == []


# ---- sign-in and the request -----------------------------------------------------------------


async def test_sign_in_and_create_contract(fake: FakeSoftSugar, vendor: SoftSugarVendor) -> None:
    a, b = image(320, 240), image(200, 200, (200, 40, 40))
    j = job(fake, a, b, prompt="图一的女孩牵着图二的狗", size=(640, 480), watermark=True)
    before = int(time.time())
    pending = await vendor.submit(j)
    token_rec = fake.last("token")
    body = token_rec.json
    assert set(body) == {"appId", "timestamp", "sign", "grantType"}
    assert body["appId"] == APP_ID and body["grantType"] == "sign"
    assert isinstance(body["timestamp"], str) and body["timestamp"].isdigit()
    assert before - 1 <= int(body["timestamp"]) <= time.time() + 1  # Unix seconds
    expected = hashlib.md5(f"{APP_ID}{body['timestamp']}{APP_KEY}".encode()).hexdigest()
    assert body["sign"] == expected and len(body["sign"]) == 32 and body["sign"].islower()
    assert "authorization" not in token_rec.headers
    edit = fake.last("edit")
    assert edit.bearer and edit.bearer in fake.tokens
    assert set(edit.json) == {"imageName", "param"}
    assert edit.json["imageName"] == "retouch-" + "t" * 32
    assert isinstance(edit.json["param"], str)
    param = json.loads(edit.json["param"])
    assert param == {
        "images": j.source_urls,
        "prompt": "图一的女孩牵着图二的狗",
        "resolution": [640, 480],
        "watermark": {"show": True},
    }
    assert "图一" in edit.json["param"]  # not \u-escaped
    assert isinstance(pending, Pending) and pending.vendor_task_id == "1"


async def test_defaults_and_token_reuse(fake: FakeSoftSugar, vendor: SoftSugarVendor) -> None:
    await vendor.submit(job(fake))
    await vendor.submit(job(fake))
    assert fake.tokens_issued == 1 and len(fake.requests_to("edit")) == 2
    param = json.loads(fake.last("edit").json["param"])
    assert param["watermark"] == {"show": False} and "resolution" not in param


async def test_api_key_stands_in_for_app_key(fake: FakeSoftSugar, http: httpx.AsyncClient) -> None:
    vendor = make_vendor(fake, http, app_key="", api_key=APP_KEY)
    assert isinstance(await vendor.submit(job(fake)), Pending)


async def test_expired_token_is_renewed_once(fake: FakeSoftSugar, vendor: SoftSugarVendor) -> None:
    await vendor.submit(job(fake))
    fake.expire_tokens()
    pending = await vendor.submit(job(fake))
    assert pending.vendor_task_id == "2"
    edits = fake.requests_to("edit")
    assert [r.status for r in edits] == [200, 401, 200]
    assert edits[1].bearer != edits[2].bearer and fake.tokens_issued == 2
    # A token refused again right after renewal is an auth error, not a loop.
    fake.inject("edit", token_invalid(), token_invalid())
    err = await raises(AuthError, vendor, vendor.submit(job(fake)))
    assert err.status == 401 and fake.tokens_issued == 3
    # The refusal may also come as a code in an HTTP 200 body.
    fake.inject("edit", error(401, "token is invalid or expired"))
    assert isinstance(await vendor.submit(job(fake)), Pending)
    assert fake.tokens_issued == 4


async def test_sign_in_failures(fake: FakeSoftSugar, http: httpx.AsyncClient) -> None:
    vendor = make_vendor(fake, http, app_key=APP_KEY + "-wrong")
    err = await raises(AuthError, vendor, vendor.submit(job(fake)))
    assert "sign verification failed" in str(err) and err.vendor_code == "3333"
    assert "-wrong" not in str(err.to_dict())
    unknown = make_vendor(fake, http, app_id="nobody")
    await raises(AuthError, unknown, unknown.submit(job(fake)))
    assert fake.requests_to("edit") == []
    fake.inject("token", Fault.status(503, "busy"))
    ok = make_vendor(fake, http)
    await raises(VendorFault, ok, ok.submit(job(fake)))
    fake.inject("token", Fault.status(200, {"code": 0, "message": "success", "data": {}}))
    await raises(VendorFault, ok, ok.submit(job(fake)))


async def test_create_errors(fake: FakeSoftSugar, vendor: SoftSugarVendor) -> None:
    fake.inject("edit", param_error("The request parameter is invalid: prompt is required"))
    err = await raises(VendorRejected, vendor, vendor.submit(job(fake)))
    assert err.vendor_code == "3333" and not err.retryable
    fake.inject("edit", error(4001, "account balance is insufficient"))
    await raises(QuotaError, vendor, vendor.submit(job(fake)))
    fake.inject("edit", error(429, "too many requests", http_status=429))
    await raises(Throttled, vendor, vendor.submit(job(fake)))
    fake.inject("edit", error(500, "internal error", http_status=500))
    err = await raises(VendorFault, vendor, vendor.submit(job(fake)))
    assert err.retryable
    fake.inject("edit", Fault.malformed())
    err = await raises(VendorFault, vendor, vendor.submit(job(fake)))
    assert err.details.get("maybe_submitted") is True
    fake.inject("edit", Fault.status(200, {"code": 0, "message": "success", "data": None}))
    err = await raises(VendorFault, vendor, vendor.submit(job(fake)))
    assert err.details.get("maybe_submitted") is True


async def test_slow_answers_are_timeouts(fake: FakeSoftSugar, http: httpx.AsyncClient) -> None:
    # The calls that are not held must answer within the timeout too, on a loaded machine.
    vendor = make_vendor(fake, http, timeout_s=1.5)
    fake.inject("token", Fault.delay(30))
    await raises(VendorTimeout, vendor, vendor.submit(job(fake)))
    fake.inject("edit", Fault.delay(30))
    err = await raises(VendorTimeout, vendor, vendor.submit(job(fake)))
    assert err.details.get("maybe_submitted") is True


# ---- the callback ----------------------------------------------------------------------------


async def test_callback_success(
    fake: FakeSoftSugar, rx: CallbackReceiver, vendor: SoftSugarVendor, http: httpx.AsyncClient
) -> None:
    pending = await vendor.submit(job(fake, image(320, 240), size=(400, 300)))
    await complete(fake, pending.vendor_task_id)
    [rec] = await asyncio.to_thread(rx.wait_for_requests, 1)
    before = datetime.now(UTC)
    task_id, outcome = vendor.parse_callback(rec.body, rec.headers)
    assert task_id == pending.vendor_task_id
    assert isinstance(outcome, Finished) and len(outcome.images) == 1
    [out] = outcome.images
    assert out.url and out.url.startswith(fake.base_url) and out.data is None
    assert before + timedelta(days=6, hours=23) < out.expires_at
    got = await http.get(out.url)
    assert got.status_code == 200 and image_size(got.content) == (400, 300)
    assert fake_meta(got.content)["prompt"] == "dog beside girl"


async def test_callback_failure_is_returned_with_its_task(
    fake: FakeSoftSugar, rx: CallbackReceiver, vendor: SoftSugarVendor
) -> None:
    fake.fail_with = (5001, "the content contains sensitive information")
    pending = await vendor.submit(job(fake))
    await complete(fake, pending.vendor_task_id)
    [rec] = await asyncio.to_thread(rx.wait_for_requests, 1)
    task_id, outcome = vendor.parse_callback(rec.body, rec.headers)
    assert task_id == pending.vendor_task_id
    assert isinstance(outcome, ContentRejected)
    assert outcome.vendor_code == "5001" and outcome.details["vendor_task_id"] == task_id
    # An input the vendor could not read fails with the parameter code.
    fake.fail_with = None
    gone = job(fake)
    fake.expire_results()  # the input URL now answers 404
    pending = await vendor.submit(gone)
    await complete(fake, pending.vendor_task_id)
    recs = await asyncio.to_thread(rx.wait_for_requests, 2)
    task_id, outcome = vendor.parse_callback(recs[1].body, recs[1].headers)
    assert task_id == pending.vendor_task_id
    assert isinstance(outcome, VendorRejected) and outcome.vendor_code == "3333"
    assert "image 1 is invalid" in outcome.message


def test_callback_shapes(vendor: SoftSugarVendor) -> None:
    def parse(body: object) -> tuple[str, object]:
        return vendor.parse_callback(json.dumps(body).encode(), {})

    ok = {"taskId": 7, "status": "SUCCEEDED", "code": 0, "images": ["https://x/y.png"]}
    assert parse(ok)[0] == "7"
    wrapped = {"code": 0, "message": "ok", "data": ok}
    assert parse(wrapped)[1].images[0].url == "https://x/y.png"
    _, failed = parse({"taskId": 8, "status": "FAILED", "code": 9, "message": "internal error"})
    assert isinstance(failed, VendorFault) and not failed.retryable
    _, quota = parse({"taskId": 9, "status": "FAILED", "code": 9, "message": "quota exhausted"})
    assert isinstance(quota, QuotaError)
    _, empty = parse({"taskId": 10, "status": "SUCCEEDED", "code": 0, "images": []})
    assert isinstance(empty, VendorError)
    for bad in (b"not json", b"[1, 2]", json.dumps({"status": "SUCCEEDED"}).encode()):
        with pytest.raises(VendorFault):
            vendor.parse_callback(bad, {})


async def test_secrets_never_in_errors(fake: FakeSoftSugar, vendor: SoftSugarVendor) -> None:
    await vendor.submit(job(fake))
    token = vendor._token
    assert token and token not in repr(vendor)
    fake.inject("edit", param_error(f"bad token {token} and key {APP_KEY}"))
    err = await raises(VendorRejected, vendor, vendor.submit(job(fake)))
    assert "bad token" in str(err)
    body = {"taskId": 3, "status": "FAILED", "code": 1, "message": f"key {APP_KEY} token {token}"}
    _, failure = vendor.parse_callback(json.dumps(body).encode(), {})
    assert_clean(failure, vendor)
