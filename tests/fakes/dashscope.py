"""Fake DashScope (Alibaba Cloud Model Studio): wanx2.1-imageedit (async task API),
qwen-image-edit(-plus/-max) (sync multimodal-generation) and the temporary-upload flow.

Written from vendors.md §1-3, §10 and the error table, and seed 001 (the wanx2.1-imageedit
API reference). A 302.AI-style proxy is mimicked with `path_prefix="/aliyun"` (vendors.md §6).

Constructor
    FakeDashScope(api_key="sk-test-dashscope", *, path_prefix="",
                  wanx_models=("wanx2.1-imageedit",), qwen_models=None)
    qwen_models=None accepts every model named "qwen-image-edit*".

Routes (route name: method path)                      [P = path_prefix]
    create      POST P/api/v1/services/aigc/image2image/image-synthesis        wanx, async
    task        GET  P/api/v1/tasks/{task_id}
    cancel      POST P/api/v1/tasks/{task_id}/cancel
    generation  POST P/api/v1/services/aigc/multimodal-generation/generation   qwen, sync
    policy      GET  P/api/v1/uploads?action=getPolicy&model=...
    oss_upload  POST /oss-upload            (the upload_host of the policy; OSS PostObject)
    files       GET  /files/{name}          result images (and anything put_file() stored)

Auth: every P/api/v1 route needs `Authorization: Bearer <api_key>`, else
    401 {"request_id", "code": "InvalidApiKey", "message": "Invalid API-key provided."}.
Errors are `{"request_id", "code", "message"}` with the HTTP status of the error table.

Control API (plain attributes; set them from the test; `reset()` restores the defaults)
    task_plan = ["PENDING", "RUNNING", "SUCCEEDED"]
        Status reported by the 1st, 2nd, ... GET of a task; the last entry repeats. Any of
        PENDING, RUNNING, SUSPENDED, SUCCEEDED, FAILED, CANCELED, UNKNOWN. A plan whose last
        entry is not terminal keeps the task there forever (to test client timeouts). The
        plan is copied into each task when it is created.
    task_seconds = None
        If set, time decides instead of the GET count: PENDING for the first half, RUNNING
        for the second, then the last entry of task_plan.
    partial_failures = 0
        k of the n result items become {"code": "InternalError.Timeout", "message": ...};
        the task is still SUCCEEDED (task_metrics and usage.image_count count successes
        only); with k >= n the task is FAILED with InternalError.Timeout.
    fail_with = None          e.g. ("InternalError", "...") -> the task ends FAILED with it.
    accept_data_uri = False   wanx base_image_url/mask_image_url are URLs only per seed 001;
                              set True to accept data: URIs there (vendors.md §9.11).
    blocked_words = set()     a prompt/text containing one -> 400 DataInspectionFailed.
    qps_limit / submit_rps_limit / concurrency_limit = None
        If set, task queries above qps_limit per second (the account cap is 20), creates
        above submit_rps_limit per second, or more than concurrency_limit unfinished tasks
        (the wanx caps are 2 and 2) -> 429 Throttling.RateQuota. Off by default.
    result_side_cap = 4096    result images are scaled down to this longest side.
Counters / state (read them)
    submissions               accepted create calls;    generations: accepted sync calls
    queries[task_id]          GETs per task id;          total_queries: all task GETs
    max_qps_seen              most task GETs within any 1 s window
    max_submit_rps_seen, max_concurrent_seen
    tasks[task_id]            WanxTask records (request, plan, status, results)
    uploads[key]              bytes stored by the upload flow ("oss://" + key resolves here)
Methods
    expire_results()  result URLs -> 404;   expire_tasks()  existing ids -> UNKNOWN (24 h)
    expire_uploads()  forget uploaded files (48 h);   inject(route, *faults); reset()

Fault helpers (module functions returning a Fault for `inject`): rate_limited(retry_after=None),
allocation_quota_exceeded(), free_quota_exhausted(), invalid_api_key(), invalid_parameter(),
data_inspection_failed(), ip_infringement(), access_denied(), arrearage(), model_not_found(),
internal_error(), service_unavailable(status=503).

Behaviour and the choices made where the documents are silent
- create needs `X-DashScope-Async: enable`, else 403 AccessDenied "current user api does not
  support synchronous calls" (the real message; its mirror "...asynchronous calls" is what
  the sync endpoint answers when the header is sent to it, spring-ai-alibaba issue #166).
- create validates: model (missing -> 400 BadRequest.EmptyModel; unknown -> 404
  ModelNotFound), input (missing -> 400 BadRequest.EmptyInput), input.function among the ten
  functions (the nine of seed 001 plus description_edit from the SDK), prompt (required,
  over 800 chars silently truncated as documented), base_image_url (http/https/oss URL, no
  Chinese characters), mask_image_url required only for description_edit_with_mask (seed 001
  says "only then"; stylization_local does not need one, its seed example has none),
  parameters.n 1-4, seed 0-2147483647, watermark bool, *_scale 1.0-2.0 (checked for expand
  only, ignored otherwise: "only needed for expand"), upscale_factor int 1-4 (checked for
  super_resolution only). Violations -> 400 InvalidParameter.
- The images are fetched after create, like the real service: http(s) on loopback or in
  remote_images, `oss://<key>` from this fake's uploads only when the create request carried
  `X-DashScope-OssResourceResolve: enable`. An image that cannot be fetched or decoded, has
  sides outside 512-4096, is over 10 MB, or a mask of another size fails the task: FAILED
  with code InvalidParameter and a message naming the URL (seed 001's failure example uses
  InvalidParameter).
- Results: base image size (expand: each side grows by its scale around the centre, i.e.
  width * (left+right)/2; super_resolution: times upscale_factor), inverted, with a band; URLs
  are /files/<name>.png?Expires=...&Signature=fake.
- GET of an unknown or expired id: 200 {"request_id", "output": {"task_id", "task_status":
  "UNKNOWN"}}. Cancel: PENDING (the status last reported; PENDING before the first GET) ->
  200 {"request_id"} and the task is CANCELED; otherwise (or unknown id) 400
  UnsupportedOperation (a documented general code) with the current status in the message.
- Sync generation: exactly one message, role "user", content items each with exactly one of
  image/text, 1-3 images and exactly one text. n: 1 only for qwen-image-edit (and its dated
  snapshots; n > 1 is rejected, not ignored), 1-6 for plus/max. size "W*H" 512-2048 each
  (rejected for plain qwen-image-edit, which has no custom size), output rounded to a
  multiple of 16; default ~1024*1024 pixels with the last image's aspect ratio.
  negative_prompt over 500 chars and text over 800 are truncated, as documented (not
  errors). Images: http URL, data: URI or oss:// (with the resolve header); input sides
  384-3072, <= 10 MB. Fetch/decode problems -> 400 InvalidParameter.
- Upload flow: getPolicy -> {"request_id", "data": {policy, signature, upload_dir,
  upload_host: <base_url>/oss-upload, expire_in_seconds: 300, max_file_size_mb: 100,
  capacity_limit_mb, oss_access_key_id, x_oss_object_acl: "private",
  x_oss_forbid_overwrite: "true"}}. /oss-upload checks the PostObject form like OSS: `file`
  must be the last part (fields after it are ignored, so they count as missing), exactly
  one file, OSSAccessKeyId/policy/Signature/key present, a known access key (else 403
  InvalidAccessKeyId), a policy this fake issued and not expired (else 403 AccessDenied),
  the right signature (else 403 SignatureDoesNotMatch), the policy conditions key
  starts-with upload_dir, x-oss-object-acl=private, x-oss-forbid-overwrite=true (else 403
  AccessDenied "Invalid according to Policy: Policy Condition failed"), size (400
  EntityTooLarge), no overwrite (409 FileAlreadyExists). Success: the status given in
  success_action_status (200/201/204; default 204), empty body. Errors are OSS XML.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from tests.fakes.http import (
    FakeServer,
    Fault,
    FetchError,
    RateMeter,
    Recorded,
    new_id,
    open_image,
    oss_error,
    render_result,
)

WANX_FUNCTIONS = (
    "stylization_all",
    "stylization_local",
    "description_edit",
    "description_edit_with_mask",
    "remove_watermark",
    "expand",
    "super_resolution",
    "colorization",
    "doodle",
    "control_cartoon_feature",
)
MASK_FUNCTIONS = frozenset({"description_edit_with_mask"})
STATUSES = frozenset(
    {"PENDING", "RUNNING", "SUSPENDED", "SUCCEEDED", "FAILED", "CANCELED", "UNKNOWN"}
)
SEED_MAX = 2147483647
MAX_IMAGE_BYTES = 10 * 1024 * 1024
TIMEOUT_MESSAGE = (
    "An internal timeout error has occured during execution, please try again later or "
    "contact service support."
)
INTERNAL_MESSAGE = (
    "An internal error has occured, please try again later or contact service support."
)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def error_body(code: str, message: str, request_id: str | None = None) -> dict[str, str]:
    return {"request_id": request_id or new_id(), "code": code, "message": message}


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _fault(status: int, code: str, message: str, retry_after: float | None = None) -> Fault:
    headers = {"Retry-After": _fmt_seconds(retry_after)} if retry_after is not None else None
    return Fault.status(status, error_body(code, message), headers)


def _fmt_seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


# ------------------------------------------------------------------ fault helpers


def rate_limited(retry_after: float | None = None) -> Fault:
    """429 Throttling.RateQuota (retryable), optionally with a Retry-After header."""
    return _fault(
        429,
        "Throttling.RateQuota",
        "Requests rate limit exceeded, please try again later.",
        retry_after,
    )


def allocation_quota_exceeded(retry_after: float | None = None) -> Fault:
    """429 Throttling.AllocationQuota "Allocated quota exceeded" (retryable, A5/A6)."""
    return _fault(
        429,
        "Throttling.AllocationQuota",
        "Allocated quota exceeded, please increase your quota limit.",
        retry_after,
    )


def free_quota_exhausted() -> Fault:
    """429 Throttling.AllocationQuota "Free allocated quota exceeded." (not retryable)."""
    return _fault(429, "Throttling.AllocationQuota", "Free allocated quota exceeded.")


def invalid_api_key() -> Fault:
    return _fault(401, "InvalidApiKey", "Invalid API-key provided.")


def invalid_parameter(message: str = "InvalidParameter") -> Fault:
    return _fault(400, "InvalidParameter", message)


def data_inspection_failed() -> Fault:
    return _fault(400, "DataInspectionFailed", "Input data may contain inappropriate content.")


def ip_infringement() -> Fault:
    return _fault(
        400,
        "IPInfringementSuspect",
        "Input data is suspected of being involved in IP infringement.",
    )


def access_denied() -> Fault:
    return _fault(403, "AccessDenied", "Access denied.")


def arrearage() -> Fault:
    return _fault(
        403, "Arrearage", "Access denied, please make sure your account is in good standing."
    )


def model_not_found(model: str = "wanx2.1-imageedit") -> Fault:
    return _fault(404, "ModelNotFound", f"Model not found ({model})!")


def internal_error() -> Fault:
    return _fault(500, "InternalError", INTERNAL_MESSAGE)


def service_unavailable(status: int = 503) -> Fault:
    return Fault.status(status, "Service Unavailable", {"Content-Type": "text/plain"})


# ------------------------------------------------------------------ tasks


class _TaskFailure(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class WanxTask:
    """One wanx2.1-imageedit task as the fake holds it."""

    task_id: str
    model: str
    function: str
    prompt: str
    base_image_url: str
    mask_image_url: str | None
    parameters: dict[str, Any]
    n: int
    oss_resolve: bool
    plan: tuple[str, ...]
    task_seconds: float | None
    partial_failures: int
    fail_with: tuple[str, str] | None
    submitted: float = field(default_factory=time.time)
    queries: int = 0
    status: str = "PENDING"
    canceled: bool = False
    expired: bool = False
    scheduled: float | None = None
    ended: float | None = None
    final: dict[str, Any] | None = None
    result_urls: list[str] = field(default_factory=list)
    inputs: asyncio.Task[Any] | None = None
    finishing: asyncio.Task[Any] | None = None

    def unfinished(self, now: float) -> bool:
        if self.canceled or self.final is not None or self.expired:
            return False
        return self.task_seconds is None or now - self.submitted < self.task_seconds


def _fmt_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _round16(value: float) -> int:
    return max(16, math.floor(value / 16.0 + 0.5) * 16)


@dataclass
class _Policy:
    policy: str
    signature: str
    upload_dir: str
    expires: float
    max_bytes: int


class FakeDashScope(FakeServer):
    """See the module docstring."""

    def __init__(
        self,
        api_key: str = "sk-test-dashscope",
        *,
        path_prefix: str = "",
        wanx_models: tuple[str, ...] = ("wanx2.1-imageedit",),
        qwen_models: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__()
        self.api_key = api_key
        self.path_prefix = path_prefix.rstrip("/")
        self.wanx_models = tuple(wanx_models)
        self.qwen_models = tuple(qwen_models) if qwen_models is not None else None
        self.oss_access_key_id = "LTAIfake" + uuid.uuid4().hex[:12]
        self._oss_secret = uuid.uuid4().hex
        self._init_state()
        p = self.path_prefix
        self.add_route(
            f"{p}/api/v1/services/aigc/image2image/image-synthesis",
            "create",
            ["POST"],
            self._create,
        )
        self.add_route(f"{p}/api/v1/tasks/{{task_id}}", "task", ["GET"], self._query)
        self.add_route(f"{p}/api/v1/tasks/{{task_id}}/cancel", "cancel", ["POST"], self._cancel)
        self.add_route(
            f"{p}/api/v1/services/aigc/multimodal-generation/generation",
            "generation",
            ["POST"],
            self._generation,
        )
        self.add_route(f"{p}/api/v1/uploads", "policy", ["GET"], self._policy)
        self.add_route("/oss-upload", "oss_upload", ["POST"], self._oss_upload)

    def _init_state(self) -> None:
        self.task_plan: list[str] = ["PENDING", "RUNNING", "SUCCEEDED"]
        self.task_seconds: float | None = None
        self.partial_failures = 0
        self.fail_with: tuple[str, str] | None = None
        self.accept_data_uri = False
        self.blocked_words: set[str] = set()
        self.qps_limit: int | None = None
        self.submit_rps_limit: int | None = None
        self.concurrency_limit: int | None = None
        self.result_side_cap = 4096
        self.submissions = 0
        self.generations = 0
        self.queries: dict[str, int] = {}
        self.total_queries = 0
        self.max_concurrent_seen = 0
        self._query_meter = RateMeter()
        self._submit_meter = RateMeter()
        self.tasks: dict[str, WanxTask] = {}
        self._uploads: dict[str, bytes] = {}
        self._policies: dict[str, _Policy] = {}

    def reset(self) -> None:
        super().reset()
        with self._lock:
            self._init_state()

    # ------------------------------------------------------------------ control API

    @property
    def max_qps_seen(self) -> int:
        return self._query_meter.max_seen

    @property
    def max_submit_rps_seen(self) -> int:
        return self._submit_meter.max_seen

    @property
    def uploads(self) -> dict[str, bytes]:
        with self._lock:
            return dict(self._uploads)

    def expire_tasks(self) -> None:
        with self._lock:
            for task in self.tasks.values():
                task.expired = True

    def expire_uploads(self) -> None:
        with self._lock:
            self._uploads.clear()

    def url(self, path: str) -> str:
        """Absolute URL of an API path under this fake, e.g. url("/api/v1/tasks/x")."""
        return f"{self.base_url}{self.path_prefix}{path}"

    # ------------------------------------------------------------------ helpers

    def _auth(self, rec: Recorded) -> Response | None:
        if rec.bearer != self.api_key:
            return _error(401, "InvalidApiKey", "Invalid API-key provided.")
        return None

    def _blocked(self, *texts: str) -> bool:
        lowered = " ".join(t for t in texts if isinstance(t, str)).lower()
        return any(w.lower() in lowered for w in self.blocked_words)

    async def fetch_oss(self, url: str, headers: Any) -> bytes:
        if headers.get("x-dashscope-ossresourceresolve", "").lower() != "enable":
            raise FetchError(
                f"{url}: oss:// resources need the header X-DashScope-OssResourceResolve: enable"
            )
        key = url[len("oss://") :]
        with self._lock:
            data = self._uploads.get(key)
        if data is None:
            raise FetchError(f"{url}: no such uploaded object (expired or never uploaded)")
        return data

    def _check_url(self, name: str, value: Any) -> str | None:
        if not isinstance(value, str) or not value.strip():
            return f"{name} must be a non-empty URL string"
        if value.startswith("data:"):
            if self.accept_data_uri:
                return None
            return f"{name} must be a URL; Base64 data is not supported"
        scheme = value.split(":", 1)[0].lower() if ":" in value else ""
        if scheme not in ("http", "https", "oss"):
            return f"{name} is not a valid URL: {value[:80]}"
        if _CJK.search(value):
            return f"{name} must not contain Chinese characters"
        return None

    # ------------------------------------------------------------------ wanx create

    def _validate_wanx(self, body: Any) -> tuple[int, str, str] | None:
        if not isinstance(body, dict):
            return 400, "InvalidParameter", "The request body must be a JSON object."
        model = body.get("model")
        if not model:
            return 400, "BadRequest.EmptyModel", 'Required parameter "model" missing from request.'
        if model not in self.wanx_models:
            return 404, "ModelNotFound", f"Model not found ({model})!"
        inp = body.get("input")
        if not isinstance(inp, dict) or not inp:
            return 400, "BadRequest.EmptyInput", "Required input parameter missing from request."
        function = inp.get("function")
        if function not in WANX_FUNCTIONS:
            return (
                400,
                "InvalidParameter",
                (f"input.function must be one of {', '.join(WANX_FUNCTIONS)}; got {function!r}"),
            )
        prompt = inp.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            return 400, "InvalidParameter", "input.prompt is required and must be a string."
        problem = self._check_url("input.base_image_url", inp.get("base_image_url"))
        if problem:
            return 400, "InvalidParameter", problem
        mask = inp.get("mask_image_url")
        if function in MASK_FUNCTIONS and not mask:
            return (
                400,
                "InvalidParameter",
                (f"input.mask_image_url is required when function is {function}."),
            )
        if function in MASK_FUNCTIONS:
            problem = self._check_url("input.mask_image_url", mask)
            if problem:
                return 400, "InvalidParameter", problem
        params = body.get("parameters", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return 400, "InvalidParameter", "parameters must be an object."
        if "n" in params and not (_is_int(params["n"]) and 1 <= params["n"] <= 4):
            return (
                400,
                "InvalidParameter",
                f"parameters.n must be an integer in [1, 4]; got {params['n']!r}",
            )
        if "seed" in params and not (_is_int(params["seed"]) and 0 <= params["seed"] <= SEED_MAX):
            return 400, "InvalidParameter", f"parameters.seed must be in [0, {SEED_MAX}]"
        if "watermark" in params and not isinstance(params["watermark"], bool):
            return 400, "InvalidParameter", "parameters.watermark must be a boolean."
        if function == "expand":
            for key in ("top_scale", "bottom_scale", "left_scale", "right_scale"):
                if key in params:
                    value = params[key]
                    if not (_is_number(value) and 1.0 <= value <= 2.0):
                        return (
                            400,
                            "InvalidParameter",
                            (f"parameters.{key} must be a number in [1.0, 2.0]; got {value!r}"),
                        )
        if function == "super_resolution" and "upscale_factor" in params:
            value = params["upscale_factor"]
            if not (_is_int(value) and 1 <= value <= 4):
                return (
                    400,
                    "InvalidParameter",
                    (f"parameters.upscale_factor must be an integer in [1, 4]; got {value!r}"),
                )
        return None

    async def _create(self, request: Request, rec: Recorded) -> Response:
        if (denied := self._auth(rec)) is not None:
            return denied
        if rec.headers.get("x-dashscope-async", "").lower() != "enable":
            return _error(
                403, "AccessDenied", "current user api does not support synchronous calls"
            )
        if rec.json_error:
            return _error(400, "InvalidParameter", "The request body is not valid JSON.")
        problem = self._validate_wanx(rec.json)
        if problem:
            return _error(*problem)
        body = rec.json
        inp = body["input"]
        params = body.get("parameters") or {}
        if self._blocked(inp["prompt"]):
            return _error(
                400, "DataInspectionFailed", "Input data may contain inappropriate content."
            )
        now = time.time()
        rps = self._submit_meter.hit()
        if self.submit_rps_limit is not None and rps > self.submit_rps_limit:
            return _error(
                429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."
            )
        with self._lock:
            running = sum(1 for t in self.tasks.values() if t.unfinished(now))
        if self.concurrency_limit is not None and running >= self.concurrency_limit:
            return _error(
                429,
                "Throttling.RateQuota",
                "Requests rate limit exceeded, too many concurrent tasks, please try again later.",
            )
        plan = tuple(s.upper() for s in self.task_plan) or ("SUCCEEDED",)
        unknown = [s for s in plan if s not in STATUSES]
        if unknown:
            raise ValueError(f"task_plan has unknown statuses: {unknown}")
        task = WanxTask(
            task_id=new_id(),
            model=body["model"],
            function=inp["function"],
            prompt=inp["prompt"][:800],
            base_image_url=inp["base_image_url"],
            mask_image_url=inp.get("mask_image_url") if inp["function"] in MASK_FUNCTIONS else None,
            parameters=dict(params),
            n=params.get("n", 1),
            oss_resolve=rec.headers.get("x-dashscope-ossresourceresolve", "").lower() == "enable",
            plan=plan,
            task_seconds=self.task_seconds,
            partial_failures=self.partial_failures,
            fail_with=self.fail_with,
            submitted=now,
        )
        task.inputs = self.spawn(self._inputs_or_failure(task, dict(rec.headers)))
        with self._lock:
            self.tasks[task.task_id] = task
            self.submissions += 1
            self.max_concurrent_seen = max(self.max_concurrent_seen, running + 1)
        return JSONResponse(
            {"output": {"task_id": task.task_id, "task_status": "PENDING"}, "request_id": new_id()}
        )

    async def _inputs_or_failure(
        self, task: WanxTask, headers: dict[str, str]
    ) -> tuple[bytes, bytes | None] | _TaskFailure:
        # Returned, not raised: a task nobody polls must not log "exception never retrieved".
        try:
            return await self._load_inputs(task, headers)
        except _TaskFailure as failure:
            return failure

    async def _load_inputs(
        self, task: WanxTask, headers: dict[str, str]
    ) -> tuple[bytes, bytes | None]:
        async def load(url: str, what: str) -> bytes:
            try:
                data = await self.fetch_url(url, headers=headers)
            except FetchError as exc:
                raise _TaskFailure(
                    "InvalidParameter", f"Failed to download {what}: {exc}"
                ) from None
            if len(data) > MAX_IMAGE_BYTES:
                raise _TaskFailure("InvalidParameter", f"{what} is larger than 10 MB")
            return data

        base = await load(task.base_image_url, "input.base_image_url")
        try:
            base_img = open_image(base)
        except ValueError as exc:
            raise _TaskFailure("InvalidParameter", f"input.base_image_url: {exc}") from None
        w, h = base_img.size
        if not (512 <= w <= 4096 and 512 <= h <= 4096):
            raise _TaskFailure(
                "InvalidParameter",
                f"input.base_image_url: image size {w}x{h} is outside [512, 4096] pixels",
            )
        mask = None
        if task.mask_image_url:
            mask = await load(task.mask_image_url, "input.mask_image_url")
            try:
                mask_size = open_image(mask).size
            except ValueError as exc:
                raise _TaskFailure("InvalidParameter", f"input.mask_image_url: {exc}") from None
            if mask_size != (w, h):
                raise _TaskFailure(
                    "InvalidParameter",
                    f"input.mask_image_url: mask size {mask_size[0]}x{mask_size[1]} differs "
                    f"from the base image size {w}x{h}",
                )
        return base, mask

    # ------------------------------------------------------------------ task query / cancel

    def _status_now(self, task: WanxTask, *, consume: bool) -> str:
        if task.canceled:
            return "CANCELED"
        if task.final is not None:
            return task.final["task_status"]
        if task.task_seconds is not None:
            elapsed = time.time() - task.submitted
            if elapsed >= task.task_seconds:
                return task.plan[-1]
            return "PENDING" if elapsed < task.task_seconds / 2 else "RUNNING"
        if not consume:
            return task.status
        status = task.plan[min(task.queries, len(task.plan) - 1)]
        task.queries += 1
        return status

    async def _query(self, request: Request, rec: Recorded) -> Response:
        if (denied := self._auth(rec)) is not None:
            return denied
        task_id = request.path_params["task_id"]
        qps = self._query_meter.hit()
        with self._lock:
            self.total_queries += 1
            self.queries[task_id] = self.queries.get(task_id, 0) + 1
            task = self.tasks.get(task_id)
        if self.qps_limit is not None and qps > self.qps_limit:
            return _error(
                429, "Throttling.RateQuota", "Requests rate limit exceeded, please try again later."
            )
        if task is None or task.expired:
            return self._unknown(task_id)
        status = self._status_now(task, consume=True)
        if status in ("SUCCEEDED", "FAILED") and task.final is None:
            if task.finishing is None:
                task.finishing = self.spawn(self._finish(task, status))
            await asyncio.shield(task.finishing)
            status = task.final["task_status"] if task.final else status
        if status == "UNKNOWN":
            return self._unknown(task_id)
        if status == "CANCELED":
            task.canceled = True
        if status != "PENDING" and task.scheduled is None:
            task.scheduled = time.time()
        task.status = status
        return JSONResponse(self._task_body(task, status))

    def _unknown(self, task_id: str) -> Response:
        return JSONResponse(
            {"request_id": new_id(), "output": {"task_id": task_id, "task_status": "UNKNOWN"}}
        )

    def _task_body(self, task: WanxTask, status: str) -> dict[str, Any]:
        output: dict[str, Any] = {
            "task_id": task.task_id,
            "task_status": status,
            "submit_time": _fmt_time(task.submitted),
        }
        if task.scheduled is not None:
            output["scheduled_time"] = _fmt_time(task.scheduled)
        body: dict[str, Any] = {"request_id": new_id(), "output": output}
        if task.final is not None:
            output.update({k: v for k, v in task.final.items() if k not in ("usage",)})
            if task.ended is not None:
                output["end_time"] = _fmt_time(task.ended)
            if "usage" in task.final:
                body["usage"] = task.final["usage"]
        else:
            if status == "CANCELED" and task.ended is not None:
                output["end_time"] = _fmt_time(task.ended)
            output["task_metrics"] = {"TOTAL": task.n, "SUCCEEDED": 0, "FAILED": 0}
        return body

    async def _finish(self, task: WanxTask, status: str) -> None:
        task.scheduled = task.scheduled or time.time()
        n = task.n
        try:
            assert task.inputs is not None
            loaded = await asyncio.wait_for(asyncio.shield(task.inputs), timeout=20)
        except TimeoutError:
            task.final = self._failed("InternalError.Timeout", TIMEOUT_MESSAGE, n)
            task.ended = time.time()
            return
        if isinstance(loaded, _TaskFailure):
            task.final = self._failed(loaded.code, loaded.message, n)
            task.ended = time.time()
            return
        base, _mask = loaded
        if status == "FAILED" or task.fail_with is not None:
            code, message = task.fail_with or ("InternalError", INTERNAL_MESSAGE)
            task.final = self._failed(code, message, n)
            task.ended = time.time()
            return
        failures = max(0, min(task.partial_failures, n))
        successes = n - failures
        if successes == 0:
            task.final = self._failed("InternalError.Timeout", TIMEOUT_MESSAGE, n)
            task.ended = time.time()
            return
        size = self._wanx_size(base, task)
        results: list[dict[str, Any]] = []
        for index in range(successes):
            meta = {
                "vendor": "dashscope",
                "model": task.model,
                "task_id": task.task_id,
                "function": task.function,
                "prompt": task.prompt,
            }
            png = await asyncio.to_thread(
                render_result,
                base,
                size,
                index=index,
                meta=meta,
                watermark="AI" if task.parameters.get("watermark") else None,
            )
            url = self.put_file(png) + f"?Expires={int(time.time()) + 86400}&Signature=fake"
            task.result_urls.append(url)
            results.append({"url": url})
        results.extend(
            {"code": "InternalError.Timeout", "message": TIMEOUT_MESSAGE} for _ in range(failures)
        )
        task.final = {
            "task_status": "SUCCEEDED",
            "results": results,
            "task_metrics": {"TOTAL": n, "SUCCEEDED": successes, "FAILED": failures},
            "usage": {"image_count": successes},
        }
        task.ended = time.time()

    @staticmethod
    def _failed(code: str, message: str, n: int) -> dict[str, Any]:
        return {
            "task_status": "FAILED",
            "code": code,
            "message": message,
            "task_metrics": {"TOTAL": n, "SUCCEEDED": 0, "FAILED": n},
        }

    def _wanx_size(self, base: bytes, task: WanxTask) -> tuple[int, int]:
        w, h = open_image(base).size
        p = task.parameters
        if task.function == "expand":
            w = round(w * (p.get("left_scale", 1.0) + p.get("right_scale", 1.0)) / 2)
            h = round(h * (p.get("top_scale", 1.0) + p.get("bottom_scale", 1.0)) / 2)
        elif task.function == "super_resolution":
            factor = p.get("upscale_factor", 1)
            w, h = w * factor, h * factor
        cap = self.result_side_cap
        if max(w, h) > cap:
            scale = cap / max(w, h)
            w, h = max(1, round(w * scale)), max(1, round(h * scale))
        return w, h

    async def _cancel(self, request: Request, rec: Recorded) -> Response:
        if (denied := self._auth(rec)) is not None:
            return denied
        task = self.tasks.get(request.path_params["task_id"])
        if task is None or task.expired:
            return _error(
                400,
                "UnsupportedOperation",
                "The operation is unsupported on the referee object: task not found.",
            )
        status = self._status_now(task, consume=False)
        if status != "PENDING":
            return _error(
                400,
                "UnsupportedOperation",
                f"The operation is unsupported on the referee object: the task is {status}; "
                "only PENDING tasks can be canceled.",
            )
        task.canceled = True
        task.status = "CANCELED"
        task.ended = time.time()
        return JSONResponse({"request_id": new_id()})

    # ------------------------------------------------------------------ qwen sync

    def _is_plain_qwen(self, model: str) -> bool:
        return re.fullmatch(r"qwen-image-edit(-\d{4}-\d{2}-\d{2})?", model) is not None

    def _validate_qwen(self, body: Any) -> tuple[int, str, str] | None:
        if not isinstance(body, dict):
            return 400, "InvalidParameter", "The request body must be a JSON object."
        model = body.get("model")
        if not model:
            return 400, "BadRequest.EmptyModel", 'Required parameter "model" missing from request.'
        known = (
            model in self.qwen_models
            if self.qwen_models is not None
            else isinstance(model, str) and model.startswith("qwen-image-edit")
        )
        if not known:
            return 404, "ModelNotFound", f"Model not found ({model})!"
        inp = body.get("input")
        if not isinstance(inp, dict) or not inp:
            return 400, "BadRequest.EmptyInput", "Required input parameter missing from request."
        messages = inp.get("messages")
        if not isinstance(messages, list) or len(messages) != 1:
            return (
                400,
                "InvalidParameter",
                ("input.messages must hold exactly one message (single-turn only)."),
            )
        message = messages[0]
        if not isinstance(message, dict) or message.get("role") != "user":
            return 400, "InvalidParameter", 'The message role must be "user".'
        content = message.get("content")
        if not isinstance(content, list) or not content:
            return 400, "InvalidParameter", "message content must be a non-empty array."
        images, texts = 0, 0
        for item in content:
            if not isinstance(item, dict) or len({"image", "text"} & item.keys()) != 1:
                return (
                    400,
                    "InvalidParameter",
                    ('each content item must have exactly one of "image" or "text".'),
                )
            if "image" in item:
                if not isinstance(item["image"], str) or not item["image"]:
                    return 400, "InvalidParameter", "content.image must be a URL or data: URI."
                images += 1
            else:
                if not isinstance(item["text"], str) or not item["text"].strip():
                    return 400, "InvalidParameter", "content.text must be a non-empty string."
                texts += 1
        if not 1 <= images <= 3:
            return (
                400,
                "InvalidParameter",
                f"The number of input images must be 1 to 3; got {images}.",
            )
        if texts != 1:
            return 400, "InvalidParameter", f"Exactly one text item is required; got {texts}."
        params = body.get("parameters", {})
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return 400, "InvalidParameter", "parameters must be an object."
        plain = self._is_plain_qwen(model)
        if "n" in params:
            n = params["n"]
            top = 1 if plain else 6
            if not (_is_int(n) and 1 <= n <= top):
                return (
                    400,
                    "InvalidParameter",
                    f"parameters.n must be an integer in [1, {top}] for {model}; got {n!r}",
                )
        if "negative_prompt" in params and not isinstance(params["negative_prompt"], str):
            return 400, "InvalidParameter", "parameters.negative_prompt must be a string."
        if "watermark" in params and not isinstance(params["watermark"], bool):
            return 400, "InvalidParameter", "parameters.watermark must be a boolean."
        if "prompt_extend" in params and not isinstance(params["prompt_extend"], bool):
            return 400, "InvalidParameter", "parameters.prompt_extend must be a boolean."
        if "seed" in params and not (_is_int(params["seed"]) and 0 <= params["seed"] <= SEED_MAX):
            return 400, "InvalidParameter", f"parameters.seed must be in [0, {SEED_MAX}]"
        if "size" in params:
            if plain:
                return 400, "InvalidParameter", f"parameters.size is not supported by {model}."
            m = re.fullmatch(r"(\d+)\*(\d+)", str(params["size"]))
            if not isinstance(params["size"], str) or not m:
                return (
                    400,
                    "InvalidParameter",
                    f'parameters.size must look like "1024*1024"; got {params["size"]!r}',
                )
            w, h = int(m.group(1)), int(m.group(2))
            if not (512 <= w <= 2048 and 512 <= h <= 2048):
                return (
                    400,
                    "InvalidParameter",
                    f"parameters.size {w}*{h}: each side must be in [512, 2048].",
                )
        return None

    async def _generation(self, request: Request, rec: Recorded) -> Response:
        if (denied := self._auth(rec)) is not None:
            return denied
        if rec.headers.get("x-dashscope-async", "").lower() == "enable":
            return _error(
                403, "AccessDenied", "current user api does not support asynchronous calls"
            )
        if rec.json_error:
            return _error(400, "InvalidParameter", "The request body is not valid JSON.")
        problem = self._validate_qwen(rec.json)
        if problem:
            return _error(*problem)
        body = rec.json
        model = body["model"]
        params = body.get("parameters") or {}
        content = body["input"]["messages"][0]["content"]
        text = next(item["text"] for item in content if "text" in item)[:800]
        negative = params.get("negative_prompt", "")[:500]
        if self._blocked(text, negative):
            return _error(
                400, "DataInspectionFailed", "Input data may contain inappropriate content."
            )
        sources: list[bytes] = []
        for index, item in enumerate(i for i in content if "image" in i):
            url = item["image"]
            try:
                data = await self.fetch_url(url, headers=rec.headers)
            except FetchError as exc:
                return _error(
                    400, "InvalidParameter", f"Failed to download image {index + 1}: {exc}"
                )
            if len(data) > MAX_IMAGE_BYTES:
                return _error(400, "InvalidParameter", f"Image {index + 1} is larger than 10 MB.")
            try:
                w, h = open_image(data).size
            except ValueError as exc:
                return _error(400, "InvalidParameter", f"Image {index + 1}: {exc}")
            if not (384 <= w <= 3072 and 384 <= h <= 3072):
                return _error(
                    400,
                    "InvalidParameter",
                    f"Image {index + 1}: size {w}x{h} is outside [384, 3072] pixels.",
                )
            sources.append(data)
        n = params.get("n", 1)
        if "size" in params:
            sw, sh = (int(v) for v in params["size"].split("*"))
            size = (_round16(sw), _round16(sh))
        else:
            lw, lh = open_image(sources[-1]).size
            aspect = lw / lh
            width = math.sqrt(1024 * 1024 * aspect)
            size = (_round16(width), _round16(width / aspect))
        request_id = new_id()
        urls = []
        for index in range(n):
            meta = {"vendor": "dashscope", "model": model, "prompt": text, "request_id": request_id}
            png = await asyncio.to_thread(
                render_result,
                sources[0],
                size,
                index=index,
                meta=meta,
                watermark="Qwen-Image" if params.get("watermark") else None,
            )
            urls.append(self.put_file(png) + f"?Expires={int(time.time()) + 86400}&Signature=fake")
        with self._lock:
            self.generations += 1
        return JSONResponse(
            {
                "output": {
                    "choices": [
                        {
                            "finish_reason": "stop",
                            "message": {
                                "role": "assistant",
                                "content": [{"image": u} for u in urls],
                            },
                        }
                    ]
                },
                "usage": {"width": size[0], "height": size[1], "image_count": n},
                "request_id": request_id,
            }
        )

    # ------------------------------------------------------------------ upload flow

    async def _policy(self, request: Request, rec: Recorded) -> Response:
        if (denied := self._auth(rec)) is not None:
            return denied
        if rec.query.get("action") != "getPolicy":
            return _error(400, "InvalidParameter", "action must be getPolicy.")
        model = rec.query.get("model")
        if not model:
            return _error(400, "InvalidParameter", "model is required.")
        upload_dir = (
            f"dashscope-instant/{uuid.uuid4().hex}/{time.strftime('%Y-%m-%d')}/{uuid.uuid4()}"
        )
        max_mb = 100
        expires = time.time() + 300
        document = {
            "expiration": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(expires)),
            "conditions": [
                ["content-length-range", 0, max_mb * 1024 * 1024],
                ["starts-with", "$key", upload_dir],
                {"bucket": "dashscope-file-fake"},
                {"x-oss-object-acl": "private"},
                {"x-oss-forbid-overwrite": "true"},
            ],
        }
        policy = base64.b64encode(json.dumps(document).encode()).decode()
        signature = self._sign(policy)
        with self._lock:
            self._policies[policy] = _Policy(
                policy, signature, upload_dir, expires, max_mb * 1024 * 1024
            )
        return JSONResponse(
            {
                "request_id": new_id(),
                "data": {
                    "policy": policy,
                    "signature": signature,
                    "upload_dir": upload_dir,
                    "upload_host": f"{self.base_url}/oss-upload",
                    "expire_in_seconds": 300,
                    "max_file_size_mb": max_mb,
                    "capacity_limit_mb": 999999999,
                    "oss_access_key_id": self.oss_access_key_id,
                    "x_oss_object_acl": "private",
                    "x_oss_forbid_overwrite": "true",
                },
            }
        )

    def _sign(self, policy: str) -> str:
        digest = hmac.new(self._oss_secret.encode(), policy.encode(), hashlib.sha1).digest()
        return base64.b64encode(digest).decode()

    def expire_policies(self) -> None:
        """Every upload policy issued so far is expired (403 AccessDenied on use)."""
        with self._lock:
            for policy in self._policies.values():
                policy.expires = 0

    async def _oss_upload(self, request: Request, rec: Recorded) -> Response:
        if not rec.is_multipart or rec.form_error:
            return oss_error(
                "InvalidArgument",
                "The body of your POST request is not well-formed multipart/form-data.",
                400,
            )
        if len(rec.files) != 1 or rec.files[0].field != "file":
            return oss_error(
                "InvalidArgument", "POST requires exactly one file upload per request.", 400
            )
        file_at = rec.parts.index("file")
        fields = dict(rec.form_items[:file_at])
        late = {k for k, _ in rec.form_items[file_at:]}
        for name in ("OSSAccessKeyId", "policy", "Signature", "key"):
            if name not in fields:
                hint = " (fields after the file part are ignored)" if name in late else ""
                return oss_error("InvalidArgument", f"Form field {name} is missing{hint}.", 400)
        if fields["OSSAccessKeyId"] != self.oss_access_key_id:
            return oss_error(
                "InvalidAccessKeyId",
                "The OSS Access Key Id you provided does not exist in our records.",
                403,
            )
        with self._lock:
            policy = self._policies.get(fields["policy"])
        if policy is None:
            return oss_error(
                "AccessDenied", "Invalid according to Policy: Policy is not valid.", 403
            )
        if fields["Signature"] != policy.signature:
            return oss_error(
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided.",
                403,
            )
        if time.time() > policy.expires:
            return oss_error("AccessDenied", "Invalid according to Policy: Policy expired.", 403)
        key = fields["key"]
        conditions = [
            (
                key.startswith(policy.upload_dir + "/"),
                f'["starts-with", "$key", "{policy.upload_dir}"]',
            ),
            (fields.get("x-oss-object-acl") == "private", '["eq", "$x-oss-object-acl", "private"]'),
            (
                fields.get("x-oss-forbid-overwrite") == "true",
                '["eq", "$x-oss-forbid-overwrite", "true"]',
            ),
        ]
        for ok, condition in conditions:
            if not ok:
                return oss_error(
                    "AccessDenied",
                    f"Invalid according to Policy: Policy Condition failed: {condition}",
                    403,
                )
        data = rec.files[0].data
        if len(data) > policy.max_bytes:
            return oss_error(
                "EntityTooLarge", "Your proposed upload exceeds the maximum allowed size.", 400
            )
        with self._lock:
            if key in self._uploads:
                return oss_error(
                    "FileAlreadyExists",
                    "The object you specified already exists and can not be overwritten.",
                    409,
                )
            self._uploads[key] = data
        status = fields.get("success_action_status", "204")
        code = int(status) if status in ("200", "201", "204") else 204
        return Response(b"", status_code=code)
