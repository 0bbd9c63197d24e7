"""Budgets: what an owner may spend and start, and what they have used.

Costs are counted per currency, as the vendors bill them: an ended task counts its ``cost``
in the UTC day and month it was asked for; a task still queued or running counts its
estimate (its vendor's price × ``n``), so that requests arriving together cannot pass a
limit before any of them is billed. The local engine is free. Edits per hour are the tasks
asked for in the last 60 minutes; concurrent ones are those queued or running. A request is
refused (:class:`BudgetExceeded`) when it would cross a limit, with the limit, the amount
used and when it resets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from tools.errors import BudgetExceeded
from tools.models import Budget, BudgetLimits, Spend
from tools.store.base import OwnerUsage, Windows

#: (vendor, function) → price per image and its currency (None where unknown).
Price = Callable[[str, str], tuple[float | None, str | None]]
#: Costs closer than this to a limit are within it (float sums of prices).
EPSILON = 1e-9
HOUR_S = 3600.0


@dataclass(frozen=True)
class Periods:
    """The periods use is counted over at one moment."""

    now: float
    windows: Windows
    day_ends: datetime
    month_ends: datetime

    @classmethod
    def at(cls, now: float) -> Periods:
        day = datetime.fromtimestamp(now, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        month = day.replace(day=1)
        next_month = (month + timedelta(days=32)).replace(day=1)
        windows = Windows(hour=now - HOUR_S, day=day.timestamp(), month=month.timestamp())
        return cls(now, windows, day + timedelta(days=1), next_month)


def estimate(price: Price, vendor: str, function: str, n: int) -> tuple[float, str | None]:
    """What a task is expected to cost: its vendor's price × ``n`` (0 where unknown)."""
    per_image, currency = price(vendor, function)
    if per_image is None or not currency:
        return 0.0, None
    return per_image * n, currency.upper()


def pending(usage: OwnerUsage, price: Price) -> dict[str, float]:
    """Currency → the estimates of the owner's tasks still queued or running."""
    out: dict[str, float] = {}
    for task in usage.active:
        cost, currency = estimate(price, task.vendor, task.function, task.n)
        if currency:
            out[currency] = out.get(currency, 0.0) + cost
    return out


def _upper(costs: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for currency, cost in costs.items():
        out[currency.upper()] = out.get(currency.upper(), 0.0) + cost
    return out


def check(
    limits: BudgetLimits,
    usage: OwnerUsage,
    periods: Periods,
    cost: float,
    currency: str | None,
    price: Price,
) -> None:
    """Refuse (BudgetExceeded) a request expected to cost ``cost`` ``currency`` that the
    owner's ``limits`` do not allow, given their ``usage``."""
    now = periods.now
    active = len(usage.active)
    if limits.concurrent is not None and active >= limits.concurrent:
        raise BudgetExceeded(
            f"Budget: you have {_count(active, 'edit')} queued or running and your limit is "
            f"{limits.concurrent} at once; try again when one has finished (or cancel one).",
            limit="concurrent",
            allowed=limits.concurrent,
            used=active,
        )
    per_hour = limits.edits_per_hour
    if per_hour is not None and usage.edits >= per_hour:
        fits = (usage.first_edit_at or now) + HOUR_S if per_hour else None
        when = f"the next one fits at {_when(fits, now)}" if fits else "no edit fits"
        raise BudgetExceeded(
            f"Budget: you have asked for {_count(usage.edits, 'edit')} in the last hour and "
            f"your limit is {per_hour} an hour; {when}.",
            limit="edits_per_hour",
            allowed=per_hour,
            used=usage.edits,
            resets_at=_iso(fits),
        )
    if not currency or cost <= 0:
        return
    waiting = pending(usage, price).get(currency, 0.0)
    for period, allowed, spent, resets, name in (
        ("day", limits.day, usage.day_cost, periods.day_ends, "today (UTC)"),
        ("month", limits.month, usage.month_cost, periods.month_ends, "this month (UTC)"),
    ):
        limit = allowed.get(currency)
        if limit is None:
            continue
        used = _upper(spent).get(currency, 0.0)
        if used + waiting + cost <= limit + EPSILON:
            continue
        also = f", and {amount(waiting)} is held for edits not finished" if waiting else ""
        raise BudgetExceeded(
            f"Budget: this edit would cost {amount(cost)} {currency}, and you have used "
            f"{amount(used)} of your {amount(limit)} {currency} for {name}{also}; "
            f"the {period}'s budget starts again at {_when(resets.timestamp(), now)}.",
            limit=period,
            currency=currency,
            allowed=limit,
            used=round(used, 6),
            pending=round(waiting, 6),
            requested=round(cost, 6),
            resets_at=resets.isoformat(),
        )


def report(
    owner: str, limits: BudgetLimits, usage: OwnerUsage, periods: Periods, price: Price
) -> Budget:
    """The owner's limits and use now."""
    waiting = pending(usage, price)

    def spends(allowed: dict[str, float], spent: dict[str, float]) -> dict[str, Spend]:
        spent = _upper(spent)
        out = {}
        for currency in sorted({*allowed, *spent, *waiting}):
            used, held = spent.get(currency, 0.0), waiting.get(currency, 0.0)
            limit = allowed.get(currency)
            left = None if limit is None else max(limit - used - held, 0.0)
            out[currency] = Spend(
                used=round(used, 6),
                pending=round(held, 6),
                limit=limit,
                remaining=None if left is None else round(left, 6),
            )
        return out

    first = usage.first_edit_at
    return Budget(
        owner=owner,
        day=spends(limits.day, usage.day_cost),
        day_resets_at=periods.day_ends,
        month=spends(limits.month, usage.month_cost),
        month_resets_at=periods.month_ends,
        edits_last_hour=usage.edits,
        edits_per_hour=limits.edits_per_hour,
        next_edit_at=datetime.fromtimestamp(first + HOUR_S, UTC) if first else None,
        active=len(usage.active),
        concurrent=limits.concurrent,
        limits=limits,
    )


def describe(budget: Budget) -> str:
    """The budget in one line: spending today and this month, edits, tasks at once."""
    return (
        f"Spent today (UTC): {describe_costs(budget.day)}; this month: "
        f"{describe_costs(budget.month)}; edits in the last hour: "
        f"{of(budget.edits_last_hour, budget.edits_per_hour)}; queued or running: "
        f"{of(budget.active, budget.concurrent)}."
    )


def describe_costs(spends: dict[str, Spend]) -> str:
    """Spending per currency, "0.28 of 10 CNY (9.72 left), 1.5 USD", or "nothing"."""
    parts = []
    for currency, spend in spends.items():
        spent = amount(spend.used + spend.pending)
        if spend.limit is None:
            parts.append(f"{spent} {currency}")
        else:
            left = amount(spend.remaining or 0)
            parts.append(f"{spent} of {amount(spend.limit)} {currency} ({left} left)")
    return ", ".join(parts) or "nothing"


def of(used: int, limit: int | None) -> str:
    """ "2 of 30", or "2" without a limit."""
    return f"{used}" if limit is None else f"{used} of {limit}"


def amount(value: float) -> str:
    """A sum of money without trailing zeros: 0.28, 10."""
    return f"{value:.4f}".rstrip("0").rstrip(".") or "0"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


def _when(ts: float, now: float) -> str:
    """A time and how far off it is: "2025-01-02 00:00 UTC (in 3 h 12 min)"."""
    at = datetime.fromtimestamp(ts, UTC)
    left = max(int(ts - now), 0)
    hours, rest = divmod(left, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        span = f"{hours} h {minutes} min"
    elif minutes:
        span = f"{minutes} min"
    else:
        span = f"{seconds} s"
    clock = "%Y-%m-%d %H:%M:%S" if not hours and not minutes else "%Y-%m-%d %H:%M"
    return f"{at.strftime(clock)} UTC (in {span})"
