"""Users added and revoked at run time: ``retouch users list|add|revoke|budget`` through
``tools.cli.main``, the bearer guard accepting them beside the config file's (in constant
time over all), and a real ``retouch-mcp`` process accepting a token, then refusing it once
revoked, within the guard's few seconds of caching."""

from __future__ import annotations

import hashlib
import hmac
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from server import http as server_http
from tests.conftest import MakeSettings, png
from tests.servers import env, free_port, start_http_server, wait_healthy
from tests.test_users import ALICE, BOB, CAROL, edit, post_mcp, serve, users_toml
from tools import cli
from tools.config import Settings

DASHSCOPE = '[vendors.dashscope]\nkind = "dashscope"\napi_key = "sk-x"\n'  # bills in CNY
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
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}


def retouch(
    settings: Settings, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """``retouch --config <settings> args…``: exit code, stdout, stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as done:
        cli.main(["--config", settings.source, *args])
    out = capsys.readouterr()
    return int(done.value.code or 0), out.out, out.err


def added(settings: Settings, capsys: pytest.CaptureFixture[str], name: str) -> str:
    code, out, err = retouch(settings, capsys, "users", "add", name)
    assert code == 0, err
    assert "shown this once" in err
    [token] = out.split()
    return token


# ---- the command line ------------------------------------------------------------------------


def test_users_are_added_listed_revoked_and_budgeted_from_the_terminal(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = make_settings(users_toml("alice") + DASHSCOPE)
    token = added(settings, capsys, "bob")
    assert len(token) >= 43 and token != added(settings, capsys, "dave")
    stored = sqlite3.connect(settings.store.path).execute("SELECT name, token_sha256 FROM users")
    assert dict(stored.fetchall())["bob"] == hashlib.sha256(token.encode()).hexdigest()
    database = settings.store.path.read_bytes() + wal(settings.store.path)
    assert token.encode() not in database  # only its hash is kept

    for name, refusal in [
        ("BOB", "a user named 'BOB' exists already; revoke it first"),
        ("alice", "'alice' is a user of the config file already"),
        ("local", "'local' is reserved"),
        ("tg:42", "not a user name"),
    ]:
        code, out, err = retouch(settings, capsys, "users", "add", name)
        assert (code, out) == (2, "") and refusal in err, err

    for name, refusal in [
        ("alice", "'alice' is a user of the config file ("),
        ("default", "remove mcp.auth_token there"),
        ("nobody", "no user 'nobody' to revoke"),
    ]:
        code, _, err = retouch(settings, capsys, "users", "revoke", name)
        assert code == 2 and refusal in err, err
    assert (
        "remove its [[mcp.users]] entry there and restart"
        in retouch(settings, capsys, "users", "revoke", "Alice")[2]
    )

    code, out, _ = retouch(settings, capsys, "users", "budget", "bob", "--day", "5", "CNY")
    assert code == 0 and "today (UTC):     0 of 5 CNY (5 left)" in out
    code, out, _ = retouch(
        settings, capsys, "users", "budget", "bob", "--month", "cny", "50", "--per-hour", "3"
    )
    assert code == 0 and "0 of 50 CNY" in out and "0 of 5 CNY" in out
    assert "edits last hour: 0 of 3" in out and "at once:         0\n" in out + "\n"
    for args, refusal in [
        (["--concurrent", "-1"], "--concurrent: Input should be greater than or equal to 0"),
        (["--day", "5", "USD"], "no vendor here bills in USD (they bill in CNY)"),
        (["--day", "five", "CNY"], "--day: Input should be a valid number"),
    ]:
        code, _, err = retouch(settings, capsys, "users", "budget", "bob", *args)
        assert code == 2 and refusal in err, err
    code, out, _ = retouch(settings, capsys, "users", "budget", "tg:42", "--concurrent", "0")
    assert code == 0 and "budget of tg:42:" in out and "at once:         0 of 0" in out
    code, out, _ = retouch(settings, capsys, "users", "budget", "bob", "--clear")
    assert code == 0 and "today (UTC):     nothing;" in out and "edits last hour: 0\n" in out

    assert retouch(settings, capsys, "users", "revoke", "bob")[0] == 0
    code, out, _ = retouch(settings, capsys, "users", "list")
    rows = [line.split()[:3] for line in out.splitlines()]
    assert rows == [
        ["alice", "config", "active"],
        ["default", "config", "active"],
        ["bob", "store", "revoked"],
        ["dave", "store", "active"],
    ]
    assert added(settings, capsys, "bob") != token  # a revoked name, added again


def wal(path: Path) -> bytes:
    log = path.with_name(path.name + "-wal")
    return log.read_bytes() if log.exists() else b""


# ---- the guard ------------------------------------------------------------------------------


@pytest.fixture
def no_caching(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(server_http, "ADDED_USERS_TTL_S", 0.0)


async def test_users_added_at_run_time_are_accepted_beside_the_configs(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, no_caching: None
) -> None:
    settings = make_settings(users_toml("alice", "bob"))
    async with serve(settings) as (connect, editor, app):
        _, dave = await editor.users.add("dave")
        _, erin = await editor.users.add("erin")
        await editor.users.revoke("erin")
        async with connect(dave) as client:
            task = await edit(client)
            listed = await client.call_tool("list_tasks", {})
        assert [t["id"] for t in listed.structured_content["tasks"]] == [task["id"]]  # type: ignore[index]
        assert (await editor.store.get(task["id"])).owner == "dave"
        assert (await post_mcp(app, f"Bearer {erin}")).status_code == 401

        calls: list[int] = []
        real = hmac.compare_digest

        def spy(a: bytes, b: bytes) -> bool:
            calls.append(len(a))
            return real(a, b)

        monkeypatch.setattr(server_http.hmac, "compare_digest", spy)
        for token in (ALICE, BOB, CAROL, dave, erin, "x" * 40):
            calls.clear()
            await post_mcp(app, f"Bearer {token}")
            assert calls == [32] * 5, token  # three in the config, two added (one revoked)


async def test_on_loopback_the_server_is_open_until_a_user_is_added(
    make_settings: MakeSettings, no_caching: None
) -> None:
    settings = make_settings()
    async with serve(settings) as (_, editor, app):
        assert (await post_mcp(app, None, INIT, **MCP_HEADERS)).status_code == 200
        _, token = await editor.users.add("bob")
        assert (await post_mcp(app, None, INIT, **MCP_HEADERS)).status_code == 401
        assert (await post_mcp(app, f"Bearer {token}", INIT, **MCP_HEADERS)).status_code == 200
        await editor.users.revoke("bob")
        # revoked, bob is no one; and the server stays closed: users are managed now
        assert (await post_mcp(app, f"Bearer {token}", INIT, **MCP_HEADERS)).status_code == 401
        assert (await post_mcp(app, None, INIT, **MCP_HEADERS)).status_code == 401


async def test_a_store_that_cannot_be_read_refuses_with_503(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch, no_caching: None
) -> None:
    """A token that may be an added user's gets 503 while the users cannot be read; a user
    of the config file needs no database to be known (its route then answers for itself)."""
    async with serve(make_settings(users_toml("alice"))) as (_, editor, app):

        async def down() -> list[tuple[str | None, bytes]]:
            raise OSError("database is locked")

        monkeypatch.setattr(editor.users, "digests", down)
        answer = await post_mcp(app, f"Bearer {BOB}")
        known = await post_mcp(app, f"Bearer {ALICE}")
    assert answer.status_code == 503 and answer.headers["retry-after"] == "5"
    assert "alice" not in answer.text and "bob" not in answer.text
    assert known.status_code not in (401, 503), known.text  # past auth: MCP judges the body


# ---- a real server ----------------------------------------------------------------------------


def test_a_real_server_accepts_an_added_token_then_refuses_it_once_revoked(
    make_settings: MakeSettings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    settings = make_settings(users_toml("alice").replace("port = 8765", f"port = {port}"))
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = start_http_server(
            settings.source, variables={**env(), "RETOUCH_LOG_LEVEL": "DEBUG"}, output=out
        )

    def status(token: str) -> int:
        headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
        return httpx.post(f"{base}/mcp", json=INIT, headers=headers, timeout=10).status_code

    def within(seconds: float, token: str, expected: int) -> float:
        start = time.monotonic()
        while (got := status(token)) != expected:
            assert time.monotonic() - start < seconds, f"still {got}"
            time.sleep(0.1)
        return time.monotonic() - start

    try:
        wait_healthy(proc, base)
        token = added(settings, capsys, "bob")
        within(server_http.ADDED_USERS_TTL_S + 3, token, 200)
        assert status(ALICE) == 200
        uploaded = httpx.post(
            f"{base}/uploads",
            content=png(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "image/png"},
        )
        assert uploaded.status_code == 201, uploaded.text
        assert retouch(settings, capsys, "users", "revoke", "bob")[0] == 0
        waited = within(server_http.ADDED_USERS_TTL_S + 3, token, 401)
        assert waited <= server_http.ADDED_USERS_TTL_S + 1
        assert status(ALICE) == 200
    finally:
        proc.terminate()
        proc.wait(10)
    output = log.read_text(errors="replace")
    assert "DEBUG" in output
    assert token not in output and hashlib.sha256(token.encode()).hexdigest() not in output
