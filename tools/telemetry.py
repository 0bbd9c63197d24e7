"""Metrics in the Prometheus text format (``prometheus-client``), for every process.

Two kinds, kept apart on purpose:

- **What only this process sees**, in this module's ``REGISTRY`` and fed where it happens:
  tasks ending here (``retouch_task_duration_seconds``, observed by the store's ``finish``
  in the process whose write ended the task, so each task is counted once across all
  processes), vendor calls (``retouch_vendor_call_duration_seconds``) and vendor errors by
  code (``retouch_vendor_errors_total``), and a front end's own counters (the bot's). Summed
  over processes by Prometheus (``sum by (…)``).
- **What the store holds**, computed when scraped by one aggregate statement
  (``Store.tallies``), so any process answers the same for the whole store, however many
  processes write to it: tasks by status, vendor and function, billed images and cost by
  vendor and currency, queue depth and slots in use per vendor. These are gauges (a task
  past ``store.retention_days`` is forgotten, so the sums may fall) and every exporter shows
  the same values: read them with ``max by (…)``, never ``sum``. Beside them, counters
  the store keeps as tasks end (``Store.ended``: tasks ended, images billed, cost), which
  retention does not lower: take ``rate``/``increase`` of them (with ``max by``, as every
  exporter shows the same totals).

``render`` makes one scrape's body; ``serve`` runs the small exporter ``retouch-worker`` and
``retouch-bot`` listen with (the HTTP server has its own ``/metrics`` route); ``allowed`` is
the one rule of who may read them (loopback, else the ``[metrics]`` token).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from tools.errors import ConfigError
from tools.store.base import Ended, Tally

log = logging.getLogger("retouch.tasks")

#: No ``*_created`` series: in the text format each is one more gauge per label set, and
#: Prometheus does not use them.
disable_created_metrics()

#: This process's own metrics (not prometheus_client's global registry: a library that
#: registers there cannot collide with these names, and tests read exactly these).
REGISTRY = CollectorRegistry(auto_describe=True)

#: From asking to the end: seconds to minutes for the local engine and synchronous vendors,
#: minutes for queued async jobs.
TASK_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600)
CALL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120)

TASK_DURATION = Histogram(
    "retouch_task_duration_seconds",
    "Tasks ended by this process: seconds from being asked for to their end",
    ["vendor", "function", "status"],
    buckets=TASK_BUCKETS,
    registry=REGISTRY,
)
VENDOR_CALL = Histogram(
    "retouch_vendor_call_duration_seconds",
    "Calls this process made to vendors (submit, poll), answered or failed, in seconds",
    ["vendor", "call"],
    buckets=CALL_BUCKETS,
    registry=REGISTRY,
)
VENDOR_ERRORS = Counter(
    "retouch_vendor_errors",
    "Vendor calls of this process that failed, by Retouch's error code (retried or not)",
    ["vendor", "code"],
    registry=REGISTRY,
)

#: How long one read of the store's gauges serves scrapes (``Editor.metrics_view``).
VIEW_TTL_S = 5.0

#: Names of the store's gauges (``StoreCollector``).
STORE_METRICS = (
    "retouch_tasks",
    "retouch_images",
    "retouch_cost",
    "retouch_queue_depth",
    "retouch_slots_in_use",
    "retouch_slots",
    "retouch_store_up",
    "retouch_tasks_ended_total",
    "retouch_images_billed_total",
    "retouch_cost_billed_total",
)


def task_ended(
    task_id: str,
    status: str,
    vendor: str,
    function: str,
    owner: str | None,
    seconds: float,
) -> None:
    """A task's end was just recorded by this process (the store's ``finish``)."""
    TASK_DURATION.labels(vendor, function, status).observe(max(0.0, seconds))
    log.info(
        "task %s %s (%s, %s) in %.1f s",
        task_id,
        status,
        vendor,
        function,
        seconds,
        extra={
            "task_id": task_id,
            "owner": owner,
            "vendor": vendor,
            "event": f"task_{status}",
        },
    )


def vendor_call(vendor: str, call: str, seconds: float, error_code: str | None = None) -> None:
    """A call to a vendor ended after ``seconds``; ``error_code`` if it failed."""
    VENDOR_CALL.labels(vendor, call).observe(seconds)
    if error_code is not None:
        VENDOR_ERRORS.labels(vendor, error_code).inc()


# ---- the store's gauges ----------------------------------------------------------------


@dataclass(frozen=True)
class StoreView:
    """One scrape's look at the store: its tallies, each configured vendor's slots
    (``max_concurrent``; vendors listed here show 0 queued rather than nothing), and the
    totals of every task ever ended (counters: retention does not lower them)."""

    tallies: list[Tally]
    slots: dict[str, int] = field(default_factory=dict)
    ended: list[Ended] = field(default_factory=list)


class StoreCollector(Collector):
    """The gauges of one ``StoreView`` (or only ``retouch_store_up 0`` without one)."""

    def __init__(self, view: StoreView | None) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "retouch_store_up", "1 if the store answered this scrape's count, else 0"
        )
        up.add_metric([], 1.0 if self.view is not None else 0.0)
        yield up
        if self.view is None:
            return
        tasks = GaugeMetricFamily(
            "retouch_tasks",
            "Tasks in the store by status, vendor and function (all processes; ended tasks "
            "are forgotten after store.retention_days)",
            labels=["status", "vendor", "function"],
        )
        images = GaugeMetricFamily(
            "retouch_images",
            "Images the vendors delivered or billed, of the ended tasks in the store",
            labels=["vendor"],
        )
        cost = GaugeMetricFamily(
            "retouch_cost",
            "What the ended tasks in the store cost, by vendor and currency",
            labels=["vendor", "currency"],
        )
        queue = GaugeMetricFamily(
            "retouch_queue_depth", "Tasks queued for a vendor, not yet claimed", labels=["vendor"]
        )
        in_use = GaugeMetricFamily(
            "retouch_slots_in_use",
            "Tasks running at a vendor with a live lease (its concurrency in use)",
            labels=["vendor"],
        )
        slots = GaugeMetricFamily(
            "retouch_slots", "A vendor's concurrency (max_concurrent)", labels=["vendor"]
        )
        by_task: dict[tuple[str, str, str], int] = {}
        by_images: dict[str, int] = {}
        by_cost: dict[tuple[str, str], float] = {}
        queued = dict.fromkeys(self.view.slots, 0)
        live = dict.fromkeys(self.view.slots, 0)
        for t in self.view.tallies:
            key = (t.status, t.vendor, t.function)
            by_task[key] = by_task.get(key, 0) + t.tasks
            by_images[t.vendor] = by_images.get(t.vendor, 0) + t.images
            if t.cost is not None and t.currency:
                by_cost[(t.vendor, t.currency)] = by_cost.get((t.vendor, t.currency), 0) + t.cost
            queued[t.vendor] = queued.get(t.vendor, 0) + (t.tasks if t.status == "queued" else 0)
            live[t.vendor] = live.get(t.vendor, 0) + t.live
        for (status, vendor, function), count in sorted(by_task.items()):
            tasks.add_metric([status, vendor, function], count)
        for vendor, count in sorted(by_images.items()):
            images.add_metric([vendor], count)
        for (vendor, currency), total in sorted(by_cost.items()):
            cost.add_metric([vendor, currency], total)
        for vendor in sorted(queued):
            queue.add_metric([vendor], queued[vendor])
        for vendor in sorted(live):
            in_use.add_metric([vendor], live[vendor])
        for vendor, n in sorted(self.view.slots.items()):
            slots.add_metric([vendor], n)
        yield from (tasks, images, cost, queue, in_use, slots)
        yield from self._counters(self.view.ended)

    @staticmethod
    def _counters(totals: list[Ended]) -> Iterator[Metric]:
        ended = CounterMetricFamily(
            "retouch_tasks_ended",
            "Tasks that ended, by status, vendor and function, since the store began (all "
            "processes; not lowered when old tasks are forgotten)",
            labels=["status", "vendor", "function"],
        )
        images = CounterMetricFamily(
            "retouch_images_billed",
            "Images the vendors delivered or billed for tasks that ended, since the store began",
            labels=["vendor"],
        )
        # Not "retouch_cost": a counter's family is named without "_total", and one family
        # name for this counter and the gauge retouch_cost would be ambiguous (OpenMetrics
        # refuses it; prometheus_client's parser keeps only one of them).
        cost = CounterMetricFamily(
            "retouch_cost_billed",
            "What the tasks that ended cost, by vendor and currency, since the store began",
            labels=["vendor", "currency"],
        )
        by_task: dict[tuple[str, str, str], int] = {}
        by_images: dict[str, int] = {}
        by_cost: dict[tuple[str, str], float] = {}
        for t in totals:
            key = (t.status, t.vendor, t.function)
            by_task[key] = by_task.get(key, 0) + t.tasks
            by_images[t.vendor] = by_images.get(t.vendor, 0) + t.images
            if t.currency:
                by_cost[(t.vendor, t.currency)] = by_cost.get((t.vendor, t.currency), 0) + t.cost
        for (status, vendor, function), count in sorted(by_task.items()):
            ended.add_metric([status, vendor, function], count)
        for vendor, count in sorted(by_images.items()):
            images.add_metric([vendor], count)
        for (vendor, currency), total in sorted(by_cost.items()):
            cost.add_metric([vendor, currency], total)
        yield from (ended, images, cost)


ViewSource = Callable[[], Awaitable[StoreView]]


async def render(view: ViewSource | None = None) -> bytes:
    """One scrape's body: this process's metrics, then the store's gauges if ``view``
    (``retouch_store_up 0`` if the store did not answer)."""
    body = generate_latest(REGISTRY)
    if view is None:
        return body
    try:
        seen: StoreView | None = await view()
    except Exception as exc:  # the page still shows this process's metrics
        log.warning("metrics: the store did not answer: %s", type(exc).__name__)
        seen = None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(seen))
    return body + generate_latest(registry)


# ---- who may read them -----------------------------------------------------------------

#: Request headers that say a proxy forwarded the request: its loopback address is then
#: the proxy's, not the client's.
FORWARDED = ("forwarded", "x-forwarded-for", "x-real-ip")


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def token_digest(token: str) -> bytes | None:
    return hashlib.sha256(token.encode()).digest() if token else None


def allowed(
    client: str | None,
    headers: Mapping[str, str],
    digest: bytes | None,
    *,
    trust_loopback: bool = True,
) -> bool:
    """May this request read the metrics? A loopback client that no proxy forwarded (and
    ``trust_loopback``), or ``Authorization: Bearer <the [metrics] token>``, compared in
    constant time. ``headers``: lower-case names."""
    if trust_loopback and is_loopback(client) and not any(headers.get(name) for name in FORWARDED):
        return True
    if digest is None:
        return False
    authorization = headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    presented = hashlib.sha256(token.strip().encode()).digest()
    return hmac.compare_digest(presented, digest) and scheme.lower() == "bearer"


# ---- the exporter of processes without an HTTP server -----------------------------------


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no line per scrape
        pass


def exporter_app(
    loop: asyncio.AbstractEventLoop,
    view: ViewSource | None,
    digest: bytes | None,
    timeout_s: float = 10.0,
) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app serving ``GET /metrics`` from a thread: the store is asked on ``loop``."""

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        def answer(status: str, body: bytes, ctype: str = "text/plain; charset=utf-8") -> list:
            start(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
            return [body] if environ["REQUEST_METHOD"] != "HEAD" else []

        headers = {
            key[5:].replace("_", "-").lower(): str(value)
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if environ.get("PATH_INFO") != "/metrics":
            return answer("404 Not Found", b"not found\n")
        if environ["REQUEST_METHOD"] not in ("GET", "HEAD"):
            return answer("405 Method Not Allowed", b"GET /metrics\n")
        if not allowed(environ.get("REMOTE_ADDR"), headers, digest):
            start(
                "401 Unauthorized",
                [("Content-Type", "text/plain"), ("WWW-Authenticate", "Bearer")],
            )
            return [b"send Authorization: Bearer <metrics token>\n"]
        length = environ.get("CONTENT_LENGTH") or "0"
        if environ.get("HTTP_TRANSFER_ENCODING") or not length.isdigit() or int(length) > 0:
            return answer("413 Content Too Large", b"a scrape has no body\n")
        started = time.monotonic()
        try:
            body = asyncio.run_coroutine_threadsafe(render(view), loop).result(timeout_s)
        except Exception as exc:
            log.warning("metrics: scrape failed: %s", type(exc).__name__)
            return answer("503 Service Unavailable", b"try again\n")
        log.debug("metrics scraped in %.3f s", time.monotonic() - started)
        return answer("200 OK", body, CONTENT_TYPE_LATEST)

    return app


def check_exporter(settings: Any, port: int | None, key: str) -> None:
    """An exporter beyond loopback needs the [metrics] token: say so before starting."""
    host = settings.metrics.host
    if port is not None and not settings.metrics.token.get_secret_value() and not is_loopback(host):
        raise ConfigError(
            f"{settings.source}: {key} is set and metrics.host is {host}, beyond loopback: set "
            "metrics.token so that only your scrapers read the metrics"
        )


class Exporter:
    """``GET /metrics`` on ``host:port``, served from a thread of this process."""

    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server = server
        self.thread = thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def serve(
    host: str,
    port: int,
    *,
    view: ViewSource | None = None,
    token: str = "",
) -> Exporter:
    """Start the exporter (from inside the running event loop, which answers ``view``).
    Beyond loopback a token is required; a port that cannot be had is a ConfigError."""
    if not token and not is_loopback(host):
        raise ConfigError(f"metrics on {host}, beyond loopback, need a metrics.token")
    app = exporter_app(asyncio.get_running_loop(), view, token_digest(token))
    try:
        server = make_server(host, port, app, server_class=_Server, handler_class=_Quiet)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from None
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return Exporter(server, thread)
