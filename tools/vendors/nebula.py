"""ai-nebula: a proxy for qwen-image-edit-plus, ``POST /v1/images/generations`` (sync).

Body (vendors.md §5, seed S2): ``model``, ``prompt``, ``parameters{n, negative_prompt,
watermark, seed}`` (marked required, so always sent) and ``contents[{role:"user",
parts:[{image}×1–3, {text}]}]`` with images as ``data:{mime};base64,…`` URIs. The answer is an
envelope ``{code, msg, data}``: ``code`` 200 carries ``data.data[].url`` (valid ~24 h); any
other code is an error, whether the HTTP status mirrors it or is 200.
"""

from __future__ import annotations

import binascii
import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx
import pybase64
from pydantic import Field

from tools.config import MB, VendorSettings
from tools.errors import ConfigError, InvalidParameter, VendorError, VendorFault
from tools.media import fit_async
from tools.models import EditRequest, ImageFailure
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

#: Result URLs last "approx. 24 hours" (S2).
URL_LIFETIME = timedelta(hours=24)

#: The envelope's ``code`` is an HTTP status; its ``msg`` and metadata (DashScope's own body,
#: passed through) tell moderation and exhausted money apart from other refusals.
DIALECT = Dialect(
    quota_words=(
        "balance",
        "arrearage",
        "insufficient quota",
        "insufficient_quota",
        "free allocated quota",
        "billing",
        "余额",
        "欠费",
        "额度不足",
    ),
    moderation_words=(
        "datainspectionfailed",
        "data_inspection_failed",
        "ipinfringementsuspect",
        "inappropriate content",
        "content moderation",
        "green net",
        "sensitive",
    ),
)


class NebulaSettings(VendorSettings):
    """``[vendors.<name>]`` of kind ``nebula`` (ai-nebula, qwen-image-edit-plus).

    Limits follow the seed: 1–3 images of 384–3072 px per side and ≤10 MB (fitted before
    sending), 1–6 results, ¥0.18 per image. Prompt and negative-prompt lengths are DashScope's
    (800 and 500 characters), which ai-nebula forwards to.
    """

    base_url: str = "https://llm.ai-nebula.com"
    model: str = "qwen-image-edit-plus"
    min_side: int = Field(384, ge=1)
    max_side: int = Field(3072, ge=1)
    max_bytes: int = Field(10 * MB, ge=1024)
    max_n: int = Field(6, ge=1)
    max_images: int = Field(3, ge=1)
    max_prompt_chars: int = Field(800, ge=1)
    max_negative_prompt_chars: int = Field(500, ge=1)
    formats: list[str] = Field(default_factory=lambda: ["jpeg", "png", "bmp", "tiff", "webp"])
    price_per_image: float | None = Field(0.18, ge=0)
    currency: str | None = "CNY"


class NebulaVendor(Vendor):
    """ai-nebula's ``/v1/images/generations`` for qwen-image-edit-plus."""

    Settings: ClassVar[type[VendorSettings]] = NebulaSettings
    completion: ClassVar = "sync"

    settings: NebulaSettings

    @property
    def capabilities(self) -> Mapping[str, Capability]:
        s = self.settings
        return {
            "edit": Capability(
                params=frozenset({"n", "seed", "negative_prompt", "watermark"}),
                mask="none",
                max_images=min(3, s.max_images),
                max_n=s.max_n,
                note=(
                    f"{s.model} through ai-nebula: instruction edit or fusion of 1–3 images, "
                    f"up to {s.max_n} results; no mask and no output size (the result follows "
                    "the last image's aspect ratio)."
                ),
            )
        }

    def check(self, request: EditRequest) -> None:
        super().check(request)
        s = self.settings
        if not s.api_key.get_secret_value():
            raise ConfigError(f"vendors.{self.name}.api_key is empty", vendor=self.name)
        self._check_text(request.prompt, request.negative_prompt)

    def _check_text(self, prompt: str, negative: str | None) -> None:
        s = self.settings
        if len(prompt) > s.max_prompt_chars:
            raise InvalidParameter(
                f"{self.name} takes prompts of at most {s.max_prompt_chars} characters; "
                f"this one has {len(prompt)}",
                parameter="prompt",
            )
        if negative and len(negative) > s.max_negative_prompt_chars:
            raise InvalidParameter(
                f"{self.name} takes negative prompts of at most "
                f"{s.max_negative_prompt_chars} characters",
                parameter="negative_prompt",
            )

    async def _body(self, job: Job) -> dict[str, Any]:
        s = self.settings
        if not 1 <= len(job.images) <= min(3, s.max_images):
            raise InvalidParameter(
                f"{self.name} takes 1 to {min(3, s.max_images)} images; got {len(job.images)}",
                parameter="images",
            )
        if job.n > s.max_n:
            raise InvalidParameter(
                f"{self.name} makes at most {s.max_n} images per request", parameter="n"
            )
        self._check_text(job.prompt, job.negative_prompt)
        parts: list[dict[str, str]] = []
        for i, image in enumerate(job.images, 1):
            fitted, notes = await fit_async(
                image,
                min_side=s.min_side,
                max_side=s.max_side,
                max_bytes=s.max_bytes,
                formats=tuple(s.formats),
                label=f"image {i}",
                vendor=self.name,
            )
            job.notes.extend(notes)
            parts.append({"image": fitted.data_uri()})
        parts.append({"text": job.prompt})
        parameters: dict[str, Any] = {"n": job.n, "watermark": bool(job.watermark)}
        if job.negative_prompt:
            parameters["negative_prompt"] = job.negative_prompt
        if job.seed is not None:
            parameters["seed"] = job.seed
        return {
            "model": s.model,
            "prompt": job.prompt,
            "parameters": parameters,
            "contents": [{"role": "user", "parts": parts}],
        }

    async def submit(self, job: Job) -> Finished:
        key = self.settings.api_key.get_secret_value()
        if not key:
            raise ConfigError(f"vendors.{self.name}.api_key is empty", vendor=self.name)
        body = await self._body(job)
        url = self.settings.base_url.rstrip("/") + "/v1/images/generations"
        headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
        try:
            response = await self.http.post(
                url, json=body, headers=headers, timeout=self.settings.timeout_s
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name, submitting=True) from None
        if response.status_code >= 400:
            try:
                envelope = response.json()
            except ValueError:
                envelope = None
            raise self._error(response, envelope if isinstance(envelope, dict) else {})
        try:
            envelope = json_body(response, self.name)
            if not isinstance(envelope, dict):
                raise VendorFault(
                    f"{self.name}: malformed answer (not an envelope)",
                    vendor=self.name,
                    status=response.status_code,
                )
            if _int(envelope.get("code")) == 200:
                return self._finished(envelope, response, job)
        except VendorFault as exc:
            exc.details["maybe_submitted"] = True  # a 2xx: the vendor may have billed
            raise
        raise self._error(response, envelope)

    def _finished(self, envelope: dict[str, Any], response: httpx.Response, job: Job) -> Finished:
        data = envelope.get("data")
        items = data.get("data") if isinstance(data, dict) else None
        metadata = data.get("metadata") if isinstance(data, dict) else None
        request_id = _request_id(response, metadata)
        if not isinstance(items, list):
            raise VendorFault(
                f"{self.name}: malformed answer (no data.data list)",
                vendor=self.name,
                request_id=request_id,
            )
        now = datetime.now(UTC)
        images: list[OutputImage] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            if item.get("url"):
                images.append(OutputImage(url=str(item["url"]), expires_at=now + URL_LIFETIME))
            elif item.get("b64_json"):
                try:
                    images.append(
                        OutputImage(data=pybase64.b64decode(item["b64_json"], validate=True))
                    )
                except (binascii.Error, ValueError, TypeError):
                    raise VendorFault(
                        f"{self.name}: malformed answer (b64_json is not base64)",
                        vendor=self.name,
                        request_id=request_id,
                    ) from None
        if not images:
            raise VendorFault(
                f"{self.name}: the answer holds no image",
                vendor=self.name,
                request_id=request_id,
            )
        billed: int | None = None
        usage = metadata.get("usage") if isinstance(metadata, dict) else None
        if isinstance(usage, dict) and _int(usage.get("image_count")) is not None:
            billed = _int(usage.get("image_count"))
        failures = [
            ImageFailure(
                index=i,
                code="not_delivered",
                message=f"{self.name} delivered {len(images)} of {job.n} requested images",
            )
            for i in range(len(images), job.n)
        ]
        return Finished(images=images, failures=failures, billed_images=billed)

    def _error(self, response: httpx.Response, envelope: dict[str, Any]) -> VendorError:
        """An envelope whose ``code`` is not 200 (or an HTTP error without one)."""
        status = response.status_code
        code = _int(envelope.get("code"))
        if code is None or code == 200:
            code = status if status >= 400 else None
        data = envelope.get("data")
        metadata = data.get("metadata") if isinstance(data, dict) else None
        kw: dict[str, Any] = {
            "vendor": self.name,
            "vendor_code": _vendor_code(metadata) or (str(code) if code is not None else None),
            "request_id": _request_id(response, metadata),
            "status": status,
        }
        if code is None:
            return VendorFault(f"{self.name}: malformed answer (no code)", **kw)
        msg = str(envelope.get("msg") or envelope.get("message") or "")
        msg = self._redact(msg) or f"HTTP {status}"
        extra = json.dumps(metadata, ensure_ascii=False) if metadata else ""
        answer = Answer(code, words=f"{msg} {extra}", headers=response.headers)
        return classify(DIALECT, answer, f"{self.name}: {msg[:500]}", **kw)

    def _redact(self, text: str) -> str:
        return redact(text, self.settings.api_key.get_secret_value())


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _request_id(response: httpx.Response, metadata: Any) -> str | None:
    if isinstance(metadata, dict) and metadata.get("request_id"):
        return str(metadata["request_id"])
    return response.headers.get("x-request-id") or None


def _vendor_code(metadata: Any) -> str | None:
    """DashScope's own error code, when the proxy passes its body through."""
    if isinstance(metadata, dict) and isinstance(metadata.get("code"), str):
        return metadata["code"] or None
    return None
