"""The console without a browser: sign-in, sessions and CSRF, every route refused without a
session, the bearer token and the console's cookie each kept to their side, a sign-out
(and a token taken out of the config) holding in every process on the store, bad inputs,
what prompts, file names and vendor errors become in the HTML (text, never markup), a
task's logged steps with a retry and its error, and the statistics of the vendors and costs
pages, rate limits included."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from server.console import stats
from server.console.routes import MAX_BODY
from tests.conftest import MakeSettings, data_uri, png, sample
from tests.fakes.dashscope import FakeDashScope, error_body
from tests.fakes.http import Fault
from tests.optional import needs
from tests.pg import fresh_url
from tests.test_e2e_vendors import KEY, dashscope_table
from tests.test_users import ALICE, BASE, post_mcp, serve, users_toml
from tools import limits, media
from tools.config import Settings
from tools.errors import ConfigError
from tools.models import EditRequest, TaskStatus
from tools.service import Editor
from tools.store.base import RateWaits, TaskSummary

OPERATOR = "operator_tok_7Kp2SECRETconsole"
ROUTES = [
    ("GET", "/console"),
    ("GET", "/console/tasks"),
    ("GET", "/console/api/tasks"),
    ("GET", "/console/tasks/" + "a" * 32),
    ("GET", "/console/api/tasks/" + "a" * 32),
    ("GET", "/console/thumbs/" + "a" * 32 + "/input/0"),
    ("POST", "/console/tasks/" + "a" * 32 + "/cancel"),
    ("POST", "/console/tasks/" + "a" * 32 + "/again"),
    ("GET", "/console/vendors"),
    ("GET", "/console/costs"),
    ("GET", "/console/users"),
    ("POST", "/console/users/revoke"),
    ("POST", "/console/budgets"),
    ("POST", "/console/logout"),
]
XSS = '<script>alert("x")</script><img src=x onerror=alert(1)>'


def console_toml(extra: str = "") -> str:
    return users_toml("alice") + f'[console]\ntokens = ["{OPERATOR}"]\n' + extra


@pytest.fixture
def settings_console(make_settings: MakeSettings) -> Settings:
    return make_settings(console_toml())


@contextlib.asynccontextmanager
async def console(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, Editor, Any]]:
    async with serve(settings) as (_, editor, app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            yield client, editor, app


async def sign_in(client: httpx.AsyncClient, token: str = OPERATOR) -> httpx.Response:
    form = await client.get("/console/login")
    nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert nonce, form.text
    return await client.post("/console/login", data={"csrf": nonce[1], "token": token})


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found[1]


async def queued_task(editor: Editor, **extra: Any) -> str:
    """A task for a vendor no worker serves: it stays queued."""
    sha = await editor.store.put_blob(media.inspect(png(), media.MediaPolicy()))
    args: dict[str, Any] = {
        "function": "adjust",
        "vendor": "nowhere",
        "prompt": "p",
        "n": 1,
        "request": {"images": ["x"], "function": "adjust"},
        "inputs": [sha],
        "mask": None,
        **extra,
    }
    return (await editor.store.create_task(**args)).id


async def test_every_route_is_refused_without_a_session(settings_console: Settings) -> None:
    async with console(settings_console) as (client, _, _):
        for method, path in ROUTES:
            answer = await client.request(method, path, data={"csrf": "x"})
            if method == "GET" and "/api/" not in path and "/thumbs/" not in path:
                assert answer.status_code == 303, path
                assert answer.headers["location"] == "/console/login"
            else:
                assert answer.status_code == 401, (method, path, answer.text)
            assert "default-src 'none'" in answer.headers["content-security-policy"]
        # the MCP users' bearer token opens nothing here
        for method, path in ROUTES:
            answer = await client.request(
                method, path, headers={"Authorization": f"Bearer {ALICE}"}
            )
            assert answer.status_code in (303, 401), path


async def test_sign_in_sets_a_strict_cookie_and_signing_out_ends_the_session(
    settings_console: Settings,
) -> None:
    async with console(settings_console) as (client, _, app):
        wrong = await sign_in(client, "not_the_operator_token_at_all")
        assert wrong.status_code == 401 and "not an operator" in wrong.text
        signed = await sign_in(client)
        assert signed.status_code == 303 and signed.headers["location"] == "/console/tasks"
        cookie = next(c for c in signed.headers.get_list("set-cookie") if "retouch_console=" in c)
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/console" in cookie
        assert "Secure" not in cookie  # plain http here; https public_url adds it
        page = await client.get("/console/tasks")
        assert page.status_code == 200 and 'id="tasks"' in page.text
        csp = page.headers["content-security-policy"]
        assert "script-src 'sha256-" in csp and "unsafe" not in csp
        assert "img-src 'self' data:" in csp
        assert "http" not in csp and not re.search(r'(src|href|action)="(https?:)?//', page.text)

        # the console's cookie is not a bearer token: /mcp refuses it
        session = client.cookies.get("retouch_console")
        assert session
        assert (await post_mcp(app, None, Cookie=f"retouch_console={session}")).status_code == 401

        # an action without its CSRF token, or with another, is refused
        assert (await client.post("/console/logout")).status_code == 403
        assert (await client.post("/console/logout", data={"csrf": "x" * 43})).status_code == 403
        assert (await client.get("/console/tasks")).status_code == 200  # still signed in

        out = await client.post("/console/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303 and out.headers["location"] == "/console/login"
        client.cookies.set("retouch_console", session, path="/console")  # replayed: refused
        assert (await client.get("/console/tasks")).status_code == 303
        assert (await client.get("/console/api/tasks")).status_code == 401


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=needs("postgres"))])
async def test_a_sign_out_holds_in_every_process_on_the_store(
    make_settings: MakeSettings, backend: str
) -> None:
    """Two server apps on one store (as two processes would be) share sign-ins: a session
    opened on one opens the other, and signing out on either ends it on both. A third,
    whose config no longer holds the operator's token, refuses that token's sessions."""
    first = make_settings(console_toml())
    second = make_settings(console_toml(), name="second.toml")
    other = '[console]\ntokens = ["another_operator_token_42"]\n'
    third = make_settings(users_toml("alice") + other, name="third.toml")
    if backend == "postgres":
        url = await fresh_url()
        for settings in (first, second, third):
            settings.store.url = SecretStr(url)
    async with console(first) as (a, _, _), console(second) as (b, _, _):
        async with console(third) as (c, _, _):
            assert (await sign_in(a)).status_code == 303
            session = a.cookies.get("retouch_console")
            assert session
            for client in (b, c):
                client.cookies.set("retouch_console", session, path="/console")
            page = await b.get("/console/tasks")
            assert page.status_code == 200  # the other process knows the session
            assert (await c.get("/console/tasks")).status_code == 303  # not its token
            assert (await c.get("/console/api/tasks")).status_code == 401

        out = await b.post("/console/logout", data={"csrf": csrf_of(page.text)})
        assert out.status_code == 303
        assert (await a.get("/console/tasks")).status_code == 303  # ended everywhere
        assert (await a.get("/console/api/tasks")).status_code == 401
        again = await sign_in(a)  # a new sign-in works on both again
        assert again.status_code == 303
        b.cookies.set("retouch_console", a.cookies.get("retouch_console") or "", path="/console")
        assert (await b.get("/console/api/tasks")).status_code == 200


async def test_a_retry_and_its_error_are_on_the_task_page_as_text(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake DashScope answers the first submission 500 (a message with markup in it),
    then accepts it: the task's page lists queued, claimed, the retry with its code and
    message (escaped), submitted with the vendor's task id, the polls (alike ones in one
    row; the last, which brought the result, is the download), the download and the end."""
    monkeypatch.setattr(limits, "BACKOFF_BASE_S", 0.01)
    with FakeDashScope(api_key=KEY) as fake:
        settings = make_settings(console_toml() + dashscope_table("dashscope", fake))
        fake.task_plan = ["PENDING"] + ["RUNNING"] * 5 + ["SUCCEEDED"]
        fake.inject("create", Fault.status(500, error_body("InternalError", f"busy {XSS}")))
        async with console(settings) as (client, editor, _):
            await sign_in(client)
            request = EditRequest(
                images=[data_uri(sample("coffee.png"))],
                function="colorization",
                vendor="dashscope",
                prompt="warm tones",
            )
            task = await editor.edit_image(request, owner="alice", wait_seconds=60)
            assert task.status == TaskStatus.succeeded, task.error
            record = await editor.store.get(task.id)
            page = (await client.get(f"/console/tasks/{task.id}")).text
    timeline = page.split('id="timeline">', 1)[1].split("</ol>", 1)[0]
    kinds = re.findall(r'<li data-kind="([a-z]+)">', timeline)
    assert kinds == [
        "queued",
        "claimed",
        "retry",
        "submitted",
        "poll",
        "poll",
        "downloaded",
        "ended",
    ], timeline
    retry = re.search(r'data-kind="retry">(.*?)</li>', timeline)
    assert retry, timeline
    assert "retry after vendor_fault: submit:" in retry[1] and "busy" in retry[1]
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in retry[1]
    assert f"the vendor&#x27;s task id: {record.vendor_task_id}" in timeline  # operators see it
    polls = re.findall(r'data-kind="poll">(.*?)</li>', timeline)
    assert "×5" in polls[1] and "RUNNING" in polls[1]  # five alike polls: one row
    assert "ended: succeeded" in timeline


async def test_a_task_from_before_the_log_shows_the_record_timeline(
    settings_console: Settings,
) -> None:
    async with console(settings_console) as (client, editor, _):
        await sign_in(client)
        task_id = await queued_task(editor, notes=["a note"])
        db = editor.store.db  # type: ignore[attr-defined]
        await db.execute("DELETE FROM task_steps WHERE task_id = ?", (task_id,))
        page = (await client.get(f"/console/tasks/{task_id}")).text
        assert 'data-kind="record"' in page and "queued for nowhere" in page
        assert "note: a note" in page and 'data-kind="queued"' not in page
        await editor.store.request_cancel(task_id)  # a step logged after the migration
        page = (await client.get(f"/console/tasks/{task_id}")).text
        timeline = page.split('id="timeline">', 1)[1].split("</ol>", 1)[0]
        assert re.findall(r'data-kind="([a-z]+)"', timeline) == ["record", "cancel"]
        assert "before the log was kept" in timeline and "a note" in page


async def test_the_vendors_page_says_when_a_rate_limit_binds(
    make_settings: MakeSettings,
) -> None:
    """Two submissions at once under a cap of one a second: the second waits for its turn,
    and the vendors page says the submit limit binds now and bound in the last hour."""
    with FakeDashScope(api_key=KEY) as fake:
        table = dashscope_table("dashscope", fake) + "submit_rps = 1\nquery_rps = 20\n"
        settings = make_settings(console_toml() + table)
        async with console(settings) as (client, editor, _):
            await sign_in(client)
            before = (await client.get("/console/vendors")).text
            assert 'data-vendor="dashscope" data-kind="submit"' in before
            assert "binding now" not in before and "never bound" in before

            def request(prompt: str) -> EditRequest:
                image = data_uri(sample("coffee.png"))
                return EditRequest(
                    images=[image], function="colorization", vendor="dashscope", prompt=prompt
                )

            done = await asyncio.gather(
                *(
                    editor.edit_image(request(p), owner="alice", wait_seconds=60)
                    for p in ("one", "two")
                )
            )
            assert all(t.status == TaskStatus.succeeded for t in done)
            page = (await client.get("/console/vendors")).text
    row = re.search(r'<tr data-vendor="dashscope" data-kind="submit">(.*?)</tr>', page)
    assert row, page
    assert "1/s" in row[1] and "binding now" in row[1] and "bound: 1 call(s) waited" in row[1]
    query = re.search(r'<tr data-vendor="dashscope" data-kind="query">(.*?)</tr>', page)
    assert query and "20/s" in query[1] and "never bound" in query[1]


def test_rate_limits_bind_when_calls_waited_or_every_turn_is_held() -> None:
    now = 1_800_000_000.0
    table = stats.vendor_stats([], ["a", "b"], now)
    waits = [
        RateWaits("a", "submit", 0, 3, 4.5, now - 600, 2, now + 1.5),
        RateWaits("b", "query", 1, 1, 0.2, now - 5, 0, None),
        RateWaits("gone", "submit", 1, 1, 0.2, now - 5, 0, None),
    ]
    stats.rate_limits(table, {"a": {"submit": 2.0, "query": None}}, waits, now)
    a, b = table
    assert [(x.kind, x.cap, x.binding, x.bound_hour) for x in a.limits] == [
        ("submit", 2.0, True, True),  # both turns held
        ("query", None, False, False),
    ]
    assert a.limits[0].next_free_in == 1.5
    assert [(x.kind, x.cap, x.binding) for x in b.limits] == [("query", None, True)]


async def test_the_login_form_needs_its_own_cookie(settings_console: Settings) -> None:
    async with console(settings_console) as (client, _, _):
        answer = await client.post("/console/login", data={"csrf": "abc", "token": OPERATOR})
        assert answer.status_code == 403 and "retouch_console=" not in str(answer.headers)


async def test_bad_inputs_are_refused(settings_console: Settings) -> None:
    async with console(settings_console) as (client, editor, _):
        await sign_in(client)
        csrf = csrf_of((await client.get("/console/tasks")).text)
        task_id = await queued_task(editor)
        bad_gets = [
            "/console/api/tasks?status=nonsense",
            "/console/api/tasks?before=abc",
            "/console/api/tasks?before=" + "9" * 40,
            "/console/api/tasks?since=yesterday",
            "/console/api/tasks?owner=" + "x" * 500,
            "/console/api/tasks?vendor=%00",
            "/console/tasks?status=nonsense",
        ]
        for path in bad_gets:
            assert (await client.get(path)).status_code == 400, path
        for path in (
            "/console/tasks/not-an-id",
            "/console/api/tasks/" + "b" * 32,
            f"/console/thumbs/{task_id}/mask/0",
            f"/console/thumbs/{task_id}/input/7",
            f"/console/thumbs/{task_id}/input/-1",
            f"/console/thumbs/{task_id}/input/0?size=huge",
            f"/console/thumbs/{task_id}/result/0",
        ):
            assert (await client.get(path)).status_code == 404, path
        huge = await client.post(
            "/console/budgets",
            content=b"csrf=" + csrf.encode() + b"&x=" + b"a" * (MAX_BODY + 1),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert huge.status_code == 413
        typed = await client.post(
            "/console/budgets", content=b'{"a": 1}', headers={"Content-Type": "application/json"}
        )
        assert typed.status_code == 415
        corrupt = await client.post(
            "/console/budgets",
            content=b"csrf=" + csrf.encode() + b"&owner=\xff\xfe",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert corrupt.status_code == 400
        for limits in ("{", '{"day": {"USD": "lots"}}', '{"nope": 1}', "[]"):
            answer = await client.post(
                "/console/budgets", data={"csrf": csrf, "owner": "alice", "limits": limits}
            )
            assert answer.status_code == 400, limits
        answer = await client.post(
            "/console/budgets", data={"csrf": csrf, "owner": "bad owner", "limits": ""}
        )
        assert answer.status_code == 400
        gone = await client.post(f"/console/tasks/{'c' * 32}/cancel", data={"csrf": csrf})
        assert gone.status_code == 404
        unknown = await client.post("/console/users/revoke", data={"csrf": csrf, "name": "zed"})
        assert unknown.status_code == 404


async def test_prompts_file_names_and_vendor_errors_are_shown_as_text(
    settings_console: Settings,
) -> None:
    async with console(settings_console) as (client, editor, _):
        await sign_in(client)
        task_id = await queued_task(
            editor,
            prompt=XSS,
            owner="tg:1",
            request={"images": [f"https://example.com/{XSS}.png"], "function": "adjust"},
            notes=[XSS],
        )
        await editor.store.finish(
            task_id,
            None,
            TaskStatus.failed,
            error={"code": XSS, "message": XSS},
            failures=[],
        )
        page = (await client.get(f"/console/tasks/{task_id}")).text
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
        assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 4  # prompt, name, note, error
        vendors = (await client.get("/console/vendors")).text
        assert "<script>alert" not in vendors and "&lt;script&gt;" in vendors
        listed = (await client.get("/console/api/tasks")).json()
        assert listed["tasks"][0]["id"] == task_id  # the JSON the page puts in as text


async def test_cancel_run_again_revoke_and_a_budget_from_the_console(
    settings_console: Settings,
) -> None:
    async with console(settings_console) as (client, editor, _):
        await sign_in(client)
        csrf = csrf_of((await client.get("/console/tasks")).text)
        task_id = await queued_task(editor, owner="alice")
        page = await client.get(f"/console/tasks/{task_id}")
        assert 'id="cancel"' in page.text and "queued for nowhere" in page.text
        done = await client.post(f"/console/tasks/{task_id}/cancel", data={"csrf": csrf})
        assert done.status_code == 303
        assert (await editor.store.get(task_id)).status == "canceled"

        local = await editor.edit_image(
            EditRequest(
                images=[media.inspect(png(), media.MediaPolicy()).data_uri()], function="lineart"
            ),
            owner="alice",
            wait_seconds=30,
        )
        again = await client.post(f"/console/tasks/{local.id}/again", data={"csrf": csrf})
        assert again.status_code == 303
        new_id = again.headers["location"].rsplit("/", 1)[1]
        assert new_id != local.id
        copy = await editor.store.get(new_id)
        assert (copy.owner, copy.function) == ("alice", "lineart")
        thumb = await client.get(f"/console/thumbs/{local.id}/result/0")
        assert thumb.status_code == 200 and thumb.content[:2] == b"\xff\xd8"

        await editor.users.add("dave")
        users = (await client.get("/console/users")).text
        assert "dave" in users and "alice" in users
        revoked = await client.post("/console/users/revoke", data={"csrf": csrf, "name": "dave"})
        assert revoked.status_code == 303
        assert not next(u for u in await editor.users.list() if u.name == "dave").active
        budget = await client.post(
            "/console/budgets",
            data={"csrf": csrf, "owner": "tg:7", "limits": '{"edits_per_hour": 3}'},
        )
        assert budget.status_code == 303
        assert (await editor.budget_override("tg:7")).edits_per_hour == 3  # type: ignore[union-attr]
        assert "tg:7" in (await client.get("/console/users")).text


async def test_the_console_is_off_without_a_token(make_settings: MakeSettings) -> None:
    async with (
        serve(make_settings(users_toml("alice"))) as (_, _, app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c,
    ):
        assert (await c.get("/console/login")).status_code == 404


def test_console_tokens_are_checked_when_the_config_is_read(make_settings: MakeSettings) -> None:
    with pytest.raises(ConfigError, match="16 characters"):
        make_settings('[console]\ntokens = ["short"]\n')
    with pytest.raises(ConfigError, match="64 hex"):
        make_settings('[console]\ntoken_sha256 = ["abc"]\n')


def summary(vendor: str, status: str, created: float, finished: float | None, **kw: Any) -> Any:
    return TaskSummary(
        seq=0,
        vendor=vendor,
        function="f",
        owner=kw.get("owner", "alice"),
        status=status,
        created_at=created,
        started_at=None,
        finished_at=finished,
        error_code=kw.get("code"),
        cost=kw.get("cost"),
        currency=kw.get("currency"),
        lease_until=kw.get("lease", 0.0),
    )


def test_vendor_statistics_and_costs() -> None:
    now = 1_800_000_000.0
    rows = [
        summary("a", "succeeded", now - 100, now - 90, cost=1.0, currency="USD"),
        summary("a", "failed", now - 200, now - 170, code="E_LIMIT"),
        summary("a", "succeeded", now - 7200, now - 7100, cost=0.5, currency="CNY", owner="tg:1"),
        summary("a", "running", now - 10, None, lease=now + 30),
        summary("b", "queued", now - 5, None),
    ]
    by = {s.name: s for s in stats.vendor_stats(rows, ["a", "b", "c"], now)}
    assert list(by) == ["a", "b", "c"]
    a = by["a"]
    assert (a.hour.tasks, a.hour.ended, a.hour.succeeded) == (3, 2, 1)
    assert a.hour.success_rate == 0.5 and a.hour.errors == {"E_LIMIT": 1}
    assert (a.day.tasks, a.day.p50, a.day.p95) == (4, 10.0, 100.0)  # the failed one's aside
    assert (a.running, a.queued, by["b"].queued, by["c"].day.tasks) == (1, 0, 1, 0)
    money = stats.costs(rows)
    assert money.by_vendor == {"CNY": {"a": 0.5}, "USD": {"a": 1.0}}
    assert money.by_owner == {"CNY": {"tg:1": 0.5}, "USD": {"alice": 1.0}}
    assert list(money.by_day) == ["CNY", "USD"]
    days = stats.days_back(now, 3)
    filled = stats.costs(rows, days).by_day["USD"]
    assert sorted(filled) == days and sum(filled.values()) == 1.0 and len(set(days)) == 3
    assert stats.percentile([], 0.5) is None and stats.percentile([3.0], 0.95) == 3.0
    assert stats.percentile([float(i) for i in range(1, 101)], 0.95) == 95.0
    assert stats.percentile([1.0, 2.0], 0.5) == 1.0
