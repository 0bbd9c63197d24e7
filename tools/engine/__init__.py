"""Retouch's local CPU image engine: real edits with Pillow, numpy and OpenCV.

Every operation is synchronous (callers run it in a thread), takes PIL images and returns
an :class:`EngineOutput` whose notes say what was done and which fallback was used.
Bad input raises ``InvalidParameter``/``ImageError``, a missing capability
``Unsupported``, and internal failures or time limits ``EngineError``.
"""

from tools.engine.adjust import Adjustment, adjust, parse_adjustments
from tools.engine.imageops import fit_mask, from_bgr, to_bgr
from tools.engine.inpaint import inpaint
from tools.engine.lineart import lineart
from tools.engine.stylize import STYLES, style_from_prompt, stylize, stylize_masked
from tools.engine.textmask import detect_text_mask, remove_text, tesseract_available
from tools.engine.types import EngineOutput
from tools.engine.upscale import esrgan_available, upscale
from tools.engine.watermark import stamp

__all__ = [
    "STYLES",
    "Adjustment",
    "EngineOutput",
    "adjust",
    "detect_text_mask",
    "esrgan_available",
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
