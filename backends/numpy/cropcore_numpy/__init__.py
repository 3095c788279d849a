"""cropcore's reference backend: NumPy, vectorised, bit-identical to TensorFlow's CPU kernel.

Registered as the plugin ``numpy`` through the ``cropcore.backends`` entry point, like any
third-party backend. The kernels (:mod:`cropcore_numpy.kernels`) work in NHWC and follow the
order of operations of ``tensorflow/core/kernels/image/crop_and_resize_op.cc``; NCHW calls are
served through transposed views. They are tested equal, bit for bit, to the oracle
:mod:`cropcore_numpy.reference` (TensorFlow's loop nests in Python, not registered as a backend).
"""

from __future__ import annotations

from typing import Any

from cropcore import memory
from cropcore.hookspecs import (
    BackendInfo,
    CropAndResizeCall,
    GradImageCall,
    RoiAlignCall,
    RoiAlignGradImageCall,
    hookimpl,
)
from cropcore_numpy import entry

__all__ = [
    "cropcore_backend_info",
    "cropcore_backend_peak_bytes",
    "cropcore_crop_and_resize",
    "cropcore_crop_and_resize_grad_boxes",
    "cropcore_crop_and_resize_grad_image",
    "cropcore_roi_align",
    "cropcore_roi_align_grad_image",
]

_KERNELS = "cropcore_numpy.kernels"  # imported when an op first runs
_ROI_KERNELS = "cropcore_numpy.roi_align"


@hookimpl
def cropcore_backend_info() -> BackendInfo:
    return BackendInfo(
        name="numpy",
        array_library="numpy",
        devices=("cpu",),
        requires=("numpy",),
        description="reference implementation (vectorised NumPy, bit-exact with TensorFlow's CPU kernel)",
    )


cropcore_crop_and_resize = entry.hook(entry.crop_and_resize, _KERNELS)
cropcore_crop_and_resize_grad_image = entry.hook(entry.crop_and_resize_grad_image, _KERNELS)
cropcore_crop_and_resize_grad_boxes = entry.hook(entry.crop_and_resize_grad_boxes, _KERNELS)
cropcore_roi_align = entry.hook(entry.roi_align, _ROI_KERNELS)
cropcore_roi_align_grad_image = entry.hook(entry.roi_align_grad_image, _ROI_KERNELS)


@hookimpl
def cropcore_backend_peak_bytes(call: Any) -> int:
    # The vectorised kernels hold whole-call temporaries: three crop-sized float32 arrays and a
    # gather in the forward op; per-sample contributions (four corners, float64 at most), their
    # targets and the result's transposed copy in the image gradient; about ten sample-sized
    # float32 arrays in the box gradient; and per-box tables of rows and columns.
    if isinstance(call, (RoiAlignCall, RoiAlignGradImageCall)):
        return _roi_peak_bytes(call)
    samples = call.boxes.shape[0] * call.crop_size[0] * call.crop_size[1]
    tables = 64 * call.boxes.shape[0] * (call.crop_size[0] + call.crop_size[1])
    if isinstance(call, CropAndResizeCall):
        return 4 * memory.nbytes(call.output_shape, "float32") + 16 * samples + tables
    grads = samples * call.image_shape.depth
    if isinstance(call, GradImageCall):
        return 2 * memory.nbytes(call.output_shape, call.dtype) + 48 * grads + 48 * samples + tables
    return 64 * grads + 16 * samples + tables


def _roi_peak_bytes(call: RoiAlignCall | RoiAlignGradImageCall) -> int:
    # roi_align: the result and about ten result-sized arrays in the compute dtype (four gathers,
    # their products, the running value); its gradient: the image-sized sums and its copy, and
    # chunks of at most 2**22 (sample, corner, channel) entries, each index and value 16 bytes
    # with their temporaries.
    samples = call.num_boxes * call.output_size[0] * call.output_size[1]
    depth = call.image_shape.depth
    if isinstance(call, RoiAlignCall):
        return 12 * memory.nbytes((samples, depth), "float64") + 64 * samples
    return 3 * memory.nbytes(call.output_shape, "float64") + 40 * (1 << 22) + 64 * samples
