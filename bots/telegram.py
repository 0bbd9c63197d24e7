"""The Application: built from settings (handlers and parts wired by ``bots/app.py``), run
by polling or by webhook, with the bot token kept out of every log line.

    app = build_application(settings)          # token, base_url, base_file_url from settings
    app.run_polling()                          # post_init starts the Editor and the tracker

``run_polling``/``run_webhook`` call the ``post_init``/``post_stop``/``post_shutdown`` hooks;
:func:`running` does the same for code that drives the Application itself (tests, webhooks).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import re
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlparse

from telegram import Update
from telegram.ext import Application, ApplicationBuilder

from bots.app import Lifecycle, register
from bots.inbox import InboxApplication, InboxQueue
from bots.retry import RetryingLimiter
from tools.config import Settings
from tools.errors import ConfigError

log = logging.getLogger("retouch.bot")


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
    life = Lifecycle(settings, run_worker=run_worker, scan_interval=scan_interval)
    app = (
        ApplicationBuilder()
        .application_class(InboxApplication)
        .update_queue(InboxQueue())  # updates are written down before Telegram forgets them
        .token(token)
        .base_url(tg.api_base_url)
        .base_file_url(tg.file_base_url)
        .rate_limiter(RetryingLimiter())
        .concurrent_updates(True)
        .post_init(life.post_init)
        .post_stop(life.post_stop)
        .post_shutdown(life.post_shutdown)
        .build()
    )
    register(app, tg)
    return app


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
    every request in constant time, keeps strangers from injecting updates. Runs until
    uvicorn is told to stop (SIGINT/SIGTERM) or ``stop`` is set.
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
        given = request.headers.get("x-telegram-bot-api-secret-token", "")
        # Constant time: how long a refusal takes says nothing about how much of it matched.
        if not hmac.compare_digest(given.encode(), secret.encode()):
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
