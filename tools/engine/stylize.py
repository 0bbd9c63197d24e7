"""Artistic styles with OpenCV's non-photorealistic filters, on the whole image or a mask.

The edge-preserving filters behind most styles cost 0.35–1.2 s per megapixel and keep
about 130 bytes per pixel in float32 buffers, so images above ``WORK_MAX_PIXELS`` are
processed at that size and scaled back (the notes say so): processing at a capped
working resolution is the usual practice for these filters, and it keeps time and memory
bounded on large photos (a 4096×4096 photo takes about a second and under 4× its
decoded size in extra memory).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from tools.engine.checks import engine_op, normalize
from tools.engine.masks import blend, feather, grow_box, mask_array, mask_bbox
from tools.engine.output import EngineOutput
from tools.engine.pixels import from_array, split_alpha, to_array, to_bgr
from tools.engine.style_names import STYLES
from tools.errors import InvalidParameter

WORK_MAX_PIXELS: dict[str, int] = {
    # the edge-preserving (domain transform) filters keep ~130 bytes per pixel in float32
    # buffers and take 0.35–1.2 s per megapixel: at most 1 MP (1024×1024 runs at full size)
    "pencil_sketch": 1 << 20,
    "color_pencil": 1 << 20,
    "watercolor": 1 << 20,
    "detail_enhance": 1 << 20,
    # light on memory (6–11 bytes per pixel); oil painting costs ~0.5 s per megapixel
    "oil_painting": 4 << 20,
    "cartoon": 4 << 20,
}
"""Images larger than this (per style, in pixels) are stylized at this size and scaled back."""

_MASK_MARGIN = 48  # context around a mask's box that the filters see
_FEATHER = 4


def _pencil_sketch(bgr: np.ndarray) -> np.ndarray:
    gray, _ = cv2.pencilSketch(bgr, sigma_s=60, sigma_r=0.07, shade_factor=0.05)
    return gray


def _color_pencil(bgr: np.ndarray) -> np.ndarray:
    _, colour = cv2.pencilSketch(bgr, sigma_s=60, sigma_r=0.07, shade_factor=0.05)
    return colour


def _oil_painting(bgr: np.ndarray) -> np.ndarray:
    h, w = bgr.shape[:2]
    size = int(np.clip(round(math.sqrt(w * h) / 150), 3, 10))  # 7 px brush at 1 MP
    return cv2.xphoto.oilPainting(bgr, size, 1, cv2.COLOR_BGR2GRAY)


def _cartoon(bgr: np.ndarray) -> np.ndarray:
    h, w = bgr.shape[:2]
    small = cv2.pyrDown(bgr) if min(h, w) >= 128 else bgr
    for _ in range(4):
        small = cv2.bilateralFilter(small, 9, 30, 7)
    colour = (
        cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) if small is not bgr else small
    )
    levels = (np.arange(256) // 24 * 24 + 12).clip(0, 255).astype(np.uint8)
    colour = cv2.LUT(colour, levels)
    gray = cv2.medianBlur(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), 7)
    block = max(3, round(math.sqrt(w * h) / 110) | 1)  # 9 px at 1 MP
    edges = cv2.adaptiveThreshold(
        gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, 4
    )
    return cv2.bitwise_and(colour, colour, mask=edges)


def _watercolor(bgr: np.ndarray) -> np.ndarray:
    return cv2.stylization(bgr, sigma_s=60, sigma_r=0.45)


def _detail_enhance(bgr: np.ndarray) -> np.ndarray:
    return cv2.detailEnhance(bgr, sigma_s=10, sigma_r=0.15)


_FILTERS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "pencil_sketch": _pencil_sketch,
    "color_pencil": _color_pencil,
    "oil_painting": _oil_painting,
    "cartoon": _cartoon,
    "watercolor": _watercolor,
    "detail_enhance": _detail_enhance,
}

_PROMPT_RULES: list[tuple[str, re.Pattern[str]]] = [
    (
        "color_pencil",
        re.compile(
            r"\bcolou?r(?:ed|ful)?\s+(?:pencils?|sketch\w*|drawings?|crayons?)|\bcrayons?\b"
            r"|\bpencil\s+colou?rs?\b"
        ),
    ),
    ("oil_painting", re.compile(r"\boils?\b|\bimpasto\b|\bvan\s*gogh\b")),
    ("watercolor", re.compile(r"\bwater\s*colou?rs?\b|\baquarelle\b|\bgouache\b")),
    ("cartoon", re.compile(r"\bcartoon|\bcomic|\btoon|\banime\b|\bmanga\b|\bcel\b|\bcel[\s-]shad")),
    (
        "pencil_sketch",
        re.compile(r"\bpencil|\bsketch|\bdrawing\b|\bdrawn\b|\bcharcoal\b|\bgraphite\b"),
    ),
    ("detail_enhance", re.compile(r"\bdetail|\bhdr\b|\benhanc|\bcrisp|\bpop\b")),
    ("watercolor", re.compile(r"\bpaint(?:ing|ed|erly)?\b|\bartistic\b|\bstyli[sz]")),
]


def _styles_list() -> str:
    return "; ".join(f"{name}: {text}" for name, text in STYLES.items())


def _style_name(style: object) -> str:
    if isinstance(style, str):
        key = re.sub(r"[\s\-]+", "_", style.strip().lower()).replace("colour", "color")
        key = {"watercolour": "watercolor", "oil": "oil_painting", "sketch": "pencil_sketch"}.get(
            key, key
        )
        if key in STYLES:
            return key
    raise InvalidParameter(f"unknown style {style!r}; the styles are: {_styles_list()}")


def style_from_prompt(prompt: str) -> str:
    """Pick a style from free words ("make it an oil painting" -> ``oil_painting``)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidParameter(f"no style asked for; the styles are: {_styles_list()}")
    try:
        return _style_name(prompt)
    except InvalidParameter:
        pass
    text = prompt.lower().replace("colour", "color").replace("_", " ")
    for name, pattern in _PROMPT_RULES:
        if pattern.search(text):
            return name
    raise InvalidParameter(f"no style matches {prompt!r}; the styles are: {_styles_list()}")


def _render(image: Image.Image, style: str) -> tuple[Image.Image, list[str]]:
    """Apply a style to an L/LA/RGB/RGBA image; keeps size, mode family and alpha."""
    base, alpha = split_alpha(image)
    w, h = base.size
    gray = base.mode == "L"
    notes = []
    work = base
    limit = WORK_MAX_PIXELS[style]
    if w * h > limit:
        scale = math.sqrt(limit / (w * h))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        work = base.resize(size, Image.Resampling.BOX)
        notes.append(
            f"stylized at {size[0]}×{size[1]} and scaled back to {w}×{h} (this filter is run "
            f"at most at {limit / 2**20:g} MP to bound its time and memory)"
        )
    bgr, _ = to_bgr(work)
    del work
    out = _FILTERS[style](bgr)
    del bgr
    if out.ndim == 2:  # convert at the working size, then scale the final array once
        out = out if gray else cv2.cvtColor(out, cv2.COLOR_GRAY2RGB)
    else:
        out = cv2.cvtColor(out, cv2.COLOR_BGR2GRAY if gray else cv2.COLOR_BGR2RGB)
    if out.shape[1] != w or out.shape[0] != h:
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_CUBIC)
    result = Image.fromarray(out)
    del out
    if alpha is not None:
        result.putalpha(alpha)
    return result, notes


@engine_op("stylize")
def stylize(image: Image.Image, style: str) -> EngineOutput:
    """Apply one of :data:`STYLES` to the whole image."""
    name = _style_name(style)
    img = normalize(image)
    result, notes = _render(img, name)
    return EngineOutput(result, [f"{name.replace('_', ' ')} style: {STYLES[name]}", *notes])


@engine_op("stylize_masked")
def stylize_masked(
    image: Image.Image, mask: Image.Image, style: str, *, feather_px: int = _FEATHER
) -> EngineOutput:
    """Apply a style only where ``mask`` is white; pixels outside the mask stay exactly as they are.

    The mask is L-mode (white = edit, black = keep); a mask of the same aspect ratio is
    resized to the image. The edge is feathered over about ``feather_px`` pixels inside it.
    """
    name = _style_name(style)
    if isinstance(feather_px, bool) or not isinstance(feather_px, int) or not 0 <= feather_px <= 64:
        raise InvalidParameter(
            f"feather_px must be a whole number from 0 to 64, got {feather_px!r}"
        )
    img = normalize(image)
    m = mask_array(mask, img.size)
    box = mask_bbox(m)
    if box is None:
        raise InvalidParameter("mask has no white pixels: white marks the area to stylize")
    region_box = grow_box(box, _MASK_MARGIN, img.size)
    region = img.crop(region_box)
    styled, notes = _render(region, name)
    left, top, right, bottom = region_box
    alpha = feather(np.ascontiguousarray(m[top:bottom, left:right]), feather_px)
    mixed = blend(to_array(region), to_array(styled), alpha)
    out = img.copy()
    out.paste(from_array(mixed), (left, top))
    share = 100 * np.count_nonzero(m) / m.size
    return EngineOutput(
        out,
        [
            f"{name.replace('_', ' ')} style inside the mask ({share:.1f}% of the image), "
            f"edge feathered over {feather_px} px; pixels outside the mask are unchanged",
            *notes,
        ],
    )
