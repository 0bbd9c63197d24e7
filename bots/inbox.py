"""No request lost to a crash: every update is written down before Telegram forgets it.

Telegram keeps an update until the bot's next ``getUpdates`` confirms it, and
python-telegram-bot asks again as soon as it has queued the last batch — before handlers
have run. A bot killed in between loses those requests (measured: 28 of 30 photos sent
while a bot was being killed every 0.3–2 s were never answered).

So the update queue records each update in ``tg_inbox`` (SQLite) as the poller queues it,
which is before the next poll can confirm it; the Application marks it handled when its
handlers have run; at start-up the updates left unhandled are queued again. An update seen
twice (replayed, and fetched again because its confirmation never reached Telegram) is
handled once, and a request message that already started a task starts no other
(``edits.start_edit``). Handled updates are deleted once a day old, by a sweep at start and
every :data:`PRUNE_EVERY_S` while the bot runs, so the inbox does not grow with its uptime.
While the store is unavailable, updates are handled without being written down (their
handlers answer "try again").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from telegram import Message, Update
from telegram.ext import Application

from bots import storage
from tools.errors import StoreUnavailable

log = logging.getLogger("retouch.bot.inbox")

#: Handled updates are forgotten after this long ...
KEEP_HANDLED_S = 86400.0
#: ... by a sweep this often (read at each sweep).
PRUNE_EVERY_S = 3600.0


class InboxQueue(asyncio.Queue[Any]):
    """The Application's update queue; ``put`` (the poller's) records the update first."""

    def __init__(self) -> None:
        super().__init__()
        self.record: Callable[[Update], Awaitable[None]] | None = None

    async def put(self, item: Any) -> None:
        if isinstance(item, Update) and self.record is not None:
            try:
                await self.record(item)
            except StoreUnavailable:
                # Handled all the same, so the user hears "try again"; failing here would
                # stop the poller for good (python-telegram-bot retries only its own errors).
                log.warning("update %d not written down: store unavailable", item.update_id)
        await super().put(item)


class InboxApplication(Application):  # type: ignore[type-arg]
    """Handles each recorded update once, and marks it handled when its handlers are done."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.inbox_db: storage.Db | None = None
        #: An update its handler left waiting (an album part): handled when released.
        self.holds: Callable[[Update], bool] = lambda update: False
        self._in_hand: set[int] = set()
        self._held: dict[tuple[int, int], int] = {}  # (chat, message) → update id
        self._pruner: asyncio.Task[None] | None = None

    async def process_update(self, update: object) -> None:
        db = self.inbox_db
        if not isinstance(update, Update) or db is None:
            await super().process_update(update)
            return
        uid = update.update_id
        if uid in self._in_hand:
            return  # being handled (taken before the await below, so no copy slips past)
        self._in_hand.add(uid)
        try:
            if await storage.update_done(db, uid):
                return  # handled already
            await super().process_update(update)  # handler errors go to the error handler
            message = update.effective_message
            if message is not None and self.holds(update):
                self._held[(message.chat_id, message.message_id)] = uid
            else:
                await self._mark_done(db, uid)
        finally:
            self._in_hand.discard(uid)

    @staticmethod
    async def _mark_done(db: storage.Db, uid: int) -> None:
        """Its handlers have run (and answered): an outage now is no news for the user. The
        update stays open, to be handled again if the bot starts before it is swept."""
        try:
            await storage.mark_update_done(db, uid)
        except StoreUnavailable:
            log.warning("update %d handled but not marked so: store unavailable", uid)

    def prune_periodically(self, db: storage.Db) -> None:
        """Sweep handled updates older than :data:`KEEP_HANDLED_S` until shutdown."""

        async def sweep() -> None:
            while True:
                await asyncio.sleep(PRUNE_EVERY_S)
                try:
                    await storage.forget_handled_updates(db, KEEP_HANDLED_S)
                except Exception:
                    log.exception("pruning the inbox failed; trying again later")

        self._pruner = asyncio.create_task(sweep(), name="retouch-bot-inbox-pruner")

    async def shutdown(self) -> None:
        if self._pruner is not None:
            self._pruner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruner
            self._pruner = None
        await super().shutdown()

    async def release(self, messages: list[Message]) -> None:
        """The held updates of these messages are handled now (their album was started)."""
        for message in messages:
            uid = self._held.pop((message.chat_id, message.message_id), None)
            if uid is not None and self.inbox_db is not None:
                await self._mark_done(self.inbox_db, uid)


async def open_inbox(
    app: InboxApplication,
    db: storage.Db,
    holds: Callable[[Update], bool] = lambda update: False,
) -> int:
    """Start recording, and queue again what a previous process left unhandled. ``holds``
    tells an update its handler keeps waiting (handled later, by ``release``)."""
    queue = cast(InboxQueue, app.update_queue)
    app.holds = holds

    async def record(update: Update) -> None:
        await storage.record_update(db, update.update_id, json.dumps(update.to_dict()))

    queue.record = record
    app.inbox_db = db
    await storage.forget_handled_updates(db, KEEP_HANDLED_S)
    app.prune_periodically(db)
    left = await storage.open_updates(db)
    for _, body in left:
        update = Update.de_json(json.loads(body), app.bot)
        if update is not None:
            queue.put_nowait(update)
    if left:
        log.warning("%d update(s) a previous process left unhandled are handled now", len(left))
    return len(left)
