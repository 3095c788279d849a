"""cropcore's CuPy backend (alias ``cuda``): fused CUDA kernels, on the caller's GPU and stream.

Registered as the plugin ``cupy`` through the ``cropcore.backends`` entry point, like any
third-party backend; installed by ``pip install "cropcore[cupy]"``. Importing this module imports
neither cupy nor the kernels: :mod:`cropcore_cupy.kernels` (which compiles ``kernels.cu`` with NVRTC
on first use) is imported by the first op hook, and cupy by :func:`cropcore_backend_check`.

- Inputs from any CUDA library reach the kernels without copies: cropcore's dispatcher hands
  torch CUDA tensors (and any other DLPack producer) over as CuPy views; results go back to the
  image's library on its device.
- The arithmetic follows TensorFlow's CPU kernel operation by operation, compiled without FMA
  contraction and with flush-to-zero (see docs/cupy.md): the forward op and the deterministic image
  gradient are designed to be bit-identical with TensorFlow's CPU kernel; the atomic image gradient
  and the box gradient sum in another order.
- roi_align (torchvision's and ONNX Runtime's RoiAlign, avg and max) and its image gradient: IEEE
  arithmetic in torchvision's order, designed to be bit-identical with the numpy reference; the
  gradient is a gather, deterministic in every mode.
- The crop_and_resize image gradient is atomic by default; :func:`set_deterministic`, :func:`deterministic`, the
  environment variable ``CROPCORE_DETERMINISTIC=1`` or ``torch.use_deterministic_algorithms(True)``
  select the deterministic kernel.

Modules and files:

- ``crop_and_resize.cuh`` (including ``common.cuh``, ``forward.cuh``, ``grad_image.cuh``,
  ``grad_boxes.cuh``, and the core's ``tf_crop_and_resize.h`` for TF's per-sample arithmetic) and
  ``roi_align.cuh``: the device code, shared with the host test harness; ``kernels.cu``: the ``__global__``
  kernels (all shipped as package data);
- :mod:`cropcore_cupy._plan` (with ``_limits``, ``_abi``, ``_geometry``, ``_source``): kernel
  choice, argument lists, launch geometry, declines, source assembly (plain Python, testable
  without a GPU);
- :mod:`cropcore_cupy.kernels`: compiles and launches through CuPy.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from cropcore import config
from cropcore.hookspecs import IMAGE_DTYPES, METHODS, BackendInfo, hookimpl

if TYPE_CHECKING:
    from cropcore.hookspecs import (
        CropAndResizeCall,
        GradBoxesCall,
        GradImageCall,
        RoiAlignCall,
        RoiAlignGradImageCall,
    )

__all__ = [
    "DETERMINISTIC_ENV",
    "cropcore_backend_check",
    "cropcore_backend_declines",
    "cropcore_backend_info",
    "cropcore_conformance_tolerances",
    "cropcore_crop_and_resize",
    "cropcore_crop_and_resize_grad_boxes",
    "cropcore_crop_and_resize_grad_image",
    "cropcore_roi_align",
    "cropcore_roi_align_grad_image",
    "deterministic",
    "is_deterministic",
    "set_deterministic",
]

#: Set to 1 (or true, yes, on) to make the image gradient deterministic by default.
DETERMINISTIC_ENV = "CROPCORE_DETERMINISTIC"

_deterministic: bool | None = None
_scoped: ContextVar[bool | None] = ContextVar("cropcore_cupy_deterministic", default=None)


# --------------------------------------------------------------------------------------------------
# Deterministic mode


def set_deterministic(enabled: bool | None) -> None:
    """Choose the image gradient's kernel for this process: ``True`` deterministic, ``False``
    atomic, ``None`` back to the default (the environment variable, then torch's setting).
    """
    global _deterministic
    if enabled is not None and not isinstance(enabled, bool):
        raise TypeError(f"set_deterministic takes True, False or None, got {enabled!r}")
    _deterministic = enabled


@contextlib.contextmanager
def deterministic(enabled: bool = True) -> Iterator[None]:
    """Within the ``with`` block (this thread or task only), the image gradient is deterministic
    (or, with ``enabled=False``, atomic), whatever the process-wide setting.
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"deterministic takes True or False, got {enabled!r}")
    token = _scoped.set(enabled)
    try:
        yield
    finally:
        _scoped.reset(token)


def is_deterministic() -> bool:
    """Whether the next image gradient runs the deterministic kernel.

    The first that is set decides: a :func:`deterministic` block, :func:`set_deterministic`, the
    environment variable ``CROPCORE_DETERMINISTIC``, ``torch.are_deterministic_algorithms_enabled()``
    (only if torch is already imported). Otherwise the atomic kernel runs.
    """
    scoped = _scoped.get()
    if scoped is not None:
        return scoped
    if _deterministic is not None:
        return _deterministic
    configured = config.get(DETERMINISTIC_ENV)
    if configured is not None:
        return configured
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(AttributeError):
            return bool(torch.are_deterministic_algorithms_enabled())
    return False


# --------------------------------------------------------------------------------------------------
# Plugin hooks


@hookimpl
def cropcore_backend_info() -> BackendInfo:
    return BackendInfo(
        name="cupy",
        array_library="cupy",
        aliases=("cuda",),
        devices=("cuda",),
        dtypes=IMAGE_DTYPES,
        methods=METHODS,
        requires=("cupy",),
        install_hint='pip install "cropcore[cupy]"',
        # The kernels check every box index against the batch (a bad one: NaN crop and box-gradient
        # row, nothing in the image gradient, no load) and treat non-finite boxes as outside, so
        # device-resident box values reach them unread: no synchronisation per call.
        unchecked_values=True,
        description=(
            "fused CUDA kernels through CuPy (no FMA, flush-to-zero: TensorFlow's CPU rounding); "
            "deterministic image gradient on request"
        ),
    )


@hookimpl
def cropcore_backend_check() -> str | None:
    try:
        import cupy
    except Exception as exc:  # a wheel for another CUDA, a missing libcuda, ...
        return f"cupy cannot be imported: {type(exc).__name__}: {exc}"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cudaErrorNoDevice, cudaErrorInsufficientDriver, no libcuda.so
        return f"no CUDA device: {exc}"
    if count < 1:
        return "no CUDA device: cudaGetDeviceCount() returned 0"
    from cropcore_cupy import _plan

    capability = int(cupy.cuda.Device().compute_capability)
    if capability < _plan.MIN_COMPUTE_CAPABILITY:
        return (
            f"CUDA device {cupy.cuda.Device().id} has compute capability "
            f"{capability // 10}.{capability % 10}; the cupy backend needs 6.0 or newer"
        )
    try:
        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:  # the NVRTC library CuPy compiles kernels with is missing
        return f"CuPy cannot compile kernels (NVRTC unavailable): {exc}"
    return None


@hookimpl
def cropcore_backend_declines(call: Any) -> str | None:
    from cropcore_cupy import _plan

    return _plan.decline_reason(call)


@hookimpl
def cropcore_crop_and_resize(call: CropAndResizeCall) -> Any:
    from cropcore_cupy import kernels

    return kernels.crop_and_resize(call)


@hookimpl
def cropcore_crop_and_resize_grad_image(call: GradImageCall) -> Any:
    from cropcore_cupy import kernels

    return kernels.crop_and_resize_grad_image(call, is_deterministic())


@hookimpl
def cropcore_crop_and_resize_grad_boxes(call: GradBoxesCall) -> Any:
    from cropcore_cupy import kernels

    return kernels.crop_and_resize_grad_boxes(call)


@hookimpl
def cropcore_roi_align(call: RoiAlignCall) -> Any:
    from cropcore_cupy import kernels

    return kernels.roi_align(call)


@hookimpl
def cropcore_roi_align_grad_image(call: RoiAlignGradImageCall) -> Any:
    # Always the deterministic gather (docs/decisions.md): the switch above is for crop_and_resize.
    from cropcore_cupy import kernels

    return kernels.roi_align_grad_image(call)


@hookimpl
def cropcore_conformance_tolerances() -> dict[str, str]:
    # The forward kernel follows TF's CPU rounding and is designed to be bit-exact; it is held to
    # the GPU contract ("fma") until a GPU run has certified exactness. Gradients sum in another
    # order: atomics (image, default mode) and a tree per box (boxes).
    return {
        "*/grad_image/*": "reordered-sums",
        "*/grad_boxes/*": "reordered-sums",
        "*/crop2d/*": "exact",
        "*": "fma",
    }
