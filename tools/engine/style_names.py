"""The local styles by name, with what each looks like (importable without OpenCV)."""

from __future__ import annotations

STYLES: dict[str, str] = {
    "pencil_sketch": "grey pencil sketch (OpenCV pencilSketch)",
    "color_pencil": "colour pencil sketch (OpenCV pencilSketch, colour output)",
    "oil_painting": "oil painting with visible brush regions (OpenCV xphoto.oilPainting)",
    "cartoon": "cartoon: flattened colours with dark outlines (bilateral filter + edges)",
    "watercolor": "soft watercolour-like painting (OpenCV stylization)",
    "detail_enhance": "stronger local detail and contrast, HDR-like (OpenCV detailEnhance)",
}
