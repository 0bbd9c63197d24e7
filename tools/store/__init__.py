"""The store: tasks with leases and the images they use, behind one interface (``Store``,
in ``base.py``), with the images' bytes in a ``BlobStore`` (``blobs.py``). SQLite with files
on disk is the one backend so far; ``open_store`` picks the backend from the settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tools.store.base import Store, TaskRecord, new_task_id
from tools.store.blobs import BlobStore, FileBlobStore, blob_key

if TYPE_CHECKING:
    from tools.config import StoreSettings

__all__ = [
    "BlobStore",
    "FileBlobStore",
    "Store",
    "TaskRecord",
    "blob_key",
    "new_task_id",
    "open_store",
]


async def open_store(settings: StoreSettings) -> Store:
    """The store the settings describe: a SQLite database and a folder of files."""
    from tools.store.sqlite import SQLiteStore

    return await SQLiteStore.open(settings.path, FileBlobStore(settings.results_dir))
