"""Words to adjustments: ``"rotate 90; crop 10 10 200 200; resize 50%; brightness 1.2"``.

The parser is forgiving about phrasing ("turn it left", "black and white", "+20% contrast")
and strict about meaning: anything it cannot read is refused with the grammar.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from tools.engine.adjust.grammar import Adjustment, bad

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
        raise bad("no adjustments given")
    lowered = text.lower()
    for pattern, replacement in _PHRASES:
        lowered = pattern.sub(replacement, lowered)
    result = []
    for raw in _SPLIT.split(lowered):
        clause = raw.strip().strip(".!")
        if clause:
            result.append(_parse_clause(clause, raw.strip()))
    if not result:
        raise bad("no adjustments given")
    return result


def _parse_clause(clause: str, original: str) -> Adjustment:
    words = [w for w in re.split(r"[\s,]+", clause) if w and w not in _FILLER]
    if not words:
        raise bad(f"cannot read the adjustment {original!r}")
    verb, rest = words[0], words[1:]
    parser = _VERBS.get(verb)
    if parser is None:
        raise bad(f"unknown adjustment {original!r}")
    adjustment = parser(verb, rest)
    if adjustment is None:
        raise bad(f"cannot read the adjustment {original!r}")
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
