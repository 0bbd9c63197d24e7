"""``retouch-worker`` (or ``python -m tools.worker``): a process that only runs tasks.

    retouch-worker [--config config.toml]

Start any number, on any machine, with the same config as the front ends (the same store):
each claims queued tasks from the store and drives them to their end, within the vendors'
account-wide limits that the store keeps for all of them, and cleans the store up hourly.
SIGTERM or Ctrl-C stops it at once and hands its tasks back for another process to take.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from tools import logs, telemetry
from tools.config import Settings, load_settings
from tools.errors import ConfigError
from tools.memory import tune_malloc
from tools.service import Editor
from tools.store import check_usable

log = logging.getLogger("retouch.worker")
#: Text lines name the process: several workers often write to one journal.
WORKER_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="retouch-worker", description="Run Retouch's tasks (no front end)."
    )
    parser.add_argument(
        "--config",
        help="config.toml to read (default: $RETOUCH_CONFIG or ./config.toml): the same as "
        "the front ends', so that all use one store",
    )
    return parser.parse_args(argv)


async def run(settings: Settings) -> None:
    """Run a worker until SIGTERM or SIGINT, then hand its tasks back."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Editor(settings, run_worker=True) as editor:
        assert editor.worker is not None
        exporter = None
        port = settings.worker.metrics_port
        if port is not None:
            exporter = telemetry.serve(
                settings.metrics.host,
                port,
                view=editor.metrics_view,
                token=settings.metrics.token.get_secret_value(),
            )
        banner = (
            f"retouch-worker {editor.worker.id}: {settings.store.where()}; "
            f"vendors: {', '.join(editor.vendors)}"
            + (f"; metrics on {settings.metrics.host}:{exporter.port}" if exporter else "")
        )
        if settings.log.format == "json":
            log.info(banner, extra={"event": "started"})
        else:
            print(banner, file=sys.stderr, flush=True)
        try:
            await stop.wait()
        finally:
            if exporter is not None:
                exporter.close()
        log.info("stopping: handing %d tasks back", len(editor.worker.running))


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # before any thread starts
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
        check_usable(settings.store)
        telemetry.check_exporter(settings, settings.worker.metrics_port, "worker.metrics_port")
    except ConfigError as exc:
        print(f"retouch-worker: {exc.message}", file=sys.stderr)
        return 2
    logs.configure(settings, text_format=WORKER_FORMAT)
    try:
        asyncio.run(run(settings))
    except ConfigError as exc:  # the metrics port is taken
        print(f"retouch-worker: {exc.message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
