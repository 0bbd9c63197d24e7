"""qwen-image-edit(-plus/-max): ``edit``, synchronous (vendors.md §3).

``POST …/multimodal-generation/generation`` with 1–3 images and the instruction in one user
message; the images travel inline as data URIs, or through the temporary storage when they
are large. The answer holds the result URLs at ``output.choices[].message.content[].image``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tools.errors import InvalidParameter, Unsupported, VendorFault
from tools.media import InputImage, fit_async
from tools.models import EditRequest
from tools.vendors.base import Capability, Finished, Job, OutputImage
from tools.vendors.dashscope.client import Client, image_count, output
from tools.vendors.dashscope.upload import RESOLVE_HEADER, upload

PATH = "/api/v1/services/aigc/multimodal-generation/generation"
MAX_IMAGES = 3


def plus_series(model: str) -> bool:
    """qwen-image-edit-plus / -max (n 1–6, custom size, prompt_extend) vs plain (1 image)."""
    lowered = model.lower()
    return "plus" in lowered or "max" in lowered


class QwenEdit:
    """The qwen edit protocol of one DashScope instance."""

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def plus(self) -> bool:
        return plus_series(self.client.settings.edit_model)

    def capability(self) -> Capability:
        model, plus = self.client.settings.edit_model, self.plus
        return Capability(
            params=frozenset(
                {"n", "seed", "negative_prompt", "watermark"} | ({"size"} if plus else set())
            ),
            options=frozenset({"prompt_extend"}) if plus else frozenset(),
            mask="none",
            max_images=MAX_IMAGES,
            max_n=6 if plus else 1,
            note=f"instruction edit of 1–3 images, no mask (generative, {model})"
            + ("" if plus else "; one image per request, no custom size"),
        )

    def check(self, request: EditRequest) -> None:
        """What the shared capability check cannot see: option types and the size range."""
        if "prompt_extend" in request.options and not isinstance(
            request.options["prompt_extend"], bool
        ):
            raise InvalidParameter(
                "options.prompt_extend must be true or false", parameter="options.prompt_extend"
            )
        if request.size and request.size != "auto":
            w, h = (int(p) for p in request.size.split("x"))
            self._size((w, h), [])

    async def submit(self, job: Job) -> Finished:
        c, s = self.client, self.client.settings
        if not 1 <= len(job.images) <= MAX_IMAGES:
            raise InvalidParameter(
                f"edit at {c.name} takes 1 to 3 images; got {len(job.images)}",
                parameter="images",
            )
        if job.mask is not None:
            raise Unsupported(
                f"{c.name} ({s.edit_model}) takes no mask for edit; describe the region "
                "in the prompt",
                vendor=c.name,
                parameter="mask",
            )
        c.check_n(job, 6 if self.plus else 1)
        prompt = c.prompt(job)
        parameters = self._parameters(job)

        fitted: list[tuple[str, InputImage]] = []
        for i, image in enumerate(job.images, 1):
            label = f"image {i}" if len(job.images) > 1 else "image"
            out, notes = await fit_async(
                image,
                min_side=s.edit_min_side,
                max_side=s.edit_max_side,
                max_bytes=s.edit_max_bytes,
                formats=tuple(s.edit_formats),
                label=label,
                vendor=c.name,
            )
            job.notes.extend(notes)
            fitted.append((label, out))
        total = sum(len(image.data) for _, image in fitted)
        uploading = s.upload == "always" or (s.upload == "auto" and total > s.inline_max_bytes)
        headers: dict[str, str] = {}
        if uploading:
            urls = await upload(c, s.edit_model, fitted, job)
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
        response = await c.send("POST", PATH, json=body, headers=headers, submitting=True)
        return self._result(c.json(response, submitting=True), response.status_code)

    def _parameters(self, job: Job) -> dict[str, Any]:
        c, s = self.client, self.client.settings
        parameters: dict[str, Any] = {"n": job.n}
        if job.negative_prompt:
            parameters["negative_prompt"] = c.truncate(
                job.negative_prompt, s.max_negative_prompt_chars, "negative_prompt", job
            )
        if job.watermark:
            parameters["watermark"] = True
        if job.seed is not None:
            parameters["seed"] = job.seed
        if job.size is not None:
            if not self.plus:
                raise Unsupported(
                    f"{s.edit_model} has no custom size (qwen-image-edit-plus and -max have)",
                    vendor=c.name,
                    parameter="size",
                )
            w, h = self._size(job.size, job.notes)
            parameters["size"] = f"{w}*{h}"
        for key, value in job.options.items():
            if key != "prompt_extend" or not self.plus:
                raise InvalidParameter(
                    f"{c.name} does not take the option {key!r} for edit with {s.edit_model}",
                    parameter=f"options.{key}",
                )
            if not isinstance(value, bool):
                raise InvalidParameter(
                    "options.prompt_extend must be true or false",
                    parameter="options.prompt_extend",
                )
            parameters["prompt_extend"] = value
        return parameters

    def _size(self, size: tuple[int, int], notes: list[str]) -> tuple[int, int]:
        s = self.client.settings
        lo, hi = s.edit_size_min, s.edit_size_max
        w, h = size
        if not (lo <= w <= hi and lo <= h <= hi):
            raise InvalidParameter(
                f"size {w}x{h}: {self.client.name} makes sides of {lo} to {hi} px",
                parameter="size",
            )
        rw, rh = (min(hi, max(lo, 16 * int(v / 16 + 0.5))) for v in (w, h))
        if (rw, rh) != (w, h):
            notes.append(f"size: {w}x{h} rounded to {rw}x{rh} (multiples of 16)")
        return rw, rh

    def _result(self, data: Mapping[str, Any], status: int) -> Finished:
        """``output.choices[].message.content[].image``; an error may come as HTTP 200."""
        c = self.client
        if data.get("code") and not data.get("output"):
            raise c.classify(status, data.get("code"), data.get("message"), data)
        out = data.get("output") if isinstance(data.get("output"), dict) else {}
        now = datetime.now(UTC)
        images: list[OutputImage] = []
        for choice in out.get("choices") or []:
            message = choice.get("message") if isinstance(choice, dict) else None
            for part in (message or {}).get("content") or []:
                if isinstance(part, dict) and part.get("image"):
                    images.append(output(str(part["image"]), now))
        if not images:
            raise VendorFault(
                f"{c.name}: the edit answer holds no image",
                transient=False,
                vendor=c.name,
                request_id=data.get("request_id"),
                status=status,
            )
        return Finished(images=images, billed_images=image_count(data, len(images)))
