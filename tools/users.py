"""HTTP users: those of the config file (``[[mcp.users]]``, ``mcp.auth_token``) and those
added at run time, from the terminal or the console, kept in the store as their token's
SHA-256 only. A user's name is the owner of what its token makes."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import UTC, datetime

from pydantic import ValidationError

from tools.config import Settings, UserSettings
from tools.errors import InvalidParameter, NotFound
from tools.models import User
from tools.store.base import Store, UserRecord


class Users:
    """The users of one store and config; ``clock`` stamps additions and revocations."""

    def __init__(self, settings: Settings, store: Store, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock

    def _configured(self) -> dict[str, str]:
        """The config file's users: lower-case name → name."""
        return {u.name.lower(): u.name for u in self.settings.mcp.accounts()}

    async def list(self) -> list[User]:
        """The config file's users, then those added at run time (revoked ones too)."""
        configured = [User(name=name, source="config") for name in self._configured().values()]
        return configured + [_user(r) for r in await self.store.users()]

    async def add(self, name: str) -> tuple[User, str]:
        """A new user and its bearer token, returned this once. A revoked user's name may be
        added again: a new token for the same owner, who sees its tasks again."""
        token = secrets.token_urlsafe(32)
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            UserSettings(name=name, token_sha256=digest)  # the config's rules for names
        except ValidationError as exc:
            message = exc.errors()[0]["msg"].removeprefix("Value error, ")
            raise InvalidParameter(message, parameter="name") from None
        if name.lower() in self._configured():
            raise InvalidParameter(
                f"{name!r} is a user of the config file already ({self.settings.source})",
                parameter="name",
            )
        record = await self.store.add_user(name, digest, self.clock())
        if record is None:
            raise InvalidParameter(
                f"a user named {name!r} exists already; revoke it first to give it a new token",
                parameter="name",
            )
        return _user(record), token

    async def revoke(self, name: str) -> User:
        """Revoke a user added at run time: its token is refused from then on, by every
        process (within the HTTP guard's few seconds of caching). The config file's users
        are taken away in the file."""
        configured = self._configured().get(name.lower())
        if configured is not None:
            entry = "mcp.auth_token" if configured == "default" else "its [[mcp.users]] entry"
            raise InvalidParameter(
                f"{configured!r} is a user of the config file ({self.settings.source}): "
                f"remove {entry} there and restart the server",
                parameter="name",
            )
        record = await self.store.revoke_user(name, self.clock())
        if record is None:
            raise NotFound(f"no user {name!r} to revoke (retouch users list shows them)")
        return _user(record)

    async def digests(self) -> list[tuple[str | None, bytes]]:
        """Every user added at run time: (its name, None once revoked; its token's SHA-256)."""
        return [
            (None if r.revoked_at is not None else r.name, bytes.fromhex(r.token_sha256))
            for r in await self.store.users()
        ]


def _user(record: UserRecord) -> User:
    def at(ts: float | None) -> datetime | None:
        return datetime.fromtimestamp(ts, UTC) if ts is not None else None

    return User(
        name=record.name,
        source="store",
        created_at=at(record.created_at),
        revoked_at=at(record.revoked_at),
    )
