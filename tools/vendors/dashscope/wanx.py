"""wanx2.1-imageedit: ten functions as asynchronous tasks (vendors.md §1–2).

``POST …/image2image/image-synthesis`` with ``X-DashScope-Async: enable`` answers a task id,
polled at ``GET /api/v1/tasks/{id}`` and cancelled at ``POST /api/v1/tasks/{id}/cancel``. The
API takes URLs only, so the images go up through the temporary storage first.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from tools.catalog import MaskRule
from tools.errors import InvalidParameter, Unsupported, VendorCanceled, VendorFault, VendorRejected
from tools.media import InputImage, fit_async, fit_mask_async
from tools.models import ImageFailure
from tools.vendors.base import Capability, Finished, Job, OutputImage, Pending
from tools.vendors.dashscope.client import Client, image_count, output
from tools.vendors.dashscope.upload import RESOLVE_HEADER, upload

PATH = "/api/v1/services/aigc/image2image/image-synthesis"
TASKS_PATH = "/api/v1/tasks/"
MAX_N = 4

#: The wanx functions and what each really does.
FUNCTIONS = {
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

MASKED = "description_edit_with_mask"


class Wanx:
    """The wanx protocol of one DashScope instance."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def capabilities(self) -> dict[str, Capability]:
        model = self.client.settings.model
        caps = {}
        for function, does in FUNCTIONS.items():
            params = {"n", "seed", "watermark"}
            params |= {"expand"} if function == "expand" else set()
            params |= {"upscale_factor"} if function == "super_resolution" else set()
            mask: MaskRule = "required" if function == MASKED else "none"
            caps[function] = Capability(
                params=frozenset(params),
                mask=mask,
                max_images=1,
                max_n=MAX_N,
                note=f"{does} (generative, {model})",
            )
        return caps

    async def submit(self, job: Job) -> Pending:
        c, s = self.client, self.client.settings
        if len(job.images) != 1:
            raise InvalidParameter(
                f"{job.function} at {c.name} takes exactly one image", parameter="images"
            )
        wants_mask = job.function == MASKED
        if wants_mask and job.mask is None:
            raise InvalidParameter(
                f"{job.function} needs a mask (white = edit, black = keep)", parameter="mask"
            )
        if job.mask is not None and not wants_mask:
            raise Unsupported(
                f"{c.name} takes no mask for {job.function}", vendor=c.name, parameter="mask"
            )
        c.check_n(job, MAX_N)
        parameters = self._parameters(job)
        prompt = c.prompt(job, DEFAULT_PROMPTS.get(job.function))

        base, notes = await fit_async(
            job.images[0],
            min_side=s.min_side,
            max_side=s.max_side,
            max_bytes=s.max_bytes,
            formats=tuple(s.formats),
            label="image",
            vendor=c.name,
        )
        job.notes.extend(notes)
        files: list[tuple[str, InputImage]] = [("image", base)]
        if job.mask is not None:
            mask, notes = await fit_mask_async(job.mask, (base.width, base.height))
            job.notes.extend(notes)
            files.append(("mask", mask))
        urls = await upload(c, s.model, files, job)

        inputs = {"function": job.function, "prompt": prompt, "base_image_url": urls[0]}
        if job.mask is not None:
            inputs["mask_image_url"] = urls[1]
        body = {"model": s.model, "input": inputs, "parameters": parameters}
        headers = {"X-DashScope-Async": "enable", **RESOLVE_HEADER}
        response = await c.send("POST", PATH, json=body, headers=headers, submitting=True)
        data = c.json(response, submitting=True)
        out = data.get("output") if isinstance(data.get("output"), dict) else {}
        task_id = out.get("task_id")
        if not task_id:
            raise VendorFault(
                f"{c.name}: the create answer has no task_id",
                vendor=c.name,
                request_id=data.get("request_id"),
                status=response.status_code,
                maybe_submitted=True,
            )
        return Pending(str(task_id), str(out.get("task_status") or "PENDING"))

    def _parameters(self, job: Job) -> dict[str, Any]:
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
        return parameters

    async def poll(self, vendor_task_id: str) -> Finished | Pending:
        c = self.client
        response = await c.send("GET", TASKS_PATH + quote(vendor_task_id, safe=""))
        data = c.json(response)
        out = data.get("output")
        if not isinstance(out, dict):
            raise VendorFault(
                f"{c.name}: malformed task answer (no output)",
                vendor=c.name,
                request_id=data.get("request_id"),
                status=response.status_code,
            )
        status = str(out.get("task_status") or "").upper()
        if status in ("PENDING", "RUNNING", "SUSPENDED"):
            return Pending(vendor_task_id, status)
        if status == "SUCCEEDED":
            return self._result(out, data)
        if status == "FAILED":
            error = c.classify(None, out.get("code"), out.get("message"), data)
            error.details["task_failed"] = True
            raise error
        kw = {"vendor": c.name, "request_id": data.get("request_id"), "vendor_code": status}
        if status == "CANCELED":
            raise VendorCanceled(f"{c.name}: task canceled at the vendor", **kw)
        if status == "UNKNOWN":
            raise VendorFault(
                f"{c.name}: task expired or unknown at the vendor (tasks are kept 24 h)",
                transient=False,
                **kw,
            )
        raise VendorFault(f"{c.name}: unexpected task_status {status!r}", transient=False, **kw)

    def _result(self, out: Mapping[str, Any], data: Mapping[str, Any]) -> Finished:
        """A SUCCEEDED task: ``results[]`` holds ``{url}`` or ``{code, message}`` per image."""
        c = self.client
        now = datetime.now(UTC)
        images: list[OutputImage] = []
        failures: list[ImageFailure] = []
        for index, item in enumerate(out.get("results") or []):
            item = item if isinstance(item, dict) else {}
            if item.get("url"):
                images.append(output(str(item["url"]), now))
            else:
                message = c.scrub(str(item.get("message") or "no image delivered"))
                code = str(item.get("code") or "Unknown")
                failures.append(ImageFailure(index=index, code=code, message=message))
        if not images:
            first = failures[0] if failures else None
            raise VendorFault(
                f"{c.name}: task succeeded but delivered no image"
                + (f" ({first.code}: {first.message})" if first else ""),
                transient=False,
                vendor=c.name,
                vendor_code=first.code if first else None,
                request_id=data.get("request_id"),
            )
        billed = image_count(data, len(images))
        return Finished(images=images, failures=failures, billed_images=billed)

    async def cancel(self, vendor_task_id: str) -> bool:
        """True when DashScope accepted; False when the task is past PENDING (or unknown)."""
        path = f"{TASKS_PATH}{quote(vendor_task_id, safe='')}/cancel"
        try:
            response = await self.client.send("POST", path)
        except VendorRejected:
            return False
        try:
            body = response.json()
        except ValueError:
            return True
        return not (isinstance(body, dict) and body.get("code"))
