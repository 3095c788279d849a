"""``cropcore bench``: every available backend side by side with TensorFlow's kernel, in one process.

Requirements:

- One implementation of the benchmark: ``cropcore bench`` and ``benchmarks/bench_crop.py`` both run
  this module.
- Importing it imports nothing but the standard library, NumPy and cropcore's core: TensorFlow,
  torch, torchvision, rich, matplotlib and Pillow load inside the functions that use them, only
  when they are installed (references and the chart are optional; the table needs rich).
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
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import importlib.metadata
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import cropcore
from cropcore.spec import IMAGE_DTYPES

__all__ = [
    "OPS",
    "WORKLOADS",
    "BenchConfig",
    "BenchError",
    "CopyBandwidth",
    "Implementation",
    "Report",
    "Result",
    "Workload",
    "add_arguments",
    "available_backends",
    "config_from_args",
    "machine_info",
    "main",
    "measure_copy_bandwidth",
    "print_report",
    "roi_align_rois",
    "run_benchmark",
    "run_command",
    "time_case",
    "write_chart",
    "write_json",
]

#: The ops timed: ``crop_and_resize``, ``crop_and_resize_grad_image``, ``crop_and_resize_grad_boxes``.
OPS = ("forward", "grad_image", "grad_boxes")
#: Version of the JSON file's layout.
JSON_SCHEMA = "cropcore-bench/1"
#: Bytes of each array ``numpy.copyto`` copies to measure the copy bandwidth (``--quick``: 32 MiB).
COPY_BYTES = 256 * 2**20
#: What ``--quick`` sets: rounds, warm-up calls, copy-bandwidth array size.
QUICK = {"repeat": 3, "warmup": 1, "copy_bytes": 32 * 2**20}
DEFAULT_REPEAT = 30
DEFAULT_WARMUP = 3
#: Seconds of timed rounds per workload and op after which no new round starts (``--max-seconds``).
DEFAULT_MAX_SECONDS = 60.0
#: Rounds run whatever ``--max-seconds`` says.
MIN_ROUNDS = 3

BYTE_MODEL = (
    "bytes per call, a lower bound on the memory traffic: forward = crops written (float32) + "
    "image read, counted as min(image bytes, 4 corner reads per output sample) + boxes and box "
    "indices; grad_image = gradient read (float32, the crops' shape) + image gradient written "
    "(float32) + boxes and box indices; grad_boxes = gradient read + image read (as forward) + "
    "boxes and box indices + box gradient written"
)


class BenchError(Exception):
    """A usage error (exit status 2) or a missing dependency (``exit_code`` 1)."""

    exit_code = 2


class MissingDependencyError(BenchError):
    """rich is not installed: exit status 1."""

    exit_code = 1


# --------------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class Workload:
    """One benchmark case: an image batch, boxes and a crop size.

    Attributes:
        name: the name ``--workloads`` takes (``"custom"`` for ``--shape``).
        description: one line for the report.
        image_shape: NHWC.
        dtype: the image dtype (a NumPy name).
        num_boxes: how many boxes are cropped.
        crop_size: ``(crop_height, crop_width)``.
        box_kind: how boxes are drawn: ``"roi"`` (detection proposals: small to medium boxes
            anywhere, a few reaching outside the image) or ``"augmentation"`` (random-resized-crop
            boxes covering 30% to 100% of each side, a quarter of them mirrored).
    """

    name: str
    description: str
    image_shape: tuple[int, int, int, int]
    dtype: str
    num_boxes: int
    crop_size: tuple[int, int]
    box_kind: str = "roi"

    def inputs(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The image, float32 ``(num_boxes, 4)`` boxes and int32 box indices, reproducibly."""
        rng = np.random.default_rng(seed)
        batch = self.image_shape[0]
        if np.dtype(self.dtype).kind == "f":
            image = rng.standard_normal(self.image_shape, dtype=np.float32).astype(self.dtype)
        else:
            info = np.iinfo(self.dtype)
            high = min(int(info.max), 255) + 1
            image = rng.integers(max(int(info.min), 0), high, self.image_shape).astype(self.dtype)
        n = self.num_boxes
        if self.box_kind == "augmentation":
            size = rng.uniform(0.3, 1.0, (n, 2))
            start = rng.uniform(0.0, 1.0, (n, 2)) * (1.0 - size)
            end = start + size
            mirror = rng.random(n) < 0.25
            start[mirror, 1], end[mirror, 1] = end[mirror, 1], start[mirror, 1].copy()
        else:
            size = rng.uniform(0.05, 0.6, (n, 2))
            start = rng.uniform(-0.05, 1.0, (n, 2)) * (1.0 - size)
            end = start + size
        boxes = np.stack([start[:, 0], start[:, 1], end[:, 0], end[:, 1]], axis=1)
        box_indices = rng.integers(0, batch, n).astype(np.int32)
        return image, boxes.astype(np.float32), box_indices

    def grads(self, seed: int = 1) -> np.ndarray:
        """A float32 ``(num_boxes, crop_height, crop_width, depth)`` incoming gradient."""
        rng = np.random.default_rng(seed)
        shape = (self.num_boxes, *self.crop_size, self.image_shape[3])
        return rng.standard_normal(shape, dtype=np.float32)

    @property
    def crop_bytes(self) -> int:
        """Bytes of the float32 crops (and of the incoming gradient)."""
        return 4 * self.num_boxes * self.crop_size[0] * self.crop_size[1] * self.image_shape[3]

    @property
    def image_bytes(self) -> int:
        """Bytes of the image."""
        return math.prod(self.image_shape) * np.dtype(self.dtype).itemsize

    def bytes_moved(self, op: str) -> int:
        """Bytes read plus written by one call of ``op``, by the byte model (module docstring)."""
        itemsize = np.dtype(self.dtype).itemsize
        samples = self.crop_bytes // 4
        image_read = min(self.image_bytes, 4 * samples * itemsize)
        box_bytes = self.num_boxes * (16 + 4)  # float32 boxes, int32 box indices
        if op == "forward":
            return self.crop_bytes + image_read + box_bytes
        if op == "grad_image":
            return self.crop_bytes + math.prod(self.image_shape) * 4 + box_bytes
        if op == "grad_boxes":
            return self.crop_bytes + image_read + box_bytes + self.num_boxes * 16
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")

    def as_dict(self) -> dict[str, Any]:
        """The workload's parameters, for the JSON file."""
        return {
            "name": self.name,
            "description": self.description,
            "image_shape": list(self.image_shape),
            "dtype": self.dtype,
            "num_boxes": self.num_boxes,
            "crop_size": list(self.crop_size),
            "box_kind": self.box_kind,
            "bytes_per_call": {op: self.bytes_moved(op) for op in OPS},
        }


#: The workloads of the performance targets (design.md, "Performance").
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "roi",
            "ROI crops: 2x64x64x256 float32 feature map, 512 boxes -> 14x14",
            (2, 64, 64, 256),
            "float32",
            512,
            (14, 14),
        ),
        Workload(
            "augmentation",
            "augmentation crops: 8x512x512x3 uint8 photos, 64 boxes (a quarter mirrored) -> 224x224",
            (8, 512, 512, 3),
            "uint8",
            64,
            (224, 224),
            box_kind="augmentation",
        ),
        Workload(
            "tiny",
            "tiny call (overhead): 1x16x16x1 float32, 4 boxes -> 7x7",
            (1, 16, 16, 1),
            "float32",
            4,
            (7, 7),
        ),
    )
}


def custom_workload(
    shape: Sequence[int],
    num_boxes: int,
    crop_size: Sequence[int],
    dtype: str = "float32",
    box_kind: str = "roi",
) -> Workload:
    """The ``custom`` workload of ``--shape N,H,W,C --boxes K --crop H,W --dtype D``."""
    n, h, w, c = (int(v) for v in shape)
    ch, cw = (int(v) for v in crop_size)
    return Workload(
        "custom",
        f"custom: {n}x{h}x{w}x{c} {dtype}, {num_boxes} {box_kind} boxes -> {ch}x{cw}",
        (n, h, w, c),
        dtype,
        int(num_boxes),
        (ch, cw),
        box_kind=box_kind,
    )


# --------------------------------------------------------------------------------------------------
# Implementations: each prepares its inputs once (outside the timings) and returns a no-argument
# callable, the call that is timed.


@dataclass(frozen=True)
class Implementation:
    """Something timed: a cropcore backend or a reference (TensorFlow, torchvision).

    Attributes:
        name: its label in the table, the chart and the JSON file.
        kind: ``"cropcore"`` or ``"reference"``.
        prepare: ``prepare(workload, op)`` makes the inputs and returns the call to time.
        ops: the ops it implements.
        as_numpy: turns a call's result into a NumPy array in NHWC, for the bit check.
        compared: whether its results are checked against the reference (``False`` for
            torchvision's ``roi_align``, whose semantics differ).
        note: a remark for the report.
    """

    name: str
    kind: str
    prepare: Callable[[Workload, str], Callable[[], Any]]
    ops: tuple[str, ...] = OPS
    as_numpy: Callable[[Any], np.ndarray] = np.asarray
    compared: bool = True
    note: str = ""


def cropcore_implementation(backend: str) -> Implementation:
    """cropcore's public API with ``backend=`` this backend (validation and dispatch included)."""

    def prepare(workload: Workload, op: str) -> Callable[[], Any]:
        image, boxes, box_indices = workload.inputs()
        if op == "forward":
            return lambda: cropcore.crop_and_resize(
                image, boxes, box_indices, workload.crop_size, backend=backend
            )
        grads = workload.grads()
        if op == "grad_image":
            return lambda: cropcore.crop_and_resize_grad_image(
                grads, boxes, box_indices, workload.image_shape, backend=backend
            )
        return lambda: cropcore.crop_and_resize_grad_boxes(
            grads, image, boxes, box_indices, backend=backend
        )

    return Implementation(backend, "cropcore", prepare)


def tensorflow_implementation(tf: Any) -> Implementation:
    """TensorFlow's CPU kernels: the raw ops behind ``tf.image.crop_and_resize`` and its gradient."""

    def prepare(workload: Workload, op: str) -> Callable[[], Any]:
        image, boxes, box_indices = workload.inputs()
        with tf.device("/CPU:0"):
            boxes_t = tf.constant(boxes)
            indices_t = tf.constant(box_indices)
            image_t = tf.constant(image)
            grads_t = tf.constant(workload.grads())
            crop_size = tf.constant(workload.crop_size, tf.int32)
            image_size = tf.constant(workload.image_shape, tf.int32)
        raw = tf.raw_ops
        if op == "forward":
            return lambda: raw.CropAndResize(
                image=image_t, boxes=boxes_t, box_ind=indices_t, crop_size=crop_size
            ).numpy()
        if op == "grad_image":
            return lambda: raw.CropAndResizeGradImage(
                grads=grads_t, boxes=boxes_t, box_ind=indices_t, image_size=image_size, T=tf.float32
            ).numpy()
        return lambda: raw.CropAndResizeGradBoxes(
            grads=grads_t, image=image_t, boxes=boxes_t, box_ind=indices_t
        ).numpy()

    return Implementation("tensorflow", "reference", prepare, note=f"TensorFlow {tf.__version__}")


def roi_align_rois(
    boxes: np.ndarray,
    box_indices: np.ndarray,
    image_size: tuple[int, int],
    crop_size: tuple[int, int],
) -> np.ndarray:
    """torchvision float32 ``(K, 5)`` rois ``[index, x1, y1, x2, y2]`` in pixels for TF's boxes.

    ``image_size`` is ``(height, width)``, ``crop_size`` ``(crop_height, crop_width)``.

    TF's normalised ``y`` is pixel ``y * (H - 1)`` (likewise ``x``). With ``aligned=True``,
    ``sampling_ratio=1`` and each box widened by half a sample step on either side (and shifted by
    the half pixel that ``aligned=True`` takes off), ``roi_align``'s one sample per bin falls on
    TF's sample positions (notes/tf_semantics.md, section 6): bin ``p`` samples at
    ``y1 * (H - 1) + p * step``, TF's ``in_y``.
    """
    height, width = image_size
    crop_height, crop_width = crop_size
    y1, x1, y2, x2 = (boxes[:, i].astype(np.float64) for i in range(4))
    ys1, ys2 = y1 * (height - 1), y2 * (height - 1)
    xs1, xs2 = x1 * (width - 1), x2 * (width - 1)
    step_y = (ys2 - ys1) / (crop_height - 1) if crop_height > 1 else np.zeros_like(ys1)
    step_x = (xs2 - xs1) / (crop_width - 1) if crop_width > 1 else np.zeros_like(xs1)
    rois = np.stack(
        [
            box_indices.astype(np.float64),
            xs1 - step_x / 2 + 0.5,
            ys1 - step_y / 2 + 0.5,
            xs2 + step_x / 2 + 0.5,
            ys2 + step_y / 2 + 0.5,
        ],
        axis=1,
    )
    return rois.astype(np.float32)


def torchvision_implementation(torch: Any, roi_align: Callable[..., Any]) -> Implementation:
    """torchvision's ``roi_align`` on the same crops: a reference point for speed, not for values.

    Its inputs are made beforehand, outside the timings: the image as a contiguous float32 NCHW
    tensor (``roi_align`` takes floating images only) and the boxes as pixel rois
    (:func:`roi_align_rois`). It averages bins instead of sampling points and clamps at the border
    instead of extrapolating, so its result is not bit-compared.
    """

    def prepare(workload: Workload, op: str) -> Callable[[], Any]:
        image, boxes, box_indices = workload.inputs()
        nchw = np.ascontiguousarray(image.transpose(0, 3, 1, 2), dtype=np.float32)
        x = torch.from_numpy(nchw)
        rois = torch.from_numpy(
            roi_align_rois(boxes, box_indices, workload.image_shape[1:3], workload.crop_size)
        )
        size = tuple(workload.crop_size)
        return lambda: roi_align(x, rois, size, spatial_scale=1.0, sampling_ratio=1, aligned=True)

    return Implementation(
        "torchvision.roi_align",
        "reference",
        prepare,
        ops=("forward",),
        as_numpy=lambda t: t.permute(0, 2, 3, 1).numpy(),
        compared=False,
        note="roi_align(aligned=True, sampling_ratio=1) on float32 NCHW, boxes converted to "
        "pixel rois whose samples fall on TF's: a reference point for speed, not bit-compared",
    )


def _import_tensorflow() -> Any | None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except Exception:
        return None
    return tf


def _import_roi_align() -> tuple[Any, Callable[..., Any]] | None:
    try:
        import torch
        from torchvision.ops import roi_align
    except Exception:  # not installed, or its C++ ops do not load against this torch
        return None
    return torch, roi_align


def available_backends() -> list[str]:
    """cropcore backends that can run here on NumPy arrays on the CPU (each is probed)."""
    names = []
    for backend in cropcore.backends():
        if backend.info is None or "cpu" not in backend.info.devices:
            continue
        if backend.probe().status == "available":
            names.append(backend.name)
    return names


def check_backends(names: Sequence[str]) -> list[str]:
    """The backend names for ``names`` (names or aliases), or :class:`BenchError` saying why not."""
    from cropcore.registry import registry

    installed = [b.name for b in cropcore.backends()]
    resolved = []
    for name in names:
        canonical = registry.resolve(name)
        if canonical is None:
            raise BenchError(
                f"argument --backends: unknown backend {name!r}; installed: {', '.join(installed)}"
            )
        backend = registry.get(canonical)
        if backend is None or backend.probe().status != "available":
            reason = backend.reason if backend is not None else "not found"
            raise BenchError(f"argument --backends: backend {name!r} cannot run here: {reason}")
        if canonical not in resolved:
            resolved.append(canonical)
    return resolved


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class Result:
    """The timings of one implementation on one workload and op.

    Attributes:
        workload, op, implementation, kind: what was timed (``kind``: cropcore or reference).
        times: seconds per call, one per round, in round order.
        bytes: bytes moved per call (the byte model).
        checked_against: the implementation whose result this one was compared with, bit for bit
            (``None``: this is the reference, or it is not compared).
        identical: the outcome of that comparison (``None`` if there was none).
        max_abs_difference: the largest absolute difference from the reference result (0.0 when
            identical; for torchvision, for information only).
        error: why it could not run ("" if it ran).
    """

    workload: str
    op: str
    implementation: str
    kind: str
    times: list[float] = field(default_factory=list)
    bytes: int = 0
    checked_against: str | None = None
    identical: bool | None = None
    max_abs_difference: float | None = None
    error: str = ""

    @property
    def median(self) -> float:
        """The median seconds per call (NaN if it did not run)."""
        return statistics.median(self.times) if self.times else math.nan

    @property
    def quartiles(self) -> tuple[float, float]:
        """The 25th and 75th percentiles of the times (NumPy's linear interpolation)."""
        if not self.times:
            return math.nan, math.nan
        q1, q3 = np.percentile(self.times, [25, 75])
        return float(q1), float(q3)

    @property
    def iqr(self) -> float:
        """The interquartile range: 75th minus 25th percentile, seconds."""
        q1, q3 = self.quartiles
        return q3 - q1

    @property
    def gbps(self) -> float:
        """Achieved bandwidth: bytes moved (the byte model) over the median time, in GB/s."""
        return self.bytes / self.median / 1e9 if self.times else math.nan

    def as_dict(self, tf_median: float | None, copy_gbps: float) -> dict[str, Any]:
        """Everything about this result, for the JSON file (no NaN: missing values are null)."""
        q1, q3 = self.quartiles
        ratio = tf_median / self.median if tf_median and self.times else None
        return _no_nan(
            {
                "workload": self.workload,
                "op": self.op,
                "implementation": self.implementation,
                "kind": self.kind,
                "times_s": self.times,
                "rounds": len(self.times),
                "median_s": self.median,
                "q1_s": q1,
                "q3_s": q3,
                "iqr_s": q3 - q1,
                "min_s": min(self.times) if self.times else None,
                "max_s": max(self.times) if self.times else None,
                "ratio_to_tensorflow": ratio,
                "bytes_per_call": self.bytes,
                "gbps": self.gbps,
                "fraction_of_copy_bandwidth": self.gbps / copy_gbps if copy_gbps else None,
                "check": {
                    "against": self.checked_against,
                    "bit_identical": self.identical,
                    "max_abs_difference": self.max_abs_difference,
                },
                "error": self.error or None,
            }
        )


def _no_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_no_nan(v) for v in value]
    return value


@dataclass(frozen=True)
class CopyBandwidth:
    """This machine's copy bandwidth, by ``numpy.copyto`` on one thread.

    Attributes:
        nbytes: bytes of each of the two arrays.
        times: seconds of each timed copy.
    """

    nbytes: int
    times: tuple[float, ...]

    @property
    def gbps(self) -> float:
        """Bytes read plus written by the fastest copy over its time, in GB/s."""
        return 2 * self.nbytes / min(self.times) / 1e9

    def as_dict(self) -> dict[str, Any]:
        """For the JSON file."""
        return {
            "method": "numpy.copyto between two arrays, one thread; read + written bytes over "
            "the best time",
            "bytes": self.nbytes,
            "times_s": list(self.times),
            "best_s": min(self.times),
            "gbps": self.gbps,
        }


def measure_copy_bandwidth(nbytes: int = COPY_BYTES, repeat: int = 5) -> CopyBandwidth:
    """Time ``repeat`` copies of an ``nbytes`` array into another (the first, untimed, faults the
    pages in) and return the times."""
    source = np.ones(nbytes, dtype=np.uint8)
    target = np.empty_like(source)
    np.copyto(target, source)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        np.copyto(target, source)
        times.append(time.perf_counter() - start)
    return CopyBandwidth(nbytes, tuple(times))


# --------------------------------------------------------------------------------------------------
# Timing


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    width = f"u{a.dtype.itemsize}"
    same_bits = a.view(width) == b.view(width)
    return bool(np.all(same_bits | (np.isnan(a) & np.isnan(b))))


def _max_abs_difference(a: np.ndarray, b: np.ndarray) -> float | None:
    if a.shape != b.shape:
        return None
    difference = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(np.nanmax(difference)) if difference.size else 0.0


def reference_for(op: str, names: Sequence[str]) -> str:
    """Whose result the others are compared with, bit for bit.

    TensorFlow's forward result. Not TF's gradients: its image gradient is accumulated from several
    threads without synchronisation, so its bits vary from run to run; the numpy backend (held
    bit-exact to TF run single-threaded by cropcore's tests) follows TF's single-threaded order.
    """
    return "tensorflow" if op == "forward" and "tensorflow" in names else "numpy"


def _numpy_result(workload: Workload, op: str) -> np.ndarray | None:
    """The numpy reference backend's result, computed outside the timings."""
    try:
        return np.asarray(cropcore_implementation("numpy").prepare(workload, op)())
    except Exception:  # no numpy backend: nothing to compare with
        return None


def time_case(
    workload: Workload,
    op: str,
    implementations: Sequence[Implementation],
    *,
    repeat: int,
    warmup: int,
    max_seconds: float = math.inf,
    min_rounds: int = MIN_ROUNDS,
    on_step: Callable[[str, int], None] | None = None,
) -> list[Result]:
    """Warm up, check and time every implementation of ``op`` on ``workload``.

    Each implementation is warmed up with ``warmup`` calls (which pay any compilation); its last
    warm-up result is compared bit for bit with the reference's (:func:`reference_for`; the numpy
    backend's is computed outside the timings when it is not among ``implementations``). Then
    ``repeat`` interleaved rounds: one call of each implementation per round, the order rotating;
    fewer (but at least ``min_rounds``) once the rounds have taken ``max_seconds``.
    ``on_step(description, steps)`` is called after each warm-up and each round (for a progress
    bar: one step each; the rounds skipped by ``max_seconds`` are reported as done at the end).
    An implementation that raises is reported with its error; the others go on.

    Returns:
        One result per implementation of ``op``, in the order of ``implementations``.
    """
    chosen = [impl for impl in implementations if op in impl.ops]
    reference = reference_for(op, [impl.name for impl in chosen])
    bytes_moved = workload.bytes_moved(op)
    label = f"{workload.name} {op}"
    results = {
        impl.name: Result(workload.name, op, impl.name, impl.kind, bytes=bytes_moved)
        for impl in chosen
    }
    step = on_step if on_step is not None else lambda description, steps: None
    calls: dict[str, Callable[[], Any]] = {}
    expected: np.ndarray | None = None
    if reference not in results:
        expected = _numpy_result(workload, op)
    for impl in sorted(chosen, key=lambda impl: impl.name != reference):  # the reference first
        result = results[impl.name]
        step(f"{label}: warming up {impl.name}", 0)
        try:
            call = impl.prepare(workload, op)
            for _ in range(max(1, warmup)):
                out = call()
            output = np.asarray(impl.as_numpy(out))
            del out
        except Exception as exc:  # report it, keep benchmarking the others
            result.error = f"{type(exc).__name__}: {exc}"
            step(f"{label}: {impl.name} failed", 1)
            if impl.name == reference and reference != "numpy":  # compare with numpy's instead
                reference, expected = "numpy", _numpy_result(workload, op)
            continue
        step(f"{label}: warmed up {impl.name}", 1)
        calls[impl.name] = call
        if impl.name == reference:
            expected = output
        elif expected is not None:
            if impl.compared:
                result.checked_against = reference
                result.identical = _identical(output, expected)
            same = result.identical
            result.max_abs_difference = 0.0 if same else _max_abs_difference(output, expected)
        del output
    del expected
    names = list(calls)
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    deadline = time.perf_counter() + max_seconds
    rounds = 0
    try:
        while rounds < repeat and names:
            shift = rounds % len(names)
            for name in names[shift:] + names[:shift]:  # rotate who goes first
                try:
                    start = time.perf_counter()
                    out = calls[name]()
                    results[name].times.append(time.perf_counter() - start)
                    del out
                except Exception as exc:  # ran in the warm-up, fails now: drop it
                    results[name].error = f"{type(exc).__name__}: {exc}"
                    results[name].times.clear()
                    names.remove(name)
            rounds += 1
            step(f"{label}: round {rounds}/{repeat}", 1)
            if rounds >= min_rounds and time.perf_counter() > deadline:
                break
    finally:
        if gc_was_enabled:
            gc.enable()
    step(f"{label}: done", repeat - rounds)
    return list(results.values())


# --------------------------------------------------------------------------------------------------
# The whole run


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

    @property
    def ok(self) -> bool:
        """Every cropcore backend ran and matched its reference bit for bit."""
        return all(
            not r.error and r.identical is not False for r in self.results if r.kind == "cropcore"
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON file's content."""
        return _no_nan(
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
                    "(75th - 25th percentile); ratio_to_tensorflow = TF median / median",
                    "byte_model": BYTE_MODEL,
                },
                "machine": self.machine,
                "copy_bandwidth": self.copy.as_dict(),
                "implementations": [
                    {"name": i.name, "kind": i.kind, "ops": list(i.ops), "note": i.note}
                    for i in self.implementations
                ],
                "workloads": [w.as_dict() for w in self.config.workloads],
                "results": [
                    r.as_dict(self.tf_median(r.workload, r.op), self.copy.gbps)
                    for r in self.results
                ],
                "notes": self.notes,
                "ok": self.ok,
            }
        )


def _version(module: str, *distributions: str) -> str | None:
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    for dist in distributions or (module,):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """The machine, the versions that matter and the thread settings, for the report.

    Reads versions from loaded modules or package metadata: imports nothing.
    """
    versions = {
        "python": platform.python_version(),
        "cropcore": cropcore.__version__,
        "numpy": np.__version__,
        "numba": _version("numba"),
        "llvmlite": _version("llvmlite"),
        "torch": _version("torch"),
        "tensorflow": _version("tensorflow", "tensorflow", "tensorflow-cpu", "tensorflow-intel"),
        "torchvision": _version("torchvision"),
    }
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "python_implementation": platform.python_implementation(),
        "versions": {k: v for k, v in versions.items() if v is not None},
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())
    numba = sys.modules.get("numba")
    if numba is not None:
        info["numba_threads"] = numba.get_num_threads()  # starts the thread pool if needed
        with contextlib.suppress(ValueError):  # no threading layer could start
            info["numba_threading_layer"] = numba.threading_layer()
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info


def implementations_for(config: BenchConfig, notes: list[str]) -> list[Implementation]:
    """The references (where installed and wanted) followed by the cropcore backends."""
    found: list[Implementation] = []
    if config.references:
        tf = _import_tensorflow()
        if tf is not None:
            found.append(tensorflow_implementation(tf))
        else:
            notes.append(
                "TensorFlow is not installed (or does not import): no ratios to TF; forward results are "
                "compared with the numpy backend's"
            )
        torchvision = _import_roi_align()
        if torchvision is not None:
            found.append(torchvision_implementation(*torchvision))
            notes.append(f"torchvision.roi_align: {found[-1].note}")
        else:
            notes.append(
                "torchvision (with working C++ ops) is not installed: no roi_align reference"
            )
    backends = config.backends if config.backends is not None else available_backends()
    found += [cropcore_implementation(name) for name in backends]
    return found


def case_steps(config: BenchConfig, implementations: Sequence[Implementation]) -> int:
    """How many steps :func:`run_benchmark` reports through ``on_step`` (a progress bar's total):
    one for the copy bandwidth, one per warm-up of an implementation, one per round."""
    per_op = {op: sum(op in impl.ops for impl in implementations) for op in config.ops}
    return 1 + len(config.workloads) * sum(per_op[op] + config.repeat for op in config.ops)


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


# --------------------------------------------------------------------------------------------------
# Output


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
    for name in ("rounds", "median", "IQR", "min", "vs TF", "GB/s", "of copy"):
        table.add_column(name, justify="right")
    table.add_column("bit check")
    previous = None
    for r in report.results:
        if previous is not None and (r.workload, r.op) != previous:
            table.add_section()
        previous = (r.workload, r.op)
        if r.error:
            table.add_row(
                r.workload, r.op, escape(r.implementation), "", "", "", "", "", "", "",
                f"[red]error:[/] {escape(r.error[:100])}",
            )  # fmt: skip
            continue
        tf_median = report.tf_median(r.workload, r.op)
        ratio = f"{tf_median / r.median:.2f}x" if tf_median and r.times else ""
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
        "per-call times; vs TF: TensorFlow's median / this median (above 1: faster than TF); "
        "GB/s: the byte model's bytes per call / median; of copy: that GB/s as a share of the "
        "copy bandwidth above."
    )
    say(f"byte model: {BYTE_MODEL}.")
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
    with_tf = any(report.tf_median(*case) for case in cases)
    names = [
        impl.name
        for impl in report.implementations
        if not (with_tf and impl.name == "tensorflow")
        and any(r.implementation == impl.name for r in report.results)
    ]
    values: dict[str, list[float]] = {name: [] for name in names}
    timings = {(r.workload, r.op, r.implementation): r for r in report.results}
    for case in cases:
        tf_median = report.tf_median(*case)
        for name in names:
            r = timings.get((*case, name))
            if r is None or not r.times:
                values[name].append(math.nan)
            elif with_tf:
                values[name].append(tf_median / r.median if tf_median else math.nan)
            else:
                values[name].append(r.median * 1e3)
    label = (
        "speed-up over TensorFlow (TF median / median, log scale; > 1: faster)"
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


def write_chart(report: Report, path: str | os.PathLike[str]) -> tuple[Path, str]:
    """Draw a grouped horizontal bar chart of the report as a PNG at ``path``.

    With TensorFlow's timings, each bar is an implementation's speed-up over TF on one workload and
    op; without them, its median time. Uses matplotlib where installed, else Pillow.

    Returns:
        The path written and the library that drew it (``"matplotlib"`` or ``"pillow"``).

    Raises:
        BenchError: neither matplotlib nor Pillow is installed.
    """
    path = Path(path)
    cases, names, values, label = _chart_data(report)
    matplotlib = _import_matplotlib()
    if matplotlib is not None:
        _matplotlib_chart(*matplotlib, cases, names, values, label, _chart_title(report), path)
        return path, "matplotlib"
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise MissingDependencyError(
            'the chart needs matplotlib or Pillow: pip install "cropcore[bench]"'
        ) from None
    _pillow_chart(
        Image, ImageDraw, ImageFont, cases, names, values, label, _chart_title(report), path
    )
    return path, "pillow"


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


def _pillow_chart(
    Image: Any,
    ImageDraw: Any,
    ImageFont: Any,
    cases: list[str],
    names: list[str],
    values: dict[str, list[float]],
    label: str,
    title: str,
    path: Path,
) -> None:
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    font = ImageFont.load_default()
    left, right, top, bar = 170, 60, 60 + 16 * len(names), 14
    plot_width = 600
    height = top + len(cases) * (bar * len(names) + 12) + 40
    image = Image.new("RGB", (left + plot_width + right, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black", font=font)
    draw.text((10, 26), label, fill="black", font=font)
    for i, name in enumerate(names):
        draw.rectangle((10, 46 + 16 * i, 22, 56 + 16 * i), fill=colours[i % len(colours)])
        draw.text((28, 45 + 16 * i), name, fill="black", font=font)
    finite = [v for vs in values.values() for v in vs if math.isfinite(v) and v > 0]
    low = math.log10(min([*finite, 1.0])) - 0.2
    high = math.log10(max([*finite, 1.0])) + 0.2

    def x_of(value: float) -> float:
        return left + plot_width * (math.log10(value) - low) / (high - low)

    y = top
    for c, case in enumerate(cases):
        draw.text((10, y + bar * len(names) / 2 - 6), case, fill="black", font=font)
        for i, name in enumerate(names):
            value = values[name][c]
            if math.isfinite(value) and value > 0:
                draw.rectangle((left, y, x_of(value), y + bar - 2), fill=colours[i % len(colours)])
                draw.text((x_of(value) + 4, y), f"{value:.3g}", fill="black", font=font)
            y += bar
        y += 12
    if "TensorFlow" in label:
        draw.line((x_of(1.0), top - 4, x_of(1.0), y), fill="black")
    image.save(path, format="PNG")


# --------------------------------------------------------------------------------------------------
# Command line


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
roi_align as reference points where they are installed.

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
  custom        --shape N,H,W,C [--boxes K] [--crop H,W] [--dtype D]

examples:
  cropcore bench
  cropcore bench --workloads tiny roi --repeat 10
  cropcore bench --shape 4,128,128,64 --boxes 300 --crop 7,7 --ops forward
  cropcore bench --workloads tiny --quick --backends numpy numba --out /tmp/bench
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``cropcore bench``'s options to ``parser``."""
    parser.add_argument(
        "--workloads",
        nargs="+",
        choices=list(WORKLOADS),
        metavar="NAME",
        help=f"named workloads: {', '.join(WORKLOADS)} (default: all, or none with --shape)",
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
        workloads = [WORKLOADS[name] for name in dict.fromkeys(args.workloads or WORKLOADS)]
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
    memory = _memory_bytes()
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
            path, library = write_chart(report, chart_path)
        except MissingDependencyError as exc:
            say(f"note: no chart: {exc}")
        else:
            written.append(path)
            if library != "matplotlib":
                say(
                    "note: chart drawn with Pillow; for a better one install matplotlib: "
                    'pip install "cropcore[bench]"'
                )
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


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """``cropcore bench`` as a stand-alone program (``benchmarks/bench_crop.py``)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_command(args)
    except BenchError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
