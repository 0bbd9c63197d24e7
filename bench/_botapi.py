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
import json
import sys
from typing import Any

from bench._child import ChildProcess, serve


class BotAPIProcess(ChildProcess):
    module = "bench._botapi"

    def __init__(self, *, nodelay: bool = True) -> None:
        super().__init__()
        self.nodelay = nodelay

    def options(self) -> dict[str, Any]:
        return {"nodelay": self.nodelay}

    @property
    def token(self) -> str:
        return str(self.info["token"])

    @property
    def api_base_url(self) -> str:
        return str(self.info["api_base_url"])

    @property
    def file_base_url(self) -> str:
        return str(self.info["file_base_url"])

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

    def send_photos(msg: dict[str, Any]) -> Any:
        photos = [(c, u, base64.b64decode(d), cap) for c, u, d, cap in msg["items"]]
        queued = []
        for chat, user, data, caption in photos:
            queued.append(time.time())
            fake.user_sends_photo(chat, user, data, caption)
        return queued

    def calls(msg: dict[str, Any]) -> Any:
        return [
            {"method": c.method, "chat_id": c.params.get("chat_id"), "received_at": c.received_at}
            for c in fake.calls[msg["since"] :]
        ]

    info = {
        "token": fake.token,
        "api_base_url": fake.api_base_url,
        "file_base_url": fake.file_base_url,
    }
    ops = {"send_photos": send_photos, "calls": calls, "count": lambda msg: fake.call_count}
    serve(info, ops)
    fake.stop()


if __name__ == "__main__":
    _child(json.loads(sys.argv[1]))
