"""The embedded default: real edits on this machine's CPU, honestly labelled.

Filters, not a generative model: what needs one (colorization, outpainting, prompt-driven
repainting, doodle rendering, cartoon reference) is refused with the vendor kinds that can.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Literal

from PIL import Image
from pydantic import Field

from tools import engine, media
from tools.config import VendorSettings
from tools.errors import InvalidParameter
from tools.vendors.base import Capability, Finished, Job, OutputImage, Vendor


class LocalSettings(VendorSettings):
    kind: str = "local"
    max_concurrent: int = Field(2, ge=1)
    submit_rps: float = Field(1000, gt=0)
    esrgan: Literal["auto", "off"] = "auto"
    esrgan_model: Literal["x4plus", "animevideov3"] = "x4plus"
    esrgan_max_input_pixels: int = Field(1_048_576, ge=1024)
    esrgan_timeout_s: float = Field(300, gt=0)
    esrgan_tile: int = Field(0, ge=0)
    gpu: str = "off"
    inpaint_method: Literal["telea", "fsr"] = "telea"


F = frozenset
METHOD = F({"method"})


class LocalVendor(Vendor):
    kind = "local"
    Settings = LocalSettings
    completion = "sync"
    idempotent_submit = True  # nothing is billed; a rerun after a crash is harmless

    @property
    def capabilities(self) -> Mapping[str, Capability]:
        return {
            "adjust": Capability(note="exact Pillow operations listed in the prompt"),
            "stylization_all": Capability(
                options=F({"style"}),
                note="OpenCV filter chosen from the prompt: "
                + ", ".join(engine.STYLES)
                + " (a filter, not a generative model)",
            ),
            "stylization_local": Capability(
                mask="required",
                options=F({"style"}),
                note="the same filters, applied only inside the white mask region",
            ),
            "super_resolution": Capability(
                params=F({"upscale_factor"}),
                options=METHOD,
                note="Real-ESRGAN on the CPU for small images (slow: tens of seconds), "
                "OpenCV Lanczos otherwise; default factor 2",
            ),
            "remove_watermark": Capability(
                options=METHOD,
                note="inpaints the white mask region, or text found by tesseract-ocr; good "
                "for opaque captions, not large translucent overlays",
            ),
            "description_edit_with_mask": Capability(
                options=METHOD,
                note="fills the masked region from its surroundings (inpainting); the prompt "
                "is not used — generative repainting needs a cloud vendor",
            ),
            "lineart": Capability(options=METHOD, note="XDoG (default) or Canny edges"),
        }

    async def submit(self, job: Job) -> Finished:
        run = self._operation(job)
        image = job.images[0].to_pil()
        mask = job.mask.to_pil().convert("L") if job.mask else None
        output = await asyncio.to_thread(run, image, mask)
        fmt = (
            "JPEG"
            if job.images[0].format == "jpeg" and output.image.mode in ("RGB", "L")
            else "PNG"
        )
        encoded = await asyncio.to_thread(media.encode, output.image, fmt, 95)
        return Finished(images=[OutputImage(data=encoded.data)], notes=output.notes)

    def _operation(
        self, job: Job
    ) -> Callable[[Image.Image, Image.Image | None], engine.EngineOutput]:
        opts = job.options
        s: LocalSettings = self.settings  # type: ignore[assignment]
        method = opts.get("method")

        def style() -> str:
            chosen = opts.get("style") or job.prompt
            return engine.style_from_prompt(str(chosen))

        match job.function:
            case "adjust":
                steps = engine.parse_adjustments(job.prompt)
                return lambda img, _: engine.adjust(img, steps)
            case "stylization_all":
                name = style()
                return lambda img, _: engine.stylize(img, name)
            case "stylization_local":
                name = style()
                return lambda img, mask: engine.stylize_masked(img, _need(mask), name)
            case "super_resolution":
                factor = job.upscale_factor or 2
                how = method or ("lanczos" if s.esrgan == "off" else "auto")
                _check(how, ("auto", "esrgan", "lanczos", "cubic"))
                return lambda img, _: engine.upscale(
                    img,
                    factor,
                    method=how,
                    model=s.esrgan_model,
                    max_input_pixels=s.esrgan_max_input_pixels,
                    timeout_s=s.esrgan_timeout_s,
                    tile=s.esrgan_tile,
                    gpu=s.gpu,
                )
            case "remove_watermark" | "description_edit_with_mask":
                how = method or s.inpaint_method
                _check(how, ("telea", "fsr"))
                if job.mask is None:
                    return lambda img, _: engine.remove_text(img, method=how)
                return lambda img, mask: engine.inpaint(img, _need(mask), method=how)
            case "lineart":
                how = method or "xdog"
                _check(how, ("xdog", "canny"))
                return lambda img, _: engine.lineart(img, method=how)
        raise InvalidParameter(f"the local engine cannot run {job.function}")


def _need(mask: Image.Image | None) -> Image.Image:
    if mask is None:
        raise InvalidParameter("this function needs a mask", parameter="mask")
    return mask


def _check(value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidParameter(
            f"option method={value!r} is not one of {', '.join(allowed)}",
            parameter="options.method",
        )
