"""Blobs as objects in an S3-compatible bucket (AWS S3, MinIO, Ceph, R2…), through aiobotocore.

Keys are the file store's under an optional prefix: ``s3://bucket/prefix`` stores
``prefix/<aa>/<sha256>.<ext>``. A small blob is one PutObject, which S3 shows whole or not at
all. A large one is a multipart upload with its parts sent side by side; until it completes
no object exists, so a reader never sees half of it, but a writer killed in the middle leaves
the upload's parts behind (billed, unseen): ``sweep`` aborts those.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession, get_session
from botocore.exceptions import BotoCoreError, ClientError

from tools.errors import ConfigError, StorageError, StorageFull
from tools.store.blobs import KEY, BlobDamaged, BlobMissing, BlobStore

#: Blobs from this size on go up as multipart uploads of ``PART_SIZE`` parts, up to
#: ``PARALLEL_PARTS`` at a time (S3's smallest part is 5 MiB). Below it one PutObject is
#: quicker: an upload costs two more round trips (create, complete), and a blob of one full
#: part and a small one gains nothing from sending them side by side.
MULTIPART_THRESHOLD = 16 * 1024 * 1024
PART_SIZE = 8 * 1024 * 1024
PARALLEL_PARTS = 4

AddressingStyle = Literal["auto", "path", "virtual"]


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix`` → ``("bucket", "some/prefix/")`` (no prefix: ``""``)."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    return bucket, f"{prefix}/" if prefix else ""


class S3BlobStore(BlobStore):
    """Blobs as objects under ``prefix`` in ``bucket``; make one with ``open``."""

    def __init__(
        self, client: Any, bucket: str, prefix: str, stack: contextlib.AsyncExitStack
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self._stack = stack

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        endpoint_url: str = "",
        region: str = "",
        access_key_id: str = "",
        secret_access_key: str = "",
        session_token: str = "",
        addressing_style: AddressingStyle = "auto",
    ) -> S3BlobStore:
        """A store on the bucket and prefix ``url`` names, checked to be there.

        What is left empty comes from the usual AWS sources (``AWS_ENDPOINT_URL``,
        ``AWS_REGION``, ``AWS_ACCESS_KEY_ID``…, ``~/.aws``, an instance role)."""
        bucket, prefix = split_url(url)
        _quiet_botocore()
        config = AioConfig(
            s3={"addressing_style": addressing_style},
            retries={"mode": "standard"},  # 3 attempts, or AWS_MAX_ATTEMPTS
            connect_timeout=10,
            read_timeout=60,
            # Checksum headers only where the API needs them: many S3-compatible servers
            # refuse the newer ones botocore would add to every upload.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        stack = contextlib.AsyncExitStack()
        client = await stack.enter_async_context(
            _session().create_client(
                "s3",
                endpoint_url=endpoint_url or None,
                region_name=region or None,
                aws_access_key_id=access_key_id or None,
                aws_secret_access_key=secret_access_key or None,
                aws_session_token=session_token or None,
                config=config,
            )
        )
        try:
            await client.head_bucket(Bucket=bucket)
        except (ClientError, BotoCoreError) as exc:
            await stack.aclose()
            where = f" at {endpoint_url}" if endpoint_url else ""
            raise ConfigError(f"store.blobs: bucket {bucket!r}{where}: {_reason(exc)}") from None
        return cls(client, bucket, prefix, stack)

    def _name(self, key: str) -> str:
        if not KEY.match(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.prefix + key

    async def put(self, key: str, data: bytes) -> None:
        name = self._name(key)
        try:
            if len(data) < MULTIPART_THRESHOLD:
                await self.client.put_object(Bucket=self.bucket, Key=name, Body=data)
            else:
                await self._put_multipart(name, data)
        except ClientError as exc:
            where = f"bucket {self.bucket!r}"
            if _code(exc) in FULL_CODES or _status(exc) == 507:
                raise StorageFull(f"storage full: {where} has no room ({_code(exc)})") from None
            raise StorageError(f"cannot write images in {where}: {_reason(exc)}") from None

    async def _put_multipart(self, name: str, data: bytes) -> None:
        upload = await self.client.create_multipart_upload(Bucket=self.bucket, Key=name)
        upload_id = upload["UploadId"]
        slots = asyncio.Semaphore(PARALLEL_PARTS)

        async def send(number: int, start: int) -> dict[str, Any]:
            async with slots:
                sent = await self.client.upload_part(
                    Bucket=self.bucket,
                    Key=name,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=data[start : start + PART_SIZE],
                )
            return {"PartNumber": number, "ETag": sent["ETag"]}

        try:
            async with asyncio.TaskGroup() as group:
                sending = [
                    group.create_task(send(number, start))
                    for number, start in enumerate(range(0, len(data), PART_SIZE), start=1)
                ]
            await self.client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=name,
                UploadId=upload_id,
                MultipartUpload={"Parts": [task.result() for task in sending]},
            )
        except BaseException:  # a failure or a cancel: give the parts back now, not at sweep
            with contextlib.suppress(Exception):
                await asyncio.shield(self._abort(name, upload_id))
            raise

    async def _abort(self, name: str, upload_id: str) -> bool:
        """Abort an upload; False if it had ended meanwhile (completed or aborted)."""
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=name, UploadId=upload_id
            )
        except ClientError as exc:
            if _code(exc) in ("NoSuchUpload", "404"):
                return False
            raise
        return True

    async def get(self, key: str, size: int) -> bytes:
        try:
            response = await self.client.get_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                raise BlobMissing(key) from None
            raise
        async with response["Body"] as body:
            if response["ContentLength"] != size:  # refused before its bytes are fetched
                raise BlobDamaged(key)
            data: bytes = await body.read()
        if len(data) != size:
            raise BlobDamaged(key)
        return data

    async def size(self, key: str) -> int | None:
        try:
            head = await self.client.head_object(Bucket=self.bucket, Key=self._name(key))
        except ClientError as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        return int(head["ContentLength"])

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=self._name(key))

    async def iter_keys(self) -> AsyncIterator[str]:
        pages = self.client.get_paginator("list_objects_v2")
        async for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", ()):
                key = item["Key"][len(self.prefix) :]
                if KEY.match(key):
                    yield key

    async def sweep(self, older_than_s: float) -> int:
        """Abort the multipart uploads under the prefix that show no sign of life (started,
        or sent a part) for ``older_than_s`` seconds; returns how many."""
        before = time.time() - older_than_s
        count = 0
        pages = self.client.get_paginator("list_multipart_uploads")
        async for page in pages.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for upload in page.get("Uploads", ()):
                name, upload_id = upload["Key"], upload["UploadId"]
                if not KEY.match(name[len(self.prefix) :]):
                    continue  # not one of ours
                if upload["Initiated"].timestamp() >= before:
                    continue
                if await self._last_part_at(name, upload_id) >= before:
                    continue  # a slow writer still at it
                count += await self._abort(name, upload_id)
        return count

    async def _last_part_at(self, name: str, upload_id: str) -> float:
        """When the upload's latest part arrived (0 without any, or once it has ended)."""
        latest = 0.0
        pages = self.client.get_paginator("list_parts")
        try:
            async for page in pages.paginate(Bucket=self.bucket, Key=name, UploadId=upload_id):
                for part in page.get("Parts", ()):
                    latest = max(latest, part["LastModified"].timestamp())
        except ClientError as exc:
            if _code(exc) not in ("NoSuchUpload", "404"):
                raise
        return latest

    async def close(self) -> None:
        await self._stack.aclose()


@functools.cache
def _session() -> AioSession:
    """One botocore session per process, as boto3 keeps one: a client made from it costs
    ~10 ms instead of ~100 ms (the API's description is read once). Credentials taken from
    the environment are resolved on first use and kept."""
    return get_session()


#: What S3-compatible servers answer when a bucket or a disk is full (MinIO, Ceph, R2).
FULL_CODES = ("XMinioStorageFull", "QuotaExceeded", "InsufficientStorage")


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _reason(exc: Exception) -> str:
    """Why the bucket cannot be used, without anything from the request (no credentials)."""
    if isinstance(exc, ClientError):
        code = _code(exc)
        if code in ("404", "NoSuchBucket"):
            return "no such bucket"
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return "access denied (check the S3 credentials)"
        return f"the server answered {code or 'an error'}"
    return f"cannot reach it ({type(exc).__name__})"


def _quiet_botocore() -> None:
    """botocore's DEBUG records print request headers, a session token among them: unless
    someone chose botocore's level, they stop at INFO."""
    logger = logging.getLogger("botocore")
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
