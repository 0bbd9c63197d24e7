"""The fake DashScope (tests/fakes/dashscope.py) in its own process, driven over a pipe.

A fake in a thread of the benchmark's own process would share its GIL with Retouch and
make Retouch look slower (and its peak RSS larger) than it is; in a child process it only
shares the two cores. The wire protocol is the fake's, i.e. DashScope's own.

The child is ``BenchDashScope``: the test fake, plus one knob — a prompt containing
``dur=<seconds>`` sets that task's ``task_seconds`` (per-task durations, still the real
protocol: the prompt is just a prompt to the vendor).

    with VendorProcess(task_plan=["SUCCEEDED"]) as fake:
        fake.base_url
        fake.get("max_qps_seen", "total_queries")  -> {"max_qps_seen": 3, ...}
        fake.set(qps_limit=20)
        fake.tasks()   -> [{"task_id", "prompt", "submitted", "task_seconds", "queries",
                            "ended", "status"}, ...] in creation order
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import sys
import threading
from typing import Any

from bench._common import ROOT

KEY = "sk-bench-dashscope"
_DUR = re.compile(r"\bdur=([0-9.]+)")


class VendorProcess:
    def __init__(self, **attrs: Any) -> None:
        self.attrs = attrs
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self._lock = threading.Lock()

    def start(self) -> VendorProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._vendor", json.dumps(self.attrs)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake vendor process did not start")
        self.base_url = json.loads(line)["base_url"]
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

    def get(self, *names: str) -> dict[str, Any]:
        return self._ask({"op": "get", "names": list(names)})

    def set(self, **values: Any) -> None:
        self._ask({"op": "set", "values": values})

    def statuses(self) -> dict[str, dict[str, int]]:
        """{route: {HTTP status: requests}} of everything the fake answered."""
        return self._ask({"op": "statuses"})

    def tasks(self) -> list[dict[str, Any]]:
        return self._ask({"op": "tasks"})

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

    def __enter__(self) -> VendorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def dashscope_toml(name: str, base_url: str, **values: Any) -> str:
    """A [vendors.<name>] table for the fake, with extra settings."""
    lines = [f"[vendors.{name}]", 'kind = "dashscope"', f'api_key = "{KEY}"']
    lines.append(f'base_url = "{base_url}"')
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _child(attrs: dict[str, Any]) -> None:
    import logging

    from tests.fakes.dashscope import FakeDashScope

    logging.basicConfig(level=logging.ERROR)

    class BenchDashScope(FakeDashScope):
        async def _create(self, request: Any, rec: Any) -> Any:
            body = rec.json if isinstance(rec.json, dict) else {}
            prompt = str((body.get("input") or {}).get("prompt") or "")
            match = _DUR.search(prompt)
            # No await between this and the task's creation: the value is the task's own.
            self.task_seconds = float(match.group(1)) if match else attrs.get("task_seconds")
            return await super()._create(request, rec)

    fake = BenchDashScope(api_key=KEY)
    for key, value in attrs.items():
        setattr(fake, key, value)
    fake.start()
    print(json.dumps({"base_url": fake.base_url}), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        if op == "get":
            answer: Any = {n: getattr(fake, n) for n in msg["names"]}
        elif op == "set":
            for key, value in msg["values"].items():
                setattr(fake, key, value)
            answer = True
        elif op == "tasks":
            with fake._lock:
                tasks = list(fake.tasks.values())
                queries = dict(fake.queries)
            answer = [
                {
                    "task_id": t.task_id,
                    "prompt": t.prompt,
                    "submitted": t.submitted,
                    "task_seconds": t.task_seconds,
                    "queries": queries.get(t.task_id, 0),
                    "ended": t.ended,
                    "status": (t.final or {}).get("task_status", t.status),
                }
                for t in tasks
            ]
        elif op == "statuses":
            counts: dict[str, dict[str, int]] = {}
            for rec in fake.requests:
                by_route = counts.setdefault(rec.route, {})
                by_route[str(rec.status)] = by_route.get(str(rec.status), 0) + 1
            answer = counts
        elif op == "stop":
            print("true", flush=True)
            break
        else:
            answer = {"error": f"unknown op {op}"}
        print(json.dumps(answer, default=str), flush=True)
    fake.stop()


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
