"""A fake vendor (tests/fakes/) in its own process, driven over a pipe: DashScope by default,
or OpenAI's ``/v1/images/edits`` (``kind="openai"``).

A fake in a thread of the benchmark's own process would share its GIL with Retouch and
make Retouch look slower (and its peak RSS larger) than it is; in a child process it only
shares the two cores. The wire protocol is the fake's, i.e. DashScope's own.

The DashScope child is ``BenchDashScope``: the test fake, plus one knob — a prompt containing
``dur=<seconds>`` sets that task's ``task_seconds`` (per-task durations, still the real
protocol: the prompt is just a prompt to the vendor). ``instant=True`` (either kind) answers
with a real photo rendered once per size and format instead of drawing each result, so the
fake's own work per call is parsing the request and sending the answer.

    with VendorProcess(task_plan=["SUCCEEDED"]) as fake:
        fake.base_url
        fake.get("max_qps_seen", "total_queries")  -> {"max_qps_seen": 3, ...}
        fake.set(qps_limit=20)
        fake.tasks()   -> [{"task_id", "prompt", "submitted", "task_seconds", "queries",
                            "ended", "status"}, ...] in creation order
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any

from bench._child import ChildProcess, serve

KEY = "sk-bench-dashscope"
OPENAI_KEY = "sk-bench-openai"
_DUR = re.compile(r"\bdur=([0-9.]+)")


class VendorProcess(ChildProcess):
    module = "bench._vendor"

    def __init__(self, **attrs: Any) -> None:
        super().__init__()
        self.attrs = attrs

    def options(self) -> dict[str, Any]:
        return self.attrs

    @property
    def base_url(self) -> str:
        return str(self.info.get("base_url", ""))

    def get(self, *names: str) -> dict[str, Any]:
        return self._ask({"op": "get", "names": list(names)})

    def set(self, **values: Any) -> None:
        self._ask({"op": "set", "values": values})

    def statuses(self) -> dict[str, dict[str, int]]:
        """{route: {HTTP status: requests}} of everything the fake answered."""
        return self._ask({"op": "statuses"})

    def tasks(self) -> list[dict[str, Any]]:
        return self._ask({"op": "tasks"})


def dashscope_toml(name: str, base_url: str, **values: Any) -> str:
    """A [vendors.<name>] table for the fake, with extra settings."""
    lines = [f"[vendors.{name}]", 'kind = "dashscope"', f'api_key = "{KEY}"']
    lines.append(f'base_url = "{base_url}"')
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def openai_toml(name: str, base_url: str, **values: Any) -> str:
    """A [vendors.<name>] table of kind openai for the fake OpenAI."""
    lines = [f"[vendors.{name}]", 'kind = "openai"', f'api_key = "{OPENAI_KEY}"']
    lines.append(f'base_url = "{base_url}/v1"')
    for key, value in values.items():
        lines.append(f"{key} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"


def _instant_results() -> None:
    """Every fake renders results through ``render_result``: make it a cached real photo."""
    import functools

    import tests.fakes.dashscope
    import tests.fakes.openai
    from bench._common import photo

    @functools.cache
    def rendered(size: tuple[int, int], fmt: str) -> bytes:
        return photo(size, fmt="JPEG" if fmt.upper() in ("JPEG", "JPG") else fmt.upper())

    def render(source: Any, size: tuple[int, int], *, fmt: str = "PNG", **_: Any) -> bytes:
        return rendered((int(size[0]), int(size[1])), fmt)

    tests.fakes.openai.render_result = render  # type: ignore[assignment]
    tests.fakes.dashscope.render_result = render  # type: ignore[assignment]


def _child(attrs: dict[str, Any]) -> None:
    import logging

    from tests.fakes.dashscope import FakeDashScope

    logging.basicConfig(level=logging.ERROR)
    kind = attrs.pop("kind", "dashscope")
    if attrs.pop("instant", False):
        _instant_results()
    if kind == "openai":
        from tests.fakes.openai import FakeOpenAI

        openai = FakeOpenAI(api_key=OPENAI_KEY)
        openai.start()
        serve(
            {"base_url": openai.base_url},
            {"get": lambda m: {n: getattr(openai, n) for n in m["names"]}},
        )
        openai.stop()
        return

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

    def get(msg: dict[str, Any]) -> Any:
        return {n: getattr(fake, n) for n in msg["names"]}

    def set_(msg: dict[str, Any]) -> Any:
        for key, value in msg["values"].items():
            setattr(fake, key, value)
        return True

    def tasks(msg: dict[str, Any]) -> Any:
        with fake._lock:
            known = list(fake.tasks.values())
            queries = dict(fake.queries)
        return [
            {
                "task_id": t.task_id,
                "prompt": t.prompt,
                "submitted": t.submitted,
                "task_seconds": t.task_seconds,
                "queries": queries.get(t.task_id, 0),
                "ended": t.ended,
                "status": (t.final or {}).get("task_status", t.status),
            }
            for t in known
        ]

    def statuses(msg: dict[str, Any]) -> Any:
        counts: dict[str, dict[str, int]] = {}
        for rec in fake.requests:
            by_route = counts.setdefault(rec.route, {})
            by_route[str(rec.status)] = by_route.get(str(rec.status), 0) + 1
        return counts

    ops = {"get": get, "set": set_, "tasks": tasks, "statuses": statuses}
    serve({"base_url": fake.base_url}, ops)
    fake.stop()


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
