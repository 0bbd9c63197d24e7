"""Secrets and access: keys never reach logs, errors, task records or reprs; MCP over HTTP
needs the bearer token off loopback and keeps DNS-rebinding protection everywhere."""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from mcp import Client

from server import http as server_http
from server.app import build_server
from server.http import build_http_app, starlette_app
from tests.conftest import MakeSettings, data_uri, sample
from tests.fakes import nebula as fake_nebula
from tests.fakes import openai as fake_openai
from tests.fakes.dashscope import FakeDashScope, error_body
from tests.fakes.http import Fault
from tests.fakes.nebula import FakeNebula
from tests.fakes.openai import FakeOpenAI
from tools.config import Settings
from tools.models import EditRequest, TaskStatus
from tools.service import Editor

# Not shaped like "sk-…" on purpose: each adapter must redact its own key, not rely on the
# pattern that catches OpenAI-style keys.
DASHSCOPE_KEY = "dsk_live_7Hq2SECRETdashscope91"
OPENAI_KEY = "oai_live_4Kp9SECRETopenai55"
NEBULA_KEY = "neb_live_2Zx8SECRETnebula33"
MCP_TOKEN = "mcp_tok_8Wd1SECRETbearer77"
BOT_TOKEN = "123456789:AAE_SECRETtelegramTOKEN_x1"
SECRETS = [DASHSCOPE_KEY, OPENAI_KEY, NEBULA_KEY, MCP_TOKEN, BOT_TOKEN]


def leaks(text: str) -> list[str]:
    """The secrets (or a long piece of one) found in ``text``."""
    found = []
    for secret in SECRETS:
        pieces = {secret, secret[4:], secret[:-4], secret.split("SECRET")[1]}
        if any(piece in text for piece in pieces):
            found.append(secret)
    return found


@pytest.fixture
def fakes() -> Iterator[tuple[FakeDashScope, FakeOpenAI, FakeNebula]]:
    with (
        FakeDashScope(api_key=DASHSCOPE_KEY) as ds,
        FakeOpenAI(api_key=OPENAI_KEY) as oa,
        FakeNebula(api_key=NEBULA_KEY) as nb,
    ):
        yield ds, oa, nb


@pytest.fixture
def secret_settings(
    make_settings: MakeSettings, fakes: tuple[FakeDashScope, FakeOpenAI, FakeNebula]
) -> Settings:
    ds, oa, nb = fakes
    fast = "poll_interval_s = 0.02\npoll_max_interval_s = 0.05\nmax_retries = 1\n"
    return make_settings(
        f'[mcp]\nauth_token = "{MCP_TOKEN}"\n'
        f'[telegram]\ntoken = "{BOT_TOKEN}"\n'
        f'[vendors.ds]\nkind = "dashscope"\napi_key = "{DASHSCOPE_KEY}"\n'
        f'base_url = "{ds.base_url}"\n{fast}'
        f'[vendors.oa]\nkind = "openai"\napi_key = "{OPENAI_KEY}"\n'
        f'base_url = "{oa.base_url}/v1"\n{fast}'
        f'[vendors.nb]\nkind = "nebula"\napi_key = "{NEBULA_KEY}"\n'
        f'base_url = "{nb.base_url}"\n{fast}'
    )


@contextlib.contextmanager
def everything_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every logger at DEBUG, httpx's and httpcore's included."""
    loggers = ["", "httpx", "httpcore", "retouch", "mcp", "tools", "tests.fakes", "uvicorn"]
    levels = {name: logging.getLogger(name).level for name in loggers}
    for name in loggers:
        logging.getLogger(name).setLevel(logging.DEBUG)
    caplog.set_level(logging.DEBUG)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def echo(key: str) -> str:
    return f"Incorrect API key provided: {key}. Your key {key} was rejected (request with {key})."


async def test_vendor_errors_echoing_keys_never_leak(
    secret_settings: Settings,
    fakes: tuple[FakeDashScope, FakeOpenAI, FakeNebula],
    caplog: pytest.LogCaptureFixture,
) -> None:
    ds, oa, nb = fakes
    ds.inject(
        "create",
        Fault.status(401, error_body("InvalidApiKey", echo(DASHSCOPE_KEY))),
        Fault.status(429, error_body("Throttling.RateQuota", echo(DASHSCOPE_KEY))),
        Fault.status(400, error_body("InvalidParameter", echo(DASHSCOPE_KEY))),
    )
    internal = Fault.status(500, error_body("InternalError", echo(DASHSCOPE_KEY)))
    ds.inject("generation", internal, internal)  # max_retries = 1: both are seen
    oa.inject(
        "edits",
        Fault.status(401, fake_openai.error_body(echo(OPENAI_KEY), code="invalid_api_key")),
        Fault.status(400, fake_openai.error_body(echo(OPENAI_KEY), param="image")),
    )
    nb.inject("generations", fake_nebula.error(401, echo(NEBULA_KEY)))
    image = data_uri(sample("coffee.png"))
    requests = [
        EditRequest(images=[image], function="colorization", vendor="ds"),  # 401
        EditRequest(images=[image], function="colorization", vendor="ds"),  # 429, then 400
        EditRequest(images=[image], prompt="a hat", vendor="ds"),  # 500 then max_retries
        EditRequest(images=[image], prompt="a hat", vendor="oa"),
        EditRequest(images=[image], prompt="a hat", vendor="oa"),
        EditRequest(images=[image], prompt="a hat", vendor="nb"),
    ]
    with everything_logged(caplog):
        ds.fail_with = ("InternalError", echo(DASHSCOPE_KEY))  # a FAILED task echoing it
        async with Client(build_server(secret_settings)) as client:
            texts = []
            for request in [
                *requests,
                EditRequest(images=[image], function="expand", vendor="ds", expand={"left": 1.5}),
            ]:
                args = request.model_dump(mode="json", exclude_none=True)
                result = await client.call_tool("edit_image", {**args, "wait_seconds": 30})
                texts.append(json.dumps(result.model_dump(mode="json")))
            listed = await client.call_tool("list_tasks", {"limit": 20})
        tasks = listed.structured_content["tasks"]
    assert [t["status"] for t in tasks] == ["failed"] * 7, [t["error"] for t in tasks]
    assert {t["error"]["code"] for t in tasks} >= {"auth", "vendor_rejected", "vendor_fault"}
    # The keys really were echoed: every fake saw it in the Authorization header and sent it
    # back in its error body.
    assert any(DASHSCOPE_KEY in (r.headers.get("authorization") or "") for r in ds.requests)
    db = secret_settings.store.path.read_bytes()
    wal = secret_settings.store.path.with_name(secret_settings.store.path.name + "-wal")
    db += wal.read_bytes() if wal.exists() else b""
    logs = "\n".join(
        f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records
    )
    assert any(r.name.startswith("httpx") for r in caplog.records)  # httpx was heard
    assert leaks(json.dumps(tasks)) == []
    assert leaks("\n".join(texts)) == []
    assert leaks(logs) == []
    assert leaks(db.decode("latin-1")) == []


async def test_editor_objects_and_errors_keep_keys_out_of_reprs(
    secret_settings: Settings,
) -> None:
    async with Editor(secret_settings, run_worker=False) as editor:
        shown = [repr(editor.vendors), str(editor.vendors)]
        for vendor in editor.vendors.values():
            shown += [repr(vendor), repr(vendor.settings), str(vendor.settings)]
            shown += [vendor.settings.model_dump_json(), repr(vars(vendor))]
        shown += [repr(secret_settings.vendor_settings()), repr(secret_settings.mcp)]
        shown += [repr(secret_settings.telegram), secret_settings.telegram.model_dump_json()]
        for sub in ("store", "routing", "media", "worker"):
            shown.append(repr(getattr(secret_settings, sub)))
    assert leaks("\n".join(shown)) == []


def test_settings_repr_keeps_keys_out(secret_settings: Settings) -> None:
    assert leaks(repr(secret_settings) + json.dumps(secret_settings.model_dump(mode="json"))) == []


async def test_cli_and_mcp_errors_for_bad_config_keep_keys_out(
    make_settings: MakeSettings,
) -> None:
    from tools.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        make_settings(
            f'[vendors.ds]\nkind = "dashscope"\napi_key = "{DASHSCOPE_KEY}"\nmax_retries = -1\n'
        )
    assert "vendors.ds.max_retries" in err.value.message
    assert leaks(err.value.message + repr(err.value)) == []


# ---- MCP over HTTP: the bearer token and DNS-rebinding protection -----------------------------

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"},
    },
}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@contextlib.asynccontextmanager
async def http_app(settings: Settings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """The real Starlette app (auth and transport security included), its lifespan running,
    called in process through httpx's ASGI transport."""
    app = build_http_app(build_server(settings), settings)
    starlette = starlette_app(app)
    async with starlette.router.lifespan_context(starlette):
        cfg = settings.mcp
        base = f"http://{cfg.host}:{cfg.port}"
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base) as c:
            yield app, c


@pytest.fixture
def public_settings(make_settings: MakeSettings) -> Settings:
    return make_settings(f'[mcp]\nhost = "0.0.0.0"\nport = 8765\nauth_token = "{MCP_TOKEN}"\n')


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer wrong",
        f"Bearer {MCP_TOKEN[:-1]}",
        f"Bearer {MCP_TOKEN}x",
        f"Bearer {MCP_TOKEN.upper()}",
        f"bearer{MCP_TOKEN}",
        f"Basic {MCP_TOKEN}",
        MCP_TOKEN,
        f"Bearer  {MCP_TOKEN}",
    ],
)
async def test_mcp_over_http_beyond_loopback_needs_the_exact_token(
    public_settings: Settings, authorization: str | None
) -> None:
    async with http_app(public_settings) as (_, client):
        headers = dict(MCP_HEADERS)
        if authorization is not None:
            headers["Authorization"] = authorization
        response = await client.post("/mcp", json=INIT, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert leaks(response.text) == []


async def test_the_token_is_compared_in_constant_time(
    public_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(server_http.hmac, "compare_digest", spy)
    async with http_app(public_settings) as (_, client):
        ok = await client.post(
            "/mcp", json=INIT, headers={**MCP_HEADERS, "Authorization": f"Bearer {MCP_TOKEN}"}
        )
        bad = await client.post(
            "/mcp", json=INIT, headers={**MCP_HEADERS, "Authorization": "Bearer nope"}
        )
    assert (ok.status_code, bad.status_code) == (200, 401)
    assert len(compared) == 2


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 421),
        ({"Host": "evil.example:8765"}, 421),
        ({"Host": "0.0.0.0.evil.example"}, 421),
        ({"Origin": "http://evil.example"}, 403),
        ({"Origin": "http://evil.example:8765"}, 403),
        ({"Origin": "null"}, 403),
        ({}, 200),
        ({"Host": "localhost:8765", "Origin": "http://localhost:8765"}, 200),
    ],
)
async def test_dns_rebinding_protection_stays_on_with_a_token(
    public_settings: Settings, headers: dict[str, str], status: int
) -> None:
    auth = {"Authorization": f"Bearer {MCP_TOKEN}"}
    async with http_app(public_settings) as (_, client):
        response = await client.post("/mcp", json=INIT, headers={**MCP_HEADERS, **auth, **headers})
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Host": "evil.example"}, 421),  # a DNS-rebinding page aiming at 127.0.0.1:8765
        ({"Host": "127.0.0.1:8765", "Origin": "http://evil.example"}, 403),
        ({"Host": "127.0.0.1:8765"}, 200),
        ({"Host": "localhost:8765"}, 200),
    ],
)
async def test_loopback_server_refuses_foreign_hosts_without_a_token(
    make_settings: MakeSettings, headers: dict[str, str], status: int
) -> None:
    settings = make_settings("[mcp]\nport = 8765\n")
    async with http_app(settings) as (_, client):
        response = await client.post("/mcp", json=INIT, headers={**MCP_HEADERS, **headers})
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    "path",
    [
        "/health/../mcp",
        "/callbacks/../mcp",
        "/callbacks/..%2fmcp",
        "/healthz",
        "/health/x",
        "//mcp",
        "/MCP",
        "/mcp/",
        "/mcp?x=/health",
    ],
)
async def test_open_paths_do_not_open_mcp(public_settings: Settings, path: str) -> None:
    # Called with the raw path, as a hand-made request would send it (no URL clean-up).
    async with http_app(public_settings) as (app, _):
        raw, _, query = path.partition("?")
        sent: list[dict[str, Any]] = []
        body = json.dumps(INIT).encode()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": raw,
            "raw_path": raw.encode(),
            "query_string": query.encode(),
            "root_path": "",
            "headers": [
                (b"host", b"0.0.0.0:8765"),
                (b"accept", MCP_HEADERS["Accept"].encode()),
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
            "client": ("203.0.113.9", 5000),
            "server": ("0.0.0.0", 8765),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    assert status in (400, 401, 404, 405, 307), (path, status)  # never MCP's answer


async def test_health_and_callbacks_stay_reachable_without_the_token(
    public_settings: Settings,
) -> None:
    async with http_app(public_settings) as (_, client):
        assert (await client.get("/health")).status_code == 200
        answer = await client.post("/callbacks/nope", content=b"{}")
    assert answer.status_code == 400  # reached Retouch, which refused an unknown vendor
    assert answer.json()["code"] in ("invalid_parameter", "unsupported")


def test_beyond_loopback_without_a_token_does_not_start(make_settings: MakeSettings) -> None:
    from tools.errors import ConfigError

    for host in ("0.0.0.0", "::", "192.168.1.10", "example.com"):
        settings = make_settings(f'[mcp]\nhost = "{host}"\n')
        with pytest.raises(ConfigError, match="auth_token"):
            build_http_app(build_server(settings), settings)


async def test_a_finished_flow_records_no_secret(
    secret_settings: Settings, fakes: tuple[FakeDashScope, FakeOpenAI, FakeNebula]
) -> None:
    async with Editor(secret_settings) as editor:
        task = await editor.edit_image(
            EditRequest(images=[data_uri(sample("coffee.png"))], prompt="a hat", vendor="oa"),
            wait_seconds=30,
        )
    assert task.status == TaskStatus.succeeded, task.error
    assert leaks(task.model_dump_json()) == []
