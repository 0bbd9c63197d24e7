"""The worker's loops: claim tasks from the store while a vendor has free slots, keep their
leases alive, and run each claimed task through the driver. A task queued by this process
is started at once where it may be (``start_now``), without waiting for the claim loop.

Through a database outage the process carries on: the claim loop backs off and, once the
store answers again, renews the leases it holds before it claims anything; the tasks in hand
wait for the store (``patience.py``) instead of failing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter

import httpx
from PIL import Image

from tools.config import Settings
from tools.errors import StoreUnavailable
from tools.notifier import Notifier, TaskEvent
from tools.store import Store, TaskRecord
from tools.store.base import Claim
from tools.timeline import Timeline
from tools.vendors.base import Vendor
from tools.worker.driver import Driver, Inputs
from tools.worker.intake import Intake
from tools.worker.patience import next_wait, patient

log = logging.getLogger("retouch.worker")
#: Tasks of one vendor run at once when its kind documents no cap (``max_concurrent`` unset):
#: a bound on what the images of running tasks hold in memory, not a vendor's rule.
UNCAPPED = 32


def capacity(vendor: Vendor) -> int:
    """How many of ``vendor``'s tasks may run at once, across every process on the store."""
    return vendor.settings.max_concurrent or UNCAPPED


class Worker:
    def __init__(
        self,
        store: Store,
        vendors: dict[str, Vendor],
        settings: Settings,
        downloads: httpx.AsyncClient,
        notifier: Notifier,
        timeline: Timeline | None = None,
    ) -> None:
        self.store = store
        self.vendors = vendors
        self.settings = settings
        self.notifier = notifier
        self.timeline = timeline or Timeline()
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        waits = patient(store)
        intake = Intake(waits, notifier, self.timeline)
        self.driver = Driver(
            self.id, waits, vendors, settings, downloads, intake, notifier, self.timeline
        )
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._held: Counter[str] = Counter()  # running tasks by vendor
        self._full: set[str] = set()  # vendors whose last claim filled every slot
        self._unsubscribe = lambda: None
        self._stopping = False

    async def start(self) -> None:
        self._unsubscribe = self.notifier.subscribe(self._heard)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="retouch-claim"),
            asyncio.create_task(self._lease_loop(), name="retouch-lease"),
        ]

    async def stop(self) -> None:
        """Stop and hand every held task back to the store for the next process: claim
        nothing more, let submissions in flight reach the store (``worker.stop_grace_s``,
        within the lease), then cut off the rest, which the next process polls again."""
        self._stopping = True
        self._unsubscribe()
        self._unsubscribe = lambda: None  # a second stop() finds nothing left to do
        for task in self._loops:
            task.cancel()
        await self._settle()
        for task in [*self._loops, *self.running.values()]:
            task.cancel()
        for task in [*self._loops, *self.running.values()]:
            with contextlib.suppress(BaseException):
                await task
        try:
            await self.store.release(self.id)
        except StoreUnavailable:
            log.warning("store unavailable: the tasks held here are free when their leases end")
        self.running.clear()
        self._held.clear()

    async def _settle(self) -> None:
        """Wait while a running task is between sending to its vendor and storing the
        answer: cut off there, it could only be failed (a billing vendor is never sent the
        same task twice)."""
        worker = self.settings.worker
        deadline = time.monotonic() + min(worker.stop_grace_s, worker.lease_s / 2)
        while time.monotonic() < deadline and any(
            task_id in self.driver.unsettled and not task.done()
            for task_id, task in self.running.items()
        ):
            await asyncio.sleep(0.02)

    def wake(self) -> None:
        """Claim now: a task was queued."""
        self._wake.set()

    def claim_for(self, vendor: str) -> Claim | None:
        """How a task for ``vendor`` is claimed as it is stored (``Store.create_task``): in
        the transaction that stores it, where ``start_now`` would claim it just after. None
        while this worker is not running."""
        known = self.vendors.get(vendor)
        if known is None or not self._loops or self._stopping:
            return None
        return Claim(self.id, capacity(known), self.settings.worker.lease_s)

    async def start_now(
        self,
        record: TaskRecord,
        inputs: Inputs | None = None,
        decoded: dict[int, Image.Image] | None = None,
        *,
        claimed: bool = False,
    ) -> asyncio.Task[None] | None:
        """Claim a task just queued and start driving it at once, where the claim loop would
        take it first anyway (``Store.claim_task``): held under this worker's lease like any
        claimed task, so a crash hands it to the next process exactly as it would. None if
        it must wait its turn: the claim loop is woken for it. ``claimed``: the store claimed
        it for this worker as it stored it (``claim_for``). ``inputs``, ``decoded``: see
        ``Driver.run``."""
        vendor = self.vendors.get(record.vendor)
        if claimed:
            held: TaskRecord | None = record
        elif vendor is None or not self._loops or self._stopping:
            return None
        else:
            held = await self.store.claim_task(
                record.id, self.id, capacity=capacity(vendor), lease_s=self.settings.worker.lease_s
            )
        if held is None or vendor is None:
            self.wake()
            return None
        if self._stopping:  # stop() has handed back what it held: this one too
            await self.store.release(self.id, [held.id])
            return None
        self.timeline.mark(held.id, "claimed")
        self._held[held.vendor] += 1
        if self._held[held.vendor] >= capacity(vendor):
            self._full.add(held.vendor)
        task = asyncio.create_task(self._run(held, inputs, decoded), name=f"retouch-task-{held.id}")
        self.running[held.id] = task
        return task

    def _heard(self, event: TaskEvent) -> None:
        """Claim now when any process queued a task for a vendor served here or ended one
        (a slot may be free), or when events were lost."""
        if event.kind == "missed" or (
            event.kind in ("queued", "ended") and event.vendor in self.vendors
        ):
            self.wake()

    async def _claim_loop(self) -> None:
        lease = self.settings.worker.lease_s
        outage = 0.0  # the current wait while the store is unavailable, else 0
        while True:
            self._wake.clear()
            try:
                if outage:  # back from an outage: keep what we hold before taking more
                    await self.store.renew(self.id, list(self.running), lease)
                await self._claim_all()
            except StoreUnavailable as exc:
                if not outage:
                    log.warning("%s; claiming again when it is back", exc.message)
                outage = next_wait(outage)
            else:
                if outage:
                    log.info("the store is back: claiming tasks again")
                outage = 0.0
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives as
            # the event is set (stop() cancels us while finishing tasks wake us), and stop()
            # then waited for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(outage or self.settings.worker.idle_poll_s):
                    await self._wake.wait()

    async def _claim_all(self) -> None:
        """Claim for every vendor with free slots; StoreUnavailable if the store is down."""
        lease = self.settings.worker.lease_s
        for name, vendor in self.vendors.items():
            try:
                claimed = await self.store.claim(
                    name, self.id, capacity=capacity(vendor), lease_s=lease
                )
            except StoreUnavailable:
                raise
            except Exception:
                log.exception("claiming tasks for %s failed", name)
                continue
            for record in claimed:
                if record.id in self.running:  # ours still: its lease had run out meanwhile
                    continue
                self.timeline.mark(record.id, "claimed")
                self.running[record.id] = asyncio.create_task(
                    self._run(record), name=f"retouch-task-{record.id}"
                )
                self._held[name] += 1
            if self._held[name] >= capacity(vendor):
                self._full.add(name)  # tasks may be waiting: claim again as one ends
            else:
                self._full.discard(name)

    async def _lease_loop(self) -> None:
        lease = self.settings.worker.lease_s
        while True:
            await asyncio.sleep(lease / 3)
            with contextlib.suppress(Exception):
                await self.store.renew(self.id, list(self.running), lease)

    async def _run(
        self,
        record: TaskRecord,
        inputs: Inputs | None = None,
        decoded: dict[int, Image.Image] | None = None,
    ) -> None:
        requeued = False
        try:
            requeued = await self.driver.run(record, inputs, decoded)
        finally:
            self.running.pop(record.id, None)
            self._held[record.vendor] -= 1
            self.notifier.changed(record.id, ended=True)
            # a task queued again (for another vendor) is claimed at once; else a slot that
            # held tasks back is free (new tasks wake us themselves, or idle_poll_s does)
            if requeued or record.vendor in self._full:
                self.wake()
