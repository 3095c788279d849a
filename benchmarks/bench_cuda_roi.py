"""roi_align on the GPU: the workloads, byte model and implementations :mod:`bench_cuda` times.

Requirements: importing this module imports NumPy and cropcore's core only (``cropcore.bench``);
CuPy, torch, torchvision, onnx and ONNX Runtime load inside the functions that use them, so the
workload list, the byte model and the box conversion run (and are tested) on a machine without a
GPU. :mod:`bench_cuda` times and checks what :func:`variants` builds; this module does not import
it.

Workloads: ``cropcore bench``'s ``maskrcnn-7`` and ``maskrcnn-14`` (:mod:`cropcore.bench.workloads`:
2 x 256 x 200 x 272 NCHW float32 features, 1000 proposals of 16 to 400 pixels a side,
``spatial_scale=1/4``, ``sampling_ratio=2``, ``aligned=True``), the same arrays from the same
seeds, so that the GPU figures stand beside the CPU ones; each op, ``roi_align`` (the forward) and
``roi_align_grad_image``, is a workload of its own (``maskrcnn-7``, ``maskrcnn-7-grad-image``, ...).

Implementations, each on inputs already on the GPU:

- cropcore's public ``roi_align`` / ``roi_align_grad_image`` with ``backend="cupy"`` on CuPy
  arrays and with ``backend="torch"`` on torch CUDA tensors (validation and dispatch included);
- torchvision's CUDA ``roi_align`` (boxes as its ``(K, 5)`` rois, :func:`torchvision_rois`) and
  its backward through autograd: ``torch.autograd.grad`` of one recorded forward, the graph
  retained, so that only the backward runs per call;
- ONNX Runtime's ``RoiAlign`` (opset 16) on its CUDA execution provider, forward only (ONNX has no
  gradient), where ``onnxruntime-gpu`` and ``onnx`` import; the session refuses to fall back to
  the CPU, and the inputs are bound in place on the device (I/O binding). ONNX Runtime runs on
  its own stream and waits for it, so it is timed on the host clock (:data:`HOST_TIMED`).

Checks: each result of the first call against the NumPy backend's on the host. Forward: designed
to be bit-identical for cropcore's kernels (torchvision's arithmetic; its CUDA build may contract
to FMA), reported as bit-identical or as the count of values that differ and the largest
difference. Image gradient: cropcore's kernels are deterministic gathers in torchvision's CPU
order, so bit-identical is expected; torchvision's CUDA backward adds with atomics, in another
order, and gets its largest difference reported.

The byte model (bytes read plus written by one call, as for :mod:`bench_cuda`'s crop workloads:
compulsory traffic if each box's pixels are read once per box):

- ``forward``: for each box, the pixels its samples can touch, times depth and 4 bytes: its
  scaled pixel rectangle (``x * spatial_scale``, less 0.5 if ``aligned``; at least 1 x 1 if not)
  from ``floor(start)`` to ``floor(end) + 1`` on each axis, clipped to the image, but at most
  four corners per sample (``pooled_height * pooled_width * samples per bin``); plus the result
  written (float32) and the boxes (float32, 16 bytes) and box indices (int64, 8 bytes) read;
- ``grad_image``: the incoming gradient read (float32, the result's shape) + the image gradient
  written (float32, the image's shape) + boxes and box indices.

``cropcore bench`` counts the forward's image read differently (``min(image bytes, 4 corner reads
per output sample)``: each pixel once in all), so its GB/s are not these; the times compare.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from cropcore.bench import WORKLOADS as CPU_WORKLOADS
from cropcore.bench import Workload as CpuWorkload
from cropcore.bench.implementations import roi_align_onnx_model

__all__ = [
    "HOST_TIMED",
    "ROI_WORKLOADS",
    "RoiWorkload",
    "Variant",
    "bytes_moved",
    "onnxruntime_session",
    "reference",
    "torchvision_rois",
    "touched_pixels",
    "variants",
]

#: Implementations timed on the host clock (device synchronised before and after) instead of
#: CUDA events on the current stream, because they run on a stream of their own.
HOST_TIMED = ("onnxruntime (cuda)",)


@dataclass(frozen=True)
class RoiWorkload:
    """One op on a ``cropcore bench`` roi_align workload (``workload``: its NCHW image, pixel
    boxes and roi_align's arguments; :func:`cropcore.bench.maskrcnn_workload` makes them)."""

    name: str
    workload: CpuWorkload
    op: str  # "forward" (roi_align) or "grad_image" (roi_align_grad_image)

    def __post_init__(self) -> None:
        if self.workload.family != "roi_align" or self.op not in self.workload.ops:
            raise ValueError(f"{self.name}: not a roi_align op ({self.workload.name}, {self.op})")

    @property
    def description(self) -> str:
        op = "roi_align" if self.op == "forward" else "roi_align_grad_image"
        return f"{op} on {self.workload.description.removeprefix('roi_align: ')}"

    @property
    def image_shape(self) -> tuple[int, int, int, int]:
        """The NCHW image shape (``cropcore bench``'s ``image_shape`` is NHWC-ordered)."""
        batch, height, width, depth = self.workload.image_shape
        return (batch, depth, height, width)

    @property
    def arguments(self) -> tuple[float, int, bool]:
        """``(spatial_scale, sampling_ratio, aligned)``."""
        w = self.workload
        return (w.spatial_scale, w.sampling_ratio, w.aligned)

    def inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """float32 NCHW image, float32 ``(K, 4)`` pixel boxes ``x1, y1, x2, y2``, int64 ``(K,)``
        box indices, float32 ``(K, C, pooled_height, pooled_width)`` incoming gradient: the
        arrays ``cropcore bench`` times, from the same seeds."""
        image, boxes, box_indices = self.workload.inputs()
        return image, boxes, box_indices, self.workload.grads()


ROI_WORKLOADS: dict[str, RoiWorkload] = {
    w.name: w
    for base in ("maskrcnn-7", "maskrcnn-14")
    for w in (
        RoiWorkload(base, CPU_WORKLOADS[base], "forward"),
        RoiWorkload(f"{base}-grad-image", CPU_WORKLOADS[base], "grad_image"),
    )
}


# --------------------------------------------------------------------------------------------------
# Bytes


def touched_pixels(
    boxes: np.ndarray,
    image_hw: tuple[int, int],
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> np.ndarray:
    """Per box, the image pixels (of one channel) its samples can touch: int64 ``(K,)``.

    The box's scaled rectangle from ``floor(start)`` to ``floor(end) + 1`` per axis, clipped to
    the image, capped at four corners per sample (the module docstring's byte model).
    """
    height, width = image_hw
    pooled_height, pooled_width = output_size
    boxes = np.asarray(boxes, np.float64)
    offset = 0.5 if aligned else 0.0
    start = boxes[:, :2] * spatial_scale - offset  # x, y
    size = boxes[:, 2:] * spatial_scale - offset - start
    if not aligned:
        size = np.maximum(size, 1.0)
    low, high = np.minimum(start, start + size), np.maximum(start, start + size)
    limit = np.array([width - 1, height - 1])
    first = np.clip(np.floor(low), 0, limit)
    last = np.clip(np.floor(high) + 1, 0, limit)
    outside = (high < -1) | (low > limit + 1)  # torchvision: such samples read nothing
    extent = np.where(outside, 0, last - first + 1).astype(np.int64)
    if sampling_ratio > 0:
        per_bin = np.full(len(boxes), sampling_ratio**2, np.int64)
    else:  # adaptive: ceil(roi size / output size) per axis
        grid = np.ceil(np.abs(size) / [pooled_width, pooled_height]).astype(np.int64)
        per_bin = np.maximum(grid[:, 0], 1) * np.maximum(grid[:, 1], 1)
    cap = 4 * pooled_height * pooled_width * per_bin
    return np.minimum(extent[:, 0] * extent[:, 1], cap)


def bytes_moved(workload: RoiWorkload, boxes: np.ndarray) -> int:
    """Bytes read plus written by one call (the module docstring's byte model)."""
    batch, depth, height, width = workload.image_shape
    pooled_height, pooled_width = workload.workload.crop_size
    num_boxes = len(boxes)
    result = num_boxes * depth * pooled_height * pooled_width * 4
    small = num_boxes * (16 + 8)
    if workload.op == "grad_image":
        return result + batch * depth * height * width * 4 + small
    touched = touched_pixels(
        boxes, (height, width), (pooled_height, pooled_width), *workload.arguments
    )
    return int(touched.sum()) * depth * 4 + result + small


def torchvision_rois(boxes: np.ndarray, box_indices: np.ndarray) -> np.ndarray:
    """torchvision's float32 ``(K, 5)`` rois ``[box index, x1, y1, x2, y2]`` of pixel boxes
    ``(K, 4)`` and their ``(K,)`` box indices (the same form ``cropcore.roi_align`` accepts)."""
    boxes = np.asarray(boxes, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4), got shape {boxes.shape}")
    box_indices = np.asarray(box_indices)
    if box_indices.shape != (len(boxes),):
        raise ValueError(f"box_indices must be ({len(boxes)},), got shape {box_indices.shape}")
    return np.concatenate([box_indices[:, None].astype(np.float32), boxes], axis=1)


# --------------------------------------------------------------------------------------------------
# Calls


def _cropcore_call(
    workload: RoiWorkload, backend: str, image: Any, boxes: Any, box_indices: Any, grads: Any
) -> Callable[[], Any]:
    import cropcore

    size = workload.workload.crop_size
    args = workload.arguments
    if workload.op == "forward":
        return lambda: cropcore.roi_align(
            image, boxes, size, *args, box_indices=box_indices, backend=backend
        )
    return lambda: cropcore.roi_align_grad_image(
        grads, boxes, workload.image_shape, *args, box_indices=box_indices, backend=backend
    )


def reference(
    workload: RoiWorkload,
    image: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    grads: np.ndarray,
) -> np.ndarray:
    """The NumPy backend's result (the forward's or the image gradient)."""
    call = _cropcore_call(workload, "numpy", image, boxes, box_indices, grads)
    return np.asarray(call())


def onnxruntime_session(workload: RoiWorkload, providers: list[str]) -> Any:
    """A one-node ``RoiAlign`` graph (opset 16, ``mode="avg"``) for ``workload``'s arguments,
    refusing to fall back to the CPU for a node the first provider lacks (when it is not the CPU).

    Inputs ``X`` (NCHW float32), ``rois`` (``(K, 4)`` float32 pixel boxes), ``batch_indices``
    (``(K,)`` int64); output ``Y``.
    """
    import onnx
    import onnxruntime

    scale, ratio, aligned = workload.arguments
    model = roi_align_onnx_model(onnx, workload.workload.crop_size, ratio, scale, aligned)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if providers[0] != "CPUExecutionProvider":
        options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    return onnxruntime.InferenceSession(model, options, providers=providers)


# --------------------------------------------------------------------------------------------------
# Implementations on the GPU (never run here: they need a device)


@dataclass
class Variant:
    """One implementation of one workload: ``make()`` moves the inputs to the device and returns
    the no-argument call to time; ``to_numpy`` brings its result back for the check. A variant
    that cannot run here has ``make`` None and says why in ``skipped``."""

    label: str
    make: Callable[[], Callable[[], Any]] | None
    to_numpy: Callable[[Any], np.ndarray] = np.asarray
    reference_point: bool = False  # torchvision: the "vs roi_align" column's numerator
    skipped: str = ""


def variants(
    workload: RoiWorkload,
    backends: list[str],
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    cupy: Any,
    torch: Any | None,
) -> list[Variant]:
    """cropcore on each of ``backends`` that has a GPU path here (``cupy``; ``torch`` when torch
    sees CUDA), torchvision's CUDA ``roi_align`` and ONNX Runtime's CUDA ``RoiAlign`` (forward)
    where they import. ``arrays``: :meth:`RoiWorkload.inputs`. ``torch``: the module, or None
    without CUDA."""
    image, boxes, box_indices, grads = arrays
    found: list[Variant] = []

    def on_cupy() -> Callable[[], Any]:
        device = [cupy.asarray(a) for a in (image, boxes, box_indices, grads)]
        return _cropcore_call(workload, "cupy", *device)

    def on_torch(backend: str) -> Callable[[], Callable[[], Any]]:
        def make() -> Callable[[], Any]:
            assert torch is not None  # made only when torch sees CUDA
            device = [torch.from_numpy(a).cuda() for a in (image, boxes, box_indices, grads)]
            return _cropcore_call(workload, backend, *device)

        return make

    for backend in backends:
        if backend == "cupy":
            found.append(Variant("cupy", on_cupy, to_numpy=lambda a: a.get()))
        elif backend == "torch" and torch is not None:
            found.append(Variant("torch (cuda)", on_torch("torch"), to_numpy=_torch_to_numpy))
        elif backend == "torch":
            found.append(Variant("torch (cuda)", None, skipped="torch without CUDA"))
    found.append(_torchvision_variant(workload, arrays, torch))
    if workload.op == "forward":
        found.append(_onnxruntime_variant(workload, arrays, cupy))
    return found


def _torch_to_numpy(tensor: Any) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def _torchvision_variant(workload: RoiWorkload, arrays: tuple, torch: Any | None) -> Variant:
    label = "torchvision (cuda)"
    if torch is None:
        return Variant(label, None, skipped="torch without CUDA")
    try:
        from torchvision.ops import roi_align
    except Exception as exc:
        return Variant(label, None, skipped=f"torchvision: {type(exc).__name__}: {exc}")
    image, boxes, box_indices, grads = arrays
    size = tuple(workload.workload.crop_size)
    scale, ratio, aligned = workload.arguments

    def make() -> Callable[[], Any]:
        x = torch.from_numpy(image).cuda()
        rois = torch.from_numpy(torchvision_rois(boxes, box_indices)).cuda()
        if workload.op == "forward":
            return lambda: roi_align(x, rois, size, scale, ratio, aligned)
        x.requires_grad_(True)
        pooled = roi_align(x, rois, size, scale, ratio, aligned)  # recorded once, not timed
        g = torch.from_numpy(grads).cuda()
        return lambda: torch.autograd.grad(pooled, x, g, retain_graph=True)[0]

    return Variant(label, make, to_numpy=_torch_to_numpy, reference_point=True)


def _onnxruntime_variant(workload: RoiWorkload, arrays: tuple, cupy: Any) -> Variant:
    label = HOST_TIMED[0]
    try:
        import onnxruntime

        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            return Variant(label, None, skipped="ONNX Runtime without its CUDA provider")
        session = onnxruntime_session(workload, ["CUDAExecutionProvider"])
    except Exception as exc:
        return Variant(label, None, skipped=f"ONNX Runtime: {type(exc).__name__}: {exc}")
    image, boxes, box_indices, _ = arrays
    device_id = cupy.cuda.Device().id

    def make() -> Callable[[], Any]:
        feeds = {
            "X": cupy.asarray(image),
            "rois": cupy.asarray(boxes),
            "batch_indices": cupy.asarray(box_indices.astype(np.int64)),
        }
        binding = session.io_binding()
        for name, array in feeds.items():
            binding.bind_input(
                name, "cuda", device_id, array.dtype.type, list(array.shape), array.data.ptr
            )
        binding.bind_output("Y", "cuda", device_id)

        def run(_bound: dict[str, Any] = feeds) -> Any:  # the bound arrays live with the call
            session.run_with_iobinding(binding)
            return binding

        return run

    return Variant(label, make, to_numpy=lambda b: b.copy_outputs_to_cpu()[0])
