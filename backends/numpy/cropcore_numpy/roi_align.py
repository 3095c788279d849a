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

import numpy as np

from cropcore.roi_samples import compute_dtype, sample_axes

__all__ = ["roi_align", "roi_align_grad_image"]


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
    dtype = compute_dtype(image.dtype)
    k = boxes.shape[0]
    ph, pw = output_size
    out = np.zeros((k, ph, pw, depth), dtype)
    if k == 0 or depth == 0:
        return out.astype(image.dtype)
    y, x, gh, gw = sample_axes(
        boxes, (height, width), output_size, spatial_scale, sampling_ratio, aligned, dtype
    )
    pixels = image.reshape(batch * height * width, depth)
    base = box_indices.astype(np.int64)[:, None, None] * (height * width)
    started = np.zeros((k, ph, pw), bool)
    with np.errstate(invalid="ignore", over="ignore"):  # 0 * inf is NaN here, as in torchvision
        _accumulate(out, started, pixels, base, y, x, width, mode)
    if mode == "avg":
        count = np.maximum(gh * gw, 1).astype(dtype)
        out = out / count[:, None, None, None]
    return out.astype(image.dtype)


def _accumulate(out, started, pixels, base, y, x, width, mode):
    """The forward sums (or maxima) over the samples of every bin, in ``iy, ix`` order, into
    ``out`` (and ``started``, for max mode), in place."""
    t = out.dtype.type
    dtype = out.dtype
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
                out[...] = np.where(real[..., None], out + term, out)
            else:
                val = _std_max(_std_max(_std_max(terms[0], terms[1]), terms[2]), terms[3])
                first = (real & ~started)[..., None]
                out[...] = np.where(first, val, np.where(real[..., None], _std_max(out, val), out))
                started |= real


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
    dtype = compute_dtype(grads.dtype)
    k, ph, pw, _ = grads.shape
    acc = np.zeros((batch * height * width, depth), dtype)
    if k == 0 or depth == 0:
        return acc.reshape(image_shape).astype(grads.dtype)
    y, x, gh, gw = sample_axes(
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
