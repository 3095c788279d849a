"""cropcore's Numba backend: TensorFlow's CPU kernels, bit for bit, compiled and parallel.

Registered as the plugin ``numba`` through the ``cropcore.backends`` entry point, like any
third-party backend; installed by the ``numba`` extra (``pip install "cropcore[numba]"``). With
numba installed, automatic selection sends NumPy arrays here before the reference ``numpy``
backend.

Importing this module imports neither numba nor the kernels: :mod:`cropcore_numba.kernels` (which
compiles lazily, with an on-disk cache) is imported by the first op hook or by
:func:`cropcore_backend_check`.
"""

from __future__ import annotations

import platform
from types import ModuleType
from typing import Any

import numpy as np

from cropcore import memory
from cropcore.hookspecs import (
    BackendInfo,
    CropAndResizeCall,
    GradBoxesCall,
    GradImageCall,
    RoiAlignCall,
    RoiAlignGradImageCall,
    hookimpl,
)

__all__ = [
    "cropcore_backend_check",
    "cropcore_backend_info",
    "cropcore_backend_peak_bytes",
    "cropcore_crop_and_resize",
    "cropcore_crop_and_resize_grad_boxes",
    "cropcore_crop_and_resize_grad_image",
    "cropcore_roi_align",
    "cropcore_roi_align_grad_image",
]


@hookimpl
def cropcore_backend_info() -> BackendInfo:
    return BackendInfo(
        name="numba",
        array_library="numpy",
        devices=("cpu",),
        requires=("numba",),
        install_hint='pip install "cropcore[numba]"',
        description="compiled, multi-threaded CPU kernels (bit-exact with TensorFlow's CPU kernel)",
    )


@hookimpl
def cropcore_backend_check() -> str | None:
    try:
        import numba
    except Exception as exc:  # an incompatible NumPy makes numba raise ImportError, or worse
        return f"numba cannot be imported: {type(exc).__name__}: {exc}"
    try:
        from cropcore_numba import kernels
    except Exception as exc:
        return f"the numba kernels cannot be loaded (numba {numba.__version__}): {exc}"
    if not kernels.FLUSH_MODE_SUPPORTED:
        # TF's results depend on its flush-to-zero mode, which the kernels set through x86's MXCSR.
        return (
            f"the numba kernels need an x86-64 CPU to reproduce TensorFlow's flush-to-zero "
            f"arithmetic (this machine is {platform.machine()}); the numpy backend runs instead"
        )
    try:
        kernels.threading_layer()
    except Exception as exc:  # e.g. NUMBA_THREADING_LAYER names a layer that is not installed
        return f"numba has no usable threading layer: {exc}"
    return None


def _kernels() -> ModuleType:
    """:mod:`cropcore_numba.kernels`, imported (and its numba compiled) at the first op."""
    global _KERNELS
    if _KERNELS is None:
        from cropcore_numba import kernels

        _KERNELS = kernels
    return _KERNELS


_KERNELS: ModuleType | None = None


@hookimpl
def cropcore_crop_and_resize(call: CropAndResizeCall) -> np.ndarray:
    return _kernels().crop_and_resize(call)


@hookimpl
def cropcore_crop_and_resize_grad_image(call: GradImageCall) -> np.ndarray:
    return _kernels().crop_and_resize_grad_image(call)


@hookimpl
def cropcore_crop_and_resize_grad_boxes(call: GradBoxesCall) -> np.ndarray:
    return _kernels().crop_and_resize_grad_boxes(call)


@hookimpl
def cropcore_roi_align(call: RoiAlignCall) -> np.ndarray:
    return _kernels().roi_align(call)


@hookimpl
def cropcore_roi_align_grad_image(call: RoiAlignGradImageCall) -> np.ndarray:
    return _kernels().roi_align_grad_image(call)


@hookimpl
def cropcore_backend_peak_bytes(call: Any) -> int:
    if isinstance(call, (RoiAlignCall, RoiAlignGradImageCall)):
        # the result in the compute dtype (and its cast), a float32 copy of a float16 input,
        # and the sample tables: five (boxes, bins, grid) arrays per axis, about 30 bytes each
        result = memory.nbytes(call.output_shape, "float64")
        tables = 64 * call.num_boxes * (call.output_size[0] + call.output_size[1]) * 16
        source = call.image if isinstance(call, RoiAlignCall) else call.grads
        return 2 * result + 4 * int(source.size) + tables
    # The compiled kernels write the result directly; besides it they keep per-box tables of rows
    # and columns, and the forward op may convert the image to float32 first.
    tables = 32 * call.boxes.shape[0] * (call.crop_size[0] + call.crop_size[1])
    result = memory.nbytes(call.output_shape, call.output_dtype)
    if isinstance(call, CropAndResizeCall):
        return result + 4 * call.image.size + tables
    return result + tables
