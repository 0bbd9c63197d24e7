"""Other MCP image servers beside Retouch in ``bench/stdio.py`` (``--compare``).

Each server gets its own tool, arguments and environment: a ``--compare-tool``,
``--compare-args`` or ``--compare-env`` prefixed with ``LABEL=`` (tool, arguments) or
``LABEL:`` (``LABEL:KEY=VALUE``) is for that server alone, one without a prefix is for all;
in a value, ``{openai_url}`` is the fake OpenAI's base URL (``http://127.0.0.1:PORT/v1``), for
a server that reads it from a variable of its own.
Each runs in its own scratch folder (a server that writes ``./storage`` or reads ``./.env``
finds its own, never the Retouch checkout). Their code is never part of Retouch.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bench._common import median, percentile, print_table, workdir
from bench._vendor import OPENAI_KEY


@dataclass
class Other:
    """One other server: how to launch and call it, and what it measured."""

    label: str
    params: Any  # StdioServerParameters
    tool: str
    arguments: dict[str, Any]
    client: Any = None
    pid: int = 0
    times: list[float] = field(default_factory=list)
    cpu: float = 0.0  # seconds of the server's CPU over the timed calls
    startup: dict[str, float] = field(default_factory=dict)
    idle: float = 0.0
    peak: float = 0.0
    result: str = ""  # what a call returns, block by block
    result_bytes: int = 0
    failed: str = ""  # why the first call failed: the server is then timed no further
    errlog: TextIO | None = None  # the server's stderr, in its scratch folder

    async def call(self) -> Any:
        result = await self.client.call_tool(self.tool, self.arguments)
        if result.is_error:
            text = " ".join(str(getattr(b, "text", b)) for b in result.content)
            raise RuntimeError(text)
        return result

    async def warm_up(self) -> None:
        """The first call, which says what a result holds, or why calls fail."""
        try:
            self.result, self.result_bytes = describe(await self.call())
        except Exception as e:  # a broken server is reported, not fatal
            self.failed = f"FAILED: {e}"[:240]


def _split_label(value: str, sep: str, labels: set[str]) -> tuple[str | None, str]:
    head, found, rest = value.partition(sep)
    if found and head in labels:
        return head, rest
    return None, value


def others(
    specs: list[str],
    tools: list[str],
    arguments: list[str],
    envs: list[str],
    path: str,
    fake_url: str,
) -> list[Other]:
    """The servers of ``--compare``, each with its own tool, arguments and environment."""
    from mcp import StdioServerParameters

    pairs = [spec.partition("=")[::2] for spec in specs]
    labels = {label for label, _ in pairs}
    if len(labels) != len(pairs) or "" in labels:
        raise SystemExit("--compare takes LABEL=COMMAND, each LABEL once")
    tool: dict[str | None, str] = {None: "edit_image"}
    for value in tools:
        label, name = _split_label(value, "=", labels)
        tool[label] = name
    args: dict[str | None, str] = {}
    for value in arguments:
        label, text = _split_label(value, "=", labels)
        args[label] = text
    env: dict[str | None, dict[str, str]] = {}
    for value in envs:
        label, pair = _split_label(value, ":", labels)
        key, found, setting = pair.partition("=")
        if not found:
            raise SystemExit(f"--compare-env takes [LABEL:]KEY=VALUE, not {value!r}")
        env.setdefault(label, {})[key] = setting.replace("{openai_url}", f"{fake_url}/v1")
    uri = "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()
    result = []
    for label, command in pairs:
        argv = shlex.split(command)
        text = args.get(
            label, args.get(None, '{"image": "{image}", "prompt": "make the sky purple"}')
        )
        text = text.replace("{image}", path).replace("{image_data}", uri)
        environ = {
            **os.environ,
            "OPENAI_BASE_URL": f"{fake_url}/v1",
            "OPENAI_API_KEY": OPENAI_KEY,
            **env.get(None, {}),
            **env.get(label, {}),
        }
        folder = workdir(f"compare-{label}")
        params = StdioServerParameters(command=argv[0], args=argv[1:], env=environ, cwd=str(folder))
        other = Other(label, params, tool.get(label, tool[None]), json.loads(text))
        other.errlog = (folder / "stderr.log").open("a", encoding="utf-8")
        result.append(other)
    return result


def describe(result: Any) -> tuple[str, int]:
    """What a tool result holds, block by block (what the client hands the model), and the
    size of the whole result as JSON."""
    parts = []
    for block in result.content:
        payload = getattr(block, "text", None) or getattr(block, "data", None)
        if payload is None:
            payload = block.model_dump_json(by_alias=True, exclude_none=True)
        parts.append(f"{block.type} {_size(len(payload))}")
    if result.structured_content is not None:
        parts.append(f"structured {_size(len(json.dumps(result.structured_content)))}")
    whole = len(result.model_dump_json(by_alias=True, exclude_none=True))
    return " + ".join(parts), whole


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def report(rows: list[list[Any]], others: list[Other]) -> None:
    print_table(
        [
            "server",
            "p50 ms",
            "p90 ms",
            "added p50",
            "CPU/call ms",
            "start-up wall / CPU ms",
            "idle MiB",
            "peak MiB",
            "result bytes",
            "the result, block by block",
        ],
        rows,
        "Side by side against the same fake OpenAI, per call over stdio, interleaved in one run "
        "(added: p50 minus the raw call's; CPU: the server process's user + system time)",
    )
    for other in others:
        if other.errlog is not None:
            other.errlog.close()
            print(f"{other.label}: its stderr in {other.errlog.name}")
    print(flush=True)


def row(
    label: str,
    times: list[float],
    raw50: float,
    cpu: float,
    startup: dict[str, float],
    idle: float,
    peak: float,
    result: tuple[str, int],
) -> list[Any]:
    nan = float("nan")
    p50 = median(times) * 1000 if times else nan
    return [
        label,
        p50,
        percentile(times, 90) * 1000 if times else nan,
        p50 - raw50,
        cpu / len(times) * 1000 if times else nan,
        f"{startup['wall']:.0f} / {startup['cpu']:.0f}",
        idle,
        peak,
        result[1],
        result[0],
    ]
