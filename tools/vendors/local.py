"""The embedded default: real edits on this machine's CPU, honestly labelled.

Filters, not a generative model: what needs one (colorization, outpainting, prompt-driven
repainting, doodle rendering, cartoon reference) is refused with the vendor kinds that can.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import os
import pickle
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from PIL import Image
from pydantic import Field

from tools import engine, media, pixel_budget
from tools.config import VendorSettings
from tools.errors import EngineError, InvalidParameter, RetouchError, error_from_dict
from tools.vendors.base import KEEP_DECODED_PX, Capability, Finished, Job, OutputImage, Vendor

_ROOT = Path(__file__).resolve().parents[2]  # holds the ``tools`` package


class LocalSettings(VendorSettings):
    max_concurrent: int | None = Field(2, ge=1)  # the CPU's cores, not a vendor's rule
    esrgan: Literal["auto", "off"] = "auto"
    esrgan_model: Literal["x4plus", "animevideov3"] = "x4plus"
    esrgan_max_input_pixels: int = Field(1_048_576, ge=1024)
    esrgan_timeout_s: float = Field(300, gt=0)
    esrgan_tile: int = Field(0, ge=0)
    gpu: str = "off"
    inpaint_method: Literal["telea", "fsr"] = "telea"
    #: Unset: operations run in a thread of this process, as long as they take. Set: each
    #: runs in a child process that is killed past this many seconds (start-up included,
    #: about 1 s), so no operation can hold a worker slot forever.
    timeout_s: float | None = Field(None, gt=0)


F = frozenset
METHOD = F({"method"})


class LocalVendor(Vendor):
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
                "Lanczos otherwise; default factor 2",
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
        # Everything that touches pixels, or imports the engine module the operation needs
        # (OpenCV and numpy: ~0.3 s and ~35 MB, paid by the first local edit only), runs in
        # a thread: on the event loop it held up every other request (the bot's
        # acknowledgements: p95 0.6 → 1.0 s). The work holds its share of the pixel budget
        # (decoding, the operation's working copies, encoding); a bad request is refused
        # before it waits for that, and without starting a child process.
        if _engine_loaded(job):  # a few µs: not worth a trip to a thread and back
            cost = engine_cost(job)
        else:
            cost = await asyncio.to_thread(engine_cost, job)
        if self.settings.timeout_s is not None:
            await asyncio.to_thread(self._operation, job)
            async with pixel_budget.PIXELS.hold(cost, bounded=False, label="the local edit"):
                output = await self._run_in_child(job, self.settings.timeout_s)
                encoded = await asyncio.to_thread(_encoded, job, output)
                result, notes = _handed_over(encoded, output), output.notes
                del output  # its image goes before the budget is handed back (unless kept)
        else:

            def work() -> tuple[OutputImage, list[str]]:
                run = self._operation(job)
                image = job.images[0].to_pil()
                mask = job.mask.to_pil().convert("L") if job.mask else None
                output = run(image, mask)
                return _handed_over(_encoded(job, output), output), output.notes

            async with pixel_budget.PIXELS.hold(cost, bounded=False, label="the local edit"):
                result, notes = await asyncio.to_thread(work)
        return Finished(images=[result], notes=notes)

    async def _run_in_child(self, job: Job, limit: float) -> engine.EngineOutput:
        """The operation in ``python -m tools.vendors.local``, killed past ``limit`` seconds
        (with its process group: Real-ESRGAN's own worker included)."""
        settings = self.settings.model_dump(mode="json")
        settings.update(timeout_s=None, esrgan_timeout_s=min(self.settings.esrgan_timeout_s, limit))
        payload = pickle.dumps(
            {
                "settings": settings,
                "limit": limit,
                "function": job.function,
                "prompt": job.prompt,
                "options": job.options,
                "upscale_factor": job.upscale_factor,
                "image": job.images[0],
                "mask": job.mask,
            }
        )
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": str(_ROOT) + (os.pathsep + path if path else "")}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tools.vendors.local",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(limit):
                out, err = await proc.communicate(payload)
        except TimeoutError:
            raise EngineError(
                f"the local engine ran past its {limit:g} s limit ({self.name}.timeout_s) "
                "and was stopped"
            ) from None
        finally:
            if proc.returncode is None:  # timed out, or the task was canceled
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        try:
            answer = pickle.loads(out)
        except Exception:
            reason = err.decode("utf-8", "replace").strip().splitlines()
            detail = f": {reason[-1][:300]}" if reason else ""
            raise EngineError(
                f"the local engine's process ended (code {proc.returncode}) without a "
                f"result{detail}"
            ) from None
        if "error" in answer:
            raise error_from_dict(answer["error"])
        with Image.open(io.BytesIO(answer["png"])) as image:
            image.load()
            return engine.EngineOutput(image.copy(), answer["notes"])

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


#: Peak memory of an engine operation, in 4-byte pixels per pixel of its input plus its
#: output, decoding and encoding included. Measured on 16 MP photos: 1.2 (upscale) to 2.5
#: (text removal); 3 leaves a margin.
ENGINE_COPIES = 3


def engine_cost(job: Job) -> int:
    """The bytes of the pixel budget a local operation holds while it runs."""
    image = job.images[0]
    pixels = image.width * image.height
    out = _output_pixels(job, image.width, image.height)
    mask = 2 * pixel_budget.decoded_bytes(job.mask.width, job.mask.height) if job.mask else 0
    return ENGINE_COPIES * pixel_budget.decoded_bytes(pixels + out, 1) + mask


def _engine_loaded(job: Job) -> bool:
    """Whether the engine modules ``engine_cost`` imports for ``job`` are loaded already
    (by an earlier local edit), so that it runs without importing numpy."""
    loaded = sys.modules
    return "tools.engine.checks" in loaded and (
        job.function != "adjust" or "tools.engine.adjust" in loaded
    )


def _output_pixels(job: Job, w: int, h: int) -> int:
    """How large the result can be, in pixels: only upscaling and resizing grow an image,
    and the engine makes nothing over its own limit."""
    from tools.engine.checks import MAX_PIXELS

    if job.function == "super_resolution":
        factor = job.upscale_factor or 2
        return min(w * h * factor * factor, MAX_PIXELS)
    if job.function != "adjust":
        return w * h
    width, height, peak = float(w), float(h), float(w * h)
    for step in engine.parse_adjustments(job.prompt):
        args = step.args
        if step.op == "rotate" and float(args[0]) % 90:
            rad = math.radians(float(args[0]))
            cos, sin = abs(math.cos(rad)), abs(math.sin(rad))
            width, height = width * cos + height * sin, width * sin + height * cos
        elif step.op == "rotate" and float(args[0]) % 180:
            width, height = height, width
        elif step.op == "resize":
            tw, th = float(args[0]), float(args[1])
            width, height = (tw or width * th / height), (th or height * tw / width)
        elif step.op == "scale":
            width, height = width * float(args[0]), height * float(args[0])
        elif step.op == "fit":
            factor = float(args[0]) / max(width, height)
            width, height = width * factor, height * factor
        peak = max(peak, width * height)  # crops only shrink: left out, to err large
    return int(min(peak, MAX_PIXELS))


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


def _handed_over(encoded: media.InputImage, output: engine.EngineOutput) -> OutputImage:
    """The result's bytes, with the image they show when it can go along: encoded without
    loss (PNG) and small enough to keep, so the intake need not decode it again (a 512²
    result: 6 ms)."""
    image = output.image
    keep = (
        encoded.mime_type == "image/png"
        and image.mode in ("RGB", "RGBA", "L")  # as the check would keep it, not converted
        and image.width * image.height <= KEEP_DECODED_PX
    )
    return OutputImage(
        data=encoded.data,
        mime_type=encoded.mime_type,
        pixels=image if keep else None,
    )


def _encoded(job: Job, output: engine.EngineOutput) -> media.InputImage:
    """The engine's output encoded as its input was: JPEG stays JPEG, else PNG."""
    jpeg = job.images[0].format == "jpeg" and output.image.mode in ("RGB", "L")
    return media.encode(output.image, "JPEG" if jpeg else "PNG", 95)


def _child_main() -> None:
    """One operation for ``LocalVendor._run_in_child``: a pickle in on stdin, one out on
    stdout ({"png", "notes"} or {"error"}). Stray prints go to stderr."""
    answer_fd = os.dup(1)
    os.dup2(2, 1)
    answer: dict[str, Any]
    try:
        request = pickle.loads(sys.stdin.buffer.read())
        # Ends itself soon after the limit, should the parent have died without killing it.
        signal.alarm(int(request["limit"]) + 5)
        vendor = LocalVendor("local", LocalSettings(**request["settings"]), None)  # type: ignore[arg-type]
        image, mask = request["image"], request["mask"]
        job = Job(
            task_id="child",
            function=request["function"],
            prompt=request["prompt"],
            images=[image],
            mask=mask,
            options=request["options"],
            upscale_factor=request["upscale_factor"],
        )
        run = vendor._operation(job)
        output = run(image.to_pil(), mask.to_pil().convert("L") if mask else None)
        buf = io.BytesIO()
        output.image.save(buf, "PNG", compress_level=1)
        answer = {"png": buf.getvalue(), "notes": output.notes}
    except RetouchError as exc:
        answer = {"error": exc.to_dict()}
    except BaseException as exc:  # MemoryError, a bug: still one clear answer
        answer = {"error": EngineError(f"local engine failed ({type(exc).__name__})").to_dict()}
    with os.fdopen(answer_fd, "wb") as out:
        out.write(pickle.dumps(answer))


if __name__ == "__main__":
    _child_main()
