"""The worker's loops: claim tasks from the store while a vendor has free slots, keep their
leases alive, and run each claimed task through the driver."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter

import httpx

from tools.config import Settings
from tools.notifier import Notifier, TaskEvent
from tools.store import Store, TaskRecord
from tools.vendors.base import Vendor
from tools.worker.driver import Driver
from tools.worker.intake import Intake

log = logging.getLogger("retouch.worker")


class Worker:
    def __init__(
        self,
        store: Store,
        vendors: dict[str, Vendor],
        settings: Settings,
        downloads: httpx.AsyncClient,
        intake: Intake,
        notifier: Notifier,
    ) -> None:
        self.store = store
        self.vendors = vendors
        self.settings = settings
        self.notifier = notifier
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.driver = Driver(self.id, store, vendors, settings, downloads, intake, notifier)
        self.running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._held: Counter[str] = Counter()  # running tasks by vendor
        self._full: set[str] = set()  # vendors whose last claim filled every slot
        self._unsubscribe = lambda: None

    async def start(self) -> None:
        self._unsubscribe = self.notifier.subscribe(self._heard)
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="retouch-claim"),
            asyncio.create_task(self._lease_loop(), name="retouch-lease"),
        ]

    async def stop(self) -> None:
        """Stop at once and hand every held task back to the store for the next process."""
        self._unsubscribe()
        for task in [*self._loops, *self.running.values()]:
            task.cancel()
        for task in [*self._loops, *self.running.values()]:
            with contextlib.suppress(BaseException):
                await task
        await self.store.release(self.id)
        self.running.clear()
        self._held.clear()

    def wake(self) -> None:
        """Claim now: a task was queued."""
        self._wake.set()

    def _heard(self, event: TaskEvent) -> None:
        """Claim now when any process queued a task for a vendor served here or ended one
        (a slot may be free), or when events were lost."""
        if event.kind == "missed" or (
            event.kind in ("queued", "ended") and event.vendor in self.vendors
        ):
            self.wake()

    async def _claim_loop(self) -> None:
        lease = self.settings.worker.lease_s
        while True:
            self._wake.clear()
            for name, vendor in self.vendors.items():
                try:
                    claimed = await self.store.claim(
                        name, self.id, capacity=vendor.settings.max_concurrent, lease_s=lease
                    )
                except Exception:
                    log.exception("claiming tasks for %s failed", name)
                    continue
                for record in claimed:
                    self.running[record.id] = asyncio.create_task(
                        self._run(record), name=f"retouch-task-{record.id}"
                    )
                self._held[name] += len(claimed)
                if self._held[name] >= vendor.settings.max_concurrent:
                    self._full.add(name)  # tasks may be waiting: claim again as one ends
                else:
                    self._full.discard(name)
            # asyncio.timeout, not wait_for: on 3.11 wait_for swallows a cancel that arrives as
            # the event is set (stop() cancels us while finishing tasks wake us), and stop()
            # then waited for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.worker.idle_poll_s):
                    await self._wake.wait()

    async def _lease_loop(self) -> None:
        lease = self.settings.worker.lease_s
        while True:
            await asyncio.sleep(lease / 3)
            with contextlib.suppress(Exception):
                await self.store.renew(self.id, list(self.running), lease)

    async def _run(self, record: TaskRecord) -> None:
        requeued = False
        try:
            requeued = await self.driver.run(record)
        finally:
            self.running.pop(record.id, None)
            self._held[record.vendor] -= 1
            self.notifier.changed(record.id, ended=True)
            # a task queued again (for another vendor) is claimed at once; else a slot that
            # held tasks back is free (new tasks wake us themselves, or idle_poll_s does)
            if requeued or record.vendor in self._full:
                self.wake()
