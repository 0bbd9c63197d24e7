"""Retouch's local CPU image engine: real edits with Pillow, numpy and OpenCV.

Every operation is synchronous (callers run it in a thread), takes PIL images and returns
an :class:`EngineOutput` whose notes say what was done and which fallback was used.
Bad input raises ``InvalidParameter``/``ImageError``, a missing capability
``Unsupported``, and internal failures or time limits ``EngineError``.

Names are imported on first use (PEP 562): OpenCV and numpy cost a process ~30 MB, which
a server that only talks to cloud vendors, or has not edited anything yet, does not pay.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tools.engine.adjust import Adjustment, adjust, parse_adjustments
    from tools.engine.inpaint import inpaint
    from tools.engine.lineart import lineart
    from tools.engine.masks import fit_mask
    from tools.engine.output import EngineOutput
    from tools.engine.pixels import from_bgr, to_bgr
    from tools.engine.style_names import STYLES
    from tools.engine.stylize import style_from_prompt, stylize, stylize_masked
    from tools.engine.textmask import detect_text_mask, remove_text, tesseract_available
    from tools.engine.upscale import esrgan_available, esrgan_problem, upscale
    from tools.engine.watermark import stamp

_HOMES = {
    "adjust": ["Adjustment", "adjust", "parse_adjustments"],
    "inpaint": ["inpaint"],
    "lineart": ["lineart"],
    "masks": ["fit_mask"],
    "output": ["EngineOutput"],
    "pixels": ["from_bgr", "to_bgr"],
    "style_names": ["STYLES"],
    "stylize": ["style_from_prompt", "stylize", "stylize_masked"],
    "textmask": ["detect_text_mask", "remove_text", "tesseract_available"],
    "upscale": ["esrgan_available", "esrgan_problem", "upscale"],
    "watermark": ["stamp"],
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    "STYLES",
    "Adjustment",
    "EngineOutput",
    "adjust",
    "detect_text_mask",
    "esrgan_available",
    "esrgan_problem",
    "fit_mask",
    "from_bgr",
    "inpaint",
    "lineart",
    "parse_adjustments",
    "remove_text",
    "stamp",
    "style_from_prompt",
    "stylize",
    "stylize_masked",
    "tesseract_available",
    "to_bgr",
    "upscale",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """Several submodules share a name with their function (``adjust``, ``inpaint``…).
    Importing a submodule binds it to its package; here the function keeps the name."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _MODULE_OF and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
