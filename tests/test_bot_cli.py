"""``retouch-bot`` itself: configuration errors, webhook mode, and no token in the logs."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import httpx
import pytest

from bots.__main__ import main
from bots.telegram import RedactTokens, build_application, serve_webhook
from tests import test_bot as harness
from tests.conftest import png
from tests.fakes.telegram import FakeBotAPI
from tests.test_bot import USER, BotSettings, bot, says

fake = harness.fake  # the harness's fixtures, shared
bot_settings = harness.bot_settings


def test_missing_token_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TELEGRAM_BOT_TOKEN", raising=False)
    monkeypatch.delenv("RETOUCH_TELEGRAM__TOKEN", raising=False)
    config = tmp_path / "config.toml"
    config.write_text("[telegram]\nallowed_user_ids = [1]\n", encoding="utf-8")
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no bot token" in err and "TELEGRAM_BOT_TOKEN" in err

    assert main(["--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_log_lines_never_show_a_token() -> None:
    record = logging.LogRecord(
        "httpx",
        logging.WARNING,
        __file__,
        1,
        "POST %s failed",
        ("https://x/bot123456:AAAAbbbbCCCCddddEEEEffffGGGGhhhhIII/getMe",),
        None,
    )
    RedactTokens().filter(record)
    assert record.getMessage() == "POST https://x/bot<token>/getMe failed"


async def test_no_token_in_logs_during_an_edit(
    fake: FakeBotAPI, bot_settings: BotSettings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with bot(bot_settings()):
        fake.user_sends_photo(USER, USER, png(), "/adjust grayscale")
        await fake.wait_for("sendPhoto")
    secret = fake.token.split(":", 1)[1]
    leaks = [f"{r.name}: {r.getMessage()}" for r in caplog.records if secret in r.getMessage()]
    assert caplog.records and not leaks, leaks[:3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def test_webhook_mode(fake: FakeBotAPI, bot_settings: BotSettings) -> None:
    port = _free_port()
    settings = bot_settings(webhook_url=f"https://bot.example/hook/{port}")
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve_webhook(build_application(settings), settings, "127.0.0.1", port, stop=stop)
    )
    try:
        (hook,) = await fake.wait_for("setWebhook")
        assert hook.params["url"] == f"https://bot.example/hook/{port}"
        secret = hook.params["secret_token"]
        update = {
            "update_id": 1,
            "message": {
                "message_id": 1,
                "date": 0,
                "text": "/help",
                "entities": [{"type": "bot_command", "offset": 0, "length": 5}],
                "chat": {"id": USER, "type": "private", "first_name": "U"},
                "from": {"id": USER, "is_bot": False, "first_name": "U"},
            },
        }
        url = f"http://127.0.0.1:{port}/hook/{port}"
        async with httpx.AsyncClient() as client:
            for _ in range(200):  # uvicorn may still be binding
                try:
                    refused = await client.post(url, json=update)
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            assert refused.status_code == 403  # no secret token: not from Telegram
            ok = await client.post(
                url, json=update, headers={"X-Telegram-Bot-Api-Secret-Token": secret}
            )
            assert ok.status_code == 200
        await fake.wait_for("sendMessage", predicate=says("Examples"))
        assert not fake.calls_to("getUpdates")
    finally:
        stop.set()
        await asyncio.wait_for(server, 10)
