"""The dispatcher's choice of backend, remembered per kind of call (issue 16: small calls).

Requirements:

- **The same choice as :func:`cropcore.dispatch.select`, always.** An entry is made only from
  ``select``'s own answer, and only where that answer depends on nothing but the entry's key: the
  op, each array argument's library, the anchor's device, the image dtype and the method, whether
  autograd is wanted, the backend the call names (``backend=``, the innermost :func:`use_backend`
  of this thread or task, ``CROPCORE_BACKEND``) and the priority list (:func:`set_priority`,
  ``CROPCORE_PRIORITY``), and the registry's generation (which changes whenever a backend is
  registered, unregistered or rediscovered). Everything a user can change is in the key, so
  nothing needs invalidating: a change makes a new key, and :func:`cropcore.config.reload` is
  seen through the values it changes.
- **Never a skipped warning or error.** No entry where ``select`` warns (autograd that cannot be
  had) or where DEBUG logging is on (every decision is logged then), and none where a backend
  before the chosen one on the priority list was turned down by its ``declines`` hook (that
  depends on the call). The chosen backend's ``declines`` hook runs on every call; if it declines,
  ``select`` decides (and explains, warns or raises) as without the cache.
- **Thread-safe without a lock.** Entries are immutable and a dict's get and set are atomic; two
  threads that miss at once compute the same entry.
"""

from __future__ import annotations

import logging
from typing import Any

from cropcore.arrays import library_for
from cropcore.registry import Backend, registry

__all__ = ["cached_choice", "clear", "remember"]

_cache: dict[tuple[Any, ...], Backend] = {}
_CACHE_SIZE = 256


def key(
    call: Any,
    libraries: tuple[str, ...],
    named: str | None,
    priority: tuple[str, ...],
    needs_grad: bool,
    static: tuple[str, str | None, str | None],
) -> tuple[Any, ...]:
    """What the choice for ``call`` depends on (see the module docstring)."""
    anchor = call.anchor
    device = library_for(anchor).device(anchor)
    return (static, libraries, device, needs_grad, named, priority, registry.generation)


def cached_choice(entry_key: tuple[Any, ...], call: Any) -> Backend | None:
    """The remembered backend for ``entry_key`` if it takes ``call``; ``None`` otherwise."""
    chosen = _cache.get(entry_key)
    if chosen is None or chosen.declines(call) is not None:
        return None
    return chosen


def remember(
    entry_key: tuple[Any, ...],
    chosen: Backend,
    verdicts: Any,
    logger: logging.Logger,
    needs_grad: bool,
) -> None:
    """Remember ``chosen`` (``select``'s answer) for ``entry_key`` where it may be (see the module
    docstring). ``verdicts``: for an automatic choice, the priority list's static verdicts
    (:func:`cropcore.dispatch._verdicts`) that ``select`` went through; ``None`` for a named one."""
    if logger.isEnabledFor(logging.DEBUG) or entry_key[-1] != registry.generation:
        return
    info = chosen.info
    if info is None or (needs_grad and not info.autograd):
        return  # select warned: the result is detached
    if verdicts is not None:
        for _, backend, why in verdicts:
            if backend is chosen:
                break
            if why is None:  # turned down by its declines hook, or taken: not for every call
                return
        else:
            return
    if len(_cache) >= _CACHE_SIZE:
        _cache.clear()
    _cache[entry_key] = chosen


def clear() -> None:
    """Forget every remembered choice (tests; nothing else needs it)."""
    _cache.clear()
