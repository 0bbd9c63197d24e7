"""How a vendor's failure becomes one of Retouch's errors (``tools/errors.py``).

Every HTTP adapter reads an error answer into an ``Answer`` (the HTTP status it means, the
vendor's own code, its words, its headers) and hands it to ``classify`` with its ``Dialect``:
what that vendor means by its own codes and words. The table is the same for every vendor; the
first row that holds decides:

    row  the answer                                   error               retried
    ───  ───────────────────────────────────────────  ──────────────────  ───────────────────────
    1    quota or billing words (not a 5xx)           QuotaError          never
    2    the vendor's own code, in the dialect        the dialect's class as that class says
    3    auth words (not a 5xx)                       AuthError           never
    4    throttling words (not a 5xx)                 Throttled           after Retry-After
    5    HTTP 401, 403                                AuthError           never
         HTTP 408                                     VendorTimeout       yes
         HTTP 409, 5xx                                VendorFault         unless x-should-retry:
                                                                          false
         HTTP 429                                     Throttled           after Retry-After
         (the dialect may say otherwise of a status)
    6    moderation words (no status above)           ContentRejected     never
    7    a task that failed, with fault words         VendorFault         never
    8    a task that failed (no status)               the dialect's       never
                                                      ``failed``
    9    anything else: a 4xx, an error in a 2xx      the dialect's       never
                                                      ``refused``

A 5xx is the vendor's own failure whatever its words say; only its code can say otherwise.
Failures below HTTP (no usable answer at all) are ``transport_error``'s.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from tools.errors import (
    AuthError,
    ContentRejected,
    QuotaError,
    Throttled,
    VendorError,
    VendorFault,
    VendorRejected,
    VendorTimeout,
)

#: Words are lowercase fragments of the vendor's message; a tuple matches when all appear.
Words = tuple[str | tuple[str, ...], ...]

#: Row 5: what an HTTP status means when nothing before it decided.
STATUSES: Mapping[int, type[VendorError]] = {
    401: AuthError,
    403: AuthError,
    408: VendorTimeout,
    409: VendorFault,
    429: Throttled,
}


@dataclass(frozen=True)
class Dialect:
    """What one vendor means by its own codes and words: the table's per-vendor data.

    ``codes`` match the vendor's code whole or any of its dotted parts (``Throttling`` matches
    ``Throttling.RateQuota``), case-insensitively, the whole code and then the last part first.
    """

    codes: Mapping[str, type[VendorError]] = field(default_factory=dict)
    statuses: Mapping[int, type[VendorError]] = field(default_factory=dict)
    quota_words: Words = ()
    auth_words: Words = ()
    throttle_words: Words = ()
    moderation_words: Words = ()
    fault_words: Words = ()  # a failed task whose message says the vendor itself broke
    failed: type[VendorError] = VendorFault  # a failed task no row explains
    refused: type[VendorError] = VendorRejected  # any other refusal no row explains
    advice: Mapping[type[VendorError], str] = field(default_factory=dict)  # appended to text

    def class_of_code(self, code: str | None) -> type[VendorError] | None:
        if not code:
            return None
        known = {k.lower(): v for k, v in self.codes.items()}
        code = code.lower()
        for candidate in (code, *reversed(code.split("."))):
            if candidate in known:
                return known[candidate]
        return None


@dataclass(frozen=True)
class Answer:
    """An error answer as its adapter read it: what the table looks at."""

    status: int | None  # the HTTP status it means; None: a task that ended FAILED
    code: str | None = None  # the vendor's own error code
    words: str = ""  # the vendor's message (and whatever else of it is worth reading)
    headers: Mapping[str, str] = field(default_factory=dict)


def classify(dialect: Dialect, answer: Answer, text: str, **details: Any) -> VendorError:
    """The error ``answer`` means, saying ``text``. ``details`` go into the error as given
    (``vendor``, ``request_id``…); ``vendor_code`` and ``status`` default to the answer's."""
    cls, transient = _row(dialect, answer)
    details.setdefault("vendor_code", answer.code)
    details.setdefault("status", answer.status)
    text += dialect.advice.get(cls, "")
    if cls is Throttled:
        return Throttled(text, retry_after=retry_after(answer.headers), **details)
    if issubclass(cls, VendorFault):
        should_retry = {k.lower(): v for k, v in answer.headers.items()}.get("x-should-retry")
        transient = transient and (should_retry or "").lower() != "false"
        return cls(text, transient=transient, **details)
    return cls(text, **details)


def _row(d: Dialect, a: Answer) -> tuple[type[VendorError], bool]:
    """The table above, row by row: (the error class, whether a fault is transient)."""
    words = a.words.lower()
    heard = a.status is None or a.status < 500  # rows 1, 3, 4: words count below a 5xx
    coded = d.class_of_code(a.code)
    by_status = {**STATUSES, **d.statuses}.get(a.status) if a.status is not None else None
    if heard and _says(words, d.quota_words):  # 1
        return QuotaError, False
    if coded is not None:  # 2
        return coded, True
    if heard and _says(words, d.auth_words):  # 3
        return AuthError, False
    if heard and _says(words, d.throttle_words):  # 4
        return Throttled, True
    if by_status is not None or not heard:  # 5
        return by_status or VendorFault, True
    if _says(words, d.moderation_words):  # 6
        return ContentRejected, False
    if a.status is None:  # 7, 8
        return (VendorFault if _says(words, d.fault_words) else d.failed), False
    return d.refused, False  # 9


def _says(words: str, table: Words) -> bool:
    return any(
        w in words if isinstance(w, str) else all(part in words for part in w) for w in table
    )


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from ``retry-after-ms`` / ``Retry-After`` (seconds or an HTTP date)."""
    lower = {k.lower(): v for k, v in headers.items()}
    if "retry-after-ms" in lower:
        try:
            return max(0.0, float(lower["retry-after-ms"]) / 1000)
        except ValueError:
            pass
    value = lower.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        parsed = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, parsed.timestamp() - time.time()) if parsed else None


def transport_error(exc: httpx.HTTPError, vendor: str, *, submitting: bool = False) -> VendorError:
    """Classify a failure below HTTP (no usable answer arrived)."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return VendorFault(f"{vendor}: cannot connect ({type(exc).__name__})", vendor=vendor)
    if isinstance(exc, httpx.TimeoutException):
        # The request may have reached the vendor: resubmitting might bill twice.
        return VendorTimeout(
            f"{vendor}: no answer in time", vendor=vendor, maybe_submitted=submitting or None
        )
    return VendorFault(
        f"{vendor}: connection failed ({type(exc).__name__})",
        vendor=vendor,
        maybe_submitted=submitting or None,
    )
