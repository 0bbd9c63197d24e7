"""What keeps a long-running Retouch process small: lazy OpenCV, glibc malloc settings."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

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


@pytest.fixture(scope="module")
def flat_49mp_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    picture = tmp_path_factory.mktemp("large") / "flat.png"
    Image.new("RGB", (7000, 7000), (120, 80, 40)).save(picture, "PNG", compress_level=9)
    assert picture.stat().st_size < 200_000
    return picture


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize(
    ("setting", "budget_mb"),
    [("", 4 * 49_000_000 * 4 / 2**20), ("decode_budget_mb = 256", 256)],
    ids=["default budget", "256 MB budget"],
)
def test_concurrent_large_images_grow_a_process_by_its_pixel_budget_at_most(
    tmp_path: Path, flat_49mp_png: Path, setting: str, budget_mb: float
) -> None:
    """Defect 9: eight edits at once of a 49-megapixel PNG of 160 kB (under media.max_pixels)
    took a server from 168 MB to 1.16 GB, each decoded at the same time (here: +1110 MB).
    Now the process grows by its pixel budget at most (default: 4 × max_pixels × 4 bytes)."""
    picture = flat_49mp_png
    out = run_python(
        f"""
        import asyncio, base64
        from tools.memory import tune_malloc
        tune_malloc()  # as retouch-mcp and retouch-bot do
        from tools.config import load_settings
        from tools.models import EditRequest
        from tools.service import Editor

        open("{tmp_path}/c.toml", "w").write(
            '[store]\\npath = "{tmp_path}/db.sqlite"\\nresults_dir = "{tmp_path}/r"\\n'
            '[media]\\nmax_pixels = 49000000\\n{setting}\\n'
        )
        settings = load_settings("{tmp_path}/c.toml")
        uri = "data:image/png;base64," + base64.b64encode(open("{picture}", "rb").read()).decode()

        def peak_mb():  # VmHWM: this process's own peak (ru_maxrss carries the parent's)
            status = open("/proc/self/status").read()
            return int(status.split("VmHWM:")[1].split()[0]) / 1024

        async def main():
            async with Editor(settings, run_worker=False) as editor:
                before = peak_mb()
                request = EditRequest(images=[uri], function="adjust", prompt="grayscale")
                tasks = await asyncio.gather(*(editor.edit_image(request) for _ in range(8)))
                print(len({{t.id for t in tasks}}), before, peak_mb())

        asyncio.run(main())
        """
    )
    count, before, peak = out.split()
    assert int(count) == 8
    grown = float(peak) - float(before)
    assert grown < budget_mb + 64, f"{before} → {peak} MB with a {budget_mb:.0f} MB budget"


def test_a_start_runs_without_the_collector_and_freezes_what_it_made() -> None:
    out = run_python(
        """
        import gc
        from tools.memory import collecting_after_start

        with collecting_after_start():
            inside = gc.isenabled()
            made = [[] for _ in range(1000)]
        print(inside, gc.isenabled(), gc.get_freeze_count() >= 1000)
        try:
            with collecting_after_start():
                raise SystemExit(2)  # a bad config: the collector is back all the same
        except SystemExit:
            pass
        print(gc.isenabled())
        gc.disable()
        with collecting_after_start():
            pass
        print(gc.isenabled())  # off it was, off it stays
        """
    )
    assert out.split() == ["False", "True", "True", "True", "False"]
