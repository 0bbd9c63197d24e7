"""DashScope (Alibaba Cloud Model Studio): wanx2.1-imageedit and qwen-image-edit.

Two protocols behind one base URL (vendors.md §1–3, §10), one module each:

- ``wanx.py``: the ten wanx functions, asynchronous tasks that are polled;
- ``qwen.py``: ``edit``, qwen-image-edit(-plus/-max), synchronous;
- ``upload.py``: DashScope's temporary storage, which the wanx API needs (it takes URLs only)
  and ``edit`` uses for large images;

with ``adapter.py`` choosing between them, ``client.py`` their shared plumbing and error
codes, and ``settings.py`` the ``[vendors.<name>]`` table. The same adapter serves
``https://dashscope-intl.aliyuncs.com`` and proxies that keep the native body under a path
prefix (302.AI: ``https://api.302.ai/aliyun``).
"""

from tools.vendors.dashscope.adapter import DashScopeVendor
from tools.vendors.dashscope.settings import DashScopeSettings

__all__ = ["DashScopeSettings", "DashScopeVendor"]
