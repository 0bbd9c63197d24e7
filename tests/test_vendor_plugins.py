"""Vendor kinds are plugins: a package installed beside Retouch adds one, and a process
imports only the kinds its config uses."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "retouch_example"


def run(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example plugin, really installed (offline) into a folder of its own."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = shutil.copytree(PLUGIN, tmp / "source")  # the build writes beside its sources
    target = tmp / "site"
    done = run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--disable-pip-version-check",
            "--quiet",
            "--target",
            str(target),
            str(source),
        ]
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return target


def with_plugin(site: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(site)}


def retouch(config: Path) -> list[str]:
    """The ``retouch`` command of this checkout, run by this interpreter."""
    cli = "import sys; from tools.cli import main; main(sys.argv[1:])"
    return [sys.executable, "-c", cli, "--config", str(config)]


def test_an_installed_package_adds_a_kind_that_takes_edits(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        f'[store]\npath = "{tmp_path}/db.sqlite"\nresults_dir = "{tmp_path}/results"\n'
        '[vendors.local]\nesrgan = "off"\n'
        '[vendors.mine]\nkind = "example"\n'
    )
    source = tmp_path / "in.png"
    Image.new("RGB", (32, 24), (10, 200, 60)).save(source)
    out = tmp_path / "out"
    edit = ["edit", str(source), "-f", "stylization_all", "-p", "negative", "--vendor", "mine"]
    done = run([*retouch(config), *edit, "--out", str(out)], env=with_plugin(site))
    assert done.returncode == 0, done.stderr
    (written,) = out.iterdir()
    with Image.open(written) as result:
        assert result.size == (32, 24)
        assert result.convert("RGB").getpixel((5, 5)) == (245, 55, 195)  # the plugin's negative

    config.write_text('[vendors.mine]\nkind = "exampel"\n')
    done = run([*retouch(config), "functions"], env=with_plugin(site))
    assert done.returncode == 2
    assert "unknown kind 'exampel'; known kinds: dashscope, example, local" in done.stderr


def test_a_process_imports_only_the_kinds_its_config_uses(site: Path, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[vendors.openai]\nkind = "openai"\n[vendors.mine]\nkind = "example"\n')
    code = f"""
        import json, sys
        from tools.config import load_settings
        from tools.vendors.registry import kinds
        settings = load_settings({str(config)!r})
        loaded = [m for m in ("retouch_example", "tools.vendors.local", "tools.vendors.openai",
                              "tools.vendors.dashscope", "tools.vendors.nebula",
                              "tools.vendors.softsugar") if m in sys.modules]
        print(json.dumps([kinds(), loaded, settings.vendor_settings()["mine"].kind]))
        """
    done = run([sys.executable, "-c", textwrap.dedent(code)], env=with_plugin(site))
    assert done.returncode == 0, done.stderr
    kinds, loaded, kind = json.loads(done.stdout)
    assert kinds == ["dashscope", "example", "local", "nebula", "openai", "softsugar"]
    assert loaded == ["retouch_example", "tools.vendors.local", "tools.vendors.openai"]
    assert kind == "example"


def test_a_kinds_settings_know_their_kind_from_the_registry() -> None:
    from tools.vendors.dashscope import DashScopeSettings
    from tools.vendors.registry import kind_of, vendor_class

    assert DashScopeSettings().kind == "dashscope"
    assert vendor_class("dashscope").Settings is DashScopeSettings
    assert kind_of("tools.vendors.dashscope.settings") == "dashscope"
    assert kind_of("tools.vendors.dashscope_extra") is None
    assert vendor_class("openai").key_env == "OPENAI_API_KEY"
