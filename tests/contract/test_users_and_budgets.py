"""The store's contract for users added at run time, owners' budget overrides, an owner's
use, and admissions: a check of that use made in the transaction that stores the task, so
that requests arriving together are counted one after the other."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from tests.contract.test_task_store import new_task
from tools.errors import BudgetExceeded
from tools.models import LOCAL_OWNER, BudgetLimits, TaskStatus
from tools.store import Store
from tools.store.base import ActiveTask, Admission, OwnerUsage, Windows

T0 = 1_900_000_000.0  # a fixed "now" for created_at, far from the real clock
WINDOWS = Windows(hour=T0 - 3600, day=T0 - 7200, month=T0 - 86400 * 10)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ---- users ---------------------------------------------------------------------------------


async def test_users_are_added_listed_and_revoked(store: Store) -> None:
    bob = await store.add_user("bob", digest("b"), T0)
    assert bob is not None and (bob.name, bob.token_sha256, bob.revoked_at) == (
        "bob",
        digest("b"),
        None,
    )
    assert await store.add_user("Alice", digest("a"), T0 + 1) is not None
    assert [(u.name, u.created_at) for u in await store.users()] == [
        ("Alice", T0 + 1),
        ("bob", T0),
    ]
    # names are unique case aside while the user is active
    assert await store.add_user("BOB", digest("b2"), T0 + 2) is None
    revoked = await store.revoke_user("BoB", T0 + 3)
    assert revoked is not None and revoked.name == "bob" and revoked.revoked_at == T0 + 3
    assert await store.revoke_user("bob", T0 + 4) is None  # once
    assert await store.revoke_user("nobody", T0 + 4) is None
    listed = {u.name: u for u in await store.users()}
    assert listed["bob"].revoked_at == T0 + 3 and listed["Alice"].revoked_at is None


async def test_a_revoked_name_is_added_again_with_a_new_token(store: Store) -> None:
    await store.add_user("bob", digest("old"), T0)
    await store.revoke_user("bob", T0 + 1)
    again = await store.add_user("bob", digest("new"), T0 + 2)
    assert again is not None
    [bob] = await store.users()
    assert (bob.token_sha256, bob.created_at, bob.revoked_at) == (digest("new"), T0 + 2, None)


async def test_users_added_at_once_under_one_name_make_one(store: Store) -> None:
    added = await asyncio.gather(*(store.add_user("carol", digest(str(i)), T0) for i in range(8)))
    assert sum(a is not None for a in added) == 1
    assert len(await store.users()) == 1


# ---- budget overrides ----------------------------------------------------------------------


async def test_budget_overrides_are_set_replaced_and_removed(store: Store) -> None:
    assert await store.budget_overrides() == {}
    alice = BudgetLimits(day={"CNY": 5}, edits_per_hour=3)
    await store.set_budget_override("alice", alice)
    await store.set_budget_override("tg:42", BudgetLimits(concurrent=0))
    assert await store.budget_overrides("alice") == {"alice": alice}
    assert await store.budget_overrides("bob") == {}
    assert set(await store.budget_overrides()) == {"alice", "tg:42"}
    changed = BudgetLimits(month={"USD": 1.5})
    await store.set_budget_override("alice", changed)
    assert (await store.budget_overrides("alice"))["alice"] == changed
    await store.set_budget_override("alice", None)
    assert await store.budget_overrides() == {"tg:42": BudgetLimits(concurrent=0)}


# ---- an owner's use ------------------------------------------------------------------------


async def ended(
    store: Store, owner: str | None, created_at: float, cost: float | None, currency: str | None
) -> str:
    task_id = await new_task(store, owner=owner, created_at=created_at)
    await store.finish(
        task_id, None, TaskStatus.succeeded, billed_images=1, cost=cost, currency=currency
    )
    return task_id


async def test_an_owners_use_counts_by_the_time_tasks_were_asked_for(store: Store) -> None:
    await ended(store, "alice", T0 - 60, 0.28, "CNY")  # this hour, today, this month
    await ended(store, "alice", T0 - 5000, 1.0, "CNY")  # today
    await ended(store, "alice", T0 - 86400 * 3, 2.0, "CNY")  # this month
    await ended(store, "alice", T0 - 86400 * 40, 50.0, "CNY")  # last month
    await ended(store, "alice", T0 - 30, 0.5, "USD")
    await ended(store, "alice", T0 - 20, None, None)  # free (the local engine)
    await ended(store, "bob", T0 - 10, 9.0, "CNY")
    running = await new_task(store, "nebula", owner="alice", created_at=T0 - 5)
    usage = await store.owner_usage("alice", WINDOWS)
    assert usage.active == [ActiveTask("nebula", "adjust", 1)]
    assert usage.edits == 4 and usage.first_edit_at == T0 - 60  # the free one counts
    assert usage.day_cost == pytest.approx({"CNY": 1.28, "USD": 0.5})
    assert usage.month_cost == pytest.approx({"CNY": 3.28, "USD": 0.5})
    assert (await store.get(running)).created_at == T0 - 5


async def test_the_local_owners_use_includes_tasks_without_an_owner(store: Store) -> None:
    await ended(store, None, T0 - 60, 1.0, "CNY")
    await ended(store, LOCAL_OWNER, T0 - 50, 2.0, "CNY")
    await new_task(store, owner=None, created_at=T0 - 40)
    usage = await store.owner_usage(LOCAL_OWNER, WINDOWS)
    assert (usage.edits, len(usage.active), usage.day_cost) == (3, 1, {"CNY": 3.0})
    nobody = await store.owner_usage("alice", WINDOWS)
    assert (nobody.edits, nobody.active, nobody.first_edit_at, nobody.month_cost) == (
        0,
        [],
        None,
        {},
    )


# ---- admissions ----------------------------------------------------------------------------


def at_most(active: int) -> Admission:
    def check(usage: OwnerUsage) -> None:
        if len(usage.active) >= active:
            raise BudgetExceeded("too many", limit="concurrent")

    return Admission(WINDOWS, check)


async def test_a_burst_of_requests_is_admitted_one_after_the_other(store: Store) -> None:
    made = await asyncio.gather(
        *(new_task(store, owner="alice", admission=at_most(3)) for _ in range(12)),
        return_exceptions=True,
    )
    assert sum(isinstance(m, str) for m in made) == 3
    assert all(isinstance(m, (str, BudgetExceeded)) for m in made), made
    assert len(await store.active("alice")) == 3
    assert len(await store.active("bob")) == 0
    # another owner is counted apart
    assert isinstance(await new_task(store, owner="bob", admission=at_most(3)), str)


async def test_a_refused_request_stores_nothing_and_a_known_key_is_not_counted(
    store: Store,
) -> None:
    first = await new_task(store, owner="alice", key="k1", admission=at_most(1))
    with pytest.raises(BudgetExceeded):
        await new_task(store, owner="alice", key="k2", admission=at_most(1))
    assert await store.find_by_key("k2") is None
    # asked again with its key, the first request's task comes back, not a refusal
    assert await new_task(store, owner="alice", key="k1", admission=at_most(1)) == first
    assert [t.id for t in await store.list(owner="alice")] == [first]
