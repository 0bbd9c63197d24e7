"""The fake Telegram Bot API (tests/fakes/telegram.py) in its own process, driven over a pipe.

In a thread of the bot's process it would share the GIL with the bot, and its own work
(decoding every uploaded photo, making Telegram's thumbnails) would count as the bot's; in a
child process it only shares the two cores.

    with BotAPIProcess(nodelay=True) as api:
        api.token, api.api_base_url, api.file_base_url
        api.send_photos([(chat_id, user_id, jpeg_bytes, caption), ...])  -> queue times
        api.calls(since=0) -> [{"method", "chat_id", "received_at"}, ...]
"""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import threading
from typing import Any

from bench._common import ROOT


class BotAPIProcess:
    def __init__(self, *, nodelay: bool = True) -> None:
        self.nodelay = nodelay
        self.proc: subprocess.Popen[str] | None = None
        self.info: dict[str, str] = {}
        self._lock = threading.Lock()

    def start(self) -> BotAPIProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench._botapi", json.dumps({"nodelay": self.nodelay})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the fake Bot API process did not start")
        self.info = json.loads(line)
        return self

    @property
    def token(self) -> str:
        return self.info["token"]

    @property
    def api_base_url(self) -> str:
        return self.info["api_base_url"]

    @property
    def file_base_url(self) -> str:
        return self.info["file_base_url"]

    def _ask(self, message: dict[str, Any]) -> Any:
        assert self.proc is not None and self.proc.stdin and self.proc.stdout
        with self._lock:
            self.proc.stdin.write(json.dumps(message) + "\n")
            self.proc.stdin.flush()
            return json.loads(self.proc.stdout.readline())

    def send_photos(self, items: list[tuple[int, int, bytes, str]]) -> list[float]:
        """Queue photo updates as fast as possible; the time each was queued (time.time())."""
        return self._ask(
            {
                "op": "send_photos",
                "items": [[c, u, base64.b64encode(d).decode(), cap] for c, u, d, cap in items],
            }
        )

    def calls(self, since: int = 0) -> list[dict[str, Any]]:
        return self._ask({"op": "calls", "since": since})

    def call_count(self) -> int:
        return self._ask({"op": "count"})

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            self._ask({"op": "stop"})
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> BotAPIProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _child(options: dict[str, Any]) -> None:
    import logging
    import socket
    import time

    from tests.fakes.telegram import FakeBotAPI

    logging.basicConfig(level=logging.ERROR)
    fake = FakeBotAPI()
    fake.start()
    if options.get("nodelay"):
        # The fake's listening socket lacks IPPROTO_TCP, so asyncio leaves Nagle on and every
        # call waits ~40 ms for a delayed ACK (tests/test_bot_latency.py); Telegram does not.
        listener = getattr(getattr(fake, "_server", None), "_sock", None)
        if listener is not None:
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    info = {
        "token": fake.token,
        "api_base_url": fake.api_base_url,
        "file_base_url": fake.file_base_url,
    }
    print(json.dumps(info), flush=True)
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg["op"]
        if op == "send_photos":
            photos = [(c, u, base64.b64decode(d), cap) for c, u, d, cap in msg["items"]]
            answer: Any = []
            for chat, user, data, caption in photos:
                answer.append(time.time())
                fake.user_sends_photo(chat, user, data, caption)
        elif op == "calls":
            answer = []
            for call in fake.calls[msg["since"] :]:
                chat = call.params.get("chat_id")
                answer.append(
                    {"method": call.method, "chat_id": chat, "received_at": call.received_at}
                )
        elif op == "count":
            answer = fake.call_count
        elif op == "stop":
            print("true", flush=True)
            break
        else:
            answer = {"error": f"unknown op {op}"}
        print(json.dumps(answer, default=str), flush=True)
    fake.stop()


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
