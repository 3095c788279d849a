"""roi_align and its image gradient, vectorised over boxes, bins and channels.

The arithmetic is torchvision's CPU kernel (``torchvision/csrc/ops/cpu/roi_align_kernel.cpp``,
which ONNX Runtime's ``RoiAlign`` shares, from Caffe2), operation for operation in the compute
dtype ``T`` (float64 for float64, else float32), so that every result is bit-identical to the
loop nests of :mod:`cropcore_numpy.roi_align_reference`:

- per box: ``start = x1 * T(spatial_scale) - offset`` (offset 0.5 when aligned), ``size = end -
  start`` (at least 1 unless aligned), ``bin = size / T(pooled)``, ``grid = sampling_ratio`` or
  ``ceil(size / pooled)``;
- per sample: ``y = (start_h + T(ph) * bin_h) + (T(iy + 0.5) * bin_h) / T(grid_h)``; a sample with
  ``y < -1 or y > height`` (or the same for x) is *empty*: weight 0 at pixel 0 in the forward op
  (so ``0 * image[0, 0]`` is still added, NaN and infinity included), nothing in the gradient;
  else ``y`` is clamped to 0 below and to the last pixel above, and the four corners get weights
  ``hy * hx, hy * lx, ly * hx, ly * lx``;
- avg: ``out = ((((out + (w1 * v1 + w2 * v2 + w3 * v3 + w4 * v4))...) / T(max(count, 1))``, the
  samples in ``iy, ix`` order; max (ONNX Runtime's): the largest of ``w * v`` over corners and
  samples, ``std::max`` order;
- gradient: each sample adds ``(g * w) / T(count)`` to its four corners, in torchvision's order
  (boxes, bins, samples, corners), which ``np.add.at`` keeps.

NHWC arrays in and out; :mod:`cropcore_numpy.entry` serves NCHW through transposed views.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MAX_SAMPLES", "roi_align", "roi_align_grad_image", "samples_of"]

#: The most samples (bins x samples per bin, over every box) one call may take; beyond it the
#: adaptive sampling grid of a huge box would run for hours (torchvision's and ONNX Runtime's do).
MAX_SAMPLES = 2**31


@dataclass(frozen=True)
class _Axis:
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


def _axis(start, bin_size, grid, pooled: int, size: int, dtype) -> _Axis:
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
    inside = in_grid & ~((wide < -1.0) | (wide > size))
    c = np.where(c <= 0, t(0), c)
    low = np.where(inside, c, 0).astype(np.int64)  # (int) of a non-negative coordinate
    at_edge = low >= size - 1
    low = np.where(at_edge, size - 1, low)
    high = np.where(at_edge, size - 1, low + 1)
    c = np.where(at_edge, low.astype(dtype), c)
    frac = (c - low.astype(dtype)).astype(dtype)
    rest = (t(1) - frac).astype(dtype)
    return _Axis(inside, low, high, frac, rest, in_grid)


def _axes(boxes, image_hw, output_size, spatial_scale, sampling_ratio, aligned, dtype):
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


def _std_max(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """C++'s ``std::max(a, b)``: ``a < b ? b : a`` (NaN in ``a`` is kept, in ``b`` dropped)."""
    return np.where(a < b, b, a)


def roi_align(
    image: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
    mode: str,
) -> np.ndarray:
    """NHWC ``image`` (float16/32/64) -> ``(num_boxes, pooled_h, pooled_w, depth)`` of its dtype."""
    batch, height, width, depth = image.shape
    dtype = np.float64 if image.dtype == np.float64 else np.float32
    t = np.dtype(dtype).type
    k = boxes.shape[0]
    ph, pw = output_size
    out = np.zeros((k, ph, pw, depth), dtype)
    if k == 0 or depth == 0:
        return out.astype(image.dtype)
    y, x, gh, gw = _axes(
        boxes, (height, width), output_size, spatial_scale, sampling_ratio, aligned, dtype
    )
    pixels = image.reshape(batch * height * width, depth)
    base = box_indices.astype(np.int64)[:, None, None] * (height * width)
    started = np.zeros((k, ph, pw), bool)
    for iy in range(y.low.shape[2]):
        for ix in range(x.low.shape[2]):
            real = y.in_grid[:, :, iy, None] & x.in_grid[:, None, :, ix]
            if not real.any():
                continue
            inside = y.inside[:, :, iy, None] & x.inside[:, None, :, ix]
            terms = []
            for ya, wy in ((y.low, y.rest), (y.high, y.frac)):
                for xa, wx in ((x.low, x.rest), (x.high, x.frac)):
                    w = np.where(inside, wy[:, :, iy, None] * wx[:, None, :, ix], t(0))
                    row = np.where(inside, ya[:, :, iy, None] * width + xa[:, None, :, ix], 0)
                    v = pixels[base + row].astype(dtype, copy=False)
                    terms.append(w[..., None] * v)
            if mode == "avg":
                term = ((terms[0] + terms[1]) + terms[2]) + terms[3]
                out = np.where(real[..., None], out + term, out)
            else:
                val = _std_max(_std_max(_std_max(terms[0], terms[1]), terms[2]), terms[3])
                first = (real & ~started)[..., None]
                out = np.where(first, val, np.where(real[..., None], _std_max(out, val), out))
                started |= real
    if mode == "avg":
        count = np.maximum(gh * gw, 1).astype(dtype)
        out = out / count[:, None, None, None]
    return out.astype(image.dtype)


#: Entries (samples x 4 corners x channels) added per ``np.add.at`` call in the gradient.
_CHUNK_ELEMENTS = 1 << 22


def roi_align_grad_image(
    grads: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    image_shape: tuple[int, int, int, int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> np.ndarray:
    """NHWC ``grads`` ``(num_boxes, pooled_h, pooled_w, depth)`` -> NHWC image gradient of
    ``grads``' dtype (float16 accumulated in float32 and rounded once)."""
    batch, height, width, depth = image_shape
    dtype = np.float64 if grads.dtype == np.float64 else np.float32
    k, ph, pw, _ = grads.shape
    acc = np.zeros((batch * height * width, depth), dtype)
    if k == 0 or depth == 0:
        return acc.reshape(image_shape).astype(grads.dtype)
    y, x, gh, gw = _axes(
        boxes, (height, width), (ph, pw), spatial_scale, sampling_ratio, aligned, dtype
    )
    count = (gh * gw).astype(dtype)
    g = grads.astype(dtype, copy=False)
    gy, gx = y.low.shape[2], x.low.shape[2]
    per_box = ph * pw * max(gy * gx, 1) * 4 * max(depth, 1)
    step = max(1, _CHUNK_ELEMENTS // per_box)
    for first in range(0, k, step):
        n = slice(first, min(first + step, k))
        # (box, ph, pw, iy, ix): torchvision's order of samples for each channel.
        inside = y.inside[n][:, :, None, :, None] & x.inside[n][:, None, :, None, :]
        rows, values = [], []
        for ya, wy in ((y.low, y.rest), (y.high, y.frac)):
            for xa, wx in ((x.low, x.rest), (x.high, x.frac)):
                w = wy[n][:, :, None, :, None] * wx[n][:, None, :, None, :]
                row = ya[n][:, :, None, :, None] * width + xa[n][:, None, :, None, :]
                # (g * w) / count, per channel (a box with no sample has count 0 and no entry)
                with np.errstate(divide="ignore", invalid="ignore"):
                    v = (g[n][:, :, :, None, None, :] * w[..., None]) / count[n][
                        :, None, None, None, None, None
                    ]
                rows.append(row)
                values.append(v)
        base = box_indices[n].astype(np.int64)[:, None, None, None, None] * (height * width)
        # corners last: (box, ph, pw, iy, ix, corner)
        row = np.stack(rows, axis=-1) + base[..., None]
        value = np.stack(values, axis=-2)
        keep = np.broadcast_to(inside[..., None], row.shape)
        np.add.at(acc, row[keep], value[keep])
    return acc.reshape(image_shape).astype(grads.dtype)
