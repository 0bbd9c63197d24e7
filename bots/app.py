"""The wiring, in one place: which handler answers what, and the parts built at start-up
(``post_init``) and taken down at the end (``post_stop``, ``post_shutdown``).

Each part gets only what it uses — ``Limits(editor, settings)``,
``Tracker(editor, db, bot)``, ``AlbumCollector(debounce, handler, spawn)`` — and the
handlers reach them through the :class:`~bots.state.Runtime` kept in ``bot_data``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import cast

from telegram import BotCommand, Message, Update
from telegram.error import TelegramError
from telegram.ext import (
    Application,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    TypeHandler,
    filters,
)

from bots import buttons, commands, edits, storage
from bots.access import Limits, gate
from bots.albums import AlbumCollector
from bots.captions import FUNCTION_COMMANDS
from bots.inbox import InboxApplication, open_inbox
from bots.replies import on_error, say
from bots.settings import TelegramSettings
from bots.state import KEY, Runtime
from bots.tracking import Tracker
from tools import telemetry
from tools.config import Settings
from tools.service import Editor

log = logging.getLogger("retouch.bot")

COMMANDS = [
    ("start", "Start and see how it works", commands.cmd_start),
    ("help", "Examples of what to send", commands.cmd_help),
    ("functions", "What I can do here", commands.cmd_functions),
    ("vendor", "Choose who runs your edits", commands.cmd_vendor),
    ("settings", "Results per edit, seed, photos or files", commands.cmd_settings),
    ("status", "Your running edits and limits", commands.cmd_status),
    ("cancel", "Cancel your running edits", commands.cmd_cancel),
    ("history", "Your last edits, to send again", commands.cmd_history),
]


def register(app: Application, settings: TelegramSettings) -> None:
    new = filters.UpdateType.MESSAGE
    app.add_handler(TypeHandler(Update, gate(settings)), group=-1)  # the allow-list first
    for name, _, callback in COMMANDS:
        app.add_handler(CommandHandler(name, callback, filters=new))
    app.add_handler(CommandHandler(list(FUNCTION_COMMANDS), edits.on_function_command, filters=new))
    app.add_handler(MessageHandler(new & (filters.PHOTO | filters.Document.ALL), edits.on_media))
    app.add_handler(
        MessageHandler(new & filters.TEXT & filters.REPLY & ~filters.COMMAND, edits.on_reply_text)
    )
    app.add_handler(MessageHandler(new & filters.COMMAND, commands.on_unknown_command))
    app.add_handler(MessageHandler(new & filters.TEXT, commands.on_text))
    for pattern, callback in buttons.BUTTONS:
        app.add_handler(CallbackQueryHandler(callback, pattern=pattern))
    app.add_handler(CallbackQueryHandler(buttons.on_expired))
    app.add_error_handler(on_error)


class Lifecycle:
    """Builds the parts in ``post_init`` and takes them down in ``post_stop`` (the tracker
    and albums, while the Application can still send) and ``post_shutdown`` (the database
    connection and the Editor)."""

    def __init__(self, settings: Settings, *, run_worker: bool, scan_interval: float) -> None:
        self.settings = settings
        self.run_worker = run_worker
        self.scan_interval = scan_interval
        self.editor: Editor | None = None
        self.db: storage.Db | None = None
        self.runtime: Runtime | None = None
        self.exporter: telemetry.Exporter | None = None

    async def post_init(self, app: Application) -> None:
        inbox = cast(InboxApplication, app)  # build_application's class
        tg: TelegramSettings = self.settings.telegram
        editor = self.editor = Editor(
            self.settings, allow_local_paths=False, run_worker=self.run_worker
        )
        await editor.start()
        db = self.db = await storage.open_db(self.settings.store)

        async def album(parts: list[Message]) -> None:
            try:
                await edits.on_album(rt, app.bot, parts)
            except Exception:
                log.exception("handling an album failed")
                with contextlib.suppress(Exception):
                    await say(
                        parts[0],
                        "Sorry — something went wrong on my side with that album. "
                        "Please try again.",
                    )
            await inbox.release(parts)

        rt = self.runtime = Runtime(
            editor=editor,
            db=db,
            tracker=Tracker(editor, db, app.bot, scan_interval=self.scan_interval),
            limits=Limits(editor, tg),
            albums=AlbumCollector(tg.album_debounce_s, album, app.create_task),
            functions={f.name: f for f in editor.list_functions() if f.vendors},
            bot_username=app.bot.username,
        )
        app.bot_data[KEY] = rt
        await rt.tracker.start()
        with contextlib.suppress(TelegramError):
            await app.bot.set_my_commands([BotCommand(c, d) for c, d, _ in COMMANDS])
        await open_inbox(
            inbox,
            db,
            holds=lambda update: bool(
                update.effective_message and rt.albums.holds(update.effective_message)
            ),
        )
        if tg.metrics_port is not None:
            self.exporter = telemetry.serve(
                self.settings.metrics.host,
                tg.metrics_port,
                view=editor.metrics_view,
                token=self.settings.metrics.token.get_secret_value(),
            )
        log.info("bot @%s ready: functions %s", rt.bot_username, ", ".join(rt.functions))

    async def post_stop(self, app: Application) -> None:
        if self.runtime is not None:
            self.runtime.albums.close()
            await self.runtime.tracker.stop()

    async def post_shutdown(self, app: Application) -> None:
        if self.exporter is not None:
            self.exporter.close()
        if self.db is not None:
            await self.db.close()
        if self.editor is not None and hasattr(self.editor, "store"):
            await self.editor.close()
