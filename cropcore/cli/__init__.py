"""The command line: ``cropcore backends``, ``crop``, ``demo``, ``bench`` and ``conformance``.

Requirements:

- cropcore itself needs only NumPy and pluggy. The command line also uses rich (tables, progress
  bars) and Pillow (image files), the ``cli`` extra; both are imported inside the commands that use
  them, so ``cropcore --help``, ``--version`` and ``backends --json`` work without them, and a
  command that needs a missing one says ``pip install "cropcore[cli]"`` and exits with status 1.
  Importing this package imports neither (nor any framework, nor dask).
- A bad input (a missing or unreadable image, a malformed box file, a bad option, an unknown
  backend, an argument cropcore refuses) ends with exit status 2 and one line on stderr that names
  the file and row at fault; never a traceback.
- Exit status: 0 success; 1 failure (``demo``: a backend disagrees with the reference or fails; a
  missing dependency); 2 bad input or usage.

One module per command, each with its ``NAME``, ``SUMMARY``, ``HELP`` and ``EPILOG``,
``add_arguments(parser)`` and ``run(args)``:
:mod:`~cropcore.cli.backends`, :mod:`~cropcore.cli.crop`, :mod:`~cropcore.cli.demo` (its contact
sheet in :mod:`~cropcore.cli.sheet`) and :mod:`~cropcore.cli.bench` (the options and the run are
:mod:`cropcore.bench`'s); ``conformance`` is handed to ``cropcore_conformance``. Box and image
files are read and written by :mod:`cropcore.cli.files`, which :mod:`cropcore.dask` shares, and
which raises library errors that :func:`main` turns into exit statuses
(:mod:`cropcore.cli.errors`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import cropcore
from cropcore.cli.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    LIBRARY_ERRORS,
    CliError,
    from_library_error,
)

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (exit status 2)."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cropcore`` command."""
    parser = _Parser(
        prog="cropcore",
        description="TensorFlow's crop_and_resize and Keras's Cropping2D, exactly, on every "
        "array framework.",
        epilog="examples:\n  cropcore backends\n  cropcore demo\n"
        "  cropcore crop photo.jpg --boxes boxes.csv --size 224 224\n  cropcore bench --workloads tiny roi\n\n"
        "Run 'cropcore COMMAND --help' for a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cropcore {cropcore.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    from cropcore.cli import backends, bench, crop, demo  # none imports rich, Pillow or a framework

    # Each command's module: NAME, SUMMARY, HELP, EPILOG, add_arguments(parser) and run(args).
    for command in (backends, crop, demo, bench):
        subparser = commands.add_parser(
            command.NAME,
            help=command.SUMMARY,
            description=command.HELP,
            epilog=command.EPILOG,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        command.add_arguments(subparser)
        subparser.set_defaults(run=command.run)
    # `cropcore conformance ...` is cropcore_conformance's own command line: main() hands it over.
    commands.add_parser(
        "conformance", help="certify a backend against the conformance suite", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cropcore`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["conformance"]:
        from cropcore_conformance.runner import main as conformance

        return conformance(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE if exc.code else EXIT_OK
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    prog = f"cropcore {args.command}"
    handler = _log_to_stderr(prog, report_broken_plugins=args.command == "crop")
    try:
        return args.run(args)
    except (CliError, *LIBRARY_ERRORS) as exc:
        error = exc if isinstance(exc, CliError) else from_library_error(exc)
        print(f"{prog}: error: {_one_line(str(error))}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cropcore backends --json | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    finally:
        if handler is not None:
            logging.getLogger("cropcore").removeHandler(handler)


class _LineFormatter(logging.Formatter):
    """``PROG: warning: message`` (the level in lower case, as in argparse's errors)."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prog}: {record.levelname.lower()}: {_one_line(record.getMessage())}"


def _log_to_stderr(prog: str, *, report_broken_plugins: bool) -> logging.Handler | None:
    """Show cropcore's warnings as ``PROG: warning: ...`` lines, unless logging is configured.

    ``backends`` and ``demo`` list broken plugins in their own output, so the registry's warning
    about them is left out there.
    """
    logger = logging.getLogger("cropcore")
    configured = [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]
    if configured or logging.getLogger().handlers:
        return None  # the application (or pytest) configured logging; leave it alone
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_LineFormatter(prog))
    if not report_broken_plugins:
        handler.addFilter(lambda record: record.name != "cropcore.registry")
    logger.addHandler(handler)
    return handler


def _one_line(text: str) -> str:
    return " ".join(text.split())
