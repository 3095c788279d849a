"""What is timed: cropcore's backends, and TensorFlow, torchvision and ONNX Runtime as references.

Requirements: importing this imports no framework. TensorFlow, torch, torchvision, onnx and
onnxruntime are imported by :func:`implementations_for`, only when they are installed and
references are wanted. On roi_align workloads, a reference that cannot run here (torchvision whose
C++ ops do not load, ONNX Runtime not installed) keeps its row, which says why it is absent.

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
from cropcore.bench.workloads import OPS, ROI_OPS, Workload
from cropcore.registry import registry

if TYPE_CHECKING:
    from cropcore.bench.run import BenchConfig

__all__ = [
    "Implementation",
    "absent_implementation",
    "available_backends",
    "check_backends",
    "cropcore_implementation",
    "implementations_for",
    "jax_implementation",
    "onnxruntime_implementation",
    "roi_align_onnx_model",
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
        ops: the ops it implements on crop_and_resize workloads.
        as_numpy: turns a call's result into a NumPy array in the workload's layout (NHWC for
            crop_and_resize, NCHW for roi_align), for the bit check.
        compared: whether its results on crop_and_resize workloads are checked against the
            reference (``False`` for torchvision's ``roi_align``, whose semantics differ there;
            on roi_align workloads every result is checked).
        note: a remark for the report.
        roi_ops: the ops it implements on roi_align workloads.
        unavailable: why it cannot run here ("" if it can): its rows say so, untimed.
    """

    name: str
    kind: str
    prepare: Callable[[Workload, str], Callable[[], Any]]
    ops: tuple[str, ...] = OPS
    as_numpy: Callable[[Any], np.ndarray] = np.asarray
    compared: bool = True
    note: str = ""
    roi_ops: tuple[str, ...] = ()
    unavailable: str = ""

    def runs(self, workload: Workload, op: str) -> bool:
        """Whether it has a row for ``op`` on ``workload`` (timed, or saying why not)."""
        return op in (self.roi_ops if workload.family == "roi_align" else self.ops)


def cropcore_implementation(backend: str) -> Implementation:
    """cropcore's public API with ``backend=`` this backend (validation and dispatch included)."""

    def prepare(workload: Workload, op: str) -> Callable[[], Any]:
        image, boxes, box_indices = workload.inputs()
        if workload.family == "roi_align":
            return _roi_align_call(workload, op, image, boxes, box_indices, backend)
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

    found = registry.get(registry.resolve(backend) or backend)
    roi_ops = ROI_OPS if found is not None and "roi_align" in found.ops else ()
    return Implementation(backend, "cropcore", prepare, roi_ops=roi_ops)


def _roi_align_call(
    workload: Workload,
    op: str,
    image: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    backend: str,
) -> Callable[[], Any]:
    """``cropcore.roi_align`` (or its image gradient) on a roi_align workload's NCHW inputs."""
    args = (workload.spatial_scale, workload.sampling_ratio, workload.aligned)
    if op == "forward":
        return lambda: cropcore.roi_align(
            image, boxes, workload.crop_size, *args, box_indices=box_indices, backend=backend
        )
    grads = workload.grads()
    return lambda: cropcore.roi_align_grad_image(
        grads, boxes, image.shape, *args, box_indices=box_indices, backend=backend
    )


def _pixel_rois(boxes: np.ndarray, box_indices: np.ndarray) -> np.ndarray:
    """float32 ``(K, 5)`` rois ``[index, x1, y1, x2, y2]``: torchvision's box form."""
    return np.concatenate([box_indices[:, None].astype(np.float32), boxes], axis=1)


def roi_align_onnx_model(
    onnx: Any,
    output_size: tuple[int, int],
    sampling_ratio: int,
    spatial_scale: float,
    aligned: bool,
) -> bytes:
    """A serialised one-node ONNX ``RoiAlign`` graph (opset 16, ``mode="avg"``) for roi_align's
    arguments: inputs ``X`` (NCHW float32), ``rois`` (``(K, 4)`` float32 pixel boxes),
    ``batch_indices`` (``(K,)`` int64); output ``Y``. ``sampling_ratio <= 0`` is ONNX's adaptive 0;
    ``aligned`` is ``coordinate_transformation_mode="half_pixel"``."""
    helper, proto = onnx.helper, onnx.TensorProto
    node = helper.make_node(
        "RoiAlign",
        ["X", "rois", "batch_indices"],
        ["Y"],
        mode="avg",
        output_height=output_size[0],
        output_width=output_size[1],
        sampling_ratio=max(sampling_ratio, 0),
        spatial_scale=spatial_scale,
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )
    inputs = [
        helper.make_tensor_value_info("X", proto.FLOAT, None),
        helper.make_tensor_value_info("rois", proto.FLOAT, None),
        helper.make_tensor_value_info("batch_indices", proto.INT64, None),
    ]
    output = [helper.make_tensor_value_info("Y", proto.FLOAT, None)]
    model = helper.make_model(
        helper.make_graph([node], "roi_align", inputs, output),
        opset_imports=[helper.make_opsetid("", 16)],
    )
    return model.SerializeToString()


def onnxruntime_implementation(onnxruntime: Any, onnx: Any) -> Implementation:
    """ONNX Runtime's CPU ``RoiAlign`` (opset 16, default threads): a one-node graph per workload,
    its session made outside the timings. roi_align workloads' forward only (ONNX has no
    gradient). Its results are torchvision's, so they are the forward's bit reference."""

    def prepare(workload: Workload, op: str) -> Callable[[], Any]:
        image, boxes, box_indices = workload.inputs()
        model = roi_align_onnx_model(
            onnx,
            workload.crop_size,
            workload.sampling_ratio,
            workload.spatial_scale,
            workload.aligned,
        )
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        feeds = {"X": image, "rois": boxes, "batch_indices": box_indices.astype(np.int64)}
        return lambda: session.run(None, feeds)[0]

    return Implementation(
        "onnxruntime",
        "reference",
        prepare,
        ops=(),
        roi_ops=("forward",),
        note=f"ONNX Runtime {onnxruntime.__version__}: CPU RoiAlign, opset 16, default threads",
    )


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
        if workload.family == "roi_align":
            arrays, function = _jax_roi_align(jax, workload, op, image, boxes, box_indices, grads)
        elif op == "forward":
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
        roi_ops=ROI_OPS,
        note="jax.jit of the call on jax.Array inputs (CPU), timed after compilation",
    )


def _jax_roi_align(jax, workload, op, image, boxes, box_indices, grads):
    """``jax.jit`` of ``cropcore.roi_align`` (or its image gradient) on a roi workload's NCHW
    arrays, and the arrays it takes."""
    args = (workload.spatial_scale, workload.sampling_ratio, workload.aligned)
    crop_size, image_shape = tuple(workload.crop_size), tuple(image.shape)  # NCHW
    box_indices = box_indices.astype("int32")  # jit runs without x64
    if op == "forward":
        return (image, boxes, box_indices), jax.jit(
            lambda i, b, x: cropcore.roi_align(i, b, crop_size, *args, box_indices=x, backend="jax")
        )
    return (grads, boxes, box_indices), jax.jit(
        lambda g, b, x: cropcore.roi_align_grad_image(
            g, b, image_shape, *args, box_indices=x, backend="jax"
        )
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


def torchvision_implementation(
    torch: Any, roi_align: Callable[..., Any], roi_align_backward: Callable[..., Any] | None = None
) -> Implementation:
    """torchvision's ``roi_align`` (and its backward kernel, ``_roi_align_backward``).

    On crop_and_resize workloads, the same crops: a reference point for speed, not for values.
    Its inputs are made beforehand, outside the timings: the image as a contiguous float32 NCHW
    tensor (``roi_align`` takes floating images only) and the boxes as pixel rois
    (:func:`roi_align_rois`). It averages bins instead of sampling points and clamps at the border
    instead of extrapolating, so its result is not bit-compared there.

    On roi_align workloads, the op itself (forward and, given ``roi_align_backward``, the image
    gradient kernel that autograd calls), bit-compared like every implementation.
    """

    def prepare(workload: Workload, op: str) -> Callable[[], Any]:
        image, boxes, box_indices = workload.inputs()
        if workload.family == "roi_align":
            x = torch.from_numpy(image)
            rois = torch.from_numpy(_pixel_rois(boxes, box_indices))
            size = tuple(workload.crop_size)
            scale, ratio = workload.spatial_scale, workload.sampling_ratio
            if op == "forward":
                return lambda: roi_align(x, rois, size, scale, ratio, workload.aligned)
            assert roi_align_backward is not None
            grads = torch.from_numpy(workload.grads())
            n, c, h, w = image.shape
            return lambda: roi_align_backward(
                grads, rois, scale, size[0], size[1], n, c, h, w, ratio, workload.aligned
            )
        nchw = np.ascontiguousarray(image.transpose(0, 3, 1, 2), dtype=np.float32)
        x = torch.from_numpy(nchw)
        rois = torch.from_numpy(
            roi_align_rois(boxes, box_indices, workload.image_shape[1:3], workload.crop_size)
        )
        size = tuple(workload.crop_size)
        return lambda: roi_align(
            x, rois, size, spatial_scale=1.0, sampling_ratio=1, aligned=True
        ).permute(0, 2, 3, 1)  # a view, NHWC as TF's

    return Implementation(
        "torchvision.roi_align",
        "reference",
        prepare,
        ops=("forward",),
        as_numpy=lambda t: t.numpy(),
        compared=False,
        note="on crop_and_resize workloads, roi_align(aligned=True, sampling_ratio=1) on float32 "
        "NCHW, boxes converted to pixel rois whose samples fall on TF's: a reference point for "
        "speed, not bit-compared; on roi_align workloads, roi_align and _roi_align_backward",
        roi_ops=ROI_OPS if roi_align_backward is not None else ("forward",),
    )


def absent_implementation(name: str, reason: str, roi_ops: tuple[str, ...]) -> Implementation:
    """A reference that cannot run here: its rows on roi_align workloads say why."""

    def prepare(workload: Workload, op: str) -> Callable[[], Any]:
        raise BenchError(reason)

    return Implementation(
        name, "reference", prepare, ops=(), roi_ops=roi_ops, note=reason, unavailable=reason
    )


def _import_tensorflow() -> Any | None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except Exception:
        return None
    return tf


def _import_roi_align() -> tuple[Any, Callable[..., Any], Callable[..., Any]] | str:
    """torch, torchvision's ``roi_align`` and its backward kernel; or why they cannot run here."""
    try:
        import torch
        from torchvision.ops import roi_align
    except Exception as exc:  # not installed, or it does not import against this torch
        return f"torchvision does not import: {type(exc).__name__}: {exc}"
    try:  # its C++ ops load lazily: call them once on a tiny input
        x = torch.zeros((1, 1, 2, 2))
        rois = torch.tensor([[0.0, 0.0, 0.0, 1.0, 1.0]])
        roi_align(x, rois, (1, 1), 1.0, 1, True)
        backward = torch.ops.torchvision._roi_align_backward
        backward(torch.ones((1, 1, 1, 1)), rois, 1.0, 1, 1, 1, 1, 2, 2, 1, True)
    except Exception as exc:
        return f"torchvision's C++ ops do not load here: {type(exc).__name__}: {exc}"
    return torch, roi_align, backward


def _import_onnxruntime() -> tuple[Any, Any] | str:
    """onnxruntime and onnx; or why they cannot run here."""
    try:
        import onnx
        import onnxruntime
    except Exception as exc:
        return f"ONNX Runtime is not installed: {type(exc).__name__}: {exc}"
    return onnxruntime, onnx


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
                "TensorFlow is not installed (or does not import): no ratios to TF; crop_and_resize "
                "forward results are compared with the numpy backend's"
            )
        torchvision = _import_roi_align()
        if not isinstance(torchvision, str):
            found.append(torchvision_implementation(*torchvision))
            notes.append(f"torchvision.roi_align: {found[-1].note}")
        else:
            notes.append(f"no torchvision reference: {torchvision}")
            found.append(absent_implementation("torchvision.roi_align", torchvision, ROI_OPS))
        ort = _import_onnxruntime()
        if not isinstance(ort, str):
            found.append(onnxruntime_implementation(*ort))
        else:
            found.append(absent_implementation("onnxruntime", ort, ("forward",)))
    backends = config.backends if config.backends is not None else available_backends()
    found += [
        jax_implementation(notes) if name == "jax" else cropcore_implementation(name)
        for name in backends
    ]
    return found
