"""Timing one case fairly, checking its results, and the machine's copy bandwidth.

Requirements: NumPy and cropcore only. Every implementation runs on the same inputs, in
interleaved rounds (one call of each per round, the order rotating from round to round, the
garbage collector off), after warm-up calls that also pay any compilation. Medians, never means.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cropcore.bench.implementations import Implementation, cropcore_implementation
from cropcore.bench.workloads import Workload

__all__ = [
    "COPY_BYTES",
    "MIN_ROUNDS",
    "CopyBandwidth",
    "Result",
    "json_safe",
    "measure_copy_bandwidth",
    "reference_for",
    "time_case",
]

#: Bytes of each array ``numpy.copyto`` copies to measure the copy bandwidth (``--quick``: 32 MiB).
COPY_BYTES = 256 * 2**20
#: Rounds run whatever ``--max-seconds`` says.
MIN_ROUNDS = 3


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
        return json_safe(
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


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float (in dicts, lists and tuples) replaced by ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
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


def reference_for(op: str, names: Sequence[str], family: str = "crop_and_resize") -> str:
    """Whose result the others are compared with, bit for bit.

    TensorFlow's forward result. Not TF's gradients: its image gradient is accumulated from several
    threads without synchronisation, so its bits vary from run to run; the numpy backend (held
    bit-exact to TF run single-threaded by cropcore's tests) follows TF's single-threaded order.
    On roi_align workloads: ONNX Runtime's forward result (which is torchvision's), the numpy
    backend's gradient (ONNX has none; torchvision's CPU backward adds in the same order).
    """
    forward_reference = "onnxruntime" if family == "roi_align" else "tensorflow"
    return forward_reference if op == "forward" and forward_reference in names else "numpy"


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
    chosen = [impl for impl in implementations if impl.runs(workload, op)]
    absent = {impl.name for impl in chosen if impl.unavailable}
    reference = reference_for(
        op, [impl.name for impl in chosen if impl.name not in absent], workload.family
    )
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
        if impl.unavailable:
            result.error = f"absent: {impl.unavailable}"
            step(f"{label}: {impl.name} is absent", 1)
            continue
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
            if impl.compared or workload.family == "roi_align":
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
