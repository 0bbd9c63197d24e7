"""Retouch's error hierarchy: every failure a user can see is one of these.

    RetouchError
    ├── InputError                 the request itself is wrong; fix it and retry
    │   ├── UnknownFunction        no such function in the catalogue
    │   ├── InvalidParameter       a parameter is missing, of the wrong type or out of range
    │   ├── ImageError             an image is unreadable, corrupt, truncated...
    │   │   ├── ImageTooLarge      more bytes or pixels than the limits (bombs too)
    │   │   └── NotAnImage         not in a format Retouch reads
    │   ├── UnsafeURL              a URL points into private space or uses a forbidden scheme
    │   └── Unsupported            the chosen vendor cannot do this (names those that can)
    ├── NotFound                   no such task or result
    ├── BudgetExceeded             the owner's budget would be crossed (names the limit
    │                              and when it resets); nothing was sent
    ├── Busy                       too many large images at once; retried later, it passes
    ├── IdempotencyConflict        the idempotency key was used for another request (names
    │                              the task it started); nothing was done
    ├── StorageError               the store cannot be written (a folder that is a file...)
    │   └── StorageFull            the disk, or the store's size cap, has no room left
    ├── ConfigError                config.toml or the environment is wrong
    ├── StoreUnavailable           the store's database cannot be reached now (retryable)
    ├── StoreConflict              a store holds other data under the same ids (moving house)
    ├── EngineError                the local engine failed or ran past its limits
    └── VendorError                a cloud vendor refused or failed
        ├── AuthError              bad or missing key (never retried)
        ├── QuotaError             quota, balance or billing exhausted (never retried)
        ├── Throttled              rate limited; retried after ``retry_after`` seconds
        ├── VendorRejected         the vendor judged the input invalid (never retried)
        ├── ContentRejected        the vendor's content moderation refused (never retried)
        ├── VendorFault            5xx, malformed answer, lost task (retried when transient)
        ├── VendorTimeout          no answer in time (retried)
        └── VendorCanceled         the task was canceled at the vendor

An error about a task that *ended* at the vendor (FAILED) carries ``task_failed=True``: asking
again would only read the same failure, so it is never retried by polling.

Each error carries a stable ``code`` (snake_case, part of the public contract), and vendor
errors keep the vendor's own ``vendor_code`` and ``request_id``. Messages never contain secrets.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RetouchError(Exception):
    """Base of every error Retouch reports."""

    code: ClassVar[str] = "error"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = {k: v for k, v in details.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in task records and shown to clients."""
        return {"code": self.code, "message": self.message, **self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InputError(RetouchError):
    code = "invalid_input"


class UnknownFunction(InputError):
    code = "unknown_function"


class InvalidParameter(InputError):
    code = "invalid_parameter"


class ImageError(InputError):
    code = "invalid_image"


class ImageTooLarge(ImageError):
    """More bytes or pixels than the limits allow (a decompression bomb too)."""


class NotAnImage(ImageError):
    """Bytes that are not an image in a format Retouch reads."""


class UnsafeURL(InputError):
    code = "unsafe_url"


class Unsupported(InputError):
    code = "unsupported"


class NotFound(RetouchError):
    code = "not_found"


class BudgetExceeded(RetouchError):
    """A request its owner's budget does not allow: ``limit`` is "day", "month",
    "edits_per_hour" or "concurrent"; the details say how much is used and when it resets."""

    code = "budget_exceeded"


class Busy(RetouchError):
    code = "busy"
    retryable = True


class IdempotencyConflict(RetouchError):
    """An idempotency key sent again with a different request: the key still answers for
    the task it started (``task_id``), so nothing new was done. Sent with the same request,
    the key returns that task; a new request needs a new key."""

    code = "idempotency_conflict"

    def __init__(self, task_id: str) -> None:
        super().__init__(
            f"this idempotency key was already used for a different request, which started "
            f"task {task_id}; send that same request to get its task back, or use a new key "
            "for a new request",
            task_id=task_id,
        )
        self.task_id = task_id


class StorageError(RetouchError):
    code = "storage_error"


class StorageFull(StorageError):
    code = "storage_full"


class ConfigError(RetouchError):
    code = "config_error"


class StoreUnavailable(RetouchError):
    """The store cannot be reached just now (its database is down, restarting, out of
    connections or locked past its timeout). Nothing was changed: try again shortly."""

    code = "store_unavailable"
    retryable = True
    #: Seconds a client is told to wait before trying again (HTTP's Retry-After).
    RETRY_AFTER_S = 5

    def __init__(self, cause: str | None = None) -> None:
        super().__init__(
            "store unavailable, try again in a few seconds (the database cannot be reached)",
            cause=cause,
            retry_after=self.RETRY_AFTER_S,
        )


class StoreConflict(RetouchError):
    code = "store_conflict"


class EngineError(RetouchError):
    code = "engine_error"


class VendorError(RetouchError):
    """A failure reported by (or while talking to) a cloud vendor."""

    code = "vendor_error"

    def __init__(
        self,
        message: str,
        *,
        vendor: str | None = None,
        vendor_code: str | None = None,
        request_id: str | None = None,
        status: int | None = None,
        **details: Any,
    ) -> None:
        super().__init__(
            message,
            vendor=vendor,
            vendor_code=vendor_code,
            request_id=request_id,
            status=status,
            **details,
        )
        self.vendor = vendor
        self.vendor_code = vendor_code
        self.request_id = request_id
        self.status = status


class AuthError(VendorError):
    code = "auth"


class QuotaError(VendorError):
    code = "quota"


class Throttled(VendorError):
    code = "throttled"
    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        super().__init__(message, retry_after=retry_after, **kw)
        self.retry_after = retry_after


class VendorRejected(VendorError):
    code = "vendor_rejected"


class ContentRejected(VendorError):
    code = "content_rejected"


class VendorFault(VendorError):
    code = "vendor_fault"

    def __init__(self, message: str, *, transient: bool = True, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.transient = transient

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.transient


class VendorTimeout(VendorError):
    code = "timeout"
    retryable = True


class VendorCanceled(VendorError):
    code = "canceled_at_vendor"


def error_from_dict(data: dict[str, Any]) -> RetouchError:
    """Rebuild an error from its stored form (the class is chosen by ``code``)."""
    classes: dict[str, type[RetouchError]] = {}
    stack: list[type[RetouchError]] = [RetouchError]
    while stack:
        cls = stack.pop()
        classes.setdefault(cls.code, cls)
        stack.extend(cls.__subclasses__())
    cls = classes.get(str(data.get("code")), RetouchError)
    details = {k: v for k, v in data.items() if k not in {"code", "message"}}
    err = cls.__new__(cls)
    RetouchError.__init__(err, str(data.get("message", "")), **details)
    for key in ("vendor", "vendor_code", "request_id", "status", "retry_after"):
        setattr(err, key, details.get(key))
    return err
