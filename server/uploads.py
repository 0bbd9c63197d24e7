"""Uploads over HTTP: ``POST /uploads`` stores an image for its owner, ``GET /upload`` is a
page that does it from a browser.

The body is the image itself (``Content-Type: image/…`` or ``application/octet-stream``) or
``multipart/form-data`` with the image in the field ``file``. It is read as it arrives, never
past ``media.max_bytes`` (plus room for multipart headers), with no pause longer than
``media.fetch_timeout_s`` and ten times that in all; then checked like every input image
(``Editor.put_upload``). A refusal is a 4xx JSON ``{"error", "message"}`` and stores nothing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from server.owners import owner_of_request
from tools.config import Settings
from tools.errors import ImageError, ImageTooLarge, NotAnImage
from tools.service import Editor

#: Room for a multipart body's boundaries, part headers and small extra fields.
MULTIPART_OVERHEAD = 64 * 1024
#: How many times ``media.fetch_timeout_s`` a whole upload may take.
TOTAL_TIME_FACTOR = 10
RAW_TYPES = (b"application/octet-stream",)

PAGE = (Path(__file__).parent / "static" / "upload.html").read_text(encoding="utf-8")


def _hashes(tag: str) -> str:
    """CSP source hashes of the page's inline ``<tag>`` blocks."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", PAGE, flags=re.S)
    assert blocks, f"the upload page has no <{tag}>"
    digests = (base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() for b in blocks)
    return " ".join(f"'sha256-{d}'" for d in digests)


#: Only the page's own inline script and style run; it may talk to this server only.
PAGE_CSP = (
    f"default-src 'none'; script-src {_hashes('script')}; style-src {_hashes('style')}; "
    "img-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


class Refused(Exception):
    """An upload answered with a 4xx."""

    def __init__(self, status: int, error: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.error, "message": self.message}, self.status)


class Uploads:
    """The two routes, with the limits of one server."""

    def __init__(self, settings: Settings) -> None:
        self.max_bytes = settings.media.max_bytes
        self.idle_s = settings.media.fetch_timeout_s
        self.total_s = settings.media.fetch_timeout_s * TOTAL_TIME_FACTOR
        public = urlsplit(settings.mcp.public_url).netloc if settings.mcp.public_url else ""
        self.origins = {public} - {""}
        # Each upload in progress holds up to max_bytes in memory: as many as downloads.
        self.slots = asyncio.Semaphore(settings.media.max_concurrent_downloads)

    async def post(self, request: Request) -> Response:
        """``POST /uploads``: 201 and ``{"uri", "mime_type", "width", "height", "bytes",
        "expires_at"}``, or a 4xx ``{"error", "message"}``."""
        try:
            self._check_origin(request)
            async with self.slots:
                data = await self.read(request)
                editor: Editor = request.app.state.editor
                try:
                    upload = await editor.put_upload(data, owner_of_request(request))
                except ImageTooLarge as exc:
                    raise Refused(413, "too_large", exc.message) from None
                except NotAnImage as exc:
                    raise Refused(415, "not_an_image", exc.message) from None
                except ImageError as exc:
                    raise Refused(400, "corrupt", exc.message) from None
        except Refused as refused:
            return refused.response()
        return JSONResponse(upload.model_dump(mode="json"), status_code=201)

    def _check_origin(self, request: Request) -> None:
        """A browser's cross-site POST is refused: another site's page must not upload in
        the name of whoever opens it (on loopback without a token, anyone)."""
        origin = request.headers.get("origin")
        if origin is None:
            return
        allowed = self.origins | {request.headers.get("host", "")}
        try:
            netloc = urlsplit(origin).netloc
        except ValueError:  # e.g. an unclosed IPv6 bracket
            netloc = ""
        if netloc not in allowed:
            raise Refused(403, "cross_origin", "uploads from another site's page are refused")

    async def read(self, request: Request) -> bytes:
        """The image's bytes from the body, within the limits."""
        kind, options = parse_options_header(request.headers.get("content-type", ""))
        multipart = kind == b"multipart/form-data"
        if not (multipart or kind.startswith(b"image/") or kind in RAW_TYPES):
            raise Refused(
                415,
                "unsupported_media_type",
                "send the image as the body (Content-Type: image/…) or as the field 'file' "
                "of multipart/form-data",
            )
        cap = self.max_bytes + (MULTIPART_OVERHEAD if multipart else 0)
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise self._too_large()
        if declared == "0":
            raise Refused(400, "empty", "the body is empty: send an image")
        chunks = self._capped(request, cap)
        data = await (self._multipart(chunks, options) if multipart else _join(chunks))
        if not data:
            raise Refused(400, "empty", "the upload is empty: send an image")
        return data

    def _too_large(self) -> Refused:
        return Refused(413, "too_large", f"the limit is {self.max_bytes / 1e6:.0f} MB")

    async def _capped(self, request: Request, cap: int) -> AsyncIterator[bytes]:
        """The body's chunks: refused past ``cap`` bytes or too slow."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.total_s
        total = 0
        stream = request.stream().__aiter__()
        while True:
            try:
                async with asyncio.timeout_at(min(loop.time() + self.idle_s, deadline)):
                    chunk = await anext(stream)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise Refused(408, "timeout", "the upload was too slow; try again") from None
            except ClientDisconnect:
                raise Refused(400, "disconnected", "the upload broke off") from None
            total += len(chunk)
            if total > cap:
                raise self._too_large()
            yield chunk

    async def _multipart(self, chunks: AsyncIterator[bytes], options: dict[bytes, bytes]) -> bytes:
        """The field ``file`` of a multipart body (the other fields are read and dropped)."""
        boundary = options.get(b"boundary")
        if not boundary:
            raise Refused(400, "malformed", "multipart/form-data without a boundary")
        form = _FilePart(self.max_bytes)
        parser = MultipartParser(boundary, form.callbacks())
        try:
            async for chunk in chunks:
                parser.write(chunk)
                if form.too_large:
                    raise self._too_large()
        except FormParserError:
            raise Refused(400, "malformed", "the multipart body is malformed") from None
        if form.second_file:
            raise Refused(400, "malformed", "send one image in the field 'file'")
        if not form.ended:
            raise Refused(400, "malformed", "the multipart body ends early (cut short?)")
        if form.data is None:
            raise Refused(422, "missing_field", "the multipart body has no field 'file'")
        return bytes(form.data)

    async def page(self, request: Request) -> Response:
        """``GET /upload``: the page, self-contained, under a strict CSP."""
        return Response(
            PAGE,
            media_type="text/html; charset=utf-8",
            headers={
                "Content-Security-Policy": PAGE_CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-cache",
                "X-Frame-Options": "DENY",
            },
        )


class _FilePart:
    """Callbacks for python-multipart that keep the field ``file`` only, up to a limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data: bytearray | None = None
        self.ended = False
        self.too_large = False
        self.second_file = False
        self._in_file = False
        self._header = b""
        self._value = b""
        self._disposition = b""

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": self._field,
            "on_header_value": self._val,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _begin(self) -> None:
        self._in_file = False
        self._disposition = b""

    def _field(self, data: bytes, start: int, end: int) -> None:
        self._header += data[start:end]

    def _val(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        if self._header.lower() == b"content-disposition":
            self._disposition = self._value
        self._header = self._value = b""

    def _headers_done(self) -> None:
        _, params = parse_options_header(self._disposition)
        if params.get(b"name") == b"file":
            if self.data is not None:
                self.second_file = True
            self.data = bytearray()
            self._in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if not self._in_file or self.data is None:
            return
        if len(self.data) + (end - start) > self.limit:
            self.too_large = True
            self._in_file = False
            self.data.clear()
            return
        self.data += data[start:end]

    def _part_end(self) -> None:
        self._in_file = False

    def _end(self) -> None:
        self.ended = True


async def _join(chunks: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in chunks])
