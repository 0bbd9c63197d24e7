"""Basic adjustments from a short instruction list: rotate, flip, crop, resize, tones, blur...

``parse_adjustments("rotate 90; crop 10 10 200 200; resize 50%; brightness 1.2")`` turns
words into :class:`Adjustment` values (:mod:`.parse`, checked by :mod:`.grammar`) and
:func:`adjust` applies them in order (:mod:`.ops`).
"""

from tools.engine.adjust.grammar import Adjustment
from tools.engine.adjust.ops import adjust
from tools.engine.adjust.parse import parse_adjustments

__all__ = ["Adjustment", "adjust", "parse_adjustments"]
