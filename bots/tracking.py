"""Watching tasks, editing their status messages, and delivering results exactly once.

Design (the state lives in ``tg_tasks``, see bots/storage.py):

* Every edit the bot starts gets a row (``delivery = 'pending'``) right after the Editor
  stores the task. A *watcher* (one coroutine per task this process started; it waits on
  the Editor's change notifications, so it reacts within milliseconds) edits the status
  message as the task moves. A *scan* every ``scan_interval`` seconds picks up every other
  pending row — tasks from before a restart, tasks finished while the bot was down — and
  updates or delivers them.
* Delivery claims the row atomically (``UPDATE … SET delivery='sending' WHERE
  delivery='pending' RETURNING``): whoever gets the row sends, nobody else can. Each sent
  result message is recorded (``tg_messages``) and counted (``sent_items``) before the next
  is sent; at the end the row becomes ``'delivered'``. Transient failures (network, 429
  beyond the limiter's retries) put the row back to ``pending`` with a backoff; permanent
  ones (bot blocked, chat gone) mark it ``'failed'``. A delivery the store's outage cut off
  goes back to ``pending`` as soon as the store is back.
* A clean stop lets deliveries in flight finish (10 s grace). A crash — or a delivery cut
  off after the grace — leaves the row ``'sending'``. At start-up such rows go back to
  ``pending`` and resume after the last result recorded as sent: results already delivered
  are not sent again, and the one result whose send was in flight at the crash is sent again
  (Telegram has no idempotency key, so the choice is a rare duplicate or a possible loss; we
  choose the duplicate). Tasks that simply *finished* while the bot was down are still
  ``pending`` and are delivered exactly once.
* Status message edits are best-effort: a failed edit never blocks a delivery; a failed task
  whose status message cannot be edited gets a new message instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from telegram import Bot, InlineKeyboardMarkup, Message
from telegram.error import BadRequest, RetryAfter, TelegramError

from bots import storage
from bots.rendering import cancel_keyboard, render_status
from bots.replies import reply_parameters
from bots.retry import retry_after_seconds
from bots.sending import Sender, is_permanent, sent_rows
from tools.errors import NotFound, StoreUnavailable
from tools.models import ResultImage, Task, TaskStatus
from tools.service import Editor

log = logging.getLogger("retouch.bot.delivery")
#: Deliveries in flight at once. Telegram takes about 30 messages a second across chats,
#: so fewer slots only queue finished edits (8 made most of a burst of 50 wait, bench/).
DELIVERY_SLOTS = 30
MAX_DELIVERY_ATTEMPTS = 6
PROGRESS_MIN_INTERVAL_S = 0.5


class Tracker:
    """Watches pending rows, keeps status messages current and delivers finished tasks."""

    def __init__(
        self, editor: Editor, db: storage.Db, bot: Bot, *, scan_interval: float = 1.0
    ) -> None:
        self.editor = editor
        self.db = db
        self.bot = bot
        self.sender = Sender(editor, bot)
        self.scan_interval = scan_interval
        self.scans = 0
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._deliveries: dict[str, asyncio.Task[None]] = {}
        self._last_edit: dict[str, float] = {}
        self._scanner: asyncio.Task[None] | None = None
        self._slots = asyncio.Semaphore(DELIVERY_SLOTS)
        self._closing = False

    # life cycle

    async def start(self) -> None:
        recovered = await storage.recover_interrupted(self.db)
        if recovered:
            log.warning("%d delivery(ies) were interrupted by a stop; resuming them", recovered)
        self._scanner = asyncio.create_task(self._scan_loop(), name="retouch-bot-tracker")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop watching; let deliveries in flight finish (up to ``grace_s``)."""
        self._closing = True
        tasks = [t for t in (self._scanner, *self._watchers.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        pending = list(self._deliveries.values())
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace_s)
            for task in late:
                task.cancel()
            for task in late:
                with contextlib.suppress(BaseException):
                    await task

    async def idle(self) -> None:
        """Wait until no watcher or delivery is running (for tests and clean stops)."""
        while self._watchers or self._deliveries:
            await asyncio.sleep(0.02)

    # watching

    def watch(self, task_id: str) -> None:
        """Follow a task this process just started (event-driven, no polling delay)."""
        if self._closing or task_id in self._watchers or task_id in self._deliveries:
            return
        self._watchers[task_id] = asyncio.create_task(
            self._watch(task_id), name=f"retouch-bot-watch-{task_id[:8]}"
        )

    async def _watch(self, task_id: str) -> None:
        try:
            row = await storage.get_task(self.db, task_id)
            if row is None:
                return
            task = await self.editor.check_task(task_id)

            async def progress(current: Task) -> None:
                await self._show_progress(row, current)

            while not task.finished:
                await self._show_progress(row, task)
                # Short waits: a state whose edit was throttled is shown on the next round.
                task = await self.editor.check_task(task_id, 2, on_progress=progress)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable:
            log.warning("watching task %s: store unavailable; the scan will carry on", task_id)
            return
        except Exception:
            log.exception("watching task %s failed; the scan will carry on", task_id)
            return
        finally:
            self._watchers.pop(task_id, None)
        self._start_delivery(task_id)

    async def _show_progress(self, row: storage.ChatTask, task: Task) -> None:
        text = render_status(task, row.note)
        if text == row.status_text:
            return
        now = time.monotonic()
        if now - self._last_edit.get(row.task_id, 0.0) < PROGRESS_MIN_INTERVAL_S:
            return
        self._last_edit[row.task_id] = now
        if await self.edit_status(row, text, cancel_keyboard(task)):
            row.status_text = text

    async def edit_status(
        self, row: storage.ChatTask, text: str, keyboard: InlineKeyboardMarkup | None = None
    ) -> bool:
        """Best-effort edit of a row's status message; False when it cannot be edited."""
        if row.status_message_id is None:
            return False
        try:
            await self.bot.edit_message_text(
                text,
                chat_id=row.chat_id,
                message_id=row.status_message_id,
                reply_markup=keyboard,
            )
        except BadRequest as exc:
            if "not modified" not in str(exc).lower():
                log.info("status of task %s not edited: %s", row.task_id, exc)
                return False
        except TelegramError as exc:
            log.info("status of task %s not edited: %s", row.task_id, exc)
            return False
        with contextlib.suppress(Exception):
            await storage.set_status_text(self.db, row.task_id, text)
        return True

    # scanning

    async def _scan_loop(self) -> None:
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except StoreUnavailable:
                log.warning("delivery scan: store unavailable; scanning again later")
            except Exception:
                log.exception("delivery scan failed")
            self.scans += 1
            await asyncio.sleep(self.scan_interval)

    async def scan(self) -> None:
        rows = await storage.pending(self.db)
        tasks = {t.id: t for t in await self.editor.tasks([r.task_id for r in rows])}
        for row in rows:
            task = tasks.get(row.task_id)
            if task is None or row.task_id in self._watchers or row.task_id in self._deliveries:
                continue
            if task.finished:
                self._start_delivery(row.task_id)
            elif row.status_message_id is not None:
                await self._show_progress(row, task)

    # delivering

    def _start_delivery(self, task_id: str) -> None:
        if self._closing or task_id in self._deliveries:
            return
        self._deliveries[task_id] = asyncio.create_task(
            self._deliver(task_id), name=f"retouch-bot-deliver-{task_id[:8]}"
        )

    async def _deliver(self, task_id: str) -> None:
        try:
            async with self._slots:
                row = await storage.claim(self.db, task_id)
                if row is None:
                    return  # delivered already, or not due yet
                try:
                    await self._deliver_claimed(row)
                except StoreUnavailable:
                    await self._hand_back(row)
                except TelegramError as exc:
                    await self._delivery_failed(row, exc)
                except Exception as exc:
                    log.exception("delivering task %s failed", task_id)
                    await self._delivery_failed(row, exc)
        finally:
            self._deliveries.pop(task_id, None)
            self._last_edit.pop(task_id, None)

    async def _deliver_claimed(self, row: storage.ChatTask) -> None:
        db = self.db
        task = await self.editor.check_task(row.task_id)
        text = render_status(task, row.note)
        if task.status == TaskStatus.succeeded and task.results:
            user = await storage.get_user(db, row.user_id)

            async def record(sent: list[tuple[Message, ResultImage]], done: int) -> None:
                await storage.add_messages(db, row.chat_id, sent_rows(row.task_id, sent))
                await storage.set_sent_items(db, row.task_id, done)

            await self.sender.send_results(
                row.chat_id,
                task,
                reply_to=row.request_message_id,
                originals=user.originals,
                start=row.sent_items,
                on_sent=record,
            )
            await self.edit_status(row, text)
        elif not await self.edit_status(row, text):
            # The outcome must reach the user even when the status message is gone.
            await self.bot.send_message(
                row.chat_id, text, reply_parameters=reply_parameters(row.request_message_id)
            )
        await storage.mark_delivered(db, row.task_id)
        log.info("task %s delivered to chat %s", row.task_id, row.chat_id)

    async def _hand_back(self, row: storage.ChatTask) -> None:
        """The store went away in the middle of a delivery: once it is back, the row is
        pending again, due at once (results already sent are not sent again)."""
        log.warning(
            "task %s: store unavailable while delivering; resuming when it is back", row.task_id
        )
        wait = 0.25
        while True:
            try:
                await storage.retry_later(self.db, row.task_id, "store unavailable", 0)
                return
            except StoreUnavailable:
                await asyncio.sleep(wait)
                wait = min(wait * 2, 2.0)

    async def _delivery_failed(self, row: storage.ChatTask, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, NotFound):  # the results were cleaned up: nothing left to send
            await storage.mark_failed(self.db, row.task_id, reason)
            with contextlib.suppress(TelegramError):
                await self.bot.send_message(
                    row.chat_id,
                    f"Sorry — the results of this edit are no longer stored ({exc.message}).",
                    reply_parameters=reply_parameters(row.request_message_id),
                )
            return
        if isinstance(exc, TelegramError) and is_permanent(exc):
            log.warning(
                "task %s cannot be delivered to chat %s: %s", row.task_id, row.chat_id, reason
            )
            await storage.mark_failed(self.db, row.task_id, reason)
            return
        if row.attempts >= MAX_DELIVERY_ATTEMPTS:
            log.error(
                "task %s: giving up delivery after %d attempts: %s",
                row.task_id,
                row.attempts,
                reason,
            )
            await storage.mark_failed(self.db, row.task_id, reason)
            with contextlib.suppress(TelegramError):
                await self.bot.send_message(
                    row.chat_id,
                    "Sorry — I could not send the result of one of your edits after several "
                    "tries. Find it with /history.",
                    reply_parameters=reply_parameters(row.request_message_id),
                )
            return
        delay = min(300.0, 5.0 * 2 ** (row.attempts - 1))
        if isinstance(exc, RetryAfter):
            delay = max(delay, retry_after_seconds(exc))
        log.warning("task %s: delivery failed (%s); retrying in %.0f s", row.task_id, reason, delay)
        await storage.retry_later(self.db, row.task_id, reason, delay)
