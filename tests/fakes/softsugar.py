"""Fake SenseTime SoftSugar PaaS: token sign-in and the 2dvh single-image edit task, with
completion delivered by callback (there is no polling endpoint, and the fake invents none).

Written from vendors.md §8, seed 000 (the "Create Image Editing Task" page) and the
SoftSugar FAQ (F1: sign = MD5(appId + timestamp + appKey), 32 lowercase hex; the example
sends timestamp as a string of Unix seconds; "the accessToken in the returned result").

Constructor
    FakeSoftSugar(app_id="test-app-id", app_key="test-app-key", *, token_ttl=7200,
                  max_clock_skew=300)

Routes (route name: method path)
    token   POST /api/uc/v1/access/api/token
    edit    POST /api/2dvh/v1/material/single/image/edit
    files   GET  /files/{name}                 result images (PNG)

Token: body {"appId", "timestamp", "sign", "grantType": "sign"}. timestamp: Unix seconds
as a string or an integer (milliseconds are accepted too); more than max_clock_skew seconds
away from now -> rejected. sign must equal md5(appId + timestamp-as-sent + appKey).
Success: {"code": 0, "message": "success", "data": {"accessToken", "expiresIn",
"refreshToken", "refreshTokenExpiresIn"}} -- ASSUMPTION: the FAQ elides every field but
accessToken; the data-nesting and the other names come from public third-party client code
(it reads data.accessToken / data.expiresIn / data.refreshToken / data.refreshTokenExpiresIn);
expiresIn is in seconds. No refresh grant is documented, so none is implemented: a client
refreshes by signing in again.

Edit: `Authorization: Bearer <accessToken>`; body {"imageName", "param": "<JSON string>"}
with param {"images": [1-3 http(s) URLs], "prompt", "resolution": [w, h] (optional, each
1..max_side), "watermark": {"show": bool, "content": str} (optional)}.
Success: {"code": 0, "message": "success", "data": <task id, an integer>}.

Errors (ASSUMPTIONS, the seed only says "0 - Success, Other - Error")
- Missing, unknown or expired token: HTTP 401 {"code": 401, "message": "token is invalid
  or expired", "data": null} -- so an adapter can refresh on either the status or the code.
- Any other request problem (bad sign, stale timestamp, unknown appId, bad grantType,
  invalid param JSON or fields): HTTP 200 {"code": 3333, "message": "The request parameter
  is invalid: ...", "data": null} (3333 is the request-parameter code of the FAQ's error
  table).

Completion and callback (ASSUMPTION -- no callback body is documented anywhere we found)
    `task_seconds` after creation (default 0.2; None = only when the test calls
    `complete(task_id)`), the fake fetches the input images (loopback or remote_images;
    each <= max_side px per side and <= 10 MB), renders one PNG (resolution, or the first
    image's size) and, if `callback_url` is set, POSTs JSON to it:
        {"taskId": 1, "imageName": "...", "status": "SUCCEEDED", "code": 0,
         "message": "success", "images": ["http://127.0.0.1:PORT/files/<name>.png"],
         "resolution": [w, h]}
    or on failure {"taskId", "imageName", "status": "FAILED", "code": <non-zero>,
    "message", "images": [], "resolution": null}. Input problems fail with code 3333;
    `fail_with = (code, message)` fails every task. Override `callback_body(task)` to test
    another shape. Without a callback_url nothing is delivered (task.callback_skipped).
    Non-2xx answers or transport errors are retried `callback_retries` times (default 0).

callback_url stands for the URL registered in the SoftSugar console, which the real vendor
calls for every task of the account: Retouch's `/callbacks/<name>/<secret>`.

Control API: callback_url, task_seconds, fail_with, max_side (2048: our reading of "2K"),
callback_retries, expire_tokens(), complete(task_id), complete_all(),
wait_callbacks(count, timeout) -> list[CallbackAttempt], expire_results(), reset().
State: tokens_issued, submissions, tasks[task_id] (SoftSugarTask), callbacks
(list[CallbackAttempt]: url, body, status, error).
Fault helpers: token_invalid(), param_error(message), error(code, message, http_status=200).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.http import FakeServer, Fault, FetchError, Recorded, open_image, render_result

PARAM_ERROR = 3333


def error_body(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message, "data": None}


def error(code: int, message: str, http_status: int = 200) -> Fault:
    return Fault.status(http_status, error_body(code, message))


def token_invalid() -> Fault:
    return Fault.status(401, error_body(401, "token is invalid or expired"))


def param_error(message: str = "The request parameter is invalid") -> Fault:
    return error(PARAM_ERROR, message)


@dataclass
class CallbackAttempt:
    url: str
    body: dict[str, Any]
    status: int | None = None
    error: str | None = None
    time: float = field(default_factory=time.time)


@dataclass
class SoftSugarTask:
    task_id: int
    image_name: str
    param: dict[str, Any]
    created: float = field(default_factory=time.time)
    status: str = "RUNNING"
    code: int = 0
    message: str = "success"
    images: list[str] = field(default_factory=list)
    resolution: list[int] | None = None
    callback_skipped: bool = False
    lock: asyncio.Lock | None = None


class FakeSoftSugar(FakeServer):
    """See the module docstring."""

    def __init__(
        self,
        app_id: str = "test-app-id",
        app_key: str = "test-app-key",
        *,
        token_ttl: int = 7200,
        max_clock_skew: float = 300,
    ) -> None:
        super().__init__()
        self.app_id = app_id
        self.app_key = app_key
        self.token_ttl = token_ttl
        self.max_clock_skew = max_clock_skew
        self._init_state()
        self.add_route("/api/uc/v1/access/api/token", "token", ["POST"], self._token)
        self.add_route("/api/2dvh/v1/material/single/image/edit", "edit", ["POST"], self._edit)

    def _init_state(self) -> None:
        self.callback_url: str | None = None
        self.task_seconds: float | None = 0.2
        self.fail_with: tuple[int, str] | None = None
        self.max_side = 2048
        self.callback_retries = 0
        self.tokens: dict[str, float] = {}
        self.tokens_issued = 0
        self.submissions = 0
        self.tasks: dict[int, SoftSugarTask] = {}
        self.callbacks: list[CallbackAttempt] = []
        self._next_id = 1

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._init_state()

    @staticmethod
    def sign(app_id: str, timestamp: str | int, app_key: str) -> str:
        """md5(appId + timestamp + appKey) as 32 lowercase hex (F1)."""
        return hashlib.md5(f"{app_id}{timestamp}{app_key}".encode()).hexdigest()

    # ------------------------------------------------------------------ control API

    def expire_tokens(self) -> None:
        """Every access token issued so far becomes invalid (the next call gets 401)."""
        with self._lock:
            self.tokens.clear()

    def complete(self, task_id: int, timeout: float = 10.0) -> SoftSugarTask:
        """Finish a task now (fetch, render, call back) and return it. Blocking."""
        task = self.tasks[task_id]
        self.call_in_loop(self._complete(task), timeout)
        return task

    def complete_all(self, timeout: float = 10.0) -> None:
        for task_id in list(self.tasks):
            self.complete(task_id, timeout)

    def wait_callbacks(self, count: int = 1, timeout: float = 5.0) -> list[CallbackAttempt]:
        if not self.wait_for(lambda: len(self.callbacks) >= count, timeout):
            raise TimeoutError(f"expected {count} callback(s), got {len(self.callbacks)}")
        with self._lock:
            return list(self.callbacks)

    def callback_body(self, task: SoftSugarTask) -> dict[str, Any]:
        return {
            "taskId": task.task_id,
            "imageName": task.image_name,
            "status": task.status,
            "code": task.code,
            "message": task.message,
            "images": list(task.images),
            "resolution": task.resolution,
        }

    # ------------------------------------------------------------------ token

    def _param_error(self, message: str) -> Response:
        return JSONResponse(error_body(PARAM_ERROR, f"The request parameter is invalid: {message}"))

    async def _token(self, request: Request, rec: Recorded) -> Response:
        body = rec.json
        if not isinstance(body, dict):
            return self._param_error("the body must be a JSON object")
        missing = [
            k for k in ("appId", "timestamp", "sign", "grantType") if body.get(k) in (None, "")
        ]
        if missing:
            return self._param_error(f"missing {', '.join(missing)}")
        if body["grantType"] != "sign":
            return self._param_error(f"unsupported grantType {body['grantType']!r}")
        if body["appId"] != self.app_id:
            return self._param_error("appId does not exist")
        raw_ts = body["timestamp"]
        try:
            ts = float(raw_ts)
        except (TypeError, ValueError):
            return self._param_error("timestamp must be Unix seconds")
        if ts > 1e11:
            ts /= 1000.0
        if abs(time.time() - ts) > self.max_clock_skew:
            return self._param_error("timestamp expired")
        expected = self.sign(self.app_id, raw_ts, self.app_key)
        if body["sign"] != expected:
            return self._param_error("sign verification failed")
        token = secrets.token_urlsafe(48)
        with self._lock:
            self.tokens[token] = time.time() + self.token_ttl
            self.tokens_issued += 1
        return JSONResponse(
            {
                "code": 0,
                "message": "success",
                "data": {
                    "accessToken": token,
                    "expiresIn": self.token_ttl,
                    "refreshToken": secrets.token_urlsafe(48),
                    "refreshTokenExpiresIn": self.token_ttl * 12,
                },
            }
        )

    # ------------------------------------------------------------------ edit

    def _token_ok(self, rec: Recorded) -> bool:
        token = rec.bearer
        with self._lock:
            expiry = self.tokens.get(token or "")
        return expiry is not None and expiry > time.time()

    def _validate_param(self, param: Any) -> str | None:
        if not isinstance(param, dict):
            return "param must be a JSON object string"
        images = param.get("images")
        if not isinstance(images, list) or not 1 <= len(images) <= 3:
            return "images must be a list of 1 to 3 URLs"
        for url in images:
            if not isinstance(url, str) or not url.startswith(("http://", "https://")):
                return f"images must be http(s) URLs, got {str(url)[:60]!r}"
        if not isinstance(param.get("prompt"), str) or not param["prompt"].strip():
            return "prompt is required"
        if "resolution" in param and param["resolution"] is not None:
            res = param["resolution"]
            if (
                not isinstance(res, list)
                or len(res) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in res)
            ):
                return "resolution must be [width, height] integers"
            if not all(1 <= v <= self.max_side for v in res):
                return f"resolution {res} exceeds {self.max_side} (2K)"
        if "watermark" in param and param["watermark"] is not None:
            wm = param["watermark"]
            if not isinstance(wm, dict):
                return "watermark must be an object"
            if "show" in wm and not isinstance(wm["show"], bool):
                return "watermark.show must be a boolean"
            if "content" in wm and not isinstance(wm["content"], str):
                return "watermark.content must be a string"
        return None

    async def _edit(self, request: Request, rec: Recorded) -> Response:
        if not self._token_ok(rec):
            return JSONResponse(error_body(401, "token is invalid or expired"), status_code=401)
        body = rec.json
        if not isinstance(body, dict):
            return self._param_error("the body must be a JSON object")
        name = body.get("imageName")
        if not isinstance(name, str) or not name.strip():
            return self._param_error("imageName is required")
        raw = body.get("param")
        if not isinstance(raw, str):
            return self._param_error("param must be a JSON-escaped string")
        try:
            param = json.loads(raw)
        except ValueError:
            return self._param_error("param is not valid JSON")
        problem = self._validate_param(param)
        if problem:
            return self._param_error(problem)
        with self._lock:
            task = SoftSugarTask(task_id=self._next_id, image_name=name, param=param)
            self._next_id += 1
            self.tasks[task.task_id] = task
            self.submissions += 1
        if self.task_seconds is not None:
            self.spawn(self._run_later(task, self.task_seconds))
        return JSONResponse({"code": 0, "message": "success", "data": task.task_id})

    async def _run_later(self, task: SoftSugarTask, delay: float) -> None:
        await self.sleep(delay)
        await self._complete(task)

    async def _complete(self, task: SoftSugarTask) -> None:
        if task.lock is None:
            task.lock = asyncio.Lock()
        async with task.lock:
            if task.status != "RUNNING":
                return
            await self._produce(task)
            await self._deliver(task)

    async def _produce(self, task: SoftSugarTask) -> None:
        sources = []
        for index, url in enumerate(task.param["images"]):
            try:
                data = await self.fetch_url(url)
                if len(data) > 10 * 1024 * 1024:
                    raise ValueError("larger than 10 MB")
                img = open_image(data)
                if max(img.size) > self.max_side:
                    raise ValueError(f"{img.size[0]}x{img.size[1]} exceeds {self.max_side} (2K)")
            except (FetchError, ValueError) as exc:
                task.status, task.code = "FAILED", PARAM_ERROR
                task.message = f"image {index + 1} is invalid: {exc}"
                return
            sources.append(img)
        if self.fail_with is not None:
            task.status = "FAILED"
            task.code, task.message = self.fail_with
            return
        width, height = task.param.get("resolution") or sources[0].size
        wm = task.param.get("watermark") or {}
        png = await asyncio.to_thread(
            render_result,
            sources[0],
            (width, height),
            meta={"vendor": "softsugar", "task_id": task.task_id, "prompt": task.param["prompt"]},
            watermark=(wm.get("content") or "AI") if wm.get("show") else None,
        )
        task.images = [self.put_file(png)]
        task.resolution = [width, height]
        task.status, task.code, task.message = "SUCCEEDED", 0, "success"

    async def _deliver(self, task: SoftSugarTask) -> None:
        url = self.callback_url
        if not url:
            task.callback_skipped = True
            return
        body = self.callback_body(task)
        for attempt in range(self.callback_retries + 1):
            record = CallbackAttempt(url=url, body=body)
            try:
                response = await self.http.post(url, json=body, timeout=5.0)
                record.status = response.status_code
            except httpx.HTTPError as exc:
                record.error = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.callbacks.append(record)
            if record.status is not None and 200 <= record.status < 300:
                return
            if attempt < self.callback_retries:
                await self.sleep(0.05)
