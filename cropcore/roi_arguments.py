"""roi_align's argument checks: each turns one user argument into its canonical form, or
refuses it, as :mod:`cropcore.arguments` does for the crop_and_resize family (whose shared pieces,
such as the per-image box lists and the 4-D checks, it reuses).

Requirements: those of :mod:`cropcore.arguments`: shape and dtype checks apart from value checks
(``roi_boxes_shape_arg`` against ``roi_boxes_values_arg``); refusals are ``ValueError``,
``TypeError`` or ``IndexError`` naming the argument.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from cropcore.arguments import (
    _CROPS_AXES,
    _INT_KINDS,
    _WIDE_INDEX_DTYPES,
    _four_d,
    _int_value,
    _is_box_list,
    _is_int,
    _kind,
    _real_boxes,
    _shape,
    _short,
    as_array,
    per_image_boxes,
)
from cropcore.arrays import dtype_name, library_for
from cropcore.calls import ROI_ALIGN_DTYPES, ROI_ALIGN_MODES, ImageShape

__all__ = [
    "aligned_arg",
    "output_size_arg",
    "roi_boxes_cast_arg",
    "roi_boxes_shape_arg",
    "roi_boxes_values_arg",
    "roi_grads_arg",
    "roi_image_arg",
    "roi_mode_arg",
    "sampling_ratio_arg",
    "spatial_scale_arg",
]


def roi_image_arg(image: Any, data_format: str, name: str = "image") -> tuple[Any, ImageShape]:
    """roi_align's image: 4-D, positive height and width, float16, float32 or float64."""
    image = as_array(image, name)
    dtype = dtype_name(image)
    if dtype not in ROI_ALIGN_DTYPES:
        raise TypeError(
            f"{name} must be float16, float32 or float64 for roi_align (as torchvision's and "
            f"ONNX's), got {dtype}; cast it first (crop_and_resize takes integer images)"
        )
    image, _, dims = _four_d(image, name, data_format)
    return image, dims


def output_size_arg(output_size: Any) -> tuple[int, int]:
    """roi_align's ``output_size``: an int or a pair of positive ints ``(height, width)``."""
    if _is_int(output_size):
        pair: tuple[Any, ...] = (output_size, output_size)
    elif isinstance(output_size, str) or not hasattr(output_size, "__len__"):
        raise TypeError(f"output_size must be an int or a pair of ints, got {_short(output_size)}")
    else:
        pair = tuple(output_size)
        if len(pair) != 2:
            raise ValueError(f"output_size must have 2 elements (height, width), got {pair}")
    size = tuple(_int_value(v, "output_size") for v in pair)
    if size[0] <= 0 or size[1] <= 0:
        raise ValueError(f"output_size must be positive, got {size}")
    return (size[0], size[1])


def spatial_scale_arg(spatial_scale: Any) -> float:
    """A finite real number (Python float)."""
    if isinstance(spatial_scale, (bool, np.bool_)) or not isinstance(spatial_scale, numbers.Real):
        raise TypeError(f"spatial_scale must be a real number, got {_short(spatial_scale)}")
    value = float(spatial_scale)
    if not math.isfinite(value):
        raise ValueError(f"spatial_scale must be finite, got {value}")
    return value


def sampling_ratio_arg(sampling_ratio: Any) -> int:
    """An int; ``<= 0`` means adaptive (``ceil(roi size / output size)`` samples per bin)."""
    return _int_value(sampling_ratio, "sampling_ratio")


def aligned_arg(aligned: Any) -> bool:
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"aligned must be True or False, got {_short(aligned)}")
    return bool(aligned)


def roi_mode_arg(mode: Any) -> str:
    if not isinstance(mode, str) or mode not in ROI_ALIGN_MODES:
        raise ValueError(f"mode must be 'avg' or 'max', got {_short(mode)}")
    return mode


def roi_boxes_shape_arg(boxes: Any, box_indices: Any, dtype: str) -> tuple[Any, Any]:
    """roi_align's boxes in any of torchvision's forms, as ``(num_boxes, 4)`` boxes cast to
    ``dtype`` and ``(num_boxes,)`` image indices (any integer dtype); no value is read.

    Forms: ``(K, 5)`` rows ``[index, x1, y1, x2, y2]`` (``box_indices`` must be ``None``); a list
    of per-image ``(L, 4)`` arrays (image ``i``'s boxes at position ``i``; ``box_indices`` must be
    ``None``); ``(K, 4)`` rows ``[x1, y1, x2, y2]`` with ``box_indices`` ``(K,)``.
    """
    if _is_box_list(boxes):
        if box_indices is not None:
            raise ValueError("box_indices must be None when boxes is a list of per-image arrays")
        return per_image_boxes(boxes, dtype)
    boxes = as_array(boxes, "boxes")
    shape = _shape(boxes)
    if len(shape) != 2 or shape[1] not in (4, 5):
        raise ValueError(
            f"boxes must have shape (num_boxes, 5) [index, x1, y1, x2, y2], or (num_boxes, 4) "
            f"with box_indices, or be a list of per-image (L, 4) arrays; got shape {shape}"
        )
    _real_boxes(boxes, "boxes")
    if shape[1] == 5:
        if box_indices is not None:
            raise ValueError(
                "box_indices must be None when boxes has 5 columns (the first is the image index)"
            )
        lib = library_for(boxes)
        return lib.astype(boxes[:, 1:], dtype), boxes[:, 0]
    if box_indices is None:
        raise ValueError(
            "boxes of shape (num_boxes, 4) need box_indices; or give boxes of shape "
            "(num_boxes, 5) with the image index in column 0, or a list of per-image arrays"
        )
    given = box_indices
    box_indices = as_array(box_indices, "box_indices")
    indices_shape = _shape(box_indices)
    if len(indices_shape) != 1 or indices_shape[0] != shape[0]:
        raise ValueError(
            f"box_indices must have shape ({shape[0]},) to match boxes, got shape {indices_shape}"
        )
    if _kind(dtype_name(box_indices)) not in _INT_KINDS:
        if indices_shape == (0,) and box_indices is not given:
            box_indices = np.zeros(0, np.int32)
        else:
            raise TypeError(f"box_indices must be an integer array, got {dtype_name(box_indices)}")
    return library_for(boxes).astype(boxes, dtype), box_indices


def roi_boxes_cast_arg(boxes: Any, box_indices: Any, batch: int) -> tuple[Any, Any]:
    """Box indices (from :func:`roi_boxes_shape_arg`) as int32 without reading a value: float
    indices (column 0 of ``(K, 5)`` boxes) truncated as torchvision's ``int`` cast, any index
    first clipped to ``[-1, batch]`` so that the cast cannot wrap a bad one into range."""
    lib = library_for(box_indices)
    if _kind(dtype_name(box_indices)) == "f" or dtype_name(box_indices) in _WIDE_INDEX_DTYPES:
        if dtype_name(box_indices) in ("uint32", "uint64"):
            box_indices = lib.astype(box_indices, "int64")
        box_indices = box_indices.clip(-1, batch)
    return boxes, lib.astype(box_indices, "int32")


def roi_boxes_values_arg(boxes: Any, box_indices: Any, batch: int) -> tuple[Any, Any]:
    """:func:`roi_boxes_cast_arg`, then every box coordinate finite, every index an integer in
    ``[0, batch)``. Reads the values on the host (a device synchronisation for device arrays)."""
    host_boxes = library_for(boxes).to_numpy(boxes)
    if host_boxes.size and not np.isfinite(host_boxes).all():
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(host_boxes))[0])
        raise ValueError(
            f"boxes must be finite (after the cast to {host_boxes.dtype}); got boxes[{bad[0]}, "
            f"{bad[1]}] = {host_boxes[bad]}"
        )
    host_indices = library_for(box_indices).to_numpy(box_indices)
    if _kind(host_indices.dtype.name) == "f":
        whole = np.isfinite(host_indices) & (host_indices == np.trunc(host_indices))
        if not whole.all():
            i = int(np.argmin(whole))
            raise ValueError(
                f"the image index of boxes[{i}] (column 0) must be a whole number, got "
                f"{host_indices[i]}"
            )
    if host_indices.size:
        out = (host_indices < 0) | (host_indices >= batch)
        if out.any():
            i = int(np.argmax(out))
            raise IndexError(
                f"box indices must be in [0, batch) = [0, {batch}); got {host_indices[i]:g} for "
                f"box {i}"
            )
    return roi_boxes_cast_arg(boxes, box_indices, batch)


def roi_grads_arg(grads: Any, data_format: str) -> tuple[Any, ImageShape]:
    """roi_align_grad_image's ``grads``: 4-D, float16, float32 or float64 (kept)."""
    grads = as_array(grads, "grads")
    dtype = dtype_name(grads)
    if dtype not in ROI_ALIGN_DTYPES:
        raise TypeError(f"grads must be float16, float32 or float64, got {dtype}")
    grads, _, dims = _four_d(grads, "grads", data_format, _CROPS_AXES)
    return grads, dims
