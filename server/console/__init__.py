"""The operators' console at ``/console``: tasks live, a task's story, vendors, costs and
users, behind its own sign-in (``[console] tokens``); off unless a token is set.
``routes.add_console`` mounts it."""
