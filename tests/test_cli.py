"""The `retouch` command: edit with a progress display, then task, tasks, functions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import DATA, decode
from tools.cli import main
from tools.config import Settings


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def test_edit_then_task_and_tasks(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = settings.source
    code, out, err = run(
        capsys,
        "--config",
        config,
        "edit",
        str(DATA / "chelsea.png"),
        "-f",
        "adjust",
        "-p",
        "rotate 90",
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    (written,) = out.split()
    assert decode(Path(written).read_bytes()).size == (300, 451)
    task_id = err.split("task ")[1].split()[0]
    code, out, _ = run(capsys, "--config", config, "task", task_id)
    assert code == 0 and "succeeded" in out and "adjust with local" in out
    code, out, _ = run(capsys, "--config", config, "tasks")
    assert task_id in out
    code, out, _ = run(capsys, "--config", config, "functions")
    assert "stylization_all" in out and "colorization" in out


def test_errors_are_one_line(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "--config", settings.source, "edit", "nope.png", "-f", "teleport")
    assert code == 2 and err.startswith("retouch: unknown function 'teleport'")
    code, _, err = run(capsys, "--config", settings.source, "task", "f" * 32)
    assert code == 2 and "no task" in err
    code, _, err = run(capsys, "--config", "/nonexistent.toml", "tasks")
    assert code == 2 and "config file not found" in err
