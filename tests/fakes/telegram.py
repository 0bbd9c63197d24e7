"""A fake Telegram Bot API server for tests.

Runs a real HTTP server (uvicorn in a background thread, 127.0.0.1, OS-chosen port) that speaks
enough of the Bot API for the *real* python-telegram-bot ``Application`` to poll it::

    with FakeBotAPI() as fake:
        app = (
            ApplicationBuilder()
            .token(fake.token)
            .base_url(fake.api_base_url)
            .base_file_url(fake.file_base_url)
            .build()
        )

Behaviour follows the real API where it matters to a bot:

* ``{"ok": true, "result": ...}`` / ``{"ok": false, "error_code": ..., "description": ...}``
  bodies with the matching HTTP status; unknown methods -> 404 "Not Found"; a well-formed but
  wrong token -> 401 "Unauthorized", a malformed one -> 404 (PTB raises ``InvalidToken`` for
  both).
* Form, query-string, JSON and multipart bodies; non-string values are JSON-decoded the way
  PTB encodes them (see ``_STRING_PARAMS``).
* ``getUpdates`` long-polls (wakes as soon as a test queues an update), honours ``offset``
  (confirmation), ``limit``, ``timeout`` and ``allowed_updates``; a newer ``getUpdates``
  terminates an older pending one with 409 Conflict, as Telegram does.
* Media: uploaded photos are validated (<= 10 MB, width + height <= 10000, ratio <= 20,
  decodable), stored and returned as ``PhotoSize`` lists (real thumbnails made with Pillow plus
  the full size). Like Telegram, photos are re-encoded as JPEG with the long side capped at
  2560 px unless ``recompress_photos=False``. Documents up to 50 MB. Everything gets a real
  ``file_id`` / ``file_unique_id`` and can be fetched with ``getFile`` + the file URL
  (``getFile`` refuses files over 20 MB with "Bad Request: file is too big").
* Texts: ``parse_mode`` HTML / MarkdownV2 / Markdown is parsed into plain text + entities and
  malformed markup is rejected with "Bad Request: can't parse entities: ..."; text is trimmed;
  4096 / 1024 limits for texts / captions; ``editMessageText`` answers "message is not
  modified" when text, entities and keyboard are unchanged.

Error descriptions copy the real API's where they are known; a few (media group size, photo
over 10 MB) are close approximations.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import io
import itertools
import json
import mimetypes
import re
import secrets
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from PIL import Image
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

__all__ = [
    "Call",
    "FakeBotAPI",
    "StoredFile",
    "UploadedFile",
]

MB = 1024 * 1024
MAX_DOWNLOAD_SIZE = 20 * MB
MAX_PHOTO_UPLOAD_SIZE = 10 * MB
MAX_FILE_UPLOAD_SIZE = 50 * MB
MAX_MESSAGE_LENGTH = 4096
MAX_CAPTION_LENGTH = 1024
PHOTO_THUMBNAIL_SIDES = (90, 320, 800, 1280)
MAX_PHOTO_SIDE = 2560
JPEG_QUALITY = 87

_TOKEN_RE = re.compile(r"\d+:[A-Za-z0-9_-]+")
_METHOD_PATH_RE = re.compile(r"/bot([^/]*)/([^/]*)")
_FILE_PATH_RE = re.compile(r"/file/bot([^/]*)/(.+)")
_COMMAND_RE = re.compile(r"(?<![^\s])/[A-Za-z0-9_]{1,32}(?:@[A-Za-z0-9_]{3,32})?(?![^\s])")

# Parameters that are strings in the Bot API. PTB sends strings as-is and JSON-encodes everything
# else, so these must not be JSON-decoded (a caption "123" must stay a string).
_STRING_PARAMS = frozenset(
    {
        "text",
        "caption",
        "parse_mode",
        "callback_query_id",
        "inline_message_id",
        "file_id",
        "photo",
        "document",
        "video",
        "audio",
        "animation",
        "voice",
        "sticker",
        "thumbnail",
        "action",
        "url",
        "description",
        "short_description",
        "name",
        "title",
        "emoji",
        "data",
        "query",
        "language_code",
        "business_connection_id",
        "message_effect_id",
        "secret_token",
        "ip_address",
        "certificate",
    }
)

_CHAT_ACTIONS = frozenset(
    {
        "typing",
        "upload_photo",
        "record_video",
        "upload_video",
        "record_voice",
        "upload_voice",
        "upload_document",
        "choose_sticker",
        "find_location",
        "record_video_note",
        "upload_video_note",
    }
)

_UPDATE_TYPES = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "callback_query",
    "inline_query",
    "chosen_inline_result",
    "my_chat_member",
    "chat_member",
)

_DEFAULT_ERROR_DESCRIPTIONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: terminated by other getUpdates request; "
    "make sure that only one bot instance is running",
    413: "Request Entity Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}

NOT_MODIFIED = (
    "Bad Request: message is not modified: specified new message content and reply markup are "
    "exactly the same as a content and reply markup of the current message"
)


# --------------------------------------------------------------------------------------------
# Public record types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadedFile:
    """One multipart file part of a request."""

    name: str  # the multipart field name ("photo", "document", "attached<hex>" ...)
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Call:
    """One request the bot made. ``status`` is the HTTP status the fake answered (0 = dropped)."""

    method: str
    params: dict[str, Any]
    files: dict[str, UploadedFile] = field(default_factory=dict)
    http_method: str = "POST"
    received_at: float = field(default_factory=time.time)
    status: int = 200
    result: Any = None  # the "result" returned on success
    error: dict[str, Any] | None = None  # the error body returned on failure

    @property
    def ok(self) -> bool:
        return self.status == 200

    def file(self, name: str | None = None) -> UploadedFile:
        """An uploaded file by part name or ``attach://name``; without a name, the only one."""
        if name is None:
            if len(self.files) != 1:
                raise KeyError(f"{self.method}: expected one uploaded file, got {list(self.files)}")
            return next(iter(self.files.values()))
        return self.files[name.removeprefix("attach://")]

    def media_files(self) -> list[UploadedFile]:
        """For sendMediaGroup / editMessageMedia: the uploaded file of each media item, in order."""
        media = self.params.get("media")
        items = media if isinstance(media, list) else [media]
        out = []
        for item in items:
            ref = item.get("media") if isinstance(item, dict) else None
            if isinstance(ref, str) and ref.startswith("attach://"):
                out.append(self.file(ref))
        return out


@dataclass
class StoredFile:
    """A file the fake knows (sent by a simulated user or uploaded by the bot)."""

    file_id: str
    file_unique_id: str
    data: bytes
    file_path: str
    kind: str  # "photo" | "document"
    width: int | None = None
    height: int | None = None
    mime_type: str | None = None
    file_name: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)


class ApiError(Exception):
    """Raised by method handlers; turned into an error response."""

    def __init__(self, code: int, description: str, parameters: dict[str, Any] | None = None):
        super().__init__(description)
        self.code = code
        self.description = description
        self.parameters = parameters

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "ok": False,
            "error_code": self.code,
            "description": self.description,
        }
        if self.parameters:
            body["parameters"] = self.parameters
        return body


def _bad(description: str) -> ApiError:
    return ApiError(400, f"Bad Request: {description}")


@dataclass
class _Fault:
    method: str
    kind: str  # "error" | "drop" | "delay"
    remaining: int
    error_code: int = 429
    description: str | None = None
    retry_after: int | None = None
    delay: float = 0.0
    processed: bool = False


_DROP = object()


# --------------------------------------------------------------------------------------------
# Text helpers: UTF-16 lengths and parse_mode parsing
# --------------------------------------------------------------------------------------------


def _u16(s: str) -> int:
    return len(s.encode("utf-16-le")) // 2


def _byte_offset(text: str, index: int) -> int:
    return len(text[:index].encode("utf-8"))


class _EntityError(Exception):
    pass


class _TextBuilder:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0  # in UTF-16 code units
        self.entities: list[dict[str, Any]] = []

    def add(self, s: str) -> None:
        self.parts.append(s)
        self.length += _u16(s)

    def entity(self, type_: str, start: int, **extra: Any) -> None:
        if self.length > start:
            self.entities.append({"type": type_, "offset": start, "length": self.length - start})
            self.entities[-1].update({k: v for k, v in extra.items() if v is not None})

    def result(self) -> tuple[str, list[dict[str, Any]]]:
        return "".join(self.parts), self.entities


_HTML_TAGS = {
    "b": "bold",
    "strong": "bold",
    "i": "italic",
    "em": "italic",
    "u": "underline",
    "ins": "underline",
    "s": "strikethrough",
    "strike": "strikethrough",
    "del": "strikethrough",
    "span": "spoiler",
    "tg-spoiler": "spoiler",
    "a": "text_link",
    "code": "code",
    "pre": "pre",
    "blockquote": "blockquote",
    "tg-emoji": "custom_emoji",
}
_HTML_TAG_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")
_HTML_ATTR_RE = re.compile(r"\s*([A-Za-z][A-Za-z0-9_-]*)(?:\s*=\s*(\"[^\"]*\"|'[^']*'|[^\s>]+))?")
_HTML_ENTITY_RE = re.compile(r"&(?:#(\d{1,7})|#[xX]([0-9a-fA-F]{1,6})|(lt|gt|amp|quot));")


def _parse_html(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Telegram's HTML style: supported tags only, balanced, &lt; &gt; &amp; &quot; &#N;."""
    out = _TextBuilder()
    stack: list[tuple[str, str, int, dict[str, str]]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "<":
            start = i
            if text.startswith("</", i):
                j = text.find(">", i)
                if j < 0:
                    raise _EntityError(f"Unclosed end tag at byte offset {_byte_offset(text, i)}")
                name = text[i + 2 : j].strip().lower()
                if not stack:
                    raise _EntityError(
                        f"Unexpected end tag at byte offset {_byte_offset(text, start)}"
                    )
                tag, type_, begin, attrs = stack.pop()
                if name and name != tag:
                    raise _EntityError(
                        f"Unmatched end tag at byte offset {_byte_offset(text, start)}, "
                        f'expected "</{tag}>", found "</{name}>"'
                    )
                if type_ == "text_link":
                    if attrs.get("href"):
                        out.entity(type_, begin, url=attrs["href"])
                elif type_ == "pre":
                    out.entity(type_, begin, language=attrs.get("_language"))
                elif type_ == "code" and stack and stack[-1][1] == "pre":
                    lang = attrs.get("class", "")
                    if lang.startswith("language-"):
                        stack[-1][3]["_language"] = lang.removeprefix("language-")
                elif type_ == "custom_emoji":
                    out.entity(type_, begin, custom_emoji_id=attrs.get("emoji-id"))
                elif type_ == "blockquote" and "expandable" in attrs:
                    out.entity("expandable_blockquote", begin)
                else:
                    out.entity(type_, begin)
                i = j + 1
                continue
            m = _HTML_TAG_NAME_RE.match(text, i + 1)
            name = m.group(0).lower() if m else ""
            if name not in _HTML_TAGS:
                raise _EntityError(
                    f'Unsupported start tag "{name}" at byte offset {_byte_offset(text, start)}'
                )
            pos = m.end() if m else i + 1
            attrs: dict[str, str] = {}
            while True:
                while pos < n and text[pos].isspace():
                    pos += 1
                if pos >= n:
                    raise _EntityError(
                        f"Unclosed start tag at byte offset {_byte_offset(text, start)}"
                    )
                if text[pos] == ">":
                    break
                am = _HTML_ATTR_RE.match(text, pos)
                if not am or am.end() == pos:
                    raise _EntityError(
                        f"Unclosed start tag at byte offset {_byte_offset(text, start)}"
                    )
                value = am.group(2) or ""
                if value[:1] in "\"'":
                    value = value[1:-1]
                attrs[am.group(1).lower()] = _unescape_html(value)
                pos = am.end()
            if name == "span" and attrs.get("class") != "tg-spoiler":
                raise _EntityError(
                    f'Tag "span" must have class "tg-spoiler" at byte offset '
                    f"{_byte_offset(text, start)}"
                )
            stack.append((name, _HTML_TAGS[name], out.length, attrs))
            i = pos + 1
            continue
        if c == "&":
            m = _HTML_ENTITY_RE.match(text, i)
            if m:
                out.add(_html_entity_value(m))
                i = m.end()
                continue
        out.add(c)
        i += 1
    if stack:
        raise _EntityError(f'Can\'t find end tag corresponding to start tag "{stack[-1][0]}"')
    return out.result()


def _html_entity_value(m: re.Match[str]) -> str:
    if m.group(1):
        return chr(int(m.group(1)))
    if m.group(2):
        return chr(int(m.group(2), 16))
    return {"lt": "<", "gt": ">", "amp": "&", "quot": '"'}[m.group(3)]


def _unescape_html(s: str) -> str:
    return _HTML_ENTITY_RE.sub(_html_entity_value, s)


_MDV2_RESERVED = set("_*[]()~`>#+-=|{}.!")
_MDV2_TOGGLES = {
    "*": "bold",
    "_": "italic",
    "__": "underline",
    "~": "strikethrough",
    "||": "spoiler",
}
_MDV2_NAMES = {
    "bold": "Bold",
    "italic": "Italic",
    "underline": "Underline",
    "strikethrough": "Strikethrough",
    "spoiler": "Spoiler",
    "text_link": "TextUrl",
    "code": "Code",
    "pre": "Pre",
}


def _parse_markdown_v2(text: str) -> tuple[str, list[dict[str, Any]]]:
    """MarkdownV2: reserved characters must be escaped unless they are entity markup."""
    out = _TextBuilder()
    stack: list[tuple[str, int, int]] = []  # (type, start in UTF-16, byte offset)
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and 0 < ord(text[i + 1]) <= 126:
            out.add(text[i + 1])
            i += 2
            continue
        if c == "`":
            pre = text.startswith("```", i)
            delim = "```" if pre else "`"
            j = i + len(delim)
            body: list[str] = []
            while j < n and not text.startswith(delim, j):
                if text[j] == "\\" and j + 1 < n and text[j + 1] in "`\\":
                    body.append(text[j + 1])
                    j += 2
                else:
                    body.append(text[j])
                    j += 1
            if j >= n:
                kind = "Pre" if pre else "Code"
                raise _EntityError(
                    f"Can't find end of {kind} entity at byte offset {_byte_offset(text, i)}"
                )
            content = "".join(body)
            language = None
            if pre and "\n" in content:
                first, rest = content.split("\n", 1)
                if first and not first.isspace():
                    language, content = first.strip(), rest
            begin = out.length
            out.add(content)
            out.entity("pre" if pre else "code", begin, language=language)
            i = j + len(delim)
            continue
        if c == ">" and (i == 0 or text[i - 1] == "\n"):
            j = text.find("\n", i)
            j = n if j < 0 else j
            line = text[i + 1 : j]
            begin = out.length
            inner, entities = _parse_markdown_v2(line)
            for e in entities:
                e["offset"] += begin
            out.add(inner)
            out.entities.extend(entities)
            out.entity("blockquote", begin)
            i = j
            continue
        if c == "[":
            stack.append(("text_link", out.length, _byte_offset(text, i)))
            i += 1
            continue
        if c == "]" and stack and stack[-1][0] == "text_link":
            _, begin, _bo = stack.pop()
            if not text.startswith("(", i + 1):
                raise _EntityError(
                    "Character ']' is reserved and must be escaped with the preceding '\\'"
                )
            j = i + 2
            url_chars: list[str] = []
            while j < n and text[j] != ")":
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                url_chars.append(text[j])
                j += 1
            if j >= n:
                raise _EntityError(f"Can't find end of a url at byte offset {_bo}")
            out.entity("text_link", begin, url="".join(url_chars))
            i = j + 1
            continue
        token = text[i : i + 2] if text[i : i + 2] in ("__", "||") else c
        if token in _MDV2_TOGGLES:
            type_ = _MDV2_TOGGLES[token]
            if stack and stack[-1][0] == type_:
                _, begin, _bo = stack.pop()
                out.entity(type_, begin)
            else:
                stack.append((type_, out.length, _byte_offset(text, i)))
            i += len(token)
            continue
        if c in _MDV2_RESERVED:
            raise _EntityError(
                f"Character '{c}' is reserved and must be escaped with the preceding '\\'"
            )
        out.add(c)
        i += 1
    if stack:
        type_, _, offset = stack[-1]
        raise _EntityError(f"Can't find end of {_MDV2_NAMES[type_]} entity at byte offset {offset}")
    return out.result()


def _parse_markdown_legacy(text: str) -> tuple[str, list[dict[str, Any]]]:
    """Legacy Markdown: *bold* _italic_ `code` ```pre``` [text](url), no nesting."""
    out = _TextBuilder()
    i, n = 0, len(text)
    simple = {"*": "bold", "_": "italic", "`": "code"}
    while i < n:
        c = text[i]
        if c == "\\" and i + 1 < n and text[i + 1] in "*_`[":
            out.add(text[i + 1])
            i += 2
            continue
        if text.startswith("```", i):
            j = text.find("```", i + 3)
            if j < 0:
                raise _EntityError(
                    f"Can't find end of the entity starting at byte offset {_byte_offset(text, i)}"
                )
            begin = out.length
            out.add(text[i + 3 : j])
            out.entity("pre", begin)
            i = j + 3
            continue
        if c in simple:
            j = text.find(c, i + 1)
            if j < 0:
                raise _EntityError(
                    f"Can't find end of the entity starting at byte offset {_byte_offset(text, i)}"
                )
            begin = out.length
            out.add(text[i + 1 : j])
            out.entity(simple[c], begin)
            i = j + 1
            continue
        if c == "[":
            j = text.find("](", i)
            k = text.find(")", j + 2) if j >= 0 else -1
            if j < 0 or k < 0:
                raise _EntityError(
                    f"Can't find end of the entity starting at byte offset {_byte_offset(text, i)}"
                )
            begin = out.length
            out.add(text[i + 1 : j])
            out.entity("text_link", begin, url=text[j + 2 : k])
            i = k + 1
            continue
        out.add(c)
        i += 1
    return out.result()


def _trim(text: str, entities: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """Telegram strips leading/trailing whitespace; entities are shifted/clipped accordingly."""
    stripped = text.strip()
    if stripped == text:
        return text, entities
    lead = _u16(text[: len(text) - len(text.lstrip())])
    total = _u16(stripped)
    out = []
    for e in entities:
        start = max(0, e["offset"] - lead)
        end = min(total, e["offset"] + e["length"] - lead)
        if end > start:
            out.append({**e, "offset": start, "length": end - start})
    return stripped, out


def _format_text(
    text: str, parse_mode: str | None, entities: Any, *, what: str
) -> tuple[str, list[dict[str, Any]]]:
    mode = (parse_mode or "").lower()
    try:
        if mode == "html":
            plain, ents = _parse_html(text)
        elif mode == "markdownv2":
            plain, ents = _parse_markdown_v2(text)
        elif mode == "markdown":
            plain, ents = _parse_markdown_legacy(text)
        elif mode:
            raise _bad(f"unsupported parse_mode {parse_mode!r}")
        else:
            plain, ents = text, list(entities) if isinstance(entities, list) else []
    except _EntityError as exc:
        raise _bad(f"can't parse entities: {exc}") from None
    plain, ents = _trim(plain, ents)
    ents.sort(key=lambda e: (e["offset"], -e["length"]))
    limit = MAX_MESSAGE_LENGTH if what == "text" else MAX_CAPTION_LENGTH
    if _u16(plain) > limit:
        raise _bad("message is too long" if what == "text" else "message caption is too long")
    return plain, ents


def _command_entities(text: str) -> list[dict[str, Any]]:
    return [
        {"type": "bot_command", "offset": _u16(text[: m.start()]), "length": _u16(m.group(0))}
        for m in _COMMAND_RE.finditer(text)
    ]


# --------------------------------------------------------------------------------------------
# Param decoding
# --------------------------------------------------------------------------------------------


def _decode_value(name: str, value: str) -> Any:
    if name in _STRING_PARAMS:
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _int(params: dict[str, Any], name: str, default: int | None = None) -> int | None:
    value = params.get(name, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _bad(f"invalid {name} specified") from None


# --------------------------------------------------------------------------------------------
# The server thread
# --------------------------------------------------------------------------------------------


class _UvicornServer(uvicorn.Server):
    """uvicorn.Server whose main loop ends as soon as :meth:`request_exit` is called.

    (The stock loop only checks ``should_exit`` every 0.1 s; this shaves that off every stop.)
    """

    _exit_event: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._exit_event = asyncio.Event()
        counter = 0
        while not await self.on_tick(counter):
            counter += 10  # on_tick refreshes the Date header when counter % 10 == 0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._exit_event.wait(), 1.0)

    def request_exit(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.should_exit = True
        event = self._exit_event
        if loop is not None and event is not None:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(event.set)


class _ServerThread:
    """uvicorn on 127.0.0.1:<OS-chosen port> in a daemon thread with its own event loop."""

    def __init__(self, app: Callable[..., Any]) -> None:
        self._sock = socket.socket(
            socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )  # TCP_NODELAY
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            interface="asgi3",
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _UvicornServer(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name="fake-telegram-api", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        try:
            loop.run_until_complete(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # pragma: no cover - surfaced by start()
            self._error = exc
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"fake Telegram server failed to start: {self._error!r}")
            time.sleep(0.005)

    def stop(self, timeout: float = 5.0) -> None:
        self._server.request_exit(self.loop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout)
        with contextlib.suppress(OSError):
            self._sock.close()


# --------------------------------------------------------------------------------------------
# FakeBotAPI
# --------------------------------------------------------------------------------------------


class FakeBotAPI:
    """In-process fake of https://api.telegram.org for one bot token. See module docstring."""

    def __init__(
        self,
        token: str = "123456:TEST-token",
        *,
        bot_username: str = "retouch_test_bot",
        bot_first_name: str = "Retouch Test",
        recompress_photos: bool = True,
    ) -> None:
        self.token = token
        self.recompress_photos = recompress_photos
        bot_id = int(token.split(":", 1)[0]) if token.split(":", 1)[0].isdigit() else 123456
        self.bot_user: dict[str, Any] = {
            "id": bot_id,
            "is_bot": True,
            "first_name": bot_first_name,
            "username": bot_username,
        }
        self._lock = threading.RLock()
        self._calls: list[Call] = []
        self._faults: list[_Fault] = []
        self._updates: list[dict[str, Any]] = []
        self._update_ids = itertools.count(1)
        self._allowed_updates: set[str] | None = None
        self._poll_generation = 0
        self._closing = False
        self._waiters: set[asyncio.Future[None]] = set()
        self._users: dict[int, dict[str, Any]] = {}
        self._chats: dict[int, dict[str, Any]] = {}
        self._messages: dict[tuple[int, int], dict[str, Any]] = {}
        self._next_message_id: dict[int, int] = {}
        self._files: dict[str, StoredFile] = {}
        self._files_by_path: dict[str, StoredFile] = {}
        self._photo_sets: dict[str, list[dict[str, Any]]] = {}  # any size's file_id -> sizes
        self._file_counter = itertools.count(1)
        self._callback_counter = itertools.count(1)
        self._pending_callbacks: dict[str, dict[str, Any]] = {}
        self.callback_answers: dict[str, dict[str, Any]] = {}
        self.commands: list[dict[str, Any]] = []
        self.webhook_url = ""
        self.webhook_secret_token: str | None = None
        self.server_errors: list[BaseException] = []  # unexpected exceptions in the fake
        self._server: _ServerThread | None = None
        self._handlers: dict[str, Callable[[Call], Any]] = {
            "getMe": self._get_me,
            "logOut": lambda call: True,
            "close": lambda call: True,
            "deleteWebhook": self._delete_webhook,
            "setWebhook": self._set_webhook,
            "getWebhookInfo": self._get_webhook_info,
            "getFile": self._get_file,
            "sendMessage": self._send_message,
            "editMessageText": self._edit_message_text,
            "editMessageCaption": self._edit_message_caption,
            "editMessageReplyMarkup": self._edit_message_reply_markup,
            "editMessageMedia": self._edit_message_media,
            "sendPhoto": self._send_photo,
            "sendDocument": self._send_document,
            "sendMediaGroup": self._send_media_group,
            "sendChatAction": self._send_chat_action,
            "answerCallbackQuery": self._answer_callback_query,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": lambda call: copy.deepcopy(self.commands),
            "deleteMyCommands": self._delete_my_commands,
            "deleteMessage": self._delete_message,
            "getChat": self._get_chat,
        }
        self._method_names = {name.lower(): name for name in [*self._handlers, "getUpdates"]}

    # ---------------------------------------------------------------- lifecycle / properties

    def start(self) -> FakeBotAPI:
        if self._server is not None:
            raise RuntimeError("FakeBotAPI already started")
        self._server = _ServerThread(self._asgi)
        self._server.start()
        return self

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        with self._lock:
            self._closing = True
        self._notify()  # release pending long polls at once
        server.stop()

    def __enter__(self) -> FakeBotAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FakeBotAPI not started")
        return self._server.port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base_url(self) -> str:
        """For ``ApplicationBuilder().base_url(...)`` (PTB appends the token)."""
        return f"{self.base_url}/bot"

    @property
    def file_base_url(self) -> str:
        """For ``ApplicationBuilder().base_file_url(...)`` (PTB appends the token)."""
        return f"{self.base_url}/file/bot"

    # ---------------------------------------------------------------- recorded calls

    @property
    def calls(self) -> list[Call]:
        """Snapshot of every request so far (completed ones, in completion order)."""
        with self._lock:
            return list(self._calls)

    @property
    def call_count(self) -> int:
        """Number of calls so far; pass it as ``since=`` to wait only for later calls."""
        with self._lock:
            return len(self._calls)

    def calls_to(self, method: str, *, since: int = 0) -> list[Call]:
        with self._lock:
            return [c for c in self._calls[since:] if c.method == method]

    def last_call(self, method: str) -> Call:
        found = self.calls_to(method)
        if not found:
            raise AssertionError(f"no {method} call; calls were: {self._summary()}")
        return found[-1]

    def clear_calls(self) -> None:
        with self._lock:
            self._calls.clear()

    def _matching(
        self, method: str, predicate: Callable[[Call], bool] | None, since: int
    ) -> list[Call]:
        with self._lock:
            calls = [c for c in self._calls[since:] if c.method == method]
        return [c for c in calls if predicate is None or predicate(c)]

    def _summary(self) -> str:
        with self._lock:
            names = [c.method for c in self._calls if c.method != "getUpdates"]
        return ", ".join(names) or "(none besides getUpdates)"

    async def wait_for(
        self,
        method: str,
        count: int = 1,
        timeout: float = 10.0,
        predicate: Callable[[Call], bool] | None = None,
        *,
        since: int = 0,
    ) -> list[Call]:
        """Wait until ``count`` calls to ``method`` (matching ``predicate``) have completed.

        Counts calls from index ``since`` of :attr:`calls` (default: all). Returns the matching
        calls; raises ``AssertionError`` on timeout.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self._matching(method, predicate, since)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {count} {method} call(s), "
                    f"got {len(found)}; calls were: {self._summary()}"
                )
            await asyncio.sleep(0.01)

    def wait_for_sync(
        self,
        method: str,
        count: int = 1,
        timeout: float = 10.0,
        predicate: Callable[[Call], bool] | None = None,
        *,
        since: int = 0,
    ) -> list[Call]:
        """Blocking variant of :meth:`wait_for` (for threads / sync tests)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self._matching(method, predicate, since)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {count} {method} call(s), "
                    f"got {len(found)}; calls were: {self._summary()}"
                )
            time.sleep(0.01)

    # ---------------------------------------------------------------- fault injection

    def fail_next(
        self,
        method: str,
        error_code: int = 429,
        retry_after: int | None = 1,
        count: int = 1,
        description: str | None = None,
    ) -> None:
        """The next ``count`` calls to ``method`` fail with ``error_code``.

        429 gives ``"Too Many Requests: retry after N"`` + ``parameters.retry_after`` (PTB:
        ``RetryAfter``); other codes give the usual description (400 ``BadRequest``, 403
        ``Forbidden``, 500/502 ``NetworkError`` ...) unless ``description`` is given.
        ``method`` may also be ``"downloadFile"`` (file downloads).
        """
        with self._lock:
            self._faults.append(
                _Fault(
                    method,
                    "error",
                    count,
                    error_code=error_code,
                    description=description,
                    retry_after=retry_after if error_code == 429 else None,
                )
            )

    def drop_next(self, method: str, count: int = 1, *, processed: bool = False) -> None:
        """Close the connection instead of answering (PTB: ``NetworkError``).

        With ``processed=True`` the request takes effect first (e.g. the message *is* sent),
        only the answer is lost - the case that makes naive retries send duplicates.
        """
        with self._lock:
            self._faults.append(_Fault(method, "drop", count, processed=processed))

    def delay_next(self, method: str, seconds: float, count: int = 1) -> None:
        """Answer the next ``count`` calls to ``method`` only after ``seconds``."""
        with self._lock:
            self._faults.append(_Fault(method, "delay", count, delay=seconds))

    def clear_faults(self) -> None:
        """Forget all pending fail_next / drop_next / delay_next injections."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, method: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ---------------------------------------------------------------- users, chats, messages

    def add_user(
        self,
        user_id: int,
        first_name: str | None = None,
        *,
        last_name: str | None = None,
        username: str | None = None,
        language_code: str | None = "en",
        is_premium: bool | None = None,
    ) -> dict[str, Any]:
        """Register (or update) a simulated user; otherwise users are created on first use."""
        user: dict[str, Any] = {
            "id": user_id,
            "is_bot": False,
            "first_name": first_name or f"User{user_id}",
        }
        for key, value in (
            ("last_name", last_name),
            ("username", username if username is not None else f"user{user_id}"),
            ("language_code", language_code),
            ("is_premium", is_premium),
        ):
            if value is not None:
                user[key] = value
        with self._lock:
            self._users[user_id] = user
            chat = self._chats.get(user_id)
            if chat is not None and chat["type"] == "private":
                self._chats[user_id] = self._private_chat(user)
        return copy.deepcopy(user)

    def add_chat(
        self, chat_id: int, chat_type: str = "group", title: str | None = None
    ) -> dict[str, Any]:
        """Register a group / supergroup / channel chat (ids are negative, as in Telegram)."""
        if chat_type == "private":
            return copy.deepcopy(self._chat(chat_id, "private", chat_id))
        if chat_id >= 0:
            raise ValueError(f"{chat_type} chat ids are negative, got {chat_id}")
        chat = {"id": chat_id, "type": chat_type, "title": title or f"Test {chat_type} {-chat_id}"}
        with self._lock:
            self._chats[chat_id] = chat
        return copy.deepcopy(chat)

    def _user(self, user_id: int) -> dict[str, Any]:
        with self._lock:
            if user_id not in self._users:
                self.add_user(user_id)
            return self._users[user_id]

    @staticmethod
    def _private_chat(user: dict[str, Any]) -> dict[str, Any]:
        chat = {"id": user["id"], "type": "private", "first_name": user["first_name"]}
        for key in ("last_name", "username"):
            if key in user:
                chat[key] = user[key]
        return chat

    def _chat(self, chat_id: int, chat_type: str, user_id: int | None = None) -> dict[str, Any]:
        with self._lock:
            chat = self._chats.get(chat_id)
            if chat is not None:
                if chat["type"] != chat_type:
                    raise ValueError(f"chat {chat_id} is a {chat['type']} chat, not {chat_type}")
                return chat
            if chat_type == "private":
                if user_id is not None and user_id != chat_id:
                    raise ValueError("in a private chat, chat_id must equal the user's id")
                if chat_id <= 0:
                    raise ValueError(f"private chat ids are positive, got {chat_id}")
                chat = self._private_chat(self._user(chat_id))
                self._chats[chat_id] = chat
                return chat
            self.add_chat(chat_id, chat_type)
            return self._chats[chat_id]

    def _chat_for_bot(self, params: dict[str, Any]) -> dict[str, Any]:
        """Resolve ``chat_id`` of a bot call (unknown numeric chats are created on demand)."""
        raw = params.get("chat_id")
        if raw is None or raw == "":
            raise _bad("chat_id is empty")
        if isinstance(raw, str) and raw.startswith("@"):
            for chat in self._chats.values():
                if chat.get("username", "").lower() == raw[1:].lower():
                    return chat
            raise _bad("chat not found")
        try:
            chat_id = int(raw)
        except (TypeError, ValueError):
            raise _bad("chat not found") from None
        if chat_id == 0:
            raise _bad("chat not found")
        if chat_id in self._chats:
            return self._chats[chat_id]
        return self._chat(chat_id, "private" if chat_id > 0 else "group")

    def _store_message(
        self, chat: dict[str, Any], sender: dict[str, Any], content: dict[str, Any]
    ) -> dict[str, Any]:
        with self._lock:
            message_id = self._next_message_id.get(chat["id"], 1)
            self._next_message_id[chat["id"]] = message_id + 1
            message = {
                "message_id": message_id,
                "from": copy.deepcopy(sender),
                "chat": copy.deepcopy(chat),
                "date": int(time.time()),
                **content,
            }
            self._messages[(chat["id"], message_id)] = message
            return message

    def _reply_target(self, chat_id: int, message_id: int | None) -> dict[str, Any] | None:
        if message_id is None:
            return None
        target = self._messages.get((chat_id, int(message_id)))
        if target is None:
            return None
        reply = copy.deepcopy(target)
        reply.pop("reply_to_message", None)  # Telegram never nests replies
        return reply

    def message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        """Current state of a stored message (after edits)."""
        with self._lock:
            return copy.deepcopy(self._messages[(chat_id, message_id)])

    def messages(self, chat_id: int, *, from_bot: bool | None = None) -> list[dict[str, Any]]:
        """Stored (not deleted) messages of a chat in id order; ``from_bot`` filters by sender."""
        with self._lock:
            found = sorted(
                (m for (cid, _), m in self._messages.items() if cid == chat_id),
                key=lambda m: m["message_id"],
            )
            if from_bot is not None:
                found = [m for m in found if (m["from"]["id"] == self.bot_user["id"]) == from_bot]
            return copy.deepcopy(found)

    def bot_messages(self, chat_id: int) -> list[dict[str, Any]]:
        return self.messages(chat_id, from_bot=True)

    # ---------------------------------------------------------------- files

    def _new_file_ids(self, prefix: str) -> tuple[str, str]:
        n = next(self._file_counter)
        file_id = f"{prefix}{n:06d}{secrets.token_urlsafe(24)}"
        unique_id = f"AQAD{n:06d}{secrets.token_urlsafe(6)}"
        return file_id, unique_id

    def _store_file(self, kind: str, data: bytes, ext: str, **meta: Any) -> StoredFile:
        prefix = "AgACAgIAAxkBAA" if kind == "photo" else "BQACAgIAAxkBAA"
        file_id, unique_id = self._new_file_ids(prefix)
        folder = "photos" if kind == "photo" else "documents"
        path = f"{folder}/file_{unique_id[4:10]}{ext}"
        stored = StoredFile(file_id, unique_id, data, path, kind, **meta)
        with self._lock:
            self._files[file_id] = stored
            self._files_by_path[path] = stored
        return stored

    def file(self, file_id: str) -> StoredFile:
        with self._lock:
            return self._files[file_id]

    def file_bytes(self, file_id: str) -> bytes:
        return self.file(file_id).data

    def photo_bytes(self, message: dict[str, Any]) -> bytes:
        """Bytes of the largest size of a message's photo (message dict or sent-message result)."""
        return self.file_bytes(message["photo"][-1]["file_id"])

    def _make_photo(self, data: bytes) -> list[dict[str, Any]]:
        """Store a photo like Telegram: thumbnails + full size. Raises ApiError if invalid."""
        if not data:
            raise _bad("file must be non-empty")
        if len(data) > MAX_PHOTO_UPLOAD_SIZE:
            raise _bad("PHOTO_SAVE_FILE_INVALID")
        try:
            with Image.open(io.BytesIO(data)) as img:
                img.load()
                image = img.copy()
                source_format = img.format
        except Exception:
            raise _bad("IMAGE_PROCESS_FAILED") from None
        w, h = image.size
        if w + h > 10000 or max(w, h) > 20 * min(w, h):
            raise _bad("PHOTO_INVALID_DIMENSIONS")
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        long_side = max(w, h)
        if self.recompress_photos or long_side > MAX_PHOTO_SIDE:
            full, full_format = _jpeg(rgb, MAX_PHOTO_SIDE), "JPEG"
            rgb = _scaled(rgb, MAX_PHOTO_SIDE)
        else:
            full, full_format = (data, w, h), source_format
        thumbs = []
        for side in sorted(PHOTO_THUMBNAIL_SIDES, reverse=True):
            if long_side > side:
                rgb = _scaled(rgb, side)  # each thumbnail from the previous, larger one
                thumbs.append(_jpeg(rgb, side))
        sizes = [self._photo_size(jpeg) for jpeg in reversed(thumbs)]
        sizes.append(self._photo_size(full, full_format))
        with self._lock:
            for size in sizes:
                self._photo_sets[size["file_id"]] = sizes
        return copy.deepcopy(sizes)

    def _photo_size(self, jpeg: tuple[bytes, int, int], fmt: str | None = "JPEG") -> dict[str, Any]:
        data, w, h = jpeg
        fmt = (fmt or "").upper()
        mime = (
            Image.MIME.get(fmt)
            or mimetypes.guess_type(f"x.{fmt.lower()}")[0]
            or "application/octet-stream"
        )
        ext = mimetypes.guess_extension(mime) or ".bin"
        stored = self._store_file("photo", data, ext, width=w, height=h, mime_type=mime)
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(data),
            "width": w,
            "height": h,
        }

    def _make_document(
        self, data: bytes, file_name: str | None, mime_type: str | None
    ) -> dict[str, Any]:
        if not data:
            raise _bad("file must be non-empty")
        if len(data) > MAX_FILE_UPLOAD_SIZE:
            raise ApiError(413, "Request Entity Too Large")
        if not mime_type or mime_type == "application/octet-stream":
            mime_type = (file_name and mimetypes.guess_type(file_name)[0]) or mime_type
        ext = ""
        if file_name and "." in file_name:
            ext = "." + file_name.rsplit(".", 1)[1][:10]
        stored = self._store_file("document", data, ext, mime_type=mime_type, file_name=file_name)
        doc: dict[str, Any] = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": len(data),
        }
        if file_name:
            doc["file_name"] = file_name
        if mime_type:
            doc["mime_type"] = mime_type
        if mime_type and mime_type.startswith("image/") and len(data) <= MAX_DOWNLOAD_SIZE:
            with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as img:
                img.load()
                thumb = self._photo_size(_jpeg(img.convert("RGB"), 320))
                doc["thumbnail"] = thumb
        return doc

    # ---------------------------------------------------------------- simulated users

    def _push_update(self, kind: str, payload: dict[str, Any]) -> int:
        with self._lock:
            update_id = next(self._update_ids)
            self._updates.append({"update_id": update_id, kind: copy.deepcopy(payload)})
        self._notify()
        return update_id

    def _user_message(
        self,
        chat_id: int,
        user_id: int,
        chat_type: str,
        content: dict[str, Any],
        reply_to_message_id: int | None,
    ) -> dict[str, Any]:
        with self._lock:
            chat = self._chat(chat_id, chat_type, user_id)
            user = self._user(user_id)
            if reply_to_message_id is not None:
                reply = self._reply_target(chat_id, reply_to_message_id)
                if reply is None:
                    raise ValueError(f"no message {reply_to_message_id} in chat {chat_id}")
                content["reply_to_message"] = reply
            message = self._store_message(chat, user, content)
            self._push_update("message", message)
            return copy.deepcopy(message)

    def user_sends_text(
        self,
        chat_id: int,
        user_id: int,
        text: str,
        reply_to_message_id: int | None = None,
        chat_type: str = "private",
    ) -> dict[str, Any]:
        """Queue a text message update; bot commands get ``bot_command`` entities."""
        content: dict[str, Any] = {"text": text}
        entities = _command_entities(text)
        if entities:
            content["entities"] = entities
        return self._user_message(chat_id, user_id, chat_type, content, reply_to_message_id)

    def user_sends_photo(
        self,
        chat_id: int,
        user_id: int,
        image_bytes: bytes,
        caption: str | None = None,
        media_group_id: str | None = None,
        reply_to_message_id: int | None = None,
        chat_type: str = "private",
    ) -> dict[str, Any]:
        """Queue a photo message (sizes made as Telegram would from ``image_bytes``)."""
        try:
            photo = self._make_photo(image_bytes)
        except ApiError as exc:
            raise ValueError(f"Telegram would not accept this photo: {exc.description}") from None
        content: dict[str, Any] = {"photo": photo}
        if caption is not None:
            content["caption"] = caption
            entities = _command_entities(caption)
            if entities:
                content["caption_entities"] = entities
        if media_group_id is not None:
            content["media_group_id"] = str(media_group_id)
        return self._user_message(chat_id, user_id, chat_type, content, reply_to_message_id)

    def user_sends_album(
        self,
        chat_id: int,
        user_id: int,
        images: Iterable[bytes],
        caption: str | None = None,
        chat_type: str = "private",
    ) -> list[dict[str, Any]]:
        """Several photo updates sharing a ``media_group_id`` (caption on the first)."""
        group_id = str(10**17 + next(self._file_counter))
        return [
            self.user_sends_photo(
                chat_id,
                user_id,
                data,
                caption=caption if i == 0 else None,
                media_group_id=group_id,
                chat_type=chat_type,
            )
            for i, data in enumerate(images)
        ]

    def user_sends_document(
        self,
        chat_id: int,
        user_id: int,
        data: bytes,
        file_name: str,
        mime_type: str | None = None,
        caption: str | None = None,
        reply_to_message_id: int | None = None,
        chat_type: str = "private",
    ) -> dict[str, Any]:
        """Queue a document message (any size; ``getFile`` refuses it above 20 MB)."""
        if not data:
            raise ValueError("Telegram does not accept empty files")
        mime_type = mime_type or mimetypes.guess_type(file_name)[0] or "application/octet-stream"
        ext = "." + file_name.rsplit(".", 1)[1][:10] if "." in file_name else ""
        stored = self._store_file("document", data, ext, mime_type=mime_type, file_name=file_name)
        document: dict[str, Any] = {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_name": file_name,
            "mime_type": mime_type,
            "file_size": len(data),
        }
        if mime_type.startswith("image/") and len(data) <= MAX_DOWNLOAD_SIZE:
            with contextlib.suppress(Exception), Image.open(io.BytesIO(data)) as img:
                img.load()
                document["thumbnail"] = self._photo_size(_jpeg(img.convert("RGB"), 320))
        content: dict[str, Any] = {"document": document}
        if caption is not None:
            content["caption"] = caption
            entities = _command_entities(caption)
            if entities:
                content["caption_entities"] = entities
        return self._user_message(chat_id, user_id, chat_type, content, reply_to_message_id)

    def user_presses_button(
        self, chat_id: int, user_id: int, message_id: int, data: str
    ) -> dict[str, Any]:
        """Queue a ``callback_query`` for an inline button on a stored message.

        Returns the callback query dict; its ``id`` is what ``answerCallbackQuery`` must answer.
        """
        with self._lock:
            message = self._messages.get((chat_id, message_id))
            if message is None:
                raise ValueError(f"no message {message_id} in chat {chat_id}")
            user = self._user(user_id)
            query_id = str(4_000_000_000_000_000 + next(self._callback_counter))
            query = {
                "id": query_id,
                "from": copy.deepcopy(user),
                "message": copy.deepcopy(message),
                "chat_instance": str(abs(chat_id) * 7919 + 1),
                "data": data,
            }
            self._pending_callbacks[query_id] = query
            self._push_update("callback_query", query)
            return copy.deepcopy(query)

    @property
    def pending_updates(self) -> list[dict[str, Any]]:
        """Updates queued but not yet confirmed by the bot (via a later ``offset``)."""
        with self._lock:
            return copy.deepcopy(self._updates)

    # ---------------------------------------------------------------- long-poll plumbing

    def _notify(self) -> None:
        server = self._server
        loop = server.loop if server else None
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._wake_waiters)

    def _wake_waiters(self) -> None:
        for fut in list(self._waiters):
            if not fut.done():
                fut.set_result(None)

    # ---------------------------------------------------------------- HTTP layer

    async def _asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        request = Request(scope, receive)
        path = scope["path"]
        if m := _FILE_PATH_RE.fullmatch(path):
            response = await self._handle_download(request, m.group(1), m.group(2))
        elif m := _METHOD_PATH_RE.fullmatch(path):
            response = await self._handle_method(request, m.group(1), m.group(2))
        else:
            response = _error_response(ApiError(404, "Not Found"))
        if response is _DROP:
            # Headers promising a body that never comes, then uvicorn closes the socket:
            # httpx raises RemoteProtocolError -> PTB NetworkError.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
                }
            )
            return
        await response(scope, receive, send)

    async def _read_params(
        self, request: Request
    ) -> tuple[dict[str, Any], dict[str, UploadedFile]]:
        params: dict[str, Any] = {}
        files: dict[str, UploadedFile] = {}
        for key, value in request.query_params.multi_items():
            params[key] = _decode_value(key, value)
        if request.method != "POST":
            return params, files
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):
            body = await request.body()
            if body:
                try:
                    decoded = json.loads(body)
                except ValueError:
                    raise _bad("can't parse JSON object") from None
                if isinstance(decoded, dict):
                    params.update(decoded)
        elif ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            form = await request.form(max_files=10_000, max_fields=10_000, max_part_size=8 * MB)
            try:
                for key, value in form.multi_items():
                    if isinstance(value, UploadFile):
                        data = await value.read()
                        files[key] = UploadedFile(key, value.filename, value.content_type, data)
                    else:
                        params[key] = _decode_value(key, value)
            finally:
                await form.close()
        return params, files

    async def _handle_method(self, request: Request, token: str, name: str) -> Any:
        if token != self.token:
            if _TOKEN_RE.fullmatch(token):
                return _error_response(ApiError(401, "Unauthorized"))
            return _error_response(ApiError(404, "Not Found"))
        method = self._method_names.get(name.lower(), name)
        parse_error: ApiError | None = None
        try:
            params, files = await self._read_params(request)
        except ApiError as exc:
            params, files, parse_error = {}, {}, exc
        except Exception as exc:  # malformed multipart and the like
            params, files, parse_error = {}, {}, _bad(f"can't parse request body: {exc}")
        call = Call(method=method, params=params, files=files, http_method=request.method)
        fault = self._take_fault(method)
        response: Any
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.delay)
        if fault is not None and fault.kind == "error":
            response = self._fault_error(call, fault)
        elif fault is not None and fault.kind == "drop" and not fault.processed:
            call.status = 0
            response = _DROP
        else:
            if parse_error is not None:
                response = self._fail(call, parse_error)
            else:
                response = await self._dispatch(call)
            if fault is not None and fault.kind == "drop":
                call.status = 0
                response = _DROP
        with self._lock:
            self._calls.append(call)
        return response

    def _fault_error(self, call: Call, fault: _Fault) -> Response:
        code = fault.error_code
        parameters = None
        if code == 429:
            retry_after = fault.retry_after if fault.retry_after is not None else 1
            description = fault.description or f"Too Many Requests: retry after {retry_after}"
            parameters = {"retry_after": retry_after}
        else:
            description = fault.description or _DEFAULT_ERROR_DESCRIPTIONS.get(code, "Error")
        return self._fail(call, ApiError(code, description, parameters))

    def _fail(self, call: Call, error: ApiError) -> Response:
        call.status = error.code
        call.error = error.body()
        return _error_response(error)

    async def _dispatch(self, call: Call) -> Response:
        try:
            if call.method == "getUpdates":
                result = await self._get_updates(call)
            else:
                handler = self._handlers.get(call.method)
                if handler is None:
                    raise ApiError(404, "Not Found")
                with self._lock:
                    result = handler(call)
        except ApiError as exc:
            return self._fail(call, exc)
        except Exception as exc:  # a bug in the fake: answer 500 and keep it for the test
            self.server_errors.append(exc)
            detail = "".join(traceback.format_exception_only(exc)).strip()
            return self._fail(call, ApiError(500, f"Internal Server Error (fake bug: {detail})"))
        call.status = 200
        call.result = result
        return JSONResponse({"ok": True, "result": result})

    async def _handle_download(self, request: Request, token: str, path: str) -> Any:
        call = Call(method="downloadFile", params={"file_path": path}, http_method=request.method)
        fault = self._take_fault("downloadFile") if token == self.token else None
        if fault is not None and fault.kind == "delay":
            await asyncio.sleep(fault.delay)
        response: Any
        if fault is not None and fault.kind == "error":
            response = self._fault_error(call, fault)
        elif fault is not None and fault.kind == "drop":
            call.status = 0
            response = _DROP
        else:
            with self._lock:
                stored = self._files_by_path.get(path) if token == self.token else None
            if stored is None:
                response = self._fail(call, ApiError(404, "Not Found"))
            else:
                call.result = stored.file_id
                response = Response(
                    stored.data, media_type=stored.mime_type or "application/octet-stream"
                )
        with self._lock:
            self._calls.append(call)
        return response

    # ---------------------------------------------------------------- method handlers

    def _get_me(self, call: Call) -> dict[str, Any]:
        return {
            **self.bot_user,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
            "can_connect_to_business": False,
            "has_main_web_app": False,
        }

    def _delete_webhook(self, call: Call) -> bool:
        self.webhook_url = ""
        if call.params.get("drop_pending_updates") in (True, "true"):
            self._updates.clear()
        return True

    def _set_webhook(self, call: Call) -> bool:
        self.webhook_url = str(call.params.get("url") or "")
        self.webhook_secret_token = call.params.get("secret_token")
        return True

    def _get_webhook_info(self, call: Call) -> dict[str, Any]:
        return {
            "url": self.webhook_url,
            "has_custom_certificate": False,
            "pending_update_count": len(self._updates),
        }

    async def _get_updates(self, call: Call) -> list[dict[str, Any]]:
        params = call.params
        offset = _int(params, "offset")
        limit = max(1, min(100, _int(params, "limit", 100) or 100))
        timeout = max(0.0, float(params.get("timeout") or 0))
        allowed = params.get("allowed_updates")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        with self._lock:
            if self.webhook_url:
                raise ApiError(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; "
                    "use deleteWebhook to delete the webhook first",
                )
            self._poll_generation += 1
            generation = self._poll_generation
            if isinstance(allowed, list):
                self._allowed_updates = set(allowed) or None
            if offset is not None:
                if offset < 0:
                    del self._updates[: max(0, len(self._updates) + offset)]
                else:
                    self._updates = [u for u in self._updates if u["update_id"] >= offset]
        self._wake_waiters()  # an older pending getUpdates is terminated (409)
        while True:
            with self._lock:
                if generation != self._poll_generation:
                    raise ApiError(409, _DEFAULT_ERROR_DESCRIPTIONS[409])
                if self._allowed_updates is not None:
                    self._updates = [
                        u
                        for u in self._updates
                        if next(k for k in u if k != "update_id") in self._allowed_updates
                    ]
                batch = copy.deepcopy(self._updates[:limit])
                closing = self._closing
            if batch or closing or loop.time() >= deadline:
                return batch
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.add(fut)
            try:
                await asyncio.wait_for(fut, max(0.0, deadline - loop.time()))
            except TimeoutError:
                pass
            finally:
                self._waiters.discard(fut)

    def _get_file(self, call: Call) -> dict[str, Any]:
        file_id = call.params.get("file_id")
        if not file_id:
            raise _bad("file_id not specified")
        stored = self._files.get(str(file_id))
        if stored is None:
            raise _bad("invalid file_id")
        if stored.size > MAX_DOWNLOAD_SIZE:
            raise _bad("file is too big")
        return {
            "file_id": stored.file_id,
            "file_unique_id": stored.file_unique_id,
            "file_size": stored.size,
            "file_path": stored.file_path,
        }

    def _common_send(self, call: Call) -> tuple[dict[str, Any], dict[str, Any]]:
        """chat + content common to send* methods (reply, keyboard, thread)."""
        params = call.params
        chat = self._chat_for_bot(params)
        content: dict[str, Any] = {}
        reply_to, allow_missing = None, bool(params.get("allow_sending_without_reply"))
        rp = params.get("reply_parameters")
        if isinstance(rp, dict):
            reply_to = rp.get("message_id")
            allow_missing = bool(rp.get("allow_sending_without_reply", allow_missing))
        elif params.get("reply_to_message_id") is not None:
            reply_to = params.get("reply_to_message_id")
        if reply_to is not None:
            reply = self._reply_target(chat["id"], reply_to)
            if reply is not None:
                content["reply_to_message"] = reply
            elif not allow_missing:
                raise _bad("message to be replied not found")
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and "inline_keyboard" in markup:
            content["reply_markup"] = _check_inline_keyboard(markup)
        if params.get("has_spoiler") in (True, "true"):
            content["has_media_spoiler"] = True
        return chat, content

    def _caption(self, params: dict[str, Any], content: dict[str, Any]) -> None:
        caption = params.get("caption")
        if caption:
            text, entities = _format_text(
                str(caption),
                params.get("parse_mode"),
                params.get("caption_entities"),
                what="caption",
            )
            if text:
                content["caption"] = text
                if entities:
                    content["caption_entities"] = entities

    def _send_message(self, call: Call) -> dict[str, Any]:
        params = call.params
        chat, content = self._common_send(call)
        text = params.get("text")
        if text is None or str(text) == "":
            raise _bad("message text is empty")
        plain, entities = _format_text(
            str(text), params.get("parse_mode"), params.get("entities"), what="text"
        )
        if not plain:
            raise _bad("message text is empty")
        content["text"] = plain
        if entities:
            content["entities"] = entities
        return copy.deepcopy(self._store_message(chat, self.bot_user, content))

    def _photo_from_input(self, value: Any, files: dict[str, UploadedFile], part: str) -> Any:
        """An InputFile-ish value: uploaded part, attach://, or file_id / URL string."""
        if isinstance(value, str) and value.startswith("attach://"):
            upload = files.get(value.removeprefix("attach://"))
            if upload is None:
                raise _bad(f'can\'t find attached file "{value.removeprefix("attach://")}"')
            return upload
        if value is None:
            return files.get(part)
        return value

    def _photo_sizes_for(self, value: Any) -> list[dict[str, Any]]:
        if isinstance(value, UploadedFile):
            return self._make_photo(value.data)
        if isinstance(value, str) and value:
            if value.startswith(("http://", "https://")):
                raise _bad("failed to get HTTP URL content")
            sizes = self._photo_sets.get(value)
            if sizes is not None:
                return copy.deepcopy(sizes)
            stored = self._files.get(value)
            if stored is not None:
                raise _bad("can't use file of type Document as Photo")
            raise _bad("wrong file identifier/HTTP URL specified")
        raise _bad("there is no photo in the request")

    def _document_for(self, value: Any) -> dict[str, Any]:
        if isinstance(value, UploadedFile):
            return self._make_document(value.data, value.filename, value.content_type)
        if isinstance(value, str) and value:
            if value.startswith(("http://", "https://")):
                raise _bad("failed to get HTTP URL content")
            stored = self._files.get(value)
            if stored is None:
                raise _bad("wrong file identifier/HTTP URL specified")
            if stored.kind == "photo":
                raise _bad("can't use file of type Photo as Document")
            doc = {
                "file_id": stored.file_id,
                "file_unique_id": stored.file_unique_id,
                "file_size": stored.size,
            }
            if stored.file_name:
                doc["file_name"] = stored.file_name
            if stored.mime_type:
                doc["mime_type"] = stored.mime_type
            return doc
        raise _bad("there is no document in the request")

    def _send_photo(self, call: Call) -> dict[str, Any]:
        chat, content = self._common_send(call)
        value = self._photo_from_input(call.params.get("photo"), call.files, "photo")
        content["photo"] = self._photo_sizes_for(value)
        self._caption(call.params, content)
        return copy.deepcopy(self._store_message(chat, self.bot_user, content))

    def _send_document(self, call: Call) -> dict[str, Any]:
        chat, content = self._common_send(call)
        value = self._photo_from_input(call.params.get("document"), call.files, "document")
        content["document"] = self._document_for(value)
        self._caption(call.params, content)
        return copy.deepcopy(self._store_message(chat, self.bot_user, content))

    def _send_media_group(self, call: Call) -> list[dict[str, Any]]:
        chat, common = self._common_send(call)
        common.pop("reply_markup", None)  # media groups cannot carry keyboards
        media = call.params.get("media")
        if not isinstance(media, list) or not media:
            raise _bad('parameter "media" is required')
        if len(media) > 10:
            raise _bad("too many messages to send as an album")
        if len(media) < 2:
            raise _bad("there must be at least 2 media in a media group")
        types = {item.get("type") if isinstance(item, dict) else None for item in media}
        if not types <= {"photo", "video", "document", "audio"}:
            raise _bad("unsupported media type in media group")
        for special in ("document", "audio"):
            if special in types and len(types) > 1:
                raise _bad(f"{special} can't be mixed with other media types")
        contents = []
        for item in media:
            content = copy.deepcopy(common)
            content.update(self._media_content(item, call.files))
            contents.append(content)
        group_id = str(10**17 + next(self._file_counter))
        messages = []
        for content in contents:
            content["media_group_id"] = group_id
            messages.append(copy.deepcopy(self._store_message(chat, self.bot_user, content)))
        return messages

    def _media_content(
        self, item: dict[str, Any], files: dict[str, UploadedFile]
    ) -> dict[str, Any]:
        kind = item.get("type")
        value = self._photo_from_input(item.get("media"), files, "media")
        content: dict[str, Any] = {}
        if kind == "photo":
            content["photo"] = self._photo_sizes_for(value)
        elif kind == "document":
            content["document"] = self._document_for(value)
        else:
            raise _bad(f"media type {kind!r} is not supported by the fake")
        if item.get("has_spoiler"):
            content["has_media_spoiler"] = True
        self._caption(item, content)
        return content

    def _bot_message_to_edit(self, call: Call) -> dict[str, Any] | None:
        params = call.params
        if params.get("inline_message_id"):
            return None
        chat = self._chat_for_bot(params)
        message_id = _int(params, "message_id")
        if message_id is None:
            raise _bad("message identifier is not specified")
        message = self._messages.get((chat["id"], message_id))
        if message is None:
            raise _bad("message to edit not found")
        if message["from"]["id"] != self.bot_user["id"]:
            raise _bad("message can't be edited")
        return message

    @staticmethod
    def _new_markup(params: dict[str, Any]) -> dict[str, Any] | None:
        markup = params.get("reply_markup")
        if isinstance(markup, dict) and markup.get("inline_keyboard"):
            return _check_inline_keyboard(markup)
        return None

    def _apply_edit(
        self, message: dict[str, Any], changes: dict[str, Any], markup: dict[str, Any] | None
    ) -> dict[str, Any]:
        before = {k: message.get(k) for k in changes}
        if before == changes and message.get("reply_markup") == markup:
            raise _bad(NOT_MODIFIED.removeprefix("Bad Request: "))
        for key, value in changes.items():
            if value is None:
                message.pop(key, None)
            else:
                message[key] = value
        if markup is None:
            message.pop("reply_markup", None)
        else:
            message["reply_markup"] = markup
        message["edit_date"] = int(time.time())
        return copy.deepcopy(message)

    def _edit_message_text(self, call: Call) -> Any:
        params = call.params
        text = params.get("text")
        if text is None or str(text) == "":
            raise _bad("message text is empty")
        plain, entities = _format_text(
            str(text), params.get("parse_mode"), params.get("entities"), what="text"
        )
        if not plain:
            raise _bad("message text is empty")
        message = self._bot_message_to_edit(call)
        if message is None:
            return True
        if "text" not in message:
            raise _bad("there is no text in the message to edit")
        changes = {"text": plain, "entities": entities or None}
        return self._apply_edit(message, changes, self._new_markup(params))

    def _edit_message_caption(self, call: Call) -> Any:
        message = self._bot_message_to_edit(call)
        if message is None:
            return True
        if "text" in message:
            raise _bad("there is no caption in the message to edit")
        content: dict[str, Any] = {}
        self._caption(call.params, content)
        changes = {
            "caption": content.get("caption"),
            "caption_entities": content.get("caption_entities"),
        }
        return self._apply_edit(message, changes, self._new_markup(call.params))

    def _edit_message_reply_markup(self, call: Call) -> Any:
        message = self._bot_message_to_edit(call)
        if message is None:
            return True
        return self._apply_edit(message, {}, self._new_markup(call.params))

    def _edit_message_media(self, call: Call) -> Any:
        media = call.params.get("media")
        if not isinstance(media, dict):
            raise _bad('parameter "media" is required')
        content = self._media_content(media, call.files)
        message = self._bot_message_to_edit(call)
        if message is None:
            return True
        if "text" in message:
            raise _bad("there is no media in the message to edit")
        changes: dict[str, Any] = {
            "photo": None,
            "document": None,
            "caption": None,
            "caption_entities": None,
            "has_media_spoiler": None,
        }
        changes.update(content)
        return self._apply_edit(message, changes, self._new_markup(call.params))

    def _send_chat_action(self, call: Call) -> bool:
        self._chat_for_bot(call.params)
        action = call.params.get("action")
        if action not in _CHAT_ACTIONS:
            raise _bad("wrong parameter action in request")
        return True

    def _answer_callback_query(self, call: Call) -> bool:
        query_id = call.params.get("callback_query_id")
        if not query_id:
            raise _bad("QUERY_ID_INVALID")
        query_id = str(query_id)
        if self._pending_callbacks.pop(query_id, None) is None:
            raise _bad("query is too old and response timeout expired or query ID is invalid")
        text = call.params.get("text")
        if text is not None and len(str(text)) > 200:
            raise _bad("MESSAGE_TOO_LONG")
        self.callback_answers[query_id] = dict(call.params)
        return True

    def _set_my_commands(self, call: Call) -> bool:
        commands = call.params.get("commands")
        if not isinstance(commands, list):
            raise _bad('parameter "commands" is required')
        for cmd in commands:
            name = cmd.get("command", "") if isinstance(cmd, dict) else ""
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise _bad("BOT_COMMAND_INVALID")
            if not 1 <= len(cmd.get("description", "")) <= 256:
                raise _bad(
                    "command description is empty"
                    if not cmd.get("description")
                    else "BOT_COMMAND_DESCRIPTION_INVALID"
                )
        self.commands = copy.deepcopy(commands)
        return True

    def _delete_my_commands(self, call: Call) -> bool:
        self.commands = []
        return True

    def _delete_message(self, call: Call) -> bool:
        chat = self._chat_for_bot(call.params)
        message_id = _int(call.params, "message_id")
        if message_id is None or self._messages.pop((chat["id"], message_id), None) is None:
            raise _bad("message to delete not found")
        return True

    def _get_chat(self, call: Call) -> dict[str, Any]:
        raw = call.params.get("chat_id")
        try:
            chat = self._chats[int(raw)]  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError):
            raise _bad("chat not found") from None
        return {
            **copy.deepcopy(chat),
            "accent_color_id": 0,
            "max_reaction_count": 11,
            "accepted_gift_types": {
                "unlimited_gifts": True,
                "limited_gifts": True,
                "unique_gifts": True,
                "premium_subscription": True,
                "gifts_from_channels": True,
            },
        }


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.code)


def _scaled(image: Image.Image, max_side: int) -> Image.Image:
    """Downscale so the long side is at most ``max_side`` (never upscale)."""
    w, h = image.size
    scale = max_side / max(w, h)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)


def _jpeg(image: Image.Image, max_side: int) -> tuple[bytes, int, int]:
    """Downscale so the long side is at most ``max_side`` and encode as JPEG."""
    image = _scaled(image, max_side)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue(), image.size[0], image.size[1]


def _check_inline_keyboard(markup: dict[str, Any]) -> dict[str, Any]:
    rows = markup.get("inline_keyboard")
    if not isinstance(rows, list):
        raise _bad('field "inline_keyboard" of the InlineKeyboardMarkup must be an Array')
    for row in rows:
        for button in row:
            if not button.get("text"):
                raise _bad("BUTTON_TEXT_INVALID")
            data = button.get("callback_data")
            if data is not None and not 1 <= len(str(data).encode()) <= 64:
                raise _bad("BUTTON_DATA_INVALID")
    return copy.deepcopy(markup)
