"""What is timed: cropcore's backends, and TensorFlow and torchvision as reference points.

Requirements: importing this imports no framework. TensorFlow, torch and torchvision are imported
by :func:`implementations_for`, only when they are installed and references are wanted.

Each implementation prepares its inputs once (outside the timings) and returns a no-argument
callable, the call that is timed.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

import cropcore
from cropcore.bench.errors import BenchError
from cropcore.bench.workloads import OPS, Workload
from cropcore.registry import registry

if TYPE_CHECKING:
    from cropcore.bench.run import BenchConfig

__all__ = [
    "Implementation",
    "available_backends",
    "check_backends",
    "cropcore_implementation",
    "implementations_for",
    "jax_implementation",
    "roi_align_rois",
    "tensorflow_implementation",
    "torchvision_implementation",
]


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


def jax_implementation(notes: list[str]) -> Implementation:
    """The ``jax`` backend as a JAX program uses it: ``jax.jit`` of the call on ``jax.Array`` inputs
    on the CPU, timed after compilation (``block_until_ready``). The first call, which traces and
    compiles, is timed on its own in ``prepare`` and reported in ``notes``.
    """
    import jax  # only here: the bench imports no framework otherwise

    cpu = jax.devices("cpu")[0]

    def prepare(workload: Workload, op: str) -> Callable[[], Any]:
        with jax.enable_x64(True):  # a float64 or int64 workload keeps its dtype
            image, boxes, box_indices = (jax.device_put(a, cpu) for a in workload.inputs())
            grads = jax.device_put(workload.grads(), cpu)
        crop_size, image_shape = tuple(workload.crop_size), tuple(workload.image_shape)
        if op == "forward":
            arrays = (image, boxes, box_indices)
            function = jax.jit(
                lambda i, b, x: cropcore.crop_and_resize(i, b, x, crop_size, backend="jax")
            )
        elif op == "grad_image":
            arrays = (grads, boxes, box_indices)
            function = jax.jit(
                lambda g, b, x: cropcore.crop_and_resize_grad_image(
                    g, b, x, image_shape, backend="jax"
                )
            )
        else:
            arrays = (grads, image, boxes, box_indices)
            function = jax.jit(
                lambda g, i, b, x: cropcore.crop_and_resize_grad_boxes(g, i, b, x, backend="jax")
            )
        start = time.perf_counter()
        function(*arrays).block_until_ready()
        notes.append(
            f"jax: the first call of {op} on {workload.name} (trace and XLA compile) took "
            f"{time.perf_counter() - start:.3f} s, outside the timings"
        )
        return lambda: function(*arrays).block_until_ready()

    return Implementation(
        "jax",
        "cropcore",
        prepare,
        note="jax.jit of the call on jax.Array inputs (CPU), timed after compilation",
    )


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
    found += [
        jax_implementation(notes) if name == "jax" else cropcore_implementation(name)
        for name in backends
    ]
    return found
