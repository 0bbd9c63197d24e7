"""A fake server in a child process of its own, driven over a pipe with JSON lines.

The parent side (``ChildProcess``) starts ``python -m <module> <options>``, reads the one
line of JSON the child prints once it listens, then asks it questions (``_ask``) and stops
it. The child side (``serve``) answers each ``{"op": …}`` line with the handler of that op.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, Self

from bench._common import ROOT


class ChildProcess:
    module = ""  # what ``python -m`` runs: it calls ``serve`` at the end

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}
        self._lock = threading.Lock()

    def options(self) -> dict[str, Any]:
        return {}

    def start(self) -> Self:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, json.dumps(self.options())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"{self.module} did not start")
        self.info = json.loads(line)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _ask(self, message: dict[str, Any]) -> Any:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        with self._lock:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            self._ask({"op": "stop"})
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(info: dict[str, Any], ops: dict[str, Callable[[dict[str, Any]], Any]]) -> None:
    """The child's side: announce ``info``, then answer ops from stdin until "stop"."""
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        message = json.loads(line)
        op = message["op"]
        if op == "stop":
            print("true", flush=True)
            return
        handler = ops.get(op)
        answer = handler(message) if handler else {"error": f"unknown op {op}"}
        print(json.dumps(answer, default=str), flush=True)
