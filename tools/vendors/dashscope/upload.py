"""DashScope's temporary storage: how images reach an API that takes URLs only.

vendors.md §10: ``GET {base}/api/v1/uploads?action=getPolicy&model=<m>`` returns a signed OSS
form policy; the file is then POSTed to ``upload_host`` as a multipart form whose fields come
in a fixed order with ``file`` last; the object is ``oss://<upload_dir>/<name>``, kept 48 h,
and the request that uses it must send ``X-DashScope-OssResourceResolve: enable``. The
DashScope key goes to the policy request only, never to the storage host.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx

from tools.errors import VendorError, VendorFault, VendorRejected
from tools.media import InputImage
from tools.vendors.base import Job, json_body
from tools.vendors.classify import Answer, Dialect, classify, transport_error
from tools.vendors.dashscope.client import Client

#: Header that makes DashScope resolve ``oss://`` URLs in a request body.
RESOLVE_HEADER = {"X-DashScope-OssResourceResolve": "enable"}

#: OSS, the storage host: a refused or expired policy (403) clears with a fresh one and a
#: busy host (408, 429, 5xx) with time; a file it will not take is the input's fault.
STORAGE = Dialect(
    codes={"EntityTooLarge": VendorRejected, "InvalidArgument": VendorRejected},
    statuses={403: VendorFault, 408: VendorFault, 429: VendorFault},
    refused=VendorFault,
)


async def upload(
    client: Client, model: str, images: list[tuple[str, InputImage]], job: Job
) -> list[str]:
    """Upload each (label, image) for ``model``; their ``oss://`` URLs, in order."""
    policy = await _get_policy(client, model)
    urls = [await _post_file(client, policy, label, image) for label, image in images]
    names = " and ".join(label for label, _ in images)
    job.notes.append(f"{names}: uploaded to {client.name}'s temporary storage (kept 48 h)")
    return urls


async def _get_policy(client: Client, model: str) -> dict[str, Any]:
    try:
        response = await client.http.get(
            f"{client.settings.base_url}/api/v1/uploads",
            params={"action": "getPolicy", "model": model},
            headers=client.auth,
            timeout=client.settings.timeout_s,
        )
    except httpx.HTTPError as exc:
        raise transport_error(exc, client.name) from None
    if response.status_code >= 400:
        raise client.error(response)
    body = json_body(response, client.name)
    data = body.get("data") if isinstance(body, dict) else None
    needed = ("upload_host", "upload_dir", "oss_access_key_id", "signature", "policy")
    if not isinstance(data, dict) or any(not data.get(k) for k in needed):
        raise VendorFault(
            f"{client.name}: the upload policy answer lacks {', '.join(needed)}",
            vendor=client.name,
            status=response.status_code,
            request_id=body.get("request_id") if isinstance(body, dict) else None,
        )
    return data


async def _post_file(client: Client, policy: dict[str, Any], label: str, image: InputImage) -> str:
    limit_mb = policy.get("max_file_size_mb")
    if isinstance(limit_mb, int | float) and len(image.data) > limit_mb * 1024 * 1024:
        raise VendorRejected(
            f"{client.name}: {label} is {len(image.data) / 1e6:.1f} MB; its temporary "
            f"storage takes at most {limit_mb} MB",
            vendor=client.name,
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
        response = await client.http.post(
            str(policy["upload_host"]),
            data=fields,
            files={"file": (name, image.data, image.mime_type)},
            timeout=client.settings.timeout_s,
        )
    except httpx.HTTPError as exc:
        raise transport_error(exc, client.name) from None
    if response.status_code >= 300:
        raise _storage_error(client.name, response, label)
    return f"oss://{key}"


def _storage_error(vendor: str, response: httpx.Response, label: str) -> VendorError:
    """OSS answers errors in XML: ``<Error><Code>…</Code><RequestId>…</RequestId>``."""
    text = response.text[:2000]
    code = _xml(text, "Code")
    status = response.status_code
    message = f"{vendor}: uploading {label} to temporary storage failed (HTTP {status}"
    message += f", {code})" if code else ")"
    return classify(
        STORAGE,
        Answer(status, code),
        message,
        vendor=vendor,
        request_id=_xml(text, "RequestId") or response.headers.get("x-oss-request-id"),
    )


def _xml(text: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}>([^<]{{1,200}})</{tag}>", text)
    return match.group(1).strip() if match else None
