"""The front door in process: Host and Origin for every bind spelling and every route, and
each route's body limit (Content-Length and streamed), through the real app over httpx's ASGI
transport. The real-socket side (timeouts, the connection cap) is tests/test_slow_clients.py.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from server.app import build_server
from server.apps import request_body_limit
from server.front_door import HostNames, canonical_host
from server.http import build_http_app, starlette_app
from tests.conftest import MakeSettings
from tools.config import Settings
from tools.errors import ConfigError

CONSOLE_TOKEN = "operator_token_for_the_front_door"
#: One request per route family: (method, path).
ROUTES = [
    ("GET", "/health"),
    ("GET", "/openapi.json"),
    ("GET", "/upload"),
    ("POST", "/uploads"),
    ("GET", "/results/abc/0?exp=1&sig=x"),
    ("POST", "/callbacks/local/secret"),
    ("GET", "/console/login"),
    ("POST", "/mcp"),
    ("GET", "/mcp"),
]


def front_settings(make_settings: MakeSettings, host: str, extra: str = "") -> Settings:
    return make_settings(
        f'[mcp]\nhost = "{host}"\n{extra}\n[console]\ntokens = ["{CONSOLE_TOKEN}"]\n'
        '[vendors.local]\nesrgan = "off"\n'
    )


@contextlib.asynccontextmanager
async def door(settings: Settings, local: str = "127.0.0.1") -> AsyncIterator[httpx.AsyncClient]:
    """The app, its lifespan running; requests arrive at the local address ``local``."""
    app = build_http_app(build_server(settings), settings)
    inner = starlette_app(app)
    base = f"http://{local if ':' not in local else f'[{local}]'}:8765"
    async with inner.router.lifespan_context(inner):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base) as client:
            yield client


def test_hosts_are_compared_in_one_form() -> None:
    assert canonical_host("LocalHost.:8765") == "localhost"
    assert canonical_host("[0:0:0:0:0:0:0:1]:80") == "::1"
    assert canonical_host("[::1]") == "::1"
    assert canonical_host("127.0.0.2") == "127.0.0.2"
    for bad in ("::1", "[::1", "[::1]x", "a@b", "host:port", "", "a..b", "a b", "[nothost]"):
        assert canonical_host(bad) is None, bad


@pytest.mark.parametrize(
    "bind", ["127.0.0.1", "127.0.0.2", "0:0:0:0:0:0:0:1", "[::1]", "::1", "localhost"]
)
def test_every_loopback_spelling_knows_its_names(bind: str) -> None:
    """Defect 4: bound to 0:0:0:0:0:0:0:1 or 127.0.0.2, Host: evil.example was accepted."""
    names = HostNames(bind, [])
    for good in ("localhost", "127.0.0.1", "::1"):
        assert names.allows(good, "127.0.0.1"), (bind, good)
    assert not names.allows("evil.example", "127.0.0.1")
    assert not names.allows("evil.example", None)
    assert not names.allows("localhost.evil.example", "127.0.0.1")
    # any loopback address on a loopback connection (no DNS name: nothing to rebind)
    assert names.allows("127.0.0.2", "127.0.0.2") and names.allows("127.0.0.3", "127.0.0.2")
    assert not names.allows("10.0.0.1", "127.0.0.1")


def test_a_wildcard_bind_takes_only_its_names_and_the_address_reached() -> None:
    names = HostNames("0.0.0.0", ["retouch.example.com:443", "photos.example"])
    assert names.allows("retouch.example.com", "10.0.0.5")
    assert names.allows("photos.example", "10.0.0.5")
    assert names.allows("10.0.0.5", "10.0.0.5")  # http://10.0.0.5:8765/ from the LAN
    assert not names.allows("10.0.0.6", "10.0.0.5")
    assert not names.allows("evil.example", "10.0.0.5")
    assert not names.allows("0.0.0.0", "10.0.0.5")
    specific = HostNames("10.0.0.5", [])
    assert specific.allows("10.0.0.5", "10.0.0.5")
    assert not specific.allows("localhost", "10.0.0.5")  # it does not listen on loopback


def test_allowed_hosts_are_checked_at_load(make_settings: MakeSettings) -> None:
    ok = make_settings('[mcp]\nallowed_hosts = ["Photos.Example.", "[::1]", "10.0.0.7"]\n')
    assert ok.mcp.allowed_hosts == ["photos.example", "::1", "10.0.0.7"]
    for bad in ("https://photos.example", "photos.example:8080", "a b", "photos.example/x", ""):
        with pytest.raises(ConfigError, match="allowed_hosts"):
            make_settings(f'[mcp]\nallowed_hosts = ["{bad}"]\n')
    for key, value in (("header_timeout_s", 0), ("body_timeout_s", -1), ("max_connections", 1)):
        with pytest.raises(ConfigError, match=key):
            make_settings(f"[mcp]\n{key} = {value}\n")


@pytest.mark.parametrize("bind", ["127.0.0.2", "0:0:0:0:0:0:0:1", "localhost"])
async def test_a_foreign_host_is_refused_on_every_route(
    make_settings: MakeSettings, bind: str
) -> None:
    settings = front_settings(make_settings, bind)
    local = "::1" if ":" in bind else "127.0.0.2" if bind.startswith("127") else "127.0.0.1"
    async with door(settings, local) as client:
        for method, path in ROUTES:
            answer = await client.request(method, path, headers={"Host": "evil.example"})
            assert answer.status_code == 421, (bind, method, path, answer.text)
            assert "mcp.allowed_hosts" in answer.text and "Traceback" not in answer.text
            if path == "/mcp":  # a JSON-RPC error, which an MCP client shows
                assert answer.json()["error"]["code"] == -32600
            foreign = await client.request(method, path, headers={"Origin": "http://evil.example"})
            assert foreign.status_code == 403, (bind, method, path)
            odd_origins = ["file://", "http://[::1", "ftp://localhost", "http://a@localhost"]
            if not path.startswith("/console"):
                odd_origins.append("null")
            for origin in odd_origins:
                odd = await client.request(method, path, headers={"Origin": origin})
                assert odd.status_code == 403, (origin, method, path)
        # the console's forms (Referrer-Policy: no-referrer, so Origin: null) carry a CSRF
        # token instead: null passes the door there, and only there
        login = await client.get("/console/login", headers={"Origin": "null"})
        assert login.status_code == 200
        # its own names pass the door (and meet the route: no 421 or 403)
        for host in ("localhost:8765", "127.0.0.1", "[::1]:8765", "LOCALHOST."):
            answer = await client.get("/health", headers={"Host": host, "Origin": f"http://{host}"})
            assert answer.status_code == 200, host


async def test_configured_names_pass_and_others_do_not(make_settings: MakeSettings) -> None:
    settings = front_settings(
        make_settings,
        "0.0.0.0",
        'auth_token = "a_token_for_the_wildcard_bind"\npublic_url = "https://retouch.example.com"\n'
        'allowed_hosts = ["photos.example"]',
    )
    async with door(settings, "10.0.0.5") as client:
        for host in ("retouch.example.com", "photos.example:8765", "10.0.0.5:8765", "localhost"):
            assert (await client.get("/health", headers={"Host": host})).status_code == 200, host
        for host in ("evil.example", "10.0.0.6", "retouch.example.com.evil.example"):
            assert (await client.get("/health", headers={"Host": host})).status_code == 421, host
        origin = {"Origin": "https://retouch.example.com"}
        assert (await client.get("/health", headers=origin)).status_code == 200


KINDS = {"/uploads": "image/png", "/console/login": "application/x-www-form-urlencoded"}


def sizes(settings: Settings) -> dict[tuple[str, str], int]:
    """The limit each route holds to (the route's own, where it reads its body itself)."""
    return {
        ("POST", "/mcp"): request_body_limit(settings),
        ("POST", "/uploads"): settings.media.max_bytes + 64 * 1024,
        ("POST", "/callbacks/local/secret"): 64 * 1024,
        ("POST", "/console/login"): 16 * 1024,
        ("GET", "/health"): 1024,
        ("GET", "/results/abc/0?exp=1&sig=x"): 1024,
        ("POST", "/nowhere"): 1024,
    }


async def test_every_route_refuses_a_declared_body_over_its_limit(
    make_settings: MakeSettings,
) -> None:
    settings = front_settings(make_settings, "127.0.0.1", "[media]\nmax_bytes = 1000000")
    async with door(settings) as client:
        for (method, path), size in sizes(settings).items():
            kind = KINDS.get(path, "application/json")
            headers = {"Content-Length": str(3 * size), "Content-Type": kind}
            answer = await client.request(method, path, content=b"", headers=headers)
            assert answer.status_code == 413, (path, answer.text)
            assert "Traceback" not in answer.text
        # a body within a GET route's limit is read and ignored
        assert (await client.request("GET", "/health", content=b"x" * 1000)).status_code == 200


async def test_a_streamed_body_is_cut_at_the_limit_on_every_route(
    make_settings: MakeSettings,
) -> None:
    settings = front_settings(make_settings, "127.0.0.1", "[media]\nmax_bytes = 1000000")
    async with door(settings) as client:
        for (method, path), size in sizes(settings).items():
            sent = 0

            async def endless() -> AsyncIterator[bytes]:
                nonlocal sent
                for _ in range(1000):  # 64 MB, no Content-Length
                    sent += 65536
                    yield b" " * 65536

            kind = KINDS.get(path, "application/json")
            answer = await client.request(
                method, path, content=endless(), headers={"Content-Type": kind}
            )
            # 413, or the route's refusal before it read anything (a wrong callback secret)
            assert answer.status_code in (404, 413), (path, answer.status_code, answer.text)
            assert "Traceback" not in answer.text
            # the door and the routes stop reading one chunk after their limit at most
            assert sent <= 2 * size + 2 * 65536, (path, sent, size)


async def test_an_mcp_body_over_the_limit_is_a_json_rpc_error(
    make_settings: MakeSettings,
) -> None:
    settings = front_settings(make_settings, "127.0.0.1", "[media]\nmax_bytes = 1000000")
    limit = request_body_limit(settings)
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "ping", "x": "A" * limit}).encode()
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    async with door(settings) as client:
        answer = await client.post("/mcp", content=body, headers=headers)
    assert answer.status_code == 413
    reply: dict[str, Any] = answer.json()
    assert reply["jsonrpc"] == "2.0" and reply["id"] is None
    assert reply["error"]["code"] == -32600
    assert "media.max_bytes (1 MB)" in reply["error"]["message"]
    assert "/uploads" in reply["error"]["message"]
