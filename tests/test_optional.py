"""The optional-part mechanism (tests/optional.py), run by a child pytest on a tiny suite.

The child loads tests/optional.py as a plugin with ``-p``, as tests/conftest.py does with
``pytest_plugins``; its conftest adds a part "unicorn", missing when UNICORN_MISSING is set.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.optional import PARTS, REQUIRE_ENV, problem

ROOT = Path(__file__).resolve().parent.parent

CONFTEST = """
import os

from tests.optional import part


@part("unicorn")
def _unicorn():
    return os.environ.get("UNICORN_MISSING") or None
"""

SUITE = """
import pytest

from tests.optional import needs, require


@needs("unicorn")
def test_marked():
    pass


@pytest.fixture
def unicorn():
    require("unicorn")
    return "horn"


def test_through_a_fixture(unicorn):
    assert unicorn == "horn"


def test_plain():
    pass
"""

WHY = "no unicorn in this stable"


def run_suite(tmp_path: Path, require: str | None, missing: bool) -> tuple[int, str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST)
    (tmp_path / "test_suite.py").write_text(SUITE)
    env = {k: v for k, v in os.environ.items() if k not in (REQUIRE_ENV, "UNICORN_MISSING")}
    env["PYTHONPATH"] = str(ROOT)
    if require is not None:
        env[REQUIRE_ENV] = require
    if missing:
        env["UNICORN_MISSING"] = WHY
    plugins = ["-p", "tests.optional", "-p", "no:cacheprovider", "-p", "no:asyncio"]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", *plugins],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, proc.stdout + proc.stderr


def test_a_missing_part_skips_with_its_reason(tmp_path: Path) -> None:
    code, out = run_suite(tmp_path, None, missing=True)
    assert code == 0, out
    assert "1 passed, 2 skipped" in out
    assert out.count(f": {WHY}\n") == 2  # each skip's line in the -ra summary


@pytest.mark.parametrize("require", ["unicorn", "esrgan, unicorn", "all"])
def test_a_required_missing_part_is_an_error_with_the_same_reason(
    tmp_path: Path, require: str
) -> None:
    code, out = run_suite(tmp_path, require, missing=True)
    assert code == 1, out
    assert "1 passed, 2 errors" in out
    assert "ERROR test_suite.py::test_marked" in out
    assert "ERROR test_suite.py::test_through_a_fixture" in out
    assert f"{WHY} ({REQUIRE_ENV} requires unicorn)" in out


def test_a_present_part_runs_whatever_is_required(tmp_path: Path) -> None:
    code, out = run_suite(tmp_path, "unicorn", missing=False)
    assert code == 0, out
    assert "3 passed" in out and "skipped" not in out


def test_a_misspelt_requirement_stops_the_run(tmp_path: Path) -> None:
    code, out = run_suite(tmp_path, "unicron", missing=True)
    assert code == 4, out  # pytest's usage error
    assert f"{REQUIRE_ENV} names unknown parts unicron" in out and "unicorn" in out


def test_the_parts_of_this_suite() -> None:
    assert {"esrgan", "tesseract"} <= set(PARTS)
    for name in PARTS:
        why = problem(name)
        assert why is None or (isinstance(why, str) and "make " in why)
