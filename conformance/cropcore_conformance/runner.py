"""``cropcore conformance NAME``: run the suite against a backend and print the report.

Exit status: 0 the backend conforms (every case passed, was skipped for a declared reason, or
failed as the backend declared); 1 an unexpected failure (with ``--strict``, also a stale
expected-failure declaration), or a backend plugin that fails to load; 2 a usage error (unknown
backend, a backend that cannot run here, malformed declarations, bad options).

The report is a table (rich, on a terminal where rich is installed; plain text otherwise or with
``--plain``) or JSON (``--json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Sequence
from typing import IO, Any

from cropcore.errors import BackendError
from cropcore_conformance.cases import CATEGORIES
from cropcore_conformance.isolation import IsolationError
from cropcore_conformance.report_text import render_rich, render_text
from cropcore_conformance.suite import (
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_SEED,
    DeclarationError,
    Result,
    all_cases,
    run,
    select,
)

__all__ = ["build_parser", "main", "render_text"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

_DESCRIPTION = (
    """\
Run cropcore's conformance suite against a backend (by name or alias) and print a
report: per category, the cases passed, failed, failed as the backend declared
(expected failures) and skipped, the worst error and the share of bit-identical
elements, and the tolerances applied. Exit status 0 if the backend conforms, 1 on
any unexpected failure, 2 on a usage error.

categories:
"""
    + "\n".join(f"  {name:12} {text}" for name, text in CATEGORIES.items())
    + """

examples:
  cropcore conformance numpy
  cropcore conformance mybackend --category edge-cases --category gradients
  cropcore conformance mybackend -k '*nearest*' -v
  cropcore conformance torch --device cuda
  cropcore conformance mybackend --json > report.json
  cropcore conformance mybackend --isolate --timeout 60     # survive crashes and hangs
  cropcore conformance mybackend --plugin mybackend_plugin   # a plugin without an entry point
"""
)


def build_parser(prog: str = "cropcore conformance") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("backend", nargs="?", metavar="NAME", help="the backend to certify")
    parser.add_argument(
        "-c",
        "--category",
        action="append",
        choices=list(CATEGORIES),
        metavar="CATEGORY",
        help="run only this category (repeatable)",
    )
    parser.add_argument(
        "-k",
        "--select",
        action="append",
        metavar="PATTERN",
        help="run only cases whose id matches (fnmatch pattern or substring; repeatable)",
    )
    parser.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN",
        help="skip cases whose id matches (fnmatch pattern or substring; repeatable)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"hypothesis seed for the property cases (default {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        default=DEFAULT_MAX_EXAMPLES,
        metavar="N",
        help=f"examples per property case (default {DEFAULT_MAX_EXAMPLES})",
    )
    parser.add_argument(
        "--device",
        metavar="DEVICE",
        help="move every input to the backend's array library on this device "
        "(e.g. cuda, cuda:1) to certify that device path",
    )
    parser.add_argument(
        "--reference",
        default="numpy",
        metavar="NAME",
        help="the backend expected values come from where none were recorded (default numpy)",
    )
    parser.add_argument(
        "--no-shrink",
        action="store_true",
        help="report hypothesis's first failing example without shrinking it",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="a stale expected-failure declaration, or a declined call that the backend's "
        "BackendInfo claims to support, fails the run",
    )
    parser.add_argument(
        "--min-coverage",
        type=float,
        metavar="PERCENT",
        help="fail unless the backend ran at least this share of the cases (declined cases "
        "count as not run)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="run the cases in a worker process: a case on which the backend crashes, aborts or "
        "hangs fails by name and the run goes on",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --isolate: a case that gives no result in this time fails as hung (default 120)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        metavar="MODULE",
        help="import MODULE and register it as a backend plugin (repeatable); the worker "
        "processes of --isolate import it too",
    )
    parser.add_argument(
        "--slowest",
        type=int,
        default=5,
        metavar="N",
        help="list the N slowest cases at the end (default 5; 0: none)",
    )
    parser.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (shown on stderr when it is a terminal)",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--plain", action="store_true", help="plain text, even on a terminal")
    output.add_argument(
        "--list",
        action="store_true",
        help="list the selected case ids (no backend needed) and exit",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show every failure and skipped case in full"
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        default=25,
        metavar="N",
        help="failures to show in full (default 25; -v shows all)",
    )
    return parser


# --------------------------------------------------------------------------------------------------
# Rendering


def _list(args: argparse.Namespace, out: IO[str]) -> int:
    cases = select(all_cases(), args.category, args.select, args.exclude)
    for case in cases:
        out.write(
            f"{case.id}\t{case.source}\t{case.description}\n" if args.verbose else f"{case.id}\n"
        )
    return EXIT_OK


def main(argv: Sequence[str] | None = None, prog: str = "cropcore conformance") -> int:
    """Run ``cropcore conformance`` with ``argv``; return the exit status."""
    parser = build_parser(prog)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    out, err = sys.stdout, sys.stderr
    try:
        return _main(parser, args, out, err, prog)
    except BrokenPipeError:  # `cropcore conformance --list | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE


def _main(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    out: IO[str],
    err: IO[str],
    prog: str,
) -> int:
    if args.list:
        return _list(args, out)
    if not args.backend:
        parser.print_usage(err)
        err.write(f"{prog}: error: name the backend to certify (cropcore backends lists them)\n")
        return EXIT_USAGE
    if args.max_examples < 1:
        err.write(f"{prog}: error: --max-examples must be at least 1\n")
        return EXIT_USAGE
    if args.min_coverage is not None and not 0 <= args.min_coverage <= 100:
        err.write(f"{prog}: error: --min-coverage must be a percentage from 0 to 100\n")
        return EXIT_USAGE
    if args.timeout is not None and (not args.isolate or args.timeout <= 0):
        err.write(f"{prog}: error: --timeout takes a positive number of seconds, with --isolate\n")
        return EXIT_USAGE
    progress = (
        _Progress(err) if not args.no_progress and hasattr(err, "isatty") and err.isatty() else None
    )
    try:
        report = run(
            args.backend,
            categories=args.category,
            patterns=args.select,
            exclude=args.exclude,
            seed=args.seed,
            max_examples=args.max_examples,
            device=args.device,
            shrink=not args.no_shrink,
            reference=args.reference,
            strict=args.strict,
            min_coverage=None if args.min_coverage is None else args.min_coverage / 100,
            isolate=args.isolate,
            timeout=args.timeout,
            plugins=args.plugin or (),
            on_start=progress.start if progress else None,
            on_result=progress.update if progress else None,
        )
    except (BackendError, DeclarationError, IsolationError, ValueError, ImportError) as exc:
        from cropcore.registry import registry

        backend = registry.get(args.backend)
        err.write(f"{prog}: error: {' '.join(str(exc).split())}\n")
        return EXIT_FAILURE if backend is not None and backend.status == "broken" else EXIT_USAGE
    finally:
        if progress is not None:
            progress.close()
    if args.json:
        json.dump(_finite(report.to_dict()), out, indent=2, default=str)
        out.write("\n")
    elif not args.plain and _rich_terminal(out):
        render_rich(report, out, args.verbose, args.max_failures, args.slowest)
    else:
        out.write(render_text(report, args.verbose, args.max_failures, slowest=args.slowest))
    return report.exit_code


class _Progress:
    """A one-line progress bar on a terminal: cases done, failures so far, the current case."""

    def __init__(self, stream: IO[str], interval: float = 0.1) -> None:
        self.stream, self.interval = stream, interval
        self.total = self.done = self.failed = 0
        self.shown = -math.inf
        self.width = 0

    def start(self, cases: Sequence[Any]) -> None:
        self.total = len(cases)

    def update(self, result: Result) -> None:
        self.done += 1
        self.failed += result.status == "failed"
        now = time.monotonic()
        if now - self.shown < self.interval and self.done < self.total:
            return
        self.shown = now
        columns = shutil.get_terminal_size((80, 24)).columns
        filled = 20 * self.done // max(self.total, 1)
        text = (
            f"[{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total}"
            f"{f', {self.failed} failed' if self.failed else ''}  {result.id}"
        )[: columns - 1]
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def close(self) -> None:
        if self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as strings ("inf", "nan"), so the JSON is strict."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _rich_terminal(out: IO[str]) -> bool:
    if not (hasattr(out, "isatty") and out.isatty()):
        return False
    import importlib.util

    return importlib.util.find_spec("rich") is not None
