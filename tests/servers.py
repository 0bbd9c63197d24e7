"""Real server processes for end-to-end tests: ``python -m server --transport http`` started
from this checkout, waited for until ``/health`` answers, and stopped afterwards."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env() -> dict[str, str]:
    """The environment a child process needs to import this checkout's code."""
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def start_http_server(
    config: str | Path,
    *args: str,
    variables: Mapping[str, str] | None = None,
    output: int | IO[bytes] = subprocess.PIPE,
) -> subprocess.Popen[bytes]:
    """Start ``python -m server --config CONFIG --transport http ARGS…`` (not waited for)."""
    return subprocess.Popen(
        [sys.executable, "-m", "server", "--config", str(config), "--transport", "http", *args],
        env=dict(variables) if variables is not None else env(),
        cwd=str(ROOT),
        stdout=output,
        stderr=subprocess.STDOUT,
    )


def wait_healthy(proc: subprocess.Popen[bytes], base: str, seconds: float = 20.0) -> None:
    """Return once ``BASE/health`` answers 200; fail with the server's output if it exits or
    never answers."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base}/health", timeout=0.5).status_code == 200:
                return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    output = proc.communicate()[0]
    raise AssertionError((output or b"").decode(errors="replace")[-4000:] or "no answer")


@contextlib.contextmanager
def http_server(
    config: str | Path,
    port: int,
    *args: str,
    variables: Mapping[str, str] | None = None,
    output: int | IO[bytes] = subprocess.PIPE,
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A running HTTP server on 127.0.0.1:PORT: yields its base URL and process, and stops it
    (SIGTERM, then waits) on the way out."""
    proc = start_http_server(config, *args, variables=variables, output=output)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, base)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
