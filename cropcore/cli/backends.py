"""``cropcore backends``: every installed backend, whether it can run here, and why not.

Requirements: ``--json`` needs neither rich nor Pillow; the table needs rich (the ``cli`` extra).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import cropcore
from cropcore.cli.errors import EXIT_OK, require

HELP = """\
List every installed cropcore backend: its name and aliases, version, status
(available, unavailable or broken), array library, devices, and why it cannot
run. Each backend is probed, which may import its framework (torch, numba, CuPy).
"""

EPILOG = """examples:
  cropcore backends
  cropcore backends --json | python -m json.tool
"""


NAME = "backends"
SUMMARY = "list the installed backends and whether they can run"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cropcore backends``."""
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Run ``cropcore backends``; return the exit status."""
    found = cropcore.backends(probe=True)
    if args.json:
        payload = {"cropcore": cropcore.__version__, "backends": [b.as_dict() for b in found]}
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    require("rich")
    from rich.console import Console

    console = Console()
    _print_table(console, found)
    if not found:
        console.print("No backend is installed: pip install cropcore installs the numpy backend.")
    return EXIT_OK


#: The reason column is left out (and the reasons listed under the table) when the terminal
#: leaves it fewer characters than this.
MIN_REASON_WIDTH = 20


def _print_table(console: Any, found: list[Any]) -> None:
    """The table, fitted to the console: the short columns are never wrapped, the reasons wrap at
    spaces (or go under the table on a narrow terminal), and each install command is printed
    whole, on a line of its own, under the table."""
    from rich.markup import escape
    from rich.table import Table

    colours = {"available": "green", "installed": "cyan", "unavailable": "yellow", "broken": "red"}
    rows, reasons, hints = [], [], []
    for b in found:
        reason, hint = _split_hint(b.reason, b.install_hint)
        rows.append(
            (
                b.name,
                ", ".join(b.aliases),
                b.version,
                b.status,
                b.info.array_library if b.info else "",
                ", ".join(b.devices),
            )
        )
        reasons.append(reason)
        if hint:
            hints.append((b.name, hint))
    names = ("name", "aliases", "version", "status", "library", "devices")
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]
    # Each column takes its width and 3 characters of padding and border; one more closes the box.
    left = console.width - sum(w + 3 for w in widths) - 4
    if left < 0:  # too narrow for the short columns: a list, each backend on its own lines
        for row, reason in zip(rows, reasons, strict=True):
            name, aliases, version, status, library, devices = row
            text = f"{name}{f' (alias {aliases})' if aliases else ''} {version}".rstrip()
            text += f": {status}, {library} arrays on {devices}{f'; {reason}' if reason else ''}"
            console.print(text, markup=False, highlight=False)  # wrapped at spaces
        _print_hints(console, hints)
        return
    inline = left >= MIN_REASON_WIDTH or not any(reasons)
    table = Table(title="cropcore backends")
    for name in names:
        table.add_column(name, no_wrap=True)
    if inline:
        table.add_column("reason", overflow="fold", min_width=min(MIN_REASON_WIDTH, 6))
    for row, reason in zip(rows, reasons, strict=True):
        cells = [escape(cell) for cell in row]  # plugin text, e.g. "[cupy]": not markup
        cells[3] = f"[{colours.get(row[3], 'white')}]{cells[3]}[/]"
        table.add_row(*cells, *([escape(reason)] if inline else []))
    console.print(table)
    if not inline:
        for row, reason in zip(rows, reasons, strict=True):
            if reason:
                console.print(f"{row[0]}: {reason}", markup=False, highlight=False)
    _print_hints(console, hints)


def _print_hints(console: Any, hints: list[tuple[str, str]]) -> None:
    for name, hint in hints:
        # soft_wrap: never broken by rich, so the command can be copied as printed.
        console.print(f"install {name}: {hint}", markup=False, highlight=False, soft_wrap=True)


def _split_hint(reason: str, hint: str) -> tuple[str, str]:
    """``reason`` without the install command it ends with, and the command ("" if none)."""
    if not hint or hint not in reason:
        return reason, ""
    head = reason[: reason.index(hint)].rstrip()
    for joint in ("; install it with:", "; install with:", ". Install with:", ":", ";"):
        if head.endswith(joint):
            head = head[: -len(joint)].rstrip()
            break
    return head, hint
