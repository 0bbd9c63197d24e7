"""DashScope (Alibaba Cloud Model Studio): wanx2.1-imageedit and qwen-image-edit.

Two protocols behind one base URL (vendors.md §1–3, §10):

- the wanx functions are async tasks: ``POST …/image2image/image-synthesis`` with
  ``X-DashScope-Async: enable`` answers a task id, polled at ``GET /api/v1/tasks/{id}``; the
  images go up through DashScope's temporary storage first (the API takes URLs only);
- ``edit`` is qwen-image-edit(-plus/-max), synchronous, at
  ``POST …/multimodal-generation/generation``; images travel inline as data URIs, or through
  the temporary storage when they are large.

The same adapter serves ``https://dashscope-intl.aliyuncs.com`` and proxies that keep the
native body under a path prefix (302.AI: ``https://api.302.ai/aliyun``): every path is
appended to ``base_url``. Adapters never retry; errors are classified for the worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal
from urllib.parse import quote

import httpx
from pydantic import Field, field_validator, model_validator

from tools.config import MB, VendorSettings
from tools.errors import (
    InvalidParameter,
    Unsupported,
    VendorCanceled,
    VendorFault,
    VendorRejected,
)
from tools.media import InputImage, fit, fit_mask
from tools.models import EditRequest
from tools.vendors._dashscope_upload import RESOLVE_HEADER, Wire
from tools.vendors.base import (
    Capability,
    Finished,
    Job,
    Pending,
    Vendor,
    json_body,
)
from tools.vendors.classify import transport_error

WANX_PATH = "/api/v1/services/aigc/image2image/image-synthesis"
EDIT_PATH = "/api/v1/services/aigc/multimodal-generation/generation"
TASKS_PATH = "/api/v1/tasks/"
FORMATS = ["jpeg", "png", "bmp", "tiff", "webp"]

#: The wanx functions and what each really does.
WANX_FUNCTIONS = {
    "stylization_all": "restyles the whole image as the prompt says",
    "stylization_local": "restyles the part of the image the prompt names (no mask)",
    "description_edit": "edits the image as the prompt says, keeping its layout "
    "(listed by the DashScope SDK, not by the HTTP reference)",
    "description_edit_with_mask": "repaints the white region of the mask as the prompt says",
    "remove_watermark": "removes the text and watermarks it finds (no mask)",
    "expand": "outpaints 1.0–2.0× on each side",
    "super_resolution": "upscales 1–4× with generated detail",
    "colorization": "colours a black-and-white image; the prompt may name colours",
    "doodle": "extracts the line art, then paints the scene the prompt describes",
    "control_cartoon_feature": "puts the cartoon character into the scene the prompt describes",
}

#: The API requires a prompt; these functions do not need one from the user.
DEFAULT_PROMPTS = {
    "remove_watermark": "Remove the text and watermarks from the image.",
    "expand": "Extend the picture naturally beyond its edges.",
    "super_resolution": "Upscale the image with sharp, clean detail.",
    "colorization": "Colorize the image with natural colours.",
}


class DashScopeSettings(VendorSettings):
    base_url: str = "https://dashscope.aliyuncs.com"
    model: str = Field("wanx2.1-imageedit", description="model of the wanx functions")
    edit_model: str = Field("qwen-image-edit-plus", description="model of `edit`")
    max_concurrent: int = Field(2, ge=1)
    submit_rps: float = Field(2, gt=0)
    #: DashScope's account-wide cap is 20 task queries a second; 18 leaves room for the
    #: jitter of evenly spaced requests (at exactly 20, 21 landed in one second: bench/).
    query_rps: float = Field(18, gt=0, description="task queries per second, account-wide")
    #: Every 2–2.5 s: bench/polling.py (40 tasks of 2–10 s) measured a 1.05 s median lag at
    #: 0.89 queries per 2 s per task; 1 s growing to 10 s gave 1.73 s at 1.08 queries.
    poll_interval_s: float = Field(2, gt=0)
    poll_max_interval_s: float = Field(2.5, gt=0)
    # wanx2.1-imageedit input limits
    min_side: int = Field(512, ge=1)
    max_side: int = Field(4096, ge=1)
    max_bytes: int = Field(10 * MB, ge=1024)
    formats: list[str] = Field(default_factory=lambda: list(FORMATS))
    # qwen-image-edit input and output limits
    edit_min_side: int = Field(384, ge=1)
    edit_max_side: int = Field(3072, ge=1)
    edit_max_bytes: int = Field(10 * MB, ge=1024)
    edit_formats: list[str] = Field(default_factory=lambda: list(FORMATS))
    edit_size_min: int = Field(512, ge=16)
    edit_size_max: int = Field(2048, ge=16)
    max_prompt_chars: int = Field(800, ge=1)
    max_negative_prompt_chars: int = Field(500, ge=1)
    #: auto: wanx inputs go through the temporary storage, `edit` inputs inline unless
    #: larger than inline_max_bytes in all; always: `edit` uploads too; off: never upload
    #: (only `edit`, inline; for proxies without the upload endpoint).
    upload: Literal["auto", "always", "off"] = "auto"
    inline_max_bytes: int = Field(5 * MB, ge=0)
    price_per_image: float | None = Field(0.14, ge=0)
    currency: str | None = "CNY"
    edit_price_per_image: float | None = Field(None, ge=0)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _documented_prices(self) -> DashScopeSettings:
        """302.AI documents its own price for the qwen edit (0.05 PTC a call); the wanx
        price is DashScope's (¥0.14 an image). Explicit settings always win."""
        if "302.ai" in self.base_url and "edit_price_per_image" not in self.model_fields_set:
            self.edit_price_per_image = 0.05
            if "currency" not in self.model_fields_set:
                self.currency = "PTC"
            if "price_per_image" not in self.model_fields_set:
                self.price_per_image = None
        return self

    @field_validator("formats", "edit_formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        out = [{"jpg": "jpeg", "tif": "tiff"}.get(f.lower(), f.lower()) for f in value]
        unknown = sorted(set(out) - {*FORMATS, "gif"})
        if unknown or not out:
            raise ValueError(f"unknown format(s) {unknown}; use some of {FORMATS}")
        return out


def plus_series(model: str) -> bool:
    """qwen-image-edit-plus / -max (n 1–6, custom size, prompt_extend) vs plain (1 image)."""
    lowered = model.lower()
    return "plus" in lowered or "max" in lowered


class DashScopeVendor(Vendor):
    key_env: ClassVar[str | None] = "DASHSCOPE_API_KEY"
    Settings: ClassVar[type[VendorSettings]] = DashScopeSettings
    completion = "poll"

    settings: DashScopeSettings

    def __init__(self, name: str, settings: VendorSettings, http: httpx.AsyncClient) -> None:
        if not isinstance(settings, DashScopeSettings):
            settings = DashScopeSettings.model_validate(settings.model_dump(exclude_unset=True))
        super().__init__(name, settings, http)
        self.wire = Wire(name, self.settings.api_key)
        self._capabilities = self._build_capabilities()

    # ---- what it can do -------------------------------------------------------------------

    @property
    def capabilities(self) -> Mapping[str, Capability]:
        return self._capabilities

    def _build_capabilities(self) -> dict[str, Capability]:
        s = self.settings
        caps: dict[str, Capability] = {}
        if s.upload != "off":  # wanx takes URLs only: without uploads it cannot get the bytes
            for function, does in WANX_FUNCTIONS.items():
                params = {"n", "seed", "watermark"}
                params |= {"expand"} if function == "expand" else set()
                params |= {"upscale_factor"} if function == "super_resolution" else set()
                caps[function] = Capability(
                    params=frozenset(params),
                    mask="required" if function == "description_edit_with_mask" else "none",
                    max_images=1,
                    max_n=4,
                    note=f"{does} (generative, {s.model})",
                )
        plus = plus_series(s.edit_model)
        caps["edit"] = Capability(
            params=frozenset(
                {"n", "seed", "negative_prompt", "watermark"} | ({"size"} if plus else set())
            ),
            options=frozenset({"prompt_extend"}) if plus else frozenset(),
            mask="none",
            max_images=3,
            max_n=6 if plus else 1,
            note=f"instruction edit of 1–3 images, no mask (generative, {s.edit_model})"
            + ("" if plus else "; one image per request, no custom size"),
        )
        return caps

    def check(self, request: EditRequest) -> None:
        super().check(request)
        if request.function != "edit":
            return
        if "prompt_extend" in request.options and not isinstance(
            request.options["prompt_extend"], bool
        ):
            raise InvalidParameter(
                "options.prompt_extend must be true or false", parameter="options.prompt_extend"
            )
        if request.size and request.size != "auto":
            w, h = (int(p) for p in request.size.split("x"))
            self._edit_size((w, h), [])

    # ---- submit ---------------------------------------------------------------------------

    async def submit(self, job: Job) -> Finished | Pending:
        if job.function not in self.capabilities:
            raise Unsupported(
                f"vendor {self.name!r} ({self.kind}) cannot run {job.function}",
                vendor=self.name,
                function=job.function,
            )
        if job.function == "edit":
            return await self._submit_edit(job)
        return await self._submit_wanx(job)

    async def _submit_wanx(self, job: Job) -> Pending:
        s = self.settings
        if len(job.images) != 1:
            raise InvalidParameter(
                f"{job.function} at {self.name} takes exactly one image", parameter="images"
            )
        wants_mask = job.function == "description_edit_with_mask"
        if wants_mask and job.mask is None:
            raise InvalidParameter(
                f"{job.function} needs a mask (white = edit, black = keep)", parameter="mask"
            )
        if job.mask is not None and not wants_mask:
            raise Unsupported(
                f"{self.name} takes no mask for {job.function}", vendor=self.name, parameter="mask"
            )
        self._check_n(job, 4)
        parameters: dict[str, Any] = {"n": job.n}
        if job.seed is not None:
            parameters["seed"] = job.seed
        if job.watermark:
            parameters["watermark"] = True
        if job.function == "expand":
            if job.expand is None:
                raise InvalidParameter("expand needs the expand scales", parameter="expand")
            for side in ("top", "bottom", "left", "right"):
                parameters[f"{side}_scale"] = float(getattr(job.expand, side))
        if job.function == "super_resolution" and job.upscale_factor is not None:
            parameters["upscale_factor"] = job.upscale_factor
        prompt = self._prompt(job)

        base, notes = fit(
            job.images[0],
            min_side=s.min_side,
            max_side=s.max_side,
            max_bytes=s.max_bytes,
            formats=tuple(s.formats),
            label="image",
            vendor=self.name,
        )
        job.notes.extend(notes)
        files: list[tuple[str, InputImage]] = [("image", base)]
        if job.mask is not None:
            mask, notes = fit_mask(job.mask, (base.width, base.height))
            job.notes.extend(notes)
            files.append(("mask", mask))
        urls = await self._upload(s.model, files, job)

        inputs = {"function": job.function, "prompt": prompt, "base_image_url": urls[0]}
        if job.mask is not None:
            inputs["mask_image_url"] = urls[1]
        body = {"model": s.model, "input": inputs, "parameters": parameters}
        headers = {"X-DashScope-Async": "enable", **RESOLVE_HEADER}
        response = await self._send("POST", WANX_PATH, json=body, headers=headers, submitting=True)
        data = self._json(response, submitting=True)
        output = data.get("output") if isinstance(data.get("output"), dict) else {}
        task_id = output.get("task_id")
        if not task_id:
            raise VendorFault(
                f"{self.name}: the create answer has no task_id",
                vendor=self.name,
                request_id=data.get("request_id"),
                status=response.status_code,
                maybe_submitted=True,
            )
        return Pending(str(task_id), str(output.get("task_status") or "PENDING"))

    async def _submit_edit(self, job: Job) -> Finished:
        s = self.settings
        plus = plus_series(s.edit_model)
        if not 1 <= len(job.images) <= 3:
            raise InvalidParameter(
                f"edit at {self.name} takes 1 to 3 images; got {len(job.images)}",
                parameter="images",
            )
        if job.mask is not None:
            raise Unsupported(
                f"{self.name} ({s.edit_model}) takes no mask for edit; describe the region "
                "in the prompt",
                vendor=self.name,
                parameter="mask",
            )
        self._check_n(job, 6 if plus else 1)
        prompt = self._prompt(job)
        parameters: dict[str, Any] = {"n": job.n}
        if job.negative_prompt:
            parameters["negative_prompt"] = self._truncate(
                job.negative_prompt, s.max_negative_prompt_chars, "negative_prompt", job
            )
        if job.watermark:
            parameters["watermark"] = True
        if job.seed is not None:
            parameters["seed"] = job.seed
        if job.size is not None:
            if not plus:
                raise Unsupported(
                    f"{s.edit_model} has no custom size (qwen-image-edit-plus and -max have)",
                    vendor=self.name,
                    parameter="size",
                )
            w, h = self._edit_size(job.size, job.notes)
            parameters["size"] = f"{w}*{h}"
        for key, value in job.options.items():
            if key != "prompt_extend" or not plus:
                raise InvalidParameter(
                    f"{self.name} does not take the option {key!r} for edit with {s.edit_model}",
                    parameter=f"options.{key}",
                )
            if not isinstance(value, bool):
                raise InvalidParameter(
                    "options.prompt_extend must be true or false",
                    parameter="options.prompt_extend",
                )
            parameters["prompt_extend"] = value

        fitted: list[tuple[str, InputImage]] = []
        for i, image in enumerate(job.images, 1):
            label = f"image {i}" if len(job.images) > 1 else "image"
            out, notes = fit(
                image,
                min_side=s.edit_min_side,
                max_side=s.edit_max_side,
                max_bytes=s.edit_max_bytes,
                formats=tuple(s.edit_formats),
                label=label,
                vendor=self.name,
            )
            job.notes.extend(notes)
            fitted.append((label, out))
        total = sum(len(image.data) for _, image in fitted)
        upload = s.upload == "always" or (s.upload == "auto" and total > s.inline_max_bytes)
        headers: dict[str, str] = {}
        if upload:
            urls = await self._upload(s.edit_model, fitted, job)
            headers.update(RESOLVE_HEADER)
        else:
            urls = [image.data_uri() for _, image in fitted]
        content: list[dict[str, str]] = [{"image": url} for url in urls]
        content.append({"text": prompt})
        body = {
            "model": s.edit_model,
            "input": {"messages": [{"role": "user", "content": content}]},
            "parameters": parameters,
        }
        response = await self._send("POST", EDIT_PATH, json=body, headers=headers, submitting=True)
        data = self._json(response, submitting=True)
        return self.wire.edit_result(data, response.status_code)

    # ---- poll and cancel ------------------------------------------------------------------

    def price_for(self, function: str) -> tuple[float | None, str | None]:
        if function == "edit":
            return self.settings.edit_price_per_image, self.settings.currency  # type: ignore[attr-defined]
        return super().price_for(function)

    async def poll(self, vendor_task_id: str) -> Finished | Pending:
        response = await self._send("GET", TASKS_PATH + quote(vendor_task_id, safe=""))
        data = self._json(response)
        output = data.get("output")
        if not isinstance(output, dict):
            raise VendorFault(
                f"{self.name}: malformed task answer (no output)",
                vendor=self.name,
                request_id=data.get("request_id"),
                status=response.status_code,
            )
        status = str(output.get("task_status") or "").upper()
        if status in ("PENDING", "RUNNING", "SUSPENDED"):
            return Pending(vendor_task_id, status)
        if status == "SUCCEEDED":
            return self.wire.task_result(output, data)
        if status == "FAILED":
            error = self.wire.classify(None, output.get("code"), output.get("message"), data)
            error.details["task_failed"] = True
            raise error
        kw = {"vendor": self.name, "request_id": data.get("request_id"), "vendor_code": status}
        if status == "CANCELED":
            raise VendorCanceled(f"{self.name}: task canceled at the vendor", **kw)
        if status == "UNKNOWN":
            raise VendorFault(
                f"{self.name}: task expired or unknown at the vendor (tasks are kept 24 h)",
                transient=False,
                **kw,
            )
        raise VendorFault(f"{self.name}: unexpected task_status {status!r}", transient=False, **kw)

    async def cancel(self, vendor_task_id: str) -> bool:
        """True when DashScope accepted; False when the task is past PENDING (or unknown)."""
        path = f"{TASKS_PATH}{quote(vendor_task_id, safe='')}/cancel"
        try:
            response = await self._send("POST", path)
        except VendorRejected:
            return False
        try:
            body = response.json()
        except ValueError:
            return True
        return not (isinstance(body, dict) and body.get("code"))

    # ---- plumbing -------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        return self.settings.base_url + path

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"}

    async def _send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        submitting: bool = False,
        **kw: Any,
    ) -> httpx.Response:
        try:
            response = await self.http.request(
                method,
                self._url(path),
                headers={**self._auth(), **(headers or {})},
                timeout=self.settings.timeout_s,
                **kw,
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name, submitting=submitting) from None
        if response.status_code >= 400:
            raise self.wire.error(response)
        return response

    def _json(self, response: httpx.Response, *, submitting: bool = False) -> dict[str, Any]:
        try:
            data = json_body(response, self.name)
        except VendorFault as exc:
            if submitting:  # the task may exist although its answer was garbled
                exc.details["maybe_submitted"] = True
            raise
        if not isinstance(data, dict):
            raise VendorFault(
                f"{self.name}: malformed answer (HTTP {response.status_code}, not an object)",
                vendor=self.name,
                status=response.status_code,
                maybe_submitted=submitting or None,
            )
        return data

    async def _upload(self, model: str, files: list[tuple[str, InputImage]], job: Job) -> list[str]:
        urls = await self.wire.upload(
            self.http,
            base_url=self.settings.base_url,
            model=model,
            images=files,
            timeout_s=self.settings.timeout_s,
        )
        names = " and ".join(label for label, _ in files)
        job.notes.append(f"{names}: uploaded to {self.name}'s temporary storage (kept 48 h)")
        return urls

    # ---- request shaping ------------------------------------------------------------------

    def _check_n(self, job: Job, max_n: int) -> None:
        if not 1 <= job.n <= max_n:
            raise InvalidParameter(
                f"{self.name} makes 1 to {max_n} image(s) per request for {job.function}; "
                f"asked for n={job.n}",
                parameter="n",
            )

    def _prompt(self, job: Job) -> str:
        prompt = job.prompt.strip()
        if not prompt:
            default = DEFAULT_PROMPTS.get(job.function)
            if default is None:
                raise InvalidParameter(
                    f"{job.function} at {self.name} needs a prompt", parameter="prompt"
                )
            job.notes.append(f'prompt: none given; sent "{default}" ({self.name} needs one)')
            return default
        return self._truncate(prompt, self.settings.max_prompt_chars, "prompt", job)

    def _truncate(self, text: str, limit: int, label: str, job: Job) -> str:
        if len(text) <= limit:
            return text
        job.notes.append(
            f"{label}: {len(text)} characters; sent the first {limit} ({self.name}'s limit, "
            "beyond which it truncates too)"
        )
        return text[:limit]

    def _edit_size(self, size: tuple[int, int], notes: list[str]) -> tuple[int, int]:
        lo, hi = self.settings.edit_size_min, self.settings.edit_size_max
        w, h = size
        if not (lo <= w <= hi and lo <= h <= hi):
            raise InvalidParameter(
                f"size {w}x{h}: {self.name} makes sides of {lo} to {hi} px", parameter="size"
            )
        rw, rh = (min(hi, max(lo, 16 * int(v / 16 + 0.5))) for v in (w, h))
        if (rw, rh) != (w, h):
            notes.append(f"size: {w}x{h} rounded to {rw}x{rh} (multiples of 16)")
        return rw, rh
