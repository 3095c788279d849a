"""``cropcore bench``: the command of :mod:`cropcore.bench`, whose options and run live there.

Requirements: importing this imports :mod:`cropcore.bench`, which imports no framework, nor rich
nor matplotlib; ``cropcore bench`` needs rich (the ``bench`` extra).
"""

from __future__ import annotations

import argparse

from cropcore import bench
from cropcore.cli.errors import EXIT_FAILURE, CliError, MissingDependencyError


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``bench`` to the ``cropcore`` command's subcommands."""
    parser = commands.add_parser(
        "bench",
        help="time every backend side by side with TensorFlow's kernel",
        description=bench.DESCRIPTION,
        epilog=bench.EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run ``cropcore bench``; return the exit status."""
    try:
        return bench.run_command(args)
    except bench.BenchError as exc:
        error = MissingDependencyError if exc.exit_code == EXIT_FAILURE else CliError
        raise error(str(exc)) from None
