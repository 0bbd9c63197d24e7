"""Enlarging resamples written band by band straight into the result image.

A whole-image resize holds the source as an array, the result as an array and then the
result again as a PIL image (RGB takes 4 bytes a pixel in Pillow): about 9.4× the decoded
input for a 2× enlargement. Here the result is one uninitialised PIL image and each
horizontal band of it is resampled from a few source rows and copied straight into its
rows, so besides the result only a band per thread is alive: 5.6–5.7× for 2× of a 4096²
photo, of which the result itself is 5.33× (the floor for an RGB result). Bands run on as
many threads as OpenCV uses (one per core).

Bands are exact: a band of output rows starts where the global row mapping lands on a
whole source row (a multiple of ``p`` output rows for an ``h → H`` resize with
``H/h = p/q`` in lowest terms) and reads ``margin`` source rows beyond its ends, which
covers the kernel. Integer factors give the very pixels of a whole-image resize; other
ratios may differ by 1 level where a source coordinate rounds differently. A ratio whose
``p`` is about the output height (e.g. 4096 → 4097 rows) gives one band.

Kernels: ``cubic`` is OpenCV's bicubic (SIMD, ~2.4× faster than Pillow's on one core);
``lanczos`` is Pillow's Lanczos (a = 3, alpha premultiplied): OpenCV's 8-bit Lanczos-4 has
no SIMD path and takes ~1.45× Pillow's time; the two differ by 0.24 levels on average.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, NamedTuple

import cv2
import numpy as np
from PIL import Image

Method = Literal["cubic", "lanczos"]

BAND_PIXELS = 1 << 20
"""Output pixels per band at most (4 MB in Pillow's RGB): small next to the result, big
enough that the rows read twice (the margins) and Pillow's per-call set-up cost little."""
_BANDS_AT_LEAST = 8  # a band is at most 1/8 of the result, so smaller results stay small

_MIN_ROWS = 16  # output rows per band at least, whatever the width
_MARGIN = {"cubic": 2, "lanczos": 3}  # kernel reach, in source rows, when enlarging
_MODES = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}
_PREMULTIPLIED = {"LA": "La", "RGBA": "RGBa"}
# How Pillow's ImageFile decodes into (part of) an image: raw rows go straight in.
_GETDECODER: Callable[..., Any] | None = getattr(Image, "_getdecoder", None)

Source = Image.Image | np.ndarray


class Band(NamedTuple):
    """Output rows ``top:bottom``, resampled from source rows ``src_top:src_bottom``, whose
    own resize starts at output row ``out_top`` (``out_top <= top``)."""

    top: int
    bottom: int
    src_top: int
    src_bottom: int
    out_top: int


def plan_bands(h: int, out_h: int, width: int, margin: int, band_pixels: int) -> list[Band]:
    """Bands of about ``band_pixels`` output pixels covering ``out_h`` rows, in order."""
    g = math.gcd(out_h, h)
    p, q = out_h // g, h // g  # out_h / h = p / q
    rows = p * max(1, round(max(_MIN_ROWS, band_pixels / max(1, width)) / p))
    if rows >= out_h:
        return [Band(0, out_h, 0, h, 0)]
    m = q * -(-margin // q)  # margin in source rows, a multiple of q
    bands = []
    for top in range(0, out_h, rows):
        bottom = min(out_h, top + rows)
        src_top = max(0, top // p * q - m)
        src_bottom = min(h, -(-bottom // p) * q + m)
        bands.append(Band(top, bottom, src_top, src_bottom, src_top // q * p))
    return bands


def write_rows(out: Image.Image, top: int, rows: np.ndarray) -> None:
    """Copy a C-contiguous uint8 array of whole rows into ``out`` from row ``top`` on."""
    box = (0, top, out.width, top + rows.shape[0])
    if _GETDECODER is None:  # two copies instead of one
        out.paste(Image.fromarray(rows), box)
        return
    decoder = _GETDECODER(out.mode, "raw", (out.mode, 0, 1))
    try:
        decoder.setimage(out.im, box)
        consumed, error = decoder.decode(rows.data)  # consumed is -1 once the box is full
    finally:
        decoder.cleanup()
    if consumed != -1 or error < 0:
        raise RuntimeError(f"could not write rows {top}–{box[3]} (decoder: {consumed}, {error})")


def _source_rows(src: Source, top: int, bottom: int) -> Source:
    if isinstance(src, Image.Image):
        return src.crop((0, top, src.width, bottom))
    return src[top:bottom]


def _cubic(rows: Source, band: Band, size: tuple[int, int], h: int) -> np.ndarray | Image.Image:
    """OpenCV bicubic of the band's source rows, cut to the band."""
    arr = np.asarray(rows)
    out_rows = (band.src_bottom - band.src_top) * size[1] // h  # exact: see plan_bands
    done = cv2.resize(arr, (size[0], out_rows), interpolation=cv2.INTER_CUBIC)
    start = band.top - band.out_top
    return done[start : start + band.bottom - band.top]


def _lanczos(rows: Source, band: Band, size: tuple[int, int], h: int) -> np.ndarray | Image.Image:
    """Pillow Lanczos of the band's source rows, at the band's place in the whole mapping.

    The two passes are made explicitly, horizontal first as Pillow does for a whole-image
    enlargement: left to itself, Pillow may run a band's vertical pass first (cheaper
    there), which rounds differently (±2). Pillow shrinks a whole image's height vertical
    pass first, so for such a resize the bands differ from it by up to 2 levels.
    """
    image = rows if isinstance(rows, Image.Image) else Image.fromarray(np.asarray(rows))
    mode = image.mode
    if mode in _PREMULTIPLIED:  # as Pillow does: alpha premultiplied around both passes
        image = image.convert(_PREMULTIPLIED[mode])
    width = size[0]
    if image.width != width:
        image = image.resize((width, image.height), Image.Resampling.LANCZOS)
    scale = h / size[1]
    box = (0, band.top * scale - band.src_top, width, band.bottom * scale - band.src_top)
    done = image.resize((width, band.bottom - band.top), Image.Resampling.LANCZOS, box=box)
    return done.convert(mode) if done.mode != mode else done


Kernel = Callable[[Source, Band, tuple[int, int], int], np.ndarray | Image.Image]
_KERNELS: dict[str, Kernel] = {"cubic": _cubic, "lanczos": _lanczos}


def _workers(count: int) -> int:
    """Threads for ``count`` bands: as many as OpenCV would use, at most one per core."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(count, cv2.getNumThreads(), cores or 1))


def resize_into(
    src: Source, size: tuple[int, int], method: Method, band_pixels: int | None = None
) -> Image.Image:
    """``src`` resampled to ``size`` as a new PIL image, in bands of ``band_pixels``
    (by default :data:`BAND_PIXELS`, or an eighth of the result if less). Meant for
    enlargements: a shrink is exact too, but its result is small anyway and OpenCV's area
    averaging suits it better.

    ``src`` is an L/LA/RGB/RGBA PIL image or a uint8 array of 1–4 channels.
    """
    if isinstance(src, Image.Image):
        mode, h = src.mode, src.height
    else:
        mode, h = _MODES[1 if src.ndim == 2 else src.shape[2]], src.shape[0]
    margin = _MARGIN[method] * max(1, math.ceil(h / size[1]))  # a shrink widens the kernel
    if band_pixels is None:
        band_pixels = min(BAND_PIXELS, size[0] * size[1] // _BANDS_AT_LEAST)
    bands = plan_bands(h, size[1], size[0], margin, band_pixels)
    kernel = _KERNELS[method]
    out = Image.new(mode, size, None)  # uninitialised: each page is written once, by a band
    lock = threading.Lock()  # one thread at a time reads src or writes out

    def run(first: int, step: int) -> None:
        for band in bands[first::step]:
            with lock:
                rows = _source_rows(src, band.src_top, band.src_bottom)
            done = kernel(rows, band, size, h)
            del rows
            with lock:
                if isinstance(done, Image.Image):
                    out.paste(done, (0, band.top))
                else:
                    write_rows(out, band.top, done)
            del done

    workers = _workers(len(bands))
    if workers == 1:
        run(0, 1)
        return out
    with ThreadPoolExecutor(workers, thread_name_prefix="retouch-resample") as pool:
        for future in [pool.submit(run, i, workers) for i in range(workers)]:
            future.result()
    return out
