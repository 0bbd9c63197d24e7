"""Shared fixtures: settings in a temporary folder, an Editor on them, sample photos.

The optional parts some tests need (``@needs("esrgan")``) are in :mod:`tests.optional`; the
S3 server some tests run against (``s3_server``) is in :mod:`tests.s3server`.
"""

from __future__ import annotations

import base64
import concurrent.futures.thread
import io
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from PIL import Image

from tools.config import Settings, load_settings
from tools.service import Editor

pytest_plugins = ["tests.optional", "tests.pg", "tests.s3server"]

DATA = Path(__file__).parent / "data"


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def png(
    size: tuple[int, int] = (64, 48), color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB"
) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, "PNG")
    return buf.getvalue()


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


MakeSettings = Callable[..., Settings]


@pytest.fixture(scope="session", autouse=True)
def private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """HOME and XDG_DATA_HOME in a temporary folder: no test writes into the real home."""
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
        yield home


@pytest.fixture
def make_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> MakeSettings:
    """Settings from a config.toml written into tmp_path (the real file path is used)."""
    for var in ("RETOUCH_CONFIG", "DASHSCOPE_API_KEY", "OPENAI_API_KEY", "TELEGRAM_BOT_TOKEN"):
        monkeypatch.delenv(var, raising=False)

    def make(toml: str = "", name: str = "config.toml") -> Settings:
        body = (
            '[store]\npath = "retouch.db"\nresults_dir = "results"\n'
            "[worker]\nidle_poll_s = 0.05\n" + toml
        )
        path = tmp_path / name
        path.write_text(body, encoding="utf-8")
        return load_settings(path)

    return make


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    return make_settings()


@pytest.fixture
async def editor(settings: Settings) -> AsyncIterator[Editor]:
    async with Editor(settings, allow_local_paths=True) as running:
        yield running


# ---- a thread left running is a failure, not a hang ----------------------------------------


_exit_status = 0


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    """A non-daemon thread still running when the tests end (an aiosqlite connection never
    closed, say) would keep the process from exiting: CI would hang instead of failing. Name
    the threads and end the run as failed (after pytest's own summary)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _running_threads():
        time.sleep(0.1)
    if left := _running_threads():
        names = ", ".join(t.name for t in left)
        sys.stdout.flush()
        sys.stderr.write(f"\nthreads left running after the tests (a leak): {names}\n")
        sys.stderr.flush()
        os._exit(_exit_status or 1)


def _running_threads() -> list[threading.Thread]:
    """Non-daemon threads but the main one and thread pools' workers (which the interpreter
    stops and joins as it exits)."""
    return [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread()
        and not t.daemon
        and t.is_alive()
        and getattr(t, "_target", None) is not concurrent.futures.thread._worker
    ]
