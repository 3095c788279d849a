"""A whole benchmark run: its configuration, the run itself, and the report it gives.

Requirements: NumPy and cropcore only (the implementations import their frameworks).
"""

from __future__ import annotations

import datetime
import os
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import cropcore
from cropcore.bench.implementations import Implementation, implementations_for
from cropcore.bench.machine import machine_info
from cropcore.bench.timing import (
    COPY_BYTES,
    CopyBandwidth,
    Result,
    json_safe,
    measure_copy_bandwidth,
    time_case,
)
from cropcore.bench.workloads import BYTE_MODEL, OPS, Workload

__all__ = [
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_REPEAT",
    "DEFAULT_WARMUP",
    "JSON_SCHEMA",
    "BenchConfig",
    "Report",
    "case_steps",
    "run_benchmark",
]

#: Version of the JSON file's layout.
JSON_SCHEMA = "cropcore-bench/1"
DEFAULT_REPEAT = 30
DEFAULT_WARMUP = 3
#: Seconds of timed rounds per workload and op after which no new round starts (``--max-seconds``).
DEFAULT_MAX_SECONDS = 60.0


@dataclass
class BenchConfig:
    """What to run.

    Attributes:
        workloads: the workloads, in order.
        ops: the ops, among :data:`OPS`.
        backends: cropcore backend names (``None``: every available one on the CPU).
        repeat: timed rounds per workload and op.
        warmup: untimed calls per implementation first (at least 1).
        max_seconds: no new round starts once a case's rounds have taken this long (but at
            least :data:`MIN_ROUNDS` run).
        references: whether to time TensorFlow and torchvision where they are installed.
        copy_bytes: size of the arrays of the copy-bandwidth measurement.
    """

    workloads: list[Workload]
    ops: list[str] = field(default_factory=lambda: list(OPS))
    backends: list[str] | None = None
    repeat: int = DEFAULT_REPEAT
    warmup: int = DEFAULT_WARMUP
    max_seconds: float = DEFAULT_MAX_SECONDS
    references: bool = True
    copy_bytes: int = COPY_BYTES

    def command(self) -> str:
        """The ``cropcore bench`` command line that reruns this configuration."""
        parts = ["cropcore", "bench"]
        named = [w.name for w in self.workloads if w.name != "custom"]
        if named:
            parts += ["--workloads", *named]
        for w in self.workloads:
            if w.name == "custom":
                parts += ["--shape", ",".join(map(str, w.image_shape)), "--boxes"]
                parts += [str(w.num_boxes), "--crop", ",".join(map(str, w.crop_size))]
                parts += ["--dtype", w.dtype, "--box-kind", w.box_kind]
        parts += ["--ops", *self.ops]
        if self.backends is not None:
            parts += ["--backends", *self.backends]
        parts += ["--repeat", str(self.repeat), "--warmup", str(self.warmup)]
        parts += ["--max-seconds", f"{self.max_seconds:g}"]
        if self.copy_bytes != COPY_BYTES:
            parts += ["--copy-mib", f"{self.copy_bytes / 2**20:g}"]
        if not self.references:
            parts.append("--no-reference")
        return shlex.join(parts)


@dataclass
class Report:
    """A finished run: the results and everything needed to read them."""

    config: BenchConfig
    results: list[Result]
    copy: CopyBandwidth
    machine: dict[str, Any]
    implementations: list[Implementation]
    notes: list[str]
    started: str
    seconds: float

    def tf_median(self, workload: str, op: str) -> float | None:
        """TensorFlow's median on this case, if it ran."""
        for r in self.results:
            if (r.workload, r.op, r.implementation) == (workload, op, "tensorflow") and r.times:
                return r.median
        return None

    def baseline(self, workload: str, op: str) -> tuple[str, float] | None:
        """What the "vs TF/ref" ratios divide: ``(label, median seconds)``, if it ran.

        crop_and_resize workloads: TensorFlow's median. roi_align workloads: the faster
        reference (ONNX Runtime, torchvision) on this op; for the image gradient, where no
        reference's gradient ran (ONNX has none), the faster reference's forward on the same
        workload (docs/decisions.md).
        """
        family = {w.name: w.family for w in self.config.workloads}.get(workload)
        if family != "roi_align":
            tf_median = self.tf_median(workload, op)
            return ("tensorflow", tf_median) if tf_median else None
        for wanted, suffix in ((op, ""), ("forward", " forward")):
            timed = [
                r
                for r in self.results
                if (r.workload, r.op, r.kind) == (workload, wanted, "reference") and r.times
            ]
            if timed:
                fastest = min(timed, key=lambda r: r.median)
                return fastest.implementation + suffix, fastest.median
        return None

    @property
    def ok(self) -> bool:
        """Every cropcore backend ran and matched its reference bit for bit."""
        return all(
            not r.error and r.identical is not False for r in self.results if r.kind == "cropcore"
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON file's content."""
        return json_safe(
            {
                "schema": JSON_SCHEMA,
                "cropcore": cropcore.__version__,
                "started": self.started,
                "seconds": self.seconds,
                "command": self.config.command(),
                "argv": list(sys.argv),
                "settings": {
                    "repeat": self.config.repeat,
                    "warmup": self.config.warmup,
                    "ops": self.config.ops,
                    "backends": self.config.backends,
                    "references": self.config.references,
                    "statistics": "median of the rounds; spread = interquartile range "
                    "(75th - 25th percentile); ratio_to_tensorflow = TF median / median; "
                    "baseline.ratio = the baseline's median / median (crop_and_resize: "
                    "TensorFlow; roi_align: the faster reference on the op, and for grad_image "
                    "without a reference gradient, the faster reference's forward)",
                    "byte_model": BYTE_MODEL,
                },
                "machine": self.machine,
                "copy_bandwidth": self.copy.as_dict(),
                "implementations": [
                    {"name": i.name, "kind": i.kind, "ops": list(i.ops), "note": i.note}
                    for i in self.implementations
                ],
                "workloads": [w.as_dict() for w in self.config.workloads],
                "results": [self._result_dict(r) for r in self.results],
                "notes": self.notes,
                "ok": self.ok,
            }
        )

    def _result_dict(self, r: Result) -> dict[str, Any]:
        fields = r.as_dict(self.tf_median(r.workload, r.op), self.copy.gbps)
        baseline = self.baseline(r.workload, r.op)
        fields["baseline"] = (
            {
                "against": baseline[0],
                "median_s": baseline[1],
                "ratio": baseline[1] / r.median if r.times else None,
            }
            if baseline
            else None
        )
        return fields


def case_steps(config: BenchConfig, implementations: Sequence[Implementation]) -> int:
    """How many steps :func:`run_benchmark` reports through ``on_step`` (a progress bar's total):
    one for the copy bandwidth, one per warm-up of an implementation, one per round."""
    return 1 + sum(
        sum(impl.runs(workload, op) for impl in implementations) + config.repeat
        for workload in config.workloads
        for op in config.ops
        if op in workload.ops
    )


def run_benchmark(
    config: BenchConfig,
    on_step: Callable[[str, int], None] | None = None,
    *,
    implementations: Sequence[Implementation] | None = None,
    notes: list[str] | None = None,
) -> Report:
    """Measure the copy bandwidth, then time every workload and op of ``config``.

    Args:
        config: what to run.
        on_step: ``on_step(description, steps)``, called as the run goes by ``steps`` (0 or
            more) of the :func:`case_steps` in all.
        implementations: what to time (default: :func:`implementations_for` ``config``).
        notes: remarks gathered so far (extended in place, and kept in the report).

    Returns:
        The report: results in workload, op, implementation order.
    """
    notes = [] if notes is None else notes
    if implementations is None:
        implementations = implementations_for(config, notes)
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    clock = time.perf_counter()
    load_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    if on_step is not None:
        on_step("measuring the copy bandwidth", 0)
    copy = measure_copy_bandwidth(config.copy_bytes)
    if on_step is not None:
        on_step("measured the copy bandwidth", 1)
    results: list[Result] = []
    for workload in config.workloads:
        for op in config.ops:
            if op not in workload.ops:  # roi_align has no box gradient
                continue
            results += time_case(
                workload,
                op,
                implementations,
                repeat=config.repeat,
                warmup=config.warmup,
                max_seconds=config.max_seconds,
                on_step=on_step,
            )
    machine = machine_info()
    machine["load_average_start"] = load_start
    if any(impl.name == "numba" for impl in implementations):
        notes.append(
            "numba compiles each kernel on its first call (or loads it from its disk "
            "cache): that happens in the warm-up, outside the timings"
        )
    if any(impl.name == "tensorflow" for impl in implementations) and "grad_image" in config.ops:
        notes.append(
            "TensorFlow's image gradient adds from several threads without "
            "synchronisation, so its bits vary from run to run: gradients are compared "
            "with the numpy backend's, and TF's own may differ"
        )
    return Report(
        config=config,
        results=results,
        copy=copy,
        machine=machine,
        implementations=list(implementations),
        notes=notes,
        started=started,
        seconds=time.perf_counter() - clock,
    )
