"""Contract tests of the OpenAI-style adapter against FakeOpenAI on 127.0.0.1 (real HTTP)."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from PIL import Image

from tests.fakes.http import Fault, fake_meta, image_size, make_mask_png
from tests.fakes.openai import (
    FakeOpenAI,
    insufficient_quota,
    invalid_api_key,
    moderation_blocked,
    rate_limited,
    server_error,
    service_unavailable,
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
from tools.vendors.openai import OpenAISettings, OpenAIVendor

KEY = "sk-test-SECRET-openai-0123456789"
SRC = "https://example.com/a.png"


# ---- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY) as fake:
        yield fake


@pytest.fixture(scope="module")
def dgrid_server() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(api_key=KEY, flavor="dgrid") as fake:
        yield fake


@pytest.fixture
def fake(server: FakeOpenAI) -> FakeOpenAI:
    server.reset()
    return server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


def make_vendor(fake: FakeOpenAI, http: httpx.AsyncClient, **settings: object) -> OpenAIVendor:
    options: dict[str, object] = {"api_key": KEY, "base_url": fake.base_url + "/v1"}
    options["timeout_s"] = 5
    options.update(settings)
    return OpenAIVendor("openai", OpenAISettings(**options), http)


@pytest.fixture
def vendor(fake: FakeOpenAI, http: httpx.AsyncClient) -> OpenAIVendor:
    return make_vendor(fake, http)


def image(w: int = 256, h: int = 256, fmt: str = "PNG", color=(40, 90, 160)) -> InputImage:
    pil = Image.new("RGB", (w, h), color)
    pil.paste((230, 230, 230), (w // 4, h // 4, w // 2, h // 2))
    return encode(pil, fmt)


def bw_mask(w: int, h: int, box: tuple[int, int, int, int]) -> InputImage:
    return InputImage(make_mask_png(w, h, box=box, style="bw"), "image/png", w, h)


def job(prompt: str = "make the sky pink", **kw: object) -> Job:
    kw.setdefault("images", [image()])
    return Job(task_id="t" * 32, function="edit", prompt=prompt, **kw)  # type: ignore[arg-type]


def request(**kw: object) -> EditRequest:
    kw.setdefault("images", [SRC])
    kw.setdefault("prompt", "make the sky pink")
    return EditRequest(**kw)  # type: ignore[arg-type]


def decode(data: bytes) -> Image.Image:
    pil = Image.open(io.BytesIO(data))
    pil.load()
    return pil


def assert_clean(exc: BaseException, j: Job | None = None) -> None:
    """The API key appears in no error text, stored form or note."""
    texts = [str(exc), repr(exc)]
    if isinstance(exc, RetouchError):
        texts.append(str(exc.to_dict()))
    if j is not None:
        texts.extend(j.notes)
    assert all(KEY not in t and KEY[-8:] not in t for t in texts), texts


async def raises(cls: type[RetouchError], coro, j: Job | None = None):
    with pytest.raises(cls) as info:
        await coro
    assert_clean(info.value, j)
    return info.value


# ---- settings and capabilities -------------------------------------------------------------


def test_settings_defaults_follow_the_model_and_host() -> None:
    s = OpenAISettings(kind="openai")
    assert (s.base_url, s.model) == ("https://api.openai.com/v1", "gpt-image-1")
    assert (s.max_images, s.max_bytes, s.max_n, s.max_prompt_chars) == (16, 50 * MB, 10, 32000)
    assert s.sizes == ["1024x1024", "1536x1024", "1024x1536", "auto"]
    assert s.response_format == "" and s.price_per_image is None
    d2 = OpenAISettings(kind="openai", model="dall-e-2")
    assert (d2.max_images, d2.max_bytes, d2.max_prompt_chars) == (1, 4 * MB, 1000)
    assert d2.sizes == ["256x256", "512x512", "1024x1024"] and d2.formats == ["png"]
    dg = OpenAISettings.model_validate(
        {"kind": "openai", "base_url": "https://api.dgrid.ai/v1", "model": "qwen-image-edit"}
    )
    assert dg.max_bytes == 4 * MB and dg.formats == ["png"] and dg.sizes == []
    explicit = OpenAISettings(kind="openai", model="dall-e-2", max_bytes=2 * MB, sizes=["512*512"])
    assert explicit.max_bytes == 2 * MB and explicit.sizes == ["512x512"]
    with pytest.raises(ValueError):
        OpenAISettings(kind="openai", typo=1)
    with pytest.raises(ValueError):
        OpenAISettings(kind="openai", response_format="png")


def test_capabilities_and_secret_free_repr(http: httpx.AsyncClient) -> None:
    v = OpenAIVendor("openai", OpenAISettings(kind="openai", api_key=KEY), http)
    cap = v.capabilities["edit"]
    assert set(v.capabilities) == {"edit"}
    assert cap.params == {"n", "size"} and cap.mask == "optional"
    assert cap.options == {
        "quality",
        "background",
        "output_format",
        "output_compression",
        "input_fidelity",
    }
    assert (cap.max_images, cap.max_n) == (3, 10)
    assert v.completion == "sync" and v.price_for("edit") == (None, None)
    assert KEY not in repr(v) and KEY not in repr(v.settings) and KEY not in str(v.settings)
    d2 = OpenAIVendor("d2", OpenAISettings(kind="openai", api_key=KEY, model="dall-e-2"), http)
    assert d2.capabilities["edit"].max_images == 1
    assert "gpt-image" in d2.capabilities["edit"].note


def test_check_refuses_before_sending(
    fake: FakeOpenAI, vendor: OpenAIVendor, http: httpx.AsyncClient
) -> None:
    vendor.check(request(n=2, size="1536x1024", mask=SRC, watermark="© me"))
    vendor.check(request(size="auto", options={"quality": "high", "input_fidelity": "low"}))
    for kw in ({"seed": 1}, {"negative_prompt": "blur"}, {"watermark": True}):
        with pytest.raises(Unsupported):
            vendor.check(request(**kw))
    with pytest.raises(InvalidParameter, match="1024x1024"):
        vendor.check(request(size="800x600"))
    with pytest.raises(InvalidParameter, match="at most 3"):
        vendor.check(request(images=[SRC] * 4))
    with pytest.raises(InvalidParameter, match="quality"):
        vendor.check(request(options={"quality": "ultra"}))
    with pytest.raises(InvalidParameter, match="png or webp"):
        vendor.check(request(options={"background": "transparent", "output_format": "jpeg"}))
    vendor.check(request(options={"background": "transparent", "output_format": "webp"}))
    with pytest.raises(InvalidParameter, match="0 to 100"):
        vendor.check(request(options={"output_format": "jpeg", "output_compression": 101}))
    with pytest.raises(InvalidParameter, match="jpeg or webp"):
        vendor.check(request(options={"output_compression": 50}))
    with pytest.raises(InvalidParameter, match="does not take the option"):
        vendor.check(request(options={"style": "x"}))
    short = make_vendor(fake, http, max_prompt_chars=10)
    with pytest.raises(InvalidParameter, match="at most 10 characters"):
        short.check(request(prompt="x" * 11))
    mini = make_vendor(fake, http, model="gpt-image-1-mini")
    with pytest.raises(Unsupported, match="input_fidelity"):
        mini.check(request(options={"input_fidelity": "high"}))
    d2 = make_vendor(fake, http, model="dall-e-2")
    with pytest.raises(Unsupported, match="gpt-image"):
        d2.check(request(options={"background": "opaque"}))
    with pytest.raises(InvalidParameter, match="at most 1"):
        d2.check(request(images=[SRC, SRC]))
    with pytest.raises(InvalidParameter, match="1000"):
        d2.check(request(prompt="x" * 1001))
    d2.check(request(size="512x512", options={"quality": "standard"}))
    keyless = make_vendor(fake, http, api_key="")
    with pytest.raises(ConfigError, match="api_key"):
        keyless.check(request())


# ---- the request -----------------------------------------------------------------------------


async def test_one_image_multipart_contract(fake: FakeOpenAI, http: httpx.AsyncClient) -> None:
    vendor = make_vendor(fake, http, organization="org-123", project="proj-456")
    j = job(n=2, size=(1536, 1024), options={"quality": "low", "output_format": "png"})
    outcome = await vendor.submit(j)
    rec = fake.last("edits")
    assert rec.is_multipart
    assert rec.headers["authorization"] == f"Bearer {KEY}"
    assert rec.headers["openai-organization"] == "org-123"
    assert rec.headers["openai-project"] == "proj-456"
    assert rec.form == {
        "prompt": "make the sky pink",
        "model": "gpt-image-1",
        "n": "2",
        "size": "1536x1024",
        "quality": "low",
        "output_format": "png",
    }
    [part] = rec.files
    assert (part.field, part.filename, part.content_type) == ("image", "image_1.png", "image/png")
    assert part.data == j.images[0].data
    assert isinstance(outcome, Finished) and len(outcome.images) == 2
    for i, out in enumerate(outcome.images):
        assert out.url is None and out.data is not None
        assert image_size(out.data) == (1536, 1024)
        assert fake_meta(out.data)["index"] == i


async def test_defaults_send_only_what_is_set(fake: FakeOpenAI, vendor: OpenAIVendor) -> None:
    await vendor.submit(job())
    rec = fake.last("edits")
    assert rec.form == {"prompt": "make the sky pink", "model": "gpt-image-1"}
    assert "openai-organization" not in rec.headers and "openai-project" not in rec.headers


async def test_several_images_are_repeated_image_parts(
    fake: FakeOpenAI, vendor: OpenAIVendor
) -> None:
    images = [image(300, 200, "PNG"), image(200, 300, "JPEG"), image(256, 256, "BMP")]
    j = job(images=images)
    outcome = await vendor.submit(j)
    rec = fake.last("edits")
    parts = rec.files_named("image[]")
    assert [p for p in rec.parts if p.startswith("image")] == ["image[]"] * 3
    assert [(p.filename, p.content_type) for p in parts] == [
        ("image_1.png", "image/png"),
        ("image_2.jpg", "image/jpeg"),
        ("image_3.png", "image/png"),  # BMP is not taken: re-encoded
    ]
    assert parts[0].data == images[0].data and parts[1].data == images[1].data
    assert Image.open(io.BytesIO(parts[2].data)).format == "PNG"
    assert any("re-encoded BMP as PNG" in n for n in j.notes)
    assert len(outcome.images) == 1


async def test_mask_becomes_alpha_transparent_where_white(
    fake: FakeOpenAI, vendor: OpenAIVendor
) -> None:
    # The mask is half the image's size (same shape): fitted to the first image.
    j = job(images=[image(320, 240)], mask=bw_mask(160, 120, (40, 30, 119, 89)))
    await vendor.submit(j)
    rec = fake.last("edits")
    part = rec.file("mask")
    assert part is not None and part.content_type == "image/png" and part.filename == "mask.png"
    received = decode(part.data)
    assert received.format == "PNG" and received.mode == "RGBA"
    assert received.size == (320, 240)
    alpha = received.getchannel("A")
    assert alpha.getpixel((160, 120)) == 0  # white in Retouch's mask: edit → transparent
    assert alpha.getpixel((5, 5)) == 255  # black: keep → opaque
    assert alpha.getpixel((315, 235)) == 255
    assert set(alpha.tobytes()) == {0, 255}
    assert any("transparent pixels mark the area to edit" in n for n in j.notes)
    assert any("resized to 320×240" in n for n in j.notes)


async def test_mask_of_another_shape_is_refused(fake: FakeOpenAI, vendor: OpenAIVendor) -> None:
    j = job(images=[image(320, 240)], mask=bw_mask(100, 100, (10, 10, 50, 50)))
    await raises(InvalidParameter, vendor.submit(j))
    assert fake.requests_to("edits") == []


async def test_gpt_image_options_reach_the_vendor(fake: FakeOpenAI, vendor: OpenAIVendor) -> None:
    options = {
        "quality": "high",
        "background": "opaque",
        "output_format": "webp",
        "output_compression": 60,
        "input_fidelity": "high",
    }
    outcome = await vendor.submit(job(options=options, size=(1024, 1024)))
    rec = fake.last("edits")
    assert {k: rec.form[k] for k in options} == {k: str(v) for k, v in options.items()}
    assert Image.open(io.BytesIO(outcome.images[0].data)).format == "WEBP"


async def test_large_image_is_shrunk_to_max_bytes(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    noisy = Image.effect_noise((400, 400), 90).convert("RGB")
    big = encode(noisy, "PNG")
    vendor = make_vendor(fake, http, max_bytes=100_000)
    j = job(images=[big])
    await vendor.submit(j)
    part = fake.last("edits").file("image")
    assert part is not None and len(part.data) <= 100_000
    assert any("size limit" in n for n in j.notes)


# ---- dall-e-2 and DGrid (URL results) --------------------------------------------------------


async def test_dalle2_url_results_expire_in_an_hour(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    vendor = make_vendor(fake, http, model="dall-e-2", response_format="url")
    j = job(images=[image(256, 256, "JPEG")], size=(512, 512), n=2)
    before = datetime.now(UTC)
    outcome = await vendor.submit(j)
    rec = fake.last("edits")
    assert rec.form["model"] == "dall-e-2" and rec.form["response_format"] == "url"
    part = rec.file("image")
    assert part is not None and part.content_type == "image/png"  # JPEG re-encoded as PNG
    assert len(outcome.images) == 2
    for out in outcome.images:
        assert out.data is None and out.url and out.url.startswith(fake.base_url)
        assert out.expires_at is not None
        assert (
            before + timedelta(minutes=59)
            < out.expires_at
            <= datetime.now(UTC) + timedelta(minutes=60)
        )
        got = await http.get(out.url)
        assert got.status_code == 200 and image_size(got.content) == (512, 512)


async def test_dalle2_refuses_non_square_and_bad_sizes(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    vendor = make_vendor(fake, http, model="dall-e-2")
    await raises(InvalidParameter, vendor.submit(job(images=[image(300, 200)])))
    await raises(InvalidParameter, vendor.submit(job(size=(1536, 1024))))
    assert fake.requests_to("edits") == []


async def test_dgrid_deployment(dgrid_server: FakeOpenAI, http: httpx.AsyncClient) -> None:
    dgrid_server.reset()
    vendor = make_vendor(
        dgrid_server, http, model="qwen-image-edit", max_bytes=4 * MB, formats=["png"]
    )
    assert vendor.settings.sizes == []
    vendor.check(request(size="800x600"))
    j = job(images=[image(300, 200, "JPEG")], size=(800, 600))
    outcome = await vendor.submit(j)
    rec = dgrid_server.last("edits")
    assert rec.form["model"] == "qwen-image-edit" and rec.form["size"] == "800x600"
    assert rec.file("image").content_type == "image/png"
    [out] = outcome.images
    assert out.url and out.data is None and out.expires_at is not None
    assert (await http.get(out.url)).status_code == 200
    # DGrid echoes a revised prompt; it is only noted when it differs.
    assert outcome.notes == []


# ---- answers and errors ----------------------------------------------------------------------


async def test_bad_key_is_an_auth_error_without_the_key(
    fake: FakeOpenAI, http: httpx.AsyncClient
) -> None:
    vendor = make_vendor(fake, http, api_key=KEY + "-wrong")
    err = await raises(AuthError, vendor.submit(job()))
    assert err.status == 401 and err.vendor_code == "invalid_api_key"
    assert err.request_id and err.request_id.startswith("req_")
    assert "wrong" not in str(err) and "-wrong" not in repr(err)
    fake.inject("edits", invalid_api_key())
    err = await raises(AuthError, make_vendor(fake, http).submit(job()))
    assert err.vendor == "openai"


async def test_moderation_is_content_rejected(fake: FakeOpenAI, vendor: OpenAIVendor) -> None:
    fake.blocked_words = {"forbidden"}
    err = await raises(ContentRejected, vendor.submit(job("something forbidden")))
    assert err.vendor_code == "moderation_blocked" and err.status == 400
    assert err.request_id and not err.retryable
    fake.inject("edits", moderation_blocked())
    await raises(ContentRejected, vendor.submit(job()))


async def test_other_400s_are_vendor_rejected(fake: FakeOpenAI, http: httpx.AsyncClient) -> None:
    # A model the fake does not know: the vendor's own validation answers.
    vendor = make_vendor(fake, http, model="gpt-image-9")
    err = await raises(VendorRejected, vendor.submit(job()))
    assert err.status == 400 and err.vendor_code == "invalid_value" and "gpt-image-9" in str(err)
    fake.inject("edits", Fault.status(404, {"error": {"message": "no", "type": "x"}}))
    err = await raises(VendorRejected, make_vendor(fake, http).submit(job()))
    assert err.status == 404 and not err.retryable


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (rate_limited(retry_after=3), 3.0),
        (rate_limited(retry_after_ms=1500), 1.5),
        (rate_limited(retry_after=7, retry_after_ms=250), 0.25),
        (rate_limited(), None),
    ],
)
async def test_rate_limit_is_throttled_with_retry_after(
    fake: FakeOpenAI, vendor: OpenAIVendor, fault: Fault, expected: float | None
) -> None:
    fake.inject("edits", fault)
    err = await raises(Throttled, vendor.submit(job()))
    assert err.retryable and err.retry_after == expected
    assert err.vendor_code == "rate_limit_exceeded" and err.status == 429


async def test_exhausted_quota_is_not_retried(fake: FakeOpenAI, vendor: OpenAIVendor) -> None:
    fake.inject("edits", insufficient_quota())
    err = await raises(QuotaError, vendor.submit(job()))
    assert not err.retryable and err.vendor_code == "insufficient_quota" and err.status == 429
    # The same words without the code still mean quota, not throttling.
    body = {"error": {"message": "You exceeded your current quota.", "type": "x", "code": None}}
    fake.inject("edits", Fault.status(429, body))
    await raises(QuotaError, vendor.submit(job()))


async def test_403_country_or_billing(fake: FakeOpenAI, vendor: OpenAIVendor) -> None:
    country = {"error": {"message": "Country, region, or territory not supported", "type": "x"}}
    fake.inject("edits", Fault.status(403, country))
    await raises(AuthError, vendor.submit(job()))
    billing = {"error": {"message": "Billing hard limit has been reached", "type": "x"}}
    fake.inject("edits", Fault.status(403, billing))
    await raises(QuotaError, vendor.submit(job()))


async def test_server_errors_are_transient_faults(fake: FakeOpenAI, vendor: OpenAIVendor) -> None:
    for fault in (server_error(), service_unavailable(), Fault.status(502, "<html>bad</html>")):
        fake.inject("edits", fault)
        err = await raises(VendorFault, vendor.submit(job()))
        assert err.retryable and err.status == fault.http_status
    fake.inject(
        "edits", Fault.status(500, {"error": {"message": "x"}}, {"x-should-retry": "false"})
    )
    err = await raises(VendorFault, vendor.submit(job()))
    assert not err.retryable


async def test_slow_answer_is_a_timeout(fake: FakeOpenAI, http: httpx.AsyncClient) -> None:
    vendor = make_vendor(fake, http, timeout_s=0.3)
    fake.inject("edits", Fault.delay(1.5))
    err = await raises(VendorTimeout, vendor.submit(job()))
    assert err.retryable and err.details.get("maybe_submitted") is True


async def test_malformed_and_broken_answers(fake: FakeOpenAI, vendor: OpenAIVendor) -> None:
    fake.inject("edits", Fault.malformed())
    err = await raises(VendorFault, vendor.submit(job()))
    assert "malformed" in str(err)
    assert err.details.get("maybe_submitted") is True  # a 2xx may have been billed
    fake.inject("edits", Fault.status(200, {"created": 1, "data": []}))
    err = await raises(VendorFault, vendor.submit(job()))
    assert err.details.get("maybe_submitted") is True
    fake.inject("edits", Fault.status(200, {"created": 1, "data": [{"b64_json": "@@not-b64"}]}))
    await raises(VendorFault, vendor.submit(job()))
    fake.inject("edits", Fault.reset())
    err = await raises(VendorFault, vendor.submit(job()))
    assert err.details.get("maybe_submitted") is True


async def test_revised_prompt_is_noted(fake: FakeOpenAI, vendor: OpenAIVendor) -> None:
    png = base64.b64encode(image(64, 64).data).decode()
    body = {"created": 1, "data": [{"b64_json": png, "revised_prompt": "a pink sky at dusk"}]}
    fake.inject("edits", Fault.status(200, body))
    outcome = await vendor.submit(job())
    assert outcome.notes == ["openai revised the prompt: a pink sky at dusk"]


async def test_key_echoed_by_the_vendor_is_scrubbed(fake: FakeOpenAI, vendor: OpenAIVendor) -> None:
    body = {"error": {"message": f"bad key {KEY} here", "type": "x", "code": "oops"}}
    fake.inject("edits", Fault.status(400, body))
    err = await raises(VendorRejected, vendor.submit(job()))
    assert "bad key" in str(err)
