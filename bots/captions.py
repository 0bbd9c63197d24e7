"""Reading a caption (or a reply's text) as an edit: a function command or plain words.

    /style oil painting        → stylization_all, prompt "oil painting"
    /upscale 4 lanczos         → super_resolution, upscale_factor 4, options.method lanczos
    /expand 1.5                → expand, every side 1.5×
    make it look like autumn   → edit (when an enabled vendor runs it), else a local mapping
                                 (a style word → stylization_all, "rotate 90" → adjust, ...)
                                 that the bot states explicitly.

Pure functions: no Telegram, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from bots.lengths import fit

#: Bot command → catalogue function.
FUNCTION_COMMANDS: dict[str, str] = {
    "edit": "edit",
    "style": "stylization_all",
    "upscale": "super_resolution",
    "erase": "remove_watermark",
    "expand": "expand",
    "adjust": "adjust",
    "lineart": "lineart",
    "colorize": "colorization",
    "describe": "description_edit",
    "doodle": "doodle",
    "cartoon": "control_cartoon_feature",
}
COMMAND_FOR: dict[str, str] = {fn: cmd for cmd, fn in FUNCTION_COMMANDS.items()}

#: One example caption per command (for /help and /functions).
EXAMPLES: dict[str, str] = {
    "edit": "/edit put the cat on a red sofa",
    "style": "/style oil painting",
    "upscale": "/upscale 2",
    "erase": "/erase",
    "expand": "/expand 1.5",
    "adjust": "/adjust rotate 90; grayscale",
    "lineart": "/lineart",
    "colorize": "/colorize",
    "describe": "/describe make it winter",
    "doodle": "/doodle a castle on a hill",
    "cartoon": "/cartoon at the beach",
}

#: Words after a command that pick a method (a vendor option) rather than being prompt text.
METHOD_WORDS: dict[str, frozenset[str]] = {
    "upscale": frozenset({"lanczos", "cubic", "esrgan", "auto"}),
    "lineart": frozenset({"xdog", "canny"}),
    "erase": frozenset({"telea", "fsr"}),
}

PROMPT_REQUIRED = frozenset({"edit", "style", "adjust", "describe", "doodle", "cartoon"})

_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,32})(?:@([A-Za-z0-9_]{3,64}))?(?:\s+(.*))?$", re.DOTALL)
_OPTION = re.compile(r"(?<!\S)([A-Za-z_]{2,24})=(\S+)")
_FACTOR = re.compile(r"^(?:[x×]\s*)?(\d+(?:\.\d+)?)(?:\s*[x×])?$", re.IGNORECASE)
_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")
_SIDES = ("top", "bottom", "left", "right")

# Plain words → a local function, tried in this order when no vendor runs `edit`.
_LOCAL_RULES: list[tuple[str, re.Pattern[str]]] = [
    ("lineart", re.compile(r"\b(line ?art|line drawing|outlines?|edges)\b")),
    (
        "super_resolution",
        re.compile(r"\b(upscale|enlarge|upsize|super[- ]?res\w*|bigger|higher resolution)\b"),
    ),
    (
        "remove_watermark",
        re.compile(r"\b(remove|erase|delete|clean)\b.*\b(watermarks?|text|captions?|logos?)\b"),
    ),
    (
        "adjust",
        re.compile(
            r"^(rotate|turn|flip|mirror|crop|resize|scale|brightness|brighter|darker|contrast"
            r"|gr[ae]yscale|black and white|b&w|blur|sharpen)\b"
        ),
    ),
    (
        "stylization_all",
        re.compile(
            r"\b(oil|paint\w*|pencil|sketch\w*|cartoon\w*|comic|water ?colou?r|detail\w*|hdr)\b"
        ),
    ),
]


class CaptionError(Exception):
    """The caption cannot be read as an edit; ``message`` tells the user why and what works."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass
class Plan:
    """An edit as the caption asks for it (before images and user settings are added)."""

    function: str
    prompt: str = ""
    upscale_factor: int | None = None
    expand: dict[str, float] | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: Set when the bot chose the function from plain words: what it chose and why.
    chosen: str | None = None

    @property
    def command(self) -> str:
        return "/" + COMMAND_FOR.get(self.function, self.function)

    def describe(self) -> str:
        """The plan as the equivalent caption, e.g. ``/upscale 4 lanczos``."""
        parts = [self.command]
        if self.upscale_factor:
            parts.append(str(self.upscale_factor))
        if self.expand:
            values = set(self.expand.values())
            if len(values) == 1:
                parts.append(_num(values.pop()))
            else:
                parts += [f"{k} {_num(v)}" for k, v in self.expand.items() if v != 1.0]
        if "method" in self.options:
            parts.append(str(self.options["method"]))
        parts += [f"{k}={v}" for k, v in self.options.items() if k != "method"]
        if self.prompt:
            parts.append(self.prompt)
        return " ".join(parts)


def _num(value: float) -> str:
    return f"{value:g}"


def split_command(text: str) -> tuple[str, str | None, str] | None:
    """``"/style@bot oil"`` → ("style", "bot", "oil"); None when it is not a command."""
    m = _COMMAND.match(text.strip())
    if not m:
        return None
    return m.group(1).lower(), m.group(2), (m.group(3) or "").strip()


def parse(
    text: str | None, runnable: Collection[str], bot_username: str | None = None
) -> Plan | None:
    """Read a caption. None: nothing to do (empty, or a command addressed to another bot).

    ``runnable`` is the set of functions some enabled vendor can run; plain words become
    ``edit`` only when it is in there. Raises :class:`CaptionError` with advice otherwise.
    """
    text = (text or "").strip()
    if not text:
        return None
    parts = split_command(text)
    if parts is None:
        return _plain(text, runnable)
    command, target, rest = parts
    if target and bot_username and target.lower() != bot_username.lower():
        return None
    function = FUNCTION_COMMANDS.get(command)
    if function is None:
        raise CaptionError(
            f"/{command} is not an edit command. Try one of: "
            + ", ".join(f"/{c}" for c, f in FUNCTION_COMMANDS.items() if f in runnable)
            + " — or see /help."
        )
    return _command(command, function, rest)


def _command(command: str, function: str, rest: str) -> Plan:
    plan = Plan(function)
    rest = _take_options(rest, plan)
    words = rest.split()
    methods = METHOD_WORDS.get(command, frozenset())
    kept: list[str] = []
    numbers: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        low = word.lower()
        if low in methods and "method" not in plan.options:
            plan.options["method"] = low
        elif command == "upscale" and plan.upscale_factor is None and _FACTOR.match(low):
            plan.upscale_factor = _factor(low)
        elif (
            command == "expand"
            and low in _SIDES
            and i + 1 < len(words)
            and _NUMBER.match(words[i + 1])
        ):
            plan.expand = plan.expand or dict.fromkeys(_SIDES, 1.0)
            plan.expand[low] = _scale(words[i + 1])
            i += 1
        elif command == "expand" and _NUMBER.match(low) and not kept:
            numbers.append(low)
        else:
            kept.append(word)
        i += 1
    if command == "expand":
        if numbers:
            if len(numbers) == 1:
                plan.expand = dict.fromkeys(_SIDES, _scale(numbers[0]))
            elif len(numbers) == 4:
                plan.expand = dict(zip(_SIDES, (_scale(n) for n in numbers), strict=True))
            else:
                raise CaptionError(
                    "/expand takes one scale for every side (/expand 1.5), four for top, "
                    "bottom, left and right (/expand 1 1 1.5 1.5), or named sides "
                    "(/expand left 1.5 right 1.5); each from 1.0 to 2.0."
                )
        if plan.expand is None:
            plan.expand = dict.fromkeys(_SIDES, 1.5)
            plan.chosen = "No scale given, so I extend every side by 1.5×."
    plan.prompt = " ".join(kept)
    if command in PROMPT_REQUIRED and not plan.prompt:
        raise CaptionError(f"/{command} needs words after it, e.g. {EXAMPLES[command]}")
    return plan


def _take_options(rest: str, plan: Plan) -> str:
    def keep(m: re.Match[str]) -> str:
        plan.options[m.group(1).lower()] = _value(m.group(2))
        return ""

    return _OPTION.sub(keep, rest).strip()


def _value(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw)
    except ValueError:
        return raw


def _factor(word: str) -> int:
    m = _FACTOR.match(word)
    value = float(m.group(1)) if m else 0.0
    if value != int(value) or not 1 <= value <= 4:
        raise CaptionError("/upscale takes a whole factor from 1 to 4, e.g. /upscale 2")
    return int(value)


def _scale(word: str) -> float:
    value = float(word)
    if not 1.0 <= value <= 2.0:
        raise CaptionError(f"expand scales go from 1.0 to 2.0; got {word}")
    return value


def _plain(text: str, runnable: Collection[str]) -> Plan:
    if "edit" in runnable:
        return Plan("edit", prompt=text)
    low = text.lower().replace("colour", "color")
    for function, pattern in _LOCAL_RULES:
        if function not in runnable or not pattern.search(low):
            continue
        plan = Plan(function)
        if function == "super_resolution":
            m = re.search(r"(?:(\d)\s*[x×]|[x×]\s*(\d))", low)
            plan.upscale_factor = _factor(m.group(1) or m.group(2)) if m else 2
        elif function in ("stylization_all", "adjust"):
            plan.prompt = text
        plan.chosen = (
            "No enabled vendor follows free-form instructions (that needs a cloud vendor "
            f"for /edit), so I read “{_short(text)}” as {_short(plan.describe(), 120)}."
        )
        return plan
    local = [EXAMPLES[c] for c, f in FUNCTION_COMMANDS.items() if f in runnable and c != "edit"]
    raise CaptionError(
        "I can't follow free-form instructions here: /edit needs a cloud vendor, and none "
        "is enabled. Start the caption with a command instead"
        + (": " + " · ".join(local) if local else "")
        + ". See /functions."
    )


def _short(text: str, limit: int = 60) -> str:
    return fit(" ".join(text.split()), limit)
