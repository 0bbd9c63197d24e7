"""The store: tasks with leases (SQLite today) and the image files they refer to."""

from tools.store.sqlite import Store, TaskRecord, new_task_id

__all__ = ["Store", "TaskRecord", "new_task_id"]
