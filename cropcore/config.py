"""Every ``CROPCORE_*`` environment variable, in one table, read through one parser.

Requirements:

- One place lists every variable cropcore or its built-in backends read (:data:`VARIABLES`), with its
  type, default and meaning; docs/dispatch.md's table is checked against it by the tests.
- The environment is read once, when cropcore is imported, as NumPy, JAX and PyTorch read theirs:
  a call pays one dictionary look-up per variable, not an ``os.environ`` read (which costs about
  0.75 us for an unset name, and ran four times per call). A program that changes ``os.environ``
  later (a notebook cell, ``monkeypatch.setenv``) calls :func:`reload` to take it in. Parsing is
  lazy and cached by the raw text, so a malformed value never breaks ``import cropcore``: it raises
  where the variable is used.
- A malformed value raises ``ValueError`` naming the variable and the value expected; an empty
  value means unset.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["VARIABLES", "Variable", "get", "parse", "reload"]

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _name(text: str) -> str:
    return text.strip()


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected 1/0, true/false, yes/no or on/off")


def _bytes(text: str) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError("must be a whole number of bytes") from None
    if value < 0:
        raise ValueError("must be a whole number of bytes, not negative")
    return value


@dataclass(frozen=True)
class Variable:
    """One environment variable: its name, how its text is parsed, its default and meaning."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    meaning: str
    read_by: str = "cropcore"


VARIABLES: dict[str, Variable] = {
    v.name: v
    for v in (
        Variable(
            "CROPCORE_BACKEND",
            _name,
            None,
            "the backend of every call that names none and runs outside use_backend()",
        ),
        Variable(
            "CROPCORE_PRIORITY",
            _names,
            None,
            "comma-separated automatic-selection order, unless set_priority() was called",
        ),
        Variable(
            "CROPCORE_MAX_OUTPUT_BYTES",
            _bytes,
            None,
            "the largest result, and the most host memory one call may need at its peak, in "
            "bytes (default: physical memory for the result, the memory available for the peak)",
        ),
        Variable(
            "CROPCORE_STRICT",
            _flag,
            False,
            "whether box values on a device are read and checked too (a device synchronisation "
            "per call), refusing bad boxes as TensorFlow does; traced calls are never read",
        ),
        Variable(
            "CROPCORE_HOST_POOL_BYTES",
            _bytes,
            None,
            "bytes of dropped host results kept for reuse (cropcore.hostmem), shared by the "
            "numba and torch backends (512 MiB when unset); 0 turns reuse off; read once",
            "cropcore.hostmem",
        ),
        Variable(
            "CROPCORE_NUMBA_POOL_BYTES",
            _bytes,
            None,
            "deprecated spelling of CROPCORE_HOST_POOL_BYTES",
            "cropcore.hostmem",
        ),
        Variable(
            "CROPCORE_TORCH_RECYCLE",
            _flag,
            None,
            "deprecated: 0 means CROPCORE_HOST_POOL_BYTES=0",
            "cropcore.hostmem",
        ),
        Variable(
            "CROPCORE_TORCH_NATIVE",
            _flag,
            True,
            "whether the torch backend runs its compiled CPU loops (else its torch kernels)",
            "cropcore_torch",
        ),
        Variable(
            "CROPCORE_CACHE_DIR",
            _name,
            None,
            "where compiled native code is kept (default ~/.cache/cropcore)",
            "cropcore_torch",
        ),
        Variable(
            "CROPCORE_DETERMINISTIC",
            _flag,
            None,
            "whether CUDA image gradients run the deterministic kernel (else the atomic one)",
            "cropcore_cupy",
        ),
    )
}


# Parsed values by (name, raw text): a dictionary, not functools.lru_cache, so that a call traced by
# torch.compile reads it as dynamo reads any dictionary (it warns about lru_cache).
_PARSED: dict[tuple[str, str], Any] = {}


def _parsed(name: str, text: str) -> Any:
    key = (name, text)
    if key in _PARSED:
        return _PARSED[key]
    try:
        value = VARIABLES[name].parse(text)
    except ValueError as exc:
        raise ValueError(f"{name}={text!r}: {exc}") from None
    if len(_PARSED) < 256:
        _PARSED[key] = value
    return value


def parse(name: str, text: str | None) -> Any:
    """``text`` as the value of variable ``name``: its default when ``None`` or empty.

    Raises ``KeyError`` for a name not in the table (a typo in cropcore's own code) and
    ``ValueError``, naming the variable, for a malformed value.
    """
    variable = VARIABLES[name]
    if not text:
        return variable.default
    return _parsed(name, text)


def reload(environ: Mapping[str, str] | None = None) -> None:
    """Read every variable of :data:`VARIABLES` again, from ``environ`` (default ``os.environ``).

    cropcore reads its environment once, at import; call this after changing ``os.environ`` in a
    running program for the change to take effect at the next call. The host-memory pool's budget
    (``CROPCORE_HOST_POOL_BYTES``) is fixed when the pool is made and is not re-read.
    """
    global _texts
    source = os.environ if environ is None else environ
    _texts = {name: source.get(name) or None for name in VARIABLES}


_texts: dict[str, str | None] = {}
reload()


def get(name: str) -> Any:
    """The value of variable ``name`` (one of :data:`VARIABLES`) as last read, parsed (:func:`parse`).

    Raises ``KeyError`` for a name not in the table and ``ValueError``, naming the variable, for a
    malformed value.
    """
    text = _texts[name]
    if text is None:  # the common case: one look-up (this runs several times per op)
        return VARIABLES[name].default
    return _parsed(name, text)
