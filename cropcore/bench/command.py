"""``cropcore bench``'s options and run: parsed options to a configuration, a run, the outputs.

Requirements: importing this imports no framework, nor rich nor matplotlib. The command needs
rich for its table and progress bar; the chart needs matplotlib (both in the ``bench`` extra).
:mod:`cropcore.cli.bench` adds it to the ``cropcore`` command, the one entry point.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from cropcore.bench.errors import BenchError, MissingDependencyError
from cropcore.bench.implementations import check_backends, implementations_for
from cropcore.bench.machine import memory_bytes
from cropcore.bench.report import print_report, write_chart, write_json
from cropcore.bench.run import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_REPEAT,
    DEFAULT_WARMUP,
    BenchConfig,
    case_steps,
    run_benchmark,
)
from cropcore.bench.timing import COPY_BYTES, MIN_ROUNDS
from cropcore.bench.workloads import (
    DEFAULT_WORKLOADS,
    OPS,
    WORKLOADS,
    Workload,
    custom_workload,
)
from cropcore.spec import IMAGE_DTYPES

__all__ = ["DESCRIPTION", "EPILOG", "QUICK", "add_arguments", "config_from_args", "run_command"]

#: What ``--quick`` sets: rounds, warm-up calls, copy-bandwidth array size.
QUICK = {"repeat": 3, "warmup": 1, "copy_bytes": 32 * 2**20}


def _ints(count: int, what: str) -> Callable[[str], tuple[int, ...]]:
    def parse(text: str) -> tuple[int, ...]:
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        try:
            values = tuple(int(p) for p in parts)
        except ValueError:
            values = ()
        if len(values) != count or any(v <= 0 for v in values):
            raise argparse.ArgumentTypeError(
                f"must be {count} positive integers {what} separated by commas, got {text!r}"
            )
        return values

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


DESCRIPTION = """\
Time crop_and_resize and its two gradients on every available cropcore backend,
side by side in one process, with TensorFlow's CPU kernel and torchvision's
roi_align as reference points where they are installed; on the roi_align
workloads (maskrcnn-7, maskrcnn-14), roi_align and its image gradient beside
ONNX Runtime's RoiAlign and torchvision's roi_align (a row says why either is
absent).

Every implementation is timed in interleaved rounds (one call each per round,
the order rotating) after warm-up calls that also pay any compilation (numba
compiles its kernels on first use). Prints a table of the median, the
interquartile range, the minimum, the ratio to TensorFlow (TF median / median),
the achieved GB/s and its share of this machine's copy bandwidth; writes a PNG
chart and a JSON file of every raw timing. Forward results are compared bit for
bit with TensorFlow's (or the numpy backend's), gradients with the numpy
backend's. Exit status 1 if a cropcore backend fails or differs.
"""

EPILOG = """workloads:
  roi           2x64x64x256 float32 feature map, 512 boxes -> 14x14
  augmentation  8x512x512x3 uint8 photos, 64 boxes -> 224x224
  tiny          1x16x16x1 float32, 4 boxes -> 7x7 (per-call overhead)
  maskrcnn-7    roi_align: 2x256x200x272 NCHW float32, 1000 boxes, scale 1/4,
                sampling_ratio 2, aligned -> 7x7 (forward, grad_image)
  maskrcnn-14   the same -> 14x14
  custom        --shape N,H,W,C [--boxes K] [--crop H,W] [--dtype D]
  (default: roi, augmentation and tiny; name the maskrcnn ones)

examples:
  cropcore bench
  cropcore bench --workloads tiny roi --repeat 10
  cropcore bench --shape 4,128,128,64 --boxes 300 --crop 7,7 --ops forward
  cropcore bench --workloads tiny --quick --backends numpy numba --out /tmp/bench
  cropcore bench --workloads maskrcnn-7 maskrcnn-14 --backends numba torch --repeat 10
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``cropcore bench``'s options to ``parser``."""
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=list(WORKLOADS),
        metavar="NAME",
        help=f"named workloads: {', '.join(WORKLOADS)} (default: {', '.join(DEFAULT_WORKLOADS)}, "
        "or none with --shape)",
    )
    parser.add_argument(
        "--ops", nargs="+", choices=OPS, metavar="OP", help=f"ops: {', '.join(OPS)} (default: all)"
    )
    parser.add_argument(
        "--backends",
        nargs="+",
        metavar="NAME",
        help="cropcore backends (default: every one available on the CPU)",
    )
    custom = parser.add_argument_group("custom workload")
    custom.add_argument(
        "--shape", type=_ints(4, "N,H,W,C"), metavar="N,H,W,C", help="image shape (NHWC)"
    )
    custom.add_argument(
        "--boxes", type=_positive_int, metavar="K", help="number of boxes (default: 100)"
    )
    custom.add_argument(
        "--crop", type=_ints(2, "H,W"), metavar="H,W", help="crop size (default: 14,14)"
    )
    custom.add_argument(
        "--dtype", choices=IMAGE_DTYPES, metavar="DTYPE",
        help=f"image dtype: {', '.join(IMAGE_DTYPES)} (default: float32)",
    )  # fmt: skip
    custom.add_argument(
        "--box-kind",
        choices=("roi", "augmentation"),
        help="roi: small boxes anywhere; augmentation: 30-100%% of each side (default: roi)",
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        metavar="N",
        help=f"timed rounds per case (default: {DEFAULT_REPEAT}; --quick: {QUICK['repeat']})",
    )
    parser.add_argument(
        "--warmup",
        type=_positive_int,
        metavar="N",
        help=f"untimed calls per implementation first, at least 1 (default: {DEFAULT_WARMUP}; "
        f"--quick: {QUICK['warmup']})",
    )
    parser.add_argument(
        "--max-seconds",
        type=_positive_float,
        default=DEFAULT_MAX_SECONDS,
        metavar="S",
        help="start no new round once a workload and op's rounds have taken S seconds, "
        f"after at least {MIN_ROUNDS} (default: {DEFAULT_MAX_SECONDS:g})",
    )
    parser.add_argument(
        "--copy-mib",
        type=_positive_float,
        metavar="MIB",
        help=f"size of the arrays of the copy-bandwidth measurement (default: "
        f"{COPY_BYTES // 2**20}; --quick: {QUICK['copy_bytes'] // 2**20})",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test: few rounds and warm-ups, a small copy-bandwidth measurement",
    )
    parser.add_argument(
        "--no-reference",
        "--no-tensorflow",
        dest="no_reference",
        action="store_true",
        help="leave TensorFlow and torchvision out",
    )
    parser.add_argument(
        "--out",
        default="cropcore-bench",
        metavar="DIR",
        help="output directory for bench.json and bench.png (default: ./cropcore-bench)",
    )
    parser.add_argument("--json", metavar="PATH", help="the JSON file (default: DIR/bench.json)")
    parser.add_argument("--chart", metavar="PATH", help="the PNG chart (default: DIR/bench.png)")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the chart")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """The configuration for parsed options (raises :class:`BenchError` for a bad combination)."""
    custom_options = {
        "--boxes": args.boxes,
        "--crop": args.crop,
        "--dtype": args.dtype,
        "--box-kind": args.box_kind,
    }
    workloads: list[Workload] = []
    if args.workloads or args.shape is None:
        names = args.workloads or DEFAULT_WORKLOADS
        workloads = [WORKLOADS[name] for name in dict.fromkeys(names)]
    if args.shape is not None:
        custom = custom_workload(
            args.shape,
            args.boxes or 100,
            args.crop or (14, 14),
            args.dtype or "float32",
            args.box_kind or "roi",
        )
        _check_fits_in_memory(custom)
        workloads.append(custom)
    else:
        given = [name for name, value in custom_options.items() if value is not None]
        if given:
            raise BenchError(
                f"argument {given[0]}: describes the custom workload; give --shape too"
            )
    quick = QUICK if args.quick else {}
    return BenchConfig(
        workloads=workloads,
        ops=list(dict.fromkeys(args.ops or OPS)),
        backends=check_backends(args.backends) if args.backends else None,
        repeat=args.repeat or quick.get("repeat", DEFAULT_REPEAT),
        warmup=args.warmup or quick.get("warmup", DEFAULT_WARMUP),
        max_seconds=args.max_seconds,
        references=not args.no_reference,
        copy_bytes=int(args.copy_mib * 2**20)
        if args.copy_mib
        else quick.get("copy_bytes", COPY_BYTES),
    )


def _check_fits_in_memory(workload: Workload) -> None:
    # The image, the gradient and a few results at once (each implementation's warm-up result).
    needed = workload.image_bytes + 4 * math.prod(workload.image_shape) + 5 * workload.crop_bytes
    memory = memory_bytes()
    if memory is not None and needed > memory // 2:
        raise BenchError(
            f"argument --shape: the custom workload needs about {needed / 1e9:.1f} GB "
            f"(image, gradient and results), more than half of this machine's "
            f"{memory / 1e9:.1f} GB"
        )


def run_command(args: argparse.Namespace) -> int:
    """Run ``cropcore bench`` with parsed options; return the exit status.

    Raises:
        BenchError: a bad option (``exit_code`` 2), or rich is missing (``exit_code`` 1).
    """
    try:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        raise MissingDependencyError(
            'cropcore bench needs rich, which is not installed: pip install "cropcore[bench]"'
        ) from None
    config = config_from_args(args)
    out = Path(args.out)
    json_path = Path(args.json) if args.json else out / "bench.json"
    chart_path = None if args.no_chart else Path(args.chart) if args.chart else out / "bench.png"
    for path in (json_path, chart_path):
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise BenchError(
                    f"{path.parent}: cannot create the output directory: {exc.strerror or exc}"
                ) from None

    console = Console(highlight=False)
    if not console.is_terminal:  # a pipe or a file: wide enough for the table's columns
        console = Console(highlight=False, width=max(console.width, 160))
    notes: list[str] = []
    implementations = implementations_for(config, notes)
    total = case_steps(config, implementations)
    progress_console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=progress_console,
        transient=True,
        disable=not progress_console.is_terminal,
    ) as progress:
        task = progress.add_task("cropcore bench", total=total)
        report = run_benchmark(
            config,
            lambda description, steps: progress.update(
                task, advance=steps, description=description
            ),
            implementations=implementations,
            notes=notes,
        )
    print_report(report, console)

    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True)

    written = [write_json(report, json_path)]
    if chart_path is not None:
        try:
            written.append(write_chart(report, chart_path))
        except MissingDependencyError as exc:  # the table and the JSON file are the results
            say(f"note: no chart: {exc}")
    for path in written:
        say(f"wrote {path.resolve()}")
    failed = [
        f"{r.implementation} ({r.workload} {r.op}: "
        + ("failed" if r.error else f"differs from {r.checked_against}")
        + ")"
        for r in report.results
        if r.kind == "cropcore" and (r.error or r.identical is False)
    ]
    if failed:
        say(f"FAILED: {', '.join(failed)}")
        return 1
    return 0
