"""A real S3 API server for the tests: moto in server mode on 127.0.0.1, one per test run.

It speaks the S3 wire protocol over HTTP, so the blob store under test goes through its real
client (signing, paging, errors) exactly as against AWS or MinIO. This module is a pytest
plugin (``tests/conftest.py`` loads it): ``s3_server`` is a session fixture, started the
first time a test asks for it.
"""

from __future__ import annotations

import datetime
import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from moto.backends import get_backend
from moto.core import DEFAULT_ACCOUNT_ID
from moto.server import ThreadedMotoServer

ACCESS_KEY_ID = "AKIDRETOUCHTEST"
SECRET_ACCESS_KEY = "s3-secret-RETOUCH-never-logged"
REGION = "us-east-1"


@dataclass
class S3Server:
    endpoint_url: str

    def new_bucket(self) -> str:
        """A fresh, empty bucket's name (every test gets its own)."""
        name = f"retouch-{uuid.uuid4().hex[:12]}"
        self._backend().create_bucket(name, REGION)
        return name

    def backdate_parts(self, bucket: str, upload_id: str, seconds: float) -> None:
        """Make an unfinished upload's parts look ``seconds`` old, as a writer that died that
        long ago leaves them (moto, in this process, keeps them in memory)."""
        then = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
        then -= datetime.timedelta(seconds=seconds)
        upload = self._backend().buckets[bucket].multiparts[upload_id]
        for part in upload.parts.values():
            part.last_modified = then

    @staticmethod
    def _backend():  # type: ignore[no-untyped-def]
        return get_backend("s3")[DEFAULT_ACCOUNT_ID]["aws"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield S3Server(f"http://127.0.0.1:{port}")
    finally:
        server.stop()
