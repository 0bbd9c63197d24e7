"""Defect 10: every bad config is one clear line and exit status 2 from every front end —
never a traceback, and never an error that waits for the first request to show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bots.__main__ import main as bot_main
from server.__main__ import main as mcp_main
from tools.cli import main as cli_main
from tools.config import load_settings
from tools.errors import ConfigError
from tools.worker.__main__ import main as worker_main

ROOT = Path(__file__).resolve().parent.parent
AFILE = "a-file"  # a file beside each config, for paths that run into one

#: (config text, environment, what the one line must name)
BAD: list[tuple[str, dict[str, str], list[str]]] = [
    ('[media]\nallow_networks = ["not-a-network"]\n', {}, ["media.allow_networks"]),
    ('[media]\nallow_networks = ["10.0.0.0/33"]\n', {}, ["media.allow_networks"]),
    ('log_level = "LOUD"\n', {}, ["log_level", "DEBUG, INFO, WARNING, ERROR, CRITICAL"]),
    ("", {"RETOUCH_LOG_LEVEL": "verbose"}, ["RETOUCH_LOG_LEVEL", "log_level"]),
    ('[mcp]\npath = "mcp"\n', {}, ["mcp.path"]),
    ('[mcp]\npath = "/m cp"\n', {}, ["mcp.path"]),
    ('[mcp]\npath = "/"\n', {}, ["mcp.path"]),
    ('[store]\npath = "."\n', {}, ["store.path", "is a folder"]),
    (f'[store]\nresults_dir = "{AFILE}/results"\n', {}, ["store.results_dir", "is a file"]),
    (f'[store]\nresults_dir = "{AFILE}"\n', {}, ["store.results_dir", "is a file"]),
    (f'[store]\npath = "{AFILE}/db/retouch.db"\n', {}, ["store.path", "is a file"]),
    (f'[store]\ndir = "{AFILE}"\n', {}, ["store.dir"]),
    ("", {"RETOUCH_VENDORS": "dashscope"}, ["RETOUCH_VENDORS", "not valid JSON"]),
    ("", {"RETOUCH_MEDIA__ALLOW_NETWORKS": "10.0.0.0/8"}, ["RETOUCH_MEDIA__ALLOW_NETWORKS"]),
    ("", {"RETOUCH_ROUTING__ORDER": "local,ds"}, ["RETOUCH_ROUTING__ORDER", "JSON"]),
    ("", {"RETOUCH_MEDIA": "{max_bytes: 1}"}, ["RETOUCH_MEDIA", "JSON"]),
    ("", {"RETOUCH_MCP__PORT": "http"}, ["RETOUCH_MCP__PORT", "mcp.port"]),
    ("", {"RETOUCH_VENDORS__DS": "{kind"}, ["RETOUCH_VENDORS__DS", "vendors.ds"]),
    ("[mcp]\nport = 70000\n", {}, ["mcp.port"]),
    ('[mcp]\nhost = "http://0.0.0.0:80"\n', {}, ["mcp.host"]),
    ('[mcp]\nhost = ""\n', {}, ["mcp.host"]),
    ('[mcp]\npublic_url = "retouch.example.com"\n', {}, ["mcp.public_url"]),
    ('[mcp]\ntransport = "pigeon"\n', {}, ["mcp.transport"]),
    ("[media]\nfetch_timeout_s = inf\n", {}, ["media.fetch_timeout_s"]),
    ("[media]\nfetch_timeout_s = nan\n", {}, ["media.fetch_timeout_s"]),
    ("[media]\nmax_pixels = -5\n", {}, ["media.max_pixels"]),
    ("[media]\ndecode_budget_mb = 1\n", {}, ["media.decode_budget_mb", "at least"]),
    ("[media]\ndecode_wait_s = 0\n", {}, ["media.decode_wait_s"]),
    ('[worker]\nlease_s = "soon"\n', {}, ["worker.lease_s"]),
    ("[worker]\nidle_poll_s = 100000\n", {}, ["worker.idle_poll_s"]),
    ('[routing]\norder = ["nope"]\n', {}, ["routing.order", "'nope'"]),
    ('[routing]\ndefault_vendor = "ghost"\n', {}, ["routing.default_vendor"]),
    ('[routing]\nfallback = ["local", "gone"]\n', {}, ["routing.fallback"]),
    ('[vendors.ds]\nkind = "dashscope"\nmax_concurrent = 0\n', {}, ["vendors.ds.max_concurrent"]),
    ("[vendors]\nx = 1\n", {}, ["vendors.x"]),
    ('[vendors.x]\nkind = "midjourney"\n', {}, ["vendors.x.kind"]),
    ('[store]\nblobs = "http://bucket"\n', {}, ["store.blobs"]),
    ('[store]\ns3_endpoint_url = "localhost:9000"\n', {}, ["store.s3_endpoint_url"]),
    ("[store]\nretention_dayz = 1\n", {}, ["store.retention_dayz", "unknown setting"]),
    ("[store]\nmax_results_mb = 0\n", {}, ["store.max_results_mb"]),
    ("media = 3\n", {}, ["media"]),
    ("[store\npath = 1\n", {}, ["not valid TOML"]),
    ('[media]\nmax_bytes = "ten"\n[mcp]\nport = -1\n', {}, ["media.max_bytes", "mcp.port"]),
    ('[log]\nformat = "xml"\n', {}, ["log.format", "'text'", "'json'"]),
    ("", {"RETOUCH_LOG__FORMAT": "yaml"}, ["RETOUCH_LOG__FORMAT", "log.format"]),
    ("[log]\nformatt = 1\n", {}, ["log.formatt", "unknown setting"]),
    ('[metrics]\ntoken = "short"\n', {}, ["metrics.token", "16 characters"]),
    ('[metrics]\nhost = "http://0.0.0.0"\n', {}, ["metrics.host"]),
    ("[worker]\nmetrics_port = 0\n", {}, ["worker.metrics_port"]),
    ('[worker]\nmetrics_port = "x"\n', {}, ["worker.metrics_port"]),
]


@pytest.fixture
def bad_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    def write(text: str, env: dict[str, str]) -> Path:
        for var in ("RETOUCH_CONFIG", "TELEGRAM_BOT_TOKEN"):
            monkeypatch.delenv(var, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        (tmp_path / AFILE).write_text("not a folder")
        config = tmp_path / "config.toml"
        config.write_text(text)
        return config

    return write


def one_line(err: str, names: list[str]) -> None:
    assert "Traceback" not in err and err.strip(), err
    assert err.strip().count("\n") == 0, f"more than one line:\n{err}"
    for name in names:
        assert name in err, f"{name!r} not in {err!r}"


@pytest.mark.parametrize(("text", "env", "names"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_every_front_end_says_what_is_wrong_in_one_line_and_exits_2(
    bad_config: object,
    capsys: pytest.CaptureFixture[str],
    text: str,
    env: dict[str, str],
    names: list[str],
) -> None:
    config = str(bad_config(text, env))  # type: ignore[operator]
    with pytest.raises(ConfigError):
        load_settings(config)

    with pytest.raises(SystemExit) as exit_:
        mcp_main(["--config", config])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("retouch-mcp: ")
    one_line(err, names)

    assert bot_main(["--config", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retouch-bot: ")
    one_line(err, names)

    assert worker_main(["--config", config]) == 2
    err = capsys.readouterr().err
    assert err.startswith("retouch-worker: ")
    one_line(err, names)

    with pytest.raises(SystemExit) as exit_:
        cli_main(["--config", config, "tasks"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("retouch: ")
    one_line(err, names)


def test_a_config_file_that_is_not_text_is_named(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match="not a text file"):
        load_settings(config)


def test_good_values_next_to_the_bad_ones_still_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETOUCH_MEDIA__ALLOW_NETWORKS", '["10.0.0.0/8", "fd00::/8"]')
    monkeypatch.setenv("RETOUCH_LOG_LEVEL", "debug")
    config = tmp_path / "config.toml"
    config.write_text(
        '[mcp]\npath = "/retouch/mcp"\nhost = "::1"\npublic_url = "https://r.example.com/x"\n'
        '[routing]\norder = ["ds"]\nfallback = ["ds", "local"]\n'
        '[vendors.ds]\nkind = "dashscope"\nenabled = false\n'
        '[store]\ns3_endpoint_url = "http://127.0.0.1:9000"\n'
    )
    settings = load_settings(config)
    assert settings.media.allow_networks == ["10.0.0.0/8", "fd00::/8"]
    assert settings.log_level == "DEBUG"
    assert settings.mcp.path == "/retouch/mcp"


@pytest.mark.parametrize(
    "command",
    [
        [sys.executable, "-m", "server"],
        [sys.executable, "-m", "bots"],
        [sys.executable, "-m", "tools.worker"],
        [sys.executable, "-m", "tools.cli", "tasks"],
    ],
    ids=["retouch-mcp", "retouch-bot", "retouch-worker", "retouch"],
)
def test_a_real_process_prints_one_line_and_exits_2(
    tmp_path: Path, command: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[media]\nallow_networks = ["not-a-network"]\n')
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RETOUCH_VENDORS": "{not json"}
    done = subprocess.run(
        [*command[:3], "--config", str(config), *command[3:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    one_line(done.stderr, ["RETOUCH_VENDORS", "not valid JSON"])
    assert done.stdout == ""
