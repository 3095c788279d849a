"""Exceptions raised by cropcore.

Bad arguments get Python's own exception types (``ValueError`` for bad values and shapes,
``TypeError`` for bad types and dtypes, ``IndexError`` for box indices out of range). The
classes here cover what is cropcore's own: choosing a backend, and refusing an output that
cannot fit in memory.
"""

from __future__ import annotations

__all__ = [
    "BackendDeclinedError",
    "BackendError",
    "BackendUnavailableError",
    "OutputTooLargeError",
    "UnknownBackendError",
]


class BackendError(RuntimeError):
    """A backend could not be chosen or could not run the call."""


class UnknownBackendError(BackendError, ValueError):
    """``backend=`` (or an override) names no installed backend."""


class BackendUnavailableError(BackendError):
    """The named backend is installed but cannot run here (missing framework, no GPU, ...)."""


class BackendDeclinedError(BackendError):
    """The backend cannot run this particular call (a dtype, method or device it lacks)."""


class OutputTooLargeError(ValueError, MemoryError):
    """The result would not fit in memory; refused before anything was allocated."""
