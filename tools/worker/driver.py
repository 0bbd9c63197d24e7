"""Driving one task to its end: submit, poll (or await the callback), retry, reroute, cancel.

Every step is written to the store before the next begins, so a process that dies is
replaced by one that carries on: a task with a vendor task id is polled again, never
resubmitted; a task that died *while* being submitted to a vendor that could bill twice is
failed with a clear error instead of being sent again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import httpx
from PIL import Image

from tools import logs, telemetry
from tools.config import Settings
from tools.errors import (
    ContentRejected,
    NotFound,
    RetouchError,
    Throttled,
    VendorCanceled,
    VendorError,
    VendorFault,
    VendorRejected,
    VendorTimeout,
)
from tools.limits import burst_of, capped, delay, turn
from tools.media import InputImage
from tools.models import Expand, TaskStatus
from tools.notifier import Notifier
from tools.store import Store, TaskRecord
from tools.timeline import Timeline
from tools.vendors.base import Finished, Job, Outcome, Pending, Vendor
from tools.worker.intake import Intake

log = logging.getLogger("retouch.worker")
T = TypeVar("T")


class Canceled(Exception):
    """The client canceled the task while it ran."""


#: A task's input images and mask, as the process that stored them still holds them.
Inputs = tuple[list[InputImage], InputImage | None]


class Driver:
    """Drives the tasks one worker holds (under its lease ``worker_id``), one call each."""

    def __init__(
        self,
        worker_id: str,
        store: Store,
        vendors: dict[str, Vendor],
        settings: Settings,
        downloads: httpx.AsyncClient,
        intake: Intake,
        notifier: Notifier,
        timeline: Timeline | None = None,
    ) -> None:
        self.worker_id = worker_id
        self.store = store
        self.vendors = vendors
        self.settings = settings
        self.downloads = downloads
        self.intake = intake
        self.notifier = notifier
        self.timeline = timeline or Timeline()
        #: Tasks sent (or being sent) to their vendor whose answer is not yet in the store:
        #: cut off there, the next process could only fail them (it cannot send again).
        self.unsettled: set[str] = set()

    async def run(
        self,
        record: TaskRecord,
        inputs: Inputs | None = None,
        decoded: dict[int, Image.Image] | None = None,
    ) -> bool:
        """Drive the task to its end; True if it was queued again for a fallback vendor.

        ``inputs``: its images, where the caller holds them (else they are read from the
        store); ``decoded``: filled with the results' decoded images (``Intake.take``)."""
        logs.set_task(record.id, record.owner, record.vendor)
        try:
            await self._drive(record, inputs, decoded)
        except asyncio.CancelledError:
            raise
        except RetouchError as exc:
            return await self._fail(record, exc)
        except Exception as exc:
            log.exception("task %s failed unexpectedly", record.id)
            return await self._fail(
                record, VendorFault(f"internal error ({type(exc).__name__})", transient=False)
            )
        finally:
            self.unsettled.discard(record.id)
        return False

    async def _drive(
        self,
        record: TaskRecord,
        inputs: Inputs | None,
        decoded: dict[int, Image.Image] | None,
    ) -> None:
        vendor = self.vendors.get(record.vendor)
        if vendor is None:
            raise NotFound(f"vendor {record.vendor!r} is no longer configured")
        if record.cancel_requested and not record.vendor_task_id:
            await self._finish_canceled(record)
            return
        notes = list(record.notes)
        sent: float | None = None  # when the last submission attempt left (monotonic)
        if record.vendor_task_id:
            outcome: Outcome = Pending(record.vendor_task_id)
        elif record.submit_started_at and not vendor.idempotent_submit:
            raise VendorFault(
                f"the process stopped while submitting to {vendor.name}; the task was not "
                "sent again, so you are not billed twice — submit it anew",
                transient=False,
                vendor=vendor.name,
            )
        else:
            job = await self._job(record, inputs)
            self.unsettled.add(record.id)

            def submit() -> Awaitable[Outcome]:
                nonlocal sent
                sent = time.monotonic()
                return vendor.submit(job)

            outcome = await self._call(
                vendor,
                record,
                submit,
                submitting=True,
            )
            notes += job.notes
            if isinstance(outcome, Pending):
                await self._update(
                    record,
                    vendor_task_id=outcome.vendor_task_id,
                    notes=notes,
                    progress=f"{vendor.name}: {outcome.status or 'submitted'}",
                )
                self.unsettled.discard(record.id)  # polled again by whoever holds it next
        try:
            if isinstance(outcome, Pending):
                outcome = await self._wait(vendor, record, outcome, sent)
            if outcome is None:  # finished by the callback route
                return
            ended = await self.intake.take(
                record,
                vendor,
                outcome,
                client=self.downloads,
                worker=self.worker_id,
                notes=notes,
                decoded=decoded,
            )
            if not ended:
                log.info("task %s ended elsewhere meanwhile", record.id)
        except (Canceled, VendorCanceled):
            await self._finish_canceled(record)

    async def _job(self, record: TaskRecord, inputs: Inputs | None) -> Job:
        req = record.request
        if inputs is not None:
            images, mask = inputs
        else:
            shas = await self.store.task_images(record.id)
            images = [await self.store.read_blob(s) for s in shas.get("input", [])]
            mask = await self.store.read_blob(shas["mask"][0]) if "mask" in shas else None
        size = None
        if req.get("size") and req["size"] != "auto":
            w, h = req["size"].split("x")
            size = (int(w), int(h))
        return Job(
            task_id=record.id,
            function=record.function,
            prompt=record.prompt,
            images=images,
            mask=mask,
            n=record.n,
            seed=req.get("seed"),
            negative_prompt=req.get("negative_prompt"),
            watermark=req.get("watermark") is True,
            size=size,
            expand=Expand(**req["expand"]) if req.get("expand") else None,
            upscale_factor=req.get("upscale_factor"),
            options=dict(req.get("options") or {}),
            source_urls=list(req.get("source_urls") or []),
        )

    async def _call(
        self,
        vendor: Vendor,
        record: TaskRecord,
        fn: Callable[[], Awaitable[T]],
        *,
        submitting: bool = False,
    ) -> T:
        """Call the vendor, retrying what is retryable with capped, jittered backoff.

        Each attempt waits for its turn at the vendor's account-wide rate (``submit_rps`` or
        ``query_rps``, kept in the store for every process). A submission is marked
        (``submit_started_at``) just before each attempt leaves, after its turn, and unmarked
        when the vendor's answer shows nothing was created: a process that dies while waiting
        for its turn or between retries has sent nothing, and its task is submitted by the
        next process instead of failed as "maybe billed".

        A *query* that is throttled is not counted against ``max_retries``: the vendor has the
        task and bills it, so Retouch keeps asking (backing off) for up to
        ``worker.callback_timeout_s`` rather than failing a task the vendor may finish.
        """
        attempt = 0
        throttled_until: float | None = None
        settings = vendor.settings
        kind, rate = (
            settings.submit_rate(record.function) if submitting else ("query", settings.query_rps)
        )
        while True:
            try:
                async with turn(self.store, vendor.name, kind, rate, burst=burst_of(rate)):
                    if submitting:  # one write: the progress, and the marker if a rerun bills
                        marker = {"submit_started_at": time.time()}
                        if vendor.idempotent_submit:
                            marker = {}
                        await self._update(record, progress=f"working with {vendor.name}", **marker)
                    stage = "submit" if submitting else "poll"
                    self.timeline.mark(record.id, f"{stage} sent")
                    began = time.monotonic()
                    try:
                        answer = await fn()
                    except Exception as exc:
                        code = exc.code if isinstance(exc, RetouchError) else "internal"
                        telemetry.vendor_call(vendor.name, stage, time.monotonic() - began, code)
                        raise
                    telemetry.vendor_call(vendor.name, stage, time.monotonic() - began)
                    self.timeline.mark(record.id, f"{stage} answered")
                    return answer
            except VendorError as exc:
                log.info(
                    "task %s: %s answered %s (attempt %d)",
                    record.id,
                    vendor.name,
                    exc.code,
                    attempt + 1,
                    extra={
                        "task_id": record.id,
                        "owner": record.owner,
                        "vendor": vendor.name,
                        "event": "vendor_error",
                    },
                )
                ambiguous = submitting and exc.details.get("maybe_submitted")
                patient = not submitting and isinstance(exc, Throttled)
                if patient and throttled_until is None:
                    throttled_until = time.monotonic() + self.settings.worker.callback_timeout_s
                if (
                    not exc.retryable
                    or exc.details.get("task_failed")  # re-reading it changes nothing
                    or (attempt >= vendor.settings.max_retries and not patient)
                    or (patient and time.monotonic() > (throttled_until or 0))
                    or (ambiguous and not vendor.idempotent_submit)
                ):
                    raise
                if submitting and not ambiguous and not vendor.idempotent_submit:
                    # nothing was created: the next process may submit it again
                    await self._update(record, submit_started_at=None)
                wait = delay(exc.details.get("retry_after"), min(attempt, 8))
                attempt += 1
                await self._update(
                    record, progress=f"{vendor.name}: {exc.code}, retry {attempt} in {wait:.0f} s"
                )
                # the console's log: what went wrong (the row shows only the retry's count)
                await self.store.add_step(
                    record.id,
                    "retry",
                    vendor=vendor.name,
                    worker=self.worker_id,
                    code=exc.code,
                    detail=f"{'submit' if submitting else 'poll'}: {exc.message}"[:1000],
                )
                await asyncio.sleep(wait)

    async def _wait(
        self, vendor: Vendor, record: TaskRecord, pending: Pending, sent: float | None
    ) -> Outcome | None:
        """Poll (or await the callback) until the vendor has finished. The first poll comes
        ``poll_interval_s`` after the submission was sent (``sent``), not after its answer."""
        interval = vendor.settings.poll_interval_s
        deadline = time.monotonic() + self.settings.worker.callback_timeout_s
        polls = record.polls
        while True:
            wait = capped(pending.retry_after or interval)
            if sent is not None:
                wait, sent = max(0.0, wait - (time.monotonic() - sent)), None
            await asyncio.sleep(wait)
            interval = min(interval * 1.5, vendor.settings.poll_max_interval_s)
            current = await self.store.get(record.id)
            if current.finished:
                return None
            if current.cancel_requested and await vendor.cancel(pending.vendor_task_id):
                raise Canceled
            if vendor.completion == "callback":
                if time.monotonic() > deadline:
                    raise VendorTimeout(
                        f"{vendor.name} sent no callback in time", vendor=vendor.name
                    )
                continue
            outcome = await self._call(
                vendor,
                record,
                functools.partial(vendor.poll, pending.vendor_task_id),
            )
            polls += 1
            if isinstance(outcome, Finished):
                return outcome
            pending = outcome
            await self._update(record, polls=polls, progress=f"{vendor.name}: {outcome.status}")

    # ---- other ends ----------------------------------------------------------------------

    async def _fail(self, record: TaskRecord, exc: RetouchError) -> bool:
        """Reroute the task (True), else record its failure."""
        if await self._reroute(record, exc):
            return True
        await self.store.finish(record.id, self.worker_id, TaskStatus.failed, error=exc.to_dict())
        return False

    async def _reroute(self, record: TaskRecord, exc: RetouchError) -> bool:
        """After a vendor fault that retrying cannot mend, try the next fallback vendor."""
        if not isinstance(exc, VendorFault | VendorTimeout) or isinstance(
            exc, ContentRejected | VendorRejected
        ):
            return False
        chain = self.settings.routing.fallback
        if record.vendor not in chain:
            return False
        for name in chain[chain.index(record.vendor) + 1 :]:
            vendor = self.vendors.get(name)
            if vendor is not None and record.function in vendor.capabilities:
                note = f"{record.vendor} failed ({exc.message}); moved to {name}"
                return await self.store.reroute(record.id, self.worker_id, name, note)
        return False

    async def _finish_canceled(self, record: TaskRecord) -> None:
        await self.store.finish(record.id, self.worker_id, TaskStatus.canceled)

    async def _update(self, record: TaskRecord, **values: object) -> None:
        if await self.store.update(record.id, self.worker_id, **values):
            self.notifier.changed(record.id, ended=False)
