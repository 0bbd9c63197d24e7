"""A Retouch worker process for the crash-restart chaos test: a real ``Editor`` (store,
vendors, worker, janitor) that runs until it is killed.

    python -m tests.chaos.worker --config /tmp/x/config.toml [--backoff-base 0.05]

It prints ``ready`` once the Editor has started. It never stops on its own: the test
kills it with SIGKILL at random moments and starts another.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from tools import limits
from tools.config import load_settings
from tools.service import Editor


async def run(config: str) -> None:
    settings = load_settings(config)
    async with Editor(settings):
        print("ready", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tests.chaos.worker")
    parser.add_argument("--config", required=True)
    parser.add_argument("--backoff-base", type=float, default=limits.BACKOFF_BASE_S)
    args = parser.parse_args(argv)
    limits.BACKOFF_BASE_S = args.backoff_base
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
    )
    asyncio.run(run(args.config))


if __name__ == "__main__":
    main()
