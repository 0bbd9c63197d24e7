"""What an adjustment is: the operations, their arguments and their limits.

:class:`Adjustment` checks its arguments when it is made, so a list of them can be applied
without further checks. :data:`GRAMMAR` is the help text every refusal carries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tools.engine.checks import MAX_PIXELS, MAX_SIDE
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


def fmt(value: float | int | str) -> str:
    """An argument as a note shows it: ``1.5``, ``90``, ``horizontal``."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def too_large(w: int, h: int) -> InvalidParameter:
    """The refusal of a result larger than the engine makes."""
    return InvalidParameter(
        f"the result would be {w}×{h}; the engine makes images of at most {MAX_SIDE} px per "
        f"side and {MAX_PIXELS // 2**20} MP in total"
    )


def bad(message: str) -> InvalidParameter:
    """A refusal that teaches the grammar."""
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
            raise bad(f"unknown adjustment {self.op!r}")
        if len(self.args) != _OPS[self.op]:
            raise bad(f"{self.op} takes {_OPS[self.op]} argument(s), got {self.args!r}")
        for i, arg in enumerate(self.args):
            if i in _TEXT_ARGS.get(self.op, ()):
                if not isinstance(arg, str):
                    raise bad(f"{self.op}: argument {i + 1} must be text, got {arg!r}")
            elif (
                isinstance(arg, bool) or not isinstance(arg, int | float) or not math.isfinite(arg)
            ):
                raise bad(f"{self.op}: arguments must be finite numbers, got {self.args!r}")
        check = getattr(self, f"_check_{self.op}", None)
        if check:
            check()

    def __str__(self) -> str:
        return " ".join([self.op, *(fmt(a) for a in self.args)])

    def _check_flip(self) -> None:
        if self.args[0] not in ("horizontal", "vertical"):
            raise bad(f"flip must be horizontal or vertical, got {self.args[0]!r}")

    def _check_crop(self) -> None:
        left, top, right, bottom = self.args
        if not all(isinstance(v, int) for v in self.args) or not (
            0 <= left < right and 0 <= top < bottom  # type: ignore[operator]
        ):
            raise bad(
                f"crop box {self.args!r} is not a box: it is left top right bottom in whole "
                "pixels, with 0 ≤ left < right and 0 ≤ top < bottom"
            )

    def _check_crop_center(self) -> None:
        w, h, unit = self.args
        if unit not in ("px", "%") or not (w > 0 and h > 0):  # type: ignore[operator]
            raise bad(f"crop size {self.args!r} must be positive, in px or %")
        if unit == "%" and (w > 100 or h > 100):  # type: ignore[operator]
            raise bad(f"crop to {fmt(w)}% × {fmt(h)}%: a crop keeps at most 100%")

    def _check_resize(self) -> None:
        w, h = self.args
        if w < 0 or h < 0 or (w == 0 and h == 0):  # type: ignore[operator]
            raise bad(f"resize to {fmt(w)}×{fmt(h)}: sizes must be positive")
        if w > MAX_SIDE or h > MAX_SIDE:  # type: ignore[operator]
            raise too_large(int(w), int(h))

    def _check_scale(self) -> None:
        if not 0 < self.args[0] <= 64:  # type: ignore[operator]
            raise bad(f"scale factor {fmt(self.args[0])} must be above 0 (and at most 64)")

    def _check_fit(self) -> None:
        if not 1 <= self.args[0] <= MAX_SIDE:  # type: ignore[operator]
            raise too_large(int(self.args[0]), int(self.args[0]))

    def _check_factor(self) -> None:
        if not 0 <= self.args[0] <= _FACTOR_MAX:  # type: ignore[operator]
            raise bad(
                f"{self.op} factor {fmt(self.args[0])} must be between 0 and {_FACTOR_MAX:g} "
                "(1 = unchanged)"
            )

    _check_brightness = _check_contrast = _check_saturation = _check_factor

    def _check_blur(self) -> None:
        if not 0 <= self.args[0] <= _BLUR_MAX:  # type: ignore[operator]
            raise bad(f"blur radius {fmt(self.args[0])} must be between 0 and {_BLUR_MAX:g}")

    def _check_sharpen(self) -> None:
        if not 0 <= self.args[0] <= _SHARPEN_MAX:  # type: ignore[operator]
            raise bad(f"sharpen amount {fmt(self.args[0])} must be between 0 and {_SHARPEN_MAX:g}")


# ---------------------------------------------------------------------------------------
# Parsing


_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)"
