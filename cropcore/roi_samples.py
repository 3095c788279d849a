"""roi_align's per-box and per-sample arithmetic, in NumPy, shared by the CPU backends.

torchvision's CPU kernel (and ONNX Runtime's) computes, per box, the start, bin size and sampling
grid of each axis, and per sample its corners and weights, every operation rounded to the compute
dtype ``T`` (docs/semantics.md, "roi_align"). These are small ``(num_boxes, pooled, grid)``
tables; a backend's kernel does the gathers and the sums over channels with them. Computed here
once, in the exact operation order, so that every CPU backend starts from the same bits.

Requirements: NumPy only (this is the core); no array framework; results bit-identical to
``cropcore_numpy.roi_align_reference`` (torchvision's loop nests), which the tests check.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_SAMPLES", "Axis", "compute_dtype", "sample_axes", "samples_of"]


def compute_dtype(dtype: np.dtype) -> type:
    """The compute dtype for an image (or grads) of ``dtype``: float64 for float64, else float32."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


#: The most samples (bins x samples per bin, over every box) one call may take; beyond it the
#: adaptive sampling grid of a huge box would run for hours (torchvision's and ONNX Runtime's do).
MAX_SAMPLES = 2**31


@dataclass(frozen=True)
class Axis:
    """One axis of every box's samples: ``(num_boxes, pooled, grid)`` arrays."""

    inside: np.ndarray  # bool: within the box's grid and not beyond -1 or the image's size
    low: np.ndarray  # int64 pixel of the low corner (after clamping)
    high: np.ndarray  # int64 pixel of the high corner
    frac: np.ndarray  # T: l (the weight of the high corner)
    rest: np.ndarray  # T: h = 1 - l (the weight of the low corner)
    in_grid: np.ndarray  # bool: iy < grid (a real sample of the box)


def _geometry(boxes, spatial_scale, aligned, output_size, sampling_ratio, dtype):
    """Per box: starts, bin sizes and sampling grids of (y, x), as torchvision computes them."""
    t = np.dtype(dtype).type
    b = boxes.astype(dtype, copy=False)
    scale, offset = t(spatial_scale), t(0.5 if aligned else 0.0)
    start_w, start_h = b[:, 0] * scale - offset, b[:, 1] * scale - offset
    end_w, end_h = b[:, 2] * scale - offset, b[:, 3] * scale - offset
    size_w, size_h = end_w - start_w, end_h - start_h
    if not aligned:  # malformed boxes are forced to 1 x 1
        size_w = np.where(size_w < t(1), t(1), size_w)
        size_h = np.where(size_h < t(1), t(1), size_h)
    pooled_h, pooled_w = output_size
    bin_h, bin_w = size_h / t(pooled_h), size_w / t(pooled_w)
    if sampling_ratio > 0:
        grid_h = np.full(len(b), sampling_ratio, np.int64)
        grid_w = grid_h.copy()
    else:
        grid_h = _ceil(size_h / t(pooled_h))
        grid_w = _ceil(size_w / t(pooled_w))
    return (start_h, bin_h, grid_h), (start_w, bin_w, grid_w)


def _ceil(x: np.ndarray) -> np.ndarray:
    """``(int) ceil(x)``; a non-finite or negative size gives an empty grid."""
    with np.errstate(invalid="ignore", over="ignore"):
        c = np.ceil(x)
        c = np.where(np.isfinite(c) & (c > 0), c, 0)
        return np.minimum(c, 2.0**40).astype(np.int64)


def samples_of(boxes, spatial_scale, aligned, output_size, sampling_ratio, dtype) -> int:
    """The number of samples a call takes (bins x samples per bin, over every box)."""
    (_, _, grid_h), (_, _, grid_w) = _geometry(
        boxes, spatial_scale, aligned, output_size, sampling_ratio, dtype
    )
    per_box = grid_h.astype(object) * grid_w.astype(object)
    return int(sum(per_box.tolist())) * output_size[0] * output_size[1]


def _axis(start, bin_size, grid, pooled: int, size: int, dtype) -> Axis:
    t = np.dtype(dtype).type
    most = int(grid.max()) if grid.size else 0
    p = np.arange(pooled).astype(dtype)[None, :, None]
    i = (np.arange(most) + np.float32(0.5)).astype(np.float32).astype(dtype)[None, None, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        grid_t = np.maximum(grid, 1).astype(dtype)[:, None, None]
        c = (start[:, None, None] + p * bin_size[:, None, None]) + (
            i * bin_size[:, None, None]
        ) / grid_t
    in_grid = np.broadcast_to(np.arange(most)[None, None, :] < grid[:, None, None], c.shape)
    wide = c.astype(np.float64)  # C compares a float with -1.0 and an int in double
    # (a non-finite coordinate, from boxes nobody checked, is empty too: never an index)
    inside = in_grid & np.isfinite(wide) & ~((wide < -1.0) | (wide > size))
    c = np.where(c <= 0, t(0), c)
    low = np.where(inside, c, 0).astype(np.int64)  # (int) of a non-negative coordinate
    at_edge = low >= size - 1
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    c = np.where(at_edge, low.astype(dtype), c)
    frac = (c - low.astype(dtype)).astype(dtype)
    rest = (t(1) - frac).astype(dtype)
    return Axis(inside, low, high, frac, rest, in_grid)


def sample_axes(
    boxes: np.ndarray,
    image_hw: tuple[int, int],
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    dtype: type,
) -> tuple[Axis, Axis, np.ndarray, np.ndarray]:
    """The y and x sample tables of every box, and each box's grids ``(grid_h, grid_w)`` (int64).

    ``ValueError`` when the call would take more than :data:`MAX_SAMPLES` samples.
    """
    total = samples_of(boxes, spatial_scale, aligned, output_size, sampling_ratio, dtype)
    if total > MAX_SAMPLES:
        raise ValueError(
            f"roi_align would take {total} samples (output bins x samples per bin over every "
            f"box), more than {MAX_SAMPLES}: the boxes are huge for an adaptive sampling_ratio; "
            "pass a positive sampling_ratio"
        )
    (sh, bh, gh), (sw, bw, gw) = _geometry(
        boxes, spatial_scale, aligned, output_size, sampling_ratio, dtype
    )
    height, width = image_hw
    y = _axis(sh, bh, gh, output_size[0], height, dtype)
    x = _axis(sw, bw, gw, output_size[1], width, dtype)
    return y, x, gh, gw
