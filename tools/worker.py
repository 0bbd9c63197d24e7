"""The worker: claims tasks from the store and drives each to an end.

Every step is written to the store before the next begins, so a process that dies is
replaced by one that carries on: a task with a vendor task id is polled again, never
resubmitted; a task that died *while* being submitted to a vendor that could bill twice is
failed with a clear error instead of being sent again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TypeVar

import httpx

from tools import media
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
    error_from_dict,
)
from tools.limits import RateLimiter, backoff
from tools.models import Expand, ImageFailure, ResultImage, TaskStatus
from tools.store import Store, TaskRecord, blob_key
from tools.vendors.base import Finished, Job, Outcome, OutputImage, Pending, Vendor

log = logging.getLogger("retouch.worker")
T = TypeVar("T")
RESULT_LIMIT = 200 * 1024 * 1024
#: Base of the capped, jittered backoff between retries (tests lower it).
BACKOFF_BASE_S = 1.0
#: A vendor's Retry-After (or poll hint) is honoured up to this: a broken or hostile answer
#: ("retry in a day") must not park a task, and its concurrency slot, for that long.
MAX_RETRY_AFTER_S = 120.0
#: Result downloads: attempts on a transient failure (5xx, 429, a broken connection), and
#: the time one attempt may take in all (httpx's timeout is per read, not per body).
RESULT_ATTEMPTS = 3
RESULT_DOWNLOAD_S = 300.0
Stamp = Callable[[media.InputImage, str], Awaitable[media.InputImage]]


class Canceled(Exception):
    """The client canceled the task while it ran."""


class Worker:
    def __init__(
        self,
        store: Store,
        vendors: dict[str, Vendor],
        settings: Settings,
        downloads: httpx.AsyncClient,
        stamp: Stamp,
        on_change: Callable[[str, bool], None] = lambda task_id, ended: None,
    ) -> None:
        self.store = store
        self.vendors = vendors
        self.settings = settings
        self.downloads = downloads
        self.stamp = stamp
        self.on_change = on_change
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.running: dict[str, asyncio.Task[None]] = {}
        self.submit_limits = {n: RateLimiter(v.settings.submit_rps) for n, v in vendors.items()}
        self.query_limits = {n: RateLimiter(v.settings.query_rps) for n, v in vendors.items()}
        self._wake = asyncio.Event()
        self._loops: list[asyncio.Task[None]] = []
        self._held: Counter[str] = Counter()  # running tasks by vendor
        self._full: set[str] = set()  # vendors whose last claim filled every slot

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._claim_loop(), name="retouch-claim"),
            asyncio.create_task(self._lease_loop(), name="retouch-lease"),
        ]

    async def stop(self) -> None:
        """Stop at once and hand every held task back to the store for the next process."""
        for task in [*self._loops, *self.running.values()]:
            task.cancel()
        for task in [*self._loops, *self.running.values()]:
            with contextlib.suppress(BaseException):
                await task
        await self.store.release(self.worker_id)
        self.running.clear()
        self._held.clear()

    @property
    def worker_id(self) -> str:
        return self.id

    def wake(self) -> None:
        self._wake.set()

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
        try:
            await self._drive(record)
        except asyncio.CancelledError:
            raise
        except RetouchError as exc:
            await self._fail(record, exc)
        except Exception as exc:
            log.exception("task %s failed unexpectedly", record.id)
            await self._fail(
                record, VendorFault(f"internal error ({type(exc).__name__})", transient=False)
            )
        finally:
            self.running.pop(record.id, None)
            self._held[record.vendor] -= 1
            self.on_change(record.id, True)
            if record.vendor in self._full:  # else new tasks wake us themselves (or idle_poll_s)
                self.wake()

    # ---- one task ------------------------------------------------------------------------

    async def _drive(self, record: TaskRecord) -> None:
        vendor = self.vendors.get(record.vendor)
        if vendor is None:
            raise NotFound(f"vendor {record.vendor!r} is no longer configured")
        if record.cancel_requested and not record.vendor_task_id:
            await self._finish_canceled(record)
            return
        notes = list(record.notes)
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
            job = await self._job(record)
            outcome = await self._call(
                vendor,
                record,
                lambda: vendor.submit(job),
                limiter=self.submit_limits,
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
        try:
            if isinstance(outcome, Pending):
                outcome = await self._wait(vendor, record, outcome)
            if outcome is None:  # finished by the callback route
                return
            await self._deliver(record, vendor, outcome, notes)
        except (Canceled, VendorCanceled):
            await self._finish_canceled(record)

    async def _job(self, record: TaskRecord) -> Job:
        req = record.request
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
        limiter: dict[str, RateLimiter],
        submitting: bool = False,
    ) -> T:
        """Call the vendor, retrying what is retryable with capped, jittered backoff.

        A submission is marked (``submit_started_at``) just before each attempt leaves, after
        the rate limiter, and unmarked when the vendor's answer shows nothing was created: a
        process that dies while waiting for its turn or between retries has sent nothing,
        and its task is submitted by the next process instead of failed as "maybe billed".

        A *query* that is throttled is not counted against ``max_retries``: the vendor has the
        task and bills it, so Retouch keeps asking (backing off) for up to
        ``worker.callback_timeout_s`` rather than failing a task the vendor may finish.
        """
        attempt = 0
        throttled_until: float | None = None
        while True:
            await limiter[vendor.name].acquire()
            if submitting:  # one write: the progress, and the marker where a rerun could bill
                marker = {} if vendor.idempotent_submit else {"submit_started_at": time.time()}
                await self._update(record, progress=f"working with {vendor.name}", **marker)
            try:
                return await fn()
            except VendorError as exc:
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
                delay = _delay(exc.details.get("retry_after"), min(attempt, 8))
                attempt += 1
                await self._update(
                    record, progress=f"{vendor.name}: {exc.code}, retry {attempt} in {delay:.0f} s"
                )
                await asyncio.sleep(delay)

    async def _wait(self, vendor: Vendor, record: TaskRecord, pending: Pending) -> Outcome | None:
        """Poll (or await the callback) until the vendor has finished."""
        interval = vendor.settings.poll_interval_s
        deadline = time.monotonic() + self.settings.worker.callback_timeout_s
        polls = record.polls
        while True:
            await asyncio.sleep(min(pending.retry_after or interval, MAX_RETRY_AFTER_S))
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
                limiter=self.query_limits,
            )
            polls += 1
            if isinstance(outcome, Finished):
                return outcome
            pending = outcome
            await self._update(record, polls=polls, progress=f"{vendor.name}: {outcome.status}")

    # ---- the end of a task ---------------------------------------------------------------

    async def _deliver(
        self, record: TaskRecord, vendor: Vendor, outcome: Finished, notes: list[str]
    ) -> None:
        """Store every delivered image (vendor URLs expire) and record the end."""
        ok = await finish_task(
            self.store,
            record,
            vendor,
            outcome,
            notes,
            self.downloads,
            self.stamp,
            worker=self.id,
        )
        if not ok:
            log.info("task %s ended elsewhere meanwhile", record.id)

    async def _fail(self, record: TaskRecord, exc: RetouchError) -> None:
        if await self._reroute(record, exc):
            self.wake()  # queued again, for another vendor
            return
        await self.store.finish(record.id, self.id, TaskStatus.failed, error=exc.to_dict())

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
                return await self.store.reroute(record.id, self.id, name, note)
        return False

    async def _finish_canceled(self, record: TaskRecord) -> None:
        await self.store.finish(record.id, self.id, TaskStatus.canceled)

    async def _update(self, record: TaskRecord, **values: object) -> None:
        if await self.store.update(record.id, self.id, **values):
            self.on_change(record.id, False)


def _delay(retry_after: float | None, attempt: int) -> float:
    """Seconds before the next attempt: the vendor's Retry-After (capped), else backoff."""
    if retry_after:
        return min(float(retry_after), MAX_RETRY_AFTER_S)
    return backoff(attempt, base=BACKOFF_BASE_S)


async def finish_task(
    store: Store,
    record: TaskRecord,
    vendor: Vendor,
    outcome: Finished,
    notes: list[str],
    downloads: httpx.AsyncClient,
    stamp: Stamp,
    worker: str | None,
    policy: media.MediaPolicy | None = None,
) -> bool:
    """Download, stamp and store a finished outcome, then record the task's end once.

    With ``policy``, result URLs are fetched like user URLs (public addresses only, pinned):
    for outcomes that did not come from the configured vendor endpoint itself, such as an
    unauthenticated completion callback.
    """
    text_mark = record.request.get("watermark")
    results: list[ResultImage] = []
    failures = list(outcome.failures)
    for index, image in enumerate(outcome.images):
        try:
            stored = await _fetch_result(image, downloads, vendor.name, policy)
            if isinstance(text_mark, str):
                stored = await stamp(stored, text_mark)
            sha = await store.put_blob(stored)
        except RetouchError as exc:
            failures.append(ImageFailure(index=index, code=exc.code, message=exc.message))
            continue
        results.append(
            ResultImage(
                index=len(results),
                uri=f"retouch://tasks/{record.id}/{len(results)}",
                sha256=sha,
                mime_type=stored.mime_type,
                width=stored.width,
                height=stored.height,
                bytes=len(stored.data),
                path=store.blobs.local_file(blob_key(sha, stored.mime_type)),
                vendor_url=image.url,
            )
        )
    billed = outcome.billed_images if outcome.billed_images is not None else len(outcome.images)
    price, currency = vendor.price_for(record.function)
    cost = round(billed * price, 6) if price is not None else None
    ended_notes = notes + outcome.notes
    if results:
        ended = await store.finish(
            record.id,
            worker,
            TaskStatus.succeeded,
            results=results,
            failures=failures,
            notes=ended_notes,
            billed_images=billed,
            cost=cost,
            currency=currency,
            unless_canceled=True,
        )
        return ended or await _end_canceled(store, record.id, worker, notes)
    first = failures[0] if failures else None
    error: dict[str, object] = {"code": "vendor_fault", "vendor": vendor.name}
    if first is None:
        error["message"] = f"{vendor.name} delivered no image"
    elif error_from_dict({"code": first.code}).code == first.code:  # one of Retouch's codes
        error = {"code": first.code, "message": first.message}
    else:  # the vendor's own code ("InternalError.Timeout"): the task's code stays Retouch's
        error.update(message=first.message, vendor_code=first.code)
    ended = await store.finish(
        record.id,
        worker,
        TaskStatus.failed,
        failures=failures,
        error=error,
        notes=ended_notes,
        billed_images=billed,
        cost=cost,
        currency=currency,
        unless_canceled=True,
    )
    return ended or await _end_canceled(store, record.id, worker, notes)


async def _end_canceled(store: Store, task_id: str, worker: str | None, notes: list[str]) -> bool:
    """A task whose cancel was asked for while the vendor worked ends canceled (its results
    are not kept); False if it had already ended some other way."""
    latest = await store.get(task_id)
    if not latest.cancel_requested or latest.finished:
        return False
    return await store.finish(task_id, worker, TaskStatus.canceled, notes=notes)


async def _fetch_result(
    image: OutputImage,
    client: httpx.AsyncClient,
    vendor: str,
    safe: media.MediaPolicy | None = None,
) -> media.InputImage:
    policy = media.MediaPolicy(max_bytes=RESULT_LIMIT, max_pixels=400_000_000)
    if image.data is not None:
        return await asyncio.to_thread(media.inspect, image.data, policy, "result")
    if not image.url:
        raise VendorFault(f"{vendor} returned a result with neither data nor URL", vendor=vendor)
    if safe is not None:  # a URL that did not come from the vendor's own answer
        limits = replace(safe, max_bytes=RESULT_LIMIT, timeout_s=RESULT_DOWNLOAD_S)
        data = await media.fetch(image.url, limits, client, "result")
    else:
        data = await _download_retrying(image.url, client, vendor)
    return await asyncio.to_thread(media.inspect, data, policy, "result")


async def _download_retrying(url: str, client: httpx.AsyncClient, vendor: str) -> bytes:
    """A result URL's bytes; transient failures are retried (the URL expires, so now)."""
    for attempt in range(RESULT_ATTEMPTS):
        try:
            async with asyncio.timeout(RESULT_DOWNLOAD_S):
                return await _download(url, client, vendor)
        except TimeoutError:
            error: VendorError = VendorTimeout(
                f"{vendor}: result download took longer than {RESULT_DOWNLOAD_S:g} s",
                vendor=vendor,
            )
        except VendorFault as exc:
            error = exc
        if not error.retryable or attempt + 1 >= RESULT_ATTEMPTS:
            raise error
        await asyncio.sleep(_delay(None, attempt))
    raise AssertionError("unreachable")


async def _download(url: str, client: httpx.AsyncClient, vendor: str) -> bytes:
    """GET a result URL; a transient failure (5xx, 429, a broken connection) is retryable."""
    try:
        async with client.stream("GET", url, timeout=120) as response:
            status = response.status_code
            if status != 200:
                raise VendorFault(
                    f"{vendor}: result download answered HTTP {status}"
                    + (" (the URL has expired)" if status in (403, 404) else ""),
                    vendor=vendor,
                    status=status,
                    transient=status >= 500 or status in (408, 429),
                )
            return await media.read_capped(response, RESULT_LIMIT, "result", raw_errors=True)
    except httpx.HTTPError as exc:
        raise VendorFault(
            f"{vendor}: result download failed ({type(exc).__name__})", vendor=vendor
        ) from None
