"""What keeps a long-running Retouch process small: lazy OpenCV, glibc malloc settings."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tools import memory

ROOT = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout.strip()


def test_opencv_is_loaded_by_a_process_that_runs_local_edits_only(tmp_path: object) -> None:
    out = run_python(
        f"""
        import asyncio, sys
        from server.app import build_server
        from tools.config import load_settings
        from tools.models import EditRequest
        from tools.service import Editor
        from tests.conftest import data_uri, png

        open("{tmp_path}/c.toml", "w").write(
            '[store]\\npath = "{tmp_path}/db.sqlite"\\nresults_dir = "{tmp_path}/r"\\n'
            '[vendors.local]\\nkind = "local"\\nesrgan = "off"\\n'
        )
        settings = load_settings("{tmp_path}/c.toml")
        build_server(settings)

        async def main():
            async with Editor(settings, run_worker=False) as editor:
                editor.list_functions()
                print("cv2" in sys.modules, end=" ")
            async with Editor(settings) as editor:  # not at start: at the first local edit
                print("cv2" in sys.modules, end=" ")
                request = EditRequest(images=[data_uri(png((32, 32)))], function="adjust",
                                      prompt="grayscale")
                task = await editor.edit_image(request, wait_seconds=30)
                print(task.status.value, task.error or "", end="")
                print("cv2" in sys.modules)

        asyncio.run(main())
        """
    )
    # Issue #15: OpenCV and numpy are loaded when the local engine first runs (in a
    # thread), not when a process that could run it starts (it was "False True succeeded").
    assert out == "False False succeeded True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_malloc_is_tuned_on_linux() -> None:
    assert memory.tune_malloc() is True


def test_the_lazy_engine_keeps_functions_over_their_modules() -> None:
    # ``tools.engine.adjust`` is a module and a function; importing the module must not
    # shadow the function the package exports.
    out = run_python(
        """
        import importlib
        for name in ("adjust", "inpaint", "lineart", "upscale"):
            importlib.import_module(f"tools.engine.{name}")
        from tools import engine
        print(all(callable(getattr(engine, n)) for n in engine.__all__ if n != "STYLES"))
        try:
            engine.nonsense
        except AttributeError as exc:
            print(exc)
        """
    )
    assert out == "True\nmodule 'tools.engine' has no attribute 'nonsense'"
