"""The bot's running state, kept in ``application.bot_data`` for every handler to reach."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiosqlite
    from telegram.ext import Application

    from bots.access import Limits
    from bots.albums import AlbumCollector
    from bots.delivery import Tracker
    from tools.config import Settings
    from tools.models import FunctionInfo
    from tools.service import Editor

KEY = "retouch"


class Runtime:
    """Filled in by ``post_init`` (the Editor, the database, the tracker) and emptied by
    ``post_stop`` / ``post_shutdown``."""

    editor: Editor
    db: aiosqlite.Connection
    tracker: Tracker
    albums: AlbumCollector
    limits: Limits

    def __init__(self, settings: Settings, *, run_worker: bool = True) -> None:
        self.settings = settings
        self.run_worker = run_worker
        self.bot_username: str | None = None
        self.scan_interval = 1.0
        #: Catalogue functions some enabled vendor can run, by name.
        self.functions: dict[str, FunctionInfo] = {}


def runtime(context: Any) -> Runtime:
    """The Runtime from a handler's context (or from an Application)."""
    app: Application = getattr(context, "application", context)
    return app.bot_data[KEY]
