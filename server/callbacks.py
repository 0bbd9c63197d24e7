"""Vendor callbacks: ``POST /callbacks/<vendor>/<secret>``.

Nothing is read before the secret is checked (by the Editor, in constant time); a wrong one
gets the answer an unknown vendor gets. The body is read as it streams, at most
``MAX_CALLBACK_BYTES`` within ``READ_TIMEOUT_S``, and handed to the Editor, whose vendor
adapter parses it (JSON of bounded depth). Every refusal is a small JSON
``{"code", "message"}`` with a 4xx status; a callback whose results Retouch could not store
just now is a 503 (with Retry-After when the store is down), which a vendor may retry.
``/callbacks/<vendor>`` without a secret is refused as a malformed callback URL, whatever
the vendor.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from tools.errors import NotFound, RetouchError, StoreUnavailable
from tools.service import Editor

log = logging.getLogger(__name__)

#: A callback is JSON naming a task and its result URLs: a few kilobytes.
MAX_CALLBACK_BYTES = 64 * 1024
#: Time for the whole body to arrive.
READ_TIMEOUT_S = 10.0


class Refused(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> JSONResponse:
        return JSONResponse({"code": self.code, "message": self.message}, status_code=self.status)


async def callback(request: Request) -> Response:
    editor: Editor = request.app.state.editor
    vendor = request.path_params["vendor"]
    try:
        if not editor.callback_secret_matches(vendor, request.path_params["secret"]):
            raise Refused(404, "not_found", "no such callback URL")  # as for no vendor
        body = await read_body(request)
        task_id, ended = await editor.vendor_callback(vendor, body, dict(request.headers))
    except Refused as refused:
        return refused.response()
    except StoreUnavailable:
        raise  # the app's 503 with Retry-After: the vendor sends its callback again
    except NotFound as exc:
        return Refused(404, exc.code, exc.message).response()
    except RetouchError as exc:
        return Refused(400, exc.code, exc.message).response()
    except Exception:
        log.exception("a callback from %s could not be taken", vendor)
        return Refused(503, "unavailable", "the results could not be stored now").response()
    if not ended:
        message = "the task has ended, or another callback is ending it: nothing changed"
        return JSONResponse({"code": 0, "task_id": task_id, "ended": False, "message": message})
    return JSONResponse({"code": 0, "task_id": task_id, "ended": True})


async def callback_without_secret(request: Request) -> Response:
    return Refused(
        400,
        "invalid_parameter",
        "a callback URL ends in its secret: /callbacks/<vendor>/<secret> (see SECURITY.md)",
    ).response()


async def read_body(request: Request) -> bytes:
    """The body, if JSON (or untyped) and within the size and time limits; read as it
    arrives, so a larger one is refused after MAX_CALLBACK_BYTES, not after all of it."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind and kind != "application/json" and not kind.endswith("+json"):
        raise Refused(415, "unsupported_media_type", "a callback is JSON (application/json)")
    too_large = Refused(413, "too_large", f"a callback is at most {MAX_CALLBACK_BYTES // 1024} KiB")
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise Refused(400, "invalid_parameter", "Content-Length is not a number")
        if int(declared) > MAX_CALLBACK_BYTES:
            raise too_large
    body = bytearray()
    try:
        async with asyncio.timeout(READ_TIMEOUT_S):
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_CALLBACK_BYTES:
                    raise too_large
    except TimeoutError:
        raise Refused(408, "timeout", f"the body took over {READ_TIMEOUT_S:g} s") from None
    except ClientDisconnect:
        raise Refused(400, "invalid_parameter", "the body ended early") from None
    return bytes(body)
