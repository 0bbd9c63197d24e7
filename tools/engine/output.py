"""What every engine operation returns."""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image


@dataclass
class EngineOutput:
    """The result of one engine operation.

    ``notes`` are short human sentences saying what was done and which fallback, if any,
    was used; they are shown to the user as they are.
    """

    image: Image.Image
    notes: list[str] = field(default_factory=list)
