"""The console's HTML: one layout, a renderer per page. Every value from a task, a user or
a vendor goes through ``h`` (escaped); the only script and style are the inline assets
whose hashes the Content-Security-Policy names."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from server.console.stats import Costs, VendorStats
from tools.models import Budget, User
from tools.store.base import TaskRecord, TaskStep


def _asset(name: str) -> str:
    return resources.files("server.console").joinpath(name).read_text("utf-8")


CSS = _asset("console.css")
JS = _asset("console.js")


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


#: The policy every console answer carries: nothing from other hosts, no other script.
CSP = (
    f"default-src 'none'; script-src {_hash(JS)}; style-src {_hash(CSS)}; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
NAV = (("tasks", "Tasks"), ("vendors", "Vendors"), ("costs", "Costs"), ("users", "Users"))


def h(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S") if ts else "—"


def seconds(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def money(amounts: dict[str, float]) -> str:
    return ", ".join(f"{v:.4g} {c}" for c, v in sorted(amounts.items())) or "—"


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{h(csrf)}">'


def layout(title: str, body: str, *, csrf: str | None = None, active: str = "") -> str:
    nav = ""
    if csrf is not None:
        links = "".join(
            f'<a href="/console/{key}"{" class=on" if key == active else ""}>{label}</a>'
            for key, label in NAV
        )
        nav = (
            f"<nav>{links}</nav>"
            f'<form method="post" action="/console/logout">{csrf_field(csrf)}'
            '<button class="plain" id="logout">Sign out</button></form>'
        )
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{h(title)} · Retouch console</title><style>{CSS}</style></head>"
        f"<body><header><strong>Retouch</strong>{nav}</header><main>{body}</main>"
        f"<script>{JS}</script></body></html>"
    )


def login(csrf: str, error: str = "") -> str:
    problem = f'<p class="error">{h(error)}</p>' if error else ""
    body = (
        '<div class="card login"><h1>Sign in</h1>'
        '<form method="post" action="/console/login">'
        f"{csrf_field(csrf)}<label>Operator token"
        '<input type="password" name="token" autocomplete="current-password" autofocus></label>'
        f'{problem}<button id="signin">Sign in</button></form></div>'
    )
    return layout("Sign in", body)


STATUSES = ("queued", "running", "succeeded", "partial", "failed", "canceled")


def tasks(query: str, filters: dict[str, str], vendors: list[str], csrf: str) -> str:
    def choice(name: str, options: list[str]) -> str:
        opts = "".join(
            f"<option{' selected' if filters.get(name) == o else ''}>{h(o)}</option>"
            for o in options
        )
        return (
            f'<label>{name}<select name="{name}"><option value="">any</option>{opts}'
            "</select></label>"
        )

    def text(name: str, label: str, kind: str = "text") -> str:
        return (
            f'<label>{label}<input type="{kind}" name="{name}" value="{h(filters.get(name, ""))}">'
            "</label>"
        )

    body = (
        "<h1>Tasks</h1>"
        '<form class="filters" method="get" action="/console/tasks">'
        f"{choice('status', list(STATUSES))}{choice('vendor', vendors)}"
        f"{text('owner', 'owner')}{text('function', 'function')}"
        f"{text('since', 'since (UTC)', 'datetime-local')}"
        f"{text('until', 'until (UTC)', 'datetime-local')}"
        "<button>Filter</button></form>"
        f'<table id="tasks" data-query="{h(query)}"><thead><tr><th>images</th><th>task</th>'
        "<th>function</th><th>vendor</th><th>owner</th><th>status</th>"
        '<th class="num">duration</th><th class="num">cost</th><th>asked</th></tr></thead>'
        '<tbody></tbody></table><p><button class="plain" id="more" hidden>Older</button></p>'
    )
    return layout("Tasks", body, csrf=csrf, active="tasks")


def logged(step: TaskStep) -> str:
    """What one logged step says (plain text: escaped where it is shown)."""
    detail = step.detail or ""
    text = {
        "queued": f"queued for {step.vendor}",
        "claimed": f"claimed by {step.worker} ({detail})",
        "released": f"handed back by {step.worker}",
        "submitted": f"submitted to {step.vendor}; the vendor's task id: {detail}",
        "poll": f"polled: {detail}",
        "retry": f"retry after {step.code}: {detail}",
        "rerouted": f"rerouted to {step.vendor}: {detail}",
        "cancel": "cancel asked for",
        "downloaded": f"downloaded {detail}",
        "ended": f"ended: {detail}" + (f" ({step.code})" if step.code else ""),
    }.get(step.kind, f"{step.kind}: {detail}")
    if step.count > 1:
        text += f" — ×{step.count}, the last at {when(step.last_at)}"
    return text


def timeline(task: TaskRecord) -> list[tuple[float | None, str]]:
    """The steps the record shows, in order: (time if known, what happened); for a task
    stored before the store kept a log of its steps."""
    steps: list[tuple[float | None, str]] = [(task.created_at, f"queued for {task.vendor}")]
    if task.started_at:
        steps.append((task.started_at, "claimed by a worker"))
    if task.attempts > 1:
        steps.append((None, f"claimed {task.attempts} times in all (retried after a loss)"))
    if task.submit_started_at:
        steps.append((task.submit_started_at, "submitted to the vendor"))
    if task.vendor_task_id:
        steps.append((None, f"the vendor's task id: {task.vendor_task_id}"))
    if task.polls:
        steps.append((task.next_poll_at if not task.finished else None, f"{task.polls} poll(s)"))
    for note in task.notes:
        steps.append((None, f"note: {note}"))
    if task.results:
        steps.append((task.finished_at, f"downloaded {len(task.results)} result(s)"))
    if task.finished_at:
        ending = f"ended: {task.status}"
        if task.error:
            ending += f" ({task.error.get('code')}: {task.error.get('message')})"
        steps.append((task.finished_at, ending))
    elif task.cancel_requested:
        steps.append((None, "cancel asked for"))
    return steps


def steps_html(record: TaskRecord, steps: Sequence[TaskStep]) -> str:
    """The timeline's items: the store's log, else what the record shows."""
    if steps:
        # a task queued before the log was kept, and still running after: its start
        start = (
            f'<li data-kind="record"><time>{h(when(record.created_at))}</time>'
            f"{h(f'queued for {record.vendor} (before the log was kept)')}</li>"
            if steps[0].kind != "queued"
            else ""
        )
        return start + "".join(
            f'<li data-kind="{h(s.kind)}"><time>{h(when(s.at))}</time>{h(logged(s))}</li>'
            for s in steps
        )
    return "".join(
        f'<li data-kind="record"><time>{h(when(t) if t else "")}</time>{h(text)}</li>'
        for t, text in timeline(record)
    )


def task(record: TaskRecord, inputs: int, csrf: str, steps: Sequence[TaskStep] = ()) -> str:
    tid = h(record.id)
    duration = (record.finished_at - record.created_at) if record.finished_at else None
    facts = [
        (
            "status",
            f'<span class="status {h(record.status)}">{h(record.status)}</span> '
            f"{h(record.progress or '')}",
        ),
        ("function", h(record.function)),
        ("vendor", h(record.vendor)),
        ("owner", h(record.owner or "local")),
        ("asked", h(when(record.created_at))),
        ("duration", h(seconds(duration))),
        (
            "cost",
            h(
                money({record.currency: record.cost})
                if record.cost is not None and record.currency
                else "—"
            ),
        ),
        ("billed images", h(record.billed_images)),
    ]
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in facts)
    images = ""
    for i in range(len(record.results)):
        before = f"/console/thumbs/{tid}/input/{min(i, max(inputs - 1, 0))}?size=view"
        after = f"/console/thumbs/{tid}/result/{i}?size=view"
        images += (
            f'<div class="card"><h2>Result {i + 1}</h2><div class="compare">'
            f'<img class="before" src="{before}" alt="input">'
            f'<div class="after"><img src="{after}" alt="result {i + 1}"></div>'
            '<input type="range" min="0" max="100" value="50" aria-label="before / after">'
            "</div></div>"
        )
    if not record.results:
        images = (
            '<div class="card"><h2>Inputs</h2><div class="pair">'
            + "".join(
                f'<figure><img src="/console/thumbs/{tid}/input/{i}?size=view" alt="input {i + 1}">'
                "</figure>"
                for i in range(inputs)
            )
            + "</div></div>"
        )
    items = steps_html(record, steps)
    notes = "".join(f"<li>{h(note)}</li>" for note in record.notes) if steps else ""
    failures = "".join(
        f"<li>image {h(f.get('index'))}: {h(f.get('code'))} {h(f.get('message'))}</li>"
        for f in record.failures
    )
    error = (
        f'<div class="card error"><h2>Error</h2><pre>{h(json.dumps(record.error, indent=2))}'
        "</pre></div>"
        if record.error
        else ""
    )
    action = (
        f'<form method="post" action="/console/tasks/{tid}/cancel">{csrf_field(csrf)}'
        '<button class="danger" id="cancel">Cancel</button></form>'
        if not record.finished
        else f'<form method="post" action="/console/tasks/{tid}/again">{csrf_field(csrf)}'
        '<button id="again">Run again</button></form>'
    )
    body = (
        f'<div id="task" data-id="{tid}" data-status="{h(record.status)}" '
        f'data-progress="{h(record.progress or "")}" '
        f'data-finished="{"true" if record.finished else "false"}">'
        f"<h1>Task {tid}</h1>{action}"
        f'<div class="grid"><div><div class="card"><table>{rows}</table></div>'
        f'<div class="card"><h2>Prompt</h2><pre id="prompt">{h(record.prompt)}</pre>'
        f"<h2>Parameters</h2><pre>{h(json.dumps(record.request, indent=2))}</pre></div></div>"
        f'<div><div class="card"><h2>Timeline</h2><ol class="timeline" id="timeline">{items}'
        "</ol></div>"
        + (f'<div class="card"><h2>Notes</h2><ul id="notes">{notes}</ul></div>' if notes else "")
        + (f'<div class="card"><h2>Failures</h2><ul>{failures}</ul></div>' if failures else "")
        + f"{error}</div></div>{images}</div>"
    )
    return layout(f"Task {record.id[:8]}", body, csrf=csrf, active="tasks")


def vendors(stats: list[VendorStats], csrf: str) -> str:
    def pct(v: float | None) -> str:
        return "—" if v is None else f"{v * 100:.0f}%"

    rows = ""
    for s in stats:
        for label, w in (("hour", s.hour), ("day", s.day)):
            errors = ", ".join(f"{h(c)} ×{n}" for c, n in w.errors.most_common()) or "—"
            rows += (
                f"<tr><td>{h(s.name) if label == 'hour' else ''}</td><td>{label}</td>"
                f'<td class="num">{w.tasks}</td><td class="num">{pct(w.success_rate)}</td>'
                f'<td class="num">{seconds(w.p50)}</td><td class="num">{seconds(w.p95)}</td>'
                f"<td>{errors}</td>"
                + (
                    f'<td class="num" rowspan=2>{s.queued}</td>'
                    f'<td class="num" rowspan=2>{s.running}</td>'
                    if label == "hour"
                    else ""
                )
                + "</tr>"
            )
    limits = ""
    for s in stats:
        for i, lim in enumerate(s.limits):
            cap = "no cap" if lim.cap is None else f"{lim.cap:g}/s"
            now = "binding now" if lim.binding else "free"
            if lim.next_free_in is not None:
                now += f" (next turn in {lim.next_free_in:.1f} s)"
            hour = (
                f"bound: {lim.waits_hour} call(s) waited, {seconds(lim.waited_s_hour)} in all"
                if lim.bound_hour
                else "never bound"
            )
            limits += (
                f'<tr data-vendor="{h(s.name)}" data-kind="{h(lim.kind)}">'
                f"<td>{h(s.name) if i == 0 else ''}</td><td>{h(lim.kind)}</td>"
                f'<td class="num">{h(cap)}</td><td class="num">{lim.held_now}</td>'
                f'<td class="{"binding" if lim.binding else "free"}">{h(now)}</td>'
                f"<td>{h(hour)}</td></tr>"
            )
    body = (
        '<h1>Vendors</h1><table id="vendors"><thead><tr><th>vendor</th><th>last</th>'
        '<th class="num">tasks</th><th class="num">success</th><th class="num">p50</th>'
        '<th class="num">p95</th><th>errors by code</th><th class="num">queued</th>'
        f'<th class="num">slots in use</th></tr></thead><tbody>{rows}</tbody></table>'
        '<h2>Rate limits</h2><table id="limits"><thead><tr><th>vendor</th><th>calls</th>'
        '<th class="num">cap</th><th class="num">turns held</th><th>now</th>'
        f"<th>last hour</th></tr></thead><tbody>{limits or '<tr><td>—</td></tr>'}</tbody>"
        "</table>"
    )
    return layout("Vendors", body, csrf=csrf, active="vendors")


def chart(currency: str, by_day: dict[str, float]) -> str:
    """Spending per day as bars, drawn as inline SVG."""
    days = sorted(by_day)
    width, height, pad = 640, 180, 28
    top = max(by_day.values()) or 1.0
    step = (width - 2 * pad) / max(len(days), 1)
    bars = ""
    for i, day in enumerate(days):
        bar = (height - 2 * pad) * by_day[day] / top
        x = pad + i * step + step * 0.15
        bars += (
            f'<rect x="{x:.1f}" y="{height - pad - bar:.1f}" width="{step * 0.7:.1f}" '
            f'height="{bar:.1f}"><title>{h(day)}: {by_day[day]:.4g} {h(currency)}</title></rect>'
        )
        if len(days) <= 14 or i % max(1, len(days) // 7) == 0:
            bars += f'<text x="{x:.1f}" y="{height - 8}">{h(day[5:])}</text>'
    return (
        f'<svg class="chart" role="img" aria-label="{h(currency)} per day" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}">'
        f'<text x="{pad}" y="16">{h(currency)} · most {top:.4g} a day</text>{bars}</svg>'
    )


def costs(data: Costs, days: int, csrf: str) -> str:
    def table(title: str, sums: dict[str, dict[str, float]], key: str) -> str:
        rows = "".join(
            f'<tr><td>{h(name)}</td><td class="num">{v:.4g}</td><td>{h(cur)}</td></tr>'
            for cur, by in sums.items()
            for name, v in sorted(by.items(), key=lambda kv: -kv[1])
        )
        return (
            f"<h2>By {title}</h2><table><thead><tr><th>{key}</th><th class=num>cost</th>"
            f"<th>currency</th></tr></thead><tbody>{rows or '<tr><td>—</td></tr>'}</tbody></table>"
        )

    charts = "".join(chart(cur, by) for cur, by in data.by_day.items()) or (
        '<p class="muted">No costs yet.</p>'
    )
    body = (
        f'<h1>Costs, last {days} days</h1><div id="charts">{charts}</div>'
        f'<div class="grid"><div>{table("vendor", data.by_vendor, "vendor")}</div>'
        f"<div>{table('owner', data.by_owner, 'owner')}</div></div>"
    )
    return layout("Costs", body, csrf=csrf, active="costs")


def users(
    mcp_users: list[User], budgets: dict[str, Budget], overrides: dict[str, Any], csrf: str
) -> str:
    def budget_cells(owner: str) -> str:
        b = budgets.get(owner)
        if b is None:
            return "<td>—</td><td>—</td><td>—</td>"
        day = (
            ", ".join(
                f"{s.used:.4g}/{s.limit if s.limit is not None else '∞'} {h(c)}"
                for c, s in b.day.items()
            )
            or "—"
        )
        edits = f"{b.edits_last_hour}/{b.edits_per_hour if b.edits_per_hour is not None else '∞'}"
        return f"<td>{day}</td><td>{edits}</td><td>{b.active}/{b.concurrent or '∞'}</td>"

    def form(owner: str) -> str:
        current = overrides.get(owner)
        value = h(current.model_dump_json(exclude_defaults=True) if current else "")
        return (
            f'<form class="inline" method="post" action="/console/budgets">{csrf_field(csrf)}'
            f'<input type="hidden" name="owner" value="{h(owner)}">'
            f'<input name="limits" value="{value}" placeholder=\'{{"day": {{"USD": 5}}}}\'>'
            '<button class="plain">Set</button></form>'
        )

    rows = ""
    for u in mcp_users:
        revoke = (
            f'<form class="inline" method="post" action="/console/users/revoke">'
            f'{csrf_field(csrf)}<input type="hidden" name="name" value="{h(u.name)}">'
            '<button class="danger">Revoke</button></form>'
            if u.source == "store" and u.active
            else ("revoked" if not u.active else "in the config file")
        )
        rows += (
            f"<tr><td>{h(u.name)}</td><td>MCP</td>{budget_cells(u.name)}"
            f"<td>{form(u.name)}</td><td>{revoke}</td></tr>"
        )
    names = {u.name for u in mcp_users}
    for owner in sorted(set(budgets) - names):
        kind = "Telegram" if owner.startswith("tg:") else "other"
        rows += (
            f"<tr><td>{h(owner)}</td><td>{kind}</td>{budget_cells(owner)}"
            f"<td>{form(owner)}</td><td></td></tr>"
        )
    body = (
        '<h1>Users</h1><table id="users"><thead><tr><th>owner</th><th>kind</th>'
        "<th>today</th><th>edits last hour</th><th>active</th><th>budget override (JSON)</th>"
        f"<th></th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return layout("Users", body, csrf=csrf, active="users")
