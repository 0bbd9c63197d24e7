"""What the console's vendors and costs pages show, computed from the store's summaries."""

from __future__ import annotations

import math
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from tools.store.base import RateWaits, TaskSummary

HOUR = 3600.0
DAY = 86400.0
UNFINISHED = ("queued", "running")


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


@dataclass
class Window:
    """One vendor's tasks asked for in a window: how many, how they ended, and how long
    those that brought results took from being asked for to their end."""

    tasks: int = 0
    succeeded: int = 0
    ended: int = 0
    durations: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.ended if self.ended else None

    @property
    def p50(self) -> float | None:
        return percentile(self.durations, 0.5)

    @property
    def p95(self) -> float | None:
        return percentile(self.durations, 0.95)


@dataclass
class Limit:
    """One of a vendor's rate limits ("submit", "query"…): its cap (calls a second, None:
    none), the calls that waited for a turn in about the last minute and in the last hour
    (and how long in all), and the turns held now; ``binding``: calls wait for it now."""

    kind: str
    cap: float | None
    waits_minute: int = 0
    waits_hour: int = 0
    waited_s_hour: float = 0.0
    held_now: int = 0
    next_free_in: float | None = None  # seconds until a held turn frees, if all are held

    @property
    def binding(self) -> bool:
        full = self.cap is not None and self.held_now >= max(1, math.floor(self.cap))
        return self.waits_minute > 0 or full

    @property
    def bound_hour(self) -> bool:
        return self.waits_hour > 0


@dataclass
class VendorStats:
    name: str
    hour: Window = field(default_factory=Window)
    day: Window = field(default_factory=Window)
    queued: int = 0
    running: int = 0  # slots in use: running with a lease still held
    limits: list[Limit] = field(default_factory=list)


def vendor_stats(
    rows: list[TaskSummary], vendors: list[str], now: float | None = None
) -> list[VendorStats]:
    """Per vendor (the configured ones, then any other seen): the last hour and day, and
    its queue and slots in use now."""
    now = time.time() if now is None else now
    out = {name: VendorStats(name) for name in vendors}
    for row in rows:
        stats = out.setdefault(row.vendor, VendorStats(row.vendor))
        if row.status == "queued":
            stats.queued += 1
        elif row.status == "running" and row.lease_until >= now:
            stats.running += 1
        for window, span in ((stats.hour, HOUR), (stats.day, DAY)):
            if row.created_at < now - span:
                continue
            window.tasks += 1
            if row.status in UNFINISHED:
                continue
            window.ended += 1
            if row.status == "succeeded":
                window.succeeded += 1
            if row.error_code:
                window.errors[row.error_code] += 1
            if row.finished_at is not None and row.status in ("succeeded", "partial"):
                window.durations.append(row.finished_at - row.created_at)
    return list(out.values())


def rate_limits(
    table: list[VendorStats],
    caps: dict[str, dict[str, float | None]],
    waits: list[RateWaits],
    now: float | None = None,
) -> None:
    """Fill each vendor's ``limits``: its caps by kind of call (``caps``: vendor → kind →
    calls a second), with what the store saw of them (``Store.rate_waits``)."""
    now = time.time() if now is None else now
    seen = {(w.vendor, w.kind): w for w in waits}
    for stats in table:
        kinds = dict(caps.get(stats.name, {}))
        for vendor, kind in seen:
            if vendor == stats.name:
                kinds.setdefault(kind, None)
        stats.limits = []
        for kind, cap in kinds.items():
            limit = Limit(kind, cap)
            w = seen.get((stats.name, kind))
            if w is not None:
                limit.waits_minute, limit.waits_hour = w.waits_minute, w.waits_hour
                limit.waited_s_hour, limit.held_now = w.waited_s_hour, w.held_now
                full = cap is not None and w.held_now >= max(1, math.floor(cap))
                if w.next_free_at is not None and full:
                    limit.next_free_in = max(0.0, w.next_free_at - now)
            stats.limits.append(limit)


@dataclass
class Costs:
    """Spending of ended tasks, each currency apart (currency → vendor, owner or UTC day →
    sum), counted on the day each task was asked for."""

    by_vendor: dict[str, dict[str, float]] = field(default_factory=dict)
    by_owner: dict[str, dict[str, float]] = field(default_factory=dict)
    by_day: dict[str, dict[str, float]] = field(default_factory=dict)


def days_back(now: float, count: int) -> list[str]:
    """The last ``count`` UTC days up to ``now``'s, oldest first, as YYYY-MM-DD."""
    return [
        datetime.fromtimestamp(now - i * DAY, UTC).strftime("%Y-%m-%d")
        for i in range(count - 1, -1, -1)
    ]


def costs(rows: list[TaskSummary], days: Sequence[str] = ()) -> Costs:
    """The sums; each currency's ``by_day`` holds every one of ``days`` (0 where none)."""
    by_vendor: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_owner: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    by_day: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for row in rows:
        if row.cost is None or not row.currency:
            continue
        day = datetime.fromtimestamp(row.created_at, UTC).strftime("%Y-%m-%d")
        by_vendor[row.currency][row.vendor] += row.cost
        by_owner[row.currency][row.owner] += row.cost
        by_day[row.currency][day] += row.cost
    for per_day in by_day.values():
        for day in days:
            per_day.setdefault(day, 0.0)
    plain = lambda d: {k: dict(v) for k, v in sorted(d.items())}  # noqa: E731
    return Costs(plain(by_vendor), plain(by_owner), plain(by_day))
