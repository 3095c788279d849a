"""The conformance report as text: the plain table and the rich one, with the header, the
coverage block, the slowest cases and the failure details (what ``cropcore conformance`` prints).
"""

from __future__ import annotations

from collections import Counter
from typing import IO

from cropcore_conformance.compare import TOLERANCES
from cropcore_conformance.suite import (
    CategorySummary,
    Report,
)

__all__ = ["render_rich", "render_text"]


def _worst(s: CategorySummary) -> str:
    if s.max_abs == 0:
        return "0"
    if s.max_abs == float("inf"):
        return "NaN/inf mismatch"
    return f"{s.max_abs:.3g} ({s.max_ulp} ulp)" if s.max_ulp else f"{s.max_abs:.3g}"


def _identical(s: CategorySummary) -> str:
    share = s.bit_identical
    if share is None:
        return "-"
    if s.identical == s.elements:
        return "100%"
    return f"{100 * share:.3f}%"


def _tolerance(s: CategorySummary) -> str:
    if not s.tolerances:
        return "-"
    return ", ".join(
        name if len(s.tolerances) == 1 else f"{name} ({n})" for name, n in s.tolerances.items()
    )


_COLUMNS = (
    "category",
    "cases",
    "passed",
    "failed",
    "xfail",
    "skipped",
    "worst error",
    "bit-identical",
    "tolerance",
)


def _rows(report: Report) -> list[tuple[str, ...]]:
    rows = []
    for s in [*report.by_category(), report.total()]:
        rows.append(
            (
                s.name,
                str(s.cases),
                str(s.passed),
                str(s.failed),
                str(s.xfailed),
                str(s.skipped),
                _worst(s),
                _identical(s),
                _tolerance(s),
            )
        )
    return rows


def _header(report: Report) -> list[str]:
    version = f" {report.backend_version}" if report.backend_version else ""
    where = f" ({report.distribution})" if report.distribution else ""
    lines = [f"cropcore conformance: backend {report.backend!r}{version}{where}"]
    if report.device:
        lines.append(f"  inputs moved to: {report.device}")
    lines.append(
        "  expected values: tf-vectors from " + report.provenance + "; tf-tests from "
        "TensorFlow's and Keras's unit tests; roi-align from ONNX Runtime's RoiAlign (recorded "
        "by scripts/record_roi_align.py) and the reference; other categories from the reference "
        f"backend {report.reference!r}, itself held bit-exact to TensorFlow by tf-vectors and to "
        "ONNX Runtime by roi-align"
    )
    lines.append(
        f"  hypothesis: seed {report.seed}, {report.max_examples} examples per property case"
    )
    used = sorted({r.tolerance for r in report.results if r.status != "skipped"} or {"exact"})
    lines.append("  tolerances (in units of the result dtype's epsilon where not exact):")
    lines += [f"    {name}: {TOLERANCES[name].description}" for name in used]
    if report.tolerances:
        lines.append(
            "  declared by the backend: "
            + ", ".join(f"{p} -> {t}" for p, t in report.tolerances.items())
        )
    if report.isolation:
        lines.append(f"  isolation: {report.isolation}")
    if report.selected:
        lines.append("  partial run: only the selected categories and cases")
    return lines


def _coverage(report: Report) -> list[str]:
    """Cases run and declined, per category (declined calls are skips, not passes)."""
    summaries = [*report.by_category(), report.total()]
    width = max(len(s.name) for s in summaries)
    lines = ["ran on the backend / declined by it (a declined case is not a pass):"]
    for s in summaries:
        line = f"  {s.name:{width}}  {s.run:5} run  {s.declined:5} declined"
        if s.claimed:
            line += f"  ({s.claimed} of what its BackendInfo claims to support)"
        lines.append(line)
    coverage = report.total().coverage
    if report.min_coverage is not None and coverage is not None:
        lines.append(
            f"  coverage {100 * coverage:.1f}% of the cases not skipped for other reasons "
            f"(--min-coverage {100 * report.min_coverage:g}%)"
        )
    return lines


def _slowest(report: Report, n: int) -> list[str]:
    if n <= 0 or not report.results:
        return []
    slowest = sorted(report.results, key=lambda r: r.seconds, reverse=True)[:n]
    return ["slowest cases:"] + [f"  {r.seconds:8.2f} s  {r.id}" for r in slowest]


def _details(report: Report, verbose: bool, max_failures: int) -> list[str]:
    lines: list[str] = []
    failures = report.failures
    if failures:
        lines.append(f"unexpected failures ({len(failures)}):")
        shown = failures if verbose else failures[: max(max_failures, 0)]
        for r in shown:
            lines.append(f"  FAILED {r.id}")
            lines.append(f"         {r.message}")
        if len(shown) < len(failures):
            by_category = Counter(r.category for r in failures[len(shown) :])
            lines.append(
                f"  ... and {len(failures) - len(shown)} more ("
                + ", ".join(f"{c}: {n}" for c, n in by_category.items())
                + ")"
                + ("; -v shows all" if shown else "")
            )
    if report.expected_failures:
        lines.append("expected failures declared by the backend:")
        status = report.declaration_status()
        for pattern, reason in report.expected_failures.items():
            n = sum(
                1
                for r in report.results
                if r.declared == reason and r.status == "xfailed" and _matches(r.id, pattern)
            )
            state = {
                "matched": f"{n} case{'s' if n != 1 else ''} failed as declared",
                "stale": "STALE: no longer matches any failure; remove or update it",
                "not run": "no matching case in this partial run",
            }[status[pattern]]
            lines.append(f"  {pattern}: {reason}  [{state}]")
        if verbose:
            lines += [
                f"  XFAIL {r.id}: {r.message}" for r in report.results if r.status == "xfailed"
            ]
        passes = report.unexpected_passes
        if passes:
            lines.append(
                f"  declared but passed ({len(passes)}): "
                + ", ".join(r.id for r in passes[:10])
                + (" ..." if len(passes) > 10 else "")
            )
    claimed = report.claimed_declines
    if claimed:
        fails = "fail the run" if report.strict else "would fail the run with --strict"
        lines.append(
            f"declined although its BackendInfo claims to support them ({len(claimed)}; these "
            f"{fails}):"
        )
        shown = claimed if verbose else claimed[: max(max_failures, 0)]
        lines += [f"  DECLINED {r.id}: {r.message}" for r in shown]
        if len(shown) < len(claimed):
            lines.append(f"  ... and {len(claimed) - len(shown)} more")
    if report.coverage_shortfall:
        lines.append(f"COVERAGE: {report.coverage_shortfall}")
    skipped = [r for r in report.results if r.status == "skipped"]
    if skipped:
        lines.append(f"skipped ({len(skipped)}):")
        for reason, n in Counter(r.message for r in skipped).most_common():
            lines.append(f"  {n:5} {reason}")
        if verbose:
            lines += [f"  SKIPPED {r.id}" for r in skipped]
    return lines


def _matches(case_id: str, pattern: str) -> bool:
    import fnmatch

    return fnmatch.fnmatchcase(case_id, pattern)


def _footer(report: Report, exit_status: bool = True) -> str:
    t = report.total()
    status = f" (exit status {report.exit_code})" if exit_status else ""
    return (
        f"{report.verdict}: backend {report.backend!r}: {t.passed} passed, {t.failed} failed, "
        f"{t.xfailed} expected failures, {t.skipped} skipped, {len(report.stale)} stale "
        f"declarations in {report.seconds:.1f} s{status}"
    )


def render_text(
    report: Report,
    verbose: bool = False,
    max_failures: int = 25,
    exit_status: bool = True,
    slowest: int = 5,
) -> str:
    """The report as plain text (``exit_status``: end with the command's exit status;
    ``slowest``: list that many of the slowest cases)."""
    rows = [_COLUMNS, *_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    numeric = {1, 2, 3, 4, 5}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in numeric else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    table = [line(rows[0]), "  ".join("-" * w for w in widths)]
    table += [line(r) for r in rows[1:-1]]
    table += ["  ".join("-" * w for w in widths), line(rows[-1])]
    parts = [*_header(report), "", *table, "", *_coverage(report), ""]
    for block in (_details(report, verbose, max_failures), _slowest(report, slowest)):
        if block:
            parts += [*block, ""]
    parts.append(_footer(report, exit_status))
    return "\n".join(parts) + "\n"


def render_rich(
    report: Report,
    file: IO[str],
    verbose: bool = False,
    max_failures: int = 25,
    slowest: int = 5,
) -> None:
    """The report as a rich table (for terminals)."""
    from rich.console import Console
    from rich.table import Table

    rows = _rows(report)
    widths = [max(len(name), *(len(row[i]) for row in rows)) for i, name in enumerate(_COLUMNS)]
    console = Console(file=file, highlight=False)
    needed = sum(widths) + 3 * len(widths) + 1  # the table never wraps a cell
    if console.width < needed:
        console = Console(file=file, highlight=False, width=needed)
    for text in _header(report):
        console.print(text, markup=False)
    table = Table(show_lines=False)
    for i, (name, width) in enumerate(zip(_COLUMNS, widths, strict=True)):
        table.add_column(
            name, justify="right" if 1 <= i <= 5 else "left", no_wrap=True, min_width=width
        )
    for row in rows[:-1]:
        style = "red" if row[3] != "0" else None
        table.add_row(*row, style=style)
    table.add_section()
    table.add_row(*rows[-1], style="bold")
    console.print(table)
    for text in [
        *_coverage(report),
        *_details(report, verbose, max_failures),
        *_slowest(report, slowest),
    ]:
        console.print(text, markup=False)
    colour = "green" if report.exit_code == 0 else "red"
    console.print(_footer(report), style=f"bold {colour}", markup=False)


# --------------------------------------------------------------------------------------------------
