"""The DashScope adapter: sends each function to the protocol that runs it.

The ten wanx functions go to ``wanx.py`` (async tasks, polled); ``edit`` goes to ``qwen.py``
(synchronous). Without uploads (``upload = "off"``) only ``edit`` is offered: wanx takes URLs
only, and the temporary storage is its way to them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import httpx

from tools.config import VendorSettings
from tools.errors import Unsupported
from tools.models import EditRequest
from tools.vendors.base import Capability, Finished, Job, Pending, Vendor
from tools.vendors.dashscope.client import Client
from tools.vendors.dashscope.qwen import QwenEdit
from tools.vendors.dashscope.settings import DashScopeSettings
from tools.vendors.dashscope.wanx import Wanx


class DashScopeVendor(Vendor):
    Settings: ClassVar[type[VendorSettings]] = DashScopeSettings
    key_env: ClassVar[str | None] = "DASHSCOPE_API_KEY"
    completion = "poll"

    settings: DashScopeSettings

    def __init__(self, name: str, settings: VendorSettings, http: httpx.AsyncClient) -> None:
        if not isinstance(settings, DashScopeSettings):
            settings = DashScopeSettings.model_validate(settings.model_dump(exclude_unset=True))
        super().__init__(name, settings, http)
        client = Client(name, self.settings, http)
        self.wanx = Wanx(client)
        self.qwen = QwenEdit(client)
        caps = self.wanx.capabilities() if self.settings.upload != "off" else {}
        self._capabilities = {**caps, "edit": self.qwen.capability()}

    @property
    def capabilities(self) -> Mapping[str, Capability]:
        return self._capabilities

    def check(self, request: EditRequest) -> None:
        super().check(request)
        if request.function == "edit":
            self.qwen.check(request)

    def price_for(self, function: str) -> tuple[float | None, str | None]:
        if function == "edit":
            return self.settings.edit_price_per_image, self.settings.currency
        return super().price_for(function)

    async def submit(self, job: Job) -> Finished | Pending:
        if job.function not in self.capabilities:
            raise Unsupported(
                f"vendor {self.name!r} ({self.kind}) cannot run {job.function}",
                vendor=self.name,
                function=job.function,
            )
        if job.function == "edit":
            return await self.qwen.submit(job)
        return await self.wanx.submit(job)

    async def poll(self, vendor_task_id: str) -> Finished | Pending:
        return await self.wanx.poll(vendor_task_id)

    async def cancel(self, vendor_task_id: str) -> bool:
        return await self.wanx.cancel(vendor_task_id)
