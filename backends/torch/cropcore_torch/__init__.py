"""cropcore's torch backend: TensorFlow's ``crop_and_resize`` for torch tensors, on CPU and CUDA, with autograd.

Registered as the plugin ``torch`` through the ``cropcore.backends`` entry point, like any
third-party backend; installed by ``pip install "cropcore[torch]"``. Importing this module does
not import torch: the hooks import :mod:`cropcore_torch.ops` (which registers the torch custom ops
``torch.ops.cropcore.*``) the first time they run.

For torch code:

- :func:`crop_and_resize`, :func:`crop_and_resize_grad_image`, :func:`crop_and_resize_grad_boxes`,
  :func:`crop2d`: the functions of :mod:`cropcore`, on torch tensors, with a ``validate=False``
  switch for trusted hot loops (see :func:`cropcore_torch.functions.crop_and_resize`);
- :class:`CropAndResize` and :class:`Cropping2D`: ``torch.nn.Module`` layers
  (:mod:`cropcore_torch.modules`); :class:`RoIAlign`, torchvision's module on cropcore's
  roi_align (:mod:`cropcore_torch.roi_align`).

Modules:

- :mod:`cropcore_torch.kernels` (with :mod:`~cropcore_torch.samples` and
  :mod:`~cropcore_torch.gradients`): the torch implementation (any device), bit-identical to
  TensorFlow's CPU kernel on CPU;
- :mod:`cropcore_torch._native`: the same loops compiled for the CPU (used when a C compiler is
  available);
- :mod:`cropcore_torch.ops`: the custom ops and their autograd formulas;
- :mod:`cropcore_torch.functions`: the public functions (``validate=False`` goes straight to the ops);
- :mod:`cropcore_torch.modules`: the layers;
- :mod:`cropcore_torch.roi_align`: roi_align's custom ops (with autograd) and ``RoIAlign``.
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING, Any

from cropcore import memory
from cropcore.hookspecs import IMAGE_DTYPES, BackendInfo, hookimpl

if TYPE_CHECKING:
    from cropcore.hookspecs import CropAndResizeCall, GradBoxesCall, GradImageCall

    # What the lazy names below are, for type checkers (mypy, pyright): real signatures, not Any.
    from cropcore_torch.functions import (
        crop2d,
        crop_and_resize,
        crop_and_resize_grad_boxes,
        crop_and_resize_grad_image,
    )
    from cropcore_torch.modules import CropAndResize, Cropping2D
    from cropcore_torch.roi_align import RoIAlign

__all__ = [
    "CropAndResize",
    "Cropping2D",
    "RoIAlign",
    "crop2d",
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "cropcore_backend_check",
    "cropcore_backend_info",
    "cropcore_crop_and_resize",
    "cropcore_crop_and_resize_grad_boxes",
    "cropcore_crop_and_resize_grad_image",
    "cropcore_roi_align",
    "cropcore_roi_align_grad_image",
]

# The public names that live in modules which import torch, loaded on first access (PEP 562).
_LAZY = {
    "crop_and_resize": "cropcore_torch.functions",
    "crop_and_resize_grad_image": "cropcore_torch.functions",
    "crop_and_resize_grad_boxes": "cropcore_torch.functions",
    "crop2d": "cropcore_torch.functions",
    "CropAndResize": "cropcore_torch.modules",
    "Cropping2D": "cropcore_torch.modules",
    "RoIAlign": "cropcore_torch.roi_align",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cropcore_torch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


@hookimpl
def cropcore_backend_info() -> BackendInfo:
    return BackendInfo(
        name="torch",
        array_library="torch",
        # meta: tensors without data (shape inference, torch.export), run by the ops' fake kernels
        devices=("cpu", "cuda", "meta"),
        # bfloat16 beyond TensorFlow's nine: computed in float32 (docs/decisions.md, issue 16)
        dtypes=(*IMAGE_DTYPES, "bfloat16"),
        requires=("torch",),
        install_hint='pip install "cropcore[torch]"',
        description=(
            "torch tensors on CPU and CUDA, with autograd; bit-exact with TensorFlow's CPU kernel "
            "on CPU"
        ),
        autograd=True,
        unchecked_values=True,
    )


@hookimpl
def cropcore_backend_check() -> str | None:
    import torch

    # torch.library.custom_op (and uint16 tensors) arrived in torch 2.4.
    if not hasattr(torch.library, "custom_op"):
        return f"torch {torch.__version__} is too old: cropcore's torch backend needs torch >= 2.4"
    _ops()
    return None


def _ops() -> Any:
    """:mod:`cropcore_torch.ops`, which registers ``torch.ops.cropcore.*`` when first imported."""
    import cropcore_torch.ops

    return cropcore_torch.ops


@hookimpl
def cropcore_crop_and_resize(call: CropAndResizeCall) -> Any:
    return _ops().run_crop_and_resize(call)


@hookimpl
def cropcore_crop_and_resize_grad_image(call: GradImageCall) -> Any:
    return _ops().run_grad_image(call)


@hookimpl
def cropcore_crop_and_resize_grad_boxes(call: GradBoxesCall) -> Any:
    return _ops().run_grad_boxes(call)


def _roi() -> Any:
    """:mod:`cropcore_torch.roi_align`, which registers ``torch.ops.cropcore.roi_align*``."""
    import cropcore_torch.roi_align

    return cropcore_torch.roi_align


@hookimpl
def cropcore_roi_align(call: Any) -> Any:
    return _roi().run_roi_align(call)


@hookimpl
def cropcore_roi_align_grad_image(call: Any) -> Any:
    return _roi().run_roi_align_grad_image(call)


@hookimpl
def cropcore_backend_peak_bytes(call: Any) -> int:
    # On CPU: the compiled loops write the result directly; the torch kernels (no C compiler, or
    # CROPCORE_TORCH_NATIVE=0) work in chunks of boxes, so their temporaries stay a fraction of
    # the result; per-box tables of rows and columns besides. On a GPU nothing is held on the host.
    anchor = call.image if hasattr(call, "image") else call.grads
    if anchor.device.type != "cpu":
        return 0
    if call.op.startswith("roi_align"):
        # the result in the compute dtype, about ten result-sized temporaries (the four corners'
        # gathers and products), an NHWC copy of the image; the gradient's chunks of 2**22 entries
        result = memory.nbytes(call.output_shape, "float64")
        return 12 * result + 8 * int(anchor.numel()) + 40 * (1 << 22)
    tables = 64 * call.boxes.shape[0] * (call.crop_size[0] + call.crop_size[1])
    return 2 * memory.nbytes(call.output_shape, call.output_dtype) + tables
