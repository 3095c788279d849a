"""The command line's exit statuses and errors, and how library errors become them.

Requirements: importing this imports only the standard library and :mod:`cropcore.cli.files`
(NumPy). Library code never raises these; the commands raise them, or :func:`cropcore.cli.main`
translates a library error (:class:`~cropcore.cli.files.InputFileError`,
:class:`~cropcore.cli.files.MissingDependencyError`) into one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from cropcore.cli import files
from cropcore.errors import BackendError

__all__ = [
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "LIBRARY_ERRORS",
    "REFUSALS",
    "CliError",
    "MissingDependencyError",
    "from_library_error",
    "missing",
    "require",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: What cropcore raises for arguments it refuses (each message names the argument and value).
REFUSALS = (ValueError, TypeError, IndexError, BackendError)


class CliError(Exception):
    """A problem with the user's input: one line on stderr, exit status 2."""

    exit_code = EXIT_USAGE


class MissingDependencyError(CliError):
    """rich or Pillow is not installed: exit status 1."""

    exit_code = EXIT_FAILURE


def missing(package: str, reason: str) -> MissingDependencyError:
    """The error for a ``cli`` extra's ``package`` that did not import (``reason``)."""
    return MissingDependencyError(
        f"this command needs {package}, which is not installed ({reason}); "
        'install the command-line extras with: pip install "cropcore[cli]"'
    )


def require(module: str) -> Any:
    """Import one of the ``cli`` extra's modules, or say how to install it (exit status 1)."""
    try:
        return files.require(module)
    except files.MissingDependencyError as exc:
        raise missing(exc.package, exc.reason) from None


#: The library errors the command line reports as its own (see :func:`from_library_error`).
LIBRARY_ERRORS = (files.InputFileError, files.MissingDependencyError)


def from_library_error(exc: Exception) -> CliError:
    """The command line's error for one of :data:`LIBRARY_ERRORS`: exit status 2 for a bad file,
    1 (and the ``cli`` extra named) for a missing dependency."""
    if isinstance(exc, files.MissingDependencyError):
        return missing(exc.package, exc.reason)
    return CliError(str(exc))


def output_directory(path: str | os.PathLike[str]) -> Path:
    """``path`` as a directory that exists (made if needed), or a :class:`CliError` naming it."""
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(
            f"{out}: cannot create the output directory: {exc.strerror or exc}"
        ) from None
    return out
