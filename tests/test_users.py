"""Users: several bearer tokens, each naming an owner; every tool and the result resource
keep each owner's tasks to that owner, and another owner's id answers as an unknown one.

Through the SDK's client over streamable HTTP, against the real Starlette app in process
(httpx's ASGI transport), as a remote agent sees it; one test runs a real ``retouch-mcp``.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import PromptReference, ResourceTemplateReference

from server import http as server_http
from server.app import RESULT_TEMPLATE, build_server
from server.http import build_http_app, starlette_app
from tests.conftest import MakeSettings, data_uri, png
from tests.mcp_wire import Wire
from tests.servers import env, free_port, start_http_server, wait_healthy
from tools import cli
from tools.config import Settings
from tools.errors import ConfigError
from tools.models import LOCAL_OWNER, EditRequest
from tools.service import Editor

ALICE = "alice_tok_4Rt7SECRETusersA1"
BOB = "bob_tok_9Vx2SECRETusersB2xx"
CAROL = "carol_tok_3Hn5SECRETusersC3"  # the default user, through mcp.auth_token
UNKNOWN = "0123456789abcdef" * 2
BASE = "http://127.0.0.1:8765"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def users_toml(*names: str) -> str:
    """alice by token, bob by token_sha256 (the file holds no secret of his), carol as
    auth_token's user."""
    out = f'[mcp]\nport = 8765\nauth_token = "{CAROL}"\n'
    if "alice" in names:
        out += f'[[mcp.users]]\nname = "alice"\ntoken = "{ALICE}"\n'
    if "bob" in names:
        out += f'[[mcp.users]]\nname = "bob"\ntoken_sha256 = "{sha256(BOB)}"\n'
    return out


Connect = Callable[[str], contextlib.AbstractAsyncContextManager[Client]]


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[Connect, Editor, Any]]:
    """The real HTTP app, its lifespan running; ``connect(token)`` opens an SDK client."""
    app = build_http_app(build_server(settings), settings)
    starlette = starlette_app(app)

    @contextlib.asynccontextmanager
    async def connect(token: str) -> AsyncIterator[Client]:
        http = httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app),
            base_url=BASE,
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
        )
        async with http, Client(streamable_http_client(f"{BASE}/mcp", http_client=http)) as c:
            yield c

    async with starlette.router.lifespan_context(starlette):
        yield connect, starlette.state.editor, app


async def post_mcp(
    app: Any, authorization: str | None, body: Any = None, **headers: str
) -> httpx.Response:
    """A bare POST to /mcp with this Authorization header (None: without one)."""
    if authorization is not None:
        headers["Authorization"] = authorization
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as h:
        return await h.post("/mcp", json=body or {}, headers=headers)


async def edit(client: Client, **extra: Any) -> dict[str, Any]:
    args = {"images": [data_uri(png())], "function": "lineart", "wait_seconds": 30, **extra}
    result = await client.call_tool("edit_image", args)
    assert not result.is_error, result.content
    return result.structured_content  # type: ignore[return-value]


def same(a: str, a_id: str, b: str, b_id: str) -> bool:
    """Two answers are the same but for the id each names."""
    return a.replace(a_id, "<id>") == b.replace(b_id, "<id>")


def text(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def team(make_settings: MakeSettings) -> Settings:
    return make_settings(users_toml("alice", "bob"))


# ---- isolation, tool by tool -------------------------------------------------------------------


async def test_each_user_sees_only_its_own_tasks_and_results(team: Settings) -> None:
    async with serve(team) as (connect, editor, _):
        async with connect(ALICE) as alice, connect(BOB) as bob, connect(CAROL) as carol:
            a = await edit(alice)
            b = await edit(bob)
            c = await edit(carol)
            assert a["status"] == b["status"] == c["status"] == "succeeded"
            mine = {
                name: [
                    t["id"]
                    for t in (await who.call_tool("list_tasks", {})).structured_content["tasks"]
                ]
                for name, who in (("alice", alice), ("bob", bob), ("carol", carol))
            }
            assert mine == {"alice": [a["id"]], "bob": [b["id"]], "carol": [c["id"]]}

            # check_task: another owner's id answers exactly as an unknown id
            own = await alice.call_tool("check_task", {"task_id": a["id"]})
            assert not own.is_error and own.structured_content["id"] == a["id"]
            foreign = await alice.call_tool("check_task", {"task_id": b["id"]})
            unknown = await alice.call_tool("check_task", {"task_id": UNKNOWN})
            assert foreign.is_error and unknown.is_error
            assert same(text(foreign), b["id"], text(unknown), UNKNOWN), text(foreign)
            assert foreign.structured_content == unknown.structured_content

            # cancel_task: the same, and bob's task is untouched
            foreign = await alice.call_tool("cancel_task", {"task_id": b["id"]})
            unknown = await alice.call_tool("cancel_task", {"task_id": UNKNOWN})
            assert foreign.is_error and unknown.is_error
            assert same(text(foreign), b["id"], text(unknown), UNKNOWN)
            assert (await editor.store.get(b["id"])).cancel_requested == 0

            # the result resource: the same error, code and message
            uri = f"retouch://tasks/{a['id']}/0"
            assert (await alice.read_resource(uri)).contents[0].blob  # type: ignore[union-attr]
            errors = []
            for task_id in (a["id"], UNKNOWN):
                with pytest.raises(MCPError) as err:
                    await bob.read_resource(f"retouch://tasks/{task_id}/0")
                errors.append(err.value)
            assert errors[0].error.code == errors[1].error.code
            assert same(errors[0].error.message, a["id"], errors[1].error.message, UNKNOWN)

            # an earlier result as an input: only the owner's
            chained = await edit(alice, images=[uri])
            assert chained["status"] == "succeeded"
            answers = []
            for task_id in (a["id"], UNKNOWN):
                result = await bob.call_tool(
                    "edit_image",
                    {"images": [f"retouch://tasks/{task_id}/0"], "function": "lineart"},
                )
                assert result.is_error
                answers.append(text(result))
            assert same(answers[0], a["id"], answers[1], UNKNOWN), answers
            answers = []
            for task_id in (a["id"], UNKNOWN):
                mask = f"retouch://tasks/{task_id}/0"
                result = await bob.call_tool(
                    "edit_image",
                    {"images": [data_uri(png())], "mask": mask, "function": "remove_watermark"},
                )
                assert result.is_error
                answers.append(text(result))
            assert same(answers[0], a["id"], answers[1], UNKNOWN), answers
            assert "no task" in answers[0]
        assert len(await editor.list_tasks(limit=100)) == 4  # bob's refused edits made none


async def test_an_upload_is_usable_by_its_uploader_only(team: Settings) -> None:
    async with serve(team) as (connect, _, app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as h:
            sent = await h.post(
                "/uploads",
                content=png(),
                headers={"Authorization": f"Bearer {ALICE}", "Content-Type": "image/png"},
            )
        assert sent.status_code == 201, sent.text
        uri = sent.json()["uri"]
        unknown = "retouch://uploads/" + UNKNOWN
        async with connect(ALICE) as alice, connect(BOB) as bob:
            assert (await edit(alice, images=[uri]))["status"] == "succeeded"
            answers = []
            for source in (uri, unknown):
                result = await bob.call_tool(
                    "edit_image", {"images": [source], "function": "lineart"}
                )
                assert result.is_error
                answers.append(text(result))
    assert same(answers[0], uri, answers[1], unknown), answers


async def test_mcp_tasks_are_their_owners_alone_in_both_forms(team: Settings) -> None:
    async with serve(team) as (_, _, app), contextlib.AsyncExitStack() as stack:

        async def wire(token: str) -> Wire:
            http = httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url=BASE,
                headers={"Authorization": f"Bearer {token}"},
                timeout=60,
            )
            await stack.enter_async_context(http)
            return Wire(http, f"{BASE}/mcp")

        alice, bob = await wire(ALICE), await wire(BOB)
        call = {
            "name": "edit_image",
            "arguments": {"images": [data_uri(png())], "function": "lineart"},
        }
        task_id = (await alice.modern("tools/call", call))["result"]["taskId"]
        assert "result" in await alice.modern("tasks/get", {"taskId": task_id})
        for method in ("tasks/get", "tasks/cancel"):
            foreign = await bob.modern(method, {"taskId": task_id})
            unknown = await bob.modern(method, {"taskId": UNKNOWN})
            assert "error" in foreign and foreign["error"] == unknown["error"], method

        await alice.initialize()
        await bob.initialize()
        legacy_id = (await alice.legacy("tools/call", {**call, "task": {"ttl": 60_000}}))["result"][
            "task"
        ]["taskId"]
        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            foreign = await bob.legacy(method, {"taskId": legacy_id})
            unknown = await bob.legacy(method, {"taskId": UNKNOWN})
            assert "error" in foreign and foreign["error"] == unknown["error"], method
        listed = {t["taskId"] for t in (await bob.legacy("tasks/list"))["result"]["tasks"]}
        mine = {t["taskId"] for t in (await alice.legacy("tasks/list"))["result"]["tasks"]}
    assert listed == set() and mine == {task_id, legacy_id}


async def test_a_queued_task_is_canceled_by_its_owner_only(team: Settings) -> None:
    async with serve(team) as (connect, editor, _):
        # A task no worker takes (its vendor is not enabled), so it stays queued.
        record = await editor.store.create_task(
            function="lineart",
            vendor="nowhere",
            prompt="",
            n=1,
            request={"images": ["x"]},
            inputs=[],
            mask=None,
            owner="bob",
        )
        async with connect(ALICE) as alice, connect(BOB) as bob:
            refused = await alice.call_tool("cancel_task", {"task_id": record.id})
            assert refused.is_error
            assert (await editor.store.get(record.id)).status == "queued"
            done = await bob.call_tool("cancel_task", {"task_id": record.id})
            assert not done.is_error and done.structured_content["status"] == "canceled"


async def test_an_idempotency_key_belongs_to_its_owner(team: Settings) -> None:
    async with serve(team) as (connect, _, _), connect(ALICE) as alice, connect(BOB) as bob:
        first = await edit(alice, idempotency_key="agent-7")
        again = await edit(alice, idempotency_key="agent-7")
        theirs = await edit(bob, idempotency_key="agent-7", function="adjust", prompt="rotate 90")
    assert first["id"] == again["id"]
    assert theirs["id"] != first["id"] and theirs["function"] == "adjust"


async def test_stdio_and_the_cli_act_as_the_local_owner_who_owns_tasks_from_before_owners(
    team: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    async with Editor(team, run_worker=False) as editor:  # a task stored with no owner
        old = await editor.edit_image(EditRequest(images=[data_uri(png())], function="lineart"))
        assert (await editor.store.get(old.id)).owner is None
    async with Client(build_server(team)) as local:  # in memory, as over stdio
        listed = await local.call_tool("list_tasks", {})
        assert [t["id"] for t in listed.structured_content["tasks"]] == [old.id]
        made = await edit(local)
        assert (await local.call_tool("check_task", {"task_id": old.id})).is_error is False
    async with serve(team) as (connect, editor, _):
        assert (await editor.store.get(made["id"])).owner == LOCAL_OWNER
        async with connect(ALICE) as alice:
            listed = await alice.call_tool("list_tasks", {})
            assert listed.structured_content["tasks"] == []
            assert (await alice.call_tool("check_task", {"task_id": old.id})).is_error
    capsys.readouterr()
    assert await cli.run(cli.parser().parse_args(["--config", team.source, "tasks"])) == 0
    listed_by_cli = {line.split()[0] for line in capsys.readouterr().out.splitlines()}
    assert listed_by_cli == {old.id, made["id"]}


# ---- tokens --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        f"Bearer {UNKNOWN}",
        f"Bearer {sha256(ALICE)}",  # the hash is not the token
        f"Bearer {ALICE}{BOB}",
        f"Bearer {ALICE[:-1]}",
        f"Bearer {ALICE},{BOB}",
        f"Basic {ALICE}",
        "Bearer ",
    ],
)
async def test_an_unknown_token_is_refused(team: Settings, authorization: str | None) -> None:
    async with serve(team) as (_, _, app):
        response = await post_mcp(app, authorization)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_removed_users_token_no_longer_opens_anything(
    make_settings: MakeSettings,
) -> None:
    settings = make_settings(users_toml("alice", "bob"))
    async with serve(settings) as (connect, _, _), connect(BOB) as bob:
        task = await edit(bob)
    settings = make_settings(users_toml("alice"))  # bob leaves the team
    async with serve(settings) as (connect, _, app):
        assert (await post_mcp(app, f"Bearer {BOB}")).status_code == 401
        async with connect(ALICE) as alice:
            assert (await alice.call_tool("check_task", {"task_id": task["id"]})).is_error


async def test_every_user_is_compared_on_every_request(
    team: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(len(a))
        return real(a, b)

    monkeypatch.setattr(server_http.hmac, "compare_digest", spy)
    async with serve(team) as (_, _, app):
        for token in (ALICE, BOB, CAROL, UNKNOWN):
            calls.clear()
            await post_mcp(app, f"Bearer {token}")
            # three users, three comparisons of 32-byte digests, whoever matched
            assert calls == [32, 32, 32], token


def test_users_are_checked_when_the_config_is_read(make_settings: MakeSettings) -> None:
    def refused(toml: str) -> str:
        with pytest.raises(ConfigError) as err:
            make_settings(toml)
        assert not any(t in err.value.message for t in (ALICE, BOB, CAROL)), err.value.message
        return err.value.message

    user = '[[mcp.users]]\nname = "{}"\ntoken = "{}"\n'
    assert "name" in refused(user.format("", ALICE))
    assert "not a user name" in refused(user.format("al ice", ALICE))
    assert "not a user name" in refused(user.format("tg:42", ALICE))
    assert "reserved" in refused(user.format("Local", ALICE))
    assert "at least 16" in refused(user.format("alice", "short"))
    assert "may hold" in refused(user.format("alice", "x" * 16 + " y"))
    assert "two users are named 'Alice'" in refused(
        user.format("alice", ALICE) + user.format("Alice", BOB)
    )
    assert "exactly one of token and token_sha256" in refused('[[mcp.users]]\nname = "alice"\n')
    assert "exactly one of token and token_sha256" in refused(
        user.format("alice", ALICE) + f'token_sha256 = "{sha256(ALICE)}"\n'
    )
    hex_error = "64 hex digits"
    assert hex_error in refused(f'[[mcp.users]]\nname = "a"\ntoken_sha256 = "{"ab" * 31}"\n')
    assert hex_error in refused(f'[[mcp.users]]\nname = "a"\ntoken_sha256 = "{"zz" * 32}"\n')
    assert "has the token of user 'alice'" in refused(
        user.format("alice", ALICE)
        + f'[[mcp.users]]\nname = "bob"\ntoken_sha256 = "{sha256(ALICE)}"\n'
    )
    assert "mcp.auth_token has the token of user 'alice'" in refused(
        f'[mcp]\nauth_token = "{ALICE}"\n' + user.format("alice", ALICE)
    )
    assert "'default' names mcp.auth_token's user" in refused(
        f'[mcp]\nauth_token = "{CAROL}"\n' + user.format("default", ALICE)
    )
    fine = make_settings(user.format("alice", ALICE) + user.format("a.b-c_9", BOB))
    assert [u.name for u in fine.mcp.accounts()] == ["alice", "a.b-c_9"]
    assert ALICE not in repr(fine.mcp) + fine.mcp.model_dump_json()


def test_beyond_loopback_a_user_is_enough(make_settings: MakeSettings) -> None:
    settings = make_settings(
        f'[mcp]\nhost = "0.0.0.0"\n[[mcp.users]]\nname = "bob"\ntoken_sha256 = "{sha256(BOB)}"\n'
    )
    build_http_app(build_server(settings), settings)
    with pytest.raises(ConfigError, match=r"\[\[mcp.users\]\]"):
        open_settings = make_settings('[mcp]\nhost = "0.0.0.0"\n')
        build_http_app(build_server(open_settings), open_settings)


@pytest.mark.parametrize(
    ("host", "status"),
    [("retouch.example.com", 200), ("127.0.0.1:8765", 200), ("evil.example", 421)],
)
async def test_on_loopback_behind_a_proxy_the_public_host_is_accepted(
    make_settings: MakeSettings, host: str, status: int
) -> None:
    settings = make_settings(
        users_toml("alice").replace(
            "[mcp]\n", '[mcp]\npublic_url = "https://retouch.example.com"\n'
        )
    )
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "proxy", "version": "1"},
        },
    }
    async with serve(settings) as (_, _, app):
        response = await post_mcp(
            app, f"Bearer {ALICE}", init, Host=host, Accept="application/json, text/event-stream"
        )
    assert response.status_code == status, response.text


# ---- completion and the resource's type ----------------------------------------------------


async def test_completion_offers_functions_vendors_and_the_askers_own_tasks(
    team: Settings,
) -> None:
    prompt = PromptReference(type="ref/prompt", name="edit_image")
    template = ResourceTemplateReference(type="ref/resource", uri=RESULT_TEMPLATE)
    async with serve(team) as (connect, editor, _):
        able = {f.name for f in editor.list_functions() if f.vendors}
        async with connect(ALICE) as alice, connect(BOB) as bob:
            a = await edit(alice)
            b = await edit(bob)

            async def values(
                client: Client, ref: Any, name: str, value: str = "", **given: str
            ) -> list[str]:
                answer = await client.complete(ref, {"name": name, "value": value}, given or None)
                return answer.completion.values

            assert set(await values(alice, prompt, "function")) == able
            assert await values(alice, prompt, "function", "line") == ["lineart"]
            assert await values(alice, prompt, "vendor") == ["local"]
            assert await values(alice, prompt, "vendor", function="lineart") == ["local"]
            assert await values(alice, prompt, "vendor", function="colorization") == []
            assert await values(alice, prompt, "function", vendor="nowhere") == []
            assert await values(alice, template, "task_id") == [a["id"]]
            assert await values(bob, template, "task_id") == [b["id"]]
            assert await values(bob, template, "task_id", a["id"][:6]) in ([], [b["id"]])
            assert await values(alice, template, "index", task_id=a["id"]) == ["0"]
            assert await values(bob, template, "index", task_id=a["id"]) == []
            # the prompt the arguments complete for
            shown = await alice.get_prompt(
                "edit_image", {"image": "retouch://tasks/x/0", "function": "lineart"}
            )
            assert '"function": "lineart"' in shown.messages[0].content.text  # type: ignore[union-attr]
    async with Client(build_server(team)) as local:  # in memory: the local owner's tasks
        answer = await local.complete(template, {"name": "task_id", "value": ""})
        assert answer.completion.values == []


async def test_a_result_resource_carries_its_image_type(team: Settings) -> None:
    async with serve(team) as (connect, _, _), connect(ALICE) as alice:
        types = []
        for fmt in ("png", "jpeg"):  # the local engine keeps these two
            picture = data_uri(image_as(fmt), f"image/{fmt}")
            task = await edit(alice, images=[picture], function="adjust", prompt="rotate 90")
            [result] = task["results"]
            read = await alice.read_resource(result["uri"])
            types.append((read.contents[0].mime_type, result["mime_type"]))
        templates = await alice.list_resource_templates()
    assert types == [("image/png",) * 2, ("image/jpeg",) * 2]
    [listed] = templates.resource_templates
    assert listed.mime_type is None  # results come in several types: the template claims none


def image_as(fmt: str) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 120, 200)).save(buf, fmt.upper())
    return buf.getvalue()


# ---- a real server: tokens never logged ----------------------------------------------------


async def test_a_real_server_logs_no_token(make_settings: MakeSettings, tmp_path: Path) -> None:
    port = free_port()
    settings = make_settings(users_toml("alice", "bob").replace("port = 8765", f"port = {port}"))
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        proc = start_http_server(
            settings.source, variables={**env(), "RETOUCH_LOG_LEVEL": "DEBUG"}, output=out
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        for token in (f"{ALICE}x", UNKNOWN, BOB[:-1]):
            bad = httpx.post(f"{base}/mcp", json={}, headers={"Authorization": f"Bearer {token}"})
            assert bad.status_code == 401
        for token in (ALICE, BOB, CAROL):
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
            async with http, Client(streamable_http_client(f"{base}/mcp", http_client=http)) as c:
                assert (await edit(c))["status"] == "succeeded"
    finally:
        proc.terminate()
        proc.wait(10)
    output = log.read_text(errors="replace")
    assert "DEBUG" in output  # it was talking
    pieces = [p for t in (ALICE, BOB, CAROL) for p in (t, t.split("SECRET")[1], sha256(t))]
    assert [p for p in pieces if p in output] == []
    assert not re.search(r"authorization", output, re.I)
