"""The bot's ``[telegram]`` settings section. The core finds it through the
``retouch.settings`` entry point (pyproject.toml) and exposes it as ``settings.telegram``."""

from __future__ import annotations

import os

from pydantic import Field, SecretStr, model_validator

from tools.config import Section


class TelegramSettings(Section):
    token: SecretStr = SecretStr("")
    api_base_url: str = "https://api.telegram.org/bot"
    file_base_url: str = "https://api.telegram.org/file/bot"
    allowed_user_ids: list[int] = Field(default_factory=list)
    public: bool = False
    max_concurrent_per_user: int = Field(2, ge=1)
    edits_per_hour: int = Field(30, ge=1)
    album_debounce_s: float = Field(1.0, ge=0)
    #: A stranger (not allowed) is told so at most this many times in any window; then
    #: silence (bots.access.Refusals).
    stranger_replies: int = Field(3, ge=0)
    stranger_reply_window_s: float = Field(3600.0, gt=0)
    webhook_url: str = ""
    #: retouch-bot serves GET /metrics on this port (at metrics.host), if set.
    metrics_port: int | None = Field(None, ge=1, le=65535)

    @model_validator(mode="after")
    def _token_from_environment(self) -> TelegramSettings:
        """The conventional ``TELEGRAM_BOT_TOKEN`` fills a token that is still empty."""
        if not self.token.get_secret_value() and os.environ.get("TELEGRAM_BOT_TOKEN"):
            self.token = SecretStr(os.environ["TELEGRAM_BOT_TOKEN"])
        return self
