"""The console's sign-in: operator tokens, signed session cookies and CSRF tokens.

A session is a cookie ``<expiry>.<id>.<signature>`` signed with a key derived from the
result links' secret (so replicas sharing it share sessions), and a row in the store
(``Store.add_console_session``: the SHA-256 of its id, never the id, and a keyed digest of
the operator token it was opened with). A request's session must be signed, unexpired,
in the store and not signed out there, and opened with a token this process's config still
holds: a sign-out, or a token taken out of the config, holds in every process sharing the
store. Each session has one CSRF token, the HMAC of its id, that every state-changing
request sends back (form field ``csrf`` or header ``X-CSRF-Token``). Everything secret is
compared in constant time; nothing is logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from starlette.requests import Request

from tools.store import Store
from tools.store.base import ConsoleSession

#: The session's cookie, and the one that guards the sign-in form (double submit).
COOKIE = "retouch_console"
LOGIN_COOKIE = "retouch_console_login"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class Sessions:
    """Operators' sessions under one key; ``clock`` gives Unix time."""

    def __init__(
        self,
        key: bytes,
        operators: list[bytes],
        ttl_s: float,
        *,
        secure: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = hmac.new(key, b"retouch-console-v1", hashlib.sha256).digest()
        self.operators = operators
        self.ttl_s = ttl_s
        self.secure = secure
        self.clock = clock
        self.operator_ids = {self.operator_id(d) for d in operators}

    def _sign(self, *parts: str) -> str:
        message = "\n".join(parts).encode()
        return _b64(hmac.new(self.key, message, hashlib.sha256).digest())

    def operator_id(self, digest: bytes) -> str:
        """The name a session keeps of its operator token: a keyed digest of its SHA-256."""
        return self._sign("operator", digest.hex())

    def operator(self, token: str) -> bytes | None:
        """The SHA-256 of ``token`` if it is an operator's: every digest compared, each in
        constant time."""
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for digest in self.operators:
            if hmac.compare_digest(presented, digest):
                found = digest
        return found if token else None

    @staticmethod
    def row_id(sid: str) -> str:
        """The store's key of a session: the SHA-256 of its id (a database read shows no
        cookie that would open the console)."""
        return hashlib.sha256(sid.encode()).hexdigest()

    async def new(self, store: Store, operator: bytes) -> str:
        """A new session of ``operator`` (a token's SHA-256), recorded in the store; its
        cookie value."""
        now = self.clock()
        expiry = str(int(now + self.ttl_s))
        sid = secrets.token_urlsafe(18)
        row = ConsoleSession(self.row_id(sid), self.operator_id(operator), now, int(expiry))
        await store.add_console_session(row)
        return f"{expiry}.{sid}.{self._sign('session', expiry, sid)}"

    async def session(self, request: Request, store: Store) -> str | None:
        """The id of the request's live session, if its cookie carries one: signed,
        unexpired, in the store and not signed out, of a token this config still holds."""
        value = request.cookies.get(COOKIE, "")
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or len(value) > 200:
            return None
        expiry, sid, sig = parts
        if not hmac.compare_digest(sig.encode(), self._sign("session", expiry, sid).encode()):
            return None
        now = self.clock()
        if int(expiry) <= now:
            return None
        row = await store.console_session(self.row_id(sid))
        if row is None or row.ended_at is not None or row.expires_at <= now:
            return None
        if row.operator not in self.operator_ids:  # its token was taken out of the config
            return None
        return sid

    async def end(self, sid: str, store: Store) -> None:
        """Sign a session out, for every process on the store."""
        await store.end_console_session(self.row_id(sid), self.clock())

    def csrf(self, sid: str) -> str:
        return self._sign("csrf", sid)

    def csrf_ok(self, sid: str, presented: str) -> bool:
        return hmac.compare_digest(presented.encode(), self.csrf(sid).encode())

    def cookie(self, name: str, value: str, max_age: int) -> str:
        """A ``Set-Cookie`` value: HttpOnly, SameSite=Strict, Secure behind https."""
        secure = "; Secure" if self.secure else ""
        return (
            f"{name}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite=Strict{secure}"
        )
