"""Shared harness for Retouch's fake vendor servers.

Every fake is a real HTTP server: a Starlette app served by uvicorn on 127.0.0.1, on a port
the OS chooses, in a background thread with its own event loop. It therefore works from sync
and async tests alike and outlives any one test's event loop.

    with FakeDashScope(api_key="sk-test") as fake:      # or fake.start() ... fake.stop()
        fake.base_url                                  # "http://127.0.0.1:PORT"
        fake.requests                                  # snapshot: list[Recorded]
        fake.inject("create", Fault.status(429, body={...}, headers={"Retry-After": "1"}))

Recording
    Every request is recorded (thread-safe) as a `Recorded`: method, path, route name, headers
    (lower-case keys), query, raw body, parsed JSON (`json`), multipart/urlencoded text fields
    (`form`, `form_items` in order), file parts (`files`: field, filename, content type, bytes),
    the order of all multipart parts (`parts`), the status sent back (`status`; None when the
    connection was reset) and the fault applied, if any (`fault`). `fake.requests_to(route)`
    filters by route name; `fake.clear_requests()` empties the list.

Faults (one-shot, queued per route name; the route names are listed in each fake's docstring;
"*" matches any route)
    fake.inject(route, *faults) queues faults for the next matching requests, one per request,
    in order. The request is still recorded. Kinds:
      Fault.status(code, body=None, headers=None)  answer with this status/body/headers instead
                                                   of the real handler (dict/list body -> JSON)
      Fault.delay(seconds)     sleep, then run the real handler (a slow response; the handler
                               still runs and has its effects even if the client gave up)
      Fault.malformed()        200 with Content-Type application/json and an invalid JSON body
      Fault.reset()            abort the TCP connection without sending any response; httpx
                               raises a transport error (RemoteProtocolError "Server
                               disconnected without sending a response")
    Each vendor module has helpers that build its documented error faults.

Results
    `fake.put_file(data)` stores bytes and returns a URL on the fake (`/files/<name>`), which is
    where every fake serves its result images (no auth, like a signed OSS link).
    `fake.expire_results()` makes every URL stored so far answer 404 (an OSS-style XML
    NoSuchKey body); files stored later still work.

Fetching
    Fakes that, like the real vendor, download input images by URL use `fetch_url`: `data:`
    URIs are decoded; http(s) URLs are fetched only on loopback (127.0.0.1/localhost/::1) --
    a fake never reaches the internet; any other URL can be registered in
    `fake.remote_images[url] = bytes`. Failing fetches raise `FetchError`.

Helpers: `make_png`, `make_mask_png`, `image_size`, `fake_meta` (the JSON metadata every fake
stamps into its result images), `render_result`, and `CallbackReceiver` (a tiny server that
records every POST, for vendors that call back).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import socket
import threading
import time
import traceback
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_to_bytes, urlsplit

import httpx
import uvicorn
from PIL import Image, ImageDraw, ImageOps, PngImagePlugin
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger("tests.fakes")

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
META_KEY = "retouch-fake"
ALL_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]

Handler = Callable[[Request, "Recorded"], Awaitable[Response]]


class FetchError(Exception):
    """An input URL could not be fetched (the fake reports it the vendor's way)."""


# --------------------------------------------------------------------------- recording


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart request."""

    field: str
    filename: str | None
    content_type: str | None
    data: bytes

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    route: str
    headers: dict[str, str]
    query: dict[str, str]
    path_params: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    json: Any = None
    json_error: bool = False
    form: dict[str, str] = field(default_factory=dict)
    form_items: list[tuple[str, str]] = field(default_factory=list)
    files: list[UploadedFile] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    form_error: str | None = None
    time: float = field(default_factory=time.time)
    status: int | None = None
    fault: str | None = None

    @property
    def is_multipart(self) -> bool:
        return self.headers.get("content-type", "").startswith("multipart/form-data")

    @property
    def bearer(self) -> str | None:
        """The token of an `Authorization: Bearer <token>` header, else None."""
        value = self.headers.get("authorization", "")
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return token.strip()

    def file(self, name: str) -> UploadedFile | None:
        """The first file part with this field name."""
        return next((f for f in self.files if f.field == name), None)

    def files_named(self, *names: str) -> list[UploadedFile]:
        return [f for f in self.files if f.field in names]


# --------------------------------------------------------------------------- faults


@dataclass(frozen=True)
class Fault:
    """A one-shot fault; build with Fault.status / delay / malformed / reset."""

    kind: str
    http_status: int = 200
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()
    seconds: float = 0.0

    @classmethod
    def status(
        cls, status: int, body: Any = None, headers: Mapping[str, str] | None = None
    ) -> Fault:
        return cls("status", http_status=status, body=body, headers=tuple((headers or {}).items()))

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        return cls("delay", seconds=float(seconds))

    @classmethod
    def malformed(cls, status: int = 200) -> Fault:
        return cls("malformed", http_status=status)

    @classmethod
    def reset(cls) -> Fault:
        return cls("reset")

    def build_response(self) -> Response:
        headers = dict(self.headers)
        if self.kind == "malformed":
            return Response(
                b'{"output": {"task_id": "0f1e", "task_status": ',
                status_code=self.http_status,
                media_type="application/json",
                headers=headers,
            )
        body = self.body
        if body is None:
            return Response(b"", status_code=self.http_status, headers=headers)
        if isinstance(body, dict | list):
            return JSONResponse(body, status_code=self.http_status, headers=headers)
        if isinstance(body, str):
            body = body.encode()
        media = headers.pop("Content-Type", None) or headers.pop("content-type", None)
        return Response(
            body, status_code=self.http_status, media_type=media or "text/plain", headers=headers
        )


class _TruncatedResponse(Response):
    """Fallback for Fault.reset when the transport is not reachable: promise a body, send a
    few bytes, then fail so uvicorn closes the connection mid-body."""

    def __init__(self) -> None:
        super().__init__(b"")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"output": ', "more_body": True})
        raise ConnectionAbortedError("fake connection reset")


# --------------------------------------------------------------------------- utilities


class RateMeter:
    """Counts events in a sliding window and remembers the maximum seen."""

    def __init__(self, window: float = 1.0) -> None:
        self.window = window
        self._times: deque[float] = deque()
        self._lock = threading.Lock()
        self.max_seen = 0

    def hit(self) -> int:
        now = time.monotonic()
        with self._lock:
            self._times.append(now)
            while self._times and self._times[0] <= now - self.window:
                self._times.popleft()
            count = len(self._times)
            self.max_seen = max(self.max_seen, count)
            return count

    def current(self) -> int:
        now = time.monotonic()
        with self._lock:
            return sum(1 for t in self._times if t > now - self.window)


def new_id() -> str:
    return str(uuid.uuid4())


def decode_data_uri(uri: str) -> bytes:
    """Bytes of a `data:[<mime>][;base64],<data>` URI; ValueError if malformed."""
    if not uri.startswith("data:") or "," not in uri:
        raise ValueError("not a data: URI")
    header, _, payload = uri[5:].partition(",")
    if header.endswith(";base64"):
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"invalid base64 in data: URI: {exc}") from None
    return unquote_to_bytes(payload)


def open_image(data: bytes) -> Image.Image:
    """Decode image bytes (fully loaded); ValueError if Pillow cannot read them."""
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as exc:
        raise ValueError(f"cannot decode image: {exc}") from None
    return img


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) of encoded image bytes."""
    with Image.open(io.BytesIO(data)) as img:
        return img.size


def image_format(data: bytes) -> str | None:
    """Pillow's format name (PNG, JPEG, WEBP, ...) of encoded image bytes, or None."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format
    except Exception:
        return None


def has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


_PALETTE = [(230, 60, 60), (60, 170, 80), (60, 100, 230), (230, 180, 40), (170, 70, 200)]


def make_png(
    width: int,
    height: int,
    *,
    color: tuple[int, int, int] = (90, 140, 200),
    mode: str = "RGB",
    label: str | None = None,
) -> bytes:
    """PNG bytes of the given size: a flat colour with a few shapes, so it is not uniform."""
    img = Image.new("RGB", (width, height), color)
    draw = ImageDraw.Draw(img)
    draw.rectangle((width // 8, height // 8, width // 2, height // 2), fill=(240, 240, 240))
    draw.ellipse(
        (width // 2, height // 2, width - width // 8, height - height // 8), fill=(20, 20, 20)
    )
    if label:
        draw.text((4, 4), label, fill=(255, 255, 0))
    if mode != "RGB":
        img = img.convert(mode)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def make_mask_png(
    width: int,
    height: int,
    *,
    box: tuple[int, int, int, int] | None = None,
    style: str = "alpha",
) -> bytes:
    """A mask PNG marking `box` (default: the centre quarter) as the area to edit.

    style="alpha": RGBA, opaque, with alpha 0 inside the box (OpenAI: transparent = edit).
    style="bw": RGB black with a pure white box (DashScope: white = edit, black = keep).
    style="rgb": RGB without any alpha channel (an invalid OpenAI mask).
    """
    box = box or (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
    if style == "alpha":
        img = Image.new("RGBA", (width, height), (0, 0, 0, 255))
        ImageDraw.Draw(img).rectangle(box, fill=(0, 0, 0, 0))
    elif style in ("bw", "rgb"):
        img = Image.new("RGB", (width, height), (0, 0, 0))
        ImageDraw.Draw(img).rectangle(box, fill=(255, 255, 255))
    else:
        raise ValueError(f"unknown mask style {style!r}")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def render_result(
    source: bytes | Image.Image | None,
    size: tuple[int, int],
    *,
    index: int = 0,
    meta: Mapping[str, Any] | None = None,
    fmt: str = "PNG",
    quality: int | None = None,
    transparent: bool = False,
    watermark: str | None = None,
) -> bytes:
    """A fake "edited" image: the source resized to `size`, colour-inverted, with a coloured
    band on top (colour depends on `index`), an optional watermark box, and `meta` stamped
    into the file (PNG tEXt / JPEG comment) under the key "retouch-fake"."""
    width, height = max(1, int(size[0])), max(1, int(size[1]))
    if source is None:
        img = Image.new("RGB", (width, height), (128, 128, 128))
    else:
        img = source if isinstance(source, Image.Image) else open_image(source)
        img = img.convert("RGB")
        if img.size != (width, height):
            img = img.resize((width, height), Image.Resampling.BILINEAR)
        img = ImageOps.invert(img)
    draw = ImageDraw.Draw(img)
    band = max(4, height // 16)
    draw.rectangle((0, 0, width, band), fill=_PALETTE[index % len(_PALETTE)])
    draw.text((4, 2), f"fake #{index}", fill=(255, 255, 255))
    if watermark:
        draw.rectangle(
            (width - min(width, 120), height - min(height, 24), width, height), fill=(255, 255, 255)
        )
        draw.text(
            (width - min(width, 116), height - min(height, 20)), watermark[:16], fill=(0, 0, 0)
        )
    if transparent:
        img = img.convert("RGBA")
        img.putpixel((0, 0), (0, 0, 0, 0))
    text = json.dumps(dict(meta or {}, index=index), ensure_ascii=False, default=str)
    buf = io.BytesIO()
    fmt = fmt.upper()
    if fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text(META_KEY, text)
        img.save(buf, "PNG", pnginfo=info)
    elif fmt in ("JPEG", "JPG"):
        img.convert("RGB").save(
            buf, "JPEG", quality=quality or 90, comment=f"{META_KEY}:{text}".encode()
        )
    elif fmt == "WEBP":
        img.save(buf, "WEBP", quality=quality or 90)
    else:
        img.save(buf, fmt)
    return buf.getvalue()


def fake_meta(data: bytes) -> dict[str, Any] | None:
    """The metadata a fake stamped into a result image (None if absent, e.g. WEBP)."""
    with Image.open(io.BytesIO(data)) as img:
        text = getattr(img, "text", {}).get(META_KEY) if img.format == "PNG" else None
        if text is None:
            comment = img.info.get("comment")
            if isinstance(comment, bytes) and comment.startswith(META_KEY.encode() + b":"):
                text = comment[len(META_KEY) + 1 :].decode()
    return json.loads(text) if text else None


def oss_error(code: str, message: str, status: int) -> Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
        f"  <Code>{code}</Code>\n  <Message>{message}</Message>\n"
        f"  <RequestId>{uuid.uuid4().hex[:24].upper()}</RequestId>\n"
        "  <HostId>fake-oss.127.0.0.1</HostId>\n</Error>\n"
    )
    return Response(body, status_code=status, media_type="application/xml")


# --------------------------------------------------------------------------- server


class _UvicornServer(uvicorn.Server):
    """uvicorn.Server whose main loop waits on an event instead of ticking every 0.1 s."""

    def __init__(self, config: uvicorn.Config, owner: FakeServer) -> None:
        super().__init__(config)
        self._owner = owner

    async def main_loop(self) -> None:
        assert self._owner._stop_event is not None
        await self._owner._stop_event.wait()


class FakeServer:
    """Base class of every fake: a uvicorn server on 127.0.0.1 in a background thread.

    Subclasses register routes with `add_route(path, name, methods, handler)` in __init__,
    where `handler(request, recorded) -> Response` (the request body is already read and
    parsed into `recorded`). `reset()` restores a fake's control knobs and forgets its state.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._routes: list[Route] = []
        self._requests: list[Recorded] = []
        self._faults: dict[str, deque[Fault]] = {}
        self._files: dict[str, tuple[bytes, str]] = {}
        self._expired_files: set[str] = set()
        self.remote_images: dict[str, bytes] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: _UvicornServer | None = None
        self._sock: socket.socket | None = None
        self._port: int | None = None
        self._stop_event: asyncio.Event | None = None
        self._bg: set[asyncio.Task[Any]] = set()
        self._client: httpx.AsyncClient | None = None
        self._startup_error: BaseException | None = None
        self.add_route("/files/{name}", "files", ["GET", "HEAD"], self._serve_file)

    # ------------------------------------------------------------------ lifecycle

    @property
    def base_url(self) -> str:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._port

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> FakeServer:
        if self._thread is not None:
            return self
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto is IPPROTO_TCP, and without it every keep-alive response waits ~40 ms
        # (Nagle against the client's delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(("127.0.0.1", 0))
        self._sock = sock
        self._port = sock.getsockname()[1]
        routes = [
            *self._routes,
            Route("/{path:path}", self._wrap("unmatched", self._not_found), methods=ALL_METHODS),
        ]
        app = Starlette(routes=routes)

        async def asgi(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                # uvicorn's receive is a bound method of the request cycle, which holds the
                # asyncio transport: Fault.reset uses it to drop the connection.
                cycle = getattr(receive, "__self__", None)
                scope["fake.transport"] = getattr(cycle, "transport", None)
            await app(scope, receive, send)

        config = uvicorn.Config(
            asgi,
            host="127.0.0.1",
            port=self._port,
            http="h11",
            ws="none",
            lifespan="off",
            log_config=None,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=0.5,
        )
        self._server = _UvicornServer(config, self)
        self._startup_error = None
        self._thread = threading.Thread(
            target=self._run, name=f"{type(self).__name__}:{self._port}", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                error = self._startup_error
                self.stop()
                raise RuntimeError(f"{type(self).__name__} failed to start: {error!r}")
            time.sleep(0.005)
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self._startup_error = exc
            log.exception("%s crashed", type(self).__name__)
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
                # asyncio.to_thread workers would otherwise outlive the fake.
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()

    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        self._client = httpx.AsyncClient(trust_env=False, timeout=10.0)
        try:
            assert self._server is not None and self._sock is not None
            await self._server.serve(sockets=[self._sock])
        finally:
            with contextlib.suppress(Exception):
                await self._client.aclose()

    def _begin_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()
        if self._server is not None:
            self._server.should_exit = True
        self._cancel_background()

    def _cancel_background(self) -> None:
        for task in list(self._bg):
            task.cancel()

    def stop(self) -> None:
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._begin_stop)
        thread.join(timeout=5)
        if thread.is_alive():  # pragma: no cover - diagnostic only
            log.error("%s thread did not stop", type(self).__name__)
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._thread = self._loop = self._server = self._sock = None
        self._stop_event = None
        self._port = None

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Any:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ routes

    def add_route(self, path: str, name: str, methods: Iterable[str], handler: Handler) -> None:
        if self._thread is not None:
            raise RuntimeError("add routes before start()")
        self._routes.append(
            Route(path, self._wrap(name, handler), methods=list(methods), name=name)
        )

    def _wrap(self, name: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            rec = await self._record(request, name)
            fault = self._next_fault(name)
            if fault is not None:
                rec.fault = fault.kind
                if fault.kind == "delay":
                    await self.sleep(fault.seconds)
                elif fault.kind == "reset":
                    return await self._reset_connection(request)
                else:
                    response = fault.build_response()
                    rec.status = response.status_code
                    return response
            try:
                response = await handler(request, rec)
            except Exception:
                log.exception("%s: handler for %s failed", type(self).__name__, name)
                response = JSONResponse({"fake_error": traceback.format_exc()}, status_code=500)
            rec.status = response.status_code
            return response

        return endpoint

    async def _not_found(self, request: Request, rec: Recorded) -> Response:
        return JSONResponse(
            {"fake_error": f"no route for {request.method} {request.url.path}"}, status_code=404
        )

    async def _reset_connection(self, request: Request) -> Response:
        transport = request.scope.get("fake.transport")
        if transport is None or not hasattr(transport, "abort"):
            return _TruncatedResponse()
        transport.abort()
        # Let uvicorn see connection_lost, so it sends nothing for this request.
        for _ in range(3):
            await asyncio.sleep(0)
        return Response(b"", status_code=204)

    async def _record(self, request: Request, name: str) -> Recorded:
        body = await request.body()
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        rec = Recorded(
            method=request.method,
            path=request.url.path,
            route=name,
            headers=headers,
            query=dict(request.query_params),
            path_params={k: str(v) for k, v in request.path_params.items()},
            body=body,
        )
        ctype = headers.get("content-type", "")
        if ctype.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
            try:
                form = await request.form(
                    max_files=1000, max_fields=1000, max_part_size=64 * 1024 * 1024
                )
                for key, value in form.multi_items():
                    rec.parts.append(key)
                    if isinstance(value, str):
                        rec.form_items.append((key, value))
                        rec.form[key] = value
                    else:
                        data = await value.read()
                        rec.files.append(
                            UploadedFile(key, value.filename, value.content_type, data)
                        )
                await form.close()
            except Exception as exc:
                rec.form_error = str(exc) or type(exc).__name__
        elif body:
            try:
                rec.json = json.loads(body)
            except ValueError:
                rec.json_error = True
        with self._lock:
            self._requests.append(rec)
        return rec

    # ------------------------------------------------------------------ recording API

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def requests_to(self, route: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self._requests if r.route == route]

    def last(self, route: str | None = None) -> Recorded:
        with self._lock:
            for rec in reversed(self._requests):
                if route is None or rec.route == route:
                    return rec
        raise LookupError(f"no request recorded for route {route!r}")

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    # ------------------------------------------------------------------ faults API

    def inject(self, route: str, *faults: Fault) -> None:
        """Queue one-shot faults for the next requests to `route` ("*" = any route)."""
        if not faults:
            raise ValueError("inject() needs at least one Fault")
        with self._lock:
            self._faults.setdefault(route, deque()).extend(faults)

    def pending_faults(self, route: str | None = None) -> int:
        with self._lock:
            if route is None:
                return sum(len(q) for q in self._faults.values())
            return len(self._faults.get(route, ()))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def _next_fault(self, route: str) -> Fault | None:
        with self._lock:
            for key in (route, "*"):
                queue = self._faults.get(key)
                if queue:
                    return queue.popleft()
        return None

    # ------------------------------------------------------------------ files

    def put_file(self, data: bytes, ext: str = "png", content_type: str | None = None) -> str:
        """Store bytes, return their URL on this fake (GET /files/<name>)."""
        name = f"{uuid.uuid4().hex}.{ext}"
        ctype = content_type or {
            "png": "image/png",
            "jpg": "image/jpeg",
            "jpeg": "image/jpeg",
            "webp": "image/webp",
        }.get(ext, "application/octet-stream")
        with self._lock:
            self._files[name] = (data, ctype)
        return f"{self.base_url}/files/{name}"

    def expire_results(self) -> None:
        """Every URL served under /files/ so far answers 404 from now on."""
        with self._lock:
            self._expired_files.update(self._files)

    async def _serve_file(self, request: Request, rec: Recorded) -> Response:
        name = request.path_params["name"]
        with self._lock:
            entry = None if name in self._expired_files else self._files.get(name)
        if entry is None:
            return oss_error("NoSuchKey", "The specified key does not exist.", 404)
        data, ctype = entry
        return Response(data, media_type=ctype)

    # ------------------------------------------------------------------ loop helpers

    async def sleep(self, seconds: float) -> None:
        """Sleep, but return at once when the server is stopping."""
        if self._stop_event is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), timeout=seconds)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run a background task on the server loop (cancelled at stop). Call from the loop."""
        task = asyncio.get_running_loop().create_task(coro)
        self._bg.add(task)
        task.add_done_callback(self._bg.discard)
        return task

    def call_in_loop(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        """Run a coroutine on the server loop from another thread and return its result."""
        if self._loop is None:
            coro.close()
            raise RuntimeError(f"{type(self).__name__} is not started")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
        """Poll `predicate` from a test thread until true or timeout; returns its last value."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate():
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)

    @property
    def http(self) -> httpx.AsyncClient:
        """The fake's own outbound client (loopback only, no proxies)."""
        if self._client is None:
            raise RuntimeError("the outbound client exists only on the server loop")
        return self._client

    async def fetch_url(self, url: str, *, headers: Mapping[str, str] | None = None) -> bytes:
        """Download an input image like a vendor would (see the module docstring)."""
        with self._lock:
            registered = self.remote_images.get(url)
        if registered is not None:
            return registered
        if url.startswith("data:"):
            try:
                return decode_data_uri(url)
            except ValueError as exc:
                raise FetchError(str(exc)) from None
        parts = urlsplit(url)
        if parts.scheme == "oss":
            return await self.fetch_oss(url, headers or {})
        if parts.scheme not in ("http", "https"):
            raise FetchError(f"unsupported URL scheme: {url[:60]}")
        if (parts.hostname or "") not in LOOPBACK_HOSTS:
            raise FetchError(
                f"{url}: the fake does not reach the internet (use 127.0.0.1 or remote_images)"
            )
        try:
            response = await self.http.get(url)
        except httpx.HTTPError as exc:
            raise FetchError(f"{url}: {type(exc).__name__}: {exc}") from None
        if response.status_code != 200:
            raise FetchError(f"{url}: HTTP {response.status_code}")
        return response.content

    async def fetch_oss(self, url: str, headers: Mapping[str, str]) -> bytes:
        raise FetchError(f"{url}: oss:// URLs are not supported by this vendor")

    def reset(self) -> None:
        """Forget recorded requests, queued faults, stored files and remote images, and cancel
        background work (pending task completions, callbacks) left by earlier tests."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._cancel_background)
        with self._lock:
            self._requests.clear()
            self._faults.clear()
            self._files.clear()
            self._expired_files.clear()
            self.remote_images.clear()


# --------------------------------------------------------------------------- receiver


class CallbackReceiver(FakeServer):
    """Records every request to any path (route name "callback") and answers
    `status` (default 200) with `response_body` (default {"code": 0, "message": "ok"}).

        with CallbackReceiver() as rx:
            url = rx.url("/softsugar/callback")
            ...
            rx.wait_for_requests(1)
            rx.requests_to("callback")[0].json
    """

    def __init__(self) -> None:
        super().__init__()
        self.status = 200
        self.response_body: Any = {"code": 0, "message": "ok"}
        self.add_route("/{path:path}", "callback", ALL_METHODS, self._receive)

    def url(self, path: str = "/callback") -> str:
        return self.base_url + path

    async def _receive(self, request: Request, rec: Recorded) -> Response:
        return JSONResponse(self.response_body, status_code=self.status)

    def wait_for_requests(self, count: int = 1, timeout: float = 5.0) -> list[Recorded]:
        if not self.wait_for(lambda: len(self.requests_to("callback")) >= count, timeout):
            raise TimeoutError(
                f"expected {count} callback(s), got {len(self.requests_to('callback'))}"
            )
        return self.requests_to("callback")

    def reset(self) -> None:
        super().reset()
        self.status = 200
        self.response_body = {"code": 0, "message": "ok"}
