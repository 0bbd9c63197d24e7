"""The Application: built from settings, handlers registered, Editor and tracker attached.

    app = build_application(settings)          # token, base_url, base_file_url from settings
    app.run_polling()                          # post_init starts the Editor and the tracker

``run_polling``/``run_webhook`` call the ``post_init``/``post_stop``/``post_shutdown`` hooks;
:func:`running` does the same for code that drives the Application itself (tests, webhooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlparse

from telegram import BotCommand, Message, Update
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

from bots import handlers
from bots.access import Limits, gate
from bots.albums import AlbumCollector
from bots.captions import FUNCTION_COMMANDS
from bots.delivery import Tracker
from bots.inbox import InboxApplication, InboxQueue, open_inbox
from bots.retry import RetryingLimiter
from bots.state import KEY, Runtime
from tools import chats
from tools.config import Settings
from tools.errors import ConfigError
from tools.service import Editor

log = logging.getLogger("retouch.bot")

COMMANDS = [
    ("start", "Start and see how it works"),
    ("help", "Examples of what to send"),
    ("functions", "What I can do here"),
    ("vendor", "Choose who runs your edits"),
    ("settings", "Results per edit, seed, photos or files"),
    ("status", "Your running edits and limits"),
    ("cancel", "Cancel your running edits"),
    ("history", "Your last edits, to send again"),
]


def build_application(
    settings: Settings,
    *,
    run_worker: bool = True,
    scan_interval: float = 1.0,
) -> Application:
    """The bot for these settings. The Editor (with its worker unless ``run_worker`` is
    false) starts in ``post_init`` and closes in ``post_shutdown``."""
    tg = settings.telegram
    token = tg.token.get_secret_value()
    if not token:
        raise ConfigError("telegram.token is empty: set it in config.toml or TELEGRAM_BOT_TOKEN")
    protect_token(token)
    quiet_http_logs()
    rt = Runtime(settings, run_worker=run_worker)
    rt.scan_interval = scan_interval
    app = (
        ApplicationBuilder()
        .application_class(InboxApplication)
        .update_queue(InboxQueue())  # updates are written down before Telegram forgets them
        .token(token)
        .base_url(tg.api_base_url)
        .base_file_url(tg.file_base_url)
        .rate_limiter(RetryingLimiter())
        .concurrent_updates(True)
        .post_init(_post_init)
        .post_stop(_post_stop)
        .post_shutdown(_post_shutdown)
        .build()
    )
    app.bot_data[KEY] = rt
    register(app)
    return app


def register(app: Application) -> None:
    new = filters.UpdateType.MESSAGE
    app.add_handler(TypeHandler(Update, gate), group=-1)  # the allow-list guards everything
    for name, callback in [
        ("start", handlers.cmd_start),
        ("help", handlers.cmd_help),
        ("functions", handlers.cmd_functions),
        ("vendor", handlers.cmd_vendor),
        ("settings", handlers.cmd_settings),
        ("status", handlers.cmd_status),
        ("cancel", handlers.cmd_cancel),
        ("history", handlers.cmd_history),
    ]:
        app.add_handler(CommandHandler(name, callback, filters=new))
    app.add_handler(
        CommandHandler(list(FUNCTION_COMMANDS), handlers.on_function_command, filters=new)
    )
    app.add_handler(MessageHandler(new & (filters.PHOTO | filters.Document.ALL), handlers.on_media))
    app.add_handler(
        MessageHandler(
            new & filters.TEXT & filters.REPLY & ~filters.COMMAND, handlers.on_reply_text
        )
    )
    app.add_handler(MessageHandler(new & filters.COMMAND, handlers.on_unknown_command))
    app.add_handler(MessageHandler(new & filters.TEXT, handlers.on_text))
    app.add_handler(CallbackQueryHandler(handlers.on_button))
    app.add_error_handler(handlers.on_error)


# ---- life cycle ----------------------------------------------------------------------------


async def _post_init(app: Application) -> None:
    rt: Runtime = app.bot_data[KEY]
    inbox = cast(InboxApplication, app)  # build_application's class
    rt.editor = Editor(rt.settings, allow_local_paths=False, run_worker=rt.run_worker)
    await rt.editor.start()
    rt.db = await chats.connect(rt.settings.store.path)
    rt.functions = {f.name: f for f in rt.editor.list_functions() if f.vendors}
    rt.bot_username = app.bot.username
    rt.limits = Limits(rt)

    async def album(parts: list[Message]) -> None:
        try:
            await handlers.on_album(rt, app.bot, parts)
        except Exception:
            log.exception("handling an album failed")
            with contextlib.suppress(Exception):
                await handlers.say(
                    parts[0],
                    "Sorry — something went wrong on my side with that album. Please try again.",
                )
        await inbox.release(parts)

    rt.albums = AlbumCollector(rt.settings.telegram.album_debounce_s, album, app.create_task)
    rt.tracker = Tracker(rt, app.bot, scan_interval=rt.scan_interval)
    await rt.tracker.start()
    with contextlib.suppress(TelegramError):
        await app.bot.set_my_commands([BotCommand(c, d) for c, d in COMMANDS])
    await open_inbox(
        inbox,
        rt.db,
        holds=lambda update: bool(
            update.effective_message and rt.albums.holds(update.effective_message)
        ),
    )
    log.info("bot @%s ready: functions %s", rt.bot_username, ", ".join(rt.functions))


async def _post_stop(app: Application) -> None:
    rt: Runtime = app.bot_data[KEY]
    if hasattr(rt, "albums"):
        rt.albums.close()
    if hasattr(rt, "tracker"):
        await rt.tracker.stop()


async def _post_shutdown(app: Application) -> None:
    rt: Runtime = app.bot_data[KEY]
    if hasattr(rt, "db"):
        await rt.db.close()
    if hasattr(rt, "editor") and hasattr(rt.editor, "store"):
        await rt.editor.close()


@contextlib.asynccontextmanager
async def running(
    app: Application, *, polling: bool = True, poll_timeout: float = 10.0
) -> AsyncIterator[Application]:
    """Run the Application as ``run_polling`` would, inside an existing event loop."""
    await app.initialize()
    try:
        if app.post_init:
            await app.post_init(app)
        await app.start()
        if polling:
            assert app.updater is not None
            await app.updater.start_polling(
                poll_interval=0.0, timeout=int(poll_timeout), allowed_updates=Update.ALL_TYPES
            )
        yield app
    finally:
        if app.updater is not None and app.updater.running:
            await app.updater.stop()
        if app.running:
            await app.stop()
        if app.post_stop:
            await app.post_stop(app)
        await app.shutdown()
        if app.post_shutdown:
            await app.post_shutdown(app)


async def serve_webhook(
    app: Application,
    settings: Settings,
    host: str,
    port: int,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Webhook mode without PTB's tornado extra: Starlette + uvicorn (core dependencies).

    Telegram POSTs updates to ``telegram.webhook_url``; the path of that URL is served on
    ``host:port`` (put a TLS-terminating proxy in front). A random secret token, checked on
    every request, keeps strangers from injecting updates. Runs until uvicorn is told to stop
    (SIGINT/SIGTERM) or ``stop`` is set.
    """
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    url = settings.telegram.webhook_url
    path = urlparse(url).path or "/"
    secret = secrets.token_urlsafe(32)

    async def receive(request: Request) -> Response:
        if request.headers.get("x-telegram-bot-api-secret-token") != secret:
            return Response(status_code=403)
        await app.update_queue.put(Update.de_json(await request.json(), app.bot))
        return Response()

    async def health(request: Request) -> Response:
        return PlainTextResponse("ok")

    web = Starlette(routes=[Route(path, receive, methods=["POST"]), Route("/healthz", health)])
    server = uvicorn.Server(uvicorn.Config(web, host=host, port=port, log_level="warning"))
    async with running(app, polling=False):
        await app.bot.set_webhook(url, secret_token=secret, allowed_updates=Update.ALL_TYPES)
        log.info("webhook mode: listening on %s:%d%s", host, port, path)
        serving = asyncio.create_task(server.serve())
        waiters: set[asyncio.Future[object]] = {serving}
        if stop is not None:
            waiters.add(asyncio.ensure_future(stop.wait()))
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        server.should_exit = True
        await serving
        for waiter in waiters:
            waiter.cancel()


# ---- logging -------------------------------------------------------------------------------


_SECRETS: set[str] = set()
_TOKEN_SHAPE = re.compile(r"\d{5,}:[A-Za-z0-9_-]{30,}")
_factory_installed = False


def redact(text: str) -> str:
    """``text`` with every known bot token, and anything shaped like one, blanked."""
    for secret in _SECRETS:
        text = text.replace(secret, "<token>")
    return _TOKEN_SHAPE.sub("<token>", text)


class RedactTokens(logging.Filter):
    """A handler filter that blanks bot tokens (for handlers set up outside this module)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


def protect_token(token: str) -> None:
    """Keep ``token`` out of every log record, whoever logs it and wherever it goes.

    PTB logs the Bot API URL and file URLs (both contain the token) at DEBUG, and httpx logs
    request URLs at INFO; a log record factory redacts them as records are created, so no
    handler, file or test capture ever sees the token.
    """
    global _factory_installed
    _SECRETS.add(token)
    if _factory_installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: object, **kwargs: object) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:
            return record
        clean = redact(message)
        # PTB logs dicts it then changes (getFile's file_path gains the token after the log
        # call), so its records are frozen as formatted now.
        if clean != message or record.name.startswith(("telegram", "httpx", "httpcore")):
            record.msg, record.args = clean, ()
        return record

    logging.setLogRecordFactory(factory)
    _factory_installed = True


def quiet_http_logs() -> None:
    """httpx logs every request URL at INFO, and Bot API URLs contain the token."""
    for name in ("httpx", "httpcore", "apscheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
