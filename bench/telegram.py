"""Telegram: 50 chats send a photo at once; how fast does the bot answer and deliver?

The real bot (``bots.telegram.build_application``, python-telegram-bot polling) against the
fake Bot API (tests/fakes/telegram.py) on 127.0.0.1, with a real Editor on the local engine
and a temporary store. C chats (default 50, each its own allowed user) send a photo captioned
``/adjust grayscale`` within a few milliseconds of each other.

- update → acknowledgement: from the moment the update was queued at the fake to the bot's
  first message to that chat (sendMessage, or a reaction/chat action if it uses one);
- task end → photo sent: from the task's ``finished_at`` in the store to the bot's
  sendPhoto/sendDocument for that chat arriving at the fake.

The fake's listening socket is created without ``IPPROTO_TCP``, so asyncio leaves Nagle on
for its connections and every Bot API call waits ~40 ms for a delayed ACK (see
tests/test_bot_latency.py); real Telegram does not do that, so the benchmark sets
TCP_NODELAY on it (``--nagle`` keeps the fake as it is). The fake runs in its own process
(bench/_botapi.py), so that its work — decoding each uploaded photo and making Telegram's
thumbnails — is not counted as the bot's; ``--in-process`` runs it in a thread instead.

Target (issue #6): p95 ≤ 1 s for both.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from typing import Any

from bench._common import (
    header,
    janitor_settled,
    median,
    parser,
    percentile,
    print_table,
    settings,
    verdict,
    workdir,
)
from tools.memory import tune_malloc

ACK_METHODS = ("sendMessage", "setMessageReaction", "sendChatAction")
PHOTO_METHODS = ("sendPhoto", "sendDocument")
FIRST_USER = 5001


def photo_bytes(i: int) -> bytes:
    from PIL import Image

    image = Image.new("RGB", (320 + i, 240), (40 + i, 120, 200))
    for x in range(0, image.width, 7):
        image.putpixel((x, (x * 3) % image.height), (250, 250, 0))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


class InThread:
    """The fake Bot API in a thread of this process, with BotAPIProcess's interface."""

    def __init__(self, nodelay: bool) -> None:
        from tests.fakes.telegram import FakeBotAPI

        self.fake = FakeBotAPI()
        self.nodelay = nodelay

    def __enter__(self) -> InThread:
        self.fake.start()
        listener = getattr(getattr(self.fake, "_server", None), "_sock", None)
        if self.nodelay and listener is not None:
            listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.token = self.fake.token
        self.api_base_url = self.fake.api_base_url
        self.file_base_url = self.fake.file_base_url
        return self

    def __exit__(self, *exc: object) -> None:
        self.fake.stop()

    def send_photos(self, items: list[tuple[int, int, bytes, str]]) -> list[float]:
        times = []
        for chat, user, data, caption in items:
            times.append(time.time())
            self.fake.user_sends_photo(chat, user, data, caption)
        return times

    def calls(self, since: int = 0) -> list[dict[str, Any]]:
        return [
            {"method": c.method, "chat_id": c.params.get("chat_id"), "received_at": c.received_at}
            for c in self.fake.calls[since:]
        ]

    def call_count(self) -> int:
        return self.fake.call_count


async def one_round(
    chats: int, nagle: bool, scan_interval: float, in_process: bool
) -> dict[str, Any]:
    from bench._botapi import BotAPIProcess
    from bots.access import owner
    from bots.state import runtime
    from bots.telegram import build_application, running

    users = list(range(FIRST_USER, FIRST_USER + chats))
    api: Any = InThread(not nagle) if in_process else BotAPIProcess(nodelay=not nagle)
    with api:
        tg = {
            "token": api.token,
            "api_base_url": api.api_base_url,
            "file_base_url": api.file_base_url,
            "allowed_user_ids": users,
            "album_debounce_s": 0.2,
        }
        toml = "[telegram]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in tg.items())
        toml += '[vendors.local]\nkind = "local"\nesrgan = "off"\n'
        cfg = settings(workdir("telegram"), toml)
        photos = [photo_bytes(i) for i in range(chats)]
        app = build_application(cfg, scan_interval=scan_interval)
        async with running(app, poll_timeout=1):
            editor = runtime(app).editor
            await janitor_settled(editor)
            await asyncio.sleep(0.5)  # the first getUpdates long poll is waiting
            mark = await asyncio.to_thread(api.call_count)
            queued = await asyncio.to_thread(
                api.send_photos,
                [(u, u, photos[i], "/adjust grayscale") for i, u in enumerate(users)],
            )
            sent = dict(zip(users, queued, strict=True))
            deadline = time.monotonic() + 60 + chats
            while time.monotonic() < deadline:
                calls = await asyncio.to_thread(api.calls, mark)
                photos_sent = {
                    _chat(c) for c in calls if c["method"] in PHOTO_METHODS and _chat(c) in sent
                }
                if len(photos_sent) >= chats:
                    break
                await asyncio.sleep(0.2)
            tasks = {t.id: t for t in await editor.store.list(limit=chats * 4)}
    acks: list[float] = []
    deliveries: list[float] = []
    ack_kinds: dict[str, int] = {}
    first_ack: dict[int, dict[str, Any]] = {}
    delivered: dict[int, dict[str, Any]] = {}
    for call in calls:
        chat = _chat(call)
        if chat not in sent:
            continue
        if call["method"] in ACK_METHODS and chat not in first_ack:
            first_ack[chat] = call
        if call["method"] in PHOTO_METHODS and chat not in delivered:
            delivered[chat] = call
    for chat, call in first_ack.items():
        acks.append(call["received_at"] - sent[chat])
        ack_kinds[call["method"]] = ack_kinds.get(call["method"], 0) + 1
    finished = {r.owner: r.finished_at for r in tasks.values() if r.finished_at}
    for chat, call in delivered.items():
        end = finished.get(owner(chat))
        if end is not None:
            deliveries.append(call["received_at"] - end)
    statuses: dict[str, int] = {}
    for record in tasks.values():
        statuses[record.status] = statuses.get(record.status, 0) + 1
    return {
        "acks": acks,
        "deliveries": deliveries,
        "acked": len(first_ack),
        "delivered": len(delivered),
        "ack_kinds": ack_kinds,
        "statuses": statuses,
    }


def _chat(call: dict[str, Any]) -> int:
    try:
        return int(call.get("chat_id") or 0)
    except (TypeError, ValueError):
        return 0


async def main_async(args: Any) -> None:
    rounds = 1 if args.quick else (5 if args.full else 3)
    results = [
        await one_round(args.chats, args.nagle, args.scan, args.in_process) for _ in range(rounds)
    ]
    rows = []
    for name, key in (
        ("update → acknowledgement", "acks"),
        ("task end → photo sent", "deliveries"),
    ):
        p50 = median(median(r[key]) for r in results) * 1000
        p95 = median(percentile(r[key], 95) for r in results) * 1000
        worst = max(max(r[key], default=float("nan")) for r in results) * 1000
        rows.append([name, p50, p95, worst, verdict(p95 <= 1000)])
    print_table(
        ["latency", "p50 ms", "p95 ms", "max ms", "p95 ≤ 1 s"],
        rows,
        f"Telegram: {args.chats} chats at once (medians of {rounds} round(s); "
        f"{'Nagle on' if args.nagle else 'TCP_NODELAY'} at the fake; fake "
        f"{'in this process' if args.in_process else 'in its own process'})",
    )
    last = results[-1]
    print_table(
        ["check (last round)", "value"],
        [
            ["chats acknowledged", f"{last['acked']}/{args.chats}"],
            ["photos delivered", f"{last['delivered']}/{args.chats}"],
            ["acknowledged with", ", ".join(f"{k} ×{v}" for k, v in last["ack_kinds"].items())],
            ["task statuses", ", ".join(f"{k} ×{v}" for k, v in last["statuses"].items())],
        ],
    )


def main(argv: list[str] | None = None) -> None:
    tune_malloc()  # Retouch in this process, set up as retouch-mcp and retouch-bot set it up
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--chats", type=int, default=50, help="chats sending at once (default 50)")
    p.add_argument("--nagle", action="store_true", help="leave the fake's Nagle as it is")
    p.add_argument("--scan", type=float, default=1.0, help="tracker scan_interval (default 1)")
    p.add_argument(
        "--in-process",
        action="store_true",
        help="run the fake Bot API in a thread of the bot's process (its work then counts)",
    )
    args = p.parse_args(argv)
    header("telegram bot (bench/telegram.py)", args)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
