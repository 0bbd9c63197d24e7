"""Albums: Telegram sends each photo of a media group as its own update, sharing a
``media_group_id``. The collector gathers them and, once no new part has arrived for
``album_debounce_s``, hands the whole album on as one list of messages (in message order).

Parts wait in memory for about a second. Their updates stay unhandled in the bot's inbox
(``bots/inbox.py``) until the album has been handed on, so an album in flight when the
process dies is gathered again from the inbox by the next one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from telegram import Message

MAX_PARTS = 10  # Telegram's own limit for a media group

Handler = Callable[[list[Message]], Awaitable[None]]
Spawn = Callable[[Awaitable[None]], object]


@dataclass
class _Album:
    messages: list[Message] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None


class AlbumCollector:
    def __init__(self, debounce_s: float, handler: Handler, spawn: Spawn) -> None:
        self.debounce_s = debounce_s
        self.handler = handler
        self.spawn = spawn
        self._albums: dict[tuple[int, str], _Album] = {}

    def add(self, message: Message) -> None:
        """One part of an album arrived; (re)start the album's quiet-time timer."""
        assert message.media_group_id is not None
        key = (message.chat_id, message.media_group_id)
        album = self._albums.setdefault(key, _Album())
        if all(m.message_id != message.message_id for m in album.messages):
            album.messages.append(message)
        if album.timer is not None:
            album.timer.cancel()
        loop = asyncio.get_running_loop()
        album.timer = loop.call_later(self.debounce_s, self._flush, key)

    def _flush(self, key: tuple[int, str]) -> None:
        album = self._albums.pop(key, None)
        if album is None:
            return
        parts = sorted(album.messages, key=lambda m: m.message_id)
        self.spawn(self.handler(parts))

    def holds(self, message: Message) -> bool:
        """This part is waiting here for the rest of its album."""
        if message.media_group_id is None:
            return False
        album = self._albums.get((message.chat_id, message.media_group_id))
        return album is not None and any(m.message_id == message.message_id for m in album.messages)

    @property
    def waiting(self) -> int:
        return len(self._albums)

    def close(self) -> None:
        for album in self._albums.values():
            if album.timer is not None:
                album.timer.cancel()
        self._albums.clear()
