"""Blob stores: image bytes kept under a content address, read back only whole.

Every image, input or result, is stored once under ``blob_key(sha256, mime_type)``
(``<aa>/<sha256>.<ext>``). Blobs are read and written only through a ``BlobStore``: the
filesystem (``FileBlobStore``) or an S3-compatible bucket (``s3.S3BlobStore``), with the
same keys.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import errno
import hashlib
import os
import re
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from tools.errors import StorageError, StorageFull
from tools.media import EXTENSIONS

#: The errors a full disk or an exhausted quota gives.
FULL = (errno.ENOSPC, errno.EDQUOT)
#: Files up to this size are read on the event loop (~20 µs from the page cache): a trip to
#: a worker thread and back takes longer than that, and most of it is the loop's own time.
SMALL_READ = 128 * 1024
#: What a key looks like; nothing else is ever turned into a file name.
KEY = re.compile(r"^[0-9a-f]{2}/[0-9a-f]{64}\.[a-z]{3,4}$")


def blob_key(sha256: str, mime_type: str) -> str:
    """A blob's name in every blob store."""
    return f"{sha256[:2]}/{sha256}.{EXTENSIONS.get(mime_type, 'bin')}"


async def content_hash(data: bytes) -> str:
    """A blob's hex SHA-256; a large one is hashed off the event loop (a 1.3 MB PNG held
    it for ~4 ms, every request waiting)."""
    if len(data) < 1 << 16:
        return hashlib.sha256(data).hexdigest()
    return await asyncio.to_thread(lambda: hashlib.sha256(data).hexdigest())


class BlobMissing(LookupError):
    """No blob under this key."""


class BlobDamaged(BlobMissing):
    """The blob is not the size recorded for it (a write cut short)."""


class BlobStore(abc.ABC):
    """Bytes under keys made by ``blob_key``. A write is seen whole or not at all."""

    @abc.abstractmethod
    async def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing what is there. A write that fails leaves
        nothing behind; ``StorageFull`` when there is no room (naming the store),
        ``StorageError`` when the store refuses it otherwise."""

    @abc.abstractmethod
    async def get(self, key: str, size: int) -> bytes:
        """The blob's bytes; ``BlobMissing`` if there is none, ``BlobDamaged`` if it is not
        ``size`` bytes long (never served damaged)."""

    @abc.abstractmethod
    async def size(self, key: str) -> int | None:
        """The blob's size in bytes, or None if there is none."""

    async def exists(self, key: str) -> bool:
        return await self.size(key) is not None

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Forget the blob; nothing happens if there is none."""

    @abc.abstractmethod
    def iter_keys(self) -> AsyncIterator[str]:
        """Every stored key, in no particular order."""

    @abc.abstractmethod
    async def sweep(self, older_than_s: float) -> int:
        """Delete what writes cut off by a crash left behind, begun more than
        ``older_than_s`` seconds ago (younger ones may still be under way); returns how many."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Let go of connections."""


class FileBlobStore(BlobStore):
    """Blobs as files under one folder: ``<root>/<aa>/<sha256>.<ext>``.

    Writes go to a temporary file beside the target, then replace it. There is no fsync:
    the database commits with synchronous=NORMAL, so a power cut can take back its latest
    transactions anyway; a file cut short by one is caught by its size when read and
    reported as damaged, never served.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Where the blob's file is (tests and tools that look at the disk)."""
        if not KEY.match(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key

    async def put(self, key: str, data: bytes) -> None:
        try:
            await asyncio.to_thread(_write_atomic, self.path(key), data)
        except OSError as exc:
            if exc.errno in FULL:
                raise StorageFull(
                    f"storage full: no space left for images in {self.root} ({exc.strerror})"
                ) from None
            raise StorageError(
                f"cannot write images in {self.root}: {exc.strerror or exc}"
            ) from None

    async def get(self, key: str, size: int) -> bytes:
        path = self.path(key)
        try:
            if size <= SMALL_READ:  # quicker than a trip to a thread and back
                data = path.read_bytes()
            else:
                data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise BlobMissing(key) from None
        if len(data) != size:
            raise BlobDamaged(key)
        return data

    async def size(self, key: str) -> int | None:
        # A stat is quicker than a trip to a thread and back.
        try:
            return self.path(key).stat().st_size
        except FileNotFoundError:
            return None

    async def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    async def iter_keys(self) -> AsyncIterator[str]:
        for path in await asyncio.to_thread(lambda: list(self.root.glob("??/*"))):
            key = path.relative_to(self.root).as_posix()
            if KEY.match(key):
                yield key

    async def close(self) -> None:
        pass  # a folder holds no connection

    async def sweep(self, older_than_s: float) -> int:
        return await asyncio.to_thread(self._delete_temp_files, time.time() - older_than_s)

    def _delete_temp_files(self, before: float) -> int:
        count = 0
        for tmp in self.root.glob("*/*.tmp"):
            with contextlib.suppress(OSError):
                if tmp.stat().st_mtime < before:
                    tmp.unlink()
                    count += 1
        return count


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Unique per call: two tasks storing the same image at once must not share a temp file.
    tmp = path.with_suffix(path.suffix + f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb") as fh:  # no fsync: see the class's docstring
            fh.write(data)
        os.replace(tmp, path)
    finally:  # a full disk, or any other failure: no partial file stays behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
