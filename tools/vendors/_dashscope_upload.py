"""DashScope wire helpers: the temporary upload, error classification and result parsing.

Split out of ``dashscope.py`` to keep it readable; nothing here is used elsewhere.

Temporary upload (vendors.md §10): ``GET {base}/api/v1/uploads?action=getPolicy&model=<m>``
returns a signed OSS form policy; the file is then POSTed to ``upload_host`` as a multipart
form whose fields come in a fixed order with ``file`` last; the object is
``oss://<upload_dir>/<name>``, kept 48 h, and the request that uses it must send
``X-DashScope-OssResourceResolve: enable``. The DashScope key goes to the policy request
only, never to the storage host.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from pydantic import SecretStr

from tools.errors import (
    AuthError,
    ContentRejected,
    QuotaError,
    Throttled,
    VendorError,
    VendorFault,
    VendorRejected,
)
from tools.media import InputImage
from tools.models import ImageFailure
from tools.vendors.base import (
    Finished,
    OutputImage,
    json_body,
    redact,
)
from tools.vendors.classify import retry_after, transport_error

#: Header that makes DashScope resolve ``oss://`` URLs in a request body.
RESOLVE_HEADER = {"X-DashScope-OssResourceResolve": "enable"}
RESULT_TTL = timedelta(hours=24)  # task data and result URLs are kept 24 h (§2)


class Wire:
    """The vendor-side details of one DashScope instance (its name and key)."""

    def __init__(self, vendor: str, api_key: SecretStr) -> None:
        self.vendor = vendor
        self._key = api_key

    def __repr__(self) -> str:
        return f"<Wire {self.vendor!r}>"

    def scrub(self, text: str) -> str:
        return redact(text, self._key.get_secret_value())

    # ---- errors ---------------------------------------------------------------------------

    def error(self, response: httpx.Response) -> VendorError:
        """The error of a DashScope HTTP answer ``{request_id, code, message}``."""
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
        """One error class per DashScope error, by status *and* code/message (§9.14).

        ``status`` is None for a FAILED task (classified by its code alone).
        """
        code = str(code) if code else None
        message = self.scrub(str(message or ""))[:300]
        lc, lm = (code or "").lower(), message.lower()
        where = "task failed" if status is None else f"HTTP {status}"
        text = f"{self.vendor}: {where}" + (f", {code}" if code else "")
        text += f": {message}" if message else ""
        kw: dict[str, Any] = {
            "vendor": self.vendor,
            "vendor_code": code,
            "request_id": body.get("request_id"),
            "status": status,
        }
        if status == 401 or lc == "invalidapikey":
            return AuthError(text + " (keys are per region: check the key and base_url)", **kw)
        # Billing, or a free quota used up: retrying cannot help. (Throttling.AllocationQuota
        # "Allocated quota exceeded" / "You exceeded your current quota" is a rate allocation
        # that clears within a minute: the table in vendors.md says retry.)
        if "arrearage" in lc or "free allocated quota" in lm or "freetieronly" in lc:
            return QuotaError(text, **kw)
        if status == 403 or lc.startswith("accessdenied"):
            return AuthError(text, **kw)
        if "datainspection" in lc or "ipinfringement" in lc:
            return ContentRejected(text, **kw)
        if status == 429 or lc.startswith("throttling"):
            return Throttled(text, retry_after=retry_after(headers or {}), **kw)
        if lc.startswith("internalerror") or (status or 0) >= 500 or status == 408:
            return VendorFault(text, transient=True, **kw)
        if (status is not None and 400 <= status < 500) or lc.startswith(
            ("invalidparameter", "modelnotfound")
        ):
            return VendorRejected(text, **kw)
        return VendorFault(text, transient=False, **kw)

    # ---- results --------------------------------------------------------------------------

    def task_result(self, output: Mapping[str, Any], data: Mapping[str, Any]) -> Finished:
        """A SUCCEEDED task: ``results[]`` holds ``{url}`` or ``{code, message}`` per image."""
        now = datetime.now(UTC)
        images: list[OutputImage] = []
        failures: list[ImageFailure] = []
        for index, item in enumerate(output.get("results") or []):
            item = item if isinstance(item, dict) else {}
            if item.get("url"):
                images.append(_output(str(item["url"]), now))
            else:
                message = self.scrub(str(item.get("message") or "no image delivered"))
                code = str(item.get("code") or "Unknown")
                failures.append(ImageFailure(index=index, code=code, message=message))
        if not images:
            first = failures[0] if failures else None
            raise VendorFault(
                f"{self.vendor}: task succeeded but delivered no image"
                + (f" ({first.code}: {first.message})" if first else ""),
                transient=False,
                vendor=self.vendor,
                vendor_code=first.code if first else None,
                request_id=data.get("request_id"),
            )
        billed = _image_count(data, len(images))
        return Finished(images=images, failures=failures, billed_images=billed)

    def edit_result(self, data: Mapping[str, Any], status: int) -> Finished:
        """A qwen edit answer: ``output.choices[].message.content[].image``."""
        if data.get("code") and not data.get("output"):  # an error dressed as HTTP 200
            raise self.classify(status, data.get("code"), data.get("message"), data)
        output = data.get("output") if isinstance(data.get("output"), dict) else {}
        now = datetime.now(UTC)
        images: list[OutputImage] = []
        for choice in output.get("choices") or []:
            message = choice.get("message") if isinstance(choice, dict) else None
            for part in (message or {}).get("content") or []:
                if isinstance(part, dict) and part.get("image"):
                    images.append(_output(str(part["image"]), now))
        if not images:
            raise VendorFault(
                f"{self.vendor}: the edit answer holds no image",
                transient=False,
                vendor=self.vendor,
                request_id=data.get("request_id"),
                status=status,
            )
        return Finished(images=images, billed_images=_image_count(data, len(images)))

    # ---- temporary upload -----------------------------------------------------------------

    async def upload(
        self,
        http: httpx.AsyncClient,
        *,
        base_url: str,
        model: str,
        images: list[tuple[str, InputImage]],
        timeout_s: float,
    ) -> list[str]:
        """Upload each (label, image); their ``oss://`` URLs, in order."""
        policy = await self._get_policy(http, base_url, model, timeout_s)
        return [await self._post_file(http, policy, lb, im, timeout_s) for lb, im in images]

    async def _get_policy(
        self, http: httpx.AsyncClient, base_url: str, model: str, timeout_s: float
    ) -> dict[str, Any]:
        try:
            response = await http.get(
                f"{base_url}/api/v1/uploads",
                params={"action": "getPolicy", "model": model},
                headers={"Authorization": f"Bearer {self._key.get_secret_value()}"},
                timeout=timeout_s,
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.vendor) from None
        if response.status_code >= 400:
            raise self.error(response)
        body = json_body(response, self.vendor)
        data = body.get("data") if isinstance(body, dict) else None
        needed = ("upload_host", "upload_dir", "oss_access_key_id", "signature", "policy")
        if not isinstance(data, dict) or any(not data.get(k) for k in needed):
            raise VendorFault(
                f"{self.vendor}: the upload policy answer lacks {', '.join(needed)}",
                vendor=self.vendor,
                status=response.status_code,
                request_id=body.get("request_id") if isinstance(body, dict) else None,
            )
        return data

    async def _post_file(
        self,
        http: httpx.AsyncClient,
        policy: dict[str, Any],
        label: str,
        image: InputImage,
        timeout_s: float,
    ) -> str:
        limit_mb = policy.get("max_file_size_mb")
        if isinstance(limit_mb, int | float) and len(image.data) > limit_mb * 1024 * 1024:
            raise VendorRejected(
                f"{self.vendor}: {label} is {len(image.data) / 1e6:.1f} MB; its temporary "
                f"storage takes at most {limit_mb} MB",
                vendor=self.vendor,
            )
        name = f"{uuid.uuid4().hex}.{image.extension}"
        key = f"{str(policy['upload_dir']).rstrip('/')}/{name}"
        # The documented order; httpx sends the ``data`` fields first, in order, then files.
        fields = {
            "OSSAccessKeyId": str(policy["oss_access_key_id"]),
            "Signature": str(policy["signature"]),
            "policy": str(policy["policy"]),
            "x-oss-object-acl": str(policy.get("x_oss_object_acl", "")),
            "x-oss-forbid-overwrite": str(policy.get("x_oss_forbid_overwrite", "")),
            "key": key,
            "success_action_status": "200",
        }
        try:
            response = await http.post(
                str(policy["upload_host"]),
                data=fields,
                files={"file": (name, image.data, image.mime_type)},
                timeout=timeout_s,
            )
        except httpx.HTTPError as exc:
            raise transport_error(exc, self.vendor) from None
        if response.status_code >= 300:
            raise self._storage_error(response, label)
        return f"oss://{key}"

    def _storage_error(self, response: httpx.Response, label: str) -> VendorError:
        """OSS answers errors in XML: ``<Error><Code>…</Code><RequestId>…</RequestId>``."""
        text = response.text[:2000]
        code = _xml(text, "Code")
        status = response.status_code
        message = f"{self.vendor}: uploading {label} to temporary storage failed (HTTP {status}"
        message += f", {code})" if code else ")"
        kw: dict[str, Any] = {
            "vendor": self.vendor,
            "vendor_code": code,
            "request_id": _xml(text, "RequestId") or response.headers.get("x-oss-request-id"),
            "status": status,
        }
        if status in (400, 413) and code in ("EntityTooLarge", "InvalidArgument"):
            return VendorRejected(message, **kw)
        # 403 (an expired or refused policy) clears with a fresh policy; 5xx are transient.
        return VendorFault(message, transient=status >= 500 or status in (403, 408, 429), **kw)


def _xml(text: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}>([^<]{{1,200}})</{tag}>", text)
    return match.group(1).strip() if match else None


def _image_count(data: Mapping[str, Any], delivered: int) -> int:
    usage = data.get("usage")
    count = usage.get("image_count") if isinstance(usage, dict) else None
    return count if isinstance(count, int) and count >= 0 else delivered


def _output(url: str, now: datetime) -> OutputImage:
    """A result URL; it expires 24 h from now, or at its signed ``Expires`` if sooner."""
    expires = now + RESULT_TTL
    values = parse_qs(urlsplit(url).query).get("Expires")
    if values and values[0].isdigit():
        expires = min(expires, datetime.fromtimestamp(int(values[0]), UTC))
    return OutputImage(url=url, expires_at=expires)
