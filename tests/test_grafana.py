"""docs/grafana-retouch.json: valid, every panel querying Prometheus, and every metric name
its PromQL uses is one a real scrape of ``/metrics`` exports (with the bot's counters)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

import bots.metrics  # noqa: F401  (the bot's counters join the registry, as in retouch-bot)
from tests.conftest import MakeSettings
from tests.test_users import BASE, serve

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-retouch.json"
#: The series a family of each type exports (prometheus_client's text format).
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
}


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_the_dashboard_is_grafana_json() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["title"] == "Retouch" and dashboard["uid"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"])
        for target in panel["targets"]:
            assert target["expr"].count("(") == target["expr"].count(")"), target["expr"]
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]


async def test_every_metric_the_dashboard_uses_is_in_a_scrape(
    make_settings: MakeSettings,
) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    used = {n for e in expressions(dashboard) for n in re.findall(r"\bretouch_\w+", e)}
    assert len(used) >= 10
    settings = make_settings('[vendors.local]\nkind = "local"\nesrgan = "off"\n')
    async with serve(settings) as (_, _, app):
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5000))
        async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
            answer = await client.get("/metrics")
    assert answer.status_code == 200, answer.text
    families = list(text_string_to_metric_families(answer.text))
    exported = {f.name + suffix for f in families for suffix in SUFFIXES[f.type]}
    assert used - exported == set()
    # and every family exported has a panel
    shown = {f.name for f in families if any(f.name + s in used for s in SUFFIXES[f.type])}
    assert shown == {f.name for f in families}
