"""The store's contract for ``/metrics``: every task counted in one aggregate read, by
status, vendor, function and currency, with billed images, cost and the slots in use; and
each end a ``finish`` records observed once, in the process that recorded it."""

from __future__ import annotations

import time

from tests.contract.test_task_store import new_task
from tools import telemetry
from tools.models import TaskStatus
from tools.store import Store
from tools.store.base import Tally


def ended(vendor: str, function: str, status: str) -> float:
    value = telemetry.REGISTRY.get_sample_value(
        "retouch_task_duration_seconds_count",
        {"vendor": vendor, "function": function, "status": status},
    )
    return value or 0.0


async def test_tallies_count_every_task_once(store: Store) -> None:
    assert await store.tallies() == []
    for _ in range(3):
        await new_task(store, vendor="fake")
    await new_task(store, vendor="local")
    live = await store.claim("fake", "w1", capacity=2, lease_s=60)
    assert len(live) == 2
    paid = await new_task(store, vendor="fake")
    before = ended("fake", "adjust", "succeeded"), ended("fake", "adjust", "failed")
    assert await store.finish(
        paid, None, TaskStatus.succeeded, billed_images=2, cost=0.5, currency="CNY"
    )
    assert await store.finish(live[0].id, "w1", TaskStatus.failed, error={"code": "x"})
    assert not await store.finish(paid, None, TaskStatus.failed)  # ended once: counted once
    assert ended("fake", "adjust", "succeeded") == before[0] + 1
    assert ended("fake", "adjust", "failed") == before[1] + 1

    tallies = sorted(await store.tallies(), key=lambda t: (t.vendor, t.status))
    assert tallies == [
        Tally("failed", "fake", "adjust", None, 1, 0, None, 0),
        Tally("queued", "fake", "adjust", None, 1, 0, None, 0),
        Tally("running", "fake", "adjust", None, 1, 0, None, 1),
        Tally("succeeded", "fake", "adjust", "CNY", 1, 2, 0.5, 0),
        Tally("queued", "local", "adjust", None, 1, 0, None, 0),
    ]
    # a lease run out is no slot in use (its process died), though the task is running
    later = await store.tallies(now=time.time() + 120)
    assert [t.live for t in later if t.status == "running"] == [0]
