"""The console's sign-in: operator tokens, signed session cookies and CSRF tokens.

A session is a cookie ``<expiry>.<id>.<signature>`` signed with a key derived from the
result links' secret (so replicas sharing it share sessions); the server checks the expiry
and the sign-outs it has heard of. Each session has one CSRF token, the HMAC of its id,
that every state-changing request sends back (form field ``csrf`` or header
``X-CSRF-Token``). Everything secret is compared in constant time; nothing is logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

from starlette.requests import Request

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
        self.ended: dict[str, float] = {}  # session id → its expiry, once signed out

    def _sign(self, *parts: str) -> str:
        message = "\n".join(parts).encode()
        return _b64(hmac.new(self.key, message, hashlib.sha256).digest())

    def operator(self, token: str) -> bool:
        """Whether ``token`` is an operator's: every digest compared, each in constant time."""
        presented = hashlib.sha256(token.encode()).digest()
        found = False
        for digest in self.operators:
            found |= hmac.compare_digest(presented, digest)
        return found and bool(token)

    def new(self) -> str:
        """A new session's cookie value."""
        expiry = str(int(self.clock() + self.ttl_s))
        sid = secrets.token_urlsafe(18)
        return f"{expiry}.{sid}.{self._sign('session', expiry, sid)}"

    def session(self, request: Request) -> str | None:
        """The id of the request's live session, if its cookie carries one."""
        value = request.cookies.get(COOKIE, "")
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit() or len(value) > 200:
            return None
        expiry, sid, sig = parts
        if not hmac.compare_digest(sig.encode(), self._sign("session", expiry, sid).encode()):
            return None
        if int(expiry) <= self.clock() or sid in self.ended:
            return None
        return sid

    def end(self, sid: str) -> None:
        """Sign a session out: refused from now on (by this process)."""
        now = self.clock()
        self.ended = {s: t for s, t in self.ended.items() if t > now}
        self.ended[sid] = now + self.ttl_s

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
