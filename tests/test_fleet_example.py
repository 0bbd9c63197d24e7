"""README's "Running on several machines" is played by ``docs/fleet-example.sh``: this runs
the script as a reader would (PostgreSQL, moto's S3 server, 2 ``retouch-worker`` and 2
``retouch-mcp --no-worker --transport http`` processes), so the instructions cannot rot."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.optional import needs
from tests.pg import admin_url, run_sync

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "docs" / "fleet-example.sh"


def section(title: str) -> str:
    """A ``## title`` section of the README, up to the next ``## ``."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_the_readme_and_the_script_start_the_same_processes() -> None:
    readme = section("Running on several machines")
    script = SCRIPT.read_text(encoding="utf-8")
    assert "docs/fleet-example.sh" in readme
    for command in (
        r"retouch-worker --config \S+",
        r"retouch-mcp --config \S+ --no-worker --transport http --port \S+",
    ):
        assert re.search(command, readme), command
        assert re.search(command, script), command


@needs("postgres", "psql")
def test_the_fleet_example_runs_edits_and_stops(tmp_path: Path) -> None:
    admin, _ = admin_url()
    assert admin is not None
    bin_dir = Path(sys.executable).parent  # retouch-mcp, retouch-worker, moto_server
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(ROOT),  # this checkout's code in every process
        "PYTHON": sys.executable,
        "RETOUCH_PG_ADMIN": admin,
        "TMPDIR": str(tmp_path),
    }
    for var in ("RETOUCH_CONFIG", "RETOUCH_STORE__URL", "KEEP"):
        env.pop(var, None)
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, cwd=str(tmp_path), capture_output=True, timeout=120
    )
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, out + err
    lines = out.splitlines()
    assert len([w for w in lines[2].split() if w == "retouch-worker"]) == 2, out
    task = re.search(r"^front end 1: task ([0-9a-f]{32}) succeeded$", out, re.M)
    assert task is not None, out
    assert f"front end 2: task {task[1]} succeeded" in out
    assert re.search(rf"^front end 2: result retouch://tasks/{task[1]}/0: 48x64, ", out, re.M)
    # Everything stopped and cleaned up: no folder left, the database dropped.
    assert list(tmp_path.iterdir()) == []
    name = re.search(r"^PostgreSQL: database (\w+)$", out, re.M)
    assert name is not None

    async def exists() -> bool:
        import asyncpg

        db = await asyncpg.connect(admin)
        try:
            return bool(await db.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name[1]))
        finally:
            await db.close()

    assert not run_sync(exists)
