"""How every process logs: text lines (the default) or one JSON object a line
(``[log] format = "json"``), each with time, level, logger and message, and the task id,
owner, vendor and event where the code that logs knows them (``extra={...}``).

Whatever the format, every secret of the settings (vendors' keys, tokens, passwords, the
store URL's password, any front end's section included) is masked in the message and in
tracebacks before a line is written, and so is anything shaped like an ``sk-`` key; a front
end adds its own filters (the bot's token redaction) through ``configure(filters=...)``.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, SecretStr

from tools.vendors.base import redact

#: The fields a record may carry (``extra=``) that the JSON line shows when set.
CONTEXT = ("task_id", "owner", "vendor", "event")
#: Shown in place of a secret.
MASK = "***"
#: The task the running code works on (set by the worker's driver for each task it drives),
#: so that every line logged meanwhile (an HTTP client's too) names it.
TASK: ContextVar[dict[str, str | None] | None] = ContextVar("retouch_task", default=None)


def set_task(task_id: str, owner: str | None, vendor: str) -> None:
    """Name this task in what this asyncio task (and those it starts) logs from now on."""
    TASK.set({"task_id": task_id, "owner": owner, "vendor": vendor})


def secrets_of(value: Any) -> Iterator[str]:
    """Every secret string in the settings (SecretStr anywhere, in models, dicts, lists),
    and a URL's password alone too (it may be logged without the rest of the URL)."""
    if isinstance(value, SecretStr):
        secret = value.get_secret_value()
        if secret:
            yield secret
            if "://" in secret:
                try:
                    password = urlsplit(secret).password
                except ValueError:
                    password = None
                if password:
                    yield password
                    yield unquote(password)
    elif isinstance(value, str) and "://" in value and "@" in value:
        # a password written into a plain URL (a vendor's base_url, a proxy)
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            yield password
            yield unquote(password)
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from secrets_of(getattr(value, name, None))
        yield from secrets_of(value.__pydantic_extra__ or {})
    elif isinstance(value, dict):
        for item in value.values():
            yield from secrets_of(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from secrets_of(item)


class Redactor:
    """Masks known secrets (longest first, so a secret holding another is masked whole)."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        return redact(text, *self.secrets)


class TextFormatter(logging.Formatter):
    def __init__(self, redactor: Redactor, fmt: str) -> None:
        super().__init__(fmt)
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self.redactor(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the context
    fields the record carries, the process id, and the traceback if any (all redacted)."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.redactor(record.getMessage()),
            "pid": record.process,
        }
        context = TASK.get() or {}
        for name in CONTEXT:
            value = getattr(record, name, None)
            if value is None:
                value = context.get(name)
            if value is not None:
                line[name] = self.redactor(str(value))
        if record.exc_info:
            line["exception"] = self.redactor(self.formatException(record.exc_info))
        elif record.exc_text:
            line["exception"] = self.redactor(record.exc_text)
        return json.dumps(line, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure(
    settings: Any,
    *,
    text_format: str = TEXT_FORMAT,
    filters: Iterable[logging.Filter] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Set up the root logger for a process from ``settings`` (``log_level``, ``[log]``):
    one handler on ``stream`` (stderr), replacing the root's handlers. Returns it."""
    redactor = Redactor(secrets_of(settings))
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.log.format == "json":
        handler.setFormatter(JsonFormatter(redactor))
    else:
        handler.setFormatter(TextFormatter(redactor, text_format))
    for item in filters:
        handler.addFilter(item)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    return handler
