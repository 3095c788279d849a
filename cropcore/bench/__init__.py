"""``cropcore bench``: every available backend side by side with TensorFlow's kernel, in one process.

roi_align workloads (``maskrcnn-7``, ``maskrcnn-14``) time roi_align and its image gradient on the
backends that implement it, beside ONNX Runtime's RoiAlign and torchvision's roi_align (and its
backward kernel) where they run; a reference that cannot run keeps its rows, saying why. Their
forward results are compared bit for bit with ONNX Runtime's, gradients with the numpy backend's;
their ratios are to the faster reference (for the image gradient without a reference gradient:
to the faster reference's forward).

Requirements:

- One entry point: the ``cropcore bench`` command (:mod:`cropcore.bench.command`, added to the
  ``cropcore`` command by :mod:`cropcore.cli.bench`); this package is its library.
- Importing it imports nothing but the standard library, NumPy and cropcore's core: TensorFlow,
  torch, torchvision, rich and matplotlib load inside the functions that use them, only when they
  are installed (the references are optional; the table needs rich, the chart matplotlib: both
  are in the ``bench`` extra, and without matplotlib the table and the JSON file are written and
  a note says how to get the chart).
- Fair timings: every implementation runs on the same inputs, in interleaved rounds (one call of
  each per round, the order rotating from round to round, the garbage collector off), after warm-up
  calls that also pay any compilation (Numba compiles its kernels on first use, or loads them from
  its disk cache), so that machine noise hits every implementation alike. Medians, never means.
- Every result is checked: forward results bit for bit against TensorFlow's when TensorFlow is
  installed (else against the numpy reference backend), gradients against the numpy backend
  (TensorFlow's multi-threaded image gradient adds from several threads without synchronisation,
  so its bits change from run to run). torchvision's ``roi_align`` is a reference point for speed
  only: its semantics differ, so it is not bit-compared.
- Outputs: a rich table (median, interquartile range, minimum, ratio to TensorFlow, achieved GB/s
  and its share of this machine's measured copy bandwidth), a PNG chart, a JSON file of every raw
  timing. Exit status 0, or 1 if a cropcore backend failed or disagreed with the reference.

The byte model (what "GB/s" counts, per call): the op's compulsory memory traffic, a lower bound.

- ``forward``: the crops written (float32) + the image pixels read, counted as
  ``min(image bytes, 4 corner reads per output sample)`` + boxes and box indices read;
- ``grad_image``: the incoming gradient read (float32, the crops' shape) + the image gradient
  written (float32, the image's shape) + boxes and box indices;
- ``grad_boxes``: the incoming gradient read + the image read (as for ``forward``) + boxes and box
  indices read + the box gradient written.

The copy bandwidth is that of ``numpy.copyto`` on one thread between two 256 MiB arrays (best of
several copies, read plus written bytes over the time): a multi-threaded kernel can exceed 100%.

The modules, in the order a run uses them: :mod:`~cropcore.bench.workloads` (the cases and the
byte model), :mod:`~cropcore.bench.implementations` (what is timed),
:mod:`~cropcore.bench.timing` (one case, checked and timed), :mod:`~cropcore.bench.machine`,
:mod:`~cropcore.bench.run` (the whole run and its report), :mod:`~cropcore.bench.report` (table,
JSON, chart) and :mod:`~cropcore.bench.command` (the options); errors in
:mod:`~cropcore.bench.errors`.
"""

from __future__ import annotations

from cropcore.bench.command import (
    DESCRIPTION,
    EPILOG,
    QUICK,
    add_arguments,
    config_from_args,
    run_command,
)
from cropcore.bench.errors import BenchError, MissingDependencyError
from cropcore.bench.implementations import (
    Implementation,
    absent_implementation,
    available_backends,
    check_backends,
    cropcore_implementation,
    implementations_for,
    onnxruntime_implementation,
    roi_align_rois,
    tensorflow_implementation,
    torchvision_implementation,
)
from cropcore.bench.machine import machine_info
from cropcore.bench.report import print_report, write_chart, write_json
from cropcore.bench.run import (
    DEFAULT_MAX_SECONDS,
    DEFAULT_REPEAT,
    DEFAULT_WARMUP,
    JSON_SCHEMA,
    BenchConfig,
    Report,
    case_steps,
    run_benchmark,
)
from cropcore.bench.timing import (
    COPY_BYTES,
    MIN_ROUNDS,
    CopyBandwidth,
    Result,
    measure_copy_bandwidth,
    reference_for,
    time_case,
)
from cropcore.bench.workloads import (
    BYTE_MODEL,
    DEFAULT_WORKLOADS,
    OPS,
    ROI_OPS,
    WORKLOADS,
    Workload,
    custom_workload,
    maskrcnn_workload,
)

__all__ = [
    "BYTE_MODEL",
    "COPY_BYTES",
    "DEFAULT_MAX_SECONDS",
    "DEFAULT_REPEAT",
    "DEFAULT_WARMUP",
    "DEFAULT_WORKLOADS",
    "DESCRIPTION",
    "EPILOG",
    "JSON_SCHEMA",
    "MIN_ROUNDS",
    "OPS",
    "QUICK",
    "ROI_OPS",
    "WORKLOADS",
    "BenchConfig",
    "BenchError",
    "CopyBandwidth",
    "Implementation",
    "MissingDependencyError",
    "Report",
    "Result",
    "Workload",
    "absent_implementation",
    "add_arguments",
    "available_backends",
    "case_steps",
    "check_backends",
    "config_from_args",
    "cropcore_implementation",
    "custom_workload",
    "implementations_for",
    "machine_info",
    "maskrcnn_workload",
    "measure_copy_bandwidth",
    "onnxruntime_implementation",
    "print_report",
    "reference_for",
    "roi_align_rois",
    "run_benchmark",
    "run_command",
    "tensorflow_implementation",
    "time_case",
    "torchvision_implementation",
    "write_chart",
    "write_json",
]
