"""``retouch-bot`` (or ``python -m bots``): run the Telegram bot.

    retouch-bot [--config config.toml] [--host 0.0.0.0 --port 8443] [--no-worker]

Long polling by default; webhook mode when ``telegram.webhook_url`` is set (``--host`` and
``--port`` say where to listen). A missing token or a bad config is one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from telegram import Update

from bots.telegram import RedactTokens, build_application, quiet_http_logs, serve_webhook
from tools import logs, telemetry
from tools.config import Settings, load_settings
from tools.errors import ConfigError
from tools.memory import tune_malloc
from tools.store import check_usable


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="retouch-bot", description="Retouch's Telegram bot.")
    parser.add_argument("--config", help="config file (default: $RETOUCH_CONFIG or ./config.toml)")
    parser.add_argument("--host", default="0.0.0.0", help="webhook mode: address to listen on")
    parser.add_argument("--port", type=int, default=8443, help="webhook mode: port to listen on")
    parser.add_argument(
        "--no-worker",
        dest="worker",
        action="store_false",
        help="only queue tasks and deliver results: separate retouch-worker processes on the "
        "same store run the tasks (default: this process runs them too)",
    )
    return parser.parse_args(argv)


def setup_logging(settings: Settings) -> None:
    logs.configure(settings, filters=[RedactTokens()])
    quiet_http_logs()


def main(argv: list[str] | None = None) -> int:
    tune_malloc()  # before any thread starts
    args = parse_args(argv)
    try:
        settings = load_settings(args.config)
        check_usable(settings.store)
        if not settings.telegram.token.get_secret_value():
            raise ConfigError(
                "no bot token: set telegram.token in the config file or TELEGRAM_BOT_TOKEN"
            )
        telemetry.check_exporter(settings, settings.telegram.metrics_port, "telegram.metrics_port")
        setup_logging(settings)
        app = build_application(settings, run_worker=args.worker)
    except ConfigError as exc:
        print(f"retouch-bot: {exc.message}", file=sys.stderr)
        return 2
    if settings.telegram.webhook_url:
        asyncio.run(serve_webhook(app, settings, args.host, args.port))
    else:
        app.run_polling(allowed_updates=Update.ALL_TYPES)
    return 0


if __name__ == "__main__":
    sys.exit(main())
