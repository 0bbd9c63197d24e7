"""The store: tasks with leases and the images they use, behind one interface (``Store``,
in ``base.py``), with the images' bytes in a ``BlobStore``: files on disk (``blobs.py``) or
an S3-compatible bucket (``s3.py``). Two task stores: SQLite (``sqlite.py``, the embedded
default) and PostgreSQL (``postgres.py``, for several processes on several machines);
``open_store`` picks the backends from the settings."""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING

from tools.errors import ConfigError
from tools.store.base import Store, StoreLimits, TaskRecord, Turn, new_task_id
from tools.store.blobs import BlobStore, FileBlobStore, blob_key

if TYPE_CHECKING:
    from tools.config import StoreSettings

__all__ = [
    "BlobStore",
    "FileBlobStore",
    "Store",
    "StoreLimits",
    "TaskRecord",
    "Turn",
    "blob_key",
    "check_usable",
    "limits_of",
    "new_task_id",
    "open_blob_store",
    "open_store",
]


def check_usable(settings: StoreSettings) -> None:
    """Make the store's folders and check this process can write in them: a ConfigError
    naming the setting, at start, rather than a failed write at the first edit."""
    sqlite = not settings.url.get_secret_value()
    folders = {"store.path": settings.path.parent} if sqlite else {}
    if not settings.blobs:
        folders["store.results_dir"] = settings.results_dir
    for key, folder in folders.items():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".retouch-probe-"):
                pass
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(f"{key}: cannot write in {folder}: {reason}") from None
    if not sqlite:
        return
    path = settings.path
    if path.is_dir():
        raise ConfigError(f"store.path: {path} is a folder; name the database file in it")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise ConfigError(f"store.path: {path} cannot be both read and written by this user")


async def open_store(settings: StoreSettings) -> Store:
    """The store the settings describe: PostgreSQL at ``url`` if set, else the SQLite file at
    ``path``; and a folder of files or a bucket; checked usable first (:func:`check_usable`)."""
    check_usable(settings)
    blobs = await open_blob_store(settings)
    try:
        url = settings.url.get_secret_value()
        store: Store
        if url:
            from tools.store.postgres import PostgresStore

            store = await PostgresStore.open(
                url, blobs, min_size=settings.pool_min_size, max_size=settings.pool_max_size
            )
        else:
            from tools.store.sqlite import SQLiteStore

            store = await SQLiteStore.open(settings.path, blobs)
    except BaseException:
        await blobs.close()
        raise
    store.limits = limits_of(settings)
    return store


def limits_of(settings: StoreSettings) -> StoreLimits:
    """The size limits the settings give the store."""
    cap = settings.max_results_mb
    return StoreLimits(cap * 1024 * 1024 if cap else None, settings.owner_share)


async def open_blob_store(settings: StoreSettings) -> BlobStore:
    """``store.blobs``'s bucket when it names one, else the folder ``store.results_dir``."""
    if not settings.blobs:
        return FileBlobStore(settings.results_dir)
    try:
        from tools.store.s3 import S3BlobStore
    except ImportError as exc:
        raise ConfigError(
            f"store.blobs is {settings.blobs} but {exc.name} is not installed:"
            ' pip install "retouch[s3]"'
        ) from None
    return await S3BlobStore.open(
        settings.blobs,
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        access_key_id=settings.s3_access_key_id,
        secret_access_key=settings.s3_secret_access_key.get_secret_value(),
        session_token=settings.s3_session_token.get_secret_value(),
        addressing_style=settings.s3_addressing_style,
    )
