"""OpenAI-style image edits: multipart ``POST {base_url}/images/edits`` (sync).

Serves OpenAI itself (gpt-image-1, gpt-image-1-mini, dall-e-2) and compatible deployments
such as DGrid (``https://api.dgrid.ai/v1``). The limits depend on the model, so each one is a
setting whose default is derived from ``model`` (and, for DGrid, from ``base_url``); any of
them can be set explicitly in ``[vendors.<name>]``.

Protocol notes (vendors.md §4, §7):
- images go as ``image`` (one) or repeated ``image[]`` parts (several), like the official SDK;
- the mask is a PNG whose *transparent* pixels mark the area to edit, the same size as the
  first image — the opposite encoding of Retouch's black-and-white mask, so it is converted;
- 429 means throttling (retry after ``retry-after(-ms)``) or an exhausted quota (never
  retried): told apart by ``error.code`` and the message, not by the status.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import pybase64
from PIL import Image
from pydantic import Field, field_validator, model_validator

from tools import pixel_budget
from tools.config import MB, VendorSettings
from tools.errors import (
    ConfigError,
    ContentRejected,
    InvalidParameter,
    QuotaError,
    Unsupported,
    VendorError,
    VendorFault,
)
from tools.media import InputImage, encode, fit_async, fit_mask
from tools.models import EditRequest
from tools.vendors.base import (
    Capability,
    Finished,
    Job,
    OutputImage,
    Vendor,
    json_body,
    redact,
)
from tools.vendors.classify import Answer, Dialect, classify, transport_error

#: How long an OpenAI result URL stays valid (dall-e-2 ``response_format=url``).
URL_LIFETIME = timedelta(minutes=60)

GPT_IMAGE_SIZES = ["1024x1024", "1536x1024", "1024x1536", "auto"]
DALLE2_SIZES = ["256x256", "512x512", "1024x1024"]

#: Documented option values (vendors.md §4, O1).
QUALITY_GPT_IMAGE = frozenset({"high", "medium", "low", "auto"})
QUALITY_DALLE2 = frozenset({"standard", "auto"})
BACKGROUNDS = frozenset({"transparent", "opaque", "auto"})
OUTPUT_FORMATS = frozenset({"png", "jpeg", "webp"})
FIDELITIES = frozenset({"high", "low"})
OPTIONS = frozenset(
    {"quality", "background", "output_format", "output_compression", "input_fidelity"}
)
GPT_IMAGE_ONLY = frozenset({"background", "output_format", "output_compression", "input_fidelity"})

#: What OpenAI means by its codes and words (vendors.md §4, O4): 429 is throttling or an
#: exhausted quota, told apart by the code and the message, not by the status.
DIALECT = Dialect(
    codes={
        "insufficient_quota": QuotaError,
        "billing_hard_limit_reached": QuotaError,
        "moderation_blocked": ContentRejected,
        "content_policy_violation": ContentRejected,
    },
    quota_words=("exceeded your current quota", "billing", "insufficient_quota", "balance"),
    moderation_words=("safety system",),
)


def model_family(model: str) -> str:
    """``gpt-image``, ``dall-e-2`` or ``other`` (a compatible deployment's own model)."""
    name = model.strip().lower()
    if name.startswith("gpt-image"):
        return "gpt-image"
    if name.startswith("dall-e-2"):
        return "dall-e-2"
    return "other"


def _is_dgrid(base_url: str) -> bool:
    host = (urlsplit(base_url).hostname or "").lower()
    return host == "dgrid.ai" or host.endswith(".dgrid.ai")


class OpenAISettings(VendorSettings):
    """``[vendors.<name>]`` of kind ``openai``.

    Limits left unset are derived from ``model``: gpt-image-* takes up to 16 png/webp/jpeg
    images under 50 MB and prompts of 32000 characters; dall-e-2 takes one square PNG under
    4 MB and 1000 characters. A DGrid ``base_url`` lowers ``max_bytes`` to 4 MB and
    ``formats`` to PNG, as its documentation states. ``sizes = []`` accepts any ``WxH``.
    ``response_format`` is sent only when set (``url`` or ``b64_json``; dall-e-2 and DGrid).
    """

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-image-1"
    organization: str = ""
    project: str = ""
    max_images: int = Field(16, ge=1)
    max_bytes: int = Field(50 * MB, ge=1024)
    max_n: int = Field(10, ge=1)
    max_prompt_chars: int = Field(32_000, ge=1)
    sizes: list[str] = Field(default_factory=lambda: list(GPT_IMAGE_SIZES))
    formats: list[str] = Field(default_factory=lambda: ["png", "webp", "jpeg"])
    square_only: bool = False
    response_format: str = ""

    @model_validator(mode="before")
    @classmethod
    def _model_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        family = model_family(str(data.get("model") or "gpt-image-1"))
        derived: dict[str, Any] = {}
        if family == "dall-e-2":
            derived = {
                "max_images": 1,
                "max_bytes": 4 * MB,
                "max_prompt_chars": 1000,
                "sizes": list(DALLE2_SIZES),
                "formats": ["png"],
                "square_only": True,
            }
        elif family == "other":
            derived = {"sizes": []}
        if _is_dgrid(str(data.get("base_url") or "")):
            derived.update({"max_bytes": 4 * MB, "formats": ["png"]})
        for key, value in derived.items():
            data.setdefault(key, value)
        return data

    @field_validator("formats")
    @classmethod
    def _formats(cls, value: list[str]) -> list[str]:
        out = [v.lower().replace("jpg", "jpeg") for v in value]
        bad = sorted(set(out) - {"png", "webp", "jpeg"})
        if bad or not out:
            raise ValueError("formats are a non-empty list of png, webp, jpeg")
        return out

    @field_validator("sizes")
    @classmethod
    def _sizes(cls, value: list[str]) -> list[str]:
        out = []
        for size in value:
            size = size.strip().lower().replace("*", "x")
            if size != "auto" and not re.fullmatch(r"\d+x\d+", size):
                raise ValueError(f'size {size!r} must look like "1024x1024" or be "auto"')
            out.append(size)
        return out

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, value: str) -> str:
        if value not in ("", "url", "b64_json"):
            raise ValueError('response_format is "", "url" or "b64_json"')
        return value


class OpenAIVendor(Vendor):
    """``/images/edits`` multipart protocol (OpenAI, DGrid)."""

    key_env: ClassVar[str | None] = "OPENAI_API_KEY"
    Settings: ClassVar[type[VendorSettings]] = OpenAISettings
    completion: ClassVar = "sync"

    settings: OpenAISettings

    @property
    def family(self) -> str:
        return model_family(self.settings.model)

    @property
    def capabilities(self) -> Mapping[str, Capability]:
        s = self.settings
        sizes = ", ".join(s.sizes) if s.sizes else "any WxH"
        note = (
            f"{s.model} via {s.base_url}: instruction edit of up to {min(3, s.max_images)} "
            f"image(s); optional mask (applied to the first image); sizes: {sizes}. "
            "No seed or negative prompt in this protocol."
        )
        if self.family == "dall-e-2":
            note += " Options other than quality need a gpt-image model."
        return {
            "edit": Capability(
                params=frozenset({"n", "size"}),
                options=OPTIONS,
                mask="optional",
                max_images=min(3, s.max_images),
                max_n=s.max_n,
                note=note,
            )
        }

    # ---- checking --------------------------------------------------------------------------

    def check(self, request: EditRequest) -> None:
        super().check(request)
        s = self.settings
        if not s.api_key.get_secret_value():
            raise ConfigError(
                f"vendors.{self.name}.api_key is empty (or set OPENAI_API_KEY)", vendor=self.name
            )
        if len(request.prompt) > s.max_prompt_chars:
            raise InvalidParameter(
                f"{self.name} ({s.model}) takes prompts of at most {s.max_prompt_chars} "
                f"characters; this one has {len(request.prompt)}",
                parameter="prompt",
            )
        if request.size is not None and s.sizes and request.size not in s.sizes:
            raise InvalidParameter(
                f"{self.name} ({s.model}) makes sizes {', '.join(s.sizes)}; not {request.size}",
                parameter="size",
            )
        self._check_options(request.options)

    def _check_options(self, options: Mapping[str, Any]) -> None:
        s = self.settings
        family = self.family
        for key in sorted(options):
            if key in GPT_IMAGE_ONLY and family == "dall-e-2":
                raise Unsupported(
                    f"{self.name}: option {key!r} needs a gpt-image model; {s.model} "
                    "does not take it",
                    vendor=self.name,
                    parameter=f"options.{key}",
                )
        if "quality" in options:
            allowed = {
                "gpt-image": QUALITY_GPT_IMAGE,
                "dall-e-2": QUALITY_DALLE2,
                "other": QUALITY_GPT_IMAGE | QUALITY_DALLE2,
            }[family]
            _enum(options["quality"], allowed, "quality")
        if "background" in options:
            _enum(options["background"], BACKGROUNDS, "background")
        if "output_format" in options:
            _enum(options["output_format"], OUTPUT_FORMATS, "output_format")
        if options.get("background") == "transparent" and options.get(
            "output_format", "png"
        ) not in ("png", "webp"):
            raise InvalidParameter(
                "a transparent background needs output_format png or webp",
                parameter="options.background",
            )
        if "output_compression" in options:
            value = options["output_compression"]
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
                raise InvalidParameter(
                    "output_compression is an integer from 0 to 100",
                    parameter="options.output_compression",
                )
            if value < 100 and options.get("output_format", "png") == "png":
                raise InvalidParameter(
                    "output_compression below 100 needs output_format jpeg or webp (PNG is "
                    "lossless)",
                    parameter="options.output_compression",
                )
        if "input_fidelity" in options:
            model = s.model.lower()
            if family != "gpt-image" or "mini" in model:
                raise Unsupported(
                    f"{self.name}: input_fidelity is a gpt-image-1 option (not -mini); "
                    f"{s.model} does not take it",
                    vendor=self.name,
                    parameter="options.input_fidelity",
                )
            _enum(options["input_fidelity"], FIDELITIES, "input_fidelity")

    # ---- submitting ------------------------------------------------------------------------

    def _headers(self) -> dict[str, str]:
        s = self.settings
        key = s.api_key.get_secret_value()
        if not key:
            raise ConfigError(
                f"vendors.{self.name}.api_key is empty (or set OPENAI_API_KEY)", vendor=self.name
            )
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        if s.organization:
            headers["OpenAI-Organization"] = s.organization
        if s.project:
            headers["OpenAI-Project"] = s.project
        return headers

    async def _prepare_images(self, job: Job) -> list[InputImage]:
        s = self.settings
        if not job.images:
            raise InvalidParameter("edit needs at least one image", parameter="images")
        limit = min(3, s.max_images)
        if len(job.images) > limit:
            raise InvalidParameter(
                f"{self.name} takes at most {limit} image(s); got {len(job.images)}",
                parameter="images",
            )
        out = []
        for i, image in enumerate(job.images, 1):
            if s.square_only and image.width != image.height:
                raise InvalidParameter(
                    f"image {i} is {image.width}×{image.height}; {s.model} edits square "
                    "images only (crop it first)",
                    parameter="images",
                )
            fitted, notes = await fit_async(
                image,
                max_bytes=s.max_bytes,
                formats=tuple(s.formats),
                label=f"image {i}",
                vendor=self.name,
            )
            job.notes.extend(notes)
            out.append(fitted)
        return out

    def _prepare_mask(self, job: Job, first: InputImage) -> InputImage | None:
        if job.mask is None:
            return None
        bw, notes = fit_mask(job.mask, (first.width, first.height))
        job.notes.extend(notes)
        gray = bw.to_pil().convert("L")
        alpha = gray.point(lambda v: 0 if v >= 128 else 255)  # white (edit) → transparent
        black = Image.new("L", gray.size, 0)
        rgba = Image.merge("RGBA", (black, black, black, alpha))
        job.notes.append(
            "mask: converted to a PNG whose transparent pixels mark the area to edit "
            f"({self.name}'s convention), applied to the first image"
        )
        return encode(rgba, "PNG")

    def _form(self, job: Job) -> dict[str, str]:
        s = self.settings
        form: dict[str, str] = {"prompt": job.prompt, "model": s.model}
        if job.n != 1:
            form["n"] = str(job.n)
        size = f"{job.size[0]}x{job.size[1]}" if job.size is not None else None
        if size is not None:
            if s.sizes and size not in s.sizes:
                raise InvalidParameter(
                    f"{self.name} ({s.model}) makes sizes {', '.join(s.sizes)}; not {size}",
                    parameter="size",
                )
            form["size"] = size
        if s.response_format:
            form["response_format"] = s.response_format
        for key in sorted(OPTIONS):
            if key in job.options:
                form[key] = str(job.options[key])
        return form

    async def submit(self, job: Job) -> Finished:
        self._check_options(job.options)
        if len(job.prompt) > self.settings.max_prompt_chars:
            raise InvalidParameter(
                f"{self.name} takes prompts of at most {self.settings.max_prompt_chars} characters",
                parameter="prompt",
            )
        headers = self._headers()
        images = await self._prepare_images(job)
        mask = None
        if job.mask is not None:  # fitted, made gray, made RGBA: within the pixel budget
            cost = 4 * pixel_budget.decoded_bytes(images[0].width, images[0].height)
            mask = await pixel_budget.PIXELS.run(
                cost, self._prepare_mask, job, images[0], bounded=False
            )
        form = self._form(job)
        field = "image" if len(images) == 1 else "image[]"
        files: list[tuple[str, tuple[str, bytes, str]]] = [
            (field, (f"image_{i}.{img.extension}", img.data, img.mime_type))
            for i, img in enumerate(images, 1)
        ]
        if mask is not None:
            files.append(("mask", ("mask.png", mask.data, "image/png")))
        url = self.settings.base_url.rstrip("/") + "/images/edits"
        try:
            response = await self.http.post(
                url, data=form, files=files, headers=headers, timeout=self.settings.timeout_s
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name, submitting=True) from None
        if response.status_code >= 400:
            raise self._error(response)
        try:
            return self._finished(json_body(response, self.name), response, job)
        except VendorFault as exc:
            exc.details["maybe_submitted"] = True  # a 2xx: the vendor may have billed
            raise

    def _finished(self, body: Any, response: httpx.Response, job: Job) -> Finished:
        request_id = response.headers.get("x-request-id")
        items = body.get("data") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise VendorFault(
                f"{self.name}: malformed answer (no data list)",
                vendor=self.name,
                status=response.status_code,
                request_id=request_id,
            )
        images: list[OutputImage] = []
        notes: list[str] = []
        now = datetime.now(UTC)
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("b64_json"):
                try:
                    data = pybase64.b64decode(item["b64_json"], validate=True)
                except (binascii.Error, ValueError, TypeError):
                    raise VendorFault(
                        f"{self.name}: malformed answer (b64_json is not base64)",
                        vendor=self.name,
                        request_id=request_id,
                    ) from None
                images.append(OutputImage(data=data))
            elif item.get("url"):
                images.append(OutputImage(url=str(item["url"]), expires_at=now + URL_LIFETIME))
            else:
                continue
            revised = item.get("revised_prompt")
            if revised and isinstance(revised, str) and revised != job.prompt:
                notes.append(f"{self.name} revised the prompt: {revised[:500]}")
        if not images:
            raise VendorFault(
                f"{self.name}: the answer holds no image",
                vendor=self.name,
                status=response.status_code,
                request_id=request_id,
            )
        return Finished(images=images, notes=notes)

    # ---- errors ----------------------------------------------------------------------------

    def _error(self, response: httpx.Response) -> VendorError:
        """``{"error": {"message", "type", "code"}}``, classified by the shared table."""
        status = response.status_code
        try:
            body = response.json()
        except ValueError:
            body = None
        err = body.get("error") if isinstance(body, dict) else None
        if not isinstance(err, dict):
            err = {}
        code = str(err.get("code") or err.get("type") or "") or None
        message = self._redact(str(err.get("message") or "")) or f"HTTP {status}"
        return classify(
            DIALECT,
            Answer(status, code, message, response.headers),
            f"{self.name}: {message[:500]}",
            vendor=self.name,
            request_id=response.headers.get("x-request-id"),
        )

    def _redact(self, text: str) -> str:
        return redact(text, self.settings.api_key.get_secret_value())


def _enum(value: Any, allowed: frozenset[str], name: str) -> None:
    if not isinstance(value, str) or value not in allowed:
        raise InvalidParameter(
            f"{name} must be one of {', '.join(sorted(allowed))}; got {value!r}",
            parameter=f"options.{name}",
        )
