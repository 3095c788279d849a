"""The priority list and the backend override: which backends automatic selection tries, in order.

:func:`set_priority` (process-wide; the ``CROPCORE_PRIORITY`` environment variable, read by
:mod:`cropcore.config`, otherwise :data:`DEFAULT_PRIORITY`) and :func:`use_backend` (scoped to a
thread or asyncio task). :mod:`cropcore.dispatch` applies them; this module only holds them.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar

from cropcore import config

__all__ = ["DEFAULT_PRIORITY", "current_override", "get_priority", "set_priority", "use_backend"]

#: Automatic selection tries these in order. Third-party backends run when named, or when added
#: to the priority list.
DEFAULT_PRIORITY: tuple[str, ...] = ("cupy", "torch", "jax", "numba", "numpy")

_override: ContextVar[str | None] = ContextVar("cropcore_backend_override", default=None)
_priority_lock = threading.Lock()
_priority: tuple[str, ...] | None = None


def set_priority(names: Sequence[str] | None) -> None:
    """Set the automatic-selection order for this process (``None`` restores the default).

    Names may be aliases. Takes precedence over ``CROPCORE_PRIORITY``.
    """
    global _priority
    if isinstance(names, str):
        raise TypeError("set_priority takes a sequence of backend names, not a string")
    with _priority_lock:
        _priority = None if names is None else tuple(str(n) for n in names)


def get_priority() -> tuple[str, ...]:
    """The automatic-selection order now in force."""
    if _priority is not None:
        return _priority
    return config.get("CROPCORE_PRIORITY") or DEFAULT_PRIORITY


def current_override() -> str | None:
    """The backend named by the innermost :func:`use_backend` of this thread or task, or ``None``."""
    return _override.get()


@contextlib.contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """Run the ops inside the ``with`` block on backend ``name`` unless a call names its own.

    Scoped to the current thread (or asyncio task): other threads are unaffected. ``None`` lifts
    an outer override. The name is checked when the first op runs, not here.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"use_backend takes a backend name, got {name!r}")
    token = _override.set(name)
    try:
        yield
    finally:
        _override.reset(token)
