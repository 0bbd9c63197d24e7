"""``/metrics`` of a real ``retouch-mcp`` process after a run of edits over MCP against the
fake DashScope and the local engine: parsed with prometheus_client's own parser, the
store's gauges match the tasks table row for row, this process's histograms count what it
did, and only loopback (unforwarded) or the metrics token may read it. Its stderr, with
``[log] format = "json"``, is one JSON object a line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MakeSettings, data_uri, png, sample
from tests.fakes.dashscope import FakeDashScope, rate_limited
from tests.servers import ROOT, env, free_port, http_server
from tests.test_e2e_vendors import KEY, dashscope_table
from tools.config import Settings

TOKEN = "metrics-mcp-user-token-0123"
SCRAPER = "scraper_tok_5Wq8SECRETmetrics"
TASK_HIST = "retouch_task_duration_seconds"
CALL_HIST = "retouch_vendor_call_duration_seconds"


def outward_address() -> str | None:
    """An address of this machine that is not loopback (the one its default route uses),
    or None where there is none."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet is sent: UDP connect only picks a route
            address = str(s.getsockname()[0])
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict[str, Any], name: str, sample_name: str | None = None) -> list[Any]:
    wanted = sample_name or name
    return [s for s in fams[name].samples if s.name == wanted] if name in fams else []


@pytest.fixture
def fake() -> Iterator[FakeDashScope]:
    with FakeDashScope(api_key=KEY) as server:
        yield server


@contextlib.contextmanager
def mcp_server(settings: Settings, port: int) -> Iterator[str]:
    """``python -m server --transport http`` (tests/servers.py); yields the file its output
    goes to, once it answers."""
    log_path = Path(settings.source).with_name("mcp-output.log")
    with log_path.open("wb") as output, http_server(settings.source, port, output=output):
        yield str(log_path)


@pytest.fixture
def served(make_settings: MakeSettings, fake: FakeDashScope) -> Iterator[tuple[Settings, int, str]]:
    port = free_port()
    settings = make_settings(
        f'[mcp]\nhost = "0.0.0.0"\nport = {port}\nauth_token = "{TOKEN}"\n'
        f'[metrics]\ntoken = "{SCRAPER}"\n[log]\nformat = "json"\n'
        '[vendors.local]\nkind = "local"\nesrgan = "off"\n'
        + dashscope_table("dashscope", fake)
        + 'price_per_image = 0.25\ncurrency = "CNY"\n'
    )
    with mcp_server(settings, port) as log_path:
        yield settings, port, log_path


async def run_edits(port: int, fake: FakeDashScope) -> list[dict[str, Any]]:
    """Edits through the SDK's client: colorizations at DashScope (one throttled once and
    retried, one refused for its content), and local line art."""
    http = httpx2.AsyncClient(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=60,
    )
    url = f"http://127.0.0.1:{port}/mcp"
    fake.blocked_words = {"forbidden"}
    fake.inject("create", rate_limited(retry_after=0.1))
    colorize = {"images": [data_uri(sample("coffee.png"))], "function": "colorization"}
    calls = [
        {**colorize, "vendor": "dashscope", "wait_seconds": 30},
        {**colorize, "vendor": "dashscope", "wait_seconds": 30},
        {**colorize, "vendor": "dashscope", "prompt": "forbidden", "wait_seconds": 30},
        {"images": [data_uri(png())], "function": "lineart", "vendor": "local", "wait_seconds": 30},
        {"images": [data_uri(png())], "function": "lineart", "vendor": "local", "wait_seconds": 30},
    ]
    async with http, Client(streamable_http_client(url, http_client=http)) as client:
        out = []
        for args in calls:
            result = await client.call_tool("edit_image", args)
            out.append(result.structured_content or {})
        for task in out:  # every one ended before the scrape
            for _ in range(200):
                if task.get("status") in ("succeeded", "failed", "partial", "canceled"):
                    break
                await asyncio.sleep(0.05)
                checked = await client.call_tool("check_task", {"task_id": task["id"]})
                task.update(checked.structured_content or {})
    return out


def store_rows(settings: Settings) -> list[tuple[Any, ...]]:
    """The tasks table, read with sqlite3 itself (not through the code under test)."""
    path = settings.store.path
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute(
            "SELECT status, vendor, function, billed_images, cost, currency FROM tasks"
        ).fetchall()


async def test_a_scrape_after_edits_matches_the_store(
    served: tuple[Settings, int, str], fake: FakeDashScope
) -> None:
    settings, port, log_path = served
    tasks = await run_edits(port, fake)
    assert sorted(t["status"] for t in tasks) == ["failed"] + ["succeeded"] * 4, tasks

    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)  # loopback: no token
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=")
    fams = families(answer.text)

    rows = store_rows(settings)
    by_key = Counter((status, vendor, function) for status, vendor, function, *_ in rows)
    scraped = {
        (s.labels["status"], s.labels["vendor"], s.labels["function"]): s.value
        for s in samples(fams, "retouch_tasks")
    }
    assert scraped == {key: float(n) for key, n in by_key.items()}
    assert sum(scraped.values()) == len(tasks) == 5

    images: Counter[str] = Counter()
    costs: Counter[tuple[str, str]] = Counter()
    for _, vendor, _, billed, cost, currency in rows:
        images[vendor] += billed
        if cost is not None and currency:
            costs[(vendor, currency)] += cost
    assert {s.labels["vendor"]: s.value for s in samples(fams, "retouch_images")} == images
    scraped_cost = {
        (s.labels["vendor"], s.labels["currency"]): s.value for s in samples(fams, "retouch_cost")
    }
    assert scraped_cost == pytest.approx(dict(costs)) and scraped_cost[("dashscope", "CNY")] > 0

    # every task here has ended and none is forgotten yet: the counters equal the gauges
    ended_total = {
        (s.labels["status"], s.labels["vendor"], s.labels["function"]): s.value
        for s in samples(fams, "retouch_tasks_ended", "retouch_tasks_ended_total")
    }
    assert ended_total == {key: float(n) for key, n in by_key.items()}
    billed = samples(fams, "retouch_images_billed", "retouch_images_billed_total")
    assert {s.labels["vendor"]: s.value for s in billed} == images
    cost_total = {
        (s.labels["vendor"], s.labels["currency"]): s.value
        for s in samples(fams, "retouch_cost_billed", "retouch_cost_billed_total")
    }
    assert cost_total == pytest.approx(dict(costs))

    # nothing is left queued or running; each configured vendor is shown with its slots
    for name in ("retouch_queue_depth", "retouch_slots_in_use"):
        assert {s.labels["vendor"]: s.value for s in samples(fams, name)} == {
            "dashscope": 0.0,
            "local": 0.0,
        }
    assert {s.labels["vendor"] for s in samples(fams, "retouch_slots")} == {"dashscope", "local"}
    assert samples(fams, "retouch_store_up")[0].value == 1.0

    # this process ended every task: its histogram counts them by vendor, function, status
    ended = Counter(
        {
            (s.labels["vendor"], s.labels["function"], s.labels["status"]): s.value
            for s in samples(fams, TASK_HIST, f"{TASK_HIST}_count")
        }
    )
    assert +ended == Counter({(v, f, st): float(n) for (st, v, f), n in by_key.items()})

    # vendor calls: submissions and polls at DashScope, the throttled one counted as an error
    calls = {
        (s.labels["vendor"], s.labels["call"]): s.value
        for s in samples(fams, CALL_HIST, f"{CALL_HIST}_count")
    }
    assert calls[("dashscope", "submit")] >= 4  # 3 tasks, one submitted twice
    assert calls[("dashscope", "poll")] >= 2
    errors = {
        (s.labels["vendor"], s.labels["code"]): s.value
        for s in samples(fams, "retouch_vendor_errors", "retouch_vendor_errors_total")
    }
    assert errors[("dashscope", "throttled")] == 1.0
    assert errors[("dashscope", "content_rejected")] == 1.0

    # stderr: every line one JSON object; the tasks' events carry their id, owner and vendor
    lines = [line for line in Path(log_path).read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    queued = [r for r in records if r.get("event") == "task_queued"]
    ends = [r for r in records if str(r.get("event", "")).startswith("task_") and r not in queued]
    assert {r["task_id"] for r in queued} == {t["id"] for t in tasks}
    assert {r["task_id"] for r in ends} == {t["id"] for t in tasks}
    assert all(r["owner"] == "default" and r["vendor"] in ("dashscope", "local") for r in ends)
    assert any(r.get("event") == "vendor_error" for r in records)
    assert KEY not in Path(log_path).read_text()


async def test_only_loopback_or_the_token_may_read_it(served: tuple[Settings, int, str]) -> None:
    _, port, _ = served
    url = f"http://127.0.0.1:{port}/metrics"
    bearer = {"Authorization": f"Bearer {SCRAPER}"}
    # a request a proxy forwarded: its loopback address is the proxy's
    forwarded = httpx.get(url, headers={"X-Forwarded-For": "203.0.113.9"}, timeout=10)
    assert forwarded.status_code == 401 and forwarded.headers["www-authenticate"] == "Bearer"
    assert "retouch_" not in forwarded.text
    assert httpx.get(url, headers={"Forwarded": "for=203.0.113.9"}, timeout=10).status_code == 401
    ok = httpx.get(url, headers={"X-Forwarded-For": "203.0.113.9", **bearer}, timeout=10)
    assert ok.status_code == 200 and "retouch_tasks" in ok.text
    for wrong in (
        f"Bearer {SCRAPER}x",
        f"Basic {SCRAPER}",
        "Bearer",
        f"Bearer {TOKEN}",  # an MCP user's token is not the scraper's
        "Bearer " + "x" * 10_000,
    ):
        answer = httpx.get(
            url, headers={"X-Forwarded-For": "203.0.113.9", "Authorization": wrong}, timeout=10
        )
        assert answer.status_code == 401, wrong
    # and the scraper's token opens nothing else
    assert httpx.post(f"http://127.0.0.1:{port}/mcp", json={}, headers=bearer).status_code == 401

    # bad inputs: other methods, a body
    assert httpx.post(url, content=b"x", timeout=10).status_code == 405
    assert httpx.request("GET", url, content=b"x" * 100, timeout=10).status_code == 413
    chunked = httpx.request("GET", url, content=iter([b"x"]), timeout=10)
    assert chunked.status_code == 413

    # a real client on another address of this machine (the server listens on 0.0.0.0)
    address = outward_address()
    if address is None:
        pytest.skip("this machine has no address but loopback")
    outside = f"http://{address}:{port}/metrics"
    refused = httpx.get(outside, timeout=10)
    assert refused.status_code == 401, refused.text
    assert httpx.get(outside, headers=bearer, timeout=10).status_code == 200


# ---- the worker's and the bot's exporters -------------------------------------------------


def scrape(port: int, **headers: str) -> httpx.Response:
    return httpx.get(f"http://127.0.0.1:{port}/metrics", headers=headers, timeout=10)


async def test_a_worker_process_serves_its_metrics(make_settings: MakeSettings) -> None:
    """A real ``retouch-worker`` on worker.metrics_port runs a task this process queued:
    its exporter shows the end it recorded and the store's gauges; bad requests refused."""
    from tools.models import EditRequest
    from tools.service import Editor

    port = free_port()
    settings = make_settings(
        f"metrics_port = {port}\n"  # in make_settings' [worker] table
        f'[metrics]\ntoken = "{SCRAPER}"\n[vendors.local]\nkind = "local"\nesrgan = "off"\n'
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "tools.worker", "--config", settings.source],
        env=env(),
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        async with Editor(settings, run_worker=False) as editor:
            task = await editor.edit_image(
                EditRequest(images=[data_uri(png())], function="lineart"), owner="alice"
            )
            for _ in range(400):
                if (await editor.check_task(task.id)).status.finished:
                    break
                await asyncio.sleep(0.05)
            assert (await editor.check_task(task.id)).status == "succeeded"
        for _ in range(200):
            with contextlib.suppress(httpx.HTTPError):
                answer = scrape(port)
                if answer.status_code == 200:
                    break
            await asyncio.sleep(0.05)
        fams = families(answer.text)
        count = [
            s.value
            for s in samples(fams, TASK_HIST, f"{TASK_HIST}_count")
            if s.labels == {"vendor": "local", "function": "lineart", "status": "succeeded"}
        ]
        assert count == [1.0]  # ended by the worker, not by this process
        tasks = [(s.labels, s.value) for s in samples(fams, "retouch_tasks")]
        assert tasks == [({"status": "succeeded", "vendor": "local", "function": "lineart"}, 1.0)]

        assert scrape(port, **{"X-Forwarded-For": "203.0.113.9"}).status_code == 401
        ok = scrape(
            port, **{"X-Forwarded-For": "203.0.113.9", "Authorization": f"Bearer {SCRAPER}"}
        )
        assert ok.status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=10).status_code == 404
        assert httpx.post(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 405
        body = httpx.request("GET", f"http://127.0.0.1:{port}/metrics", content=b"x" * 10)
        assert body.status_code == 413
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
    assert f"metrics on 127.0.0.1:{port}" in err.decode()


def test_an_exporter_beyond_loopback_needs_the_token(
    make_settings: MakeSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    from bots.__main__ import main as bot_main
    from tools.worker.__main__ import main as worker_main

    settings = make_settings(
        'metrics_port = 9464\n[metrics]\nhost = "0.0.0.0"\n'  # metrics_port: in [worker]
        '[telegram]\ntoken = "123:abc"\nmetrics_port = 9465\n'
    )
    assert worker_main(["--config", settings.source]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"retouch-worker: {settings.source}: worker.metrics_port is set")
    assert "metrics.token" in err and err.count("\n") == 1
    assert bot_main(["--config", settings.source]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"retouch-bot: {settings.source}: telegram.metrics_port is set")
    assert "metrics.token" in err and err.count("\n") == 1


async def test_the_bot_counts_updates_and_deliveries_on_its_port(
    make_settings: MakeSettings,
) -> None:
    from tests.fakes.telegram import FakeBotAPI
    from tests.test_bot import USER, bot, table
    from tools import telemetry

    def value(name: str, **labels: str) -> float:
        return telemetry.REGISTRY.get_sample_value(name, labels) or 0.0

    port = free_port()
    with FakeBotAPI() as fake:
        tg = {
            "token": fake.token,
            "api_base_url": fake.api_base_url,
            "file_base_url": fake.file_base_url,
            "allowed_user_ids": [USER],
            "metrics_port": port,
        }
        settings = make_settings(
            table("telegram", tg) + '[vendors.local]\nkind = "local"\nesrgan = "off"\n'
        )
        allowed = value("retouch_bot_updates_total", kind="message", outcome="allowed")
        refused = value("retouch_bot_updates_total", kind="message", outcome="refused")
        sent = value("retouch_bot_deliveries_total", outcome="sent")
        async with bot(settings):
            fake.user_sends_photo(USER, USER, png((40, 30)), "/adjust rotate 90")
            await fake.wait_for("sendPhoto")
            fake.user_sends_text(4242, 4242, "/start")  # a stranger
            await fake.wait_for("sendMessage", predicate=lambda c: "4242" in str(c.params))
            # from another thread: the exporter asks the store on this (the bot's) loop
            answer = await asyncio.to_thread(scrape, port)
            assert answer.status_code == 200
            fams = families(answer.text)
            assert "retouch_tasks" in fams and "retouch_bot_updates" in fams
        assert value("retouch_bot_updates_total", kind="message", outcome="allowed") == allowed + 1
        assert value("retouch_bot_updates_total", kind="message", outcome="refused") == refused + 1
        assert value("retouch_bot_deliveries_total", outcome="sent") == sent + 1
        with pytest.raises(httpx.HTTPError):  # the exporter stopped with the bot
            scrape(port)


async def test_scrapes_together_share_one_read_of_the_store(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools import telemetry
    from tools.service import Editor

    settings = make_settings('[vendors.local]\nkind = "local"\nesrgan = "off"\n')
    async with Editor(settings, run_worker=False) as editor:
        reads = 0
        real = editor.store.tallies

        async def counted(now: float | None = None) -> Any:
            nonlocal reads
            reads += 1
            await asyncio.sleep(0.05)
            return await real(now)

        monkeypatch.setattr(editor.store, "tallies", counted)
        views = await asyncio.gather(*(editor.metrics_view() for _ in range(5)))
        assert reads == 1 and all(v is views[0] for v in views)
        assert await editor.metrics_view() is views[0]  # within VIEW_TTL_S
        monkeypatch.setattr(telemetry, "VIEW_TTL_S", 0.0)
        await asyncio.sleep(0.01)
        assert await editor.metrics_view() is not views[0] and reads == 2

        async def down(now: float | None = None) -> Any:
            raise ConnectionRefusedError

        monkeypatch.setattr(editor.store, "tallies", down)
        await asyncio.sleep(0.01)
        body = (await telemetry.render(editor.metrics_view)).decode()
        fams = families(body)
        assert samples(fams, "retouch_store_up")[0].value == 0.0
        assert "retouch_tasks" not in fams and TASK_HIST in fams  # the process's own still
        monkeypatch.setattr(editor.store, "tallies", counted)
        assert (await editor.metrics_view()).slots == {"local": 2}  # a failure is not kept
