"""The memory guard: a call that cannot fit in memory is refused before anything is allocated.

Requirements: no allocation, no framework import, and almost no cost for ordinary calls. Two checks,
both raising :class:`cropcore.errors.OutputTooLargeError` (a ``ValueError`` and a ``MemoryError``):

1. :func:`check_output_size`, in :mod:`cropcore.spec`, from shapes alone (before boxes are read):
   the result against the limit, which is ``CROPCORE_MAX_OUTPUT_BYTES`` when set, else the
   machine's physical memory. A typo in ``crop_size`` is an exception, not an out-of-memory kill.
2. :func:`check_peak`, in :mod:`cropcore.dispatch`, once the backend is chosen: the host memory that
   backend needs at its peak for this call (its ``cropcore_backend_peak_bytes`` hook: the result and
   its temporaries) against ``CROPCORE_MAX_OUTPUT_BYTES`` when set, else the memory available
   now. Only calls whose arrays (result included) exceed :data:`ASK_BYTES` ask the backend, and
   only peaks above :data:`SMALL_BYTES` are checked: small calls pay for neither.
"""

from __future__ import annotations

import os

import numpy as np

from cropcore import config
from cropcore.errors import OutputTooLargeError

__all__ = [
    "ASK_BYTES",
    "SMALL_BYTES",
    "available_memory",
    "check_output_size",
    "check_peak",
    "max_output_bytes",
    "nbytes",
]

#: A peak of at most this much host memory is not checked.
SMALL_BYTES = 64 << 20
#: Calls whose arrays, the result included, total at most this much do not ask their backend for
#: its peak: every built-in backend's temporaries are a small multiple of its arrays.
ASK_BYTES = 1 << 20


def max_output_bytes() -> int:
    """The largest result cropcore allocates, in bytes: ``CROPCORE_MAX_OUTPUT_BYTES`` or physical memory."""
    configured = config.get("CROPCORE_MAX_OUTPUT_BYTES")
    return _physical_memory() if configured is None else configured


def _physical_memory() -> int:
    return _PHYSICAL_MEMORY


def _read_physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**63 - 1


# Read once, at import: it does not change, and a constant traces under torch.compile.
_PHYSICAL_MEMORY = _read_physical_memory()


def available_memory() -> int:
    """Host memory available now, in bytes (Linux's ``MemAvailable``; else physical memory)."""
    try:
        with open("/proc/meminfo", "rb") as meminfo:
            for line in meminfo:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return _physical_memory()


# Element sizes of the dtypes results have (np.dtype(name) costs a few hundred nanoseconds).
_ITEMSIZES = {name: np.dtype(name).itemsize for name in ("float16", "float32", "float64")}


def nbytes(shape: tuple[int, ...], dtype: str) -> int:
    """Bytes of an array of ``shape`` and ``dtype`` (exact for any size: Python integers).

    A plain loop, so that torch.compile traces it (the shape-only checks run inside graphs).
    """
    size = _ITEMSIZES.get(dtype) or np.dtype(dtype).itemsize
    for dim in shape:
        size *= int(dim)
    return size


def check_output_size(shape: tuple[int, ...], dtype: str, what: str) -> None:
    """Refuse, before allocating, a result of ``shape`` and ``dtype`` that cannot fit in memory."""
    size = nbytes(shape, dtype)
    limit = max_output_bytes()
    if size > limit:
        raise OutputTooLargeError(
            f"{what} would have shape {tuple(shape)} and dtype {dtype}: {size:,} bytes, more "
            f"than the {limit:,} bytes cropcore allows (the machine's memory, or "
            "CROPCORE_MAX_OUTPUT_BYTES); reduce crop_size or the number of boxes"
        )


def check_peak(peak: int, result: int, backend: str, op: str) -> None:
    """Refuse a call whose backend needs ``peak`` bytes of host memory (``result`` of them the result's).

    A peak of at most :data:`SMALL_BYTES` is not checked (``check_output_size`` has already held
    the result to ``CROPCORE_MAX_OUTPUT_BYTES``); small calls read no variable and no file here.
    """
    if peak <= SMALL_BYTES:
        return
    configured = config.get("CROPCORE_MAX_OUTPUT_BYTES")
    if configured is None:
        limit, source = available_memory(), "the memory available now"
    else:
        limit, source = configured, "CROPCORE_MAX_OUTPUT_BYTES"
    if peak > limit:
        raise OutputTooLargeError(
            f"{op} on backend {backend!r} would need {peak:,} bytes of memory at its peak (the "
            f"result is {result:,} of them), more than the {limit:,} bytes of {source}; reduce "
            "crop_size or the number of boxes, or split the call"
        )
