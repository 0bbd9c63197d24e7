"""Where an edit's time goes: when each task passed each stage, kept in this process's memory.

Whoever runs a stage stamps it (``mark``); a front end may show a task's stamps with the task
(``of``). Stamps are wall-clock seconds (``time.time()``), so those of several processes on
one machine, and a vendor's own, line up. Cheap enough to leave on: a dict entry per stage,
for the last ``KEEP`` tasks only.
"""

from __future__ import annotations

import time
from collections import OrderedDict

KEEP = 256


class Timeline:
    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._tasks: OrderedDict[str, dict[str, float]] = OrderedDict()

    def mark(self, task_id: str, stage: str, at: float | None = None) -> None:
        """``task_id`` reached ``stage`` now (or at ``at``); a stage reached again keeps its
        latest time."""
        stamps = self._tasks.get(task_id)
        if stamps is None:
            stamps = self._tasks[task_id] = {}
            if len(self._tasks) > self.keep:
                self._tasks.popitem(last=False)
        stamps[stage] = time.time() if at is None else at

    def of(self, task_id: str) -> dict[str, float]:
        """The task's stamps in this process, stage → time (empty if it ran elsewhere)."""
        return dict(self._tasks.get(task_id, {}))
