"""SenseTime SoftSugar PaaS image editing (async, completion by account-level callback).

Protocol (vendors.md §8, seed S0, FAQ F1):
- sign in: ``POST /api/uc/v1/access/api/token`` with ``{appId, timestamp (Unix seconds, as a
  string), sign: md5(appId + timestamp + appKey) as lowercase hex, grantType: "sign"}``; the
  answer's ``accessToken`` goes in ``Authorization: Bearer …`` on every later call;
- create: ``POST /api/2dvh/v1/material/single/image/edit`` with ``{imageName, param}`` where
  ``param`` is a JSON *string* of ``{images: [URL…], prompt, resolution: [w, h], watermark:
  {show, content}}``; the answer ``{code: 0, message, data: <task id>}``;
- completion: SoftSugar POSTs to the callback URL registered for the *account* in its
  console (Retouch's ``/callbacks/<name>/<secret>``; no signature is documented). No query
  endpoint is documented, so this adapter never polls.

SoftSugar reads input images from URLs (it takes no bytes): the job's original public URLs
are needed, so images given as data: URIs, local files or earlier results cannot go there.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx
from pydantic import Field, SecretStr

from tools.config import MB, VendorSettings
from tools.errors import (
    AuthError,
    ConfigError,
    InvalidParameter,
    Unsupported,
    VendorError,
    VendorFault,
    VendorRejected,
)
from tools.models import EditRequest
from tools.vendors.base import (
    CallbackSettings,
    Capability,
    Finished,
    Job,
    OutputImage,
    Pending,
    Vendor,
    callback_json,
    json_body,
    redact,
)
from tools.vendors.classify import Answer, Dialect, classify, transport_error

#: Results are stored 7 days (S0).
RESULT_LIFETIME = timedelta(days=7)
TOKEN_PATH = "/api/uc/v1/access/api/token"
EDIT_PATH = "/api/2dvh/v1/material/single/image/edit"

#: Words of a refused or expired access token.
TOKEN_WORDS = tuple(
    ("token", w) for w in ("expired", "invalid", "illegal", "unauthorized", "过期", "失效")
)
#: SoftSugar's codes say little (0 is success, 3333 any request problem, F1): its messages
#: tell the errors apart, and its envelope may carry 401/403 with HTTP 200. A failed task whose
#: message names the vendor's own trouble is a fault, any other a rejection of the input.
DIALECT = Dialect(
    codes={"401": AuthError, "403": AuthError},
    quota_words=("quota", "balance", "insufficient", "arrear", "余额", "额度", "欠费"),
    auth_words=TOKEN_WORDS,
    throttle_words=("too many", "rate limit", "频繁"),
    moderation_words=("moderation", "sensitive", "inappropriate", "违规", "敏感", "审核"),
    fault_words=("internal", "system error", "timeout", "timed out"),
    failed=VendorRejected,
)
#: At sign-in every refusal means the credentials or the clock are wrong (bad sign, unknown
#: appId, skewed timestamp): fix the settings.
SIGN_IN_DIALECT = replace(DIALECT, refused=AuthError)


class SoftSugarSettings(CallbackSettings):
    """``[vendors.<name>]`` of kind ``softsugar``.

    Credentials: ``app_id`` and ``app_key`` from the SoftSugar console. ``api_key`` is not
    used by this protocol; as a convenience it stands in for ``app_key`` when ``app_key`` is
    empty (so ``RETOUCH_VENDORS__<NAME>__API_KEY`` works too).

    ``callback_url`` is Retouch's public ``/callbacks/<name>`` URL; without it this vendor
    refuses every task. SoftSugar delivers results only to the callback URL registered for
    the account in its console: register ``<callback_url>/<secret>`` there, the secret being
    ``callback_secret`` or the one Retouch keeps in ``<store.dir>/callback-secrets/<name>``.
    SoftSugar documents no signature of its callbacks: that secret is their only credential.

    Limits: 1–3 images, each ≤ ``max_side`` px per side ("≤2K") and ≤ ``max_bytes``; the
    output ``resolution`` ≤ ``max_side`` per side. SoftSugar fetches the images from their
    URLs, so Retouch cannot shrink them: larger ones are refused.
    """

    base_url: str = "https://aigc.softsugar.com"
    app_id: str = ""
    app_key: SecretStr = SecretStr("")
    max_images: int = Field(3, ge=1)
    max_side: int = Field(2048, ge=1)
    max_bytes: int = Field(10 * MB, ge=1024)
    token_ttl_s: float = Field(
        3600, gt=0, description="token lifetime assumed when the sign-in answer states none"
    )
    token_margin_s: float = Field(60, ge=0, description="renew the token this early")


class SoftSugarVendor(Vendor):
    """SoftSugar ``2dvh`` single image edit."""

    Settings: ClassVar[type[VendorSettings]] = SoftSugarSettings
    completion: ClassVar = "callback"

    settings: SoftSugarSettings

    def __init__(self, name: str, settings: VendorSettings, http: httpx.AsyncClient) -> None:
        super().__init__(name, settings, http)
        self._token: str | None = None
        self._token_expires = 0.0  # time.monotonic() deadline
        self._token_lock = asyncio.Lock()

    @property
    def capabilities(self) -> Mapping[str, Capability]:
        s = self.settings
        return {
            "edit": Capability(
                params=frozenset({"watermark", "size"}),
                mask="none",
                max_images=min(3, s.max_images),
                max_n=1,
                note=(
                    "SenseTime SoftSugar: instruction edit or fusion of 1–3 images given as "
                    f"public http(s) URLs (≤{s.max_side} px, ≤{s.max_bytes // MB} MB), one "
                    f"result, size up to {s.max_side}×{s.max_side}; results arrive by callback."
                ),
            )
        }

    # ---- checking --------------------------------------------------------------------------

    def _app_key(self) -> str:
        s = self.settings
        return s.app_key.get_secret_value() or s.api_key.get_secret_value()

    def check(self, request: EditRequest) -> None:
        super().check(request)
        s = self.settings
        if not s.callback_url:
            raise self._no_callback()
        if not s.app_id or not self._app_key():
            raise ConfigError(
                f"vendors.{self.name}: app_id and app_key are needed (from the SoftSugar console)",
                vendor=self.name,
            )
        if request.size not in (None, "auto"):
            w, h = (int(p) for p in request.size.split("x"))
            self._check_resolution(w, h)
        for i, source in enumerate(request.images, 1):
            if not source.strip().lower().startswith(("http://", "https://")):
                raise Unsupported(
                    f"softsugar needs public image URLs: it fetches the images itself, and "
                    f"image {i} is not an http(s) URL",
                    vendor=self.name,
                    parameter="images",
                )

    def _no_callback(self) -> Unsupported:
        return Unsupported(
            "softsugar delivers results only by callback: set "
            f"vendors.{self.name}.callback_url to Retouch's public /callbacks/{self.name} "
            "URL and register that URL followed by /<its callback secret> in the SoftSugar "
            "console (see SECURITY.md)",
            vendor=self.name,
        )

    def _check_resolution(self, w: int, h: int) -> None:
        side = self.settings.max_side
        if w > side or h > side:
            raise InvalidParameter(
                f"{self.name} makes images of at most {side}×{side}; asked for {w}×{h}",
                parameter="size",
            )

    # ---- token -----------------------------------------------------------------------------

    def _sign_body(self, timestamp: str) -> dict[str, str]:
        app_id = self.settings.app_id
        text = f"{app_id}{timestamp}{self._app_key()}".encode()
        sign = hashlib.md5(text, usedforsecurity=False).hexdigest()
        return {"appId": app_id, "timestamp": timestamp, "sign": sign, "grantType": "sign"}

    async def _access_token(self, *, renew: bool = False, stale: str | None = None) -> str:
        async with self._token_lock:
            if renew and self._token is not None and self._token != stale:
                return self._token  # someone else renewed it meanwhile
            if not renew and self._token and time.monotonic() < self._token_expires:
                return self._token
            self._token = None
            token, ttl = await self._sign_in()
            margin = min(self.settings.token_margin_s, ttl / 2)
            self._token = token
            self._token_expires = time.monotonic() + ttl - margin
            return token

    async def _sign_in(self) -> tuple[str, float]:
        s = self.settings
        if not s.app_id or not self._app_key():
            raise ConfigError(
                f"vendors.{self.name}: app_id and app_key are needed", vendor=self.name
            )
        body = self._sign_body(str(int(time.time())))
        url = s.base_url.rstrip("/") + TOKEN_PATH
        try:
            response = await self.http.post(url, json=body, timeout=s.timeout_s)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name) from None
        payload: Any = None
        if response.status_code < 400:
            payload = json_body(response, self.name)
        else:
            try:
                payload = response.json()
            except ValueError:
                payload = None
        envelope = payload if isinstance(payload, dict) else {}
        code = envelope.get("code")
        token = _find_token(envelope)
        if response.status_code >= 400 or (code not in (None, 0, "0") and not token):
            err = self._error(response, envelope, signing_in=True)
            raise err
        if not token:
            raise VendorFault(
                f"{self.name}: sign-in answer holds no accessToken",
                vendor=self.name,
                status=response.status_code,
            )
        return token, _token_ttl(envelope, s.token_ttl_s)

    # ---- submitting ------------------------------------------------------------------------

    def _param(self, job: Job) -> str:
        s = self.settings
        urls = job.source_urls
        if not urls or len(urls) != len(job.images):
            raise Unsupported(
                "softsugar needs public image URLs: it fetches the images itself, and this "
                "task carries no URL for its images (give http(s) URLs, not uploads, data: "
                "URIs, local paths or earlier results)",
                vendor=self.name,
                parameter="images",
            )
        for i, (url, image) in enumerate(zip(urls, job.images, strict=True), 1):
            if not url or not str(url).lower().startswith(("http://", "https://")):
                raise Unsupported(
                    f"softsugar needs public image URLs: image {i} has none (give an http(s) "
                    "URL, not an upload, data: URI, local path or earlier result)",
                    vendor=self.name,
                    parameter="images",
                )
            if max(image.width, image.height) > s.max_side:
                raise InvalidParameter(
                    f"image {i} is {image.width}×{image.height}; {self.name} takes at most "
                    f"{s.max_side} px per side and reads the image from its URL, so Retouch "
                    "cannot shrink it — give a smaller image",
                    parameter="images",
                )
            if len(image.data) > s.max_bytes:
                raise InvalidParameter(
                    f"image {i} is {len(image.data) / 1e6:.1f} MB; {self.name} takes at most "
                    f"{s.max_bytes / 1e6:.0f} MB per image",
                    parameter="images",
                )
        if not 1 <= len(urls) <= min(3, s.max_images):
            raise InvalidParameter(
                f"{self.name} takes 1 to {min(3, s.max_images)} images", parameter="images"
            )
        param: dict[str, Any] = {"images": [str(u) for u in urls], "prompt": job.prompt}
        if job.size is not None:
            self._check_resolution(*job.size)
            param["resolution"] = [int(job.size[0]), int(job.size[1])]
        param["watermark"] = {"show": bool(job.watermark)}
        return json.dumps(param, ensure_ascii=False)

    async def submit(self, job: Job) -> Pending:
        s = self.settings
        if not s.callback_url:
            raise self._no_callback()
        body = {"imageName": f"retouch-{job.task_id}", "param": self._param(job)}
        token = await self._access_token()
        response, envelope = await self._create(body, token)
        if _token_rejected(response, envelope):
            token = await self._access_token(renew=True, stale=token)
            response, envelope = await self._create(body, token)
        if response.status_code >= 400 or _code(envelope) != 0:
            raise self._error(response, envelope)
        task_id = envelope.get("data")
        if task_id is None or isinstance(task_id, bool) or str(task_id).strip() == "":
            raise VendorFault(
                f"{self.name}: the answer holds no task id",
                vendor=self.name,
                status=response.status_code,
                maybe_submitted=True,
            )
        if isinstance(task_id, dict):  # "data" is typed Object on sibling pages (§9.7)
            inner = task_id.get("taskId") or task_id.get("id")
            if inner is None:
                raise VendorFault(
                    f"{self.name}: the answer holds no task id",
                    vendor=self.name,
                    status=response.status_code,
                    maybe_submitted=True,
                )
            task_id = inner
        return Pending(vendor_task_id=str(task_id), status="submitted")

    async def _create(
        self, body: dict[str, str], token: str
    ) -> tuple[httpx.Response, dict[str, Any]]:
        url = self.settings.base_url.rstrip("/") + EDIT_PATH
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            response = await self.http.post(
                url, json=body, headers=headers, timeout=self.settings.timeout_s
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name, submitting=True) from None
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if response.status_code < 400 and not isinstance(payload, dict):
            raise VendorFault(  # the task may exist: do not create it again
                f"{self.name}: malformed answer (HTTP {response.status_code}, not an envelope)",
                vendor=self.name,
                status=response.status_code,
                maybe_submitted=True,
            )
        return response, payload if isinstance(payload, dict) else {}

    # ---- callback --------------------------------------------------------------------------

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str]
    ) -> tuple[str, Finished | VendorError]:
        """The completion callback → (SoftSugar task id, Finished or the task's error).

        A failed task is *returned* as its mapped error (not raised), so the caller still
        knows which task it ends. A body that names no task raises VendorFault.

        Shape (the fake's reading; SoftSugar documents none): ``{taskId, imageName, status:
        "SUCCEEDED" | "FAILED", code: 0 | <error>, message, images: [URL], resolution}``,
        possibly wrapped in ``{code, message, data: {...}}``.
        """
        payload = callback_json(body, self.name)
        if not isinstance(payload, dict):
            raise VendorFault(f"{self.name}: callback body is not an object", vendor=self.name)
        data = payload.get("data") if isinstance(payload.get("data"), dict) else payload
        task_id = _first(data, "taskId", "task_id", "id")
        if task_id is None:
            task_id = _first(payload, "taskId", "task_id")
        if task_id is None or isinstance(task_id, dict | list | bool) or not str(task_id).strip():
            raise VendorFault(f"{self.name}: callback names no task", vendor=self.name)
        task_id = str(task_id)
        status = str(_first(data, "status", "state", "taskStatus") or "").lower()
        code = _first(data, "code", "errorCode", "errCode")
        if code is None and data is not payload:
            code = payload.get("code")
        urls = _result_urls(data)
        failed = status in {"failed", "fail", "failure", "error", "canceled", "cancelled"} or (
            _int(code) not in (None, 0)
        )
        if failed or not urls:
            message = str(
                _first(data, "message", "errorMsg", "errMsg", "msg", "reason")
                or (f"task {status}" if status else "task finished without an image")
            )
            if not failed:
                message = f"{message} (no result image in the callback)"
            return task_id, self._failure(message, code, status, task_id)
        now = datetime.now(UTC)
        images = [OutputImage(url=u, expires_at=now + RESULT_LIFETIME) for u in urls]
        return task_id, Finished(images=images)

    def _failure(self, message: str, code: Any, status: str, task_id: str) -> VendorError:
        message = self._redact(message)
        vendor_code = str(code) if code not in (None, "") else (status or None)
        return classify(
            DIALECT,
            Answer(None, vendor_code, message),
            f"{self.name}: the task failed: {message[:500]}",
            vendor=self.name,
            vendor_task_id=task_id,
        )

    # ---- errors ----------------------------------------------------------------------------

    def _error(
        self, response: httpx.Response, envelope: dict[str, Any], *, signing_in: bool = False
    ) -> VendorError:
        code = envelope.get("code")
        message = self._redact(str(envelope.get("message") or envelope.get("msg") or ""))
        message = message or f"HTTP {response.status_code}"
        what = "sign-in" if signing_in else "create"
        return classify(
            SIGN_IN_DIALECT if signing_in else DIALECT,
            Answer(response.status_code, _code_text(code), message, response.headers),
            f"{self.name}: {what} failed: {message[:500]}",
            vendor=self.name,
            request_id=response.headers.get("x-request-id") or _first(envelope, "requestId"),
        )

    def _redact(self, text: str) -> str:
        return redact(text, self._app_key(), self._token or "")


# ---- helpers -------------------------------------------------------------------------------


def _first(obj: Any, *keys: str) -> Any:
    if not isinstance(obj, dict):
        return None
    for key in keys:
        if obj.get(key) not in (None, ""):
            return obj[key]
    return None


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _code(envelope: dict[str, Any]) -> int | None:
    return _int(envelope.get("code"))


def _find_token(envelope: dict[str, Any]) -> str | None:
    for node in (envelope.get("data"), envelope):
        token = _first(node, "accessToken", "access_token", "token")
        if isinstance(token, str) and token:
            return token
    return None


def _token_ttl(envelope: dict[str, Any], default: float) -> float:
    """Seconds the token is valid, from whatever the sign-in answer states."""
    for node in (envelope.get("data"), envelope):
        if not isinstance(node, dict):
            continue
        for key in ("expiresIn", "expires_in", "expireIn"):
            value = node.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                return float(value)
        for key in ("expireTime", "expiresAt", "expire_time", "expiredTime", "expiration"):
            value = node.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
                stamp = value / 1000 if value > 1e11 else value  # ms or s since the epoch
                left = stamp - time.time()
                if left > 0:
                    return left
    return default


def _token_rejected(response: httpx.Response, envelope: dict[str, Any]) -> bool:
    """Whether the create call refused the access token (expired or invalid)."""
    if response.status_code == 401 or _code(envelope) == 401:
        return True
    if _code(envelope) in (None, 0):
        return False
    message = str(envelope.get("message") or "").lower()
    return any(all(w in message for w in words) for words in TOKEN_WORDS)


def _code_text(code: Any) -> str | None:
    return str(code) if code not in (None, "") else None


def _result_urls(data: Any) -> list[str]:
    """Result image URLs from a callback's task object, wherever it puts them."""
    if not isinstance(data, dict):
        return []
    found: list[str] = []
    for key in ("images", "urls", "resultUrls", "result", "results", "output", "url", "resultUrl"):
        value = data.get(key)
        if isinstance(value, str) and value.strip()[:1] in "[{":
            with contextlib.suppress(VendorFault):
                value = callback_json(value.encode(), "softsugar")
        if isinstance(value, str) and value.startswith(("http://", "https://")):
            found.append(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, str) and item.startswith(("http://", "https://")):
                    found.append(item)
                elif isinstance(item, dict):
                    found.extend(_result_urls(item))
        elif isinstance(value, dict):
            found.extend(_result_urls(value))
        if found:
            return found
    return found
