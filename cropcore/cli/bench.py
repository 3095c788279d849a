"""``cropcore bench``: the command of :mod:`cropcore.bench`, whose options and run live there.

Requirements: importing this imports :mod:`cropcore.bench`, which imports no framework, nor rich
nor matplotlib; ``cropcore bench`` needs rich (the ``bench`` extra).
"""

from __future__ import annotations

import argparse

from cropcore import bench
from cropcore.cli.errors import EXIT_FAILURE, CliError, MissingDependencyError

NAME = "bench"
SUMMARY = "time every backend side by side with TensorFlow's kernel"
HELP = bench.DESCRIPTION
EPILOG = bench.EPILOG


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cropcore bench``."""
    bench.add_arguments(parser)


def run(args: argparse.Namespace) -> int:
    """Run ``cropcore bench``; return the exit status."""
    try:
        return bench.run_command(args)
    except bench.BenchError as exc:
        error = MissingDependencyError if exc.exit_code == EXIT_FAILURE else CliError
        raise error(str(exc)) from None
