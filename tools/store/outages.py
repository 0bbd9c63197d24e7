"""Telling an outage from a failure: a store call that fails because its database cannot be
reached raises ``StoreUnavailable`` (retryable), never the driver's own exception.

An outage is a connection refused, reset or timed out (``OSError``), a connection the
server closed or refused while starting or stopping (asyncpg's connection and shutdown
errors, too many clients), SQLite's "database is locked" past its busy timeout, or an
S3-compatible server that cannot be reached. A wrong statement, a constraint, a missing
row or a full disk is not: those keep their own errors. ``reports_outages`` applies the
rule to every public coroutine of a store class, those added later included.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import logging
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tools.errors import RetouchError, StoreUnavailable

C = TypeVar("C", bound=type)

#: SQLite's primary result codes for a database another connection holds (busy, locked).
_SQLITE_BUSY = {5, 6}
#: asyncpg's errors that mean "the server is not there for you now" (by class name, so that
#: a process that never imported asyncpg does not import it here).
_ASYNCPG_OUTAGES = (
    "PostgresConnectionError",  # class 08, and a connection closed in the middle of a call
    "CannotConnectNowError",  # 57P03: starting up or shutting down
    "AdminShutdownError",  # 57P01
    "CrashShutdownError",  # 57P02
    "TooManyConnectionsError",  # 53300
    # A pooled connection the server cut while it was idle, used before the cut was noticed:
    # its protocol still waits for the end of the server's farewell error.
    "InternalClientError",
)


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the database (or the blob store) cannot be reached just now, or
    was raised while handling such an error (a rollback on a connection that is gone). A
    Retouch error is classified already (StorageFull for a full disk, NotFound for a file
    that is gone): never an outage, whatever it was raised while handling."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None or isinstance(seen, RetouchError):
            return False
        if _is_outage(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _is_outage(exc: BaseException) -> bool:
    if isinstance(exc, OSError):  # refused, reset, unreachable, timed out; not a full disk
        return exc.errno not in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(exc, sqlite3.OperationalError):
        return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _SQLITE_BUSY
    asyncpg = sys.modules.get("asyncpg.exceptions")
    if asyncpg is not None and isinstance(
        exc, tuple(getattr(asyncpg, name) for name in _ASYNCPG_OUTAGES)
    ):
        return True
    botocore = sys.modules.get("botocore.exceptions")
    return botocore is not None and isinstance(
        exc, botocore.ConnectionError | botocore.HTTPClientError
    )


def unavailable(exc: BaseException) -> StoreUnavailable:
    """The ``StoreUnavailable`` an outage is reported as (its cause named, not quoted: the
    message of a connection error may hold the server's address)."""
    return StoreUnavailable(cause=type(exc).__name__)


def _guarded(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except StoreUnavailable:
            raise  # from a call inside this one
        except Exception as exc:
            if not is_outage(exc):
                raise
            owner = args[0] if args else None
            if owner is not None and not isinstance(owner, type):
                with contextlib.suppress(AttributeError):
                    await owner._after_outage()
            raise unavailable(exc) from exc

    return call


def reports_outages(cls: C) -> C:
    """A class decorator: each public coroutine method (and class method) of ``cls`` raises
    ``StoreUnavailable`` for an outage, after awaiting the instance's ``_after_outage()`` if
    it has one (a pool drops the connections the outage may have left broken)."""
    for name, value in list(vars(cls).items()):
        if name.startswith("_"):
            continue
        if isinstance(value, classmethod) and inspect.iscoroutinefunction(value.__func__):
            setattr(cls, name, classmethod(_guarded(value.__func__)))
        elif inspect.iscoroutinefunction(value):
            setattr(cls, name, _guarded(value))
    return cls


class _OneLine(logging.Filter):
    """A record about an outage in one line: its traceback would say nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and is_outage(exc):
            record.msg = f"{record.getMessage()} ({type(exc).__name__})"
            record.args = None
            record.exc_info = record.exc_text = None
        return True


_ONE_LINE = _OneLine()


def one_line_outages(logger: str) -> None:
    """Log ``logger``'s records about outages without their tracebacks (a driver's pool
    logs one at each failed attempt to reconnect while the database is down)."""
    logging.getLogger(logger).addFilter(_ONE_LINE)  # once: a filter is added only once
