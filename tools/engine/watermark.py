"""Text watermark: semi-transparent white text with a soft shadow, sized to the image.

Only the rectangle under the text is touched, so the rest of the image is untouched
(byte for byte) and the cost does not grow with the image.
"""

from __future__ import annotations

import functools
import re

from PIL import Image, ImageDraw, ImageFilter, ImageFont

from tools.engine.checks import engine_op, normalize
from tools.engine.output import EngineOutput
from tools.errors import InvalidParameter

POSITIONS = ("bottom-right", "bottom-left", "top-right", "top-left", "center", "bottom", "top")
_MAX_TEXT = 200
_MIN_FONT = 8


def _position(position: object) -> str:
    if isinstance(position, str):
        key = re.sub(r"[\s_]+", "-", position.strip().lower())
        key = key.replace("lower", "bottom").replace("upper", "top").replace("centre", "center")
        key = {"middle": "center", "br": "bottom-right", "bl": "bottom-left"}.get(key, key)
        key = {"tr": "top-right", "tl": "top-left", "right-bottom": "bottom-right"}.get(key, key)
        key = {"left-bottom": "bottom-left", "right-top": "top-right"}.get(key, key)
        key = {"left-top": "top-left", "bottom-center": "bottom", "top-center": "top"}.get(key, key)
        if key in POSITIONS:
            return key
    raise InvalidParameter(f"unknown position {position!r}; use one of {', '.join(POSITIONS)}")


def _fill(mode: str, level: int) -> int | tuple[int, ...]:
    """A grey ``level`` in ``mode`` (opaque where the mode has alpha)."""
    return {"L": level, "LA": (level, 255), "RGB": (level,) * 3}.get(mode, (level,) * 3 + (255,))


@functools.lru_cache(maxsize=64)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _fit_font(
    text: str, width: int, height: int
) -> tuple[ImageFont.FreeTypeFont | ImageFont.ImageFont, int, tuple[int, int, int, int]]:
    """The largest font up to ~1/20 of the short side whose text fits 90% of the width."""
    size = max(_MIN_FONT, round(min(width, height) / 20))
    while True:
        font = _font(size)
        box = tuple(int(v) for v in font.getbbox(text))
        text_w = box[2] - box[0]
        if text_w <= 0.9 * width and box[3] - box[1] <= 0.5 * height:
            return font, size, box  # type: ignore[return-value]
        if size <= _MIN_FONT:
            raise InvalidParameter(
                f"the watermark text ({len(text)} characters) does not fit the {width}×{height} "
                f"image even at a {_MIN_FONT} px font; shorten it"
            )
        size = max(_MIN_FONT, int(size * min(0.9, 0.9 * width / max(text_w, 1))))


@engine_op("stamp")
def stamp(
    image: Image.Image,
    text: str,
    position: str = "bottom-right",
    opacity: float = 0.6,
) -> EngineOutput:
    """Stamp ``text`` in a corner (or the centre, top or bottom) of the image."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidParameter("watermark text is empty")
    text = " ".join(text.split())
    if len(text) > _MAX_TEXT:
        raise InvalidParameter(f"watermark text is {len(text)} characters; at most {_MAX_TEXT}")
    where = _position(position)
    if isinstance(opacity, bool) or not isinstance(opacity, int | float) or not 0 < opacity <= 1:
        raise InvalidParameter(f"opacity must be a number above 0 and at most 1, got {opacity!r}")
    img = normalize(image)
    w, h = img.size
    font, size, box = _fit_font(text, w, h)
    text_w, text_h = box[2] - box[0], box[3] - box[1]
    margin = max(2, round(size * 0.6))
    shadow = max(1, round(size / 16))
    blur = max(1, round(size / 20))
    pad = shadow + 2 * blur
    x = {"left": margin, "right": w - margin - text_w}
    y = {"top": margin, "bottom": h - margin - text_h}
    if where == "center":
        tx, ty = (w - text_w) // 2, (h - text_h) // 2
    elif where in ("top", "bottom"):
        tx, ty = (w - text_w) // 2, y[where]
    else:
        vertical, horizontal = where.split("-")
        tx, ty = x[horizontal], y[vertical]
    # the patch under the text (plus room for the shadow), clipped to the image
    left, top = max(0, tx - pad), max(0, ty - pad)
    right, bottom = min(w, tx + text_w + pad + shadow), min(h, ty + text_h + pad + shadow)
    origin = (tx - left - box[0], ty - top - box[1])
    # the glyphs are rendered once, as a coverage mask used for both the shadow and the text
    glyphs = Image.new("L", (right - left, bottom - top), 0)
    ImageDraw.Draw(glyphs).text(origin, text, font=font, fill=255)
    shade = glyphs.point(lambda v: round(v * opacity * 0.7)).filter(ImageFilter.GaussianBlur(blur))
    ink = glyphs.point(lambda v: round(v * opacity))
    patch = img.crop((left, top, right, bottom))
    black, white = _fill(img.mode, 0), _fill(img.mode, 255)
    if patch.width > shadow and patch.height > shadow:
        patch.paste(
            black,
            (shadow, shadow, patch.width, patch.height),
            shade.crop((0, 0, patch.width - shadow, patch.height - shadow)),
        )
    patch.paste(white, (0, 0, patch.width, patch.height), ink)
    out = img.copy()
    out.paste(patch, (left, top))
    return EngineOutput(
        out,
        [f'stamped "{text}" at the {where} in white at {opacity:.0%} opacity ({size} px font)'],
    )
