"""Masks: fitting one to an image, its bounding box, soft edges, and blending through it."""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from tools.engine.checks import normalize
from tools.errors import ImageError, InvalidParameter


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
