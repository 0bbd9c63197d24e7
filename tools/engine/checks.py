"""What every engine operation checks: the size limits, the input image, and the guard that
lets only Retouch errors out."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import numpy as np
from PIL import Image

from tools.errors import EngineError, ImageError, RetouchError

MAX_SIDE = 16384
"""Largest width or height the engine produces."""
MAX_PIXELS = 64 * 1024 * 1024
"""Largest image (input or output) the engine handles, in pixels (64 MP)."""

_NATIVE_MODES = ("L", "LA", "RGB", "RGBA")

P = ParamSpec("P")
R = TypeVar("R")


def engine_op(name: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Let only Retouch errors out of a public operation.

    Bad input is validated up front and reported as ``InvalidParameter``/``ImageError``;
    anything else that escapes (``cv2.error``, ``MemoryError``...) is an internal failure.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except RetouchError:
                raise
            except MemoryError as exc:
                raise EngineError(f"{name}: out of memory") from exc
            except Image.DecompressionBombError as exc:
                raise ImageError(f"{name}: {exc}") from exc
            except Exception as exc:
                raise EngineError(f"{name} failed: {type(exc).__name__}: {exc}") from exc

        return wrapper

    return decorate


def normalize(image: object) -> Image.Image:
    """Check an input image and bring it to one of the modes L, LA, RGB or RGBA."""
    if not isinstance(image, Image.Image):
        raise ImageError(f"expected a PIL image, got {type(image).__name__}")
    w, h = image.size
    if w < 1 or h < 1:
        raise ImageError(f"image is empty ({w}×{h})")
    if w * h > MAX_PIXELS:
        raise ImageError(
            f"image is {w}×{h} ({w * h / 1e6:.0f} MP); the engine handles at most "
            f"{MAX_PIXELS / 1e6:.0f} MP"
        )
    try:
        image.load()
    except Exception as exc:
        raise ImageError(f"image cannot be decoded: {exc}") from exc
    mode = image.mode
    if mode in _NATIVE_MODES:
        return image
    try:
        if mode == "1":
            return image.convert("L")
        if mode == "P":
            return image.convert("RGBA" if "transparency" in image.info else "RGB")
        if mode in ("PA", "RGBa"):
            return image.convert("RGBA")
        if mode == "La":
            return image.convert("LA")
        if mode.startswith("I") or mode == "F":
            return Image.fromarray(_to_uint8(np.asarray(image)))
        return image.convert("RGB")
    except RetouchError:
        raise
    except Exception as exc:
        raise ImageError(f"unsupported image mode {mode}: {exc}") from exc


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale a 16/32-bit integer or float grey image to 8 bits."""
    hi = float(arr.max()) if arr.size else 0.0
    if arr.dtype.kind == "f" and hi <= 1.0:
        scale = 255.0
    elif hi <= 255:
        scale = 1.0
    elif hi <= 65535:
        scale = 255.0 / 65535.0
    else:
        scale = 255.0 / hi
    out = np.clip(arr.astype(np.float32) * scale + 0.5, 0, 255)
    return out.astype(np.uint8)
