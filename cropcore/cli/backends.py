"""``cropcore backends``: every installed backend, whether it can run here, and why not.

Requirements: ``--json`` needs neither rich nor Pillow; the table needs rich (the ``cli`` extra).
"""

from __future__ import annotations

import argparse
import json

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
    from rich.markup import escape
    from rich.table import Table

    colours = {"available": "green", "installed": "cyan", "unavailable": "yellow", "broken": "red"}
    table = Table(title="cropcore backends")
    for column in ("name", "aliases", "version", "status", "library", "devices", "reason"):
        table.add_column(column, overflow="fold")
    for b in found:
        table.add_row(
            escape(b.name),
            escape(", ".join(b.aliases)),
            escape(b.version),
            f"[{colours.get(b.status, 'white')}]{b.status}[/]",
            escape(b.info.array_library if b.info else ""),
            escape(", ".join(b.devices)),
            escape(b.reason),  # plugin text, e.g. 'pip install "cropcore[cupy]"': not markup
        )
    console = Console()
    console.print(table)
    if not found:
        console.print("No backend is installed: pip install cropcore installs the numpy backend.")
    return EXIT_OK
