"""A database outage: every front end answers "store unavailable, try again" while it lasts,
never a traceback, and everything carries on by itself once the database is back — the
worker's queued and in-flight tasks, the pool, the listener and the bot's poller — without
restarting the process. The PostgreSQL tests stop and start a server of their own
(``tests/pg.py``: ``private_pg``), never the machine's."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import aiosqlite
import asyncpg
import pytest
from mcp import Client
from pydantic import SecretStr

from tests import test_bot as harness
from tests.chaos.helpers import report_figures
from tests.conftest import MakeSettings, data_uri, png, sample
from tests.contract.test_task_store import new_task
from tests.fakes.dashscope import FakeDashScope
from tests.pg import PrivateServer
from tests.test_bot import USER, BotSettings, bot
from tests.test_e2e_vendors import KEY, dashscope_table
from tests.test_uploads import AUTH, TOKEN, serve
from tools.errors import StoreUnavailable
from tools.notifier import TaskEvent
from tools.store import FileBlobStore
from tools.store.outages import is_outage
from tools.store.postgres import PostgresStore
from tools.store.sqlite import SQLiteStore

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
fake = harness.fake  # the bot harness's fixtures, shared
bot_settings = harness.bot_settings

TRY_AGAIN = "store unavailable, try again"


@pytest.fixture
def vendor() -> Iterator[FakeDashScope]:
    with FakeDashScope(api_key=KEY) as server:
        yield server


# ---- what counts as an outage --------------------------------------------------------------


def test_only_a_database_out_of_reach_is_an_outage() -> None:
    assert is_outage(ConnectionRefusedError(111, "refused"))
    assert is_outage(TimeoutError())
    assert is_outage(asyncpg.exceptions.ConnectionDoesNotExistError("closed mid-call"))
    assert is_outage(asyncpg.exceptions.CannotConnectNowError("starting up"))
    assert is_outage(asyncpg.exceptions.TooManyConnectionsError("too many clients"))
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = 5  # type: ignore[attr-defined]
    assert is_outage(locked)
    assert not is_outage(sqlite3.OperationalError("no such table: tasks"))
    assert not is_outage(asyncpg.exceptions.UniqueViolationError("duplicate key"))
    assert not is_outage(asyncpg.exceptions.UndefinedTableError("no such table"))
    assert not is_outage(ValueError("a bug"))
    try:  # a rollback on a connection that is gone fails too: the outage is still the cause
        try:
            raise ConnectionResetError(104, "reset")
        except OSError:
            raise asyncpg.exceptions.InterfaceError("connection is closed") from None
    except asyncpg.exceptions.InterfaceError as rollback:
        assert rollback.__context__ is not None and is_outage(rollback)
    assert not is_outage(asyncpg.exceptions.InterfaceError("connection is closed"))
    err = StoreUnavailable(cause="ConnectionRefusedError")
    assert (err.code, err.retryable, err.to_dict()["retry_after"]) == ("store_unavailable", True, 5)
    assert err.message.startswith(TRY_AGAIN)


async def test_sqlite_locked_past_its_busy_timeout_is_store_unavailable(tmp_path: Any) -> None:
    store = await SQLiteStore.open(tmp_path / "retouch.db", tmp_path / "results")
    try:
        task_id = await new_task(store)
        await store.db.execute("PRAGMA busy_timeout = 100")
        other = await aiosqlite.connect(tmp_path / "retouch.db", isolation_level=None)
        await other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable):
            await store.claim("local", "w", capacity=1, lease_s=30)
        await other.rollback()
        await other.close()
        [claimed] = await store.claim("local", "w", capacity=1, lease_s=30)
        assert claimed.id == task_id
    finally:
        await store.close()


async def test_every_store_call_says_store_unavailable_then_works_again(
    private_pg: PrivateServer, tmp_path: Any
) -> None:
    url = await private_pg.new_database()
    store = await PostgresStore.open(url, FileBlobStore(tmp_path / "files"), min_size=2)
    try:
        task_id = await new_task(store)
        private_pg.stop()
        calls = [
            store.get(task_id),
            store.list(),
            store.claim("local", "w", capacity=1, lease_s=30),
            store.renew("w", [task_id], 30),
            store.request_cancel(task_id),
            new_task(store),
            store.cleanup(7),
        ]
        for call in calls:
            with pytest.raises(StoreUnavailable) as caught:
                await call
            assert caught.value.details["cause"]  # the kind of failure, not its text
        private_pg.start()
        assert (await store.get(task_id)).status == "queued"  # the same pool, reconnected
        assert [t.id for t in await store.claim("local", "w", capacity=1, lease_s=30)] == [task_id]
    finally:
        await store.close()


# ---- the MCP server through a restart ------------------------------------------------------


async def test_a_restart_is_a_clear_error_then_queued_tasks_finish_in_the_same_process(
    private_pg: PrivateServer,
    make_settings: MakeSettings,
    vendor: FakeDashScope,
    caplog: pytest.LogCaptureFixture,
    request: pytest.FixtureRequest,
) -> None:
    """One task runs at the vendor and one waits behind it (one slot) when the database stops:
    tool calls and HTTP routes say "try again" while it is down; once it is back, both tasks
    finish in the same process, and the listener hears task events again."""
    settings = make_settings(
        f'[mcp]\nauth_token = "{TOKEN}"\n'
        + dashscope_table("dashscope", vendor)
        + "max_concurrent = 1\n"
    )
    settings.store.url = SecretStr(await private_pg.new_database())
    vendor.task_seconds = 1.0  # each task is done at the vendor 1 s after its submission
    caplog.set_level(logging.INFO, logger="retouch")
    caplog.set_level(logging.INFO, logger="asyncpg")
    edit = {
        "images": [data_uri(sample("coffee.png"))],
        "function": "stylization_all",
        "prompt": "oil painting",
        "vendor": "dashscope",
        "wait_seconds": 0,
    }
    async with serve(settings) as served, Client(served.mcp) as client:
        first = (await client.call_tool("edit_image", edit)).structured_content["id"]
        second = (await client.call_tool("edit_image", edit)).structured_content["id"]
        events: list[tuple[float, TaskEvent]] = []
        await served.editor.store.listen(lambda e: events.append((time.time(), e)))
        while not (await served.editor.store.get(first)).vendor_task_id:
            await asyncio.sleep(0.05)
        assert (await served.editor.store.get(second)).status == "queued"

        private_pg.stop()
        down = time.time()
        for name, args in [
            ("list_tasks", {}),
            ("check_task", {"task_id": second}),
            ("edit_image", {**edit, "images": [data_uri(png())]}),
            ("cancel_task", {"task_id": second}),
        ]:
            answer = await client.call_tool(name, args)
            assert answer.is_error, name
            assert TRY_AGAIN in answer.content[0].text, (name, answer.content)  # type: ignore[union-attr]
        upload = await served.http.post(
            "/uploads", content=png(), headers={**AUTH, "Content-Type": "image/png"}
        )
        assert upload.status_code == 503, upload.text
        assert upload.json()["error"] == "store_unavailable"
        assert upload.headers["Retry-After"] == "5"
        await asyncio.sleep(max(0.0, down + 1.5 - time.time()))  # the vendor finishes meanwhile

        private_pg.start()
        up = time.time()
        while (await client.call_tool("list_tasks", {})).is_error:
            await asyncio.sleep(0.01)
        answered = time.time() - up
        done = await client.call_tool("check_task", {"task_id": second, "wait_seconds": 30})
        finished = {task_id: await served.editor.check_task(task_id) for task_id in (first, second)}
    assert done.structured_content["status"] == "succeeded", done.content
    assert all(t.status == "succeeded" for t in finished.values()), finished
    assert vendor.submissions == 2  # nothing was sent twice
    first_done = finished[first].finished_at.timestamp()  # type: ignore[union-attr]
    recovered = first_done - up
    assert recovered < 5, recovered
    # The listener connected again: it said so, then heard the second task end.
    missed = [at for at, e in events if e.kind == "missed" and at > up]
    assert missed, events
    assert TaskEvent("ended", second, "dashscope") in [e for at, e in events if at > missed[0]]
    tracebacks = [r for r in caplog.records if r.name.startswith(("retouch", "asyncpg"))]
    tracebacks = [r for r in tracebacks if r.exc_info]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    queued_done = finished[second].finished_at.timestamp() - up  # type: ignore[union-attr]
    report_figures(
        request.config,
        f"outage: PostgreSQL down {up - down:.1f} s; once back, a tool call was answered in "
        f"{answered * 1000:.0f} ms, the task in flight was recorded done in {recovered:.2f} s "
        f"and the one queued behind it had finished at {queued_done:.2f} s (1 s at the fake "
        "vendor), in the same process",
    )


# ---- the bot ---------------------------------------------------------------------------------


async def test_the_bot_says_try_again_during_an_outage_and_carries_on(
    private_pg: PrivateServer, fake: Any, bot_settings: BotSettings
) -> None:
    settings = bot_settings()
    settings.store.url = SecretStr(await private_pg.new_database())
    async with bot(settings):
        assert "(n): 2" in await said(fake, "/settings n 2")
        private_pg.stop()
        assert "store unavailable" in await said(fake, "/settings n 3")
        private_pg.start()
        assert "(n): 3" in await said(fake, "/settings n 3")  # the poller lived on


async def said(fake: Any, text: str) -> str:
    mark = fake.call_count
    fake.user_sends_text(USER, USER, text)
    (reply,) = await fake.wait_for("sendMessage", since=mark)
    return str(reply.params["text"])


# ---- who is asking, while the users cannot be read ------------------------------------------


async def test_a_config_user_is_known_without_the_database_and_others_hear_try_again() -> None:
    """The users added at run time are in the store; while it is down the config file's
    users still pass (the route then answers in its own form, e.g. a tool's error an MCP
    client shows), and any other token gets 503 "try again", never a traceback."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from server.http import BearerAuth
    from server.owners import owner_of_request
    from tools.config import UserSettings

    async def whoami(request: Request) -> PlainTextResponse:
        return PlainTextResponse(owner_of_request(request))

    async def down() -> list[tuple[str, bytes]]:
        raise StoreUnavailable(cause="ConnectionRefusedError")

    app = BearerAuth(
        Starlette(routes=[Route("/whoami", whoami)]),
        [UserSettings(name="ann", token=SecretStr("ann-token-0123456789"))],
        added=down,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        ann = await http.get("/whoami", headers={"Authorization": "Bearer ann-token-0123456789"})
        other = await http.get("/whoami", headers={"Authorization": "Bearer added-at-run-time"})
        nobody = await http.get("/whoami")
    assert (ann.status_code, ann.text) == (200, "ann")
    for answer in (other, nobody):
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "store_unavailable"
        assert answer.json()["message"].startswith(TRY_AGAIN)
        assert answer.headers["Retry-After"] == "5"

    open_app = BearerAuth(
        Starlette(routes=[Route("/whoami", whoami)]), [], added=down, open_when_empty=True
    )
    transport = httpx.ASGITransport(app=open_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        answer = await http.get("/whoami")  # no config users: nobody can be told apart
    assert answer.status_code == 503
