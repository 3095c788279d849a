"""The benchmark's errors: a bad option, or a missing optional dependency.

Requirements: the standard library only.
"""

from __future__ import annotations

__all__ = ["BenchError", "MissingDependencyError"]


class BenchError(Exception):
    """A usage error (exit status 2) or a missing dependency (``exit_code`` 1)."""

    exit_code = 2


class MissingDependencyError(BenchError):
    """rich (the table) or matplotlib (the chart) is not installed: exit status 1."""

    exit_code = 1
