"""``retouch``: edit images from the shell, and look at tasks and functions.

retouch edit photo.jpg --function stylization_all --prompt "oil painting" --out edited/
retouch task <id>          retouch tasks          retouch functions
retouch upload photo.jpg --server https://retouch.example.com   (prints retouch://uploads/<id>)
retouch users list|add NAME|revoke NAME|budget NAME [--day 5 CNY] [--per-hour 20] ...
retouch migrate-store --from sqlite:///srv/retouch/retouch.db --to postgresql://…   (moving house)
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
from pydantic import ValidationError

from tools import budgets, catalog
from tools.config import Settings, load_settings
from tools.errors import ImageError, InvalidParameter, RetouchError, StorageError
from tools.media import EXTENSIONS
from tools.models import LOCAL_OWNER, Budget, BudgetLimits, EditRequest, Task
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
        type=option,
        metavar="KEY=VALUE",
        help="vendor-specific option, e.g. method=fsr",
    )
    edit.add_argument("--out", default=".", help="folder for the results (default: here)")
    edit.add_argument(
        "--timeout", type=seconds, default=900, help="seconds to wait for the result (900)"
    )
    edit.add_argument("--json", action="store_true", help="print the task record as JSON")
    edit.set_defaults(usage=edit)

    task = sub.add_parser("task", help="show one task")
    task.add_argument("task_id")
    task.add_argument("--json", action="store_true")
    tasks = sub.add_parser("tasks", help="list recent tasks")
    tasks.add_argument("--limit", type=count, default=20, help="how many (1-1000; 20)")
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

    users = sub.add_parser("users", help="HTTP users and owners' budgets")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    users_sub.add_parser("list", help="every user: where it is from, its state, today's use")
    add = users_sub.add_parser("add", help="add a user; prints its token, this once only")
    add.add_argument("name")
    revoke = users_sub.add_parser("revoke", help="refuse a user's token from now on")
    revoke.add_argument("name")
    budget = users_sub.add_parser("budget", help="show an owner's budget, or set its limits")
    budget.add_argument("name", help="a user, local, or another front end's owner")
    for period in ("day", "month"):
        budget.add_argument(
            f"--{period}",
            nargs=2,
            action="append",
            default=[],
            metavar=("AMOUNT", "CURRENCY"),
            help=f"most the owner's tasks may cost a {period} (UTC), per currency",
        )
    budget.add_argument("--per-hour", type=int, dest="edits_per_hour", help="edits an hour")
    budget.add_argument("--concurrent", type=int, help="edits queued or running at once")
    budget.add_argument(
        "--clear", action="store_true", help="forget the limits set here (the config's apply)"
    )

    move = sub.add_parser(
        "migrate-store",
        help="copy a SQLite store (tasks, images, bot state) into PostgreSQL",
        description="Copy tasks, images and the front ends' state from a SQLite store into "
        "PostgreSQL. Safe to run again: it finishes a move cut short and copies nothing twice.",
    )
    move.add_argument(
        "--from", dest="source", help="sqlite:///path/to/retouch.db (default: store.path)"
    )
    move.add_argument("--to", dest="target", help="postgresql://… (default: store.url)")
    move.add_argument(
        "--from-blobs",
        dest="source_blobs",
        help="the source's images folder (default: store.results_dir for store.path, else "
        "results/ beside the database)",
    )
    move.add_argument(
        "--to-blobs",
        dest="target_blobs",
        help="a folder or s3://bucket/prefix (default: store.blobs, else store.results_dir)",
    )
    move.add_argument("--batch", type=int, default=500, help="rows per statement (default 500)")
    return p


#: The environment variable ``retouch upload`` reads its token from.
TOKEN_ENV = "RETOUCH_TOKEN"


def option(text: str) -> tuple[str, str]:
    """``--option KEY=VALUE`` as a pair."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, e.g. method=fsr; got {text!r}")
    return key.strip(), value


def seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 86400:  # NaN fails too
        raise argparse.ArgumentTypeError(f"a number of seconds from 0 to 86400, not {text}")
    return value


def count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1000:
        raise argparse.ArgumentTypeError(f"a number from 1 to 1000, not {text}")
    return value


#: EditRequest's fields → the arguments that set them, for usage errors.
FLAGS = {
    "images": "images",
    "prompt": "--prompt",
    "function": "--function",
    "vendor": "--vendor",
    "n": "-n",
    "mask": "--mask",
    "seed": "--seed",
    "upscale_factor": "--upscale",
    "watermark": "--watermark",
    "options": "--option",
}


def edit_request(args: argparse.Namespace) -> EditRequest:
    """The request ``retouch edit`` makes, checked by the model the MCP tool uses (so each
    limit is written once); a usage error (exit status 2) when it breaks one."""
    usage: argparse.ArgumentParser = args.usage
    try:
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
            options=dict(args.option),
        )
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            problems.append(
                f"{FLAGS.get(field, field)}: {err['msg'].removeprefix('Value error, ')}"
            )
        usage.error("; ".join(problems))
    problem = out_problem(Path(args.out))
    if problem:
        usage.error(f"--out: {problem}")
    return request


def out_problem(out: Path) -> str | None:
    """Why the results could not be written into ``out``, found before the edit runs."""
    existing = next((p for p in (out, *out.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        made = "" if existing == out else f", so {out} cannot be made"
        return f"{existing} is a file{made}; name a folder for the results"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing}"
    return None


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.command == "edit":
            args.request = edit_request(args)
            catalog.validate(args.request)  # before the Editor starts: nothing is sent yet
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
    if args.command == "migrate-store":
        return await migrate_store(settings, args)
    worker = args.command == "edit"
    async with Editor(settings, allow_local_paths=True, run_worker=worker) as editor:
        if args.command == "edit":
            return await edit(editor, args)
        if args.command == "users":
            return await users(editor, args)
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


async def migrate_store(settings: Settings, args: argparse.Namespace) -> int:
    from tools.store.moving import migrate_store

    summary = await migrate_store(
        settings.store,
        source=args.source,
        target=args.target,
        source_blobs=args.source_blobs,
        target_blobs=args.target_blobs,
        batch=max(args.batch, 1),
    )
    print(summary.describe(), file=sys.stderr)
    return 0


async def edit(editor: Editor, args: argparse.Namespace) -> int:
    request: EditRequest = args.request
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
    for result in task.results:
        data, mime = await editor.result(task.id, result.index, owner=LOCAL_OWNER)
        dest = out / f"{task.id[:8]}-{result.index}.{EXTENSIONS.get(mime, 'bin')}"
        try:
            await asyncio.to_thread(write_result, dest, data)
        except OSError as exc:
            raise StorageError(
                f"cannot write {dest}: {exc.strerror or exc}; the results stay in the store"
                f" (retouch task {task.id})"
            ) from None
        print(dest)
    if args.json:
        print(json.dumps(task.model_dump(mode="json"), indent=2))
    else:
        print(describe(task), file=sys.stderr)
    return 0 if task.status.value == "succeeded" else 1


async def users(editor: Editor, args: argparse.Namespace) -> int:
    """``retouch users …``: what the console does, from a terminal."""
    if args.users_command == "list":
        for user in await editor.users.list():
            state = "active" if user.active else "revoked"
            created = f"{user.created_at:%Y-%m-%d %H:%M}" if user.created_at else "-"
            spent = (await editor.budget(user.name)).day
            today = ", ".join(f"{budgets.amount(s.used + s.pending)} {c}" for c, s in spent.items())
            print(f"{user.name:<24} {user.source:<6} {state:<7} {created:<16} {today or '-'}")
    elif args.users_command == "add":
        user, token = await editor.users.add(args.name)
        print(
            f"user {user.name} added; its token, shown this once (only its SHA-256 is kept):",
            file=sys.stderr,
        )
        print(token)
    elif args.users_command == "revoke":
        user = await editor.users.revoke(args.name)
        print(f"user {user.name} revoked: its token is refused within a few seconds")
    else:
        print(describe_budget(await set_budget(editor, args)))
    return 0


async def set_budget(editor: Editor, args: argparse.Namespace) -> Budget:
    """The owner's budget, after setting the limits the arguments give (if any) over the
    ones set here before (none with ``--clear``)."""
    costs: dict[str, dict[str, str]] = {"day": {}, "month": {}}
    for period, given in costs.items():
        for first, second in getattr(args, period):
            amount, currency = (second, first) if _is_number(second) else (first, second)
            given[currency.upper()] = amount
    counts = {k: getattr(args, k) for k in ("edits_per_hour", "concurrent")}
    counts = {k: v for k, v in counts.items() if v is not None}
    if not any(costs.values()) and not counts and not args.clear:
        return await editor.budget(args.name)
    before = None if args.clear else await editor.budget_override(args.name)
    data = before.model_dump() if before else {}
    for period, given in costs.items():
        data[period] = {**data.get(period, {}), **given}
    try:
        limits = BudgetLimits.model_validate({**data, **counts})
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = {"edits_per_hour": "per-hour"}.get(str(err["loc"][0]), str(err["loc"][0]))
        message = err["msg"].removeprefix("Value error, ")
        raise InvalidParameter(f"--{flag}: {message}") from None
    return await editor.set_budget(args.name, limits)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def describe_budget(budget: Budget) -> str:
    return "\n".join(
        [
            f"budget of {budget.owner}:",
            f"  today (UTC):     {budgets.describe_costs(budget.day)};"
            f" starts again {budget.day_resets_at:%Y-%m-%d %H:%M} UTC",
            f"  this month:      {budgets.describe_costs(budget.month)};"
            f" starts again {budget.month_resets_at:%Y-%m-%d} UTC",
            f"  edits last hour: {budgets.of(budget.edits_last_hour, budget.edits_per_hour)}",
            f"  at once:         {budgets.of(budget.active, budget.concurrent)}",
        ]
    )


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


def write_result(dest: Path, data: bytes) -> None:
    """Write a result whole or not at all (a full disk leaves no partial file)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


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


if __name__ == "__main__":
    main()
