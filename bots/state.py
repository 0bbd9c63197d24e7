"""What the handlers reach: the parts built at start-up (``bots/app.py``), kept in
``application.bot_data``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from telegram.ext import Application

from bots import storage
from bots.access import Limits
from bots.albums import AlbumCollector
from bots.tracking import Tracker
from tools.models import FunctionInfo
from tools.service import Editor

KEY = "retouch"


@dataclass
class Runtime:
    editor: Editor
    #: The bot's own connection to the store's database (bots/storage.py).
    db: storage.Db
    tracker: Tracker
    limits: Limits
    albums: AlbumCollector
    #: Catalogue functions some enabled vendor can run, by name.
    functions: dict[str, FunctionInfo]
    bot_username: str | None


def runtime(context: Any) -> Runtime:
    """The Runtime from a handler's context (or from an Application)."""
    app: Application = getattr(context, "application", context)
    return app.bot_data[KEY]
