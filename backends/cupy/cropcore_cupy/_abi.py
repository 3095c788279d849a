"""The kernels' ABI: their names, each family's parameter list, and argument lists in that order.

Requirements:

- **No CuPy here, and no device**: the argument lists built here are the ones the GPU kernels
  receive, and the ones the host test harness (tests/cupy_host_harness.cpp) receives in the tests.
- **One place for the kernels' ABI.** :data:`PARAMS` lists each kernel family's parameters in the
  order of the ``CROPCORE_*_PARAMS`` macros of the op headers (``forward.cuh``,
  ``grad_image.cuh``, ``grad_boxes.cuh``, ``roi_align.cuh``), with their C types; :func:`arguments` checks a call's
  values against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "CTYPES",
    "GRADS_AXES",
    "GRAD_DTYPES",
    "IMAGE_AXES",
    "PARAMS",
    "ROI_DTYPES",
    "VECTOR_WIDTHS",
    "Launch",
    "arguments",
    "family",
    "kernel_names",
    "stride_values",
]

#: The C type names of the nine image dtypes, and the three of the image gradient.
CTYPES = {
    "uint8": "unsigned char",
    "uint16": "unsigned short",
    "int8": "signed char",
    "int16": "short",
    "int32": "int",
    "int64": "long long",
    "float16": "cropcore::half_t",
    "float32": "float",
    "float64": "double",
}
GRAD_DTYPES = ("float16", "float32", "float64")
#: roi_align's dtypes (image and result, grads and image gradient): float16 and float32 computed in
#: float32, float64 in float64; the kernels take the boxes in that compute dtype.
ROI_DTYPES = ("float16", "float32", "float64")
VECTOR_WIDTHS = (1, 2, 4)

#: The axes of the strides a kernel takes, as its parameters name them (``{prefix}_{axis}``):
#: an image's (or image gradient's), and a grads array's, which has a box where an image has a batch.
IMAGE_AXES = ("batch", "row", "column", "channel")
GRADS_AXES = ("box", "y", "x", "channel")

_SCALARS = {
    "i32": np.int32,
    "i64": np.int64,
    "u32": np.uint32,
    "f32": np.float32,
    "f64": np.float64,
}


def _typed(kind: str, *names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, kind) for name in names)


def _stride_params(prefix: str, axes: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}_{axis}", "i64") for axis in axes)


#: Each kernel family's parameters, in the order of the op headers' CROPCORE_*_PARAMS:
#: (name, kind) with kind ``ptr`` (an array, or None for a null pointer), ``i32``, ``i64``,
#: ``u32``, ``f32``, ``f64``, or ``div`` (a ``fast_divider`` triple: u32 divisor, u32 magic, i32 shift).
PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "forward": (
        *_typed("ptr", "image", "boxes", "box_indices", "crops"),
        *_typed("i32", "batch", "height", "width", "depth"),
        *_stride_params("stride", IMAGE_AXES),
        *_typed("i32", "crop_height", "crop_width", "nchw", "nearest"),
        *_typed("f32", "extrapolation_value"),
        *_typed("u32", "rows", "groups", "row_length", "groups_per_pixel"),
        *_typed("div", "by_crop_height", "by_depth", "by_groups_per_pixel"),
    ),
    "grad_image": (
        *_typed(
            "ptr", "grads", "boxes", "box_indices", "output", "box_axes", "box_spans", "row_masks"
        ),
        *_typed(
            "i32",
            "num_boxes",
            "batch",
            "height",
            "width",
            "depth",
            "crop_height",
            "crop_width",
            "mask_words",
        ),
        *_stride_params("grads_stride", GRADS_AXES),
        *_stride_params("output_stride", IMAGE_AXES),
        *_typed("i32", "nchw", "nearest"),
        *_typed("u32", "rows", "groups"),
        *_typed("div", "by_crop_height", "by_depth", "by_height"),
    ),
    "grad_boxes": (
        *_typed("ptr", "grads", "image", "boxes", "box_indices", "partial", "output"),
        *_typed(
            "i32", "batch", "height", "width", "depth", "crop_height", "crop_width", "num_boxes"
        ),
        *_stride_params("grads_stride", GRADS_AXES),
        *_stride_params("image_stride", IMAGE_AXES),
        *_typed("u32", "elements", "chunk", "chunks"),
        *_typed("div", "by_row_elements", "by_depth"),
    ),
    "roi_align": (
        *_typed("ptr", "image", "boxes", "box_indices", "output"),
        *_typed("i32", "batch", "height", "width", "depth", "pooled_height", "pooled_width"),
        *_typed("i32", "sampling_ratio", "aligned", "max_mode", "nchw"),
        *_typed("f64", "spatial_scale"),
        *_typed("f32", "spatial_scale_f32"),
        *_stride_params("stride", IMAGE_AXES),
        *_stride_params("output_stride", GRADS_AXES),
        *_typed("u32", "rows", "groups"),
        *_typed("div", "by_pooled_height", "by_chunks"),
    ),
    "roi_align_grad": (
        *_typed("ptr", "grads", "boxes", "box_indices", "output", "box_spans", "row_masks"),
        *_typed("i32", "num_boxes", "mask_words", "batch", "height", "width", "depth"),
        *_typed("i32", "pooled_height", "pooled_width", "sampling_ratio", "aligned", "nchw"),
        *_typed("f64", "spatial_scale"),
        *_typed("f32", "spatial_scale_f32"),
        *_stride_params("grads_stride", GRADS_AXES),
        *_stride_params("output_stride", IMAGE_AXES),
        *_typed("u32", "rows", "groups"),
        *_typed("div", "by_height", "by_chunks"),
    ),
}

#: The kernel families in the order :func:`family` tries their name prefixes (the longer of two
#: prefixes first: ``roi_align_grad`` before ``roi_align``).
_FAMILIES = ("forward", "grad_image", "grad_boxes", "roi_align_grad", "roi_align")


def kernel_names() -> list[str]:
    """Every kernel kernels.cu defines (and the host harness mirrors), by extern "C" name."""
    names = [f"cropcore_forward_{dtype}_v{vec}" for dtype in CTYPES for vec in VECTOR_WIDTHS]
    names += [
        f"cropcore_grad_image_{kind}_{dtype}"
        for dtype in GRAD_DTYPES
        for kind in ("scatter", "setup", "gather")
    ]
    names += [f"cropcore_grad_boxes_{kind}{dtype}" for dtype in CTYPES for kind in ("", "finish_")]
    names += [f"cropcore_roi_align_forward_{dtype}" for dtype in ROI_DTYPES]
    names += [
        f"cropcore_roi_align_grad_{kind}_{dtype}"
        for dtype in ROI_DTYPES
        for kind in ("setup", "gather")
    ]
    return names


def family(kernel: str) -> str:
    """The :data:`PARAMS` key of a kernel name."""
    for name in _FAMILIES:
        if kernel.startswith(f"cropcore_{name}_"):
            return name
    raise ValueError(f"not a cropcore kernel: {kernel!r}")


def stride_values(prefix: str, axes: tuple[str, ...], strides: Sequence[int]) -> dict[str, int]:
    """The values of one stride parameter group: ``{prefix}_{axis}`` for each of ``axes``."""
    return {f"{prefix}_{axis}": stride for axis, stride in zip(axes, strides, strict=True)}


@dataclass(frozen=True)
class Launch:
    """One kernel launch: which kernel, of which op module, on which grid, with which arguments.

    ``args`` is in kernel-parameter order; arrays (and ``None`` for null pointers) are passed
    through as given, scalars are NumPy scalars of the parameter's C type.
    """

    kernel: str
    op: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple[Any, ...]


def arguments(kernel: str, values: dict[str, Any]) -> tuple[Any, ...]:
    """``values`` (by parameter name) as the kernel's argument list, divisors expanded."""
    out: list[Any] = []
    spec = PARAMS[family(kernel)]
    missing = {name for name, _ in spec} - set(values)
    extra = set(values) - {name for name, _ in spec}
    if missing or extra:
        raise AssertionError(f"{kernel}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for name, kind in spec:
        value = values[name]
        if kind == "ptr":
            out.append(value)
        elif kind == "div":
            divisor, magic, shift = value
            out += [np.uint32(divisor), np.uint32(magic), np.int32(shift)]
        else:
            out.append(_SCALARS[kind](value))
    return tuple(out)
