"""PIL images as numpy/OpenCV arrays and back.

Conversions are done once per operation and only on the part of the image that is
actually edited. Arrays made by :func:`to_array` share the bytes of one copy of the
image and are read-only: OpenCV functions that return a new array accept them as input.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from tools.engine.checks import normalize


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
