"""Blobs: put and get of a 1 MB, a 10 MB and a 40 MB image through each blob store.

``FileBlobStore`` on a temporary folder against ``S3BlobStore`` on moto's S3 server (the
one the tests use), run in its own process on 127.0.0.1 so that it does not share the
benchmark's GIL. Each figure is the median of R rounds of one put then one get of the same
random bytes (content-addressed key, as Retouch stores them). Up to 16 MiB a put is one
PutObject; the 40 MB one is a multipart upload of 8 MiB parts, 4 at a time.

Baselines, in the same run: plain ``Path.write_bytes`` / ``read_bytes`` for the file store
(what the disk costs); one ``put_object`` / ``get_object`` through the same aiobotocore
client for S3 (what the client and server cost, without the store's size check or parts).

moto is a Python server, far slower than S3 or MinIO: its figures bound the client's own
overhead from above, they do not predict a real bucket's speed (network bound there).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench._common import header, median, parser, print_table, ratio, workdir

SIZES = {"1 MB": 1_000_000, "10 MB": 10_000_000, "40 MB": 40_000_000}
BUCKET = "retouch-bench"
KEYS = {"access_key_id": "AKIDBENCH", "secret_access_key": "bench-secret", "region": "us-east-1"}


class MotoProcess:
    """``python -m moto.server`` on a free port of 127.0.0.1, stopped on exit."""

    def __enter__(self) -> MotoProcess:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.proc.kill()
        raise RuntimeError("moto's S3 server did not start within 30 s")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    start = time.perf_counter()
    await call()
    return (time.perf_counter() - start) * 1000


async def measure(rounds: int, endpoint: str) -> dict[tuple[str, str, str], float]:
    """{(size, store, operation): median ms}."""
    from aiobotocore.session import get_session

    from tools.store import FileBlobStore
    from tools.store.s3 import S3BlobStore

    folder = workdir("blobs")
    files = FileBlobStore(folder / "files")
    figures: dict[tuple[str, str, str], float] = {}
    async with get_session().create_client(
        "s3",
        endpoint_url=endpoint,
        region_name=KEYS["region"],
        aws_access_key_id=KEYS["access_key_id"],
        aws_secret_access_key=KEYS["secret_access_key"],
    ) as client:
        await client.create_bucket(Bucket=BUCKET)
        s3 = await S3BlobStore.open(f"s3://{BUCKET}/bench", endpoint_url=endpoint, **KEYS)
        try:
            for label, size in SIZES.items():
                for (store, op), ms in (await one_size(size, rounds, files, s3, client)).items():
                    figures[(label, store, op)] = ms
        finally:
            await s3.close()
    return figures


async def one_size(
    size: int, rounds: int, files: Any, s3: Any, client: Any
) -> dict[tuple[str, str], float]:
    """{(store, operation): median ms} for one blob of ``size`` random bytes."""
    from tools.store import blob_key

    data = os.urandom(size)
    key = blob_key(hashlib.sha256(data).hexdigest(), "image/png")
    path = files.root / "raw.png"

    async def raw_get() -> bytes:
        response = await client.get_object(Bucket=BUCKET, Key="raw")
        async with response["Body"] as body:
            return bytes(await body.read())

    ops: dict[tuple[str, str], Callable[[], Awaitable[Any]]] = {
        ("file", "put"): lambda: files.put(key, data),
        ("file", "get"): lambda: files.get(key, size),
        ("disk (baseline)", "put"): lambda: asyncio.to_thread(path.write_bytes, data),
        ("disk (baseline)", "get"): lambda: asyncio.to_thread(path.read_bytes),
        ("s3 (moto)", "put"): lambda: s3.put(key, data),
        ("s3 (moto)", "get"): lambda: s3.get(key, size),
        ("one put_object (baseline)", "put"): lambda: client.put_object(
            Bucket=BUCKET, Key="raw", Body=data
        ),
        ("one get_object (baseline)", "get"): raw_get,
    }
    samples: dict[tuple[str, str], list[float]] = {name: [] for name in ops}
    for _ in range(rounds):
        for name, call in ops.items():
            samples[name].append(await timed(call))
    return {name: median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> None:
    args = parser(__doc__.split("\n\n")[0]).parse_args(argv)
    header("blobs (bench/blobs.py)", args)
    rounds = 5 if args.quick else (31 if args.full else 11)
    with MotoProcess() as moto:
        figures = asyncio.run(measure(rounds, moto.url))
    rows = []
    for label, size in SIZES.items():
        for op in ("put", "get"):
            file_ms = figures[(label, "file", op)]
            for store, baseline in (
                ("file", "disk (baseline)"),
                ("s3 (moto)", f"one {op}_object (baseline)"),
            ):
                ms, base = figures[(label, store, op)], figures[(label, baseline, op)]
                rows.append(
                    [
                        label,
                        op,
                        store,
                        ms,
                        size / 1e6 / (ms / 1000),
                        base,
                        ratio(ms, base),
                        ratio(ms, file_ms),
                    ]
                )
    print_table(
        ["size", "op", "store", "median ms", "MB/s", "baseline ms", "vs baseline", "vs file"],
        rows,
        f"Blob put/get (medians of {rounds} rounds; baseline: disk alone / one S3 call)",
    )


if __name__ == "__main__":
    main()
