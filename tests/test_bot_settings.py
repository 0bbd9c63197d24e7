"""The ``[telegram]`` section belongs to the bot: the core finds it through the
``retouch.settings`` entry point and treats it like one of its own sections."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bots.settings import TelegramSettings
from tests.conftest import MakeSettings
from tools.config import Settings, load_settings, settings_class
from tools.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def test_the_section_comes_from_the_entry_point_not_the_core() -> None:
    assert "telegram" not in Settings.model_fields
    assert settings_class().model_fields["telegram"].annotation is TelegramSettings
    assert issubclass(settings_class(), Settings)


def test_the_section_is_validated_and_overridden_like_the_core_ones(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RETOUCH_TELEGRAM__TOKEN", "1:from-retouch-variable")
    monkeypatch.setenv("RETOUCH_TELEGRAM__EDITS_PER_HOUR", "7")
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "2:conventional")  # fills only an empty token
    settings = make_settings('[telegram]\ntoken = "3:file"\npublic = true\n')
    assert isinstance(settings.telegram, TelegramSettings)
    assert settings.telegram.token.get_secret_value() == "1:from-retouch-variable"
    assert settings.telegram.edits_per_hour == 7 and settings.telegram.public


def test_the_conventional_variable_fills_an_empty_token_only(
    make_settings: MakeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TELEGRAM_BOT_TOKEN", "2:conventional")
    assert make_settings().telegram.token.get_secret_value() == "2:conventional"
    filled = make_settings('[telegram]\ntoken = "3:file"\n')
    assert filled.telegram.token.get_secret_value() == "3:file"


def test_a_misspelt_section_or_key_is_one_error_naming_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[telegram]\nedits_per_houre = 3\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert err.value.message == (
        f"{path}: telegram.edits_per_houre: unknown setting "
        "(check the spelling against config.example.toml)"
    )
    path.write_text("[telegramm]\npublic = true\n")
    with pytest.raises(ConfigError) as err:
        load_settings(path)
    assert f"{path}: telegramm: unknown setting" in err.value.message
    path.write_text('[telegram]\nedits_per_hour = "many"\n')
    with pytest.raises(ConfigError, match=r"telegram\.edits_per_hour"):
        load_settings(path)


def test_the_example_config_documents_every_section_setting() -> None:
    documented = set(re.findall(r"^#?\s*(\w+)\s*=", EXAMPLE.read_text(), flags=re.M))
    missing = [
        f"{name}.{key}"
        for name, field in settings_class().model_fields.items()
        for key in getattr(field.annotation, "model_fields", {})
        if key not in documented
    ]
    assert missing == []
