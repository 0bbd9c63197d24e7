"""One real call per vendor, for users who hold keys. Skipped unless the key is set:

    RETOUCH_LIVE_DASHSCOPE_KEY=sk-...  RETOUCH_LIVE_OPENAI_KEY=sk-...
    RETOUCH_LIVE_NEBULA_KEY=sk-...     .venv/bin/pytest tests/test_live_vendors.py -v

Each call spends real money (about one image's price). Results go to a temporary folder.
The image is fetched by the vendor from a public URL (RETOUCH_LIVE_IMAGE_URL, default a
photo on Wikimedia Commons).
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import MakeSettings
from tools.models import EditRequest, TaskStatus
from tools.service import Editor

IMAGE = os.environ.get(
    "RETOUCH_LIVE_IMAGE_URL",
    "https://upload.wikimedia.org/wikipedia/commons/3/3a/Cat03.jpg",
)
LIVE = [
    ("dashscope", "RETOUCH_LIVE_DASHSCOPE_KEY", "stylization_all", "oil painting"),
    ("dashscope", "RETOUCH_LIVE_DASHSCOPE_KEY", "edit", "put a red hat on the cat"),
    ("openai", "RETOUCH_LIVE_OPENAI_KEY", "edit", "put a red hat on the cat"),
    ("nebula", "RETOUCH_LIVE_NEBULA_KEY", "edit", "put a red hat on the cat"),
]


@pytest.mark.parametrize(("kind", "env", "function", "prompt"), LIVE)
async def test_one_real_call(
    make_settings: MakeSettings, kind: str, env: str, function: str, prompt: str
) -> None:
    key = os.environ.get(env)
    if not key:
        pytest.skip(f"set {env} to make a real {kind} call")
    settings = make_settings(f'[vendors.live]\nkind = "{kind}"\napi_key = "{key}"\n')
    async with Editor(settings) as editor:
        task = await editor.edit_image(
            EditRequest(images=[IMAGE], function=function, prompt=prompt, vendor="live"),
            wait_seconds=300,
        )
    assert task.status == TaskStatus.succeeded, task.error
    assert task.results and task.results[0].width > 0
    assert key not in task.model_dump_json()
