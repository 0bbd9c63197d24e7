"""The /vendor and /settings menus: their text and buttons, and changing a setting."""

from __future__ import annotations

import secrets

from telegram import InlineKeyboardButton, InlineKeyboardMarkup

from bots.captions import COMMAND_FOR
from bots.replies import UserError
from bots.storage import UserSettings
from tools.service import Editor


def vendor_view(editor: Editor, current: str | None) -> tuple[str, InlineKeyboardMarkup]:
    vendors = editor.vendor_kinds()
    text = "Which vendor should run your edits? Automatic picks the first that can.\n"
    for name, kind in vendors.items():
        runs = [f"/{COMMAND_FOR[f]}" for f in editor.vendor_functions(name) if f in COMMAND_FOR]
        text += f"\n{name} ({kind}): {' '.join(runs) or 'nothing the bot offers'}"
    text += f"\n\nNow: {current or 'automatic'}"
    mark = "✓ "
    rows = [
        [InlineKeyboardButton(("" if current else mark) + "Automatic", callback_data="vendor:")]
    ]
    rows += [
        [
            InlineKeyboardButton(
                ("" if current != name else mark) + name, callback_data=f"vendor:{name}"
            )
        ]
        for name in vendors
        if len(f"vendor:{name}".encode()) <= 64
    ]
    return text, InlineKeyboardMarkup(rows)


def settings_view(s: UserSettings) -> tuple[str, InlineKeyboardMarkup]:
    text = (
        "Your settings:\n"
        f"• results per edit (n): {s.n} — where the vendor can make several\n"
        f"• seed: {s.seed if s.seed is not None else 'random'} — the same seed repeats a "
        "result, where the vendor supports it\n"
        f"• delivery: {'original files' if s.originals else 'photos'}\n\n"
        "Change with the buttons or e.g. /settings n 2 · /settings seed 42 · "
        "/settings seed random · /settings originals on"
    )

    def tick(on: bool, label: str) -> str:
        return f"✓ {label}" if on else label

    rows = [
        [
            InlineKeyboardButton(tick(s.n == k, f"n={k}"), callback_data=f"set:n:{k}")
            for k in (1, 2, 3, 4)
        ],
        [
            InlineKeyboardButton(tick(s.seed is None, "Random seed"), callback_data="set:seed:"),
            InlineKeyboardButton("New fixed seed", callback_data="set:seed:new"),
        ],
        [
            InlineKeyboardButton(tick(not s.originals, "Photos"), callback_data="set:orig:0"),
            InlineKeyboardButton(tick(s.originals, "Original files"), callback_data="set:orig:1"),
        ],
    ]
    return text, InlineKeyboardMarkup(rows)


def apply_setting(s: UserSettings, key: str, value: str) -> None:
    """Change one setting from a command or a button; UserError when the value is wrong."""
    key, value = key.lower(), value.strip().lower()
    if key == "n":
        if not value.isdigit() or not 1 <= int(value) <= 10:
            raise UserError("n is the number of results per edit, from 1 to 10: /settings n 2")
        s.n = int(value)
    elif key == "seed":
        if value in ("", "random", "off", "none"):
            s.seed = None
        elif value == "new":
            s.seed = secrets.randbelow(2_147_483_648)
        elif value.isdigit() and int(value) <= 2_147_483_647:
            s.seed = int(value)
        else:
            raise UserError("seed is a whole number from 0 to 2147483647, or random")
    elif key in ("originals", "orig", "files"):
        if value in ("on", "1", "yes", "true"):
            s.originals = True
        elif value in ("off", "0", "no", "false"):
            s.originals = False
        else:
            raise UserError("originals is on (send files) or off (send photos)")
    else:
        raise UserError(f"There's no setting {key!r}; the settings are n, seed and originals.")
