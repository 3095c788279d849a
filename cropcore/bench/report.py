"""The outputs of a run: the table (rich), the JSON file and the chart (matplotlib).

Requirements: rich and matplotlib are imported by the functions that use them. Without
matplotlib, :func:`write_chart` raises :class:`~cropcore.bench.errors.MissingDependencyError`
naming ``pip install "cropcore[bench]"``; ``cropcore bench`` then writes the table and the JSON
file and says so once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

import cropcore
from cropcore.bench.errors import MissingDependencyError
from cropcore.bench.run import Report
from cropcore.bench.timing import Result
from cropcore.bench.workloads import BYTE_MODEL

__all__ = ["print_report", "write_chart", "write_json"]


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return ""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms" if seconds < 0.1 else f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _check(result: Result, compared: bool) -> str:
    if result.error:
        return "[red]error[/]"
    if not compared:
        difference = result.max_abs_difference
        return "not compared" + (f" (max |Δ| {difference:.2g})" if difference is not None else "")
    if result.checked_against is None:
        return "reference" if result.times else ""
    difference = result.max_abs_difference
    detail = f" (max |Δ| {difference:.2g})" if difference is not None else " (shape)"
    if result.identical:
        return f"[green]= {result.checked_against}[/]"
    if result.kind != "cropcore":  # TF's threaded image gradient: see the notes
        return f"differs from {result.checked_against}{detail}"
    return f"[red]DIFFERS[/] from {result.checked_against}{detail}"


def print_report(report: Report, console: Any) -> None:
    """Print the machine, the table and the notes on a rich ``console``."""
    from rich.markup import escape
    from rich.table import Table

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    machine = report.machine
    versions = ", ".join(f"{k} {v}" for k, v in machine["versions"].items())
    say(f"machine: {machine['cpu']}, {machine['cores']} cores; {versions}")
    if "numba_threading_layer" in machine:
        say(
            f"numba: threading layer {machine['numba_threading_layer']}, "
            f"{machine['numba_threads']} threads"
        )
    for key, when in (("load_average_start", "start"), ("load_average", "end")):
        if machine.get(key):
            say(
                f"load average (1, 5, 15 min) at the {when}: "
                + " ".join(f"{v:.2f}" for v in machine[key])
            )
    say(
        f"copy bandwidth: {report.copy.gbps:.1f} GB/s (numpy.copyto on one thread, "
        f"{report.copy.nbytes // 2**20} MiB arrays, bytes read + written)"
    )
    for workload in report.config.workloads:
        say(f"{workload.name}: {workload.description}")

    compared = {impl.name: impl.compared for impl in report.implementations}
    table = Table(
        title=f"cropcore bench: seconds per call, interleaved rounds after "
        f"{report.config.warmup} warm-up call(s) each",
    )
    for name in ("workload", "op", "implementation"):
        table.add_column(name)
    for name in ("rounds", "median", "IQR", "min", "vs TF/ref", "GB/s", "of copy"):
        table.add_column(name, justify="right")
    table.add_column("bit check")
    previous = None
    for r in report.results:
        if previous is not None and (r.workload, r.op) != previous:
            table.add_section()
        previous = (r.workload, r.op)
        if r.error:
            absent = r.kind == "reference" and r.error.startswith("absent: ")
            table.add_row(
                r.workload, r.op, escape(r.implementation), "", "", "", "", "", "", "",
                f"[yellow]{escape(r.error[:160])}[/]" if absent
                else f"[red]error:[/] {escape(r.error[:100])}",
            )  # fmt: skip
            continue
        baseline = report.baseline(r.workload, r.op)
        ratio = f"{baseline[1] / r.median:.2f}x" if baseline and r.times else ""
        share = r.gbps / report.copy.gbps
        table.add_row(
            r.workload,
            r.op,
            escape(r.implementation),
            str(len(r.times)),
            _duration(r.median),
            _duration(r.iqr),
            _duration(min(r.times)) if r.times else "",
            ratio,
            f"{r.gbps:.3g}" if r.times else "",
            f"{share * 100:.2g}%" if r.times else "",
            _check(r, compared.get(r.implementation, True)),
        )
    console.print(table)
    say(
        "median: of the rounds; IQR: interquartile range (75th - 25th percentile) of the "
        "per-call times; vs TF/ref: TensorFlow's median / this median (above 1: faster than TF); "
        "on roi_align workloads, the faster reference's (ONNX Runtime, torchvision) median / this "
        "median, and for grad_image, where no reference gradient ran, the faster reference's "
        "forward median / this median; "
        "GB/s: the byte model's bytes per call / median; of copy: that GB/s as a share of the "
        "copy bandwidth above."
    )
    say(f"byte model: {BYTE_MODEL}.")
    for workload in report.config.workloads:
        for op in workload.ops:
            baseline = report.baseline(workload.name, op)
            if workload.family == "roi_align" and op in report.config.ops and baseline:
                say(f"{workload.name} {op}: ratios to {baseline[0]}")
    for note in report.notes:
        say(f"note: {note}")


def write_json(report: Report, path: str | os.PathLike[str]) -> Path:
    """Write the report as JSON (every raw timing, the statistics, the machine) to ``path``."""
    path = Path(path)
    path.write_text(json.dumps(report.as_dict(), indent=2, allow_nan=False) + "\n")
    return path


def _chart_data(report: Report) -> tuple[list[str], list[str], dict[str, list[float]], str]:
    """Case labels, implementation names, one value per case and implementation, the axis label."""
    cases = list(dict.fromkeys((r.workload, r.op) for r in report.results))
    with_tf = any(report.baseline(*case) for case in cases)
    names = [
        impl.name
        for impl in report.implementations
        if not (with_tf and impl.name == "tensorflow")
        and any(r.implementation == impl.name for r in report.results)
    ]
    values: dict[str, list[float]] = {name: [] for name in names}
    timings = {(r.workload, r.op, r.implementation): r for r in report.results}
    for case in cases:
        baseline = report.baseline(*case)
        for name in names:
            r = timings.get((*case, name))
            if r is None or not r.times:
                values[name].append(math.nan)
            elif with_tf:
                values[name].append(baseline[1] / r.median if baseline else math.nan)
            else:
                values[name].append(r.median * 1e3)
    label = (
        "speed-up over TensorFlow (TF median / median, log scale; > 1: faster; roi_align: "
        "over the faster reference)"
        if with_tf
        else "median time per call, ms (log scale)"
    )
    return [f"{w} {op}" for w, op in cases], names, values, label


def _chart_title(report: Report) -> str:
    return f"cropcore {cropcore.__version__} bench: {report.machine['cpu']}, {report.machine['cores']} cores"


def _import_matplotlib() -> tuple[Any, Any] | None:
    """matplotlib's ``Figure`` and ``FigureCanvasAgg``, or ``None`` where it is not installed."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return Figure, FigureCanvasAgg


def write_chart(report: Report, path: str | os.PathLike[str]) -> Path:
    """Draw a grouped horizontal bar chart of the report as a PNG at ``path``, with matplotlib.

    With TensorFlow's timings, each bar is an implementation's speed-up over TF on one workload and
    op; without them, its median time.

    Returns:
        The path written.

    Raises:
        MissingDependencyError: matplotlib is not installed (nothing is written); the message
            says ``pip install "cropcore[bench]"``.
    """
    path = Path(path)
    matplotlib = _import_matplotlib()
    if matplotlib is None:
        raise MissingDependencyError(
            'the chart needs matplotlib, which is not installed: pip install "cropcore[bench]" '
            "(or pass --no-chart)"
        )
    cases, names, values, label = _chart_data(report)
    _matplotlib_chart(*matplotlib, cases, names, values, label, _chart_title(report), path)
    return path


def _matplotlib_chart(
    Figure: Any,
    FigureCanvasAgg: Any,
    cases: list[str],
    names: list[str],
    values: dict[str, list[float]],
    label: str,
    title: str,
    path: Path,
) -> None:
    # The object-oriented API on an Agg canvas: no pyplot, no change to the user's global backend.
    bar = 0.8 / max(1, len(names))
    figure = Figure(figsize=(9, 1.2 + 0.3 * len(cases) * max(1, len(names))), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(cases))
    for i, name in enumerate(names):
        offsets = positions - 0.4 + bar * (i + 0.5)
        heights = np.asarray(values[name], dtype=float)
        bars = axes.barh(offsets, np.nan_to_num(heights, nan=0.0), height=bar, label=name)
        axes.bar_label(
            bars,
            labels=["" if math.isnan(v) else f"{v:.3g}" for v in heights],
            fontsize=7,
            padding=2,
        )
    axes.set_yticks(positions, cases)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(lambda value, _: f"{value:g}")  # 0.1, not 10^-1
    if "TensorFlow" in label:
        axes.axvline(1.0, color="black", linewidth=0.8)
    axes.set_xlabel(label)
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.savefig(path, dpi=120)
