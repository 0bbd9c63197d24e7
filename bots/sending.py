"""Sending a task's results to a chat: one photo, albums of up to ten, or files when a
photo would be refused or degraded (used by delivery and by /history's re-send)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from telegram import Bot, InputFile, InputMediaDocument, InputMediaPhoto, Message
from telegram.constants import ChatAction, FileSizeLimit
from telegram.error import BadRequest, Forbidden, TelegramError

from bots import metrics
from bots.lengths import CAPTION, fit
from bots.rendering import describe_task, photo_problem
from bots.replies import reply_parameters
from tools.errors import NotFound
from tools.media import EXTENSIONS
from tools.models import ResultImage, Task
from tools.service import Editor

log = logging.getLogger("retouch.bot.delivery")

#: Called after each send with the messages sent (and the results they show) and the number
#: of results sent so far.
OnSent = Callable[[list[tuple[Message, ResultImage]], int], Awaitable[None]]


def is_permanent(exc: TelegramError) -> bool:
    """The chat cannot be reached (bot blocked, chat gone): trying again will not help."""
    if isinstance(exc, Forbidden):
        return True
    text = str(exc).lower()
    return isinstance(exc, BadRequest) and (
        "chat not found" in text or "user is deactivated" in text or "chat_write_forbidden" in text
    )


def file_id(message: Message) -> str | None:
    """The file a sent result message holds (None for a text message)."""
    if message.photo:
        return message.photo[-1].file_id
    if message.document:
        return message.document.file_id
    return None


def sent_rows(
    task_id: str, sent: list[tuple[Message, ResultImage]]
) -> list[tuple[int, str, int, str | None]]:
    """Sent result messages as ``storage.add_messages`` records them (text ones left out)."""
    return [(m.message_id, task_id, r.index, file_id(m)) for m, r in sent if file_id(m)]


class Sender:
    """Sends a task's results to a chat, reading them through the Editor."""

    def __init__(self, editor: Editor, bot: Bot) -> None:
        self.editor = editor
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
            try:
                if len(chunk) == 1:
                    sent = [
                        await self._send_one(
                            chat_id,
                            task,
                            chunk[0],
                            as_files,
                            caption if done == 0 else None,
                            reply_to,
                        )
                    ]
                else:
                    sent = await self._send_group(
                        chat_id, task, chunk, as_files, caption if done == 0 else None, reply_to
                    )
            except Exception:
                metrics.delivered(len(chunk), ok=False)
                raise
            metrics.delivered(len(chunk))
            done += len(chunk)
            if on_sent is not None:
                await on_sent(sent, done)
        return done

    def _caption(self, task: Task, as_files: bool, why: str | None) -> str:
        text = f"{describe_task(task)} · {task.vendor}"
        if why:
            text += f"\nSent as a file: {why}."
        text += "\nReply to this with words or a command to keep editing."
        return fit(text, CAPTION)  # an album's caption travels where bots.lengths cannot see

    async def _payload(self, task: Task, result: ResultImage) -> tuple[bytes, str]:
        data, mime = await self.editor.result(task.id, result.index)
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
                reply_parameters=reply_parameters(reply_to),
            )
            return msg, result
        if len(data) > FileSizeLimit.FILESIZE_UPLOAD:
            msg = await self.bot.send_message(
                chat_id,
                f"Result {result.index + 1} is {len(data) / 1e6:.0f} MB — over Telegram's "
                "50 MB limit for bots, so I can't send it here.",
                reply_parameters=reply_parameters(reply_to),
            )
            return msg, result
        if not as_file:
            try:
                msg = await self.bot.send_photo(
                    chat_id,
                    data,
                    caption=caption,
                    reply_parameters=reply_parameters(reply_to),
                    filename=name,
                )
                return msg, result
            except BadRequest as exc:
                if is_permanent(exc):
                    raise
                log.warning("task %s: photo refused (%s); sending it as a file", task.id, exc)
                caption = (caption or "") + "\n(Telegram refused it as a photo.)"
        msg = await self.bot.send_document(
            chat_id,
            InputFile(data, filename=name),
            caption=caption,
            reply_parameters=reply_parameters(reply_to),
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
                chat_id, album(as_files), reply_parameters=reply_parameters(reply_to)
            )
        except BadRequest as exc:
            if as_files or is_permanent(exc):
                raise
            log.warning("task %s: album of photos refused (%s); sending files", task.id, exc)
            messages = await self.bot.send_media_group(
                chat_id, album(True), reply_parameters=reply_parameters(reply_to)
            )
        return list(zip(messages, chunk, strict=False))
