"""Connections as uvicorn holds them, with the limits it lacks: a header timeout, a body
timeout and a cap on open connections that lets idle ones go first.

uvicorn (h11, the protocol it runs here: httptools is not installed) has a keep-alive
timeout and ``limit_concurrency``, but nothing bounds the time a client takes to send its
headers or its body, and ``limit_concurrency`` answers 503 to everyone — ``/health``
included — once slow clients hold the connections. ``GuardedH11Protocol`` is uvicorn's own
``H11Protocol`` with a timer per phase of a connection:

- **headers**: from the connection's start (or the end of the previous response) until the
  request's headers are complete: ``mcp.header_timeout_s``. Then a ``408`` and the
  connection is closed.
- **body**: from the headers until the body's last byte: ``mcp.body_timeout_s`` (a body
  nobody reads, e.g. after a 413, counts too). Then the connection is closed and the route
  sees the client leave.
- **app**: the request is in, the route answers (an SSE stream may last): no timer.

``mcp.max_connections`` caps the connections open at once. A new one over the cap closes
the connection that has waited longest for its headers (an idle keep-alive one or a slow
client's); when every connection is in a request, the new one is answered ``503`` with
Retry-After and closed. So clients that hold half a header can neither stop ``/health`` nor
hold more than the cap.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import ClassVar, Literal

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from tools.config import Settings

Phase = Literal["headers", "body", "app", "closed"]


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        cfg = settings.mcp
        return cls(cfg.header_timeout_s, cfg.body_timeout_s, cfg.max_connections)


def raw_response(status: int, reason: str, message: str, extra: str = "") -> bytes:
    """A whole HTTP/1.1 response that closes the connection, written without h11 (which
    will not answer a request it has not seen)."""
    body = json.dumps({"error": reason.lower().replace(" ", "_"), "message": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n"
    )
    return head.encode() + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the phase timers and the cap (see the module)."""

    limits: ClassVar[ConnectionLimits] = ConnectionLimits(10.0, 120.0, 256)

    phase: Phase = "closed"
    phase_since: float = 0.0
    _timer: asyncio.TimerHandle | None = None
    _got_bytes: bool = False

    @classmethod
    def with_limits(cls, limits: ConnectionLimits) -> type[GuardedH11Protocol]:
        """This class with ``limits``, for ``uvicorn.run(http=…)``."""
        return type("GuardedH11Protocol", (cls,), {"limits": limits})

    # ---- the phases --------------------------------------------------------------------

    def _current_phase(self) -> Phase:
        theirs, ours = self.conn.their_state, self.conn.our_state
        if theirs is h11.SEND_BODY:
            return "body"
        if theirs is h11.IDLE and ours is h11.IDLE:
            return "headers"
        if theirs in (h11.CLOSED, h11.ERROR) or ours in (h11.CLOSED, h11.ERROR):
            return "closed"
        return "app"

    def _track(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self._enter("closed")
            return
        phase = self._current_phase()
        if phase != self.phase:
            self._enter(phase)

    def _enter(self, phase: Phase) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.phase, self.phase_since = phase, self.loop.time()
        if phase == "headers":
            self._got_bytes = False
            self._timer = self.loop.call_later(self.limits.header_timeout_s, self._headers_late)
        elif phase == "body":
            self._timer = self.loop.call_later(self.limits.body_timeout_s, self._body_late)

    def _headers_late(self) -> None:
        self._timer = None
        if self.phase != "headers" or self.transport.is_closing():
            return
        if self._got_bytes:
            message = f"the request's headers took over {self.limits.header_timeout_s:g} s"
            self.transport.write(raw_response(408, "Request Timeout", message))
        self._close()

    def _body_late(self) -> None:
        self._timer = None
        if self.phase == "body" and not self.transport.is_closing():
            self._close()

    def _close(self) -> None:
        self._enter("closed")
        self.transport.close()

    # ---- uvicorn's protocol, with the tracking -----------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._enter("headers")
        if len(self.connections) > self.limits.max_connections and not self._make_room():
            message = "too many connections: try again in a moment"
            self.transport.write(
                raw_response(503, "Service Unavailable", message, "retry-after: 1\r\n")
            )
            self._close()

    def _make_room(self) -> bool:
        """Close the connection that has waited longest for its headers (not this one)."""
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11Protocol) and c is not self and c.phase == "headers"
        ]
        if not waiting:
            return False
        min(waiting, key=lambda c: c.phase_since)._close()
        return True

    def data_received(self, data: bytes) -> None:
        if self.phase == "closed":
            return
        if self.phase == "headers" and data:
            self._got_bytes = True
        super().data_received(data)
        self._track()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._track()

    def connection_lost(self, exc: Exception | None) -> None:
        self._enter("closed")
        self.phase = "closed"
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)
