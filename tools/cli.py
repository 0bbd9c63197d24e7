"""``retouch``: edit images from the shell, and look at tasks and functions.

retouch edit photo.jpg --function stylization_all --prompt "oil painting" --out edited/
retouch task <id>          retouch tasks          retouch functions
retouch upload photo.jpg --server https://retouch.example.com   (prints retouch://uploads/<id>)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import os
import sys
from pathlib import Path

import httpx

from tools.config import Settings, load_settings
from tools.errors import ImageError, RetouchError
from tools.media import EXTENSIONS
from tools.models import LOCAL_OWNER, EditRequest, Task
from tools.service import Editor


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="retouch", description="Edit images with words.")
    p.add_argument("--config", help="config.toml to read (default: ./config.toml)")
    sub = p.add_subparsers(dest="command", required=True)

    edit = sub.add_parser("edit", help="edit images and wait for the result")
    edit.add_argument("images", nargs="+", help="paths, URLs or retouch:// results")
    edit.add_argument("--prompt", "-p", default="")
    edit.add_argument("--function", "-f", default="edit")
    edit.add_argument("--vendor")
    edit.add_argument("-n", type=int, default=1)
    edit.add_argument("--mask")
    edit.add_argument("--seed", type=int)
    edit.add_argument("--upscale", type=int, dest="upscale_factor")
    edit.add_argument("--watermark", help="text to stamp on the result")
    edit.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="vendor-specific option, e.g. method=fsr",
    )
    edit.add_argument("--out", default=".", help="folder for the results (default: here)")
    edit.add_argument("--timeout", type=float, default=900)
    edit.add_argument("--json", action="store_true", help="print the task record as JSON")

    task = sub.add_parser("task", help="show one task")
    task.add_argument("task_id")
    task.add_argument("--json", action="store_true")
    tasks = sub.add_parser("tasks", help="list recent tasks")
    tasks.add_argument("--limit", type=int, default=20)
    functions = sub.add_parser("functions", help="list the editing functions")
    functions.add_argument("--vendor")

    upload = sub.add_parser("upload", help="upload an image to a Retouch HTTP server")
    upload.add_argument("file", help="the image to upload")
    upload.add_argument(
        "--server", help="the server's base URL (default: mcp.public_url, else mcp.host:port)"
    )
    upload.add_argument(
        "--token", help=f"bearer token (default: ${TOKEN_ENV}, else mcp.auth_token)"
    )
    upload.add_argument("--json", action="store_true", help="print the whole answer as JSON")
    return p


#: The environment variable ``retouch upload`` reads its token from.
TOKEN_ENV = "RETOUCH_TOKEN"


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        code = asyncio.run(run(args))
    except RetouchError as exc:
        print(f"retouch: {exc.message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


async def run(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.command == "upload":
        return await asyncio.to_thread(upload, settings, args)
    worker = args.command == "edit"
    async with Editor(settings, allow_local_paths=True, run_worker=worker) as editor:
        if args.command == "edit":
            return await edit(editor, args)
        if args.command == "task":
            task = await editor.check_task(args.task_id, owner=LOCAL_OWNER)
            print(task.model_dump_json(indent=2) if args.json else describe(task))
        elif args.command == "tasks":
            for t in await editor.list_tasks(owner=LOCAL_OWNER, limit=args.limit):
                cost = f" {t.cost} {t.currency}" if t.cost is not None else ""
                print(
                    f"{t.id}  {t.status.value:<9} {t.function:<22} {t.vendor:<10}"
                    f" {t.created_at:%Y-%m-%d %H:%M}{cost}"
                )
        else:
            for f in editor.list_functions(args.vendor):
                who = ", ".join(f.vendors) or "no enabled vendor"
                print(f"{f.name:<28} {who}\n    {f.summary}")
    return 0


async def edit(editor: Editor, args: argparse.Namespace) -> int:
    options = dict(item.split("=", 1) for item in args.option)
    request = EditRequest(
        images=args.images,
        prompt=args.prompt,
        function=args.function,
        vendor=args.vendor,
        n=args.n,
        mask=args.mask,
        seed=args.seed,
        upscale_factor=args.upscale_factor,
        watermark=args.watermark,
        options=options,
    )
    tty = sys.stderr.isatty()

    async def show(task: Task) -> None:
        line = f"{task.status.value}: {task.progress or ''}"
        print(f"\r\033[K{line}" if tty else line, end="" if tty else "\n", file=sys.stderr)

    task = await editor.edit_image(request, owner=LOCAL_OWNER)
    print(f"task {task.id} queued with {task.vendor}", file=sys.stderr)
    print(f"retouch: {editor.settings.store.where()}", file=sys.stderr)
    task = await editor.check_task(task.id, args.timeout, on_progress=show, owner=LOCAL_OWNER)
    if tty:
        print(file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for result in task.results:
        data, mime = await editor.result(task.id, result.index, owner=LOCAL_OWNER)
        dest = out / f"{task.id[:8]}-{result.index}.{EXTENSIONS.get(mime, 'bin')}"
        await asyncio.to_thread(dest.write_bytes, data)
        print(dest)
    if args.json:
        print(json.dumps(task.model_dump(mode="json"), indent=2))
    else:
        print(describe(task), file=sys.stderr)
    return 0 if task.status.value == "succeeded" else 1


def upload(settings: Settings, args: argparse.Namespace) -> int:
    """POST a file to a server's /uploads and print what it answers."""
    cfg = settings.mcp
    server = (args.server or cfg.public_url or f"http://{cfg.host}:{cfg.port}").rstrip("/")
    token = args.token or os.environ.get(TOKEN_ENV) or cfg.auth_token.get_secret_value()
    path = Path(args.file)
    if not path.is_file():
        raise ImageError(f"no file at {args.file}")
    mime = mimetypes.guess_type(path.name)[0] or ""
    headers = {"Content-Type": mime if mime.startswith("image/") else "application/octet-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        with path.open("rb") as body:
            answer = httpx.post(f"{server}/uploads", content=body, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        print(f"retouch: cannot reach {server}: {type(exc).__name__}", file=sys.stderr)
        return 2
    try:
        data = answer.json()
    except ValueError:
        data = {"message": f"HTTP {answer.status_code}"}
    if answer.status_code != 201:
        print(
            f"retouch: upload refused: {data.get('message', answer.status_code)}", file=sys.stderr
        )
        return 2
    print(json.dumps(data, indent=2) if args.json else data["uri"])
    return 0


def describe(task: Task) -> str:
    lines = [f"task {task.id}: {task.status.value} — {task.function} with {task.vendor}"]
    lines += [f"  result {r.index}: {r.uri} ({r.width}×{r.height})" for r in task.results]
    lines += [f"  image {f.index} failed: {f.message} [{f.code}]" for f in task.failures]
    if task.error:
        lines.append(f"  error [{task.error.code}]: {task.error.message}")
    if task.cost is not None:
        lines.append(f"  cost: {task.cost} {task.currency or ''} ({task.billed_images} billed)")
    lines += [f"  note: {n}" for n in task.notes]
    return "\n".join(lines)
