"""Defect 11: ``retouch`` refuses bad arguments with a usage message and exit status 2, and
checks everything it can before anything is stored or sent to a (billing) vendor."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import DATA
from tools.cli import main
from tools.config import Settings
from tools.models import MAX_SEED

IMAGE = str(DATA / "chelsea.png")

#: (arguments after ``edit``, what the usage error names)
BAD_EDITS: list[tuple[list[str], list[str]]] = [
    ([IMAGE, "-n", "0"], ["-n", "greater than or equal to 1"]),
    ([IMAGE, "-n", "11"], ["-n", "less than or equal to 10"]),
    ([IMAGE, "-n", "two"], ["-n", "invalid"]),
    ([IMAGE, "--seed", str(MAX_SEED + 1)], ["--seed", str(MAX_SEED)]),
    ([IMAGE, "--seed", "-1"], ["--seed"]),
    ([IMAGE, "--watermark", "w" * 200], ["--watermark", "100 characters"]),
    ([IMAGE, "--upscale", "9"], ["--upscale", "4"]),
    ([IMAGE, "--upscale", "0"], ["--upscale"]),
    ([IMAGE] * 11, ["images", "at most 10"]),
    ([IMAGE, "--option", "method"], ["--option", "KEY=VALUE", "'method'"]),
    ([IMAGE, "--option", "=fsr"], ["--option", "KEY=VALUE"]),
    ([IMAGE, "--prompt", "p" * 32_001], ["--prompt", "32000"]),
    ([IMAGE, "--timeout", "0"], ["--timeout"]),
    ([IMAGE, "--timeout", "nan"], ["--timeout"]),
    ([IMAGE, "--timeout", "soon"], ["--timeout"]),
    ([], ["images"]),
]


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_.value.code or 0), out, err


def no_task_was_made(settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--config", settings.source, "tasks")
    assert code == 0 and out == ""


@pytest.mark.parametrize(("args", "names"), BAD_EDITS, ids=[str(i) for i in range(len(BAD_EDITS))])
def test_a_bad_argument_is_a_usage_error_before_anything_runs(
    settings: Settings, capsys: pytest.CaptureFixture[str], args: list[str], names: list[str]
) -> None:
    code, out, err = run(capsys, "--config", settings.source, "edit", *args)
    assert code == 2 and out == ""
    assert err.startswith("usage: retouch edit") and "retouch edit: error: " in err, err
    assert "Traceback" not in err
    for name in names:
        assert name in err, f"{name!r} not in {err!r}"
    no_task_was_made(settings, capsys)


@pytest.mark.parametrize("where", ["a file", "under a file"])
def test_an_output_that_cannot_be_written_is_refused_before_the_edit(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str
) -> None:
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"an earlier result")
    out = taken if where == "a file" else taken / "edited"
    code, _, err = run(
        capsys, "--config", settings.source, "edit", IMAGE, "-f", "lineart", "--out", str(out)
    )
    assert code == 2 and "--out" in err and f"{taken} is a file" in err, err
    no_task_was_made(settings, capsys)  # today: the edit ran (and a vendor billed) first
    assert taken.read_bytes() == b"an earlier result"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in any folder")
def test_an_output_folder_without_write_permission_is_refused_before_the_edit(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    code, _, err = run(
        capsys, "--config", settings.source, "edit", IMAGE, "--out", str(locked / "new")
    )
    assert code == 2 and f"cannot write in {locked}" in err
    no_task_was_made(settings, capsys)


def test_bad_list_and_task_arguments_are_usage_errors(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "--config", settings.source, "tasks", "--limit", "0")
    assert code == 2 and "usage: retouch tasks" in err and "--limit" in err
    code, _, err = run(capsys, "--config", settings.source, "frobnicate")
    assert code == 2 and "usage: retouch" in err


def test_checks_the_catalogue_can_make_come_before_the_editor_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "missing.toml")  # never read: the request is refused first
    code, _, err = run(capsys, "--config", missing, "edit", IMAGE, "-f", "teleport")
    assert code == 2 and err.startswith("retouch: unknown function 'teleport'")
    code, _, err = run(
        capsys, "--config", missing, "edit", IMAGE, "-f", "description_edit_with_mask", "-p", "sky"
    )
    assert code == 2 and "needs a mask" in err


def test_good_arguments_still_edit(
    settings: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "folder"
    code, printed, err = run(
        capsys,
        "--config",
        settings.source,
        "edit",
        IMAGE,
        "-f",
        "lineart",
        "--option",
        "method=canny",
        "--out",
        str(out),
    )
    assert code == 0, err
    assert Path(printed.split()[0]).parent == out
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))
