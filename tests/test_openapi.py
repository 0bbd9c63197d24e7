"""``/openapi.json`` against the routes it describes: schemathesis reads the description from
a real ``retouch-mcp --transport http`` on 127.0.0.1 (console on, a bearer token sent) and
fuzzes every operation with a bounded number of examples, positive and negative. Whatever it
sends: no 5xx, no traceback in an answer, none in the server's output.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import httpx
import hypothesis
import hypothesis.errors
import pytest
import schemathesis
from hypothesis import HealthCheck

from tests.conftest import MakeSettings
from tests.test_slow_clients import CONSOLE_TOKEN, TOKEN, Live, start

#: Examples per operation (each is one request to the real server).
EXAMPLES = 12


@pytest.fixture
def live(make_settings: MakeSettings) -> Iterator[Live]:
    with start(make_settings) as server:  # asserts at the end: no traceback in its output
        yield server


def test_the_description_lists_every_route_that_is_not_mcp(live: Live) -> None:
    schema = schemathesis.openapi.from_url(f"{live.base}/openapi.json")
    paths = set(schema.raw_schema["paths"])
    assert {
        "/health",
        "/openapi.json",
        "/uploads",
        "/upload",
        "/results/{task_id}/{index}",
    } <= paths
    assert {"/callbacks/{vendor}/{secret}", "/console/login", "/console/api/tasks"} <= paths
    assert "/metrics" in paths
    assert not any(p.startswith("/mcp") for p in paths)


def fuzz(
    live: Live,
    operation: schemathesis.APIOperation,
    mode: schemathesis.GenerationMode,
    statuses: set[int],
    cookies: dict[str, str],
) -> None:
    """``EXAMPLES`` requests of ``operation`` in ``mode``, each checked (with the bearer
    token and a console session, so that the routes behind them are reached too)."""

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=operation.as_strategy(mode))
    def call(case: schemathesis.Case) -> None:
        response = case.call(
            base_url=live.base,
            headers={"Authorization": f"Bearer {TOKEN}"},
            cookies=cookies,
            timeout=30,
        )
        statuses.add(response.status_code)
        assert response.status_code < 500, (case.method, case.formatted_path, response.text)
        assert "Traceback" not in response.text
        assert 'File "' not in response.text  # no frame of one either

    call()


def test_fuzzing_every_route_finds_no_server_error(live: Live) -> None:
    schema = schemathesis.openapi.from_url(f"{live.base}/openapi.json")
    with httpx.Client(base_url=live.base) as client:
        form = client.get("/console/login")
        nonce = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert nonce, form.text
        signed = client.post("/console/login", data={"csrf": nonce[1], "token": CONSOLE_TOKEN})
        assert signed.status_code == 303, signed.text
        cookies = {"retouch_console": client.cookies["retouch_console"]}
    seen: dict[str, set[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        statuses = seen.setdefault(operation.label, set())
        fuzz(live, operation, schemathesis.GenerationMode.POSITIVE, statuses, cookies)
        # Nothing to break in an operation without parameters or a body: no negative cases.
        with contextlib.suppress(hypothesis.errors.Unsatisfiable):
            fuzz(live, operation, schemathesis.GenerationMode.NEGATIVE, statuses, cookies)
    print("\nfuzzed:", "; ".join(f"{op} → {sorted(s)}" for op, s in sorted(seen.items())))
    assert len(seen) >= 15
    assert {200} <= seen["GET /health"] and 200 in seen["GET /metrics"]
    assert 200 in seen["GET /console/api/tasks"]  # the session reached the routes behind it
