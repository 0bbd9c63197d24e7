"""``[vendors.<name>]`` of kind ``dashscope``: both protocols' limits and prices."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from tools.config import MB, VendorSettings

FORMATS = ["jpeg", "png", "bmp", "tiff", "webp"]


class DashScopeSettings(VendorSettings):
    base_url: str = "https://dashscope.aliyuncs.com"
    model: str = Field("wanx2.1-imageedit", description="model of the wanx functions")
    edit_model: str = Field("qwen-image-edit-plus", description="model of `edit`")
    #: wanx2.1-imageedit: 2 tasks at once, 2 submissions a second (DashScope's documented
    #: limits are per model and per account).
    max_concurrent: int | None = Field(2, ge=1)
    submit_rps: float | None = Field(2, gt=0)
    #: qwen-image-edit (``edit``): no per-second cap documented, so none by default.
    edit_submit_rps: float | None = Field(None, gt=0, description="`edit` submissions a second")
    #: DashScope's account-wide cap is 20 task queries a second; 18 leaves room for the
    #: jitter of evenly spaced requests (at exactly 20, 21 landed in one second: bench/).
    query_rps: float | None = Field(18, gt=0, description="task queries a second, account-wide")
    #: Every 2–2.5 s: bench/polling.py (40 tasks of 2–10 s) measured a 1.05 s median lag at
    #: 0.89 queries per 2 s per task; 1 s growing to 10 s gave 1.73 s at 1.08 queries.
    poll_interval_s: float = Field(2, gt=0)
    poll_max_interval_s: float = Field(2.5, gt=0)
    # wanx2.1-imageedit input limits
    min_side: int = Field(512, ge=1)
    max_side: int = Field(4096, ge=1)
    max_bytes: int = Field(10 * MB, ge=1024)
    formats: list[str] = Field(default_factory=lambda: list(FORMATS))
    # qwen-image-edit input and output limits
    edit_min_side: int = Field(384, ge=1)
    edit_max_side: int = Field(3072, ge=1)
    edit_max_bytes: int = Field(10 * MB, ge=1024)
    edit_formats: list[str] = Field(default_factory=lambda: list(FORMATS))
    edit_size_min: int = Field(512, ge=16)
    edit_size_max: int = Field(2048, ge=16)
    max_prompt_chars: int = Field(800, ge=1)
    max_negative_prompt_chars: int = Field(500, ge=1)
    #: auto: wanx inputs go through the temporary storage, `edit` inputs inline unless
    #: larger than inline_max_bytes in all; always: `edit` uploads too; off: never upload
    #: (only `edit`, inline; for proxies without the upload endpoint).
    upload: Literal["auto", "always", "off"] = "auto"
    inline_max_bytes: int = Field(5 * MB, ge=0)
    price_per_image: float | None = Field(0.14, ge=0)
    currency: str | None = "CNY"
    edit_price_per_image: float | None = Field(None, ge=0)

    def submit_rate(self, function: str) -> tuple[str, float | None]:
        if function == "edit":
            return "submit edit", self.edit_submit_rps
        return super().submit_rate(function)

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _documented_prices(self) -> DashScopeSettings:
        """302.AI documents its own price for the qwen edit (0.05 PTC a call); the wanx
        price is DashScope's (¥0.14 an image). Explicit settings always win."""
        if "302.ai" in self.base_url and "edit_price_per_image" not in self.model_fields_set:
            self.edit_price_per_image = 0.05
            if "currency" not in self.model_fields_set:
                self.currency = "PTC"
            if "price_per_image" not in self.model_fields_set:
                self.price_per_image = None
        return self

    @field_validator("formats", "edit_formats")
    @classmethod
    def _known_formats(cls, value: list[str]) -> list[str]:
        out = [{"jpg": "jpeg", "tif": "tiff"}.get(f.lower(), f.lower()) for f in value]
        unknown = sorted(set(out) - {*FORMATS, "gif"})
        if unknown or not out:
            raise ValueError(f"unknown format(s) {unknown}; use some of {FORMATS}")
        return out
