"""How each adjustment is applied, and :func:`adjust`, which applies a list of them.

The image is kept as a PIL image or as a numpy array, whichever the next operation is
fastest on, and converted only when that changes: flips, quarter turns, crops and tone
curves run on either form; resampling, arbitrary rotation, blur, sharpening and
saturation use OpenCV. Only one whole-size copy of the image is kept alive at a time.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image

from tools.engine.adjust.grammar import Adjustment, bad, fmt, too_large
from tools.engine.adjust.parse import parse_adjustments
from tools.engine.checks import MAX_PIXELS, MAX_SIDE, engine_op, normalize
from tools.engine.output import EngineOutput
from tools.engine.pixels import from_array, to_array
from tools.engine.resample import resize_into
from tools.errors import InvalidParameter

_BAND_PIXELS = 1 << 20


class Canvas:
    """The image being adjusted, held as a PIL image or a numpy array (whichever is current)."""

    def __init__(self, image: Image.Image) -> None:
        self._pil: Image.Image | None = image
        self._arr: np.ndarray | None = None

    @property
    def is_array(self) -> bool:
        return self._arr is not None

    # Converting drops the other form: only one whole-size copy is kept alive.

    @property
    def pil(self) -> Image.Image:
        if self._pil is None:
            assert self._arr is not None
            self._pil, self._arr = from_array(self._arr), None
        return self._pil

    @property
    def arr(self) -> np.ndarray:
        if self._arr is None:
            assert self._pil is not None
            self._arr, self._pil = to_array(self._pil), None
        return self._arr

    @property
    def size(self) -> tuple[int, int]:
        if self._pil is not None:
            return self._pil.size
        assert self._arr is not None
        return self._arr.shape[1], self._arr.shape[0]

    @property
    def mode(self) -> str:
        if self._pil is not None:
            return self._pil.mode
        assert self._arr is not None
        channels = 1 if self._arr.ndim == 2 else self._arr.shape[2]
        return {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[channels]

    def set_pil(self, image: Image.Image) -> None:
        self._pil, self._arr = image, None

    def set_arr(self, arr: np.ndarray) -> None:
        self._pil, self._arr = None, arr


def _split(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Colour channels (contiguous) and alpha (or None) of an L/LA/RGB/RGBA array."""
    if arr.ndim == 3 and arr.shape[2] == 2:
        return np.ascontiguousarray(arr[:, :, 0]), arr[:, :, 1]
    if arr.ndim == 3 and arr.shape[2] == 4:
        return cv2.cvtColor(arr, cv2.COLOR_RGBA2RGB), arr[:, :, 3]
    return arr, None


def _merge(colour: np.ndarray, alpha: np.ndarray | None) -> np.ndarray:
    if alpha is None:
        return colour
    return np.dstack([colour, alpha])


def _check_size(w: int, h: int) -> None:
    if w > MAX_SIDE or h > MAX_SIDE or w * h > MAX_PIXELS:
        raise too_large(w, h)


def _rotate(c: Canvas, degrees: float) -> str:
    angle = degrees % 360
    w, h = c.size
    turn = "clockwise" if degrees >= 0 else "counter-clockwise"
    if math.isclose(angle, 0, abs_tol=1e-9) or math.isclose(angle, 360, abs_tol=1e-9):
        return f"rotation by {fmt(degrees)}° leaves the image as it is"
    for quarter, pil_op, cv_op in (
        (90, Image.Transpose.ROTATE_270, cv2.ROTATE_90_CLOCKWISE),
        (180, Image.Transpose.ROTATE_180, cv2.ROTATE_180),
        (270, Image.Transpose.ROTATE_90, cv2.ROTATE_90_COUNTERCLOCKWISE),
    ):
        if math.isclose(angle, quarter, abs_tol=1e-9):
            if c.is_array:
                c.set_arr(cv2.rotate(c.arr, cv_op))
            else:
                c.set_pil(c.pil.transpose(pil_op))
            return f"rotated {fmt(abs(degrees))}° {turn}"
    rad = math.radians(angle)
    cos, sin = abs(math.cos(rad)), abs(math.sin(rad))
    nw = max(1, math.ceil(w * cos + h * sin - 1e-6))
    nh = max(1, math.ceil(w * sin + h * cos - 1e-6))
    _check_size(nw, nh)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    matrix = cv2.getRotationMatrix2D((cx, cy), -angle, 1.0)  # OpenCV: positive = ccw
    matrix[0, 2] += (nw - 1) / 2 - cx
    matrix[1, 2] += (nh - 1) / 2 - cy
    # Rendered in bands of about a megapixel straight into the result image, so that a
    # whole-size array and its PIL copy never exist at the same time.
    src = c.arr
    out = Image.new(c.mode, (nw, nh))  # black, or transparent with alpha
    band = max(1, _BAND_PIXELS // nw)
    for y0 in range(0, nh, band):
        rows = min(band, nh - y0)
        shifted = matrix.copy()
        shifted[1, 2] -= y0
        part = cv2.warpAffine(
            src,
            shifted,
            (nw, rows),
            flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=(0, 0, 0, 0),
        )
        out.paste(from_array(part), (0, y0))
    c.set_pil(out)
    fill = "transparent" if c.mode in ("RGBA", "LA") else "black"
    return (
        f"rotated {fmt(abs(degrees))}° {turn}; canvas expanded from {w}×{h} to {nw}×{nh} "
        f"with {fill} corners"
    )


def _flip(c: Canvas, direction: str) -> str:
    if c.is_array:
        c.set_arr(cv2.flip(c.arr, 1 if direction == "horizontal" else 0))
    else:
        op = (
            Image.Transpose.FLIP_LEFT_RIGHT
            if direction == "horizontal"
            else Image.Transpose.FLIP_TOP_BOTTOM
        )
        c.set_pil(c.pil.transpose(op))
    return f"flipped {direction}ly"


def _crop_box(c: Canvas, box: tuple[int, int, int, int], asked: str) -> str:
    w, h = c.size
    left, top, right, bottom = box
    if not (0 <= left < right <= w and 0 <= top < bottom <= h):
        raise InvalidParameter(
            f"{asked}: the box (left {left}, top {top}, right {right}, bottom {bottom}) does not "
            f"fit the {w}×{h} image; it needs 0 ≤ left < right ≤ {w} and 0 ≤ top < bottom ≤ {h}"
        )
    if c.is_array:
        c.set_arr(np.ascontiguousarray(c.arr[top:bottom, left:right]))
    else:
        c.set_pil(c.pil.crop(box))
    return f"cropped to {right - left}×{bottom - top} at ({left}, {top})"


def _crop_center(c: Canvas, cw: float, ch: float, unit: str) -> str:
    w, h = c.size
    if unit == "%":
        tw, th = max(1, round(w * cw / 100)), max(1, round(h * ch / 100))
    else:
        tw, th = int(cw), int(ch)
    if tw > w or th > h:
        raise InvalidParameter(f"crop to {tw}×{th} is larger than the {w}×{h} image")
    left, top = (w - tw) // 2, (h - th) // 2
    note = _crop_box(c, (left, top, left + tw, top + th), f"crop {tw}×{th}")
    return note.replace("cropped", "cropped the centre", 1)


def _resize_to(c: Canvas, nw: int, nh: int) -> str:
    w, h = c.size
    _check_size(nw, nh)
    if (nw, nh) == (w, h):
        return f"image is already {w}×{h}"
    shrink = nw * nh < w * h
    if shrink:
        c.set_arr(cv2.resize(c.arr, (nw, nh), interpolation=cv2.INTER_AREA))
    else:  # in bands, straight into the result: no whole-size array next to it
        c.set_pil(resize_into(c.arr if c.is_array else c.pil, (nw, nh), "cubic"))
    how = "area averaging" if shrink else "bicubic"
    return f"resized {w}×{h} → {nw}×{nh} ({how})"


def _resize(c: Canvas, tw: float, th: float) -> str:
    w, h = c.size
    tw, th = int(tw), int(th)
    if tw == 0:
        tw = max(1, round(w * th / h))
    elif th == 0:
        th = max(1, round(h * tw / w))
    return _resize_to(c, tw, th)


def _scale(c: Canvas, factor: float) -> str:
    w, h = c.size
    return _resize_to(c, max(1, round(w * factor)), max(1, round(h * factor)))


def _fit(c: Canvas, longest: float) -> str:
    w, h = c.size
    factor = longest / max(w, h)
    return _resize_to(c, max(1, round(w * factor)), max(1, round(h * factor)))


def _apply_lut(c: Canvas, lut: np.ndarray) -> None:
    """Map the colour channels through a 256-entry table; alpha is kept."""
    mode = c.mode
    colour_bands = 1 if mode in ("L", "LA") else 3
    has_alpha = mode in ("LA", "RGBA")
    identity = np.arange(256, dtype=np.uint8)
    tables = [lut] * colour_bands + ([identity] if has_alpha else [])
    if c.is_array:
        table = lut if len(tables) == 1 else np.dstack([t[None, :] for t in tables])
        c.set_arr(cv2.LUT(c.arr, table))
    else:
        c.set_pil(c.pil.point(np.concatenate(tables).tolist()))


def _brightness(c: Canvas, factor: float) -> str:
    lut = np.clip(np.arange(256) * factor + 0.5, 0, 255).astype(np.uint8)
    _apply_lut(c, lut)
    return f"brightness ×{fmt(factor)}"


def _mean_luma(c: Canvas) -> float:
    if c.is_array:
        means = cv2.mean(c.arr)
    else:
        image = c.pil
        return cv2.mean(np.asarray(image if image.mode == "L" else image.convert("L")))[0]
    if c.mode in ("L", "LA"):
        return means[0]
    return 0.299 * means[0] + 0.587 * means[1] + 0.114 * means[2]


def _contrast(c: Canvas, factor: float) -> str:
    mean = int(_mean_luma(c) + 0.5)
    lut = np.clip(mean + (np.arange(256) - mean) * factor + 0.5, 0, 255).astype(np.uint8)
    _apply_lut(c, lut)
    return f"contrast ×{fmt(factor)} around the mean level {mean}"


def _saturation(c: Canvas, factor: float) -> str:
    if c.mode in ("L", "LA"):
        return "saturation left as it is: the image is grayscale"
    colour, alpha = _split(c.arr)
    # one pass: each channel moves away from (or towards) the pixel's luma, as PIL's Color
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    matrix = factor * np.eye(3, dtype=np.float32) + (1.0 - factor) * np.outer(np.ones(3), luma)
    c.set_arr(_merge(cv2.transform(colour, matrix.astype(np.float32)), alpha))
    return f"saturation ×{fmt(factor)}"


def _grayscale(c: Canvas) -> str:
    mode = c.mode
    if mode in ("L", "LA"):
        return "image is already grayscale"
    if c.is_array:
        colour, alpha = _split(c.arr)
        c.set_arr(_merge(cv2.cvtColor(colour, cv2.COLOR_RGB2GRAY), alpha))
    else:
        c.set_pil(c.pil.convert("LA" if mode == "RGBA" else "L"))
    return "converted to grayscale"


def _invert(c: Canvas) -> str:
    _apply_lut(c, np.arange(255, -1, -1, dtype=np.uint8))
    return "inverted the colours"


def _gaussian(arr: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur; a stack blur of the same spread for large radii (constant time)."""
    if sigma <= 4:
        return cv2.GaussianBlur(arr, (0, 0), sigmaX=sigma)
    k = 2 * round(sigma * math.sqrt(6)) - 1
    return cv2.stackBlur(arr, (k, k))


def _blur(c: Canvas, radius: float) -> str:
    if radius == 0:
        return "blur radius 0 leaves the image as it is"
    c.set_arr(_gaussian(c.arr, radius))
    return f"Gaussian blur, radius {fmt(radius)} px"


def _sharpen(c: Canvas, amount: float) -> str:
    if amount == 0:
        return "sharpen amount 0 leaves the image as it is"
    colour, alpha = _split(c.arr)
    soft = cv2.GaussianBlur(colour, (0, 0), sigmaX=1.0)
    cv2.addWeighted(colour, 1.0 + amount, soft, -amount, 0, dst=soft)  # in place
    c.set_arr(_merge(soft, alpha))
    return f"sharpened (unsharp mask, amount {fmt(amount)}, radius 1 px)"


APPLY = {
    "rotate": _rotate,
    "flip": _flip,
    "crop": lambda c, *box: _crop_box(c, box, "crop"),
    "crop_center": _crop_center,
    "resize": _resize,
    "scale": _scale,
    "fit": _fit,
    "brightness": _brightness,
    "contrast": _contrast,
    "saturation": _saturation,
    "grayscale": _grayscale,
    "invert": _invert,
    "blur": _blur,
    "sharpen": _sharpen,
}


@engine_op("adjust")
def adjust(image: Image.Image, adjustments: list[Adjustment] | str) -> EngineOutput:
    """Apply adjustments in order (a string is parsed with :func:`parse_adjustments`)."""
    if isinstance(adjustments, str):
        adjustments = parse_adjustments(adjustments)
    if not adjustments:
        raise bad("no adjustments given")
    for adjustment in adjustments:
        if not isinstance(adjustment, Adjustment):
            raise bad(f"expected Adjustment values, got {type(adjustment).__name__}")
    canvas = Canvas(normalize(image))
    notes = [APPLY[a.op](canvas, *a.args) for a in adjustments]
    out = canvas.pil
    if out is image:
        out = image.copy()
    return EngineOutput(out, notes)
