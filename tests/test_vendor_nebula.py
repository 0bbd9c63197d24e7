"""Contract tests of the ai-nebula adapter against FakeNebula on 127.0.0.1 (real HTTP)."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from PIL import Image

from tests.fakes.http import Fault, fake_meta, image_size
from tests.fakes.nebula import (
    FakeNebula,
    bad_request,
    error,
    insufficient_balance,
    rate_limited,
    server_error,
    unauthorized,
)
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
    VendorFault,
    VendorRejected,
    VendorTimeout,
)
from tools.media import InputImage, encode
from tools.models import EditRequest
from tools.vendors.base import Finished, Job
from tools.vendors.nebula import NebulaSettings, NebulaVendor

KEY = "sk-test-SECRET-nebula-0123456789"
SRC = "https://example.com/a.png"


# ---- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module", params=[True, False], ids=["status-mirrors-code", "http-200"])
def server(request: pytest.FixtureRequest) -> Iterator[FakeNebula]:
    with FakeNebula(api_key=KEY, http_status_mirrors_code=request.param) as fake:
        yield fake


@pytest.fixture
def fake(server: FakeNebula) -> FakeNebula:
    server.reset()
    return server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def make_vendor(fake: FakeNebula, http: httpx.AsyncClient, **settings: object) -> NebulaVendor:
    options: dict[str, object] = {"api_key": KEY, "base_url": fake.base_url, "timeout_s": 5}
    options.update(settings)
    return NebulaVendor("nebula", NebulaSettings(**options), http)


@pytest.fixture
def vendor(fake: FakeNebula, http: httpx.AsyncClient) -> NebulaVendor:
    return make_vendor(fake, http)


def image(w: int = 512, h: int = 512, fmt: str = "PNG", color=(40, 90, 160)) -> InputImage:
    pil = Image.new("RGB", (w, h), color)
    pil.paste((230, 230, 230), (w // 4, h // 4, w // 2, h // 2))
    return encode(pil, fmt)


def job(prompt: str = "put the cat on the sofa", **kw: object) -> Job:
    kw.setdefault("images", [image()])
    return Job(task_id="t" * 32, function="edit", prompt=prompt, **kw)  # type: ignore[arg-type]


def request(**kw: object) -> EditRequest:
    kw.setdefault("images", [SRC])
    kw.setdefault("prompt", "put the cat on the sofa")
    return EditRequest(**kw)  # type: ignore[arg-type]


def mirrored(fake: FakeNebula, code: int) -> int:
    """The HTTP status the fake answers for an error code."""
    return code if fake.http_status_mirrors_code else 200


def fault(fake: FakeNebula, make, *args, **kw) -> Fault:
    """A documented error fault, with the HTTP status this fake's reading uses."""
    if not fake.http_status_mirrors_code:
        kw["http_status"] = 200
    return make(*args, **kw)


def assert_clean(exc: BaseException) -> None:
    texts = [str(exc), repr(exc)]
    if isinstance(exc, RetouchError):
        texts.append(str(exc.to_dict()))
    assert all(KEY not in t for t in texts), texts


async def raises(cls: type[RetouchError], coro):
    with pytest.raises(cls) as info:
        await coro
    assert_clean(info.value)
    return info.value


def decode_uri(uri: str) -> tuple[str, bytes]:
    header, _, payload = uri.partition(",")
    assert header.startswith("data:") and header.endswith(";base64")
    return header[5:-7], base64.b64decode(payload)


# ---- settings and capabilities -------------------------------------------------------------


def test_settings_defaults() -> None:
    s = NebulaSettings(kind="nebula")
    assert (s.base_url, s.model) == ("https://llm.ai-nebula.com", "qwen-image-edit-plus")
    assert (s.min_side, s.max_side, s.max_bytes) == (384, 3072, 10 * MB)
    assert (s.max_n, s.max_images) == (6, 3)
    assert (s.price_per_image, s.currency) == (0.18, "CNY")
    with pytest.raises(ValueError):
        NebulaSettings(kind="nebula", size="1024x1024")


def test_capabilities_and_check(fake: FakeNebula, vendor: NebulaVendor) -> None:
    cap = vendor.capabilities["edit"]
    assert set(vendor.capabilities) == {"edit"}
    assert cap.params == {"n", "seed", "negative_prompt", "watermark"}
    assert cap.mask == "none" and (cap.max_images, cap.max_n) == (3, 6)
    assert vendor.completion == "sync" and vendor.price_for("edit") == (0.18, "CNY")
    assert KEY not in repr(vendor) and KEY not in str(vendor.settings)
    vendor.check(request(images=[SRC] * 3, n=6, seed=7, negative_prompt="blur", watermark=True))
    vendor.check(request(watermark="© me"))  # text marks are stamped by Retouch
    with pytest.raises(Unsupported, match="mask"):
        vendor.check(request(mask=SRC))
    with pytest.raises(Unsupported, match="size"):
        vendor.check(request(size="1024x1024"))
    with pytest.raises(InvalidParameter, match="at most 6"):
        vendor.check(request(n=7))
    with pytest.raises(InvalidParameter, match="at most 3"):
        vendor.check(request(images=[SRC] * 4))
    with pytest.raises(InvalidParameter, match="800"):
        vendor.check(request(prompt="x" * 801))
    with pytest.raises(InvalidParameter, match="negative"):
        vendor.check(request(negative_prompt="x" * 501))
    with pytest.raises(InvalidParameter, match="option"):
        vendor.check(request(options={"prompt_extend": False}))
    with pytest.raises(ConfigError, match="api_key"):
        NebulaVendor("n", NebulaSettings(kind="nebula"), vendor.http).check(request())


# ---- the request -----------------------------------------------------------------------------


async def test_request_contract_and_url_results(
    fake: FakeNebula, vendor: NebulaVendor, http: httpx.AsyncClient
) -> None:
    images = [image(512, 512, "PNG"), image(600, 400, "JPEG"), image(400, 600, "WEBP")]
    j = job(images=images, n=2, seed=12345, negative_prompt="blurry", watermark=True)
    before = datetime.now(UTC)
    outcome = await vendor.submit(j)
    rec = fake.last("generations")
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert rec.headers["content-type"].startswith("application/json")
    body = rec.json
    assert set(body) == {"model", "prompt", "parameters", "contents"}
    assert body["model"] == "qwen-image-edit-plus"
    assert body["prompt"] == "put the cat on the sofa"
    assert body["parameters"] == {
        "n": 2,
        "negative_prompt": "blurry",
        "watermark": True,
        "seed": 12345,
    }
    [content] = body["contents"]
    assert content["role"] == "user"
    parts = content["parts"]
    assert parts[-1] == {"text": "put the cat on the sofa"}
    sent = [decode_uri(p["image"]) for p in parts[:-1]]
    assert [mime for mime, _ in sent] == ["image/png", "image/jpeg", "image/webp"]
    assert [data for _, data in sent] == [i.data for i in images]
    assert j.notes == []
    assert isinstance(outcome, Finished) and len(outcome.images) == 2
    assert outcome.failures == [] and outcome.billed_images == 2
    for i, out in enumerate(outcome.images):
        assert out.data is None and out.url and out.url.startswith(fake.base_url)
        assert (
            before + timedelta(hours=23) < out.expires_at <= datetime.now(UTC) + timedelta(hours=24)
        )
        got = await http.get(out.url)
        assert got.status_code == 200
        meta = fake_meta(got.content)
        assert meta["index"] == i and meta["text"] == "put the cat on the sofa"


async def test_parameters_always_sent(fake: FakeNebula, vendor: NebulaVendor) -> None:
    await vendor.submit(job())
    assert fake.last("generations").json["parameters"] == {"n": 1, "watermark": False}


async def test_images_fitted_to_384_3072(fake: FakeNebula, http: httpx.AsyncClient) -> None:
    vendor = make_vendor(fake, http, max_side=1000)  # a lower limit keeps the test fast
    j = job(images=[image(200, 300), image(1600, 800), image(500, 500, "GIF")])
    await vendor.submit(j)
    parts = fake.last("generations").json["contents"][0]["parts"]
    sizes = [image_size(decode_uri(p["image"])[1]) for p in parts[:-1]]
    assert sizes == [(384, 576), (1000, 500), (500, 500)]
    assert decode_uri(parts[2]["image"])[0] == "image/png"  # GIF is not taken: re-encoded
    assert any("upscaled 200×300 → 384×576" in n for n in j.notes)
    assert any("downscaled 1600×800 → 1000×500" in n for n in j.notes)
    assert any("re-encoded GIF as PNG" in n for n in j.notes)


async def test_b64_results_and_partial_delivery(fake: FakeNebula, vendor: NebulaVendor) -> None:
    png = image(64, 64).data
    body = {
        "code": 200,
        "msg": "Operation successful",
        "data": {
            "data": [{"url": "", "b64_json": base64.b64encode(png).decode()}],
            "created": 1,
            "metadata": {"usage": {"image_count": 1}, "request_id": "rid-1"},
        },
    }
    fake.inject("generations", Fault.status(200, body))
    outcome = await vendor.submit(job(n=3))
    assert [o.data for o in outcome.images] == [png]
    assert outcome.billed_images == 1
    assert [(f.index, f.code) for f in outcome.failures] == [
        (1, "not_delivered"),
        (2, "not_delivered"),
    ]


# ---- errors ----------------------------------------------------------------------------------


async def test_bad_key(fake: FakeNebula, http: httpx.AsyncClient) -> None:
    vendor = make_vendor(fake, http, api_key=KEY + "x")
    err = await raises(AuthError, vendor.submit(job()))
    assert err.status == mirrored(fake, 401) and err.vendor_code == "401"
    fake.inject("generations", fault(fake, unauthorized))
    await raises(AuthError, make_vendor(fake, http).submit(job()))


async def test_parameter_errors_are_rejected(fake: FakeNebula, vendor: NebulaVendor) -> None:
    fake.inject("generations", fault(fake, bad_request))
    err = await raises(VendorRejected, vendor.submit(job()))
    assert "Image quantity exceeds limit" in str(err) and not err.retryable
    assert err.status == mirrored(fake, 400) and err.vendor_code == "400"
    # The fake's own validation: a model it does not serve.
    vendor2 = make_vendor(fake, vendor.http, model="qwen-image-edit-max")
    err = await raises(VendorRejected, vendor2.submit(job()))
    assert "unsupported model" in str(err)


async def test_moderation_is_content_rejected(fake: FakeNebula, vendor: NebulaVendor) -> None:
    fake.blocked_words = {"forbidden"}
    err = await raises(ContentRejected, vendor.submit(job("a forbidden thing")))
    assert err.vendor_code == "400"
    msg = "Parameter Error: DataInspectionFailed: Input data may contain inappropriate content."
    fake.inject("generations", fault(fake, bad_request, msg))
    await raises(ContentRejected, vendor.submit(job()))


async def test_403_balance_or_permission(fake: FakeNebula, vendor: NebulaVendor) -> None:
    fake.inject("generations", fault(fake, insufficient_balance))
    err = await raises(QuotaError, vendor.submit(job()))
    assert not err.retryable
    fake.inject("generations", fault(fake, error, 403, "Permission denied for this model"))
    await raises(AuthError, vendor.submit(job()))


async def test_429_throttled_or_quota(fake: FakeNebula, vendor: NebulaVendor) -> None:
    fake.inject("generations", fault(fake, rate_limited, retry_after=2))
    err = await raises(Throttled, vendor.submit(job()))
    assert err.retryable and err.retry_after == 2.0
    fake.inject("generations", fault(fake, rate_limited))
    err = await raises(Throttled, vendor.submit(job()))
    assert err.retry_after is None
    fake.inject("generations", fault(fake, error, 429, "Insufficient balance, please top up"))
    await raises(QuotaError, vendor.submit(job()))


async def test_server_errors(fake: FakeNebula, vendor: NebulaVendor) -> None:
    fake.inject("generations", fault(fake, server_error))
    err = await raises(VendorFault, vendor.submit(job()))
    assert err.retryable and err.vendor_code == "500"
    fake.inject("generations", Fault.status(502, "<html>bad gateway</html>"))
    err = await raises(VendorFault, vendor.submit(job()))
    assert err.retryable and err.status == 502


async def test_slow_answer_is_a_timeout(fake: FakeNebula, http: httpx.AsyncClient) -> None:
    vendor = make_vendor(fake, http, timeout_s=0.3)
    fake.inject("generations", Fault.delay(1.5))
    err = await raises(VendorTimeout, vendor.submit(job()))
    assert err.details.get("maybe_submitted") is True


async def test_malformed_answers(fake: FakeNebula, vendor: NebulaVendor) -> None:
    fake.inject("generations", Fault.malformed())
    err = await raises(VendorFault, vendor.submit(job()))
    assert err.details.get("maybe_submitted") is True  # a 2xx may have been billed
    fake.inject("generations", Fault.status(200, {"code": 200, "msg": "ok", "data": None}))
    await raises(VendorFault, vendor.submit(job()))
    empty = {"code": 200, "msg": "ok", "data": {"data": [{"url": "", "b64_json": ""}]}}
    fake.inject("generations", Fault.status(200, empty))
    await raises(VendorFault, vendor.submit(job()))
    fake.inject("generations", Fault.status(200, ["not", "an", "envelope"]))
    await raises(VendorFault, vendor.submit(job()))
    fake.inject("generations", Fault.reset())
    await raises(VendorFault, vendor.submit(job()))


async def test_key_echoed_by_the_vendor_is_scrubbed(fake: FakeNebula, vendor: NebulaVendor) -> None:
    fake.inject("generations", fault(fake, error, 401, f"invalid key {KEY}"))
    err = await raises(AuthError, vendor.submit(job()))
    assert "invalid key" in str(err)
