"""Line art: black lines on white, from Canny edges or an XDoG (extended difference of Gaussians).

XDoG is computed in 16-bit integers and mapped through a lookup table, so it needs no
float copy of the image (memory stays a few bytes per pixel even at 64 MP).
"""

from __future__ import annotations

import math
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from tools.engine.checks import engine_op, normalize
from tools.engine.output import EngineOutput
from tools.engine.pixels import from_array, split_alpha, to_array
from tools.errors import InvalidParameter

METHODS = {
    "xdog": "extended difference of Gaussians: soft, ink-like strokes",
    "canny": "Canny edges: thin, even one-pixel lines",
}

# XDoG parameters (Winnemöller et al. 2012), for intensities in [0, 1]
_TAU = 0.98
_EPSILON = 0.0
_PHI = 200.0
_SUB = 16  # XDoG works in 1/16 grey levels


def _size_scale(gray: np.ndarray) -> float:
    """1 for a 1-megapixel image, growing with the square root of the pixel count."""
    h, w = gray.shape[:2]
    return max(0.5, math.sqrt(w * h) / 1024)


def _xdog_table() -> np.ndarray:
    d = (np.arange(256) - 128) / _SUB / 255.0
    soft = 1.0 + np.tanh(_PHI * (d - _EPSILON))
    value = np.where(d >= _EPSILON, 1.0, soft)
    return np.clip(value * 255 + 0.5, 0, 255).astype(np.uint8)


def _xdog(gray: np.ndarray) -> np.ndarray:
    sigma = 0.9 * _size_scale(gray)
    fine = gray.astype(np.uint16) << 4  # 1/16 grey levels
    g1 = cv2.GaussianBlur(fine, (0, 0), sigmaX=sigma)
    g2 = cv2.GaussianBlur(fine, (0, 0), sigmaX=sigma * 1.6)
    del fine
    # index = saturate(16·(G1 − τ·G2) + 128): the difference in 1/16 levels, ±8 levels
    index = cv2.addWeighted(g1, 1.0, g2, -_TAU, 128.0, dtype=cv2.CV_8U)
    del g1, g2
    return cv2.LUT(index, _xdog_table())


def _canny(gray: np.ndarray) -> np.ndarray:
    scale = _size_scale(gray)
    smooth = cv2.GaussianBlur(gray, (0, 0), sigmaX=1.2 * scale)
    median = float(np.median(smooth))
    low, high = max(0.0, 0.66 * median), min(255.0, 1.33 * median)
    edges = cv2.Canny(smooth, low, high, L2gradient=True)
    if scale >= 1.5:  # keep lines visible on large images
        width = round(scale)
        edges = cv2.dilate(edges, np.ones((width, width), np.uint8))
    return cv2.bitwise_not(edges)


@engine_op("lineart")
def lineart(image: Image.Image, method: Literal["canny", "xdog"] = "xdog") -> EngineOutput:
    """Black lines on white (an L image of the same size)."""
    if method not in METHODS:
        raise InvalidParameter(
            f"unknown line-art method {method!r}; choose "
            + " or ".join(f"{k} ({v})" for k, v in METHODS.items())
        )
    img = normalize(image)
    base, _ = split_alpha(img)
    gray = to_array(base.convert("L") if base.mode != "L" else base)
    lines = _xdog(gray) if method == "xdog" else _canny(gray)
    ink = 100 * np.count_nonzero(lines < 128) / lines.size
    return EngineOutput(
        from_array(lines),
        [f"line art by {METHODS[method]}; {ink:.1f}% of the pixels are lines"],
    )
