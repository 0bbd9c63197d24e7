"""One DashScope instance's HTTP plumbing, shared by both protocols.

Every path is appended to ``base_url`` (proxies keep the native body under a path prefix);
errors are ``{request_id, code, message}`` and are classified by the shared table with
DashScope's own codes (vendors.md §9.14). Also the request shaping and result reading both
protocols share.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from tools.errors import (
    AuthError,
    ContentRejected,
    InvalidParameter,
    QuotaError,
    Throttled,
    VendorError,
    VendorFault,
    VendorRejected,
)
from tools.vendors.base import Job, OutputImage, json_body, redact
from tools.vendors.classify import Answer, Dialect, classify, transport_error
from tools.vendors.dashscope.settings import DashScopeSettings

RESULT_TTL = timedelta(hours=24)  # task data and result URLs are kept 24 h (§2)

#: DashScope's codes. "Throttling.AllocationQuota: Allocated quota exceeded" is a rate
#: allocation that clears within a minute (the table in vendors.md says retry); a *free*
#: quota used up, or billing, cannot be retried.
DIALECT = Dialect(
    codes={
        "InvalidApiKey": AuthError,
        "AccessDenied": AuthError,
        "Arrearage": QuotaError,
        "FreeTierOnly": QuotaError,
        "DataInspection": ContentRejected,
        "DataInspectionFailed": ContentRejected,
        "IPInfringementSuspect": ContentRejected,
        "Throttling": Throttled,
        "InternalError": VendorFault,
        "InvalidParameter": VendorRejected,
        "ModelNotFound": VendorRejected,
    },
    quota_words=("free allocated quota",),
    advice={AuthError: " (keys are per region: check the key and base_url)"},
)


class Client:
    """Sends requests with the key and turns error answers into Retouch's errors."""

    def __init__(self, name: str, settings: DashScopeSettings, http: httpx.AsyncClient) -> None:
        self.name = name
        self.settings = settings
        self.http = http

    def __repr__(self) -> str:
        return f"<Client {self.name!r}>"

    def scrub(self, text: str) -> str:
        return redact(text, self.settings.api_key.get_secret_value())

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.settings.api_key.get_secret_value()}"}

    async def send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        submitting: bool = False,
        **kw: Any,
    ) -> httpx.Response:
        try:
            response = await self.http.request(
                method,
                self.settings.base_url + path,
                headers={**self.auth, **(headers or {})},
                timeout=self.settings.timeout_s,
                **kw,
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.name, submitting=submitting) from None
        if response.status_code >= 400:
            raise self.error(response)
        return response

    def json(self, response: httpx.Response, *, submitting: bool = False) -> dict[str, Any]:
        try:
            data = json_body(response, self.name)
        except VendorFault as exc:
            if submitting:  # the task may exist although its answer was garbled
                exc.details["maybe_submitted"] = True
            raise
        if not isinstance(data, dict):
            raise VendorFault(
                f"{self.name}: malformed answer (HTTP {response.status_code}, not an object)",
                vendor=self.name,
                status=response.status_code,
                maybe_submitted=submitting or None,
            )
        return data

    # ---- errors ---------------------------------------------------------------------------

    def error(self, response: httpx.Response) -> VendorError:
        """The error of an HTTP answer ``{request_id, code, message}``."""
        try:
            body = response.json()
        except ValueError:
            body = None
        body = body if isinstance(body, dict) else {}
        body.setdefault("request_id", response.headers.get("x-request-id"))
        return self.classify(
            response.status_code, body.get("code"), body.get("message"), body, response.headers
        )

    def classify(
        self,
        status: int | None,
        code: Any,
        message: Any,
        body: Mapping[str, Any],
        headers: Mapping[str, str] | None = None,
    ) -> VendorError:
        """The error of a code and message; ``status`` is None for a FAILED task."""
        code = str(code) if code else None
        message = self.scrub(str(message or ""))[:300]
        where = "task failed" if status is None else f"HTTP {status}"
        text = f"{self.name}: {where}" + (f", {code}" if code else "")
        text += f": {message}" if message else ""
        return classify(
            DIALECT,
            Answer(status, code, message, headers or {}),
            text,
            vendor=self.name,
            request_id=body.get("request_id"),
        )

    # ---- request shaping ------------------------------------------------------------------

    def check_n(self, job: Job, max_n: int) -> None:
        if not 1 <= job.n <= max_n:
            raise InvalidParameter(
                f"{self.name} makes 1 to {max_n} image(s) per request for {job.function}; "
                f"asked for n={job.n}",
                parameter="n",
            )

    def prompt(self, job: Job, default: str | None = None) -> str:
        """The job's prompt within the limit, or ``default`` (noted) where none was given."""
        prompt = job.prompt.strip()
        if not prompt:
            if default is None:
                raise InvalidParameter(
                    f"{job.function} at {self.name} needs a prompt", parameter="prompt"
                )
            job.notes.append(f'prompt: none given; sent "{default}" ({self.name} needs one)')
            return default
        return self.truncate(prompt, self.settings.max_prompt_chars, "prompt", job)

    def truncate(self, text: str, limit: int, label: str, job: Job) -> str:
        if len(text) <= limit:
            return text
        job.notes.append(
            f"{label}: {len(text)} characters; sent the first {limit} ({self.name}'s limit, "
            "beyond which it truncates too)"
        )
        return text[:limit]


# ---- result reading ------------------------------------------------------------------------


def image_count(data: Mapping[str, Any], delivered: int) -> int:
    """The images billed, from ``usage.image_count`` (else those delivered)."""
    usage = data.get("usage")
    count = usage.get("image_count") if isinstance(usage, dict) else None
    return count if isinstance(count, int) and count >= 0 else delivered


def output(url: str, now: datetime) -> OutputImage:
    """A result URL; it expires 24 h from now, or at its signed ``Expires`` if sooner."""
    expires = now + RESULT_TTL
    values = parse_qs(urlsplit(url).query).get("Expires")
    if values and values[0].isdigit():
        expires = min(expires, datetime.fromtimestamp(int(values[0]), UTC))
    return OutputImage(url=url, expires_at=expires)
