"""GPU benchmark: cropcore's CUDA backends against the device's copy bandwidth and torchvision.

Needs an NVIDIA GPU and CuPy; torch (with CUDA) adds the torch backend, torchvision adds the
``roi_align`` comparison. Without a GPU it says so and exits with status 2. Run it from the
repository root::

    python benchmarks/bench_cuda.py                       # every workload, every backend found
    python benchmarks/bench_cuda.py --repeat 200 --json bench_cuda.json
    python benchmarks/bench_cuda.py --workloads large-f32 --backends cupy
    python benchmarks/bench_cuda.py --workloads maskrcnn-7 maskrcnn-7-grad-image   # roi_align

What it reports, per workload and implementation:

- the median time per call (CUDA events around ``--repeat`` calls, after warm-up, median of
  ``--rounds`` rounds), through cropcore's public API (validation and dispatch included) with the
  inputs already on the GPU;
- the achieved bandwidth: bytes read plus bytes written, over that time. Written: the result.
  Read: for each box, the pixels its samples can touch (the box's pixel rectangle, at most four
  per sample), times depth and itemsize; plus boxes and box indices. The large-crop workloads'
  boxes cover the whole image, so each pixel is read about once;
- that bandwidth as a share of the device's copy bandwidth, measured here: a device-to-device
  copy of ``--copy-mib`` MiB (read plus written, over its time);
- for NCHW workloads, the ratio to torchvision's ``roi_align`` on the same output (one bilinear
  sample per bin, ``aligned=True``, boxes converted to TF's sample positions): roi_align's time
  over ours (above 1: cropcore is faster).

The image-gradient workloads time both the atomic and the deterministic kernel of the cupy
backend (``cropcore_cupy.deterministic``). The results are checked against the NumPy reference on
the first call (bit-identical for the forward op; close for the atomic gradient): "bit-identical",
or how many values differ and the largest difference.

roi_align workloads (``maskrcnn-7``, ``maskrcnn-14`` and their ``-grad-image`` twins, run first):
``cropcore bench``'s Mask R-CNN arrays, timed through ``cropcore.roi_align`` and
``roi_align_grad_image`` on the cupy backend and the torch backend on CUDA, beside torchvision's
CUDA ``roi_align`` and its autograd backward (the "vs roi_align" column) and ONNX Runtime's CUDA
``RoiAlign`` where they import; every result checked against the NumPy backend's. Their byte
model and implementations are in ``bench_cuda_roi.py`` (its docstring). An implementation that
cannot run here has a row saying why. Rows print as each workload finishes, and the JSON file is
rewritten after each, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import bench_cuda_roi
import numpy as np
from bench_cuda_roi import ROI_WORKLOADS, RoiWorkload

__all__ = [
    "ALL_WORKLOADS",
    "WORKLOADS",
    "Workload",
    "build_parser",
    "bytes_moved",
    "main",
    "roi_align_boxes",
]


@dataclass(frozen=True)
class Workload:
    """One benchmark case. ``image_shape`` is in ``data_format`` order."""

    name: str
    description: str
    op: str  # forward, grad_image, grad_boxes
    image_shape: tuple[int, int, int, int]
    dtype: str
    crop_size: tuple[int, int]
    boxes: str  # "whole" (each image once, whole), "roi" (random proposals)
    num_boxes: int = 0
    data_format: str = "channels_last"

    @property
    def nhwc(self) -> tuple[int, int, int, int]:
        if self.data_format == "channels_first":
            b, d, h, w = self.image_shape
            return (b, h, w, d)
        return self.image_shape

    def inputs(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(image in ``data_format``, float32 boxes, int32 box indices)."""
        rng = np.random.default_rng(seed)
        batch = self.nhwc[0]
        if np.dtype(self.dtype).kind == "f":
            image = rng.standard_normal(self.image_shape, dtype=np.float32).astype(self.dtype)
        else:
            image = rng.integers(0, 256, self.image_shape, dtype=np.uint8).astype(self.dtype)
        if self.boxes == "whole":
            boxes = np.tile(np.array([[0, 0, 1, 1]], np.float32), (batch, 1))
            indices = np.arange(batch, dtype=np.int32)
        else:
            n = self.num_boxes
            size = rng.uniform(0.05, 0.5, (n, 2))
            start = rng.uniform(0.0, 1.0, (n, 2)) * (1.0 - size)
            boxes = np.concatenate([start, start + size], axis=1).astype(np.float32)  # y1 x1 y2 x2
            indices = rng.integers(0, batch, n).astype(np.int32)
        return image, boxes, indices

    def grads(self, num_boxes: int, seed: int = 1) -> np.ndarray:
        """float32 upstream gradient, the shape of the forward result in ``data_format``."""
        rng = np.random.default_rng(seed)
        depth = self.nhwc[3]
        shape = (num_boxes, *self.crop_size, depth)
        if self.data_format == "channels_first":
            shape = (num_boxes, depth, *self.crop_size)
        return rng.standard_normal(shape, dtype=np.float32)


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "large-f32",
            "large crops, NHWC: 16 x 512x512x3 float32 images, whole -> 512x512",
            "forward",
            (16, 512, 512, 3),
            "float32",
            (512, 512),
            "whole",
        ),
        Workload(
            "large-u8",
            "large crops, NHWC: 16 x 512x512x3 uint8 images, whole -> 512x512",
            "forward",
            (16, 512, 512, 3),
            "uint8",
            (512, 512),
            "whole",
        ),
        Workload(
            "large-f32-rgba",
            "large crops, NHWC, vectorised: 16 x 512x512x4 float32, whole -> 512x512",
            "forward",
            (16, 512, 512, 4),
            "float32",
            (512, 512),
            "whole",
        ),
        Workload(
            "large-f32-nchw",
            "large crops, NCHW: 16 x 3x512x512 float32, whole -> 512x512",
            "forward",
            (16, 3, 512, 512),
            "float32",
            (512, 512),
            "whole",
            data_format="channels_first",
        ),
        Workload(
            "roi-nchw",
            "detection ROIs, NCHW: 2 x 256x64x64 float32 feature maps, 1000 boxes -> 7x7",
            "forward",
            (2, 256, 64, 64),
            "float32",
            (7, 7),
            "roi",
            1000,
            "channels_first",
        ),
        Workload(
            "roi-nhwc",
            "detection ROIs, NHWC: 2 x 64x64x256 float32 feature maps, 1000 boxes -> 14x14",
            "forward",
            (2, 64, 64, 256),
            "float32",
            (14, 14),
            "roi",
            1000,
        ),
        Workload(
            "roi-grad-image",
            "image gradient of detection ROIs: 2 x 64x64x256, 1000 boxes of 14x14",
            "grad_image",
            (2, 64, 64, 256),
            "float32",
            (14, 14),
            "roi",
            1000,
        ),
        Workload(
            "large-grad-image",
            "image gradient of large crops: 16 x 512x512x3 float32, whole 512x512",
            "grad_image",
            (16, 512, 512, 3),
            "float32",
            (512, 512),
            "whole",
        ),
        Workload(
            "roi-grad-boxes",
            "box gradient of detection ROIs: 2 x 64x64x256, 1000 boxes of 14x14",
            "grad_boxes",
            (2, 64, 64, 256),
            "float32",
            (14, 14),
            "roi",
            1000,
        ),
    )
}

#: Every workload ``--workloads`` takes, in the order a run without it times them: roi_align's
#: first (no other step of scripts/gpu_check.sh times them), then crop_and_resize's.
ALL_WORKLOADS: dict[str, Workload | RoiWorkload] = {**ROI_WORKLOADS, **WORKLOADS}


# --------------------------------------------------------------------------------------------------
# Bytes


def bytes_moved(
    workload: Workload, boxes: np.ndarray, num_boxes: int, grad_dtype: str = "float32"
) -> int:
    """Bytes read plus written by one call (see the module docstring)."""
    batch, height, width, depth = workload.nhwc
    itemsize = np.dtype(workload.dtype).itemsize
    crop_height, crop_width = workload.crop_size
    rows = np.minimum(np.abs(boxes[:, 2] - boxes[:, 0]) * (height - 1) + 2, height)
    cols = np.minimum(np.abs(boxes[:, 3] - boxes[:, 1]) * (width - 1) + 2, width)
    touched = np.minimum(np.floor(rows) * np.floor(cols), 4 * crop_height * crop_width)
    image_read = int(touched.sum()) * depth * itemsize
    crops = num_boxes * crop_height * crop_width * depth * 4
    small = boxes.nbytes + 4 * num_boxes
    if workload.op == "forward":
        return image_read + crops + small
    if workload.op == "grad_image":  # grads read; the image gradient written (and zeroed)
        return crops + batch * height * width * depth * np.dtype(grad_dtype).itemsize + small
    return crops + image_read + small + num_boxes * 16  # grad_boxes: grads and image read


def roi_align_boxes(boxes: np.ndarray, indices: np.ndarray, workload: Workload) -> np.ndarray:
    """torchvision rois ``(K, 5)`` whose single (``sampling_ratio=1``, ``aligned=True``) sample
    per bin falls on TF's sample positions (:func:`cropcore.bench.roi_align_rois`)."""
    from cropcore.bench import roi_align_rois

    _, height, width, _ = workload.nhwc
    return roi_align_rois(boxes, indices, (height, width), workload.crop_size)


# --------------------------------------------------------------------------------------------------
# Timing


@dataclass
class Result:
    workload: str
    implementation: str
    times_ms: list[float] = field(default_factory=list)
    bytes: int = 0
    copy_gbps: float = 0.0
    roi_align_ms: float | None = None
    check: str = ""
    error: str = ""
    skipped: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms) if self.times_ms else float("nan")

    @property
    def gbps(self) -> float:
        return self.bytes / (self.median_ms * 1e-3) / 1e9 if self.times_ms else float("nan")

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(median_ms=self.median_ms, achieved_gbps=self.gbps)
        data["share_of_copy"] = self.gbps / self.copy_gbps if self.copy_gbps else None
        return data


def time_gpu(
    cupy: Any, fn: Callable[[], Any], repeat: int, rounds: int, warmup: int = 3
) -> list[float]:
    """Milliseconds per call of ``fn``: CUDA events around ``repeat`` calls, ``rounds`` times."""
    for _ in range(warmup):
        fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(rounds):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        end.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, end) / repeat)
    return times


def copy_bandwidth(cupy: Any, mib: int, repeat: int, rounds: int) -> float:
    """GB/s of a device-to-device copy: 2 x size bytes (read + written) over its time."""
    n = mib * 2**20 // 4
    src = cupy.ones(n, cupy.float32)
    dst = cupy.empty_like(src)
    times = time_gpu(cupy, lambda: cupy.copyto(dst, src), repeat, rounds)
    return 2 * src.nbytes / (statistics.median(times) * 1e-3) / 1e9


# --------------------------------------------------------------------------------------------------
# Implementations: each returns a no-argument callable running the workload on device inputs.


def _cropcore_call(
    workload: Workload, backend: str, image: Any, boxes: Any, indices: Any, grads: Any
) -> Callable[[], Any]:
    import cropcore

    if workload.op == "forward":
        return lambda: cropcore.crop_and_resize(
            image,
            boxes,
            indices,
            workload.crop_size,
            data_format=workload.data_format,
            backend=backend,
        )
    if workload.op == "grad_image":
        return lambda: cropcore.crop_and_resize_grad_image(
            grads,
            boxes,
            indices,
            workload.image_shape,
            data_format=workload.data_format,
            backend=backend,
        )
    return lambda: cropcore.crop_and_resize_grad_boxes(
        grads, image, boxes, indices, data_format=workload.data_format, backend=backend
    )


def _reference(workload: Workload, image: np.ndarray, boxes, indices, grads) -> np.ndarray:
    return np.asarray(_cropcore_call(workload, "numpy", image, boxes, indices, grads)())


def run_workload(
    workload: Workload, backends: list[str], cupy: Any, copy_gbps: float, args: argparse.Namespace
) -> list[Result]:
    import cropcore_cupy

    image, boxes, indices = workload.inputs()
    num_boxes = len(boxes)
    grads = workload.grads(num_boxes)
    moved = bytes_moved(workload, boxes, num_boxes)
    check_reference = num_boxes * np.prod(workload.crop_size) * workload.nhwc[3] <= 2**24
    expected = _reference(workload, image, boxes, indices, grads) if check_reference else None
    results: list[Result] = []
    torch = _torch()

    # (label, backend, array library, deterministic mode or None)
    variants: list[tuple[str, str, str, bool | None]] = []
    for backend in backends:
        if backend == "cupy" and workload.op == "grad_image":
            variants += [("cupy (atomic)", "cupy", "cupy", False)]
            variants += [("cupy (deterministic)", "cupy", "cupy", True)]
        elif backend == "cupy":
            variants.append(("cupy", "cupy", "cupy", None))
        elif backend == "torch" and torch is not None:
            variants.append(("torch (cuda)", "torch", "torch", None))

    for label, backend, library, deterministic in variants:
        result = Result(workload.name, label, bytes=moved, copy_gbps=copy_gbps)
        try:
            if library == "cupy":
                on: Callable[[np.ndarray], Any] = cupy.asarray
            else:
                on = lambda a: torch.from_numpy(np.ascontiguousarray(a)).cuda()  # noqa: E731
            call = _cropcore_call(workload, backend, on(image), on(boxes), on(indices), on(grads))
            fn = call if deterministic is None else _in_mode(cropcore_cupy, call, deterministic)
            first = fn()
            cupy.cuda.Device().synchronize()
            if expected is not None:
                got = first.get() if library == "cupy" else first.cpu().numpy()
                result.check = _compare(got, expected)
            result.times_ms = time_gpu(cupy, fn, args.repeat, args.rounds)
        except Exception as exc:  # report and go on with the other implementations
            result.error = f"{type(exc).__name__}: {exc}"
        results.append(result)

    if workload.data_format == "channels_first" and workload.op == "forward":
        roi_ms = _roi_align_time(workload, image, boxes, indices, cupy, args)
        for result in results:
            result.roi_align_ms = roi_ms
    return results


def run_roi_workload(
    workload: RoiWorkload,
    backends: list[str],
    cupy: Any,
    copy_gbps: float,
    args: argparse.Namespace,
) -> list[Result]:
    """One roi_align workload: every variant of :func:`bench_cuda_roi.variants`, checked against
    the NumPy backend on its first call, then timed; cropcore's rows get torchvision's time."""
    arrays = workload.inputs()
    moved = bench_cuda_roi.bytes_moved(workload, arrays[1])
    expected = bench_cuda_roi.reference(workload, *arrays)
    results: list[Result] = []
    reference_ms = None
    for variant in bench_cuda_roi.variants(workload, backends, arrays, cupy, _torch()):
        result = Result(workload.name, variant.label, bytes=moved, copy_gbps=copy_gbps)
        results.append(result)
        if variant.make is None:
            result.skipped = variant.skipped
            continue
        try:
            fn = variant.make()
            first = fn()
            cupy.cuda.Device().synchronize()
            result.check = _compare(variant.to_numpy(first), expected)
            del first
            timer = time_host if variant.label in bench_cuda_roi.HOST_TIMED else time_gpu
            result.times_ms = timer(cupy, fn, args.repeat, args.rounds)
        except Exception as exc:  # report and go on with the other implementations
            result.error = f"{type(exc).__name__}: {exc}"
            continue
        if variant.reference_point:
            reference_ms = result.median_ms
    for result in results:
        if result.implementation in ("cupy", "torch (cuda)") and result.times_ms:
            result.roi_align_ms = reference_ms
    return results


def time_host(
    cupy: Any, fn: Callable[[], Any], repeat: int, rounds: int, warmup: int = 3
) -> list[float]:
    """As :func:`time_gpu`, on the host clock with the device synchronised around each round (for
    work on streams other than the current one)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(rounds):
        cupy.cuda.Device().synchronize()
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        cupy.cuda.Device().synchronize()
        times.append((time.perf_counter() - start) * 1e3 / repeat)
    return times


def _in_mode(cropcore_cupy: Any, call: Callable[[], Any], deterministic: bool) -> Callable[[], Any]:
    def run() -> Any:
        with cropcore_cupy.deterministic(deterministic):
            return call()

    return run


def _compare(got: np.ndarray, expected: np.ndarray) -> str:
    """Says "bit-identical", or how many values differ (NaN equals NaN) and the largest difference."""
    if got.shape != expected.shape or got.dtype != expected.dtype:
        return f"{got.dtype}{got.shape} != {expected.dtype}{expected.shape}"
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    if same.all():
        return "bit-identical"
    scale = float(np.nanmax(np.abs(expected))) or 1.0
    diff = np.abs(got.astype(np.float64) - expected)
    worst = float(np.nanmax(diff)) if not np.isnan(diff).all() else float("nan")
    return (
        f"{int((~same).sum())} of {same.size} differ, largest difference {worst:.3g} "
        f"({worst / scale:.2g} relative)"
    )


def _torch() -> Any | None:
    try:
        import torch
    except Exception:
        return None
    return torch if torch.cuda.is_available() else None


def _roi_align_time(workload, image, boxes, indices, cupy, args) -> float | None:
    torch = _torch()
    if torch is None or workload.dtype != "float32":
        return None
    try:
        from torchvision.ops import roi_align
    except Exception:
        return None
    x = torch.from_numpy(np.ascontiguousarray(image)).cuda()
    rois = torch.from_numpy(roi_align_boxes(boxes, indices, workload)).cuda()

    def fn():
        return roi_align(x, rois, workload.crop_size, 1.0, 1, True)

    return statistics.median(time_gpu(cupy, fn, args.repeat, args.rounds))


# --------------------------------------------------------------------------------------------------


#: The report's columns (the workload's is as wide as the longest name, ``maskrcnn-14-grad-image``).
HEADER = (
    f"{'workload':<22} {'implementation':<22} {'median ms':>10} {'GB/s':>8} {'of copy':>8} "
    f"{'vs roi_align':>12}  check"
)


def render_row(r: Result, copy_gbps: float) -> str:
    """One line of the report: times and check, or why the implementation did not run."""
    if r.error:
        return f"{r.workload:<22} {r.implementation:<22} error: {r.error}"
    if r.skipped:
        return f"{r.workload:<22} {r.implementation:<22} not run: {r.skipped}"
    ratio = f"{r.roi_align_ms / r.median_ms:.2f}x" if r.roi_align_ms else ""
    return (
        f"{r.workload:<22} {r.implementation:<22} {r.median_ms:>10.4f} {r.gbps:>8.0f} "
        f"{r.gbps / copy_gbps:>8.0%} {ratio:>12}  {r.check}"
    )


def render(results: list[Result], device: str, copy_gbps: float) -> str:
    """The whole report (:func:`main` prints it a workload at a time)."""
    lines = [f"device: {device}", f"device-to-device copy: {copy_gbps:.0f} GB/s (read + written)"]
    lines += ["", HEADER, "-" * len(HEADER)]
    return "\n".join(lines + [render_row(r, copy_gbps) for r in results])


def build_parser() -> argparse.ArgumentParser:
    """The command line (``--workloads`` takes any of :data:`ALL_WORKLOADS`)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workloads",
        nargs="*",
        choices=list(ALL_WORKLOADS),
        default=None,
        help="default: all, roi_align's first",
    )
    parser.add_argument("--backends", nargs="*", default=["cupy", "torch"])
    parser.add_argument("--repeat", type=int, default=50, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (median reported)")
    parser.add_argument("--copy-mib", type=int, default=1024)
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError("no CUDA device")
    except Exception as exc:
        print(
            f"bench_cuda: needs an NVIDIA GPU with CuPy ({type(exc).__name__}: {exc})",
            file=sys.stderr,
        )
        return 2

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    device = f"{props['name'].decode()} (compute capability {props['major']}.{props['minor']})"
    copy_gbps = copy_bandwidth(cupy, args.copy_mib, max(5, args.repeat // 5), args.rounds)
    print(render([], device, copy_gbps), flush=True)
    results: list[Result] = []
    for name in args.workloads or list(ALL_WORKLOADS):
        workload = ALL_WORKLOADS[name]
        if isinstance(workload, RoiWorkload):
            found = run_roi_workload(workload, args.backends, cupy, copy_gbps, args)
        else:
            found = run_workload(workload, args.backends, cupy, copy_gbps, args)
        print("\n".join(render_row(r, copy_gbps) for r in found), flush=True)
        results += found
        if args.json:  # after each workload: a run cut short keeps what it measured
            with open(args.json, "w") as f:
                json.dump(
                    {
                        "device": device,
                        "copy_gbps": copy_gbps,
                        "results": [r.as_dict() for r in results],
                    },
                    f,
                    indent=2,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
