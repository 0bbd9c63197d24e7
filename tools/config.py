"""Settings: ``config.toml`` (or ``RETOUCH_CONFIG`` / ``--config``) plus the environment.

Precedence, highest first: explicit overrides (command-line flags), ``RETOUCH_*`` environment
variables (``__`` nests: ``RETOUCH_VENDORS__DASHSCOPE__API_KEY``), the TOML file, defaults.
The vendors' own conventional variables (``DASHSCOPE_API_KEY``, ``OPENAI_API_KEY``) fill a
key that is still empty. Vendor tables are validated by their kind's own settings class, so a
typo in ``[vendors.x]`` is an error naming that key. A front end declares its own section
(``[name]``) through the ``retouch.settings`` entry-point group; see :func:`settings_class`.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import os
import re
import tomllib
import types
import typing
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from tools import pixel_budget
from tools.errors import ConfigError
from tools.models import LOCAL_OWNER, BudgetLimits
from tools.vendors import registry

MB = 1024 * 1024


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def http_url(value: str, key: str) -> str:
    """``value`` if it is empty or an http(s) URL with a host, else a ValueError."""
    if not value:
        return value
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{key} must be an http:// or https:// URL with a host, not {value!r}")
    return value


#: The level names ``log_level`` takes (any case).
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


#: ``store.blobs``: empty, or an S3 bucket name (3–63 of a-z 0-9 . -) and an optional prefix.
S3_URL = r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/[\w!.*'()/-]*)?)?$"


def user_data_dir() -> Path:
    """The platform's directory for Retouch's data (``~/.local/share/retouch`` on Linux)."""
    import platformdirs  # only a process without a config file or data dir needs it

    return platformdirs.user_data_path("retouch", appauthor=False)


class StoreSettings(Section):
    dir: Path | None = Field(
        None,
        description="data directory: relative path and results_dir are in it; unset: the "
        "config file's directory, or the platform's user data directory without one",
    )
    path: Path = Path("retouch.db")
    results_dir: Path = Path("results")
    retention_days: float = Field(7, ge=0)
    max_results_mb: int | None = Field(None, ge=1, description="evict oldest results past this")
    owner_share: float = Field(
        1.0, gt=0, le=1, description="the part of max_results_mb one owner's tasks may use"
    )
    idempotency_ttl_h: float = Field(
        24,
        gt=0,
        le=24 * 366,
        description="hours an idempotency key returns the task it started; after them the "
        "same key starts a new task",
    )
    url: SecretStr = Field(
        SecretStr(""),
        description="postgresql://user:password@host:port/db: tasks in PostgreSQL instead of "
        "the SQLite file at path (a secret: it may hold a password)",
    )
    pool_min_size: int = Field(1, ge=0, description="PostgreSQL connections kept open")
    pool_max_size: int = Field(10, ge=1, description="PostgreSQL connections at most")

    @field_validator("url")
    @classmethod
    def _postgres_only(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value()
        if url and not url.startswith(("postgresql://", "postgres://")):
            raise ValueError("only postgresql:// URLs are supported; leave it unset for SQLite")
        return value

    blobs: str = Field(
        "",
        pattern=S3_URL,
        description='where images go: "" for results_dir, or "s3://bucket/prefix"',
    )
    s3_endpoint_url: str = Field("", description="S3-compatible server; empty: AWS (or env)")
    s3_region: str = ""
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    s3_session_token: SecretStr = SecretStr("")
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, value: str) -> str:
        return http_url(value, "s3_endpoint_url")

    @field_validator("owner_share")
    @classmethod
    def _share_of_a_cap(cls, value: float, info: ValidationInfo) -> float:
        if value < 1 and info.data.get("max_results_mb") is None:
            raise ValueError("a share of nothing: set store.max_results_mb too")
        return value

    @model_validator(mode="after")
    def _s3_key_pair(self) -> StoreSettings:
        if bool(self.s3_access_key_id) != bool(self.s3_secret_access_key.get_secret_value()):
            raise ValueError("s3_access_key_id and s3_secret_access_key go together")
        return self

    def where(self) -> str:
        """Where the data goes, for a start-up message (never the URL's password)."""
        images = self.blobs or self.results_dir
        if self.blobs and self.s3_endpoint_url:
            images = f"{self.blobs} at {self.s3_endpoint_url}"
        database = redacted(self.url) if self.url.get_secret_value() else self.path
        return f"database {database}, images in {images}"


def redacted(url: SecretStr) -> str:
    """A database URL fit to print: scheme, user, host, port and database, no password and
    no query (which may hold one too)."""
    parts = urlsplit(url.get_secret_value())
    user = f"{parts.username}@" if parts.username else ""
    host = parts.netloc.rpartition("@")[2]  # host and port as written
    return f"{parts.scheme}://{user}{host}{parts.path}"


class RoutingSettings(Section):
    default_vendor: str = "local"
    order: list[str] = Field(default_factory=list)
    fallback: list[str] = Field(default_factory=list)


class MediaSettings(Section):
    max_bytes: int = Field(10 * MB, ge=1024)
    max_pixels: int = Field(50_000_000, ge=64 * 64)
    allow_local_paths: bool | None = None  # None: on for stdio and the CLI, off for HTTP
    allow_networks: list[str] = Field(
        default_factory=list, description="CIDRs exempt from the private-address refusal"
    )
    fetch_timeout_s: float = Field(30, gt=0, le=3600)
    max_redirects: int = Field(5, ge=0, le=20)
    max_concurrent_downloads: int = Field(8, ge=1, le=1000)
    decode_budget_mb: int | None = Field(
        None,
        ge=1,
        description="decoded images one process holds at once; unset: 4 images of "
        "max_pixels at 4 bytes a pixel (763 MB for 50 MP)",
    )
    decode_wait_s: float = Field(
        30, gt=0, le=3600, description="how long a request waits for room before 'busy'"
    )

    @property
    def decode_budget(self) -> int:
        """The pixel budget in bytes."""
        if self.decode_budget_mb is not None:
            return self.decode_budget_mb * MB
        return 4 * self.max_pixels * pixel_budget.WIDE

    @field_validator("allow_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for net in value:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(
                    f"{net!r} is not a network; write a CIDR such as 10.0.0.0/8 or fd00::/8"
                ) from None
        return value

    @field_validator("decode_budget_mb")
    @classmethod
    def _budget_holds_an_image(cls, value: int | None, info: ValidationInfo) -> int | None:
        least = info.data.get("max_pixels", 0) * pixel_budget.WIDE
        if value is not None and value * MB < least:
            raise ValueError(
                f"{value} MB cannot hold one image of media.max_pixels "
                f"({info.data['max_pixels']} pixels at 4 bytes); it needs at least "
                f"{-(-least // MB)}"
            )
        return value


class WorkerSettings(Section):
    lease_s: float = Field(30, ge=5, le=3600)
    idle_poll_s: float = Field(0.5, gt=0, le=60)
    callback_timeout_s: float = Field(3600, gt=0)
    #: On a clean stop, how long a submission in flight may take to reach the store (its
    #: vendor task id, or a synchronous vendor's results) before it is cut off.
    stop_grace_s: float = Field(10, ge=0, le=300)
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="retouch-worker serves /metrics on this port"
    )


class MetricsSettings(Section):
    """``[metrics]``: who may read ``/metrics`` (the HTTP server's route, and the ports the
    worker and the bot serve it on). Loopback clients need no token; others send
    ``Authorization: Bearer <token>``."""

    token: SecretStr = Field(SecretStr(""), description="the scrapers' bearer token")
    host: str = Field(
        "127.0.0.1", description="where retouch-worker's and retouch-bot's exporters listen"
    )

    @field_validator("token")
    @classmethod
    def _long_token(cls, value: SecretStr) -> SecretStr:
        token = value.get_secret_value()
        if token and (len(token) < 16 or not TOKEN_CHARS.fullmatch(token)):
            raise ValueError("a metrics token needs at least 16 characters of A-Z a-z 0-9 -._~+/")
        return value

    @field_validator("host")
    @classmethod
    def _host_alone(cls, value: str) -> str:
        if not value or any(c in value for c in "/ @"):
            raise ValueError(f"metrics.host is an address alone (like 127.0.0.1), not {value!r}")
        return value


class LogSettings(Section):
    """``[log]``: how log lines look. ``json``: one object a line (time, level, logger,
    message, and the task id, owner, vendor and event where known)."""

    format: Literal["text", "json"] = "text"


#: The user that ``mcp.auth_token`` names.
DEFAULT_USER = "default"
#: What a token in an ``Authorization: Bearer`` header may be made of (RFC 6750's b64token).
TOKEN_CHARS = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
#: A user name: no ``:``, so it never meets another front end's owners (``tg:<id>``).
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class UserSettings(Section):
    """One ``[[mcp.users]]`` entry: a name (the owner of what the user makes) and a bearer
    token, given as itself or only as its SHA-256 so that the file holds no secret."""

    name: str
    token: SecretStr | None = None
    token_sha256: str | None = None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not USER_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a user name: 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )
        if value.lower() == LOCAL_OWNER:
            raise ValueError(f"{value!r} is reserved for stdio and the command line")
        return value

    @field_validator("token")
    @classmethod
    def _usable_token(cls, value: SecretStr | None) -> SecretStr | None:
        token = value.get_secret_value() if value is not None else ""
        if value is not None and len(token) < 16:
            raise ValueError("a token needs at least 16 characters (use a long random one)")
        if value is not None and not TOKEN_CHARS.fullmatch(token):
            raise ValueError("a token may hold letters, digits and - . _ ~ + / (then = only)")
        return value

    @field_validator("token_sha256")
    @classmethod
    def _hex_digest(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("token_sha256 is the token's SHA-256 as 64 hex digits")
        return value.lower() if value is not None else None

    @model_validator(mode="after")
    def _one_token(self) -> UserSettings:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError(f"user {self.name!r}: give exactly one of token and token_sha256")
        return self

    def digest(self) -> bytes:
        """The SHA-256 of the user's token."""
        if self.token is not None:
            return hashlib.sha256(self.token.get_secret_value().encode()).digest()
        return bytes.fromhex(self.token_sha256 or "")


class MCPSettings(Section):
    transport: Literal["stdio", "http"] = "stdio"
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    path: str = "/mcp"
    auth_token: SecretStr = SecretStr("")
    users: list[UserSettings] = Field(
        default_factory=list, description="bearer tokens for HTTP, each naming an owner"
    )
    public_url: str = Field("", description="Base URL of this server for vendors and users")
    preview_px: int = Field(512, ge=64, le=2048)
    stateless: bool = Field(
        False, description="HTTP without sessions: replicas on one store need no sticky sessions"
    )
    result_url_ttl_s: float = Field(7 * 86400, gt=0, description="how long result links work")
    url_secret: SecretStr = Field(
        SecretStr(""),
        description="signs result links; unset: a secret generated once in store.dir",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="names (and addresses) clients may put in Host and Origin besides the "
        "bind address, loopback's names and public_url's host: DNS-rebinding protection",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, le=600, description="most a connection may take to send a request's headers"
    )
    body_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="most a request's body may take, from its headers on"
    )
    max_connections: int = Field(
        256, ge=8, le=100_000, description="open HTTP connections at once, idle ones let go first"
    )

    @field_validator("url_secret")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if 0 < len(value.get_secret_value()) < 32:
            raise ValueError(
                "use at least 32 characters (e.g. python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'), or leave it unset"
            )
        return value

    @model_validator(mode="after")
    def _distinct_users(self) -> MCPSettings:
        names: set[str] = set()
        tokens: dict[bytes, str] = {}
        for i, user in enumerate(self.accounts()):
            legacy = i == len(self.users)  # auth_token's user comes last
            if user.name.lower() in names:
                if legacy:
                    raise ValueError("users: 'default' names mcp.auth_token's user; rename yours")
                raise ValueError(f"users: two users are named {user.name!r} (case aside)")
            if (other := tokens.get(user.digest())) is not None:
                this = "mcp.auth_token" if legacy else f"user {user.name!r}"
                raise ValueError(f"{this} has the token of user {other!r}: give each its own")
            names.add(user.name.lower())
            tokens[user.digest()] = user.name
        return self

    def accounts(self) -> list[UserSettings]:
        """Every user HTTP accepts: ``users``, then ``auth_token`` as the user ``default``."""
        token = self.auth_token.get_secret_value()
        if not token:
            return list(self.users)
        digest = hashlib.sha256(token.encode()).hexdigest()
        return [*self.users, UserSettings(name=DEFAULT_USER, token_sha256=digest)]

    @field_validator("host")
    @classmethod
    def _host_alone(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.:_\[\]-]+", value):
            raise ValueError(
                f"{value!r} is not a host name or address (no scheme, port or path: those "
                "are mcp.port and mcp.path)"
            )
        return value

    @field_validator("allowed_hosts")
    @classmethod
    def _names_alone(cls, value: list[str]) -> list[str]:
        names = []
        for name in value:
            bare = name.strip("[]")
            try:
                names.append(ipaddress.ip_address(bare).compressed)
                continue
            except ValueError:
                pass
            if not re.fullmatch(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?", name):
                raise ValueError(
                    f"{name!r} is not a host name or address (no scheme, port or path), "
                    'e.g. "retouch.example.com"'
                )
            names.append(name.lower().rstrip("."))
        return names

    @field_validator("path")
    @classmethod
    def _path_form(cls, value: str) -> str:
        if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+/?", value):
            raise ValueError(
                f"{value!r} is not a URL path; it starts with / and has letters, digits and "
                '. _ ~ - between slashes, e.g. "/mcp"'
            )
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        return http_url(value, "public_url")


#: An owner as ``[budgets.owners."…"]`` names it: a user, "local", or a front end's own.
OWNER_NAME = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")


class BudgetSettings(BudgetLimits):
    """``[budgets]``: everyone's limits; ``[budgets.owners."<owner>"]``: one owner's, each
    limit it leaves out being everyone's."""

    owners: dict[str, BudgetLimits] = Field(default_factory=dict)

    @field_validator("owners")
    @classmethod
    def _owner_names(cls, value: dict[str, BudgetLimits]) -> dict[str, BudgetLimits]:
        for name in value:
            if not OWNER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an owner (1-128 characters, no spaces)")
        return value

    def defaults(self) -> BudgetLimits:
        return BudgetLimits.model_validate(self.model_dump(exclude={"owners"}))

    def for_owner(self, owner: str) -> BudgetLimits:
        """The owner's limits as the config sets them."""
        return self.owners.get(owner, BudgetLimits()).over(self.defaults())

    def currencies(self) -> dict[str, set[str]]:
        """Each currency a cost limit names → where (``budgets.day``, …)."""
        out: dict[str, set[str]] = {}
        levels = {"budgets": self.defaults()}
        levels |= {f'budgets.owners."{o}"': limits for o, limits in self.owners.items()}
        for where, limits in levels.items():
            for period in ("day", "month"):
                for currency in getattr(limits, period):
                    out.setdefault(currency, set()).add(f"{where}.{period}")
        return out


class VendorSettings(BaseModel):
    """Keys every vendor instance takes; a kind's adapter extends this with its own."""

    model_config = ConfigDict(extra="forbid")

    kind: str
    enabled: bool = True
    api_key: SecretStr = SecretStr("")
    base_url: str = ""
    model: str = ""
    timeout_s: float = Field(60, gt=0)
    # A kind's limits default to what its vendor documents; unset: it documents none, and
    # Retouch adds no cap of its own (a 429 is still retried as the vendor asks), except
    # that one vendor's tasks run at most 32 at once (what their images hold in memory).
    max_concurrent: int | None = Field(None, ge=1, description="tasks at once")
    submit_rps: float | None = Field(None, gt=0, description="submissions a second")
    query_rps: float | None = Field(None, gt=0, description="status queries a second")
    poll_interval_s: float = Field(1, gt=0)
    poll_max_interval_s: float = Field(10, gt=0)
    max_retries: int = Field(4, ge=0)
    price_per_image: float | None = Field(None, ge=0)
    currency: str | None = None

    def submit_rate(self, function: str) -> tuple[str, float | None]:
        """The submission limit ``function`` counts against: its name and calls a second
        (a kind whose models have limits of their own says which)."""
        return "submit", self.submit_rps

    @model_validator(mode="before")
    @classmethod
    def _own_kind(cls, data: Any) -> Any:
        """A kind's settings class knows its kind from the registry, so it need not repeat it."""
        if isinstance(data, dict) and "kind" not in data:
            kind = registry.kind_of(cls.__module__)
            if kind is not None:
                return {**data, "kind": kind}
        return data


class ConsoleSettings(Section):
    """``[console]``: the operators' web page at ``/console``, off until a token is set.
    Tokens are given as themselves or only as their SHA-256 (hex), as users' are."""

    tokens: list[SecretStr] = Field(default_factory=list, description="operators' tokens")
    token_sha256: list[str] = Field(
        default_factory=list, description="operators' tokens as their SHA-256 (hex)"
    )
    session_hours: float = Field(12, gt=0, le=24 * 30, description="how long a sign-in lasts")

    @field_validator("tokens")
    @classmethod
    def _long_tokens(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(token.get_secret_value()) < 16 for token in value):
            raise ValueError("a console token needs at least 16 characters (a long random one)")
        return value

    @field_validator("token_sha256")
    @classmethod
    def _hex_digests(cls, value: list[str]) -> list[str]:
        if not all(re.fullmatch(r"[0-9a-fA-F]{64}", digest) for digest in value):
            raise ValueError("token_sha256 holds tokens' SHA-256, 64 hex digits each")
        return [digest.lower() for digest in value]

    @property
    def enabled(self) -> bool:
        return bool(self.tokens or self.token_sha256)

    def digests(self) -> list[bytes]:
        """The SHA-256 of every operator's token."""
        own = [hashlib.sha256(t.get_secret_value().encode()).digest() for t in self.tokens]
        return own + [bytes.fromhex(d) for d in self.token_sha256]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RETOUCH_", env_nested_delimiter="__", extra="forbid", allow_inf_nan=False
    )

    store: StoreSettings = Field(default_factory=StoreSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    media: MediaSettings = Field(default_factory=MediaSettings)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    mcp: MCPSettings = Field(default_factory=MCPSettings)
    budgets: BudgetSettings = Field(default_factory=BudgetSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    vendors: dict[str, dict[str, Any]] = Field(default_factory=dict)
    log_level: str = "INFO"

    _source: str = PrivateAttr("defaults")

    @property
    def source(self) -> str:
        return self._source

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment beats the file, which arrives as init kwargs.
        return (env_settings, init_settings)

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in LOG_LEVELS and level not in ("WARN", "FATAL"):
            raise ValueError(f"unknown level {value!r}; use one of {', '.join(LOG_LEVELS)}")
        return level

    @field_validator("vendors", mode="before")
    @classmethod
    def _vendor_tables(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            raise ValueError("[vendors] must be a table of named vendor instances")
        # Secrets are wrapped at once, so no repr or dump of the settings can show them.
        return {
            name: {k: _secret(k, v) for k, v in table.items()} if isinstance(table, dict) else table
            for name, table in value.items()
        }

    def vendor_settings(self) -> dict[str, VendorSettings]:
        """Every vendor instance, validated by its kind (local is always present)."""
        tables = dict(self.vendors)
        tables.setdefault("local", {"kind": "local"})
        out: dict[str, VendorSettings] = {}
        for name, table in tables.items():
            table = dict(table)
            kind = str(table.get("kind") or name)
            table["kind"] = kind
            if kind not in registry.kinds():
                raise ConfigError(
                    f"{self.source}: vendors.{name}.kind: unknown kind {kind!r}; "
                    f"known kinds: {', '.join(registry.kinds()) or 'none (is Retouch installed?)'}"
                )
            cls = registry.vendor_class(kind)
            if cls.key_env and not table.get("api_key") and os.environ.get(cls.key_env):
                table["api_key"] = os.environ[cls.key_env]
            try:
                out[name] = cls.Settings.model_validate(table)
            except ValidationError as exc:
                raise ConfigError(_explain(exc, self.source, f"vendors.{name}")) from None
        return out

    def enabled_vendors(self) -> dict[str, VendorSettings]:
        return {n: v for n, v in self.vendor_settings().items() if v.enabled}

    def billing_currencies(self) -> set[str]:
        """The currencies the configured vendors bill in (the ones cost limits can bind)."""
        return {v.currency.upper() for v in self.vendor_settings().values() if v.currency}


SECRET_KEYS = ("api_key", "app_key", "token", "secret", "password")


def _secret(key: str, value: Any) -> Any:
    if isinstance(value, str) and key.endswith(SECRET_KEYS):
        return SecretStr(value)
    return value


def _explain(exc: ValidationError, source: str, prefix: str = "") -> str:
    """Every error of ``exc`` as ``origin: key: message``, on one line; the origin is the
    environment variable that set the key when one did, else ``source``."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        key = f"{prefix}.{loc}" if prefix and loc else (prefix or loc)
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown setting (check the spelling against config.example.toml)"
        lines.append(f"{_origin(key, source)}: {key}: {msg}")
    return "; ".join(lines)


def _origin(key: str, source: str) -> str:
    """``environment RETOUCH_…`` if a variable set ``key`` (or the table holding it)."""
    parts = key.split(".")
    names = {name.upper() for name in os.environ}
    for end in range(len(parts), 0, -1):
        name = "RETOUCH_" + "__".join(parts[:end]).upper()
        if name in names:
            return f"environment {name}"
    return source


#: The entry-point group through which a front end adds its section to the settings.
SECTIONS = "retouch.settings"


@functools.cache
def settings_class() -> type[Settings]:
    """``Settings`` plus a field for each section a front end declares in the
    ``retouch.settings`` entry-point group (``name = "module:Class"``), so its table is
    validated, overridden from the environment and refused when misspelt like the core's."""
    fields: dict[str, Any] = {}
    for point in entry_points(group=SECTIONS):
        section = point.load()
        fields[point.name] = (section, Field(default_factory=section))
    return create_model("Settings", __base__=Settings, __module__=__name__, **fields)


def find_config(path: str | Path | None = None) -> Path | None:
    """The config file to read: ``path``, else ``RETOUCH_CONFIG``, else ./config.toml."""
    if path:
        return Path(path)
    if os.environ.get("RETOUCH_CONFIG"):
        return Path(os.environ["RETOUCH_CONFIG"])
    default = Path("config.toml")
    return default if default.is_file() else None


def load_settings(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Read settings; any problem is one ConfigError, on one line, naming the file (or the
    environment variable) and the key."""
    file = find_config(path)
    data: dict[str, Any] = {}
    source = "defaults"
    if file is not None:
        source = str(file)
        try:
            data = tomllib.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {file}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{file}: not valid TOML: {exc}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{file}: not a text file (TOML is UTF-8 text)") from None
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    for dotted, value in (overrides or {}).items():
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{source}: {part}: must be a table ([{part}])")
        node[leaf] = value
    try:
        settings = settings_class()(**data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, source)) from None
    except SettingsError as exc:  # a list or table from the environment that is not JSON
        raise ConfigError(_not_json(str(exc))) from None
    settings._source = source
    # Relative store paths: a config file's are next to it (dir too); without one, in the
    # user data directory, and a relative dir from the environment is in the working dir.
    store = settings.store
    base = file.resolve().parent if file is not None else None
    if store.dir is None:
        store.dir = base or user_data_dir()
    elif not store.dir.is_absolute():
        store.dir = (base or Path.cwd()) / store.dir
    for attr in ("path", "results_dir"):
        value = getattr(store, attr)
        if not value.is_absolute():
            setattr(store, attr, store.dir / value)
    problem = _store_paths_problem(store)
    if problem:
        raise ConfigError(f"{source}: {problem}")
    settings.vendor_settings()  # validate vendor tables now, not on first use
    billed = settings.billing_currencies()
    for currency, where in sorted(settings.budgets.currencies().items()):
        if currency not in billed:
            raise ConfigError(
                f"{source}: {sorted(where)[0]}.{currency}: {unbilled(currency, billed)}"
            )
    _check_routing(settings)
    return settings


def unbilled(currency: str, billed: set[str]) -> str:
    """Why a cost limit in ``currency`` is refused when the vendors bill in ``billed``."""
    known = ", ".join(sorted(billed)) or "nothing: no vendor has a price"
    return (
        f"no vendor here bills in {currency} (they bill in {known}), so this limit would never bind"
    )


def _store_paths_problem(store: StoreSettings) -> str | None:
    """What makes the store's paths unusable as they stand (nothing is created here)."""
    wanted = {"dir": (store.dir, True)}
    if not store.url.get_secret_value():
        wanted["path"] = (store.path, False)
    if not store.blobs:
        wanted["results_dir"] = (store.results_dir, True)
    for key, (target, folder) in wanted.items():
        if target is None:
            continue
        if target.exists() and target.is_dir() != folder:
            return (
                f"store.{key}: {target} is a folder; name the database file in it, e.g. "
                f"{target / 'retouch.db'}"
                if not folder
                else f"store.{key}: {target} is a file, not a folder"
            )
        for parent in target.parents:
            if parent.exists():
                if not parent.is_dir():
                    return f"store.{key}: {parent} is a file, so {target} cannot be made there"
                break
    return None


def _check_routing(settings: Settings) -> None:
    """Every vendor name in [routing] is a vendor instance (enabled or not)."""
    known = {"local", *settings.vendors}
    routing = settings.routing
    named = {"default_vendor": [routing.default_vendor]}
    named |= {"order": routing.order, "fallback": routing.fallback}
    for key, names in named.items():
        for name in names:
            if name not in known:
                raise ConfigError(
                    f"{settings.source}: routing.{key}: unknown vendor {name!r}; "
                    f"the vendors are {', '.join(sorted(known))}"
                )


def _not_json(message: str) -> str:
    """One line naming the environment variable whose list or table is not JSON."""
    match = re.search(r'field "(\w+)"', message)
    field = match.group(1) if match else ""
    prefix = f"RETOUCH_{field.upper()}"
    culprit, kind = prefix, "a list or table"
    for name, value in os.environ.items():
        upper = name.upper()
        if upper != prefix and not upper.startswith(prefix + "__"):
            continue
        path = upper.removeprefix("RETOUCH_").lower().split("__")
        wants = _json_kind(path)
        if wants is None:
            continue
        try:
            json.loads(value)
        except ValueError:
            culprit, kind = name, wants
            break
    example = '["one", "two"]' if kind == "a list" else '{"key": "value"}'
    return (
        f"environment {culprit}: not valid JSON; {kind} from the environment is written as "
        f"JSON, e.g. {culprit}='{example}'"
    )


def _json_kind(path: list[str]) -> str | None:
    """ "a list" or "a table" if the setting at ``path`` is one (read from the environment
    as JSON), else None."""
    annotation: Any = settings_class()
    for part in path:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            field = annotation.model_fields.get(part)
            if field is None:
                return None
            annotation = field.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return None
    options = [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
    for option in options:
        origin = typing.get_origin(option) or option
        if origin is list:
            return "a list"
        if origin is dict or (isinstance(origin, type) and issubclass(origin, BaseModel)):
            return "a table"
    return None
