"""Idempotency keys as clients see them: the request's fingerprint, the same key with the same
request (the first task back), with another request (a conflict naming the first task), keys
that expire (an injected clock, no waiting), and 20 calls at once — through the Editor and
through the MCP SDK's own client over streamable HTTP, each user with their own keys."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import MakeSettings, data_uri, png
from tests.pg import empty_url
from tests.test_postgres import pg_settings
from tests.test_users import ALICE, BOB, serve, text, users_toml
from tools.config import Settings
from tools.errors import ConfigError, IdempotencyConflict
from tools.idempotency import fingerprint
from tools.models import EditRequest
from tools.service import Editor

HOUR = 3600.0


def req(**fields: Any) -> EditRequest:
    return EditRequest(**{"images": [data_uri(png())], "function": "lineart", **fields})


# ---- the fingerprint ---------------------------------------------------------------------------


def test_the_fingerprint_ignores_spelling_and_sees_everything_that_changes_the_work() -> None:
    base = fingerprint(req(prompt="ink", options={"a": 1, "b": [1, 2]}))
    assert base.startswith("v1:") and len(base) == 3 + 64
    # the same request spelled otherwise: defaults written out, options in another order,
    # the same image bytes under another MIME label or with spaces around the source
    same = [
        req(prompt="ink", options={"b": [1, 2], "a": 1}, n=1, mask=None, vendor=None),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, images=[data_uri(png(), "image/x")]),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, images=[f"  {data_uri(png())} "]),
    ]
    assert {fingerprint(r) for r in same} == {base}
    other_image = data_uri(png(color=(1, 2, 3)))
    different = [
        req(prompt="Ink", options={"a": 1, "b": [1, 2]}),
        req(prompt="ink", options={"a": 1, "b": [2, 1]}),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, function="adjust"),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, n=2),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, vendor="local"),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, seed=7),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, watermark="mine"),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, size="512x512"),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, negative_prompt="blur"),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, images=[other_image]),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, mask=other_image),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, images=[data_uri(png())] * 2),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, images=["https://example.com/a.png"]),
        req(prompt="ink", options={"a": 1, "b": [1, 2]}, images=["retouch://uploads/abc"]),
    ]
    prints = [fingerprint(r) for r in different]
    assert len(set(prints)) == len(prints) and base not in prints
    # a data: URI is known by its payload: a malformed one too (it is refused later)
    broken = req(images=["data:image/png;base64,%%%"])
    assert fingerprint(broken) == fingerprint(broken) != fingerprint(req())


def test_the_time_to_live_is_checked_at_load(make_settings: MakeSettings) -> None:
    assert make_settings().store.idempotency_ttl_h == 24
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RETOUCH_STORE__IDEMPOTENCY_TTL_H", "0")
        with pytest.raises(ConfigError, match="idempotency_ttl_h"):
            make_settings()
        env.setenv("RETOUCH_STORE__IDEMPOTENCY_TTL_H", "1.5")
        assert make_settings().store.idempotency_ttl_h == 1.5


# ---- through the Editor ------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


async def test_a_key_answers_its_request_refuses_another_and_expires(settings: Settings) -> None:
    settings.store.idempotency_ttl_h = 2
    clock = Clock()
    async with Editor(settings, run_worker=False) as editor:
        editor.clock = clock
        first = await editor.edit_image(req(prompt="a"), owner="alice", key="k")
        assert (await editor.edit_image(req(prompt="a"), owner="alice", key="k")).id == first.id
        with pytest.raises(IdempotencyConflict) as refused:
            await editor.edit_image(req(prompt="b"), owner="alice", key="k")
        assert first.id in refused.value.message and "different request" in refused.value.message
        assert refused.value.details == {"task_id": first.id}
        # another owner's key of the same name is another key
        theirs = await editor.edit_image(req(prompt="b"), owner="bob", key="k")
        assert theirs.id != first.id
        clock.now += 2 * HOUR - 1  # still within the two hours
        assert (await editor.edit_image(req(prompt="a"), owner="alice", key="k")).id == first.id
        clock.now += 2  # expired: the same key starts a new task, whatever the request
        second = await editor.edit_image(req(prompt="b"), owner="alice", key="k")
        assert second.id not in (first.id, theirs.id)
        assert (await editor.edit_image(req(prompt="b"), owner="alice", key="k")).id == second.id
        with pytest.raises(IdempotencyConflict, match=second.id):
            await editor.edit_image(req(prompt="a"), owner="alice", key="k")
        assert len(await editor.list_tasks(owner="alice")) == 2


async def test_expired_keys_are_taken_from_their_tasks_as_the_editor_cleans_up(
    settings: Settings,
) -> None:
    async with Editor(settings, run_worker=False) as editor:
        made = await editor.edit_image(req(), owner="alice", key="k")
    later = Editor(settings)  # the janitor runs with the worker, at once and then hourly
    later.clock = lambda: made.created_at.timestamp() + 25 * HOUR
    async with later:
        for _ in range(200):
            if (await later.store.get(made.id)).idempotency_key is None:
                break
            await asyncio.sleep(0.05)
        record = await later.store.get(made.id)
    assert record.idempotency_key is None and record.id == made.id  # the task itself stays


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, make_settings: MakeSettings) -> Settings:
    if request.param == "sqlite":
        return make_settings()
    return pg_settings(make_settings, await empty_url())


async def test_twenty_edits_at_once_under_one_key_from_two_processes(backend: Settings) -> None:
    """Two Editors on one store (as two processes), ten calls each, on either backend."""
    async with Editor(backend, run_worker=False) as one, Editor(backend, run_worker=False) as two:
        editors = [one, two] * 10
        same = await asyncio.gather(
            *(e.edit_image(req(), owner="alice", key="same") for e in editors)
        )
        assert len({t.id for t in same}) == 1
        outcomes = await asyncio.gather(
            *(
                e.edit_image(req(watermark=f"m{i}"), owner="alice", key="mixed")
                for i, e in enumerate(editors)
            ),
            return_exceptions=True,
        )
        made = [o for o in outcomes if not isinstance(o, BaseException)]
        conflicts = [o for o in outcomes if isinstance(o, IdempotencyConflict)]
        assert len(made) == 1 and len(conflicts) == 19, outcomes
        assert {c.details["task_id"] for c in conflicts} == {made[0].id}
        assert len(await two.list_tasks(owner="alice")) == 2


# ---- through the MCP SDK's client ----------------------------------------------------------------


@pytest.fixture
def team(make_settings: MakeSettings) -> Settings:
    return make_settings(users_toml("alice", "bob"))


async def test_over_mcp_a_conflict_is_a_tool_error_naming_the_first_task(team: Settings) -> None:
    call = {"images": [data_uri(png())], "function": "lineart", "wait_seconds": 0}
    async with serve(team) as (connect, editor, _), connect(ALICE) as alice, connect(BOB) as bob:
        clock = Clock()
        editor.clock = clock
        first = await alice.call_tool("edit_image", {**call, "idempotency_key": "agent-7"})
        assert not first.is_error, first.content
        task_id = first.structured_content["id"]
        again = await alice.call_tool(
            "edit_image", {**call, "idempotency_key": "agent-7", "wait_seconds": 5}
        )  # how long the caller waits is no part of the request
        assert not again.is_error and again.structured_content["id"] == task_id
        rotate = {**call, "function": "adjust", "prompt": "rotate 90", "idempotency_key": "agent-7"}
        other = await alice.call_tool("edit_image", rotate)
        assert other.is_error
        message = text(other)
        assert task_id in message and "different request" in message
        assert "agent-7" not in message and "mcp:" not in message and "alice" not in message
        # bob's key of that name is his own
        his = await bob.call_tool("edit_image", rotate)
        assert not his.is_error and his.structured_content["id"] != task_id
        # a day later the key starts a new task
        clock.now += 24 * HOUR + 1
        later = await alice.call_tool("edit_image", rotate)
        assert not later.is_error and later.structured_content["id"] not in (
            task_id,
            his.structured_content["id"],
        )
        listed = await alice.call_tool("list_tasks", {"limit": 10})
    assert len(listed.structured_content["tasks"]) == 2


async def test_over_mcp_twenty_calls_at_once_with_one_key(team: Settings) -> None:
    call = {"images": [data_uri(png())], "function": "lineart", "wait_seconds": 0}
    async with serve(team) as (connect, _, _), connect(ALICE) as alice:
        same = await asyncio.gather(
            *(alice.call_tool("edit_image", {**call, "idempotency_key": "same"}) for _ in range(20))
        )
        assert not any(r.is_error for r in same), [text(r) for r in same if r.is_error]
        assert len({r.structured_content["id"] for r in same}) == 1
        mixed = await asyncio.gather(
            *(
                alice.call_tool(
                    "edit_image", {**call, "watermark": f"m{i}", "idempotency_key": "mixed"}
                )
                for i in range(20)
            )
        )
        made = [r for r in mixed if not r.is_error]
        refused = [text(r) for r in mixed if r.is_error]
        assert len(made) == 1 and len(refused) == 19, [
            (r.structured_content["id"], r.structured_content["status"]) for r in made
        ]
        assert all(made[0].structured_content["id"] in m for m in refused)
        listed = await alice.call_tool("list_tasks", {"limit": 50})
    assert len(listed.structured_content["tasks"]) == 2
