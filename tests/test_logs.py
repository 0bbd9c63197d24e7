"""``[log] format``: JSON lines parsed one by one, with the context fields where known, and
every secret of the settings masked in messages, context and tracebacks, in both formats."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from tests.conftest import MakeSettings
from tools import logs

API_KEY = "sk-logs-0123456789SECRETkey"
URL_PASSWORD = "pw-SECRET-in-the-url-42"
TG_TOKEN = "123456789:AAlogsSECRETtokenABCDEFGHIJKLMNOPQ"
CONFIG = (
    f'[vendors.ds]\nkind = "dashscope"\napi_key = "{API_KEY}"\n'
    f'base_url = "https://proxy-user:{URL_PASSWORD}@dashscope.example.com"\n'
    f'[telegram]\ntoken = "{TG_TOKEN}"\n'
)


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def log_everything(log: logging.Logger) -> None:
    vendor_url = f"https://proxy-user:{URL_PASSWORD}@dashscope.example.com/api/v1?key={API_KEY}"
    log.info("calling %s", vendor_url, extra={"vendor": "ds", "event": "vendor_call"})
    log.warning(
        "queued", extra={"task_id": "t1", "owner": "alice", "vendor": "ds", "event": "task_queued"}
    )
    try:
        raise RuntimeError(f"the vendor said: bad key {API_KEY} for bot {TG_TOKEN}")
    except RuntimeError:
        log.exception("it failed")


def test_json_lines_carry_the_context_and_no_secret(
    make_settings: MakeSettings, restore_root: None
) -> None:
    settings = make_settings(CONFIG + '[log]\nformat = "json"\n')
    out = io.StringIO()
    logs.configure(settings, stream=out)
    log_everything(logging.getLogger("retouch.test"))
    text = out.getvalue()
    for secret in (API_KEY, URL_PASSWORD, TG_TOKEN):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines()]  # one object a line
    assert len(lines) == 3
    call, queued, failed = lines
    assert call["level"] == "INFO" and call["logger"] == "retouch.test"
    assert call["message"].startswith("calling https://proxy-user:***@dashscope.example.com")
    assert "key=***" in call["message"]
    assert call["vendor"] == "ds" and call["event"] == "vendor_call" and "task_id" not in call
    assert {k: queued[k] for k in ("task_id", "owner", "vendor", "event")} == {
        "task_id": "t1",
        "owner": "alice",
        "vendor": "ds",
        "event": "task_queued",
    }
    assert (
        failed["level"] == "ERROR"
        and "RuntimeError: the vendor said: bad key ***" in (failed["exception"])
    )
    assert failed["time"].endswith("+00:00")


async def test_a_task_being_driven_names_itself_in_every_line(
    make_settings: MakeSettings, restore_root: None
) -> None:
    settings = make_settings('[log]\nformat = "json"\n')
    out = io.StringIO()
    logs.configure(settings, stream=out)
    log = logging.getLogger("httpx")  # a library's line, logged while the task is driven

    async def drive(task_id: str) -> None:
        logs.set_task(task_id, "bob", "local")
        await asyncio.sleep(0)
        log.warning("HTTP Request: GET http://vendor/%s", task_id)

    await asyncio.gather(drive("a" * 32), drive("b" * 32))
    log.warning("outside any task")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    by_message = {line["message"]: line for line in lines}
    assert by_message[f"HTTP Request: GET http://vendor/{'a' * 32}"]["task_id"] == "a" * 32
    assert by_message[f"HTTP Request: GET http://vendor/{'b' * 32}"]["task_id"] == "b" * 32
    assert by_message[f"HTTP Request: GET http://vendor/{'b' * 32}"]["owner"] == "bob"
    assert "task_id" not in by_message["outside any task"]


def test_text_lines_mask_the_same_secrets(make_settings: MakeSettings, restore_root: None) -> None:
    settings = make_settings(CONFIG)
    assert settings.log.format == "text"
    out = io.StringIO()
    logs.configure(settings, stream=out)
    log_everything(logging.getLogger("retouch.test"))
    text = out.getvalue()
    for secret in (API_KEY, URL_PASSWORD, TG_TOKEN):
        assert secret not in text
    assert "INFO retouch.test: calling https://proxy-user:***@" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
