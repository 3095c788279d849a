"""roi_align's compiled CPU loops for the torch backend (in ``_native.c``, beside crop_and_resize's).

torchvision's arithmetic: cropcore_numba's kernels ported operation for operation over
:mod:`cropcore.roi_samples`' tables, without TF's flush-to-zero (torchvision and ONNX Runtime keep
subnormals); the same bits as :mod:`cropcore_torch.roi_align`'s torch ops. Forward: threads over
boxes; image gradient: one block of channels per thread, each summed over every box in
torchvision's order. The library, its thread pool, the work split and the transposes are
:mod:`._native`'s.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from cropcore import hostmem
from cropcore.roi_samples import sample_axes
from cropcore_torch._build import library
from cropcore_torch._native import (
    _run_split,
    _transposed,
    channels_first,
)

__all__ = ["roi_align", "roi_align_grad_image"]


# --------------------------------------------------------------------------------------------------
# roi_align: torchvision's arithmetic (cropcore_numba.roi_align's kernels, operation for operation)

#: :func:`channels_first` (the roi functions' argument of that name hides it).
_nhwc_to_nchw_f32 = channels_first


class _RoiTables(NamedTuple):
    """:func:`cropcore.roi_samples.sample_axes` of the boxes, as the roi loops take them."""

    arrays: list[np.ndarray]  # keeps the memory alive during the call
    pointers: list[int]  # y (inside, low, high, frac, rest), x (same), grid_h, grid_w
    grid: tuple[int, int]  # GY, GX: the tables' sample axes (the largest grid of any box)
    grid_h: np.ndarray
    grid_w: np.ndarray


def _roi_tables(boxes: Tensor, height: int, width: int, size, scale, ratio, aligned, dtype):
    host = boxes.detach().to("cpu", torch.float64 if dtype is np.float64 else torch.float32)
    y, x, grid_h, grid_w = sample_axes(
        host.numpy(), (height, width), size, scale, ratio, aligned, dtype
    )
    arrays = [
        np.ascontiguousarray(a.view(np.uint8) if a.dtype == np.bool_ else a)
        for axis in (y, x)
        for a in (axis.inside, axis.low, axis.high, axis.frac, axis.rest)
    ]
    arrays += [np.ascontiguousarray(grid_h, np.int64), np.ascontiguousarray(grid_w, np.int64)]
    pointers = [a.ctypes.data for a in arrays]
    return _RoiTables(arrays, pointers, (y.low.shape[2], x.low.shape[2]), grid_h, grid_w)


def _roi_indices(box_indices: Tensor, boxes: Tensor, num_boxes: int, batch: int) -> Tensor:
    """int32 contiguous box indices (values outside ``[0, batch)`` kept outside it), after the
    shape checks the loops' memory safety rests on (the ops can be called directly)."""
    if boxes.shape != (num_boxes, 4):
        raise ValueError(f"boxes must be ({num_boxes}, 4), got {tuple(boxes.shape)}")
    if box_indices.shape != (num_boxes,):
        raise ValueError(
            f"box_indices must be (num_boxes,) = ({num_boxes},), got {tuple(box_indices.shape)}"
        )
    return box_indices.to(torch.int64).clamp(-1, batch).to(torch.int32).contiguous()


def _roi_scratch(size: int, dtype: torch.dtype):
    """A per-thread scratch factory for :func:`_run_split`: ``size`` values of ``dtype``."""

    def scratch() -> tuple[int, Tensor]:
        buffer = torch.empty(max(size, 1), dtype=dtype)
        return buffer.data_ptr(), buffer

    return scratch


def _nhwc_compute(image: Tensor, channels_first: bool, t: torch.dtype) -> Tensor:
    """The image NHWC, contiguous, in the compute dtype ``t`` (an NCHW float32 image transposed
    once by the compiled tiled loop)."""
    if channels_first and image.dtype == torch.float32 and t == torch.float32:
        batch, depth, height, width = image.shape
        if batch and depth and height * width:
            flat = image.contiguous().view(batch, depth, height * width)
            return _transposed(flat, depth, height * width).view(batch, height, width, depth)
    nhwc = image.permute(0, 2, 3, 1) if channels_first else image
    return nhwc.to(t).contiguous()


def roi_align(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    pooled_height: int,
    pooled_width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    max_mode: bool,
    channels_first: bool,
) -> Tensor:
    """roi_align of a CPU image by the compiled loops, bit-identical to the torch ops' path.

    ``image``: float16, float32 or float64, ``(B, C, H, W)`` when ``channels_first`` else
    ``(B, H, W, C)``; ``boxes`` ``(K, 4)`` ``[x1, y1, x2, y2]``; ``box_indices`` ``(K,)``
    integers (outside ``[0, B)``: that box's result is NaN). Returns the image's dtype, ``(K, C,
    pooled_height, pooled_width)`` or ``(K, pooled_height, pooled_width, C)``; computed in
    float64 for float64, else float32.
    """
    lib = library()
    assert lib is not None
    dtype = np.float64 if image.dtype == torch.float64 else np.float32
    t = torch.float64 if dtype is np.float64 else torch.float32
    if channels_first:
        batch, depth, height, width = image.shape
    else:
        batch, height, width, depth = image.shape
    k, bins = boxes.shape[0], pooled_height * pooled_width
    indices = _roi_indices(box_indices, boxes, k, batch)
    if k * bins * depth and batch and not height * width:  # the op called directly
        raise ValueError(
            f"image must have a height and width of at least 1 to sample boxes from, got "
            f"{tuple(image.shape)}"
        )
    layout = (k, depth, bins) if channels_first else (k, bins, depth)
    if not k * bins * depth:
        out = torch.zeros(layout, dtype=t)
    else:  # every element is written: recycled memory (fresh pages cost as much as the loops)
        out = torch.from_numpy(hostmem.pool().empty(layout, dtype))
        pixels = _nhwc_compute(image, channels_first, t)
        tables = _roi_tables(
            boxes, height, width, (pooled_height, pooled_width), spatial_scale, sampling_ratio,
            aligned, dtype,
        )  # fmt: skip
        count = np.maximum(tables.grid_h * tables.grid_w, 1).astype(dtype)
        fixed = (
            pixels.data_ptr(), batch, height, width, depth, indices.data_ptr(),
            pooled_height, pooled_width, *tables.grid, *tables.pointers, count.ctypes.data,
            int(max_mode), int(channels_first), out.data_ptr(),
        )  # fmt: skip
        function = getattr(lib, f"roi_forward_{'f64' if dtype is np.float64 else 'f32'}")
        work = out.numel() * max(1, tables.grid[0] * tables.grid[1])
        _run_split(function, fixed, k, work, _roi_scratch(bins * depth, t))
    shape = (
        (k, depth, pooled_height, pooled_width)
        if channels_first
        else (k, pooled_height, pooled_width, depth)
    )
    return out.view(shape).to(image.dtype)


def roi_align_grad_image(
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    batch: int,
    height: int,
    width: int,
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    channels_first: bool,
) -> Tensor:
    """roi_align's image gradient of CPU ``grads`` by the compiled loops, in torchvision's order.

    ``grads``: float16, float32 or float64, roi_align's output shape (``(K, C, PH, PW)`` when
    ``channels_first`` else ``(K, PH, PW, C)``). Returns ``grads``' dtype, ``(batch, C, height,
    width)`` or ``(batch, height, width, C)``, summed in float64 for float64, else float32
    (deterministic: each channel is summed by one thread, in the same order as the torch ops').
    Boxes whose index is outside ``[0, batch)`` add nothing.
    """
    lib = library()
    assert lib is not None
    dtype = np.float64 if grads.dtype == torch.float64 else np.float32
    t = torch.float64 if dtype is np.float64 else torch.float32
    if channels_first:
        k, depth, pooled_h, pooled_w = grads.shape
    else:
        k, pooled_h, pooled_w, depth = grads.shape
    bins = pooled_h * pooled_w
    indices = _roi_indices(box_indices, boxes, k, batch)
    nhwc = (batch, height, width, depth)
    if not (k * bins * depth and math.prod(nhwc)):
        acc = torch.zeros(nhwc, dtype=t)
    else:  # recycled memory, zeroed by the loops (each thread its channels)
        acc = torch.from_numpy(hostmem.pool().empty(nhwc, dtype))
        g = grads.to(t).contiguous()
        tables = _roi_tables(
            boxes, height, width, (pooled_h, pooled_w), spatial_scale, sampling_ratio, aligned,
            dtype,
        )  # fmt: skip
        samples = tables.grid_h * tables.grid_w
        count = samples.astype(dtype)
        # x / count is x * (1 / count) exactly where count is a power of two (0: divide)
        exact = (samples > 0) & ((samples & (samples - 1)) == 0)
        inverse = np.where(exact, 1 / np.maximum(count, 1), 0).astype(dtype)
        fixed = (
            g.data_ptr(), batch, height, width, depth, indices.data_ptr(), k,
            pooled_h, pooled_w, *tables.grid, *tables.pointers, count.ctypes.data,
            inverse.ctypes.data, int(channels_first), acc.data_ptr(),
        )  # fmt: skip
        function = getattr(lib, f"roi_grad_{'f64' if dtype is np.float64 else 'f32'}")
        work = max(g.numel() * 4 * max(1, tables.grid[0] * tables.grid[1]), acc.numel())
        # one block of channels per thread, as numba's: each block is a walk over every box's
        # samples, and wider blocks read whole cache lines per corner (measured at 14 x 14: 0.42
        # s against 0.68 to 0.82 s with four blocks per thread)
        scratch = _roi_scratch(bins * depth, t)
        _run_split(function, fixed, depth, work, scratch, per_thread=1)
    if channels_first:
        acc = _nhwc_to_nchw_f32(acc) if t == torch.float32 else acc.permute(0, 3, 1, 2)
        acc = acc.contiguous()
    return acc.to(grads.dtype)
