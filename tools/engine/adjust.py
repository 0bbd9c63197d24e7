"""Basic adjustments from a short instruction list: rotate, flip, crop, resize, tones, blur...

``parse_adjustments("rotate 90; crop 10 10 200 200; resize 50%; brightness 1.2")`` turns
words into :class:`Adjustment` values and :func:`adjust` applies them in order.

How each one is applied lives in :mod:`tools.engine._adjust_ops`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from tools.engine._adjust_ops import APPLY, Canvas, fmt, too_large
from tools.engine.checks import MAX_SIDE, engine_op, normalize
from tools.engine.output import EngineOutput
from tools.errors import InvalidParameter

GRAMMAR = """\
Adjustments are separated by ';', ',', 'and', 'then' or new lines, for example:
  rotate 90 | rotate -45 | rotate left | rotate right   (degrees; positive = clockwise)
  flip horizontal | mirror | flip vertical
  crop 10 10 200 200   (left top right bottom, in pixels) | crop 200x200+10+10 | crop 50%
  resize 512x512 | resize 50% | scale 2x | width 800 | height 600   (width/height keep the aspect)
  brightness 1.2 | contrast 0.8 | saturation 1.5   (factor, 1 = unchanged; also +20% or -20%)
  grayscale | invert | blur 2   (radius in px) | sharpen   (or sharpen 2)
Example: "rotate 90; crop 10 10 200 200; resize 50%; brightness 1.2; sharpen\""""

_FACTOR_MAX = 10.0
_BLUR_MAX = 250.0
_SHARPEN_MAX = 20.0

# op -> number of arguments it takes (None: checked by the op's own rule)
_OPS: dict[str, int | None] = {
    "rotate": 1,
    "flip": 1,
    "crop": 4,
    "crop_center": 3,
    "resize": 2,
    "scale": 1,
    "fit": 1,
    "brightness": 1,
    "contrast": 1,
    "saturation": 1,
    "grayscale": 0,
    "invert": 0,
    "blur": 1,
    "sharpen": 1,
}
# positions of the arguments that are words rather than numbers
_TEXT_ARGS: dict[str, tuple[int, ...]] = {"flip": (0,), "crop_center": (2,)}


def _bad(message: str) -> InvalidParameter:
    return InvalidParameter(f"{message}\n{GRAMMAR}")


@dataclass(frozen=True)
class Adjustment:
    """One adjustment: an operation name and its arguments.

    ``rotate (degrees clockwise)``, ``flip ("horizontal"|"vertical")``,
    ``crop (left, top, right, bottom)``, ``crop_center (width, height, "px"|"%")``,
    ``resize (width, height)`` (0 = keep the aspect), ``scale (factor)``,
    ``fit (longest side)``, ``brightness/contrast/saturation (factor)``,
    ``grayscale ()``, ``invert ()``, ``blur (radius px)``, ``sharpen (amount)``.
    """

    op: str
    args: tuple[float | int | str, ...] = ()

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise _bad(f"unknown adjustment {self.op!r}")
        if len(self.args) != _OPS[self.op]:
            raise _bad(f"{self.op} takes {_OPS[self.op]} argument(s), got {self.args!r}")
        for i, arg in enumerate(self.args):
            if i in _TEXT_ARGS.get(self.op, ()):
                if not isinstance(arg, str):
                    raise _bad(f"{self.op}: argument {i + 1} must be text, got {arg!r}")
            elif (
                isinstance(arg, bool) or not isinstance(arg, int | float) or not math.isfinite(arg)
            ):
                raise _bad(f"{self.op}: arguments must be finite numbers, got {self.args!r}")
        check = getattr(self, f"_check_{self.op}", None)
        if check:
            check()

    def __str__(self) -> str:
        return " ".join([self.op, *(fmt(a) for a in self.args)])

    def _check_flip(self) -> None:
        if self.args[0] not in ("horizontal", "vertical"):
            raise _bad(f"flip must be horizontal or vertical, got {self.args[0]!r}")

    def _check_crop(self) -> None:
        left, top, right, bottom = self.args
        if not all(isinstance(v, int) for v in self.args) or not (
            0 <= left < right and 0 <= top < bottom  # type: ignore[operator]
        ):
            raise _bad(
                f"crop box {self.args!r} is not a box: it is left top right bottom in whole "
                "pixels, with 0 ≤ left < right and 0 ≤ top < bottom"
            )

    def _check_crop_center(self) -> None:
        w, h, unit = self.args
        if unit not in ("px", "%") or not (w > 0 and h > 0):  # type: ignore[operator]
            raise _bad(f"crop size {self.args!r} must be positive, in px or %")
        if unit == "%" and (w > 100 or h > 100):  # type: ignore[operator]
            raise _bad(f"crop to {fmt(w)}% × {fmt(h)}%: a crop keeps at most 100%")

    def _check_resize(self) -> None:
        w, h = self.args
        if w < 0 or h < 0 or (w == 0 and h == 0):  # type: ignore[operator]
            raise _bad(f"resize to {fmt(w)}×{fmt(h)}: sizes must be positive")
        if w > MAX_SIDE or h > MAX_SIDE:  # type: ignore[operator]
            raise too_large(int(w), int(h))

    def _check_scale(self) -> None:
        if not 0 < self.args[0] <= 64:  # type: ignore[operator]
            raise _bad(f"scale factor {fmt(self.args[0])} must be above 0 (and at most 64)")

    def _check_fit(self) -> None:
        if not 1 <= self.args[0] <= MAX_SIDE:  # type: ignore[operator]
            raise too_large(int(self.args[0]), int(self.args[0]))

    def _check_factor(self) -> None:
        if not 0 <= self.args[0] <= _FACTOR_MAX:  # type: ignore[operator]
            raise _bad(
                f"{self.op} factor {fmt(self.args[0])} must be between 0 and {_FACTOR_MAX:g} "
                "(1 = unchanged)"
            )

    _check_brightness = _check_contrast = _check_saturation = _check_factor

    def _check_blur(self) -> None:
        if not 0 <= self.args[0] <= _BLUR_MAX:  # type: ignore[operator]
            raise _bad(f"blur radius {fmt(self.args[0])} must be between 0 and {_BLUR_MAX:g}")

    def _check_sharpen(self) -> None:
        if not 0 <= self.args[0] <= _SHARPEN_MAX:  # type: ignore[operator]
            raise _bad(f"sharpen amount {fmt(self.args[0])} must be between 0 and {_SHARPEN_MAX:g}")


# ---------------------------------------------------------------------------------------
# Parsing


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
_PHRASES = [
    (re.compile(r"\bblack\s*(?:and|&|/|-)\s*white\b|\bb\s*[&/]\s*w\b"), "grayscale"),
    (re.compile(r"\bupside[\s-]*down\b"), "upsidedown"),
    (re.compile(r"\bcounter[\s-]*clockwise\b|\banti[\s-]*clockwise\b"), "ccw"),
    (re.compile(r"[°º]|\bdegrees?\b|\bdeg\b"), " "),
    (re.compile(r"(?<=\d)\s*[×*]\s*(?=\d)"), "x"),
    (re.compile(r"(?<=\d)\s+x\s+(?=\d)"), "x"),
]
_SPLIT = re.compile(r";|\n|,(?!\s*[-+]?\d)|\band\b|\bthen\b|&")
_FILLER = {"please", "also", "apply", "a", "an", "the", "by", "to", "of", "it", "image", "photo"}


def parse_adjustments(text: str) -> list[Adjustment]:
    """Parse an instruction list like ``"rotate 90; flip horizontal; resize 50%"``.

    Raises ``InvalidParameter`` (with the grammar and examples) for anything it cannot read.
    """
    if not isinstance(text, str) or not text.strip():
        raise _bad("no adjustments given")
    lowered = text.lower()
    for pattern, replacement in _PHRASES:
        lowered = pattern.sub(replacement, lowered)
    result = []
    for raw in _SPLIT.split(lowered):
        clause = raw.strip().strip(".!")
        if clause:
            result.append(_parse_clause(clause, raw.strip()))
    if not result:
        raise _bad("no adjustments given")
    return result


def _parse_clause(clause: str, original: str) -> Adjustment:
    words = [w for w in re.split(r"[\s,]+", clause) if w and w not in _FILLER]
    if not words:
        raise _bad(f"cannot read the adjustment {original!r}")
    verb, rest = words[0], words[1:]
    parser = _VERBS.get(verb)
    if parser is None:
        raise _bad(f"unknown adjustment {original!r}")
    adjustment = parser(verb, rest)
    if adjustment is None:
        raise _bad(f"cannot read the adjustment {original!r}")
    return adjustment


def _number(word: str) -> float | None:
    if re.fullmatch(_NUM, word):
        return float(word)
    return None


def _numbers(words: list[str]) -> list[float] | None:
    values = [_number(w) for w in words]
    if any(v is None for v in values):
        return None
    return values  # type: ignore[return-value]


def _int_or_float(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def _parse_rotate(verb: str, rest: list[str]) -> Adjustment | None:
    angle: float | None = None
    sign = 1.0
    for word in rest:
        if word in ("cw", "clockwise", "right"):
            sign = 1.0
            angle = 90.0 if angle is None else angle
        elif word in ("ccw", "left"):
            sign = -1.0
            angle = 90.0 if angle is None else angle
        elif word == "upsidedown":
            angle = 180.0
        elif (value := _number(word)) is not None:
            angle = value
        else:
            return None
    if angle is None:
        return None
    return Adjustment("rotate", (_int_or_float(sign * angle),))


def _parse_flip(verb: str, rest: list[str]) -> Adjustment | None:
    if verb in ("mirror", "hflip"):
        direction = "horizontal"
    elif verb == "vflip":
        direction = "vertical"
    else:
        direction = "horizontal"
    horizontal = {"horizontal", "horizontally", "h", "x", "left-right", "lr", "sideways"}
    vertical = {"vertical", "vertically", "v", "y", "top-bottom", "tb", "upsidedown"}
    for word in rest:
        if word in horizontal:
            direction = "horizontal"
        elif word in vertical:
            direction = "vertical"
        else:
            return None
    return Adjustment("flip", (direction,))


def _parse_crop(verb: str, rest: list[str]) -> Adjustment | None:
    rest = [w for w in rest if w not in ("center", "centre", "box")]
    joined = " ".join(rest)
    if m := re.fullmatch(r"(\d+)x(\d+)\+(\d+)\+(\d+)", joined):  # WxH+X+Y
        w, h, x, y = (int(g) for g in m.groups())
        return Adjustment("crop", (x, y, x + w, y + h))
    if m := re.fullmatch(r"(\d+)x(\d+)", joined):
        return Adjustment("crop_center", (int(m[1]), int(m[2]), "px"))
    if m := re.fullmatch(rf"({_NUM})%(?:\s*x?\s*({_NUM})%)?", joined):
        fw = float(m[1])
        fh = float(m[2]) if m[2] else fw
        return Adjustment("crop_center", (_int_or_float(fw), _int_or_float(fh), "%"))
    if all("=" in w for w in rest) and rest:
        return _parse_crop_keywords(rest)
    values = _numbers(rest)
    if values is None or len(values) != 4 or not all(v.is_integer() for v in values):
        return None
    left, top, right, bottom = (int(v) for v in values)
    return Adjustment("crop", (left, top, right, bottom))


def _parse_crop_keywords(words: list[str]) -> Adjustment | None:
    keys = {"left": "x", "x": "x", "top": "y", "y": "y", "w": "w", "width": "w"}
    keys |= {"h": "h", "height": "h", "right": "r", "bottom": "b"}
    found: dict[str, int] = {}
    for word in words:
        key, _, value = word.partition("=")
        number = _number(value)
        if key not in keys or number is None or not number.is_integer():
            return None
        found[keys[key]] = int(number)
    x, y = found.get("x", 0), found.get("y", 0)
    right = found.get("r", x + found["w"] if "w" in found else None)
    bottom = found.get("b", y + found["h"] if "h" in found else None)
    if right is None or bottom is None:
        return None
    return Adjustment("crop", (x, y, right, bottom))


def _parse_resize(verb: str, rest: list[str]) -> Adjustment | None:
    if verb in ("width", "height"):
        rest = [verb, *rest]
    joined = " ".join(rest)
    if m := re.fullmatch(r"(\d+)x(\d+)", joined):
        return Adjustment("resize", (int(m[1]), int(m[2])))
    if m := re.fullmatch(rf"(?:x\s*({_NUM})|({_NUM})\s*(?:x|times))", joined):
        value = float(m[1] or m[2])
        if verb == "scale" or value <= 16:  # "scale 2x", "x0.5"; "resize 800x" is a width
            return Adjustment("scale", (_int_or_float(value),))
    if m := re.fullmatch(r"(?:width|w)\s*=?\s*(\d+)(?:\s*px)?", joined) or re.fullmatch(
        r"(\d+)x", joined
    ):
        return Adjustment("resize", (int(m[1]), 0))
    if m := re.fullmatch(r"(?:height|h)\s*=?\s*(\d+)(?:\s*px)?", joined) or re.fullmatch(
        r"x(\d+)", joined
    ):
        return Adjustment("resize", (0, int(m[1])))
    if m := re.fullmatch(rf"({_NUM})\s*%", joined):
        return Adjustment("scale", (_int_or_float(float(m[1]) / 100),))
    if (value := _number(joined)) is not None:
        if verb == "scale" or not value.is_integer() or value <= 16:
            return Adjustment("scale", (_int_or_float(value),))
        return Adjustment("fit", (int(value),))
    if m := re.fullmatch(r"(\d+)\s*px", joined):
        return Adjustment("fit", (int(m[1]),))
    return None


def _factor(words: list[str], default_change: float, direction: float) -> float | None:
    """A factor from ``1.2``, ``120%``, ``+20%``, ``-0.2``; with no number, 1 ± default."""
    if not words:
        return None if direction == 0 else 1.0 + direction * default_change
    if len(words) != 1:
        return None
    word = words[0]
    percent = word.endswith("%")
    value = _number(word.rstrip("%"))
    if value is None:
        return None
    signed = word[0] in "+-"
    if percent:
        value /= 100
    if direction != 0:  # "increase brightness 20%", "darken 0.3"
        change = value if (percent or signed or value < 1) else value - 1
        return 1.0 + direction * abs(change)
    if signed:
        return 1.0 + value
    return value


_PROPERTIES = {
    "brightness": "brightness",
    "bright": "brightness",
    "exposure": "brightness",
    "contrast": "contrast",
    "saturation": "saturation",
    "saturate": "saturation",
    "color": "saturation",
    "colour": "saturation",
    "colors": "saturation",
    "colours": "saturation",
    "vibrance": "saturation",
}


def _parse_tone(verb: str, rest: list[str]) -> Adjustment | None:
    direction = 0.0
    prop = _PROPERTIES.get(verb)
    if verb in ("brighten", "lighten"):
        prop, direction = "brightness", 1.0
    elif verb == "darken":
        prop, direction = "brightness", -1.0
    elif verb in ("increase", "boost", "raise", "more", "enhance"):
        direction = 1.0
    elif verb in ("decrease", "reduce", "lower", "less"):
        direction = -1.0
    if prop is None:
        if not rest or rest[0] not in _PROPERTIES:
            return None
        prop, rest = _PROPERTIES[rest[0]], rest[1:]
    factor = _factor(rest, 0.2, direction)
    if factor is None:
        return None
    return Adjustment(prop, (_int_or_float(round(factor, 6)),))


def _parse_plain(op: str) -> Callable[[str, list[str]], Adjustment | None]:
    def parse(verb: str, rest: list[str]) -> Adjustment | None:
        return None if rest else Adjustment(op)

    return parse


def _parse_desaturate(verb: str, rest: list[str]) -> Adjustment | None:
    return None if rest else Adjustment("saturation", (0,))


def _parse_blur(verb: str, rest: list[str]) -> Adjustment | None:
    rest = [w for w in rest if w not in ("blur", "radius", "r", "px", "sigma")]
    if not rest:
        return Adjustment("blur", (2,))
    value = _number(rest[0].removesuffix("px")) if len(rest) == 1 else None
    return None if value is None else Adjustment("blur", (_int_or_float(value),))


def _parse_sharpen(verb: str, rest: list[str]) -> Adjustment | None:
    rest = [w for w in rest if w not in ("amount", "by")]
    if not rest:
        return Adjustment("sharpen", (1,))
    value = _number(rest[0].rstrip("%")) if len(rest) == 1 else None
    if value is not None and rest[0].endswith("%"):
        value /= 100
    return None if value is None else Adjustment("sharpen", (_int_or_float(value),))


_VERBS = {
    **dict.fromkeys(("rotate", "rotation", "turn", "rot"), _parse_rotate),
    **dict.fromkeys(("flip", "mirror", "hflip", "vflip"), _parse_flip),
    **dict.fromkeys(("crop", "cut"), _parse_crop),
    **dict.fromkeys(("resize", "scale", "size", "width", "height", "rescale"), _parse_resize),
    **dict.fromkeys(_PROPERTIES, _parse_tone),
    **dict.fromkeys(("brighten", "lighten", "darken", "increase", "boost", "raise"), _parse_tone),
    **dict.fromkeys(("more", "enhance", "decrease", "reduce", "lower", "less"), _parse_tone),
    **dict.fromkeys(
        ("grayscale", "greyscale", "gray", "grey", "monochrome", "mono", "bw"),
        _parse_plain("grayscale"),
    ),
    **dict.fromkeys(("invert", "negative", "negate"), _parse_plain("invert")),
    "desaturate": _parse_desaturate,
    **dict.fromkeys(("blur", "gaussian", "soften", "smooth"), _parse_blur),
    **dict.fromkeys(("sharpen", "sharper", "sharpness"), _parse_sharpen),
}


@engine_op("adjust")
def adjust(image: Image.Image, adjustments: list[Adjustment] | str) -> EngineOutput:
    """Apply adjustments in order (a string is parsed with :func:`parse_adjustments`)."""
    if isinstance(adjustments, str):
        adjustments = parse_adjustments(adjustments)
    if not adjustments:
        raise _bad("no adjustments given")
    for adjustment in adjustments:
        if not isinstance(adjustment, Adjustment):
            raise _bad(f"expected Adjustment values, got {type(adjustment).__name__}")
    canvas = Canvas(normalize(image))
    notes = [APPLY[a.op](canvas, *a.args) for a in adjustments]
    out = canvas.pil
    if out is image:
        out = image.copy()
    return EngineOutput(out, notes)
