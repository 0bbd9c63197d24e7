"""Images in an S3-compatible bucket: an edit end to end, settings, large and interrupted
uploads, and credentials kept out of logs. Against moto's real S3 server (tests/s3server.py);
what every blob store must do is in tests/contract/."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import DATA, MakeSettings, decode
from tests.s3server import ACCESS_KEY_ID, REGION, SECRET_ACCESS_KEY, S3Server, free_port
from tools.config import Settings, load_settings
from tools.errors import ConfigError
from tools.models import EditRequest, TaskStatus
from tools.service import Editor
from tools.store import blob_key, open_blob_store
from tools.store.s3 import MULTIPART_THRESHOLD, PART_SIZE, S3BlobStore

SESSION_TOKEN = "s3-session-TOKEN-never-logged"


def s3_config(
    tmp_path: Path, server: S3Server, prefix: str = "retouch", extra: str = ""
) -> Settings:
    """Settings from a config file whose images go to a fresh bucket on ``server``."""
    path = tmp_path / "config.toml"
    path.write_text(
        '[store]\npath = "retouch.db"\nresults_dir = "results"\n'
        f'blobs = "s3://{server.new_bucket()}/{prefix}"\n'
        f's3_endpoint_url = "{server.endpoint_url}"\n'
        f's3_region = "{REGION}"\n'
        f's3_access_key_id = "{ACCESS_KEY_ID}"\n'
        f's3_secret_access_key = "{SECRET_ACCESS_KEY}"\n'
        f"{extra}[worker]\nidle_poll_s = 0.05\n",
        encoding="utf-8",
    )
    return load_settings(path)


@pytest.fixture
async def bucket_store(s3_server: S3Server) -> AsyncIterator[S3BlobStore]:
    store = await S3BlobStore.open(
        f"s3://{s3_server.new_bucket()}",
        endpoint_url=s3_server.endpoint_url,
        region=REGION,
        access_key_id=ACCESS_KEY_ID,
        secret_access_key=SECRET_ACCESS_KEY,
    )
    yield store
    await store.close()


async def test_an_edit_keeps_its_input_and_result_in_the_bucket(
    s3_server: S3Server, tmp_path: Path
) -> None:
    settings = s3_config(tmp_path, s3_server, "edits")
    request = EditRequest(images=[str(DATA / "chelsea.png")], function="adjust", prompt="rotate 90")
    async with Editor(settings, allow_local_paths=True) as editor:
        task = await editor.edit_image(request, wait_seconds=30)
        assert task.status == TaskStatus.succeeded, task.error
        [result] = task.results
        keys = {k async for k in editor.store.blobs.iter_keys()}
        input_sha = hashlib.sha256((DATA / "chelsea.png").read_bytes()).hexdigest()
        assert keys == {
            blob_key(input_sha, "image/png"),
            blob_key(result.sha256, result.mime_type),
        }
        assert isinstance(editor.store.blobs, S3BlobStore)
        assert editor.store.blobs.prefix == "edits/"
    assert not any(settings.store.results_dir.rglob("*.*"))  # nothing on the disk

    # Another front end on the same store serves the result from the bucket.
    async with Editor(settings, run_worker=False) as front_end:
        data, mime = await front_end.result(task.id, 0)
    assert mime == "image/png" and decode(data).size == (300, 451)
    assert hashlib.sha256(data).hexdigest() == result.sha256


async def test_open_store_takes_the_bucket_from_the_usual_aws_variables(
    s3_server: S3Server, make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY)
    bucket = s3_server.new_bucket()
    settings = make_settings()
    settings.store.blobs = f"s3://{bucket}"
    blobs = await open_blob_store(settings.store)
    try:
        assert isinstance(blobs, S3BlobStore) and (blobs.bucket, blobs.prefix) == (bucket, "")
        key = blob_key(hashlib.sha256(b"x").hexdigest(), "image/png")
        await blobs.put(key, b"x")
        assert await blobs.get(key, 1) == b"x"
    finally:
        await blobs.close()


async def test_a_bucket_that_is_not_there_is_a_clear_error(s3_server: S3Server) -> None:
    with pytest.raises(ConfigError, match=r"bucket 'retouch-no-such' at http.*no such bucket"):
        await S3BlobStore.open(
            "s3://retouch-no-such/x",
            endpoint_url=s3_server.endpoint_url,
            region=REGION,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
        )


async def test_a_server_that_is_not_there_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # no retrying with back-off: quicker
    with pytest.raises(ConfigError, match="cannot reach it"):
        await S3BlobStore.open(
            "s3://retouch-bucket",
            endpoint_url=f"http://127.0.0.1:{free_port()}",
            region=REGION,
            access_key_id=ACCESS_KEY_ID,
            secret_access_key=SECRET_ACCESS_KEY,
        )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('blobs = "/srv/images"', "store.blobs"),
        ('blobs = "s3://Not_A_Bucket/x"', "store.blobs"),
        ('blobs = "s3://ab"', "store.blobs"),
        ('s3_access_key_id = "AKID"', "go together"),
        ('s3_addressing_style = "sideways"', "store.s3_addressing_style"),
    ],
)
def test_bad_s3_settings_are_refused_by_name(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f"[store]\n{toml}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(path)


async def test_a_large_blob_goes_up_in_parts_and_leaves_no_upload(
    bucket_store: S3BlobStore,
) -> None:
    data = os.urandom(MULTIPART_THRESHOLD + 12345)  # two full parts and a small one
    key = blob_key(hashlib.sha256(data).hexdigest(), "image/png")
    await bucket_store.put(key, data)
    assert await bucket_store.get(key, len(data)) == data
    assert await uploads(bucket_store) == []


async def test_an_upload_cut_off_by_a_cancel_is_aborted_at_once(
    bucket_store: S3BlobStore,
) -> None:
    data = os.urandom(MULTIPART_THRESHOLD + PART_SIZE)
    key = blob_key(hashlib.sha256(data).hexdigest(), "image/png")
    put = asyncio.create_task(bucket_store.put(key, data))
    async with asyncio.timeout(10):
        while not await uploads(bucket_store):  # begun, parts on their way
            await asyncio.sleep(0.005)
    put.cancel()
    with pytest.raises(asyncio.CancelledError):
        await put
    assert await uploads(bucket_store) == []
    assert not await bucket_store.exists(key)


async def uploads(store: S3BlobStore) -> list[str]:
    listed = await store.client.list_multipart_uploads(Bucket=store.bucket)
    return [u["Key"] for u in listed.get("Uploads", [])]


async def test_s3_credentials_reach_no_log_and_no_repr(
    s3_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = s3_config(tmp_path, s3_server, extra=f's3_session_token = "{SESSION_TOKEN}"\n')
    caplog.set_level(logging.DEBUG)
    async with Editor(settings, allow_local_paths=True) as editor:
        request = EditRequest(images=[str(DATA / "chelsea.png")], function="adjust", prompt="x")
        await editor.edit_image(request, wait_seconds=30)
    shown = caplog.text + repr(settings) + str(settings.model_dump()) + settings.store.where()
    assert SECRET_ACCESS_KEY not in shown and SESSION_TOKEN not in shown
    assert "s3://" in settings.store.where()
