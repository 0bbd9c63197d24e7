"""Helpers shared by the engine: image checks, PIL <-> numpy/OpenCV conversion, masks.

Conversions are done once per operation and only on the part of the image that is
actually edited. Arrays made by :func:`to_array` share the bytes of one copy of the
image and are read-only: OpenCV functions that return a new array accept them as input.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import cv2
import numpy as np
from PIL import Image

from tools.errors import EngineError, ImageError, InvalidParameter, RetouchError

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


def to_array(image: Image.Image) -> np.ndarray:
    """The pixels of an L/LA/RGB/RGBA image as a read-only uint8 array (one copy)."""
    if image.mode == "L":
        return np.asarray(image)
    bands = len(image.getbands())
    w, h = image.size
    return np.frombuffer(image.tobytes(), np.uint8).reshape(h, w, bands)


def from_array(arr: np.ndarray) -> Image.Image:
    """An image from a uint8 array: 2-D -> L, 2/3/4 channels -> LA/RGB/RGBA."""
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(arr))


def split_alpha(image: Image.Image) -> tuple[Image.Image, Image.Image | None]:
    """Separate an LA/RGBA image into its L/RGB part and its alpha channel."""
    if image.mode in ("RGBA", "LA"):
        return image.convert(image.mode[:-1]), image.getchannel("A")
    return image, None


def to_bgr(image: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    """An image as an OpenCV BGR uint8 array, plus its alpha channel (or None)."""
    image = normalize(image)
    arr = to_array(image)
    alpha = None
    if image.mode in ("LA", "RGBA"):
        alpha = np.ascontiguousarray(arr[:, :, -1])
        arr = arr[:, :, :-1]
    if image.mode in ("L", "LA"):
        return cv2.cvtColor(np.ascontiguousarray(arr), cv2.COLOR_GRAY2BGR), alpha
    return cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), alpha


def from_bgr(bgr: np.ndarray, alpha: np.ndarray | None = None, gray: bool = False) -> Image.Image:
    """An image from a BGR (or single-channel) array; ``gray`` gives L/LA instead of RGB/RGBA."""
    if bgr.ndim == 3 and bgr.shape[2] == 1:
        bgr = bgr[:, :, 0]
    if bgr.ndim == 2:
        base = bgr if gray else cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
    else:
        base = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY if gray else cv2.COLOR_BGR2RGB)
    if alpha is not None:
        base = np.dstack([base, alpha])
    return Image.fromarray(base)


def fit_mask(mask: object, size: tuple[int, int]) -> Image.Image:
    """A binary L mask (255 = edit, 0 = keep) of exactly ``size``.

    White means edit, black means keep (as DashScope). A mask with transparency counts its
    transparent parts as black. A mask of another size is resized when its aspect ratio
    matches the image's; otherwise it is refused.
    """
    if not isinstance(mask, Image.Image):
        raise InvalidParameter(f"mask must be an image, got {type(mask).__name__}")
    try:
        mask.load()
    except Exception as exc:
        raise ImageError(f"mask cannot be decoded: {exc}") from exc
    mw, mh = mask.size
    w, h = size
    if mw < 1 or mh < 1:
        raise ImageError(f"mask is empty ({mw}×{mh})")
    if mask.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        mask.mode == "P" and "transparency" in mask.info
    ):
        rgba = mask.convert("RGBA")
        gray = rgba.convert("L")
        alpha = rgba.getchannel("A")
        if alpha.getextrema() != (255, 255):
            black = Image.new("L", gray.size, 0)
            gray = Image.composite(gray, black, alpha)
    elif mask.mode == "L":
        gray = mask
    else:
        gray = normalize(mask).convert("L")
    if (mw, mh) != (w, h):
        ratio_mask, ratio_image = mw / mh, w / h
        tolerance = max(0.01 * ratio_image, 1.5 / min(mh, h))
        if abs(ratio_mask - ratio_image) > tolerance:
            raise InvalidParameter(
                f"mask is {mw}×{mh} but the image is {w}×{h}: the aspect ratios differ; "
                "pass a mask of the image's size (white = edit, black = keep)"
            )
        gray = gray.resize((w, h), Image.Resampling.BILINEAR)
    lut = [0] * 128 + [255] * 128
    return gray.point(lut)


def mask_array(mask: object, size: tuple[int, int]) -> np.ndarray:
    """``fit_mask`` as a uint8 array of 0/255."""
    return np.asarray(fit_mask(mask, size))


def mask_bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """The bounding box (left, top, right, bottom) of the non-zero pixels, or None."""
    x, y, bw, bh = cv2.boundingRect(mask)
    if bw == 0 or bh == 0:
        return None
    return x, y, x + bw, y + bh


def grow_box(
    box: tuple[int, int, int, int], margin: int, size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A box grown by ``margin`` on every side, clipped to an image of ``size``."""
    left, top, right, bottom = box
    w, h = size
    left, top = max(0, left - margin), max(0, top - margin)
    return left, top, min(w, right + margin), min(h, bottom + margin)


def feather(mask: np.ndarray, radius: float) -> np.ndarray:
    """A soft uint8 alpha from a binary mask, ramping up over about ``radius`` px inside it.

    The alpha is zero wherever the mask is zero, so pixels outside the mask stay exactly
    as they were when blended with :func:`blend`.
    """
    if radius <= 0:
        return mask
    soft = cv2.GaussianBlur(mask, (0, 0), sigmaX=radius / 2)
    return cv2.min(soft, mask)


def blend(original: np.ndarray, edited: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``edited`` over ``original`` by a uint8 ``alpha``; exact where alpha is 0 or 255.

    Only the pixels with a partial alpha are blended (in integers), so memory stays at
    one extra copy of ``original`` however large the image.
    """
    out = np.array(original, copy=True)
    full = alpha == 255
    out[full] = edited[full]
    partial = np.nonzero((alpha > 0) & ~full)
    if partial[0].size:
        a = alpha[partial].astype(np.uint16)
        if original.ndim == 3:
            a = a[:, None]
        mixed = edited[partial].astype(np.uint16) * a + original[partial].astype(np.uint16) * (
            255 - a
        )
        out[partial] = ((mixed + 127) // 255).astype(np.uint8)
    return out
