"""The types every part of Retouch speaks: requests, tasks and their results, uploads,
users and budgets."""

from __future__ import annotations

import re
import tempfile
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_serializer,
    field_validator,
    model_validator,
)

MAX_SEED = 2_147_483_647
#: The owner of what is done on this machine (stdio, the command line), and of the tasks
#: stored before tasks had owners.
LOCAL_OWNER = "local"
#: What a client sees for a vendor task id: that there is one, never which.
WITHHELD = "withheld"
_ROOTS = {"tmp", "var", "home", "root", "usr", "opt", "etc", "srv", "mnt", "media", "run"}
_ROOTS |= {"proc", "sys", "dev", "data", "Users", "private", "Volumes"}
_ROOTS |= {*Path(tempfile.gettempdir()).parts[1:2], *Path.home().parts[1:2]}
#: An absolute path on the server (a POSIX one under a usual root, or a Windows one), not
#: the path part of a URL: what comes before it is no host, port or path character.
SERVER_PATH = re.compile(
    r"(?<![\w.:/\]~%@-])/(?:" + "|".join(sorted(_ROOTS)) + r")(?:/[^\s'\"<>:;,()]*)+"
    r"|\b[A-Za-z]:\\[^\s'\"<>:;,()]+"
)


def hide_paths(text: str) -> str:
    """``text`` with every server file path cut to its last part (``…/in.png``): tools that
    run on the server (Real-ESRGAN, tesseract, Pillow) name their files in their errors."""
    return SERVER_PATH.sub(lambda m: "…/" + re.split(r"[/\\]", m.group().rstrip("/\\"))[-1], text)


def plain_nullables(schema: dict[str, Any]) -> None:
    """Publish ``T | None`` fields as ``"type": [T, "null"]`` rather than pydantic's
    ``anyOf: [{T}, {null}]``: the same constraint, which MCP clients re-check on every tool
    result, and a jsonschema validator checks ~2x faster without the anyOf branches."""
    for prop in schema.get("properties", {}).values():
        options = prop.get("anyOf")
        if not (isinstance(options, list) and len(options) == 2 and options[1] == {"type": "null"}):
            continue
        first = options[0]
        if isinstance(first.get("type"), str) and set(first) <= {"type", "format"}:
            del prop["anyOf"]
            prop.update(first, type=[first["type"], "null"])


class TaskStatus(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def finished(self) -> bool:
        return self in (TaskStatus.succeeded, TaskStatus.failed, TaskStatus.canceled)


class Expand(BaseModel):
    """How far to extend the canvas on each side, as a multiple of the original (1.0–2.0)."""

    model_config = ConfigDict(extra="forbid")

    top: float = Field(1.0, ge=1.0, le=2.0)
    bottom: float = Field(1.0, ge=1.0, le=2.0)
    left: float = Field(1.0, ge=1.0, le=2.0)
    right: float = Field(1.0, ge=1.0, le=2.0)


class EditRequest(BaseModel):
    """One edit as a client asks for it. The catalogue checks it against the function."""

    model_config = ConfigDict(extra="forbid")

    images: list[str] = Field(
        min_length=1,
        max_length=10,
        description="Images to edit: http(s) URL, data: URI, local path, retouch://uploads/<id>"
        " or retouch://tasks/<id>/<n>.",
    )
    prompt: str = Field("", max_length=32_000, description="What to do, in words.")
    function: str = Field("edit", description="A function from list_functions.")
    mask: str | None = Field(
        None, description="Mask image (white = edit, black = keep), same sources as images."
    )
    vendor: str | None = Field(None, description="Vendor instance; default: routing order.")
    n: int = Field(1, ge=1, le=10, description="Number of results.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    negative_prompt: str | None = Field(None, max_length=2_000)
    watermark: bool | str | None = Field(
        None, description="true: the vendor's own mark; text: Retouch stamps that text."
    )
    size: str | None = Field(None, description='Output size "WxH" where the vendor allows it.')
    expand: Expand | None = None
    upscale_factor: int | None = Field(None, ge=1, le=4)
    options: dict[str, Any] = Field(
        default_factory=dict, description="Vendor-specific options (see list_functions)."
    )

    @field_validator("size")
    @classmethod
    def _size_form(cls, value: str | None) -> str | None:
        if value is None or value == "auto":
            return value
        parts = value.lower().replace("*", "x").split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError('size must look like "1024x1024" (width x height) or "auto"')
        w, h = (int(p) for p in parts)
        if not (1 <= w <= 16384 and 1 <= h <= 16384):
            raise ValueError("size sides must be between 1 and 16384")
        return f"{w}x{h}"

    @field_validator("watermark")
    @classmethod
    def _watermark_text(cls, value: bool | str | None) -> bool | str | None:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            if len(value) > 100:
                raise ValueError("watermark text is limited to 100 characters")
        return value


class ResultImage(BaseModel):
    """One finished image, stored by Retouch."""

    model_config = ConfigDict(json_schema_extra=plain_nullables)

    index: int
    uri: str = Field(description="retouch://tasks/<id>/<index>; read it as an MCP resource.")
    sha256: str
    mime_type: str
    width: int
    height: int
    bytes: int
    vendor_url: str | None = Field(None, description="The vendor's own URL (it expires).")
    url: str | None = Field(
        None,
        description="A link that opens the full image in a browser, no token needed, for a "
        "limited time (only when Retouch serves HTTP).",
    )


class Upload(BaseModel):
    """An image someone uploaded, usable as ``uri`` wherever an image is, by its owner."""

    uri: str = Field(description="retouch://uploads/<id>")
    mime_type: str
    width: int
    height: int
    bytes: int
    expires_at: datetime


class ImageFailure(BaseModel):
    """One requested image that the vendor did not deliver (partial failure)."""

    index: int
    code: str
    message: str

    @field_validator("message")
    @classmethod
    def _no_paths(cls, message: str) -> str:
        return hide_paths(message)


class ErrorInfo(BaseModel):
    """A task's error as clients see it: the vendor's task id and server paths left out."""

    model_config = ConfigDict(extra="allow")

    code: str
    message: str

    @model_validator(mode="before")
    @classmethod
    def _public(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k != "vendor_task_id"}
            if isinstance(data.get("message"), str):
                data["message"] = hide_paths(data["message"])
        return data


def _task_schema(schema: dict[str, Any]) -> None:
    plain_nullables(schema)
    # The status inline, not a $ref: one indirection less for every client-side check.
    schema["properties"]["status"] = {
        "enum": [s.value for s in TaskStatus],
        "type": "string",
        "title": "Status",
    }


class Task(BaseModel):
    """A task record as clients see it."""

    model_config = ConfigDict(json_schema_extra=_task_schema)

    id: str
    status: TaskStatus
    function: str
    vendor: str
    prompt: str = ""
    n: int = 1
    input_count: int = 1
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    progress: str | None = Field(None, description="What is happening now, in words.")
    attempts: int = 0
    vendor_task_id: str | None = Field(
        None,
        description=f'"{WITHHELD}" once the vendor has the task: its own id stays on the server.',
    )
    results: list[ResultImage] = Field(default_factory=list)
    failures: list[ImageFailure] = Field(default_factory=list)
    error: ErrorInfo | None = None
    notes: list[str] = Field(
        default_factory=list, description="What Retouch changed or chose on the way."
    )
    billed_images: int = 0
    cost: float | None = None
    currency: str | None = None

    @field_validator("notes")
    @classmethod
    def _no_paths(cls, notes: list[str]) -> list[str]:
        return [hide_paths(n) for n in notes]

    @field_serializer("vendor_task_id")
    def _withheld(self, value: str | None) -> str | None:
        """Whoever knew a vendor task id could once end the task with a forged callback; the
        id stays an attribute for Retouch's own code, and leaves in no dump."""
        return WITHHELD if value else None

    @property
    def finished(self) -> bool:
        return self.status.finished


class FunctionInfo(BaseModel):
    """One catalogue entry as list_functions shows it."""

    name: str
    summary: str
    min_images: int
    max_images: int
    mask: str = Field(description='"required", "optional" or "none"')
    parameters: dict[str, Any] = Field(description="JSON Schema of the parameters it uses.")
    vendors: list[str] = Field(description="Enabled vendor instances that can run it.")
    notes: dict[str, str] = Field(
        default_factory=dict, description="Per vendor: what it really does."
    )


#: A currency as budgets name it: ISO 4217 codes (CNY, USD) and vendors' own units (PTC).
CURRENCY = r"^[A-Z]{2,10}$"


def _currencies(value: dict[str, float]) -> dict[str, float]:
    out = {str(k).strip().upper(): v for k, v in value.items()}
    bad = sorted(k for k in out if not re.fullmatch(CURRENCY, k))
    if bad:
        raise ValueError(f"{bad[0]!r} is not a currency code (2-10 letters, e.g. CNY, USD)")
    if any(not 0 <= v < float("inf") for v in out.values()):
        raise ValueError("a cost limit is a number of at least 0")
    return out


class BudgetLimits(BaseModel):
    """What an owner may spend and start. A limit left out is the next level's: an override
    set from the terminal or the console, then the config's for the owner, then the
    config's for everyone; left out everywhere, there is no such limit."""

    model_config = ConfigDict(extra="forbid")

    day: dict[str, float] = Field(
        default_factory=dict, description="Currency → most that tasks asked for in a UTC day cost"
    )
    month: dict[str, float] = Field(
        default_factory=dict, description="Currency → most for a UTC calendar month"
    )
    edits_per_hour: int | None = Field(None, ge=0, description="Edits in any 60 minutes")
    concurrent: int | None = Field(None, ge=0, description="Edits queued or running at once")

    @field_validator("day", "month")
    @classmethod
    def _currency_codes(cls, value: dict[str, float]) -> dict[str, float]:
        return _currencies(value)

    def over(self, base: BudgetLimits) -> BudgetLimits:
        """These limits, with ``base``'s where these leave one out (currency by currency)."""
        return BudgetLimits(
            day={**base.day, **self.day},
            month={**base.month, **self.month},
            edits_per_hour=base.edits_per_hour
            if self.edits_per_hour is None
            else self.edits_per_hour,
            concurrent=base.concurrent if self.concurrent is None else self.concurrent,
        )

    @property
    def unlimited(self) -> bool:
        return self == BudgetLimits()


class Spend(BaseModel):
    """One currency's spending in a period."""

    used: float = Field(description="Billed by the tasks that ended")
    pending: float = Field(0, description="Estimated for the tasks still queued or running")
    limit: float | None = None
    remaining: float | None = Field(None, description="limit − used − pending, at least 0")


class Budget(BaseModel):
    """An owner's limits and use now: costs per currency today and this month (UTC), edits
    in the last hour, tasks queued or running."""

    owner: str
    day: dict[str, Spend] = Field(default_factory=dict)
    day_resets_at: datetime
    month: dict[str, Spend] = Field(default_factory=dict)
    month_resets_at: datetime
    edits_last_hour: int = 0
    edits_per_hour: int | None = None
    next_edit_at: datetime | None = Field(
        None, description="When the oldest edit of the last hour leaves it (one more fits)"
    )
    active: int = Field(0, description="Tasks queued or running")
    concurrent: int | None = None
    limits: BudgetLimits = Field(description="The limits in effect")


class User(BaseModel):
    """An HTTP user: from the config file, or added from the terminal or the console."""

    name: str
    source: Literal["config", "store"]
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None
