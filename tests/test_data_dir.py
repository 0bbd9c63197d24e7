"""Where the store lives: the user data directory without a config file, next to the file
with one; never the working directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from tests.conftest import data_uri, png
from tools.config import load_settings, user_data_dir

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory with no config file, and XDG_DATA_HOME beside it."""
    for name in list(os.environ):
        if name.startswith("RETOUCH_"):
            monkeypatch.delenv(name)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    return cwd


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_DATA_HOME is Linux's")
def test_without_a_config_file_the_store_is_in_the_user_data_dir(elsewhere: Path) -> None:
    data = elsewhere.parent / "xdg" / "retouch"
    assert user_data_dir() == data
    store = load_settings().store
    assert store.dir == data
    assert store.path == data / "retouch.db"
    assert store.results_dir == data / "results"


def test_relative_dir_from_the_environment_is_in_the_working_dir(
    elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETOUCH_STORE__DIR", "here")
    monkeypatch.setenv("RETOUCH_STORE__RESULTS_DIR", "/srv/images")
    store = load_settings().store
    assert store.dir == elsewhere / "here"
    assert store.path == elsewhere / "here" / "retouch.db"
    assert store.results_dir == Path("/srv/images")


def test_a_config_file_keeps_its_store_next_to_it(elsewhere: Path) -> None:
    conf = elsewhere.parent / "conf"
    conf.mkdir()
    file = conf / "config.toml"
    file.write_text('log_level = "INFO"\n')
    store = load_settings(file).store
    assert store.dir == conf and store.path == conf / "retouch.db"
    file.write_text('[store]\npath = "db/tasks.db"\n')
    store = load_settings(file).store
    assert store.path == conf / "db" / "tasks.db" and store.results_dir == conf / "results"
    file.write_text('[store]\ndir = "data"\nresults_dir = "images"\n')
    store = load_settings(file).store
    assert store.dir == conf / "data"
    assert store.path == conf / "data" / "retouch.db"
    assert store.results_dir == conf / "data" / "images"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG_DATA_HOME is Linux's")
async def test_mcp_over_stdio_without_config_writes_nothing_to_its_working_dir(
    tmp_path: Path,
) -> None:
    cwd, xdg, home = tmp_path / "cwd", tmp_path / "xdg", tmp_path / "home"
    for folder in (cwd, home):
        folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETOUCH_")}
    env.update(PYTHONPATH=str(ROOT), XDG_DATA_HOME=str(xdg), HOME=str(home))
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "server"], env=env, cwd=str(cwd)
    )
    with (tmp_path / "stderr.txt").open("w+") as errlog:
        async with Client(stdio_client(params, errlog=errlog)) as client:
            image = data_uri(png((40, 20)))
            args = {"images": [image], "function": "adjust", "prompt": "rotate 90"}
            done = await client.call_tool("edit_image", {**args, "wait_seconds": 60})
            assert not done.is_error, done.content
            assert done.structured_content["status"] == "succeeded", done.content
        errlog.seek(0)
        stderr = errlog.read()
    data = xdg / "retouch"
    assert list(cwd.iterdir()) == []
    assert (data / "retouch.db").is_file()
    assert any((data / "results").rglob("*.png"))
    assert f"retouch-mcp: database {data / 'retouch.db'}, images in {data / 'results'}" in stderr
