"""What front ends ask the Editor about their users' tasks and the vendors (the bot's
limits, /status, /cancel, /vendor and its delivery scan), each scoped to one owner."""

from __future__ import annotations

import time

import pytest

from tests.conftest import data_uri, png
from tools.config import Settings
from tools.errors import InvalidParameter
from tools.models import EditRequest
from tools.service import Editor


def lineart() -> EditRequest:
    return EditRequest(images=[data_uri(png())], function="lineart")


async def test_active_tasks_and_usage_are_one_owners(settings: Settings) -> None:
    async with Editor(settings, run_worker=False) as editor:
        start = time.time()
        first = await editor.edit_image(lineart(), owner="tg:1")
        second = await editor.edit_image(lineart(), owner="tg:1")
        other = await editor.edit_image(lineart(), owner="tg:2")
        await editor.cancel_task(first.id)
        assert [t.id for t in await editor.active_tasks("tg:1")] == [second.id]
        assert [t.id for t in await editor.active_tasks("tg:2")] == [other.id]
        assert await editor.active_tasks("tg:3") == []

        count, oldest = await editor.usage("tg:1", start - 1)
        assert count == 2  # a canceled task counts: it was started
        assert oldest == pytest.approx(first.created_at.timestamp(), abs=0.01)
        assert await editor.usage("tg:1", time.time() + 1) == (0, None)


async def test_tasks_by_id_leave_unknown_ones_out(settings: Settings) -> None:
    async with Editor(settings, run_worker=False) as editor:
        task = await editor.edit_image(lineart(), owner="tg:1")
        assert [t.id for t in await editor.tasks([task.id, "no-such-task"])] == [task.id]
        assert await editor.tasks([]) == []


async def test_vendor_kinds_and_functions(settings: Settings) -> None:
    async with Editor(settings, run_worker=False) as editor:
        assert editor.vendor_kinds() == {"local": "local"}
        functions = editor.vendor_functions("local")
        assert functions == list(editor.vendors["local"].capabilities)
        assert "lineart" in functions
        with pytest.raises(InvalidParameter):
            editor.vendor_functions("nope")
