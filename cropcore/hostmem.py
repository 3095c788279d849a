"""Reusable host memory for large results: one pool per process, for every backend that wants it.

Requirements:

- **Why.** The first write to freshly mapped memory makes the OS zero every page: for a 100 MB
  result that costs about as much as computing the crops. TensorFlow's CPU allocator keeps freed
  blocks for reuse; NumPy and torch give them back to the OS. Backends take large results from
  :func:`pool` instead (:meth:`HostPool.empty`), and a result's block comes back to the pool when
  the caller drops the last view of it, for the next result of a similar size.
- **One budget, one variable.** At most ``CROPCORE_HOST_POOL_BYTES`` bytes (default 512 MiB; 0
  turns the pool off) of free blocks are kept, shared by all backends; results larger than the
  budget or smaller than :attr:`HostPool.min_bytes` (1 MiB) are plain ``numpy.empty`` arrays.
  Deprecated spellings still work: ``CROPCORE_NUMBA_POOL_BYTES`` (the same budget) and
  ``CROPCORE_TORCH_RECYCLE=0`` (no pool).
- **Never a live result's memory.** A block is lent as the base object of one NumPy array; NumPy
  (and torch, through ``torch.from_numpy``) keep that object alive while any view of the memory
  is, so a block returns only once nothing can see it. The memory is uninitialised: callers write
  every element or zero it.
- **Safe from any thread at any time.** A block comes back from a finaliser, which can run during
  garbage collection in any thread, even one that is inside the pool; giving back takes no lock.
- **Cheap.** The core imports NumPy only; this module imports nothing else and reads the
  environment once, when first used.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import threading
import warnings
from typing import Any

import numpy as np

from cropcore import config

__all__ = ["DEFAULT_MAX_BYTES", "ENV_VAR", "HostPool", "budget_from_environment", "pool"]

#: The environment variable of the pool's budget, in bytes.
ENV_VAR = "CROPCORE_HOST_POOL_BYTES"
#: The budget when the variable is unset: 512 MiB.
DEFAULT_MAX_BYTES = 512 << 20
_DEPRECATED_BYTES = "CROPCORE_NUMBA_POOL_BYTES"
_DEPRECATED_SWITCH = "CROPCORE_TORCH_RECYCLE"


class _Lease:
    """Lends a block as one array; the block goes back to the pool when the array dies.

    NumPy keeps this object as the ``base`` of the array built from its ``__array_interface__``
    (and of every view of that array), so ``__del__`` runs only when no view is left.
    """

    __slots__ = ("__array_interface__", "_block", "_pool")

    def __init__(self, block: np.ndarray, pool: HostPool, shape: tuple, dtype: np.dtype) -> None:
        self._block = block
        self._pool = pool
        self.__array_interface__ = {
            "data": (block.ctypes.data, False),
            "shape": shape,
            "typestr": dtype.str,
            "version": 3,
        }

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # at interpreter shutdown, nothing to give back to
            self._pool.release(self._block)


class HostPool:
    """Free host memory blocks (NumPy ``uint8`` arrays), up to ``max_bytes`` in all.

    :meth:`empty` lends the smallest free block that fits and is less than twice too big, else a
    new one; the oldest free blocks go back to the OS when the budget is exceeded.
    """

    def __init__(self, max_bytes: int, min_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self.min_bytes = min_bytes
        self._free: collections.deque[np.ndarray] = collections.deque()  # appends are atomic
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised C-contiguous array of ``shape`` and ``dtype``, on a pooled block when
        the result is large enough and fits the budget."""
        if not isinstance(dtype, np.dtype):
            dtype = np.dtype(dtype)
        nbytes = dtype.itemsize * math.prod(shape)
        if nbytes < self.min_bytes or nbytes > self.max_bytes:
            return np.empty(shape, dtype)
        block = self._take(nbytes)
        if block is None:
            block = np.empty(nbytes, np.uint8)
        return np.asarray(_Lease(block, self, tuple(shape), dtype))

    def _take(self, nbytes: int) -> np.ndarray | None:
        with self._lock:
            blocks = []
            while True:  # empty the deque (a concurrent release appends, never removes)
                try:
                    blocks.append(self._free.popleft())
                except IndexError:
                    break
            best = None
            for block in blocks:
                if nbytes <= block.nbytes < 2 * nbytes and (
                    best is None or block.nbytes < best.nbytes
                ):
                    best = block
            for block in blocks:  # the others go back, oldest first (by identity, not ==)
                if block is not best:
                    self._free.append(block)
            return best

    def release(self, block: np.ndarray) -> None:
        """Take ``block`` back (from a finaliser: any thread, any time, so no locks here)."""
        self._free.append(block)
        while self.free_bytes() > self.max_bytes:
            try:
                self._free.popleft()  # the oldest block goes back to the OS
            except IndexError:
                break

    def free_bytes(self) -> int:
        """The bytes of the blocks held for reuse."""
        return sum(block.nbytes for block in tuple(self._free))

    def clear(self) -> None:
        """Give every free block back to the OS."""
        self._free.clear()


def budget_from_environment(environ: Any = os.environ) -> int:
    """The pool's budget in bytes, from :data:`ENV_VAR` or its deprecated spellings."""

    def value(name: str) -> Any:
        return config.parse(name, environ.get(name))

    budget = value(ENV_VAR)
    if budget is not None:
        return budget
    budget = value(_DEPRECATED_BYTES)
    if budget is not None:
        warnings.warn(
            f"{_DEPRECATED_BYTES} is deprecated; set {ENV_VAR}", DeprecationWarning, stacklevel=2
        )
        return budget
    if value(_DEPRECATED_SWITCH) is False:
        warnings.warn(
            f"{_DEPRECATED_SWITCH}=0 is deprecated; set {ENV_VAR}=0",
            DeprecationWarning,
            stacklevel=2,
        )
        return 0
    return DEFAULT_MAX_BYTES


_pool: HostPool | None = None
_pool_lock = threading.Lock()


def pool() -> HostPool:
    """This process's pool (created on first use, its budget read from the environment then)."""
    if _pool is None:
        return _create()
    return _pool


def _create() -> HostPool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = HostPool(budget_from_environment())
    return _pool
