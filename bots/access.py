"""Who may use the bot, and how much.

Closed by default: only ``telegram.allowed_user_ids`` (in private chats and in any group, by
the sender's id), or everyone with ``telegram.public = true``. :func:`gate` runs before every
other handler (group -1) and stops refused updates there, so no handler — command, message or
inline button — can be reached around it. Strangers are told so a few times, then ignored
(:class:`Refusals`). :class:`Limits` counts each allowed user's edits exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from telegram import Update
from telegram.constants import ChatType
from telegram.ext import ApplicationHandlerStop, ContextTypes

from bots import metrics
from bots.settings import TelegramSettings
from tools.service import Editor

log = logging.getLogger("retouch.bot.access")
T = TypeVar("T")
#: Refusals to all strangers together, at most, in any minute.
REFUSALS_PER_MINUTE = 30


def owner(user_id: int) -> str:
    """The task owner string for a Telegram user."""
    return f"tg:{user_id}"


def allowed(settings: TelegramSettings, user_id: int | None) -> bool:
    if user_id is None:
        return False
    return settings.public or user_id in settings.allowed_user_ids


def refusal(user_id: int) -> str:
    return (
        "Sorry, this bot is private. Your Telegram user id is "
        f"{user_id} — ask the bot's owner to add it to allowed_user_ids."
    )


class Refusals:
    """How often strangers are told the bot is private: each at most ``per_user`` times in
    any ``window_s``, and all of them together at most ``overall`` times a minute; then
    silence. A stranger's flood gets a few answers, not one each (the bot is no amplifier),
    and a crowd of strangers cannot spend the send rate the allowed users' results need.
    Memory stays bounded: the strangers seen longest ago are forgotten past ``tracked``.
    """

    def __init__(
        self,
        per_user: int,
        window_s: float,
        *,
        overall: int = REFUSALS_PER_MINUTE,
        tracked: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.per_user = per_user
        self.window_s = window_s
        self.overall = overall
        self.tracked = tracked
        self.clock = clock
        self._by_user: OrderedDict[int, deque[float]] = OrderedDict()
        self._all: deque[float] = deque()

    def allow(self, user_id: int) -> bool:
        """True (and counted) when this stranger may be answered now."""
        now = self.clock()
        while self._all and self._all[0] <= now - 60:
            self._all.popleft()
        times = self._by_user.pop(user_id, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        self._by_user[user_id] = times  # the most recently seen last
        if len(self._by_user) > self.tracked:
            self._by_user.popitem(last=False)
        if len(times) >= self.per_user or len(self._all) >= self.overall:
            return False
        times.append(now)
        self._all.append(now)
        return True


def gate(
    settings: TelegramSettings,
) -> Callable[[object, ContextTypes.DEFAULT_TYPE], Awaitable[None]]:
    """The group -1 handler: let allowed users through; stop everyone else, and answer them
    as often as :class:`Refusals` allows."""
    budget = Refusals(settings.stranger_replies, settings.stranger_reply_window_s)

    async def check(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not isinstance(update, Update):
            metrics.update_seen(update, False)
            raise ApplicationHandlerStop
        user = update.effective_user
        if user is not None and allowed(settings, user.id):
            metrics.update_seen(update, True)
            return
        metrics.update_seen(update, False)
        if user is None or user.is_bot:
            raise ApplicationHandlerStop  # channel posts, other bots: nothing to answer
        query, message = update.callback_query, update.effective_message
        answer = query is not None or (message is not None and _addressed_to_bot(update))
        if not answer or not budget.allow(user.id):
            log.debug("refused update from user %s, silently", user.id)
            raise ApplicationHandlerStop
        log.info("refused update from user %s", user.id)
        if query is not None:
            await query.answer(refusal(user.id), show_alert=True)
        elif message is not None:
            await message.reply_text(refusal(user.id))
        raise ApplicationHandlerStop

    return check


def _addressed_to_bot(update: Update) -> bool:
    """In groups, answer refused users only when they talk to the bot (no spam)."""
    message = update.effective_message
    chat = update.effective_chat
    if message is None or chat is None:
        return False
    if chat.type == ChatType.PRIVATE:
        return True
    text = message.text or message.caption or ""
    replied = message.reply_to_message
    return text.startswith("/") or bool(
        replied and replied.from_user and replied.from_user.id == message.get_bot().id
    )


class Slot:
    """One edit's place among its user's: ``refusal`` says why there is none; else the place
    is held until the ``Limits.slot`` block ends or :meth:`start` has stored the task."""

    def __init__(self, limits: Limits, user_id: int, refusal: str | None) -> None:
        self.limits = limits
        self.user_id = user_id
        self.refusal = refusal
        self.held = refusal is None

    async def start(self, create: Callable[[], Awaitable[T]]) -> T:
        """Run ``create`` (it stores the task) under the user's lock, and let go of the
        reservation with it: no count sees this edit twice (reserved and stored) or not at
        all."""
        async with self.limits.lock(self.user_id):
            try:
                return await create()
            finally:
                self.release()

    def release(self) -> None:
        if self.held:
            self.held = False
            self.limits.reserved[self.user_id] -= 1


class Limits:
    """Per-user fairness: concurrent tasks and edits per hour, counted exactly.

    A user's count is their stored tasks (from the Editor) plus the edits reserved but not
    stored yet (images downloading). :meth:`slot` counts and reserves under a lock per user,
    and :meth:`Slot.start` stores the task under the same lock as it drops the reservation,
    so updates arriving together are counted once each: no two photos slip past the last
    free place, no one is refused below the limit, and refusals state the true numbers.
    Downloads run outside the lock: no one waits for another's download to be answered.
    """

    def __init__(self, editor: Editor, settings: TelegramSettings) -> None:
        self.editor = editor
        self.settings = settings
        self._locks: dict[int, asyncio.Lock] = defaultdict(asyncio.Lock)
        #: Edits reserved and not stored yet, by user.
        self.reserved: dict[int, int] = defaultdict(int)

    def lock(self, user_id: int) -> asyncio.Lock:
        return self._locks[user_id]

    @contextlib.asynccontextmanager
    async def slot(self, user_id: int) -> AsyncIterator[Slot]:
        """A :class:`Slot`: reserved until the block ends (or its task is stored), or refused."""
        async with self.lock(user_id):
            slot = Slot(self, user_id, await self.refusal(user_id))
            if slot.held:
                self.reserved[user_id] += 1
        try:
            yield slot
        finally:
            slot.release()

    async def refusal(self, user_id: int) -> str | None:
        """None when the user may start one more edit now; else a friendly reason. (Each
        reservation is read after its store query: one given up meanwhile is in neither.)"""
        cfg = self.settings
        who = owner(user_id)
        active = len(await self.editor.active_tasks(who)) + self.reserved[user_id]
        if active >= cfg.max_concurrent_per_user:
            return (
                f"You already have {active} edit{'s' if active != 1 else ''} running "
                f"(the limit is {cfg.max_concurrent_per_user}). Send it again when one has "
                "finished — or /cancel one."
            )
        recent, oldest = await self.editor.usage(who, time.time() - 3600)
        recent += self.reserved[user_id]
        if recent >= cfg.edits_per_hour:
            minutes = math.ceil((oldest + 3600 - time.time()) / 60) if oldest else 60
            minutes = max(minutes, 1)
            return (
                f"You've made {recent} edits in the last hour, the limit is "
                f"{cfg.edits_per_hour}. Please try again in about {minutes} "
                f"minute{'s' if minutes != 1 else ''}."
            )
        return None

    async def summary(self, user_id: int) -> str:
        """The user's use of the last hour against the limits (for /status)."""
        cfg = self.settings
        recent, _ = await self.editor.usage(owner(user_id), time.time() - 3600)
        return (
            f"Edits in the last hour: {recent} of {cfg.edits_per_hour}; at once: up to "
            f"{cfg.max_concurrent_per_user}."
        )
