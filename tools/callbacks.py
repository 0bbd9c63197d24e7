"""Callback secrets: the unguessable last segment of each callback vendor's URL.

A vendor that delivers results by callback is called at ``<callback_url>/<secret>``, and
that URL is what the operator registers with the vendor. The secret is
``vendors.<name>.callback_secret`` when set (needed when processes on several machines take
callbacks), else one generated once and kept in ``<store.dir>/callback-secrets/<name>``
(mode 0600). A request without it gets the answer an unknown vendor gets.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import secrets
from pathlib import Path

from tools.config import Settings, VendorSettings
from tools.errors import ConfigError
from tools.vendors.base import CALLBACK_SECRET, CallbackSettings
from tools.vendors.registry import vendor_class

#: The secrets' folder in the data directory.
SECRET_DIR = "callback-secrets"
#: Vendor names that can be a file name (and a URL path segment) as they are.
FILE_NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")


def callback_secrets(settings: Settings) -> dict[str, str]:
    """The secret of every enabled vendor instance that delivers by callback."""
    data_dir = settings.store.dir or Path(settings.store.path).parent
    return {
        name: load_secret(name, _configured(vs), data_dir)
        for name, vs in settings.enabled_vendors().items()
        if vendor_class(vs.kind).completion == "callback"
    }


def _configured(settings: VendorSettings) -> str:
    if isinstance(settings, CallbackSettings):
        return settings.callback_secret.get_secret_value()
    return ""


def load_secret(name: str, configured: str, data_dir: Path) -> str:
    """The callback secret of vendor instance ``name``: ``configured``, else the data
    directory's, made on first use.

    Processes starting at once on one data directory end up with the same secret: the file
    appears whole or not at all (a hard link of a finished temporary file)."""
    if configured:
        return configured
    if not FILE_NAME.match(name):
        raise ConfigError(
            f"vendors.{name}: a callback vendor's name must be letters, digits, _ . - (it is "
            "part of its callback URL and of its secret's file name)"
        )
    folder = data_dir / SECRET_DIR
    path = folder / name
    try:
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = folder / f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="ascii") as fh:
                    fh.write(secrets.token_urlsafe(32) + "\n")
                with contextlib.suppress(FileExistsError):  # another process was first
                    os.link(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
        secret = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError as exc:
        raise ConfigError(
            f"vendors.{name}: cannot keep its callback secret in {folder} ({exc.strerror}); "
            f"set vendors.{name}.callback_secret instead"
        ) from None
    if not CALLBACK_SECRET.match(secret):
        raise ConfigError(f"{path} holds no usable callback secret; delete it and start again")
    return secret


def same_secret(expected: str, given: str) -> bool:
    """Whether ``given`` is ``expected``, in time that does not depend on where they differ."""
    return hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))
