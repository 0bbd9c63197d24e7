"""The one interface every vendor adapter implements.

An adapter knows its wire protocol and nothing else: no front end, no store. The worker
(``tools/worker/``) hands it a ``Job`` whose images are already loaded and checked, and
drives it through ``submit`` → (``poll`` | callback) → ``Finished``. Adapters do not retry:
they raise the right ``VendorError`` (``classify.py`` maps error answers to one) and the
worker decides, from ``retryable`` and ``retry_after``, whether and when to try again.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import httpx
from pydantic import Field, SecretStr, field_validator

from tools.catalog import FUNCTIONS, MaskRule, set_params
from tools.config import VendorSettings
from tools.errors import InvalidParameter, Unsupported, VendorError, VendorFault
from tools.media import InputImage
from tools.models import EditRequest, Expand, ImageFailure

if TYPE_CHECKING:
    from PIL import Image

#: Parameters that are Retouch's own business, never a vendor's.
ROUTING_PARAMS = frozenset({"images", "function", "vendor", "prompt", "options"})


#: ``callback_secret``: URL-safe (it is a path segment), 32 characters or more.
CALLBACK_SECRET = re.compile(r"^[A-Za-z0-9_.~-]{32,256}$")


class CallbackSettings(VendorSettings):
    """Keys of a vendor that delivers results by callback (``completion = "callback"``)."""

    callback_url: str = Field(
        "", description="Retouch's public /callbacks/<name> URL; the vendor calls it + /<secret>"
    )
    callback_secret: SecretStr = Field(
        SecretStr(""),
        description="the callback URL's last segment; unset: one generated once and kept in "
        "store.dir (set it when processes on several machines take callbacks)",
    )

    @field_validator("callback_secret")
    @classmethod
    def _usable_secret(cls, value: SecretStr) -> SecretStr:
        secret = value.get_secret_value()
        if secret and not CALLBACK_SECRET.match(secret):
            raise ValueError(
                "must be 32 or more of A-Z a-z 0-9 _ . ~ - (it is part of a URL); make one "
                'with: python -c "import secrets; print(secrets.token_urlsafe(32))"'
            )
        return value


@dataclass
class Job:
    """One task as an adapter sees it."""

    task_id: str
    function: str
    prompt: str
    images: list[InputImage]
    mask: InputImage | None = None
    n: int = 1
    seed: int | None = None
    negative_prompt: str | None = None
    watermark: bool = False  # the vendor's own mark; text marks are stamped by Retouch
    size: tuple[int, int] | None = None
    expand: Expand | None = None
    upscale_factor: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    #: The public URL each image came from, where it came from one (for URL-only vendors).
    source_urls: list[str | None] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # adapters add what they changed


@dataclass
class OutputImage:
    """A result as the vendor gave it: bytes, or a URL to fetch at once (they expire).

    ``pixels``: what ``data`` shows, when this process made both (the local engine encoding
    its own output losslessly, as ``mime_type``): the intake takes the image as checked
    instead of decoding it again. At most :data:`KEEP_DECODED_PX` pixels, which are held
    outside the pixel budget until the task ends."""

    data: bytes | None = None
    url: str | None = None
    expires_at: datetime | None = None
    mime_type: str | None = None
    pixels: Image.Image | None = None


#: The largest decoded result a task keeps for the preview of a caller that waited (and a
#: vendor may hand over with its bytes): 1536² pixels, 9 MB as RGB.
KEEP_DECODED_PX = 1536 * 1536


@dataclass
class Finished:
    images: list[OutputImage]
    failures: list[ImageFailure] = field(default_factory=list)
    billed_images: int | None = None  # None: one per delivered image
    notes: list[str] = field(default_factory=list)


@dataclass
class Pending:
    vendor_task_id: str
    status: str = ""  # the vendor's own word, shown as progress
    retry_after: float | None = None


Outcome = Finished | Pending


@dataclass(frozen=True)
class Capability:
    """How a vendor runs one catalogue function."""

    params: frozenset[str] = frozenset()  # catalogue parameters it honours
    options: frozenset[str] = frozenset()  # vendor-specific option keys it takes
    mask: MaskRule | None = None  # overrides the function's own rule
    max_images: int | None = None
    max_n: int | None = None
    note: str = ""  # what it really does, shown by list_functions


class Vendor(ABC):
    """Base class of the adapters; one instance per configured vendor.

    A kind is registered by its entry point (``tools/vendors/registry.py``), whose name is the
    kind: the adapter does not repeat it.
    """

    Settings: ClassVar[type[VendorSettings]] = VendorSettings
    #: The vendor's conventional environment variable for an empty ``api_key``.
    key_env: ClassVar[str | None] = None
    completion: ClassVar[Literal["sync", "poll", "callback"]] = "sync"
    #: True when submitting the same job twice cannot bill twice (safe to resubmit).
    idempotent_submit: ClassVar[bool] = False

    def __init__(self, name: str, settings: VendorSettings, http: httpx.AsyncClient) -> None:
        self.name = name
        self.settings = settings
        self.http = http

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    @property
    def kind(self) -> str:
        return self.settings.kind

    @property
    @abstractmethod
    def capabilities(self) -> Mapping[str, Capability]:
        """Catalogue function name → how this vendor runs it."""

    def price_for(self, function: str) -> tuple[float | None, str | None]:
        """Price per delivered image and its currency (None where undocumented)."""
        return self.settings.price_per_image, self.settings.currency

    def check(self, request: EditRequest) -> None:
        """Refuse, before anything is stored or paid, what this vendor cannot honour."""
        cap = self.capabilities.get(request.function)
        if cap is None:
            raise Unsupported(
                f"vendor {self.name!r} ({self.kind}) cannot run {request.function}",
                vendor=self.name,
                function=request.function,
            )
        spec = FUNCTIONS[request.function]
        mask_rule = cap.mask or spec.mask
        if mask_rule == "required" and not request.mask:
            raise InvalidParameter(
                f"{request.function} at {self.name} needs a mask (white = edit, black = keep)",
                parameter="mask",
            )
        honoured = ROUTING_PARAMS | cap.params
        if mask_rule != "none":
            honoured |= {"mask"}
        for name in sorted(set_params(request) - honoured):
            if name == "watermark" and isinstance(request.watermark, str):
                continue  # Retouch stamps text itself, after any vendor
            raise Unsupported(
                f"{self.name} cannot honour {name!r} for {request.function}",
                vendor=self.name,
                parameter=name,
            )
        stray = sorted(set(request.options) - cap.options)
        if stray:
            allowed = ", ".join(sorted(cap.options)) or "none"
            raise InvalidParameter(
                f"{self.name} does not take the option(s) {', '.join(stray)} for "
                f"{request.function}; it takes: {allowed}",
                parameter=f"options.{stray[0]}",
            )
        if cap.max_images is not None and len(request.images) > cap.max_images:
            raise InvalidParameter(
                f"{self.name} takes at most {cap.max_images} image(s) for {request.function}; "
                f"got {len(request.images)}",
                parameter="images",
            )
        if cap.max_n is not None and request.n > cap.max_n:
            raise InvalidParameter(
                f"{self.name} makes at most {cap.max_n} image(s) per request for "
                f"{request.function}; asked for n={request.n}",
                parameter="n",
            )

    @abstractmethod
    async def submit(self, job: Job) -> Outcome:
        """Send the job. Sync vendors answer ``Finished``; async ones ``Pending``."""

    async def poll(self, vendor_task_id: str) -> Outcome:
        raise NotImplementedError(f"{self.kind} does not poll")

    async def cancel(self, vendor_task_id: str) -> bool:
        """Ask the vendor to cancel; False where it cannot (the task then runs out)."""
        return False

    def verify_callback(self, body: bytes, headers: Mapping[str, str]) -> bool:
        """Whether a callback carries the vendor's own valid signature, checked before
        anything in it is parsed. True here: for vendors that sign nothing, the secret in
        the callback URL is the only credential."""
        return True

    def parse_callback(
        self, body: bytes, headers: Mapping[str, str]
    ) -> tuple[str, Outcome | VendorError]:
        """Turn a completion callback into (vendor task id, outcome or the task's error).
        Raises VendorFault only when the body is not one (not JSON, nested too deep, names no
        task); :func:`callback_json` reads the JSON."""
        raise Unsupported(f"{self.kind} does not deliver results by callback")

    async def warm_up(self) -> None:
        """Load, before the first job, what that job would otherwise load on the event loop
        (called at start by a process that runs jobs)."""
        return None

    async def aclose(self) -> None:
        """Release what the adapter holds (tokens, sessions); the http client is shared."""
        return None


# ---- helpers shared by the HTTP adapters -------------------------------------------------

#: How deep a callback's JSON may nest (result URLs need a handful of levels).
MAX_CALLBACK_DEPTH = 32
_OPEN, _CLOSE, _QUOTE, _BACKSLASH = frozenset(b"[{"), frozenset(b"]}"), ord('"'), ord("\\")


def callback_json(body: bytes, vendor: str) -> Any:
    """A callback body's JSON, or a VendorFault: not UTF-8 JSON, or nested deeper than
    MAX_CALLBACK_DEPTH (counted in one pass first, so no depth reaches the parser's
    recursion)."""
    depth, in_string, escaped = 0, False, False
    for char in body:
        if in_string:
            if escaped:
                escaped = False
            elif char == _BACKSLASH:
                escaped = True
            elif char == _QUOTE:
                in_string = False
        elif char == _QUOTE:
            in_string = True
        elif char in _OPEN:
            depth += 1
            if depth > MAX_CALLBACK_DEPTH:
                raise VendorFault(
                    f"{vendor}: callback body nests deeper than {MAX_CALLBACK_DEPTH} levels",
                    vendor=vendor,
                )
        elif char in _CLOSE:
            depth -= 1
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise VendorFault(f"{vendor}: callback body is not JSON", vendor=vendor) from None


_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{2})[A-Za-z0-9_\-*]+")


def redact(text: str, *secrets: str) -> str:
    """``text`` with the given secrets, and anything shaped like an ``sk-`` key, masked
    (vendors echo keys back in error messages)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return _KEY_LIKE.sub(r"\1***", text)


def json_body(response: httpx.Response, vendor: str) -> Any:
    """The JSON of a response, or a VendorFault that says the vendor sent garbage."""
    try:
        return response.json()
    except ValueError:
        raise VendorFault(
            f"{vendor}: malformed answer (HTTP {response.status_code}, not JSON)",
            vendor=vendor,
            status=response.status_code,
        ) from None
