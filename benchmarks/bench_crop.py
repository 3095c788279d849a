"""Side-by-side benchmark: TensorFlow's CPU kernel and every available cropcore backend, one process.

Run it from the repository root (TensorFlow is optional; without it the ratio column is empty)::

    python benchmarks/bench_crop.py                      # every workload, forward and image gradient
    python benchmarks/bench_crop.py --repeat 50 --json bench.json
    python benchmarks/bench_crop.py --workloads roi tiny --backends numba numpy

Each workload is timed for every implementation in *interleaved* repetitions (one call of each
implementation per round, in a rotating order), after warm-up calls that also pay any compilation,
so machine noise hits every implementation alike. The table reports the median (and the minimum)
wall time per call and the speed-up over TensorFlow (TF's median divided by the implementation's).
cropcore is called through its public API (``cropcore.crop_and_resize(..., backend=name)``), so the
times include validation and dispatch; TensorFlow gets tensors created beforehand and its result
is fetched with ``.numpy()``. Every implementation's first result is compared with TensorFlow's
(or, without TF, with the numpy backend's) bit for bit.

A later version of this module becomes ``cropcore bench``; it is importable and has no side
effects on import.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["WORKLOADS", "Result", "Workload", "main", "run"]


@dataclass(frozen=True)
class Workload:
    """One benchmark case: an image batch, boxes and a crop size.

    ``image_shape`` is NHWC; ``boxes`` are drawn by ``box_kind``: ``"roi"`` (detection proposals:
    small to medium boxes anywhere) or ``"augmentation"`` (random-resized-crop boxes covering 30%
    to 100% of each side, a quarter of them mirrored).
    """

    name: str
    description: str
    image_shape: tuple[int, int, int, int]
    dtype: str
    num_boxes: int
    crop_size: tuple[int, int]
    box_kind: str = "roi"

    def inputs(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image, boxes float32 (N, 4), box_indices int32 (N,)), reproducibly from ``seed``."""
        rng = np.random.default_rng(seed)
        batch = self.image_shape[0]
        if np.dtype(self.dtype).kind == "f":
            image = rng.standard_normal(self.image_shape, dtype=np.float32).astype(self.dtype)
        else:
            image = rng.integers(0, 256, self.image_shape, dtype=np.uint8).astype(self.dtype)
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
        """float32 (N, crop_height, crop_width, depth): an upstream gradient for the image gradient."""
        rng = np.random.default_rng(seed)
        shape = (self.num_boxes, *self.crop_size, self.image_shape[3])
        return rng.standard_normal(shape, dtype=np.float32)

    @property
    def output_bytes(self) -> int:
        return 4 * self.num_boxes * self.crop_size[0] * self.crop_size[1] * self.image_shape[3]


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
            "augmentation crops: 8x512x512x3 uint8 photos, 64 boxes -> 224x224",
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

OPS = ("forward", "grad_image")


@dataclass
class Result:
    """Timings of one implementation on one workload and op (seconds per call)."""

    workload: str
    op: str
    implementation: str
    times: list[float] = field(default_factory=list)
    identical: bool | None = None  # to the reference result (TF's if available), bit for bit
    error: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    @property
    def best(self) -> float:
        return min(self.times) if self.times else float("nan")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median_s=self.median, min_s=self.best)
        return data


# --------------------------------------------------------------------------------------------------
# The implementations: each is a factory that prepares its inputs once and returns a no-argument
# callable producing a NumPy array.

Factory = Callable[[Workload, str], Callable[[], np.ndarray]]


def _tensorflow() -> Any | None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except Exception:
        return None
    return tf


def tensorflow_factory(tf: Any) -> Factory:
    def make(workload: Workload, op: str) -> Callable[[], np.ndarray]:
        image, boxes, box_indices = workload.inputs()
        boxes_t = tf.constant(boxes)
        indices_t = tf.constant(box_indices)
        if op == "forward":
            image_t = tf.constant(image)
            crop_size = tf.constant(workload.crop_size, tf.int32)
            return lambda: tf.raw_ops.CropAndResize(
                image=image_t, boxes=boxes_t, box_ind=indices_t, crop_size=crop_size
            ).numpy()
        grads_t = tf.constant(workload.grads())
        image_size = tf.constant(workload.image_shape, tf.int32)
        return lambda: tf.raw_ops.CropAndResizeGradImage(
            grads=grads_t, boxes=boxes_t, box_ind=indices_t, image_size=image_size, T=tf.float32
        ).numpy()

    return make


def cropcore_factory(backend: str) -> Factory:
    import cropcore

    def make(workload: Workload, op: str) -> Callable[[], np.ndarray]:
        image, boxes, box_indices = workload.inputs()
        if op == "forward":
            return lambda: cropcore.crop_and_resize(
                image, boxes, box_indices, workload.crop_size, backend=backend
            )
        grads = workload.grads()
        return lambda: cropcore.crop_and_resize_grad_image(
            grads, boxes, box_indices, workload.image_shape, backend=backend
        )

    return make


def available_backends() -> list[str]:
    """cropcore backends that can run here on NumPy arrays (each probed)."""
    import cropcore
    from cropcore.registry import registry

    names = []
    for info in cropcore.backends():
        backend = registry.get(info["name"])
        if backend is None or backend.info is None or "cpu" not in backend.info.devices:
            continue
        if backend.probe().status == "available":
            names.append(backend.name)
    return names


# --------------------------------------------------------------------------------------------------
# Timing


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    width = f"u{a.dtype.itemsize}"
    same_bits = a.view(width) == b.view(width)
    return bool(np.all(same_bits | (np.isnan(a) & np.isnan(b))))


def time_workload(
    workload: Workload,
    op: str,
    implementations: dict[str, Factory],
    *,
    repeat: int,
    warmup: int,
    reference: str | None,
    reference_factory: Factory | None = None,
) -> list[Result]:
    """Interleaved timings of every implementation on one workload and op.

    Each implementation's warm-up result is compared bit for bit with ``reference``'s (a name in
    ``implementations``), or with ``reference_factory``'s when that is given.
    """
    calls: dict[str, Callable[[], np.ndarray]] = {}
    results: dict[str, Result] = {}
    outputs: dict[str, np.ndarray] = {}
    for name, factory in implementations.items():
        result = results[name] = Result(workload.name, op, name)
        try:
            call = factory(workload, op)
            for _ in range(max(1, warmup)):
                outputs[name] = call()
            calls[name] = call
        except Exception as exc:  # report it, keep benchmarking the others
            result.error = f"{type(exc).__name__}: {exc}"
    expected = outputs.get(reference) if reference is not None else None
    if reference_factory is not None:
        try:
            expected = reference_factory(workload, op)()
        except Exception:
            expected = None
    if expected is not None:
        for name, out in outputs.items():
            results[name].identical = _identical(np.asarray(out), np.asarray(expected))
    outputs.clear()
    names = list(calls)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for round_ in range(repeat):
            shift = round_ % len(names) if names else 0
            for name in names[shift:] + names[:shift]:  # rotate who goes first
                call = calls[name]
                start = time.perf_counter()
                out = call()
                results[name].times.append(time.perf_counter() - start)
                del out
    finally:
        if gc_was_enabled:
            gc.enable()
    return list(results.values())


def run(
    workloads: Sequence[str] = tuple(WORKLOADS),
    ops: Sequence[str] = OPS,
    backends: Sequence[str] | None = None,
    *,
    repeat: int = 30,
    warmup: int = 3,
    with_tensorflow: bool = True,
) -> tuple[list[Result], dict[str, Any]]:
    """Benchmark ``workloads`` x ``ops`` on TF (if installed) and the cropcore ``backends``.

    Returns the results and a description of the machine and versions.
    """
    load_at_start = os.getloadavg()
    implementations: dict[str, Factory] = {}
    tf = _tensorflow() if with_tensorflow else None
    if tf is not None:
        implementations["tensorflow"] = tensorflow_factory(tf)
    for name in backends if backends is not None else available_backends():
        implementations[name] = cropcore_factory(name)
    results = []
    for workload_name in workloads:
        for op in ops:
            reference = _reference(op, implementations)
            results += time_workload(
                WORKLOADS[workload_name],
                op,
                implementations,
                repeat=repeat,
                warmup=warmup,
                reference=reference,
                reference_factory=cropcore_factory(reference) if reference == "numpy" else None,
            )
    env = environment(tf)
    env["load_average_start"] = load_at_start
    return results, env


def _reference(op: str, implementations: dict[str, Factory]) -> str | None:
    """Whose result the others must equal bit for bit.

    TF's forward result. Not TF's image gradient: TF accumulates it from several threads without
    synchronisation, so its bits vary from run to run; the numpy backend (checked against TF run
    single-threaded by cropcore's tests) follows TF's single-threaded order exactly.
    """
    if op == "forward" and "tensorflow" in implementations:
        return "tensorflow"
    return "numpy"  # computed outside the timings if it is not benchmarked


def environment(tf: Any | None = None) -> dict[str, Any]:
    """The machine and the versions that matter, for the report."""
    import cropcore

    versions = {"python": platform.python_version(), "numpy": np.__version__}
    versions["cropcore"] = cropcore.__version__
    if tf is not None:
        versions["tensorflow"] = tf.__version__
    for module in ("numba", "torch"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    env: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "versions": versions}
    if "numba" in sys.modules:
        try:
            from cropcore_numba import kernels

            env["numba_threading_layer"] = kernels.threading_layer()
            env["numba_threads"] = sys.modules["numba"].get_num_threads()
        except Exception:
            pass
    env["load_average_end"] = os.getloadavg()
    return env


# --------------------------------------------------------------------------------------------------
# Report


def format_table(results: Sequence[Result]) -> str:
    """A plain-text table: median and min per call, and the speed-up over TF."""
    tf_median = {(r.workload, r.op): r.median for r in results if r.implementation == "tensorflow"}
    header = ("workload", "op", "implementation", "median", "min", "vs TF", "bit-identical")
    rows = [header]
    for r in results:
        if r.error:
            rows.append((r.workload, r.op, r.implementation, "error", "", "", r.error[:60]))
            continue
        base = tf_median.get((r.workload, r.op))
        ratio = f"{base / r.median:.2f}x" if base and r.implementation != "tensorflow" else ""
        same = {True: "yes", False: "NO", None: ""}[r.identical]
        rows.append((r.workload, r.op, r.implementation, _ms(r.median), _ms(r.best), ratio, same))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds < 1 else f"{seconds:.2f} s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Time TensorFlow's crop_and_resize and every cropcore backend side by side."
    )
    parser.add_argument(
        "--workloads", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS)
    )
    parser.add_argument("--ops", nargs="+", choices=OPS, default=list(OPS))
    parser.add_argument(
        "--backends", nargs="+", metavar="NAME", help="cropcore backends (default: every available)"
    )
    parser.add_argument("--repeat", type=int, default=30, help="timed rounds (default: 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls first (default: 3)")
    parser.add_argument("--no-tensorflow", action="store_true", help="leave TensorFlow out")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    results, env = run(
        args.workloads,
        args.ops,
        args.backends,
        repeat=args.repeat,
        warmup=args.warmup,
        with_tensorflow=not args.no_tensorflow,
    )
    print(
        f"# {env['cpu']}, {env['cores']} cores; "
        + ", ".join(f"{k} {v}" for k, v in env["versions"].items())
    )
    if "numba_threading_layer" in env:
        print(
            f"# numba threading layer: {env['numba_threading_layer']}, {env['numba_threads']} threads"
        )
    print(
        "# load average (1, 5, 15 min) at start: {:.2f} {:.2f} {:.2f}; at end: {:.2f} {:.2f} {:.2f}".format(
            *env["load_average_start"], *env["load_average_end"]
        )
    )
    for name in dict.fromkeys(r.workload for r in results):
        print(f"# {name}: {WORKLOADS[name].description}")
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"environment": env, "results": [r.as_dict() for r in results]}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
