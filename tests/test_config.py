from pathlib import Path

import pytest

from tests.conftest import MakeSettings
from tools.config import load_settings
from tools.errors import ConfigError


def test_defaults_are_the_embedded_local_engine(make_settings: MakeSettings) -> None:
    settings = make_settings()
    vendors = settings.enabled_vendors()
    assert list(vendors) == ["local"]
    assert settings.routing.default_vendor == "local"
    assert settings.mcp.port == 8765
    # Relative store paths are resolved next to the config file.
    assert settings.store.path.is_absolute()


def test_environment_overrides_file_with_nesting(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETOUCH_MCP__PORT", "9999")
    monkeypatch.setenv("RETOUCH_VENDORS__DS__MAX_CONCURRENT", "5")
    settings = make_settings('[mcp]\nport = 1234\n[vendors.ds]\nkind = "dashscope"\n')
    assert settings.mcp.port == 9999
    assert settings.vendor_settings()["ds"].max_concurrent == 5


def test_conventional_key_variables_fill_empty_keys(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DASHSCOPE_API_KEY", "sk-from-env")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "1:abc")
    settings = make_settings('[vendors.dashscope]\nkind = "dashscope"\n')
    key = settings.vendor_settings()["dashscope"].api_key
    assert key.get_secret_value() == "sk-from-env"
    assert "sk-from-env" not in repr(settings.vendor_settings())
    assert settings.telegram.token.get_secret_value() == "1:abc"


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[store]\nretention_dayz = 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert f"{path}: store.retention_dayz: unknown setting" in err.value.message


def test_bad_value_is_one_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[mcp]\nport = "eighty"\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert str(path) in err.value.message and "mcp.port" in err.value.message


def test_unknown_setting_in_vendor_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[vendors.ds]\nkind = "dashscope"\nmax_concurent = 3\n')
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert "vendors.ds.max_concurent" in err.value.message
    assert "unknown setting" in err.value.message


def test_unknown_kind_and_bad_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[vendors.x]\nkind = "midjourney"\n')
    with pytest.raises(ConfigError, match="unknown kind 'midjourney'"):
        load_settings(path)
    path.write_text("[store\npath=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(path)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml")


def test_example_config_loads_and_documents_every_setting() -> None:
    import re

    from tools.config import Settings
    from tools.vendors.registry import kinds, vendor_class

    example = Path(__file__).resolve().parent.parent / "config.example.toml"
    settings = load_settings(example)
    assert list(settings.enabled_vendors()) == ["local"]
    text = example.read_text()
    documented = set(re.findall(r"^#?\s*(\w+)\s*=", text, flags=re.M))
    missing = []
    for name, field in Settings.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        if sub:
            missing += [f"{name}.{k}" for k in sub if k not in documented]
    for kind in kinds():
        missing += [
            f"{kind}.{k}" for k in vendor_class(kind).Settings.model_fields if k not in documented
        ]
    assert not missing, f"undocumented settings: {missing}"


def test_a_postgres_url_is_a_secret_never_shown(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETOUCH_STORE__URL", "postgresql://retouch:s3cr3t-pw@db.example:5433/rt")
    settings = make_settings()
    assert settings.store.url.get_secret_value().endswith("@db.example:5433/rt")
    assert settings.store.where().startswith("database postgresql://retouch@db.example:5433/rt,")
    assert "s3cr3t-pw" not in repr(settings) + settings.store.where()
    assert settings.store.path.is_absolute()  # the file's store table still applies


def test_a_store_url_must_be_postgres(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[store]\nurl = "mysql://root:pw@localhost/db"\n')
    with pytest.raises(ConfigError, match=r"store\.url: .*only postgresql:// URLs") as err:
        load_settings(path)
    assert "pw@" not in err.value.message
