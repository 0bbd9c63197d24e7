"""Watching tasks, editing their status messages, and delivering results exactly once.

Design (the state lives in ``tg_tasks``, see tools/chats.py):

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
  ones (bot blocked, chat gone) mark it ``'failed'``.
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
from collections.abc import Awaitable, Callable, Sequence

from telegram import (
    Bot,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaDocument,
    InputMediaPhoto,
    Message,
    ReplyParameters,
)
from telegram.constants import ChatAction, FileSizeLimit, MessageLimit
from telegram.error import BadRequest, Forbidden, RetryAfter, TelegramError

from bots.captions import COMMAND_FOR
from bots.retry import retry_after_seconds
from bots.state import Runtime
from tools import chats
from tools.errors import NotFound
from tools.media import EXTENSIONS
from tools.models import ResultImage, Task, TaskStatus

log = logging.getLogger("retouch.bot.delivery")
#: Deliveries in flight at once. Telegram takes about 30 messages a second across chats,
#: so fewer slots only queue finished edits (8 made most of a burst of 50 wait, bench/).
DELIVERY_SLOTS = 30

PHOTO_MIMES = frozenset({"image/jpeg", "image/png", "image/webp"})
MAX_DELIVERY_ATTEMPTS = 6
PROGRESS_MIN_INTERVAL_S = 0.5

#: Called after each send with the messages sent (and the results they show) and the number
#: of results sent so far.
OnSent = Callable[[list[tuple[Message, ResultImage]], int], Awaitable[None]]


# ---- deciding how to send ------------------------------------------------------------------


def photo_problem(result: ResultImage) -> str | None:
    """Why Telegram would refuse or degrade this image as a photo (None: a photo is fine)."""
    if result.bytes > FileSizeLimit.PHOTOSIZE_UPLOAD:
        return f"it is {result.bytes / 1e6:.1f} MB (photos are limited to 10 MB)"
    w, h = result.width, result.height
    if w + h > 10000:
        return f"it is {w}×{h} (photos are limited to width + height ≤ 10000)"
    if max(w, h) > 20 * max(1, min(w, h)):
        return f"it is {w}×{h} (photos are limited to a 20:1 aspect ratio)"
    if result.mime_type not in PHOTO_MIMES:
        return f"{result.mime_type} is not a photo format"
    return None


def describe_task(task: Task) -> str:
    """``/style oil painting`` — the task as the caption that would start it."""
    command = "/" + COMMAND_FOR.get(task.function, task.function)
    prompt = " ".join(task.prompt.split())
    if len(prompt) > 120:
        prompt = prompt[:119] + "…"
    return f"{command} {prompt}".strip()


def render_status(task: Task, note: str | None = None) -> str:
    """The status message's text for a task's current state (plain text)."""
    what = describe_task(task)
    lines = [f"ℹ️ {note}"] if note else []
    match task.status:
        case TaskStatus.queued:
            lines.append(f"⏳ Queued: {what}")
        case TaskStatus.running:
            lines.append(f"⚙️ Working with {task.vendor}: {what}")
            if task.progress and task.progress != f"working with {task.vendor}":
                lines.append(task.progress)
        case TaskStatus.succeeded:
            took = ""
            if task.finished_at and task.created_at:
                took = f" in {(task.finished_at - task.created_at).total_seconds():.1f} s"
            if task.results:
                lines.append(f"✅ Done{took}: {what} with {task.vendor}")
            else:
                lines.append(f"❌ Failed: {what} — no image came back from {task.vendor}")
            if task.failures:
                total = len(task.results) + len(task.failures)
                lines.append(
                    f"⚠️ {len(task.failures)} of {total} images failed: "
                    + "; ".join(f.message for f in task.failures[:3])
                )
            lines += [f"· {n}" for n in task.notes[:3]]
        case TaskStatus.failed:
            reason = task.error.message if task.error else "unknown error"
            lines.append(f"❌ Failed: {what}\n{reason}")
        case TaskStatus.canceled:
            lines.append(f"🚫 Canceled: {what}")
    text = "\n".join(lines)
    limit = MessageLimit.MAX_TEXT_LENGTH
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cancel_keyboard(task: Task) -> InlineKeyboardMarkup | None:
    if task.finished:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton("Cancel", callback_data=f"cancel:{task.id}")]]
    )


def _reply_to(message_id: int | None) -> ReplyParameters | None:
    if message_id is None:
        return None
    return ReplyParameters(message_id=message_id, allow_sending_without_reply=True)


def _is_permanent(exc: TelegramError) -> bool:
    if isinstance(exc, Forbidden):
        return True
    text = str(exc).lower()
    return isinstance(exc, BadRequest) and (
        "chat not found" in text or "user is deactivated" in text or "chat_write_forbidden" in text
    )


# ---- sending results -----------------------------------------------------------------------


class Sender:
    """Sends a task's results to a chat (used by delivery and by /history's re-send)."""

    def __init__(self, rt: Runtime, bot: Bot) -> None:
        self.rt = rt
        self.bot = bot

    async def send_results(
        self,
        chat_id: int,
        task: Task,
        *,
        reply_to: int | None = None,
        originals: bool = False,
        start: int = 0,
        on_sent: OnSent | None = None,
    ) -> int:
        """Send results ``start…`` in order; returns how many results are now sent in all.

        One result: a photo (or a document). Several: albums of up to 10. Documents are
        used for all of them when the user wants originals or any would be refused or
        degraded as a photo (Telegram cannot mix documents with photos in one album).
        """
        results = list(task.results)
        if start >= len(results):
            return len(results)
        problems = [photo_problem(r) for r in results]
        as_files = originals or any(problems)
        why = next((p for p in problems if p), None)
        action = ChatAction.UPLOAD_DOCUMENT if as_files else ChatAction.UPLOAD_PHOTO
        with contextlib.suppress(TelegramError):
            await self.bot.send_chat_action(chat_id, action)
        caption = self._caption(task, as_files, why if not originals else None)
        done = start
        while done < len(results):
            chunk = results[done : done + 10]
            if len(chunk) == 1:
                sent = [
                    await self._send_one(
                        chat_id, task, chunk[0], as_files, caption if done == 0 else None, reply_to
                    )
                ]
            else:
                sent = await self._send_group(
                    chat_id, task, chunk, as_files, caption if done == 0 else None, reply_to
                )
            done += len(chunk)
            if on_sent is not None:
                await on_sent(sent, done)
        return done

    def _caption(self, task: Task, as_files: bool, why: str | None) -> str:
        text = f"{describe_task(task)} · {task.vendor}"
        if why:
            text += f"\nSent as a file: {why}."
        text += "\nReply to this with words or a command to keep editing."
        return text[: MessageLimit.CAPTION_LENGTH]

    async def _payload(self, task: Task, result: ResultImage) -> tuple[bytes, str]:
        data, mime = await self.rt.editor.result(task.id, result.index)
        name = f"retouch-{task.id[:8]}-{result.index + 1}.{EXTENSIONS.get(mime, 'png')}"
        return data, name

    async def _send_one(
        self,
        chat_id: int,
        task: Task,
        result: ResultImage,
        as_file: bool,
        caption: str | None,
        reply_to: int | None,
    ) -> tuple[Message, ResultImage]:
        try:
            data, name = await self._payload(task, result)
        except NotFound as exc:
            msg = await self.bot.send_message(
                chat_id,
                f"Result {result.index + 1} is no longer stored ({exc.message}).",
                reply_parameters=_reply_to(reply_to),
            )
            return msg, result
        if len(data) > FileSizeLimit.FILESIZE_UPLOAD:
            msg = await self.bot.send_message(
                chat_id,
                f"Result {result.index + 1} is {len(data) / 1e6:.0f} MB — over Telegram's "
                "50 MB limit for bots, so I can't send it here.",
                reply_parameters=_reply_to(reply_to),
            )
            return msg, result
        if not as_file:
            try:
                msg = await self.bot.send_photo(
                    chat_id,
                    data,
                    caption=caption,
                    reply_parameters=_reply_to(reply_to),
                    filename=name,
                )
                return msg, result
            except BadRequest as exc:
                if _is_permanent(exc):
                    raise
                log.warning("task %s: photo refused (%s); sending it as a file", task.id, exc)
                caption = (caption or "") + "\n(Telegram refused it as a photo.)"
        msg = await self.bot.send_document(
            chat_id,
            InputFile(data, filename=name),
            caption=caption,
            reply_parameters=_reply_to(reply_to),
            disable_content_type_detection=True,
        )
        return msg, result

    async def _send_group(
        self,
        chat_id: int,
        task: Task,
        chunk: Sequence[ResultImage],
        as_files: bool,
        caption: str | None,
        reply_to: int | None,
    ) -> list[tuple[Message, ResultImage]]:
        payloads = [await self._payload(task, result) for result in chunk]

        def album(files: bool) -> list[InputMediaPhoto | InputMediaDocument]:
            media: list[InputMediaPhoto | InputMediaDocument] = []
            for i, (data, name) in enumerate(payloads):
                cap = caption if i == 0 else None
                if files:
                    media.append(InputMediaDocument(InputFile(data, filename=name), caption=cap))
                else:
                    media.append(InputMediaPhoto(data, caption=cap, filename=name))
            return media

        try:
            messages = await self.bot.send_media_group(
                chat_id, album(as_files), reply_parameters=_reply_to(reply_to)
            )
        except BadRequest as exc:
            if as_files or _is_permanent(exc):
                raise
            log.warning("task %s: album of photos refused (%s); sending files", task.id, exc)
            messages = await self.bot.send_media_group(
                chat_id, album(True), reply_parameters=_reply_to(reply_to)
            )
        return list(zip(messages, chunk, strict=False))


def file_id(message: Message) -> str | None:
    """The file a sent result message holds (None for a text message)."""
    if message.photo:
        return message.photo[-1].file_id
    if message.document:
        return message.document.file_id
    return None


# ---- the tracker ---------------------------------------------------------------------------


class Tracker:
    """Watches pending rows, keeps status messages current and delivers finished tasks."""

    def __init__(self, rt: Runtime, bot: Bot, *, scan_interval: float = 1.0) -> None:
        self.rt = rt
        self.bot = bot
        self.sender = Sender(rt, bot)
        self.scan_interval = scan_interval
        self.scans = 0
        self._watchers: dict[str, asyncio.Task[None]] = {}
        self._deliveries: dict[str, asyncio.Task[None]] = {}
        self._last_edit: dict[str, float] = {}
        self._scanner: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(DELIVERY_SLOTS)
        self._closing = False

    # life cycle

    async def start(self) -> None:
        recovered = await chats.recover_interrupted(self.rt.db)
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

    def poke(self) -> None:
        self._wake.set()

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
            row = await chats.get_task(self.rt.db, task_id)
            if row is None:
                return
            task = await self.rt.editor.check_task(task_id)

            async def progress(current: Task) -> None:
                await self._show_progress(row, current)

            while not task.finished:
                await self._show_progress(row, task)
                # Short waits: a state whose edit was throttled is shown on the next round.
                task = await self.rt.editor.check_task(task_id, 2, on_progress=progress)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watching task %s failed; the scan will carry on", task_id)
            return
        finally:
            self._watchers.pop(task_id, None)
        self._start_delivery(task_id)

    async def _show_progress(self, row: chats.ChatTask, task: Task) -> None:
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
        self, row: chats.ChatTask, text: str, keyboard: InlineKeyboardMarkup | None = None
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
            await chats.set_status_text(self.rt.db, row.task_id, text)
        return True

    # scanning

    async def _scan_loop(self) -> None:
        while True:
            try:
                await self.scan()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("delivery scan failed")
            self.scans += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.scan_interval):
                    await self._wake.wait()
            self._wake.clear()

    async def scan(self) -> None:
        for item in await chats.pending(self.rt.db):
            task_id = item.chat.task_id
            if task_id in self._watchers or task_id in self._deliveries:
                continue
            if TaskStatus(item.status).finished:
                self._start_delivery(task_id)
            elif item.chat.status_message_id is not None:
                with contextlib.suppress(NotFound):
                    task = await self.rt.editor.check_task(task_id)
                    await self._show_progress(item.chat, task)

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
                row = await chats.claim(self.rt.db, task_id)
                if row is None:
                    return  # delivered already, or not due yet
                try:
                    await self._deliver_claimed(row)
                except TelegramError as exc:
                    await self._delivery_failed(row, exc)
                except Exception as exc:
                    log.exception("delivering task %s failed", task_id)
                    await self._delivery_failed(row, exc)
        finally:
            self._deliveries.pop(task_id, None)
            self._last_edit.pop(task_id, None)

    async def _deliver_claimed(self, row: chats.ChatTask) -> None:
        db = self.rt.db
        task = await self.rt.editor.check_task(row.task_id)
        text = render_status(task, row.note)
        if task.status == TaskStatus.succeeded and task.results:
            user = await chats.get_user(db, row.user_id)

            async def record(sent: list[tuple[Message, ResultImage]], done: int) -> None:
                await chats.add_messages(
                    db,
                    row.chat_id,
                    [
                        (m.message_id, row.task_id, r.index, file_id(m))
                        for m, r in sent
                        if file_id(m)
                    ],
                )
                await chats.set_sent_items(db, row.task_id, done)

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
                row.chat_id, text, reply_parameters=_reply_to(row.request_message_id)
            )
        await chats.mark_delivered(db, row.task_id)
        log.info("task %s delivered to chat %s", row.task_id, row.chat_id)

    async def _delivery_failed(self, row: chats.ChatTask, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, NotFound):  # the results were cleaned up: nothing left to send
            await chats.mark_failed(self.rt.db, row.task_id, reason)
            with contextlib.suppress(TelegramError):
                await self.bot.send_message(
                    row.chat_id,
                    f"Sorry — the results of this edit are no longer stored ({exc.message}).",
                    reply_parameters=_reply_to(row.request_message_id),
                )
            return
        if isinstance(exc, TelegramError) and _is_permanent(exc):
            log.warning(
                "task %s cannot be delivered to chat %s: %s", row.task_id, row.chat_id, reason
            )
            await chats.mark_failed(self.rt.db, row.task_id, reason)
            return
        if row.attempts >= MAX_DELIVERY_ATTEMPTS:
            log.error(
                "task %s: giving up delivery after %d attempts: %s",
                row.task_id,
                row.attempts,
                reason,
            )
            await chats.mark_failed(self.rt.db, row.task_id, reason)
            with contextlib.suppress(TelegramError):
                await self.bot.send_message(
                    row.chat_id,
                    "Sorry — I could not send the result of one of your edits after several "
                    "tries. Find it with /history.",
                    reply_parameters=_reply_to(row.request_message_id),
                )
            return
        delay = min(300.0, 5.0 * 2 ** (row.attempts - 1))
        if isinstance(exc, RetryAfter):
            delay = max(delay, retry_after_seconds(exc))
        log.warning("task %s: delivery failed (%s); retrying in %.0f s", row.task_id, reason, delay)
        await chats.retry_later(self.rt.db, row.task_id, reason, delay)

    @property
    def busy(self) -> bool:
        return bool(self._watchers or self._deliveries)
