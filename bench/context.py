"""Context economy: the bytes an MCP client receives for one finished edit, and the memory of a
real ``retouch-mcp`` process over many edits.

1. One edit with a 1024×1024 PNG result (the local engine's ``adjust "brightness 1.1"`` on a
   1024² photo), through ``mcp.Client(build_server(settings))`` in memory: the
   ``edit_image`` and ``check_task`` results serialised as on the wire
   (``CallToolResult.model_dump_json(by_alias=True, exclude_none=True)``), part by part, and
   the preview the model sees. Compared with the two usual designs built from the same
   task: the full PNG inlined as base64, and no image at all (text + structured content).
2. A real ``retouch-mcp`` over stdio (``mcp.Client(StdioServerParameters(...))``): E edits
   (default 100) of a 1024² photo given as a local path (JPEG; ``--png`` for PNG), each
   followed by reading its result resource; the child's peak RSS is read from
   /proc/<pid>/status (VmHWM) before it exits.

Targets (issue #6): ≤ 113 KB per edit while still including a preview; peak RSS of the
server ≤ 100 MB over 100 edits.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import sys
import time
from typing import Any

from bench._common import (
    ROOT,
    children_of,
    data_uri,
    header,
    janitor_settled,
    median,
    parser,
    photo,
    print_table,
    settings,
    status_kb,
    verdict,
    workdir,
)

KB = 1024


def wire(result: Any) -> int:
    return len(result.model_dump_json(by_alias=True, exclude_none=True).encode())


def part_bytes(part: Any) -> int:
    return len(part.model_dump_json(by_alias=True, exclude_none=True).encode())


async def one_edit() -> None:
    from mcp import Client
    from mcp.types import CallToolResult, ImageContent, ResourceLink, TextContent
    from PIL import Image

    from server.app import build_server

    cfg = settings(workdir("context"), '[vendors.local]\nkind = "local"\nesrgan = "off"\n')
    source = photo(1024)
    server = build_server(cfg)
    async with server.settings.lifespan(server) as editor, Client(server) as client:
        await janitor_settled(editor)  # the Editor the client's session shares
        done = await client.call_tool(
            "edit_image",
            {
                "images": [data_uri(source)],
                "function": "adjust",
                "prompt": "brightness 1.1",
                "wait_seconds": 60,
            },
        )
        task = done.structured_content
        assert task and task["status"] == "succeeded", done.content
        checked = await client.call_tool("check_task", {"task_id": task["id"]})
        resource = await client.read_resource(task["results"][0]["uri"])
        full = base64.b64decode(resource.contents[0].blob)  # type: ignore[union-attr]

    text = [c for c in done.content if isinstance(c, TextContent)]
    images = [c for c in done.content if isinstance(c, ImageContent)]
    links = [c for c in done.content if isinstance(c, ResourceLink)]
    preview = images[0] if images else None
    preview_size = (0, 0)
    preview_bytes = 0
    if preview is not None:
        raw = base64.b64decode(preview.data)
        preview_bytes = len(raw)
        with Image.open(io.BytesIO(raw)) as im:
            preview_size = im.size
    structured = len(json.dumps(task, separators=(",", ":")).encode())
    total = wire(done)
    # The two usual designs, from the same task
    inline = CallToolResult(
        content=[
            *text,
            ImageContent(type="image", data=base64.b64encode(full).decode(), mime_type="image/png"),
        ],
        structured_content=task,
    )
    none = CallToolResult(content=[*text], structured_content=task)
    parts = [
        ["text (TextContent)", sum(part_bytes(t) for t in text), ""],
        [
            "preview (ImageContent, base64 JPEG)",
            sum(part_bytes(i) for i in images),
            f"{preview_size[0]}×{preview_size[1]} JPEG, {preview_bytes / KB:.1f} KB decoded",
        ],
        ["resource link(s)", sum(part_bytes(x) for x in links), f"{len(links)} link(s)"],
        ["structured content (the Task record)", structured, ""],
        ["whole edit_image result on the wire", total, ""],
        ["whole check_task result on the wire", wire(checked), "same task, asked again"],
        ["full result (resource read on demand)", len(full), "1024×1024 PNG; not in context"],
    ]
    print_table(
        ["part of one finished edit", "bytes", "note"],
        [[a, f"{b:,}", c] for a, b, c in parts],
        "What the client receives for one edit with a 1024² PNG result",
    )
    designs = [
        [
            "Retouch: preview + resource link",
            total,
            f"{preview_size[0]}×{preview_size[1]}",
            f"{total / wire(none):.2f}×",
        ],
        [
            "inline the full PNG as base64",
            wire(inline),
            "1024×1024",
            f"{wire(inline) / wire(none):.2f}×",
        ],
        ["no image at all", wire(none), "nothing", "1.00×"],
    ]
    print_table(
        ["design", "bytes per edit", "what the model sees", "vs no image"],
        [[a, f"{b:,} ({b / KB:.0f} KB)", c, d] for a, b, c, d in designs],
        "Bytes per edit by design (same task, same text and structured content)",
    )
    print_table(
        ["target", "measured", "verdict"],
        [
            [
                "≤ 113 KB per edit, with a preview",
                f"{total / KB:.1f} KB, preview {preview_size[0]}×{preview_size[1]}",
                verdict(total <= 113 * KB and preview_bytes > 0),
            ]
        ],
        "Target (context)",
    )


async def stdio_rss(edits: int, fmt: str = "JPG") -> None:
    from mcp import Client, StdioServerParameters

    folder = workdir("context-stdio")
    cfg = settings(folder, '[vendors.local]\nkind = "local"\nesrgan = "off"\n')
    image = folder / f"photo1024.{fmt.lower()}"
    image.write_bytes(photo(1024, fmt="JPEG" if fmt == "JPG" else "PNG"))
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "server", "--config", cfg.source],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
    )
    before = set(children_of(os.getpid()))
    samples: list[tuple[int, tuple[float, float, float]]] = []
    times: list[float] = []
    async with Client(params) as client:
        pids = [p for p in children_of(os.getpid()) if p not in before]
        if len(pids) != 1:
            raise RuntimeError(f"cannot tell the server's process among {pids}")
        pid = pids[0]
        rss_idle = _memory(pid)
        for i in range(edits):
            start = time.perf_counter()
            done = await client.call_tool(
                "edit_image",
                {
                    "images": [str(image)],
                    "function": "adjust",
                    "prompt": f"brightness {1 + (i % 50) / 100:.2f}",
                    "wait_seconds": 60,
                },
            )
            task = done.structured_content
            assert task and task["status"] == "succeeded", done.content
            await client.read_resource(task["results"][0]["uri"])
            times.append(time.perf_counter() - start)
            if i in (0, edits // 4, edits // 2, 3 * edits // 4, edits - 1):
                samples.append((i + 1, _memory(pid)))
        peak = status_kb(pid, "VmHWM") / 1024
    rows = [[f"after {n} edit(s)", *_mib(m)] for n, m in samples]
    rows.insert(0, ["idle, after start-up", *_mib(rss_idle)])
    rows.append(["peak (VmHWM)", f"{peak:.0f} MiB", "", ""])
    rows.append(["median edit + resource read", f"{median(times) * 1000:.0f} ms", "", ""])
    print_table(
        ["retouch-mcp over stdio", "RSS", "of which anonymous", "of which files"],
        rows,
        f"Server process memory over {edits} edits of a 1024² {fmt} (each result read back)",
    )
    print_table(
        ["target", "measured", "verdict"],
        [[f"peak RSS ≤ 100 MB over {edits} edits", f"{peak:.0f} MB", verdict(peak <= 100)]],
        "Target (memory)",
    )


def _memory(pid: int) -> tuple[float, float, float]:
    """RSS, and its anonymous and file-backed parts, in MiB. The file-backed part (the
    libraries' pages) varies from one run to the next with what the kernel maps."""
    rss, anon, files = (status_kb(pid, key) / 1024 for key in ("VmRSS", "RssAnon", "RssFile"))
    return rss, anon, files


def _mib(m: tuple[float, float, float]) -> list[str]:
    return [f"{v:.0f} MiB" for v in m]


def main(argv: list[str] | None = None) -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--edits", type=int, help="edits for the stdio RSS run (default 100)")
    p.add_argument(
        "--png",
        action="store_true",
        help="PNG input and results in the stdio run (default JPEG: a 1024² PNG result takes "
        "~0.5 s to encode, so 100 edits take over a minute)",
    )
    args = p.parse_args(argv)
    edits = args.edits or (20 if args.quick else 100)
    header("context economy (bench/context.py)", args)
    asyncio.run(one_edit())
    asyncio.run(stdio_rss(edits, "PNG" if args.png else "JPG"))


if __name__ == "__main__":
    main()
