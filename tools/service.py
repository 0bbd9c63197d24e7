"""The Editor: the one object both front ends talk to.

async with Editor(settings) as editor:
    task = await editor.edit_image(EditRequest(images=[...], prompt="oil painting",
                                               function="stylization_all"))
    task = await editor.check_task(task.id, wait_seconds=30)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx

from tools import budgets, catalog, idempotency, media, pixel_budget, telemetry
from tools.callbacks import callback_secrets, same_secret
from tools.config import OWNER_NAME, Settings, unbilled
from tools.errors import InvalidParameter, NotFound, RetouchError, Unsupported
from tools.models import (
    Budget,
    BudgetLimits,
    EditRequest,
    FunctionInfo,
    Task,
    TaskStatus,
    Upload,
)
from tools.notifier import Notifier
from tools.store import Store, open_store
from tools.store.base import (
    Admission,
    OwnerUsage,
    RateWaits,
    TaskFilter,
    TaskRecord,
    TaskStep,
    TaskSummary,
)
from tools.timeline import Timeline
from tools.users import Users
from tools.vendors.base import Vendor
from tools.vendors.registry import kinds_that_can, vendor_class
from tools.worker import Intake, Worker
from tools.worker.scheduler import capacity

if TYPE_CHECKING:
    from PIL import Image

Progress = Callable[[Task], Awaitable[None]]
#: The shortest life of an upload, whatever store.retention_days says.
MIN_UPLOAD_TTL_S = 3600.0
#: Tasks whose decoded results are kept for the front end that waited for them.
KEEP_DECODED = 8
#: A caller waiting for a task reads it again at least this often: what covers a store
#: that hears nothing from other processes (SQLite), or a lost notification.
WAIT_POLL_S = 0.5
#: A progress change is shown to a caller that watches progress once this long has passed
#: without the task ending: an edit that ends at once costs no read and no notification for
#: a step nobody would see.
PROGRESS_SETTLE_S = 0.05

#: How long a vendor connection may sit idle before it is let go (below servers' usual 5 s).
VENDOR_KEEPALIVE_S = 4.0

log = logging.getLogger("retouch.tasks")


async def tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The TLS contexts of the vendors' clients (the environment's CA files, if it names
    any) and of user downloads (certifi's, whatever the environment says): made once, for
    every client. Loading the CA certificates takes ~20 ms a context, mostly outside the GIL:
    in threads, so that the event loop goes on meanwhile (a server answers requests while its
    Editor starts)."""
    vendors = asyncio.to_thread(httpx.create_ssl_context)
    if not (os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")):
        tls = await vendors
        return tls, tls
    own, certifi = await asyncio.gather(
        vendors, asyncio.to_thread(httpx.create_ssl_context, trust_env=False)
    )
    return own, certifi


class Editor:
    def __init__(
        self,
        settings: Settings,
        *,
        allow_local_paths: bool = False,
        resolver: media.Resolver | None = None,
        run_worker: bool = True,
    ) -> None:
        self.settings = settings
        allow = settings.media.allow_local_paths
        self.policy = media.MediaPolicy(
            max_bytes=settings.media.max_bytes,
            max_pixels=settings.media.max_pixels,
            allow_local_paths=allow_local_paths if allow is None else allow,
            allow_networks=settings.media.allow_networks,
            timeout_s=settings.media.fetch_timeout_s,
            max_redirects=settings.media.max_redirects,
            resolver=resolver or media.system_resolver,
        )
        pixel_budget.PIXELS.configure(settings.media.decode_budget, settings.media.decode_wait_s)
        self.run_worker = run_worker
        self.store: Store
        self.intake: Intake
        self.users: Users
        self.vendors: dict[str, Vendor] = {}
        self.worker: Worker | None = None
        self.notifier = Notifier()
        self.timeline = Timeline()
        self._decoded: OrderedDict[str, dict[int, Image.Image]] = OrderedDict()
        self._downloads = asyncio.Semaphore(settings.media.max_concurrent_downloads)
        self._janitor: asyncio.Task[None] | None = None
        #: The time uploads expire by and budgets count by (tests set it; the store's
        #: clean-up and leases use real time).
        self.clock: Callable[[], float] = time.time
        self._callback_secrets: dict[str, str] = {}
        self._decoy = secrets.token_urlsafe(32)  # compared when a name has no secret
        self._taking: set[str] = set()  # tasks a callback is being taken for, in this process
        # the last read of the store's gauges: when it began, and the read
        self._metrics_view: tuple[float, asyncio.Future[telemetry.StoreView] | None] = (0.0, None)

    # ---- life cycle ----------------------------------------------------------------------

    async def start(self) -> Editor:
        cfg = self.settings
        self._callback_secrets = callback_secrets(cfg)
        self.store = await open_store(cfg.store)
        try:
            return await self._start_on_store()
        except BaseException:
            await self.close()  # what was opened so far: nothing is left running
            raise

    async def _start_on_store(self) -> Editor:
        cfg = self.settings
        await self.store.listen(self.notifier.event)  # other processes' changes wake us too
        self.intake = Intake(self.store, self.notifier, self.timeline)
        self.users = Users(cfg, self.store, lambda: self.clock())
        tls, downloads = await tls_contexts()
        # User downloads never follow the environment's proxies, CA files or redirects.
        self.fetcher = httpx.AsyncClient(trust_env=False, follow_redirects=False, verify=downloads)
        # An idle connection is let go before the 5 s after which many servers (uvicorn,
        # Node.js) close theirs: reusing one as the server closes it fails the request with a
        # ReadError, and a submission that may have arrived is never sent again (1 edit in
        # ~15 000 in bench/scaleout.py failed so with httpx's own 5 s).
        vendor_limits = httpx.Limits(max_connections=100, keepalive_expiry=VENDOR_KEEPALIVE_S)
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(60, connect=10), limits=vendor_limits, verify=tls
        )
        for name, vs in cfg.enabled_vendors().items():
            client = self.http
            if vs.timeout_s != 60:
                client = httpx.AsyncClient(
                    timeout=httpx.Timeout(vs.timeout_s, connect=10),
                    limits=vendor_limits,
                    verify=tls,
                )
            self.vendors[name] = vendor_class(vs.kind)(name, vs, client)
        if self.run_worker:
            await asyncio.gather(*(v.warm_up() for v in self.vendors.values()))
            self.worker = Worker(
                self.store, self.vendors, cfg, self.http, self.notifier, self.timeline
            )
            await self.worker.start()
            self._janitor = asyncio.create_task(self._clean_periodically())
        return self

    async def close(self) -> None:
        if self._janitor:
            self._janitor.cancel()
            with contextlib.suppress(BaseException):
                await self._janitor
        if self.worker:
            await self.worker.stop()
        http: httpx.AsyncClient | None = getattr(self, "http", None)  # None: start failed early
        for vendor in self.vendors.values():
            with contextlib.suppress(Exception):
                await vendor.aclose()
            if vendor.http is not http:
                await vendor.http.aclose()
        for client in (http, getattr(self, "fetcher", None)):
            if client is not None:
                await client.aclose()
        await self.store.close()

    async def __aenter__(self) -> Editor:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _clean_periodically(self) -> None:
        cfg = self.settings.store
        limit = cfg.max_results_mb * 1024 * 1024 if cfg.max_results_mb else None
        while True:
            with contextlib.suppress(Exception):
                await self.store.cleanup(cfg.retention_days, limit)
            with contextlib.suppress(Exception):
                await self.store.expire_keys(self.keys_since())
            await asyncio.sleep(3600)

    def keys_since(self) -> float:
        """Idempotency keys used before this time have expired (``store.idempotency_ttl_h``)."""
        return self.clock() - self.settings.store.idempotency_ttl_h * 3600

    # ---- the four operations -------------------------------------------------------------

    def list_functions(self, vendor: str | None = None) -> list[FunctionInfo]:
        vendors = {name: self.vendors[name] for name in self.routing_order()}
        if vendor is not None:
            vendors = {vendor: self._vendor(vendor)}
        out = []
        for spec in catalog.FUNCTIONS.values():
            able = {
                n: v.capabilities[spec.name]
                for n, v in vendors.items()
                if spec.name in v.capabilities
            }
            if vendor is not None and not able:
                continue
            mask = spec.mask
            out.append(
                FunctionInfo(
                    name=spec.name,
                    summary=spec.summary,
                    min_images=spec.min_images,
                    max_images=spec.max_images,
                    mask=mask,
                    parameters=catalog.parameter_schema(spec),
                    vendors=list(able),
                    notes={n: c.note for n, c in able.items() if c.note},
                )
            )
        return out

    async def edit_image(
        self,
        request: EditRequest,
        *,
        owner: str | None = None,
        wait_seconds: float = 0,
        on_progress: Progress | None = None,
        key: str | None = None,
    ) -> Task:
        """Validate, store the task with its inputs, and return it (optionally waiting).

        The task is ``owner``'s, and the earlier results and uploads it takes as inputs must
        be too (None, for trusted callers only: stored without an owner, which makes it the
        local owner's; earlier results unscoped, no uploads). With ``key``, the same
        request made again by the same owner with the same key returns the first one's
        task, and another request with that key is IdempotencyConflict (naming the task);
        another owner's key is another, and a key expires ``store.idempotency_ttl_h`` after
        its task was made. The owner's budget is checked before anything is loaded, and
        again, atomically, as the task is stored (BudgetExceeded).

        A task this process may run at once is started here, from the request, rather than
        through the worker's claim loop (``Worker.start_now``); the decoded images of its
        results are then kept for ``decoded_result`` while its caller waits."""
        received = time.time()
        fingerprint = keys_since = None
        if key is not None:
            key = key if owner is None else _owners_key(owner, key)
            # Hashing megabytes of data: URIs, off the event loop.
            fingerprint = await asyncio.to_thread(idempotency.fingerprint, request)
            keys_since = self.keys_since()
            known = await self.store.find_by_key(key, since=keys_since, fingerprint=fingerprint)
            if known is not None:  # the same request: its task, nothing new started
                if wait_seconds > 0:
                    return await self.check_task(known.id, wait_seconds, on_progress)
                return known.public()
        catalog.validate(request)
        vendor = self.route(request)
        vendor.check(request)
        admission = await self._admission(owner, vendor, request) if owner is not None else None
        images = await asyncio.gather(
            *(self._load(src, f"image {i + 1}", owner) for i, src in enumerate(request.images))
        )
        mask = await self._load(request.mask, "mask", owner) if request.mask else None
        if mask is not None:  # refuse a mask of another shape now, not at the vendor
            media.check_mask_shape(mask, (images[0].width, images[0].height))
        loaded = time.time()
        # Claimed as it is stored, where the worker would claim it just after (a task found
        # by its key is another's: it is not claimed so).
        claim = self.worker.claim_for(vendor.name) if self.worker and key is None else None
        # Under store.max_results_mb: room made as they are stored, or StorageFull.
        shas = [await self.store.put_blob(img, owner=owner) for img in images]
        mask_sha = await self.store.put_blob(mask, owner=owner) if mask is not None else None
        record = await self.store.create_task(
            function=request.function,
            vendor=vendor.name,
            prompt=request.prompt,
            n=request.n,
            request=_recordable(request),
            inputs=shas,
            mask=mask_sha,
            owner=owner,
            key=key,
            created_at=self.clock(),
            admission=admission,
            fingerprint=fingerprint,
            keys_since=keys_since,
            claim=claim,
        )
        claimed = claim is not None and record.lease_owner == claim.worker
        log.info(
            "task %s queued for %s (%s)",
            record.id,
            vendor.name,
            request.function,
            extra={
                "task_id": record.id,
                "owner": owner,
                "vendor": vendor.name,
                "event": "task_queued",
            },
        )
        self.timeline.mark(record.id, "received", received)
        self.timeline.mark(record.id, "inputs loaded", loaded)
        self.timeline.mark(record.id, "stored")
        if wait_seconds > 0:
            self.notifier.expect(record.id)
        if self.worker and (claimed or record.status == "queued"):
            decoded: dict[int, Image.Image] = {}
            # A task made before with this key has its own inputs: the driver reads them.
            inputs = (list(images), mask) if key is None else None
            # Shielded: a caller that gives up must not leave a claimed task unstarted.
            starting = self.worker.start_now(record, inputs, decoded, claimed=claimed)
            job = await asyncio.shield(starting)
            if job is not None and wait_seconds > 0:
                self._decoded[record.id] = decoded
                while len(self._decoded) > KEEP_DECODED:
                    self._decoded.popitem(last=False)
        if wait_seconds > 0:
            task = None
            try:
                task = await self._waited(record, wait_seconds, on_progress)
            finally:
                if task is None or not task.status.finished:  # nobody waits for it now
                    self._decoded.pop(record.id, None)
            return task
        return record.public()

    async def check_task(
        self,
        task_id: str,
        wait_seconds: float = 0,
        on_progress: Progress | None = None,
        *,
        owner: str | None = None,
    ) -> Task:
        """The task as stored; with ``wait_seconds``, wait up to that long for its end.

        Front ends pass the asking ``owner``: another owner's task is then NotFound, exactly
        as an unknown id is. None (no scoping) is for trusted callers that hold the id."""
        if wait_seconds > 0:
            self.notifier.expect(task_id)
        record = await self.store.get(task_id, owner=owner)
        return await self._waited(record, wait_seconds, on_progress)

    async def _waited(
        self, record: TaskRecord, wait_seconds: float, on_progress: Progress | None
    ) -> Task:
        """``record`` as it is after up to ``wait_seconds`` (a caller that waits has called
        ``notifier.expect`` before reading it, so no change is missed)."""
        task_id = record.id
        deadline = time.monotonic() + min(max(wait_seconds, 0), 3600)
        seen = record.progress
        with self.notifier.watching(task_id) if on_progress else contextlib.nullcontext():
            while not record.finished and time.monotonic() < deadline:
                # Woken by this process's worker, or by the store for another process's;
                # the timeout covers a store that hears nothing from other processes.
                heard = await self.notifier.wait(
                    task_id, min(WAIT_POLL_S, deadline - time.monotonic())
                )
                if heard == "changed" and on_progress:  # shown unless the end follows at once
                    settle = min(PROGRESS_SETTLE_S, deadline - time.monotonic())
                    await self.notifier.wait(task_id, max(settle, 0))
                record = await self.store.get(task_id)
                if on_progress and record.progress != seen and not record.finished:
                    seen = record.progress
                    await on_progress(record.public())
        if record.finished:
            self.notifier.forget(task_id)
        return record.public()

    async def cancel_task(self, task_id: str, *, owner: str | None = None) -> Task:
        """Cancel a task that has not ended (``owner`` as for :meth:`check_task`)."""
        if owner is not None:
            await self.store.get(task_id, owner=owner)
        record = await self.store.request_cancel(task_id)
        if record.status == "queued" and await self.store.finish(
            task_id, None, TaskStatus.canceled
        ):
            record = await self.store.get(task_id)
        self.notifier.changed(task_id)
        return record.public()

    async def metrics_view(self) -> telemetry.StoreView:
        """What ``/metrics`` shows of the whole store: its tallies and ended totals (kept
        by the store as tasks change: one row a group), and each configured vendor's slots.
        Scrapes that arrive together share one read, and a read serves for
        ``telemetry.VIEW_TTL_S``."""
        read_at, reading = self._metrics_view
        if reading is None or (
            reading.done() and time.monotonic() - read_at > telemetry.VIEW_TTL_S
        ):
            reading = asyncio.ensure_future(self._read_metrics_view())
            self._metrics_view = (time.monotonic(), reading)
        try:
            return await asyncio.shield(reading)
        except BaseException:
            if reading.done():  # a failed read is not kept
                self._metrics_view = (0.0, None)
            raise

    async def _read_metrics_view(self) -> telemetry.StoreView:
        slots = {name: capacity(vendor) for name, vendor in self.vendors.items()}
        return telemetry.StoreView(await self.store.tallies(), slots, await self.store.ended())

    async def list_tasks(self, *, owner: str | None = None, limit: int = 20) -> list[Task]:
        """The newest tasks first: ``owner``'s, or everyone's with None."""
        return [r.public() for r in await self.store.list(owner=owner, limit=limit)]

    def decoded_result(self, task_id: str, index: int) -> Image.Image | None:
        """Result ``index`` of a task this process ran for a caller that waited, as it was
        decoded when it arrived; once only (None after, or if it was not kept)."""
        kept = self._decoded.get(task_id)
        if kept is None:
            return None
        image = kept.pop(index, None)
        if not kept and image is not None:
            del self._decoded[task_id]
        return image

    async def result(
        self, task_id: str, index: int, task: Task | None = None, *, owner: str | None = None
    ) -> tuple[bytes, str]:
        """A stored result's bytes and MIME type (for resources and downloads); ``task``:
        the task as just returned, which saves reading it again without an ``owner``
        (``owner`` as for :meth:`check_task`)."""
        if not media.RESULT_URI.match(f"retouch://tasks/{task_id}/{index}"):
            raise NotFound("no such result")
        known = [r.model_dump() for r in task.results] if task and task.id == task_id else None
        if owner is not None:
            known = (await self.store.get(task_id, owner=owner)).results
        return await self.store.read_result(task_id, index, known)

    # ---- uploads -------------------------------------------------------------------------

    async def put_upload(self, data: bytes, owner: str) -> Upload:
        """Check bytes like any input image, store them as the owner's upload, and say how
        to use it (``retouch://uploads/<id>``) and until when: ``store.retention_days``, at
        least an hour. A task that uses the upload keeps its bytes as long as the task."""
        image = await media.check(data, self.policy, "upload")  # within the pixel budget
        sha = await self.store.put_blob(image, owner=owner)
        now = self.clock()
        ttl = max(self.settings.store.retention_days * 86400, MIN_UPLOAD_TTL_S)
        record = await self.store.create_upload(
            owner=owner, sha256=sha, created_at=now, expires_at=now + ttl
        )
        return Upload(
            uri=f"retouch://uploads/{record.id}",
            mime_type=image.mime_type,
            width=image.width,
            height=image.height,
            bytes=len(image.data),
            expires_at=datetime.fromtimestamp(record.expires_at, UTC),
        )

    async def upload(self, upload_id: str, owner: str | None) -> media.InputImage:
        """The owner's upload; another owner's, an expired one and an unknown one are all
        the same NotFound. Without an owner there are no uploads."""
        record = await self.store.get_upload(upload_id, owner) if owner is not None else None
        if record is None or record.expires_at <= self.clock():
            raise NotFound(f"no such upload: retouch://uploads/{upload_id}")
        return await self.store.read_blob(record.sha256)

    # ---- callbacks -----------------------------------------------------------------------

    def callback_secret_matches(self, vendor_name: str, secret: str) -> bool:
        """Whether ``secret`` ends the callback URL of vendor instance ``vendor_name``
        (False for a name that takes no callbacks; compared in constant time)."""
        expected = self._callback_secrets.get(vendor_name)
        return same_secret(expected or self._decoy, secret) and expected is not None

    async def vendor_callback(
        self, vendor_name: str, body: bytes, headers: Mapping[str, str]
    ) -> tuple[str, bool]:
        """A vendor's completion callback, its URL's secret checked by the caller
        (``callback_secret_matches``): the vendor's own signature is checked, then the task
        waiting on it — running, with that vendor task id, at that vendor instance — takes
        its results, at most its ``n``. Returns the task's id and whether this callback ended
        it (a callback for a task that has ended, or is being ended, changes nothing).

        Raises NotFound for a signature that does not hold or no such waiting task, and
        VendorFault for a body that is not a callback."""
        vendor = self._vendor(vendor_name)
        if not vendor.verify_callback(body, headers):
            raise NotFound(f"{vendor_name}: the callback's signature does not hold")
        vendor_task_id, outcome = vendor.parse_callback(body, headers)
        record = await self.store.find_by_vendor_task(vendor_name, vendor_task_id)
        if record is not None and (record.finished or record.id in self._taking):
            return record.id, False
        if record is None or record.status != TaskStatus.running:
            raise NotFound(f"no task is waiting on {vendor_name} for its task {vendor_task_id:.64}")
        self._taking.add(record.id)
        try:  # result URLs are still fetched like user URLs: a secret can leak
            ended = await self.intake.take(
                record, vendor, outcome, client=self.fetcher, policy=self.policy
            )
        finally:
            self._taking.discard(record.id)
        return record.id, ended

    # ---- budgets and users ---------------------------------------------------------------

    async def budget(self, owner: str) -> Budget:
        """The owner's limits in effect and use now (``tools/budgets.py`` says how)."""
        periods = budgets.Periods.at(self.clock())
        usage = await self.store.owner_usage(owner, periods.windows)
        return budgets.report(owner, await self.limits(owner), usage, periods, self._price)

    async def limits(self, owner: str) -> BudgetLimits:
        """The owner's limits: the override set at run time, over the config's."""
        configured = self.settings.budgets.for_owner(owner)
        override = (await self.store.budget_overrides(owner)).get(owner)
        return configured if override is None else override.over(configured)

    async def budget_override(self, owner: str) -> BudgetLimits | None:
        """The owner's override set at run time, if any."""
        return (await self.store.budget_overrides(owner)).get(owner)

    async def set_budget(self, owner: str, limits: BudgetLimits | None) -> Budget:
        """Set the owner's override of the configured limits (None removes it), from the
        terminal or the console; every process uses it from the owner's next request."""
        if not OWNER_NAME.fullmatch(owner):
            raise InvalidParameter(f"{owner!r} is not an owner", parameter="owner")
        billed = self.settings.billing_currencies()
        for currency in sorted({*limits.day, *limits.month} if limits else ()):
            if currency not in billed:
                raise InvalidParameter(unbilled(currency, billed), parameter="currency")
        await self.store.set_budget_override(
            owner, None if limits is None or limits.unlimited else limits
        )
        return await self.budget(owner)

    async def _admission(
        self, owner: str, vendor: Vendor, request: EditRequest
    ) -> Admission | None:
        """The check of the owner's budget for this request, run once now (before anything
        is loaded) and again when the task is stored; None when the owner has no limits."""
        limits = await self.limits(owner)
        if limits.unlimited:
            return None
        periods = budgets.Periods.at(self.clock())
        cost, currency = budgets.estimate(self._price, vendor.name, request.function, request.n)

        def check(usage: OwnerUsage) -> None:
            budgets.check(limits, usage, periods, cost, currency, self._price)

        admission = Admission(periods.windows, check)
        check(await self.store.owner_usage(owner, periods.windows))
        return admission

    def _price(self, vendor: str, function: str) -> tuple[float | None, str | None]:
        known = self.vendors.get(vendor)
        return known.price_for(function) if known is not None else (None, None)

    # ---- helpers -------------------------------------------------------------------------

    def route(self, request: EditRequest) -> Vendor:
        """The vendor a request goes to: the one it names, else the first able one."""
        if request.vendor:
            return self._vendor(request.vendor)
        refusals: list[RetouchError] = []
        for name in self.routing_order():
            vendor = self.vendors[name]
            if request.function not in vendor.capabilities:
                continue
            try:
                vendor.check(request)
                return vendor
            except RetouchError as exc:
                refusals.append(exc)
        if len(refusals) == 1:
            raise refusals[0]
        if refusals:
            raise Unsupported(
                f"no enabled vendor can run {request.function} with these parameters: "
                + "; ".join(r.message for r in refusals),
                function=request.function,
            )
        able = kinds_that_can(request.function)
        raise Unsupported(
            f"no enabled vendor can run {request.function}"
            + (
                f"; vendor kinds that can: {', '.join(able)} — enable one in config.toml"
                if able
                else ""
            ),
            function=request.function,
        )

    def routing_order(self) -> list[str]:
        """Enabled vendors in the order requests without a vendor try them."""
        routing = self.settings.routing
        names = [*routing.order, routing.default_vendor, *self.vendors]
        return [n for n in dict.fromkeys(names) if n in self.vendors]

    def _vendor(self, name: str) -> Vendor:
        try:
            return self.vendors[name]
        except KeyError:
            raise InvalidParameter(
                f"unknown or disabled vendor {name!r}; enabled: {', '.join(self.vendors)}",
                parameter="vendor",
            ) from None

    async def _load(self, source: str, label: str, owner: str | None = None) -> media.InputImage:
        async def owners_result(task_id: str, index: int) -> bytes:
            return (await self.result(task_id, index, owner=owner))[0]

        async def upload_bytes(upload_id: str) -> bytes:
            return (await self.upload(upload_id, owner)).data

        async with self._downloads:
            return await media.load(
                source, self.policy, self.fetcher, owners_result, label, upload_bytes
            )

    # ---- what front ends ask about their users' tasks and the vendors ---------------------

    def vendor_kinds(self) -> dict[str, str]:
        """The enabled vendors: name → kind."""
        return {name: vendor.kind for name, vendor in self.vendors.items()}

    def vendor_functions(self, vendor: str) -> list[str]:
        """The catalogue functions an enabled vendor runs, in the vendor's own order."""
        return list(self._vendor(vendor).capabilities)

    async def active_tasks(self, owner: str) -> list[Task]:
        """``owner``'s tasks still queued or running, newest first."""
        return [r.public() for r in await self.store.active(owner)]

    async def usage(self, owner: str, since: float) -> tuple[int, float | None]:
        """How many tasks ``owner`` started since ``since`` (Unix time), and when the first
        of them was started (None: none was)."""
        return await self.store.usage(owner, since)

    async def tasks(self, task_ids: Sequence[str]) -> list[Task]:
        """The tasks among ``task_ids`` still stored, in no particular order."""
        return [r.public() for r in await self.store.get_many(task_ids)]

    # ---- the console's queries ------------------------------------------------------------

    async def task_page(
        self, where: TaskFilter, *, before: int | None = None, limit: int = 50
    ) -> list[TaskRecord]:
        """The newest tasks matching ``where`` below ``seq`` ``before`` (everyone's)."""
        return await self.store.page(where, before=before, limit=limit)

    async def task_record(self, task_id: str) -> TaskRecord:
        """A task as stored, with what only the store holds (attempts, polls, times)."""
        return await self.store.get(task_id)

    async def task_steps(self, task_id: str) -> list[TaskStep]:
        """The store's log of a task's steps, oldest first (empty for a task stored before
        the log was kept). Operators only: it holds the vendor's task id."""
        return await self.store.steps(task_id)

    async def rate_waits(self) -> list[RateWaits]:
        """Each vendor's rate-limit waits of the last hour and the turns it holds now."""
        return await self.store.rate_waits()

    def rate_caps(self, vendor: str) -> dict[str, float | None]:
        """A vendor's calls a second by kind of call ("submit" — or its models' own kinds —
        and "query"); None: no cap."""
        known = self._vendor(vendor)
        caps = dict(known.settings.submit_rate(f) for f in sorted(known.capabilities))
        return {**caps, "query": known.settings.query_rps}

    async def task_summaries(self, since: float) -> list[TaskSummary]:
        """The tasks asked for since ``since`` and all unfinished ones, light."""
        return await self.store.summaries(since)

    async def task_image(self, task_id: str, role: str, index: int) -> bytes:
        """The bytes of a task's input or result ``index`` (NotFound if none)."""
        shas = await self.store.task_blobs(task_id, role)
        if not 0 <= index < len(shas):
            raise NotFound(f"task {task_id} has no {role} {index}")
        return (await self.store.read_blob(shas[index])).data

    async def run_again(self, task_id: str) -> Task:
        """A new task with a task's request, inputs and owner (its budget checked again)."""
        record = await self.store.get(task_id)
        images = await self.store.task_images(task_id)

        async def uri(sha: str) -> str:
            return (await self.store.read_blob(sha)).data_uri()

        request = {k: v for k, v in record.request.items() if k != "source_urls"}
        request["images"] = [await uri(sha) for sha in images.get("input", [])]
        if images.get("mask"):
            request["mask"] = await uri(images["mask"][0])
        return await self.edit_image(EditRequest.model_validate(request), owner=record.owner)


def _owners_key(owner: str, key: str) -> str:
    """An idempotency key as stored: the owner's name first (the separator is in no owner
    name), so that one owner's key never finds another owner's task."""
    return f"{owner}\x1f{key}"


def _recordable(request: EditRequest) -> dict[str, Any]:
    """The request as stored: data URIs shortened (the bytes are stored as blobs)."""
    data = request.model_dump(mode="json", exclude_none=True)

    def short(src: str) -> str:
        return f"data:…({len(src)} chars)" if src.startswith("data:") else src

    data["images"] = [short(s) for s in request.images]
    if request.mask:
        data["mask"] = short(request.mask)
    data["source_urls"] = [
        s if s.startswith(("http://", "https://")) else None for s in request.images
    ]
    return data
