"""Result links: a plain HTTPS URL for every result image, which a browser opens without a
token for a limited time.

``<public base>/results/<task_id>/<n>?exp=<unix time>&sig=<HMAC-SHA256>``: the signature
covers the task, the index and the expiry, under a server secret (``mcp.url_secret``, else
one generated once and kept in the data directory). Whoever holds a link may fetch that one
image until it expires; changing any part of it makes it worthless. The core knows nothing
of this: tool results get their links here (``server/app.py``) and the route that serves
them is :func:`serve_result`.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import math
import mimetypes
import os
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tools.config import Settings
from tools.errors import ConfigError, NotFound
from tools.models import Task
from tools.service import Editor

#: The secret's file in the data directory.
SECRET_FILE = "url-secret"
TASK_ID = re.compile(r"^[0-9a-f]{32}$")
INDEX = re.compile(r"^\d{1,3}$")


class ResultURLs:
    """Makes and checks signed result links."""

    def __init__(
        self,
        secret: bytes,
        base: str,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._secret = secret
        self.base = base.rstrip("/")
        self.ttl_s = ttl_s
        self.clock = clock

    @classmethod
    def from_settings(
        cls, settings: Settings, clock: Callable[[], float] = time.time
    ) -> ResultURLs:
        return cls(
            load_secret(settings), public_base(settings), settings.mcp.result_url_ttl_s, clock
        )

    def url(self, task_id: str, index: int) -> str:
        """A link to result ``index`` of the task, valid ``ttl_s`` from now."""
        exp = math.ceil(self.clock() + self.ttl_s)
        query = urlencode({"exp": exp, "sig": self.sign(task_id, str(index), str(exp))})
        return f"{self.base}/results/{task_id}/{index}?{query}"

    def with_urls(self, task: Task) -> Task:
        """The task with a link in each of its results."""
        results = [r.model_copy(update={"url": self.url(task.id, r.index)}) for r in task.results]
        return task.model_copy(update={"results": results})

    def sign(self, task_id: str, index: str, exp: str) -> str:
        message = f"retouch-result-v1\n{task_id}\n{index}\n{exp}".encode()
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def check(self, task_id: str, index: str, exp: str, sig: str) -> int | None:
        """The HTTP status that refuses this link (403 forged, 410 expired), or None."""
        if not (TASK_ID.match(task_id) and INDEX.match(index) and exp.isdigit() and len(exp) < 16):
            return 403
        if not hmac.compare_digest(sig.encode(), self.sign(task_id, index, exp).encode()):
            return 403
        if int(exp) <= self.clock():
            return 410
        return None


def public_base(settings: Settings) -> str:
    """``mcp.public_url``, else the address the server listens on."""
    cfg = settings.mcp
    if cfg.public_url:
        return cfg.public_url.rstrip("/")
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    return f"http://{host}:{cfg.port}"


def load_secret(settings: Settings) -> bytes:
    """``mcp.url_secret``, else the data directory's secret, made on first use (mode 0600).

    Two processes starting at once on one data directory end up with the same secret: the
    file appears whole or not at all (a hard link of a finished temporary file)."""
    configured = settings.mcp.url_secret.get_secret_value()
    if configured:
        return configured.encode()
    folder = settings.store.dir or Path(settings.store.path).parent
    path = Path(folder) / SECRET_FILE
    if not path.exists():
        folder_path = Path(folder)
        folder_path.mkdir(parents=True, exist_ok=True)
        tmp = folder_path / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32) + "\n")
            with contextlib.suppress(FileExistsError):  # another process was first: use its
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    secret = path.read_text(encoding="ascii", errors="replace").strip()
    if len(secret) < 32:
        raise ConfigError(f"{path} holds no usable secret; delete it and start again")
    return secret.encode()


def refusal(status: int, error: str, message: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message}, status_code=status)


async def serve_result(request: Request, urls: ResultURLs) -> Response:
    """``GET /results/<task_id>/<n>?exp=…&sig=…``: the image, to whoever holds the link."""
    task_id = request.path_params["task_id"]
    index = request.path_params["index"]
    exp = request.query_params.get("exp", "")
    sig = request.query_params.get("sig", "")
    status = urls.check(task_id, index, exp, sig)
    if status == 403:
        return refusal(403, "forbidden", "this link is not valid")
    if status == 410:
        return refusal(410, "expired", "this link has expired; ask for the task again")
    editor: Editor = request.app.state.editor
    try:
        data, mime = await editor.result(task_id, int(index))
    except NotFound:
        return refusal(410, "gone", "this result is no longer stored")
    name = f"retouch-{task_id[:8]}-{index}{mimetypes.guess_extension(mime) or '.bin'}"
    max_age = max(0, min(int(exp) - int(urls.clock()), 86400))
    return Response(
        data,
        media_type=mime,
        headers={
            "Cache-Control": f"private, max-age={max_age}",
            "Content-Disposition": f'inline; filename="{name}"',
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Referrer-Policy": "no-referrer",
        },
    )
