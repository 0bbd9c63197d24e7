"""What a task looks like in a chat: the caption that would start it, its status message,
its Cancel button, and whether a result can go as a photo. Pure functions of a Task."""

from __future__ import annotations

from telegram import InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import FileSizeLimit

from bots.captions import COMMAND_FOR
from bots.lengths import fit
from tools.models import ResultImage, Task, TaskStatus

#: How much of a prompt a status, a caption or a list echoes.
ECHO = 120
PHOTO_MIMES = frozenset({"image/jpeg", "image/png", "image/webp"})
ICONS = {
    TaskStatus.queued: "⏳",
    TaskStatus.running: "⚙️",
    TaskStatus.succeeded: "✅",
    TaskStatus.failed: "❌",
    TaskStatus.canceled: "🚫",
}


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
    prompt = fit(" ".join(task.prompt.split()), ECHO)
    return f"{command} {prompt}".strip()


def render_status(task: Task, note: str | None = None) -> str:
    """The status message's text for a task's current state (plain text; a vendor's long
    error is cut where every text is, in ``bots.lengths``)."""
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
    return "\n".join(lines)


def cancel_keyboard(task: Task) -> InlineKeyboardMarkup | None:
    if task.finished:
        return None
    return InlineKeyboardMarkup(
        [[InlineKeyboardButton("Cancel", callback_data=f"cancel:{task.id}")]]
    )
