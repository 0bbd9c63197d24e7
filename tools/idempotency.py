"""What makes two requests "the same" for an idempotency key: the request's fingerprint.

A key sent again returns the task it started only if the request is the same one; another
request under a used key is an ``IdempotencyConflict``. "The same" is everything that
changes what is done: the function, prompt, parameters, options, ``n``, the vendor asked
for, and each image — a ``data:`` URI by the SHA-256 of its payload (its MIME label aside),
any other source (URL, upload, earlier result, path) by what it says. Not what only
changes how the caller waits (``wait_seconds``, progress, timings): those are not part of
an ``EditRequest``.

A fingerprint is ``v1:<sha256 hex>`` of the canonical JSON (keys sorted, every field with
its default spelled out). A future definition gets another version: fingerprints of
different versions are not compared (a key then returns its task as before fingerprints).
"""

from __future__ import annotations

import hashlib
import json

from tools.errors import IdempotencyConflict
from tools.models import EditRequest

VERSION = "v1"


def fingerprint(request: EditRequest) -> str:
    """The request's fingerprint (see the module's docstring)."""
    data = request.model_dump(mode="json")
    data["images"] = [_source(s) for s in request.images]
    if request.mask is not None:
        data["mask"] = _source(request.mask)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return f"{VERSION}:{hashlib.sha256(canonical.encode()).hexdigest()}"


def check(task_id: str, first: str | None, again: str | None) -> None:
    """A key that started task ``task_id`` for a request of fingerprint ``first``, sent
    again with a request of fingerprint ``again``: IdempotencyConflict unless they are the
    same (or cannot be compared)."""
    if comparable(first, again) and first != again:
        raise IdempotencyConflict(task_id)


def comparable(first: str | None, second: str | None) -> bool:
    """Whether two fingerprints can tell requests apart: both known, of one version (a
    task stored before fingerprints, or a caller that gives none, is not compared)."""
    if first is None or second is None:
        return False
    return first.partition(":")[0] == second.partition(":")[0]


def _source(source: str) -> str:
    """An image source as the fingerprint holds it: a data: URI by its payload's hash."""
    source = source.strip()  # as media.load reads it
    if source[:5].lower() != "data:":
        return source
    # The payload's text, not its decoded bytes: hashing 13 MB of base64 takes a quarter of
    # the time decoding it would, and a retry sends the same text.
    payload = source.partition(",")[2]
    return f"sha256:{hashlib.sha256(payload.encode()).hexdigest()}"
