"""Fill the white region of a mask from its surroundings (classical inpainting).

``telea`` (Telea's fast marching, cv2.inpaint) and ``ns`` (Navier–Stokes) are quick and
suit thin marks: scratches, captions, small objects. ``fsr``/``fsr_best`` (frequency
selective reconstruction, cv2.xphoto.inpaint) rebuild texture better over larger holes
and are much slower (fsr_best: tens of seconds for a 70 px hole); on large holes they
tend to smear the darker side in. Only the mask's neighbourhood is processed, and only the pixels
under the (dilated) mask are written back: everything else stays byte-identical.
"""

from __future__ import annotations

import time
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from tools.engine.checks import engine_op, normalize
from tools.engine.masks import grow_box, mask_array, mask_bbox
from tools.engine.output import EngineOutput
from tools.engine.pixels import from_array, to_array
from tools.errors import InvalidParameter

Method = Literal["telea", "ns", "fsr", "fsr_best"]
METHODS: dict[str, str] = {
    "telea": "Telea fast marching (OpenCV inpaint)",
    "ns": "Navier–Stokes (OpenCV inpaint)",
    "fsr": "frequency selective reconstruction, fast (OpenCV xphoto FSR_FAST)",
    "fsr_best": "frequency selective reconstruction, best (OpenCV xphoto FSR_BEST)",
}
# FSR_BEST took 18 s for a 66×66 hole on a 2-core machine; refuse holes much larger.
_FSR_BEST_MAX_HOLE = 6000
_RADIUS = 5  # neighbourhood of Telea / Navier–Stokes, px
_MAX_DILATE = 64


def _fill_channels(src: np.ndarray, hole: np.ndarray, method: str) -> np.ndarray:
    """Inpaint a 1- or 3-channel uint8 array where ``hole`` is non-zero."""
    if method in ("telea", "ns"):
        flag = cv2.INPAINT_TELEA if method == "telea" else cv2.INPAINT_NS
        return cv2.inpaint(src, hole, _RADIUS, flag)
    valid = cv2.bitwise_not(hole)  # xphoto wants non-zero = known pixels
    dst = np.empty_like(src)
    kind = cv2.xphoto.INPAINT_FSR_FAST if method == "fsr" else cv2.xphoto.INPAINT_FSR_BEST
    cv2.xphoto.inpaint(src, valid, dst, kind)
    return dst


def _fill(region: np.ndarray, hole: np.ndarray, method: str) -> np.ndarray:
    """Inpaint an L/LA/RGB/RGBA region; alpha is filled separately with Telea."""
    if region.ndim == 2:
        return _fill_channels(region, hole, method)
    channels = region.shape[2]
    if channels in (2, 4):
        colour = np.ascontiguousarray(region[:, :, :-1])
        alpha = _fill_channels(np.ascontiguousarray(region[:, :, -1]), hole, "telea")
    else:
        colour, alpha = region, None
    if colour.shape[2] == 1:
        filled = _fill_channels(colour[:, :, 0], hole, method)
    else:
        bgr = cv2.cvtColor(colour, cv2.COLOR_RGB2BGR)
        filled = cv2.cvtColor(_fill_channels(bgr, hole, method), cv2.COLOR_BGR2RGB)
    if alpha is None:
        return filled
    return np.dstack([filled, alpha])


@engine_op("inpaint")
def inpaint(
    image: Image.Image,
    mask: Image.Image,
    method: Method = "telea",
    dilate: int = 3,
) -> EngineOutput:
    """Fill the white area of ``mask`` (L-mode, white = fill, black = keep).

    The mask is first grown by ``dilate`` px so that anti-aliased edges of the object go
    too. A mask of another size but the same aspect ratio is resized to the image.
    """
    if method not in METHODS:
        raise InvalidParameter(
            f"unknown inpainting method {method!r}; choose one of: "
            + "; ".join(f"{k} ({v})" for k, v in METHODS.items())
        )
    if isinstance(dilate, bool) or not isinstance(dilate, int) or not 0 <= dilate <= _MAX_DILATE:
        raise InvalidParameter(f"dilate must be a whole number of px from 0 to 64, got {dilate!r}")
    img = normalize(image)
    m = mask_array(mask, img.size)
    if mask_bbox(m) is None:
        raise InvalidParameter("mask has no white pixels: white marks the area to fill")
    if dilate:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate + 1, 2 * dilate + 1))
        m = cv2.dilate(m, kernel)
    box = mask_bbox(m)
    assert box is not None
    hole_px = int(np.count_nonzero(m))
    if method == "fsr_best" and hole_px > _FSR_BEST_MAX_HOLE:
        raise InvalidParameter(
            f"fsr_best is too slow for a hole of {hole_px} px (at most {_FSR_BEST_MAX_HOLE}); "
            "use method fsr or telea"
        )
    bw, bh = box[2] - box[0], box[3] - box[1]
    margin = _RADIUS + 2 if method in ("telea", "ns") else max(32, max(bw, bh) // 2)
    left, top, right, bottom = grow_box(box, margin, img.size)
    region = to_array(img.crop((left, top, right, bottom)))
    hole = np.ascontiguousarray(m[top:bottom, left:right])
    started = time.perf_counter()
    filled = _fill(region, hole, method)
    elapsed = time.perf_counter() - started
    result = np.array(region, copy=True)
    inside = hole > 0
    result[inside] = filled[inside]
    out = img.copy()
    out.paste(from_array(result), (left, top))
    share = 100 * hole_px / m.size
    return EngineOutput(
        out,
        [
            f"filled {share:.1f}% of the image (mask grown by {dilate} px) with {METHODS[method]}"
            f" in {elapsed:.2f} s; pixels outside the mask are unchanged",
        ],
    )
