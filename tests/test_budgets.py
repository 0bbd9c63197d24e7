"""Budgets per owner against the fake DashScope (¥0.14 an image): through MCP (the SDK's
client over streamable HTTP, each user by its token) and the Editor. The request that would
cross a limit is refused and nothing reaches the vendor; the day and the month roll over on
an injected clock; edits per hour and tasks at once are counted exactly under a burst."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from mcp import Client

from tests.conftest import MakeSettings, data_uri, png, sample
from tests.fakes.dashscope import FakeDashScope
from tests.test_e2e_vendors import KEY, dashscope_table
from tests.test_users import ALICE, BOB, serve, text, users_toml
from tools.config import Settings
from tools.errors import BudgetExceeded, ConfigError, InvalidParameter
from tools.models import BudgetLimits, EditRequest, Spend, TaskStatus
from tools.service import Editor

COLORIZE = {
    "images": [data_uri(sample("coffee.png"))],
    "function": "colorization",
    "vendor": "dashscope",
    "wait_seconds": 30,
}


class Clock:
    """The Editor's clock, set by the test."""

    def __init__(self, *at: int) -> None:
        self.now = 0.0
        self.set(*at)

    def set(self, *at: int) -> None:
        self.now = datetime(*at, tzinfo=UTC).timestamp()  # type: ignore[misc]

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> Iterator[FakeDashScope]:
    with FakeDashScope(api_key=KEY) as server:
        yield server


def budgeted(make_settings: MakeSettings, fake: FakeDashScope, budgets: str) -> Settings:
    return make_settings(users_toml("alice", "bob") + dashscope_table("dashscope", fake) + budgets)


async def colorize(client: Client, **extra: Any) -> dict[str, Any]:
    result = await client.call_tool("edit_image", {**COLORIZE, **extra})
    assert not result.is_error, text(result)
    task = result.structured_content
    assert task is not None and task["status"] == "succeeded", task
    return task


async def refused(client: Client, **extra: Any) -> str:
    result = await client.call_tool("edit_image", {**COLORIZE, **extra})
    assert result.is_error
    return text(result)


# ---- through MCP ---------------------------------------------------------------------------


async def test_the_edit_that_would_cross_a_limit_is_refused_and_the_day_and_month_roll_over(
    make_settings: MakeSettings, fake: FakeDashScope
) -> None:
    settings = budgeted(
        make_settings, fake, "[budgets]\nday = { CNY = 0.3 }\nmonth = { CNY = 0.5 }\n"
    )
    clock = Clock(2030, 1, 30, 23, 0)
    async with serve(settings) as (connect, editor, _):
        editor.clock = clock
        async with connect(ALICE) as alice, connect(BOB) as bob:
            first = await colorize(alice)
            await colorize(alice)
            assert (first["cost"], first["currency"]) == (0.14, "CNY")
            message = await refused(alice)
            assert fake.submissions == 2  # the third never reached the vendor
            assert "this edit would cost 0.14 CNY" in message
            assert "you have used 0.28 of your 0.3 CNY for today (UTC)" in message
            assert "the day's budget starts again at 2030-01-31 00:00 UTC (in 1 h 0 min)" in message
            await colorize(bob)  # bob's budget is his own
            assert fake.submissions == 3

            # check_task and list_tasks show the asking owner's spending
            checked = await alice.call_tool("check_task", {"task_id": first["id"]})
            spending = checked.structured_content["spending"]  # type: ignore[index]
            assert spending["owner"] == "alice"
            assert spending["day"] == {
                "CNY": {"used": 0.28, "pending": 0.0, "limit": 0.3, "remaining": 0.02}
            }
            assert spending["month"]["CNY"]["remaining"] == 0.22
            assert spending["day_resets_at"] == "2030-01-31T00:00:00Z"
            assert spending["month_resets_at"] == "2030-02-01T00:00:00Z"
            line = checked.content[0].text.splitlines()[-1]  # type: ignore[union-attr]
            assert line == (
                "Spent today (UTC): 0.28 of 0.3 CNY (0.02 left); this month: 0.28 of 0.5 CNY "
                "(0.22 left); edits in the last hour: 2; queued or running: 0."
            )
            listed = await alice.call_tool("list_tasks", {})
            assert listed.structured_content["spending"] == spending  # type: ignore[index]
            assert listed.content[-1].text == line  # type: ignore[union-attr]
            assert len(listed.structured_content["tasks"]) == 2  # type: ignore[index]

            # a new day: the day's budget is whole again, the month's is not
            clock.set(2030, 1, 31, 0, 0, 1)
            await colorize(alice)
            message = await refused(alice)
            assert "you have used 0.42 of your 0.5 CNY for this month (UTC)" in message
            assert "the month's budget starts again at 2030-02-01 00:00 UTC" in message
            assert fake.submissions == 4

            # a new month
            clock.set(2030, 2, 1, 0, 0, 1)
            await colorize(alice)
            assert fake.submissions == 5
            spent = (await alice.call_tool("list_tasks", {})).structured_content["spending"]  # type: ignore[index]
            assert spent["day"]["CNY"]["used"] == spent["month"]["CNY"]["used"] == 0.14


async def test_edits_per_hour_count_the_free_engine_too_and_cost_limits_do_not(
    make_settings: MakeSettings, fake: FakeDashScope
) -> None:
    settings = budgeted(make_settings, fake, "[budgets]\nedits_per_hour = 2\nday = { CNY = 0 }\n")
    clock = Clock(2030, 1, 30, 23, 0)
    local = {"images": [data_uri(png())], "function": "lineart", "vendor": None}
    async with serve(settings) as (connect, editor, _), connect(ALICE) as alice:
        editor.clock = clock
        message = await refused(alice)  # the first paid edit: a limit of 0 CNY
        assert "you have used 0 of your 0 CNY for today (UTC)" in message
        await colorize(alice, **local)  # the local engine is free
        clock.set(2030, 1, 30, 23, 20)
        await colorize(alice, **local)
        clock.set(2030, 1, 30, 23, 30)
        message = await refused(alice, **local)
        assert message.endswith(
            "Budget: you have asked for 2 edits in the last hour and your limit is 2 an hour; "
            "the next one fits at 2030-01-31 00:00 UTC (in 30 min)."
        )
        clock.set(2030, 1, 31, 0, 0, 1)  # the first edit has left the hour
        await colorize(alice, **local)
        spending = (await alice.call_tool("list_tasks", {})).structured_content["spending"]  # type: ignore[index]
        assert (spending["edits_last_hour"], spending["edits_per_hour"]) == (2, 2)
        assert spending["next_edit_at"] == "2030-01-31T00:20:00Z"
    assert fake.submissions == 0


# ---- bursts, through the Editor ------------------------------------------------------------


async def burst(editor: Editor, count: int, owner: str = "alice") -> list[Any]:
    request = EditRequest(
        images=[data_uri(sample("coffee.png"))], function="colorization", vendor="dashscope"
    )
    return await asyncio.gather(
        *(editor.edit_image(request, owner=owner) for _ in range(count)), return_exceptions=True
    )


async def test_a_burst_cannot_pass_the_limit_of_tasks_at_once(
    make_settings: MakeSettings, fake: FakeDashScope
) -> None:
    fake.task_plan = ["PENDING"]  # they never end by themselves
    settings = budgeted(make_settings, fake, "[budgets]\nconcurrent = 2\n")
    async with Editor(settings) as editor:
        made = await burst(editor, 8)
        started = [m for m in made if not isinstance(m, Exception)]
        assert len(started) == 2, made
        errors = [m for m in made if isinstance(m, Exception)]
        assert all(isinstance(e, BudgetExceeded) for e in errors), errors
        assert errors[0].details["limit"] == "concurrent"
        assert "you have 2 edits queued or running and your limit is 2 at once" in str(errors[0])
        assert len(await burst(editor, 1, owner="bob")) == 1  # bob counts apart
        # one ends: one more fits
        await editor.cancel_task(started[0].id)
        await editor.check_task(started[0].id, wait_seconds=10)
        again = await burst(editor, 3)
        assert sum(not isinstance(m, Exception) for m in again) == 1
        assert (await editor.budget("alice")).active == 2
    assert fake.submissions <= 4  # alice's 3 and bob's 1, at most


async def test_a_burst_cannot_pass_a_cost_limit_before_anything_is_billed(
    make_settings: MakeSettings, fake: FakeDashScope
) -> None:
    fake.task_plan = ["PENDING"]
    settings = budgeted(make_settings, fake, "[budgets]\nday = { CNY = 0.5 }\n")
    async with Editor(settings) as editor:
        made = await burst(editor, 6)
        assert sum(not isinstance(m, Exception) for m in made) == 3  # 3 × 0.14 ≤ 0.5
        error = next(m for m in made if isinstance(m, BudgetExceeded))
        assert "and 0.42 is held for edits not finished" in error.message
        assert error.details["pending"] == 0.42 and error.details["currency"] == "CNY"
        budget = await editor.budget("alice")
        assert budget.day["CNY"].pending == 0.42 and budget.day["CNY"].remaining == 0.08


async def test_partial_successes_count_as_the_vendor_bills_them(
    make_settings: MakeSettings, fake: FakeDashScope
) -> None:
    fake.partial_failures = 1  # one of the two images fails; DashScope bills the other
    settings = budgeted(make_settings, fake, "[budgets]\nday = { CNY = 1 }\n")
    async with Editor(settings) as editor:
        request = EditRequest(
            images=[data_uri(sample("coffee.png"))],
            function="colorization",
            vendor="dashscope",
            n=2,
        )
        task = await editor.edit_image(request, owner="alice", wait_seconds=30)
        assert task.status == TaskStatus.succeeded and len(task.failures) == 1
        assert (task.billed_images, task.cost) == (1, 0.14)
        day = (await editor.budget("alice")).day["CNY"]
        assert (day.used, day.pending, day.remaining) == (0.14, 0.0, 0.86)


# ---- where limits come from ----------------------------------------------------------------


async def test_an_override_set_at_run_time_wins_over_the_config_limit_by_limit(
    make_settings: MakeSettings, fake: FakeDashScope
) -> None:
    settings = budgeted(
        make_settings,
        fake,
        "[budgets]\nday = { CNY = 1 }\nedits_per_hour = 10\n"
        '[budgets.owners."alice"]\nday = { CNY = 2 }\nconcurrent = 1\n',
    )
    async with Editor(settings, run_worker=False) as editor:
        assert await editor.limits("bob") == BudgetLimits(day={"CNY": 1}, edits_per_hour=10)
        assert await editor.limits("alice") == BudgetLimits(
            day={"CNY": 2}, edits_per_hour=10, concurrent=1
        )
        budget = await editor.set_budget("alice", BudgetLimits(edits_per_hour=3))
        assert budget.limits == BudgetLimits(day={"CNY": 2}, edits_per_hour=3, concurrent=1)
        assert await editor.budget_override("alice") == BudgetLimits(edits_per_hour=3)
        await editor.set_budget("alice", None)
        assert await editor.budget_override("alice") is None
        assert (await editor.limits("alice")).edits_per_hour == 10
        with pytest.raises(InvalidParameter, match="no vendor here bills in USD"):
            await editor.set_budget("alice", BudgetLimits(day={"USD": 1}))
        with pytest.raises(InvalidParameter, match="not an owner"):
            await editor.set_budget("a b", BudgetLimits(concurrent=1))
        # any other owner has everyone's limits
        day = (await editor.budget("tg:7")).day
        assert day == {"CNY": Spend(used=0, pending=0, limit=1, remaining=1)}


def test_budgets_are_checked_when_the_config_is_read(
    make_settings: MakeSettings, fake: FakeDashScope
) -> None:
    def refusal(budgets: str) -> str:
        with pytest.raises(ConfigError) as err:
            budgeted(make_settings, fake, budgets)
        return err.value.message

    assert "budgets.day: Value error, a cost limit is a number of at least 0" in refusal(
        "[budgets]\nday = { CNY = -1 }\n"
    )
    assert "'C N' is not a currency code" in refusal('[budgets]\nday = { "C N" = 1 }\n')
    assert "budgets.edits_per_hour: Input should be greater than or equal to 0" in refusal(
        "[budgets]\nedits_per_hour = -1\n"
    )
    assert "budgets.concurrent: Input should be a valid integer" in refusal(
        '[budgets]\nconcurrent = "two"\n'
    )
    assert "budgets.days: unknown setting" in refusal("[budgets]\ndays = { CNY = 1 }\n")
    assert "budgets.owners.alice.weekly: unknown setting" in refusal(
        '[budgets.owners."alice"]\nweekly = 3\n'
    )
    assert "'a b' is not an owner" in refusal('[budgets.owners."a b"]\nconcurrent = 1\n')
    assert (
        'budgets.owners."alice".month.USD: no vendor here bills in USD (they bill in CNY)'
        in refusal('[budgets.owners."alice"]\nmonth = { usd = 3 }\n')
    )
    fine = budgeted(
        make_settings,
        fake,
        '[budgets]\nday = { cny = 1.5 }\nconcurrent = 0\n[budgets.owners."tg:42"]\nday = {}\n',
    )
    assert fine.budgets.day == {"CNY": 1.5} and fine.budgets.for_owner("tg:42").concurrent == 0
