"""Reading cropcore's environment variables on every call, cheaply.

``os.environ.get`` of an unset variable costs about 0.8 us (it raises and catches a KeyError);
cropcore reads three variables on each op, which matters for small calls. On POSIX CPython the
mapping keeps its data in a plain dict of bytes, which a lookup can read without the exception.
Elsewhere this is ``os.environ.get``. Either way a change to ``os.environ`` (``monkeypatch.setenv``,
``os.environ[...] = ...``) is seen at the next call.
"""

from __future__ import annotations

import os

__all__ = ["getenv"]

_data = getattr(os.environ, "_data", None)
_decode = getattr(os.environ, "decodevalue", None)


def _getenv_fast(name: str) -> str | None:
    raw = _data.get(name.encode())  # type: ignore[union-attr]
    return None if raw is None else _decode(raw)  # type: ignore[misc]


def _getenv_portable(name: str) -> str | None:
    return os.environ.get(name)


def _fast_path_works() -> bool:
    """Whether the dict lookup agrees with ``os.environ`` here (checked without changing it)."""
    if os.name != "posix" or not isinstance(_data, dict) or _decode is None:
        return False
    try:
        names = [name for name in list(os.environ)[:8] if name.isascii()]
        names.append("CROPCORE_ENV_PROBE")  # set or (almost surely) not
        return all(_getenv_fast(name) == os.environ.get(name) for name in names)
    except Exception:
        return False


#: ``getenv(name)``: ``os.environ.get(name)``, faster where the platform allows.
getenv = _getenv_fast if _fast_path_works() else _getenv_portable
