"""Find text with the tesseract CLI and remove it by inpainting the word boxes.

Tesseract is run as a subprocess (no pytesseract) with TSV output, on up to three
versions of the picture: the grey image with automatic layout (``--psm 3``, right for
dark text on a light page); only its brightest pixels as black on white, as sparse text
(``--psm 11``, right for white or yellow captions over a photo, which tesseract's own
binarisation misses); and, when both find nothing, the grey image as sparse text (as
for handwriting). Photo texture read as letters is filtered out: a word needs three or
more letters or digits, or a line-mate that has them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image, ImageDraw

from tools.engine.checks import engine_op, normalize
from tools.engine.inpaint import inpaint
from tools.engine.output import EngineOutput
from tools.engine.pixels import split_alpha
from tools.errors import EngineError, InvalidParameter, Unsupported

_MISSING = "automatic text detection needs the tesseract-ocr package; install it or pass a mask"
_BRIGHT = 215  # grey level from which a pixel counts as part of a light caption


@dataclass(frozen=True)
class _Word:
    left: int
    top: int
    width: int
    height: int
    conf: float
    letters: int

    def same_line(self, other: _Word) -> bool:
        overlap = min(self.top + self.height, other.top + other.height) - max(self.top, other.top)
        return overlap >= 0.5 * min(self.height, other.height) and (
            0.5 <= self.height / other.height <= 2
        )

    def overlaps(self, other: _Word) -> bool:
        dx = min(self.left + self.width, other.left + other.width) - max(self.left, other.left)
        dy = min(self.top + self.height, other.top + other.height) - max(self.top, other.top)
        if dx <= 0 or dy <= 0:
            return False
        return dx * dy >= 0.3 * min(self.width * self.height, other.width * other.height)


def tesseract_available() -> bool:
    """Whether the ``tesseract`` command is on the PATH."""
    return shutil.which("tesseract") is not None


def _run_tesseract(path: Path, psm: int, lang: str, timeout_s: float) -> str:
    command = ["tesseract", str(path), "stdout", "--psm", str(psm), "-l", lang, "tsv"]
    # One OpenMP thread: no slower on a page this size, and it leaves a core free.
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, env=env, check=False)
    except FileNotFoundError as exc:
        raise Unsupported(_MISSING) from exc
    except subprocess.TimeoutExpired as exc:
        raise EngineError(f"text detection ran past its {timeout_s:g} s limit") from exc
    stderr = done.stderr.decode("utf-8", "replace").strip()
    if done.returncode != 0:
        if "Failed loading language" in stderr or "Error opening data file" in stderr:
            raise Unsupported(
                f"tesseract has no {lang!r} language data; install tesseract-ocr-{lang} "
                "or pass a mask"
            )
        raise EngineError(f"tesseract failed (exit {done.returncode}): {stderr[-300:]}")
    return done.stdout.decode("utf-8", "replace")


def _read_words(tsv: str, min_conf: float, size: tuple[int, int]) -> list[_Word]:
    """The words of a TSV answer read with confidence above ``min_conf``."""
    w, h = size
    words = []
    for line in tsv.splitlines()[1:]:
        cols = line.split("\t")
        if len(cols) < 12 or cols[0] != "5":
            continue
        try:
            left, top, bw, bh = (int(c) for c in cols[6:10])
            conf = float(cols[10])
        except ValueError:
            continue
        letters = sum(ch.isalnum() for ch in "\t".join(cols[11:]))
        if letters == 0 or conf <= min_conf or bw <= 0 or bh <= 0:
            continue
        if bw * bh > 0.5 * w * h:  # a "word" covering half the page is a misreading
            continue
        words.append(_Word(left, top, bw, bh, conf, letters))
    return words


def _credible(words: list[_Word]) -> list[_Word]:
    """Drop what is likely texture: 1–2 letter "words" with no real word on their line."""
    strong = [w for w in words if w.letters >= 3]
    return strong + [w for w in words if w.letters < 3 and any(w.same_line(s) for s in strong)]


@engine_op("detect_text_mask")
def detect_text_mask(
    image: Image.Image,
    timeout_s: float = 30,
    *,
    min_conf: float = 30.0,
    pad: int = 4,
    lang: str = "eng",
) -> tuple[Image.Image, int]:
    """An L mask (white = text) of the words tesseract finds, and how many it found.

    Word boxes are grown by ``pad`` px. Raises ``Unsupported`` when tesseract is missing and
    ``InvalidParameter`` when no word is read with confidence above ``min_conf`` (0–100).
    """
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise InvalidParameter(f"timeout_s must be a positive number, got {timeout_s!r}")
    if (
        isinstance(min_conf, bool)
        or not isinstance(min_conf, int | float)
        or not (0 <= min_conf < 100)
    ):
        raise InvalidParameter(f"min_conf must be a number from 0 to 100, got {min_conf!r}")
    if not isinstance(pad, int) or isinstance(pad, bool) or not 0 <= pad <= 100:
        raise InvalidParameter(f"pad must be a whole number of px from 0 to 100, got {pad!r}")
    if not isinstance(lang, str) or not lang.replace("+", "").replace("_", "").isalnum():
        raise InvalidParameter(f"lang must be a tesseract language code like 'eng', got {lang!r}")
    if not tesseract_available():
        raise Unsupported(_MISSING)
    img = normalize(image)
    gray = split_alpha(img)[0].convert("L")
    deadline = time.monotonic() + timeout_s
    found: list[_Word] = []
    boxes: list[_Word] = []
    with tempfile.TemporaryDirectory(prefix="retouch-ocr-") as tmp:
        page, bright = Path(tmp) / "page.png", Path(tmp) / "bright.png"
        gray.save(page, compress_level=1)
        gray.point([255] * _BRIGHT + [0] * (256 - _BRIGHT)).save(bright, compress_level=1)
        for path, psm in ((page, 3), (bright, 11), (page, 11)):
            if psm == 11 and path == page and found:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise EngineError(f"text detection ran past its {timeout_s:g} s limit")
            words = _read_words(_run_tesseract(path, psm, lang, remaining), min_conf, img.size)
            for word in _credible(words):
                if not any(word.overlaps(seen) for seen in found):
                    found.append(word)  # counted once, however many passes read it
                boxes.append(word)
    if not found:
        raise InvalidParameter(
            f"no text found in the image (tesseract read no word with confidence above "
            f"{min_conf:g}); pass a mask of the text to remove"
        )
    mask = Image.new("L", img.size, 0)
    draw = ImageDraw.Draw(mask)
    for w in boxes:
        draw.rectangle(
            # Tesseract's boxes often clip a word's first or last glyph (a "C" read as
            # texture): grow them sideways by about a third of the line height.
            (
                w.left - pad - w.height // 3,
                w.top - pad,
                w.left + w.width - 1 + pad + w.height // 3,
                w.top + w.height - 1 + pad,
            ),
            fill=255,
        )
    return mask, len(found)


@engine_op("remove_text")
def remove_text(
    image: Image.Image,
    method: Literal["telea", "ns", "fsr"] = "telea",
    *,
    timeout_s: float = 30,
) -> EngineOutput:
    """Detect text with tesseract and inpaint the word boxes."""
    if method not in ("telea", "ns", "fsr"):
        raise InvalidParameter(f"unknown method {method!r} for text removal; use telea, ns or fsr")
    mask, words = detect_text_mask(image, timeout_s)
    filled = inpaint(image, mask, method, dilate=2)
    return EngineOutput(
        filled.image,
        [
            f"tesseract found {words} word{'s' if words != 1 else ''}; "
            "the word boxes were inpainted",
            *filled.notes,
            "works for opaque captions, not large translucent overlays",
        ],
    )
