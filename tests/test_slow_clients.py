"""The front door against a real ``retouch-mcp --transport http`` on 127.0.0.1: slow clients
(slowloris headers, slow bodies, bodies sent on after a 413), the connection cap, every
route's body limit, DNS-rebinding on a loopback address spelled otherwise, and a 3.6 MB PNG
as a ``data:`` URI through the mcp SDK's client.

Each test prints its figures (``pytest -s``); SECURITY.md quotes them. Times are asserted
with wide margins: the machine is shared.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import subprocess
import time
from collections.abc import Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from server.apps import request_body_limit
from tests.conftest import MakeSettings
from tests.servers import free_port, start_http_server, wait_healthy
from tests.test_apps import noise_png
from tools.config import Settings

HEADER_TIMEOUT_S = 2.0
BODY_TIMEOUT_S = 3.0
MAX_CONNECTIONS = 128
MAX_BYTES = 10_000_000
TOKEN = "slow-clients-test-token"
CONSOLE_TOKEN = "operator_token_for_slow_clients"


@dataclass
class Live:
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    settings: Settings

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def rss_mb(self) -> float:
        with open(f"/proc/{self.proc.pid}/status") as file:
            status = file.read()
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        assert match
        return int(match.group(1)) / 1024

    def sockets(self) -> int:
        """Sockets the server holds open (its listener included)."""
        fds = os.listdir(f"/proc/{self.proc.pid}/fd")
        links = []
        for fd in fds:
            with suppress(OSError):
                links.append(os.readlink(f"/proc/{self.proc.pid}/fd/{fd}"))
        return sum(link.startswith("socket:") for link in links)


@contextmanager
def start(make_settings: MakeSettings, host: str = "127.0.0.1") -> Iterator[Live]:
    port = free_port()
    settings = make_settings(
        f'[mcp]\nhost = "{host}"\nport = {port}\nauth_token = "{TOKEN}"\n'
        f"header_timeout_s = {HEADER_TIMEOUT_S}\nbody_timeout_s = {BODY_TIMEOUT_S}\n"
        f"max_connections = {MAX_CONNECTIONS}\n"
        f'[console]\ntokens = ["{CONSOLE_TOKEN}"]\n'
        f"[media]\nmax_bytes = {MAX_BYTES}\n"
        '[vendors.local]\nesrgan = "off"\n'
    )
    proc = start_http_server(settings.source)
    live = Live(host, port, proc, settings)
    try:
        wait_healthy(proc, live.base)
        yield live
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode(errors="replace")
        assert "Traceback" not in output, output[-6000:]


@pytest.fixture
def live(make_settings: MakeSettings) -> Iterator[Live]:
    with start(make_settings) as server:
        yield server


@dataclass
class Held:
    opened: float
    closed: float | None = None
    answer: bytes = b""


async def hold_half_a_header(port: int, held: Held, stop: asyncio.Event) -> None:
    """Send a request's first line and then one header byte at a time, 4 a second, until the
    server closes the connection (or ``stop``)."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        held.closed = time.monotonic()
        return
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        while not stop.is_set():
            try:
                data = await asyncio.wait_for(reader.read(4096), 0.25)
            except TimeoutError:
                writer.write(b"a")
                continue
            held.answer += data
            if not data:
                break
    except OSError:
        pass
    finally:
        if held.closed is None and not stop.is_set():
            held.closed = time.monotonic()
        writer.close()


async def test_slowloris_headers_are_closed_and_health_answers_throughout(live: Live) -> None:
    """Defect 3: 300 connections holding half a header were never closed, and /health
    stopped answering."""
    rss_before = live.rss_mb()
    stop = asyncio.Event()
    held = [Held(time.monotonic()) for _ in range(300)]
    tasks = []
    for h in held:
        h.opened = time.monotonic()
        tasks.append(asyncio.create_task(hold_half_a_header(live.port, h, stop)))
        await asyncio.sleep(0.002)
    health: list[float] = []
    peak_sockets = 0
    peak_rss = rss_before
    async with httpx.AsyncClient(timeout=5) as client:
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 4
        while time.monotonic() < deadline and any(h.closed is None for h in held):
            started = time.monotonic()
            answer = await client.get(
                f"{live.base}/health", headers={"Connection": "close"}
            )  # a new connection each time, as a monitor makes
            assert answer.status_code == 200
            health.append(time.monotonic() - started)
            peak_sockets = max(peak_sockets, live.sockets())
            peak_rss = max(peak_rss, live.rss_mb())
            await asyncio.sleep(0.1)
    stop.set()
    await asyncio.gather(*tasks)
    open_at_end = [h for h in held if h.closed is None]
    lifetimes = sorted(h.closed - h.opened for h in held if h.closed is not None)
    timed_out = [h for h in held if h.answer.startswith(b"HTTP/1.1 408")]
    evicted = len(held) - len(timed_out) - len(open_at_end)
    rss_after = live.rss_mb()
    print(
        f"\nslowloris: {len(held)} connections holding half a header; "
        f"{len(timed_out)} closed by the header timeout ({HEADER_TIMEOUT_S:g} s) with 408, "
        f"{evicted} let go by the cap ({MAX_CONNECTIONS}); still open at the end: "
        f"{len(open_at_end)}; longest held {lifetimes[-1]:.2f} s; server sockets at most "
        f"{peak_sockets}; /health answered {len(health)} times, slowest "
        f"{max(health) * 1000:.0f} ms; RSS {rss_before:.0f} → peak {peak_rss:.0f} → "
        f"{rss_after:.0f} MiB"
    )
    assert not open_at_end
    assert lifetimes[-1] < HEADER_TIMEOUT_S + 3
    assert timed_out and evicted > 0
    assert peak_sockets <= MAX_CONNECTIONS + 8  # the listener, the store, a client or two
    assert len(health) >= 5 and max(health) < 2
    assert peak_rss - rss_before < 40


async def slow_body(
    port: int, head: bytes, per_byte_s: float, limit_s: float
) -> tuple[float, bytes]:
    """Send ``head`` and then a body one byte at a time; (seconds until the server closed
    the connection, what it answered)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    answer = b""
    writer.write(head)
    try:
        while time.monotonic() - started < limit_s:
            try:
                data = await asyncio.wait_for(reader.read(4096), per_byte_s)
            except TimeoutError:
                writer.write(b" ")
                await writer.drain()
                continue
            if not data:
                break
            answer += data
    except OSError:
        pass
    finally:
        writer.close()
    return time.monotonic() - started, answer


def head(method: str, path: str, length: int, kind: str, token: str = TOKEN) -> bytes:
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: {kind}\r\nAccept: application/json, text/event-stream\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


SLOW_BODIES = {
    "/mcp": head("POST", "/mcp", 1_000_000, "application/json"),
    "/uploads": head("POST", "/uploads", 1_000_000, "image/png"),
    "/console/login": head("POST", "/console/login", 10_000, "application/x-www-form-urlencoded"),
    "/mcp after its 413": head("POST", "/mcp", 10**9, "application/json"),
}


async def test_a_slow_body_is_closed_after_the_body_timeout(live: Live) -> None:
    results = await asyncio.gather(
        *(slow_body(live.port, h, 0.1, BODY_TIMEOUT_S + 10) for h in SLOW_BODIES.values())
    )
    figures = []
    for (name, _), (seconds, answer) in zip(SLOW_BODIES.items(), results, strict=True):
        figures.append(f"{name} {seconds:.1f} s ({answer[:12].decode(errors='replace')!r})")
        assert seconds < BODY_TIMEOUT_S + 4, (name, seconds)
        assert b"Traceback" not in answer
    assert results[-1][1].startswith(b"HTTP/1.1 413"), results[-1][1][:200]
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{live.base}/health")).status_code == 200
    print(f"\nslow bodies (a byte every 0.1 s), closed after: {'; '.join(figures)}")


async def first_answer(port: int, request: bytes) -> bytes:
    """Send ``request`` (headers only) and read the answer's first bytes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        return await asyncio.wait_for(reader.read(4096), 10)
    finally:
        writer.close()


async def test_every_route_refuses_a_body_over_its_limit(live: Live) -> None:
    limits = {
        ("POST", "/mcp"): request_body_limit(live.settings),
        ("POST", "/uploads"): MAX_BYTES + 64 * 1024,
        ("POST", "/callbacks/local/x"): 64 * 1024,
        ("POST", "/console/login"): 16 * 1024,
        ("GET", "/health"): 1024,
        ("GET", "/openapi.json"): 1024,
        ("GET", "/results/x/0"): 1024,
        ("GET", "/console/tasks"): 1024,
        ("GET", "/metrics"): 1024,
        ("POST", "/elsewhere"): 1024,
    }
    kinds = {"/uploads": "image/png", "/console/login": "application/x-www-form-urlencoded"}
    figures = []
    for (method, path), limit in limits.items():
        declared = 2 * limit + 128 * 1024 + 1  # past the route's and the door's backstop
        kind = kinds.get(path, "application/json")
        started = time.monotonic()
        answer = await first_answer(live.port, head(method, path, declared, kind))
        took = (time.monotonic() - started) * 1000
        status = answer.split(b" ", 2)[1].decode()
        # 413 unread; a callback URL with a wrong secret is refused before its body too
        assert status in ("404", "413"), (path, answer[:300])
        assert b"Traceback" not in answer
        figures.append(f"{method} {path}: {limit} B ({status} in {took:.0f} ms)")
    print(
        "\nbody limits (the most each route takes; a declared body over it is refused "
        f"unread): {'; '.join(figures)}"
    )


@asynccontextmanager
async def mcp_client(base: str) -> Any:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
    async with http, Client(streamable_http_client(f"{base}/mcp", http_client=http)) as c:
        yield c


async def test_a_large_png_goes_through_as_a_data_uri_and_a_larger_body_is_a_tool_error(
    live: Live,
) -> None:
    """Defect 5: a valid 3.6 MB PNG as a data: URI got a bare 413 from the transport's 4 MiB
    default although media.max_bytes was 10 MB; the client saw no tool error."""
    image = noise_png(1100)
    assert 3_500_000 < len(image) < 3_800_000
    uri = "data:image/png;base64," + base64.b64encode(image).decode()
    assert len(uri) > 4 * 2**20
    edit = {"function": "stylization_all", "prompt": "pencil sketch", "wait_seconds": 0}
    rss_before = live.rss_mb()
    async with mcp_client(live.base) as client:
        started = time.monotonic()
        taken = await client.call_tool("edit_image", {**edit, "images": [uri]})
        took = time.monotonic() - started
        assert not taken.is_error, taken.content
        assert taken.structured_content["status"] in ("queued", "running", "succeeded")
        over = "data:image/png;base64," + "A" * request_body_limit(live.settings)
        with pytest.raises(MCPError) as refused:
            await client.call_tool("edit_image", {**edit, "images": [over]})
        assert "media.max_bytes (10 MB)" in str(refused.value), refused.value
        assert "/uploads" in str(refused.value)
        still = await client.call_tool("list_functions", {})
        assert not still.is_error
    print(
        f"\n/mcp: a {len(image) / 1e6:.2f} MB PNG as a {len(uri) / 1e6:.2f} MB data: URI taken "
        f"in {took:.1f} s (limit {request_body_limit(live.settings) / 1e6:.2f} MB); RSS "
        f"{rss_before:.0f} → {live.rss_mb():.0f} MiB"
    )


def test_a_loopback_address_spelled_otherwise_refuses_a_foreign_host(
    make_settings: MakeSettings,
) -> None:
    """Defect 4, on a real socket: bound to 127.0.0.2, Host: evil.example was served."""
    with start(make_settings, "127.0.0.2") as live, httpx.Client(base_url=live.base) as client:
        assert client.get("/health").status_code == 200
        evil = client.get("/health", headers={"Host": "evil.example"})
        assert evil.status_code == 421 and "mcp.allowed_hosts" in evil.text
        mcp = client.post(
            "/mcp",
            json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
            headers={"Host": f"evil.example:{live.port}", "Authorization": f"Bearer {TOKEN}"},
        )
        assert mcp.status_code == 421 and mcp.json()["error"]["code"] == -32600
        origin = client.get("/health", headers={"Origin": "http://evil.example"})
        assert origin.status_code == 403


async def test_a_house_full_of_slow_bodies_answers_503_until_the_body_timeout(
    live: Live,
) -> None:
    """Connections inside a request are not let go for newcomers: past the cap a new one is
    answered 503 (with Retry-After), until the body timeout frees them."""
    request = head("POST", "/uploads", 1_000_000, "image/png")
    slow = [
        asyncio.create_task(slow_body(live.port, request, 0.2, BODY_TIMEOUT_S + 10))
        for _ in range(MAX_CONNECTIONS)
    ]
    await asyncio.sleep(1)
    refused = await first_answer(live.port, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    started = time.monotonic()
    closed = await asyncio.gather(*slow)
    assert refused.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in refused.lower()
    assert all(seconds < BODY_TIMEOUT_S + 4 for seconds, _ in closed)
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{live.base}/health")).status_code == 200
    print(
        f"\nfull house: {MAX_CONNECTIONS} slow bodies held the cap; a newcomer got 503; all "
        f"closed {time.monotonic() - started:.1f} s later, /health answered again"
    )
