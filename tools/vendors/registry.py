"""Vendor kinds, found as entry points of the group ``retouch.vendors``.

An entry point's name is the kind and its value the adapter class: Retouch declares its own
kinds in its ``pyproject.toml`` exactly as a third-party package declares one more::

    [project.entry-points."retouch.vendors"]
    example = "retouch_example:ExampleVendor"

Only the installed metadata is read until a kind is used: a kind's module is imported the
first time that kind is asked for, so a process loads only the adapters its config names.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points
from typing import Any

GROUP = "retouch.vendors"


@functools.cache
def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        found.setdefault(ep.name, ep)  # the first on sys.path wins, as for imports
    return found


def kinds() -> list[str]:
    """Every installed kind, sorted (nothing is imported)."""
    return sorted(_entry_points())


@functools.cache
def vendor_class(kind: str) -> type[Any]:
    """The adapter class of ``kind`` (a ``tools.vendors.base.Vendor``), imported on first
    use; KeyError for an unknown kind. Typed loosely: the registry imports nothing of
    Retouch's, so that the settings can use it without an import circle."""
    return _entry_points()[kind].load()  # type: ignore[no-any-return]


def kind_of(module: str) -> str | None:
    """The kind whose adapter lives in ``module`` or a package holding it (nothing is
    imported): a kind's settings class learns its kind here instead of repeating it."""
    for name, ep in _entry_points().items():
        if module == ep.module or module.startswith(ep.module + "."):
            return name
    return None


def kinds_that_can(function: str) -> list[str]:
    """The kinds whose adapter, with its default settings, runs ``function``."""
    able = []
    for kind in kinds():
        try:
            cls = vendor_class(kind)
            probe = cls(kind, cls.Settings(kind=kind), None)
            if function in probe.capabilities:
                able.append(kind)
        except Exception:
            continue  # a kind that cannot even be probed cannot be recommended
    return able
