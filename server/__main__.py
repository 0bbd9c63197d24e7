"""``retouch-mcp``: run the MCP server over stdio (the default) or streamable HTTP."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from collections.abc import Callable
from typing import NoReturn

from tools.errors import ConfigError
from tools.memory import collecting_after_start, tune_malloc


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="retouch-mcp", description=__doc__)
    parser.add_argument(
        "--config",
        help="config.toml to read (default: ./config.toml; without one, data goes to the "
        "user data directory, e.g. ~/.local/share/retouch)",
    )
    parser.add_argument("--transport", choices=["stdio", "http"], help="default: mcp.transport")
    parser.add_argument("--host", help="HTTP address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default 8765)")
    parser.add_argument(
        "--stateless",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="serve HTTP without sessions, for several replicas on one store (default: "
        "mcp.stateless)",
    )
    parser.add_argument(
        "--allow-local-paths",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="accept local file paths as images (default: on for stdio, off for HTTP)",
    )
    parser.add_argument(
        "--no-worker",
        dest="worker",
        action="store_false",
        help="only queue tasks and answer: separate retouch-worker processes on the same "
        "store run the tasks (default: this process runs them too)",
    )
    return parser.parse_args(argv)


def fail(exc: ConfigError) -> NoReturn:
    """A bad configuration: one line on stderr and exit status 2, like a bad argument."""
    print(f"retouch-mcp: {exc.message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    tune_malloc()  # before any thread starts
    with collecting_after_start():  # tools/memory.py: ~50 ms of the start
        serve = prepare(parse_args(argv))
    serve()


def prepare(args: argparse.Namespace) -> Callable[[], object]:
    """Settings, logging and the server, ready to serve: what serves it, to call. Retouch's
    modules and the MCP SDK are imported here, so that :func:`main` starts them without the
    garbage collector."""
    from tools import logs
    from tools.config import load_settings
    from tools.store import check_usable

    overrides = {
        key: value
        for key, value in {
            "mcp.transport": args.transport,
            "mcp.host": args.host,
            "mcp.port": args.port,
            "mcp.stateless": args.stateless,
        }.items()
        if value is not None
    }
    try:
        settings = load_settings(args.config, overrides)
        check_usable(settings.store)  # now, not when the first client connects
    except ConfigError as exc:
        fail(exc)
    logs.configure(settings)
    from server.app import build_server

    http = settings.mcp.transport == "http"
    if not http and settings.log.format == "json":  # stdout carries the protocol
        logging.getLogger("retouch.mcp").info(settings.store.where(), extra={"event": "started"})
    elif not http:
        print(f"retouch-mcp: {settings.store.where()}", file=sys.stderr, flush=True)
    local_paths = args.allow_local_paths if args.allow_local_paths is not None else not http
    if not http:
        server = build_server(
            settings, allow_local_paths=local_paths, run_worker=args.worker, start_later=True
        )
        return functools.partial(server.run, "stdio")
    import uvicorn

    from server.connections import ConnectionLimits, GuardedH11Protocol
    from server.http import build_http_app
    from server.result_urls import ResultURLs

    try:
        urls = ResultURLs.from_settings(settings)
        mcp = build_server(
            settings, allow_local_paths=local_paths, result_urls=urls, run_worker=args.worker
        )
        app = build_http_app(mcp, settings, urls)
    except ConfigError as exc:
        fail(exc)
    cfg = settings.mcp
    url = f"http://{cfg.host}:{cfg.port}{cfg.path}"
    banner = (
        f"Retouch MCP server on {url}{' (stateless)' if cfg.stateless else ''}\n"
        f"  vendors: {', '.join(settings.enabled_vendors())}\n"
        f"  data: {settings.store.where()}\n"
        f"  upload page: {urls.base}/upload\n"
        f"  tasks: {'run here' if args.worker else 'run by retouch-worker processes'}\n"
        f"  connect: claude mcp add --transport http retouch {url}\n"
        f"       or: npx @modelcontextprotocol/inspector  (Streamable HTTP, URL above)\n"
        f"  stop with Ctrl-C"
    )
    # uvicorn's h11 protocol with header and body timeouts and a connection cap that lets
    # idle connections go first (server/connections.py says why not uvicorn's own settings).
    protocol = GuardedH11Protocol.with_limits(ConnectionLimits.from_settings(settings))
    serve = {"host": cfg.host, "port": cfg.port, "log_level": "warning", "http": protocol}
    if settings.log.format == "json":  # every line of stderr one JSON object
        logging.getLogger("retouch.mcp").info(banner, extra={"event": "started"})
        # uvicorn's loggers then reach the root's JSON handler instead of its own format
        return functools.partial(uvicorn.run, app, **serve, log_config=None)
    print(banner, file=sys.stderr, flush=True)
    return functools.partial(uvicorn.run, app, **serve)


if __name__ == "__main__":
    main()
