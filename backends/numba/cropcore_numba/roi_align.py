"""roi_align and its image gradient in Numba: torchvision's CPU arithmetic, compiled and parallel.

The per-box and per-sample tables (corners, weights, which samples are empty) come from
:mod:`cropcore.roi_samples`, the same NumPy code every CPU backend starts from: they are
separable, one table per bin row (y) and one per bin column (x), as torchvision's ``pre_calc``.
These kernels do the gathers and the sums, every operation in the compute dtype ``T`` and in
torchvision's order, so that results are bit-identical to the reference (``cropcore_numpy``) and
to ONNX Runtime:

- forward, per bin and channel: ``out += ((w1 * v1 + w2 * v2) + w3 * v3) + w4 * v4`` over the
  samples in ``iy, ix`` order, from 0, then ``out / count`` (avg); or the ``std::max`` chain of
  the weighted corners (max). An empty sample has weights 0 at pixel (0, 0), as in torchvision.
  The image is read NHWC (an NCHW image is transposed first, in parallel), so the channel loop is
  innermost and contiguous; each box's bins are computed in a tile of the worker's own and
  written to the result in its layout (NCHW: transposed there, no second pass over the result).
  Workers take chunks of boxes from a shared counter.
- image gradient: ``acc += (g * w) / count`` per corner, in the order boxes, bins, samples,
  corners, summed NHWC (the channel loop innermost and contiguous; an NCHW result is transposed
  at the end, in parallel). Parallel over blocks of channels: each channel is summed by one
  worker, in that order, so the result is deterministic and independent of the thread count.
  Where ``count`` is a power of two, ``x / count`` is computed as ``x * (1 / count)``: the same
  real number, so the same rounding (a division costs several multiplications).

No flush-to-zero here (torchvision and ONNX Runtime compute with IEEE subnormals), and no
``fastmath`` (no contraction into fused multiply-adds). The kernels run without bounds checks on
validated calls: every box index is in ``[0, batch)`` and every table index is clamped to the
image by :mod:`cropcore.roi_samples`.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from cropcore_numba._arith import chunk_range, next_chunk, serial_and_parallel

__all__ = [
    "nchw_to_nhwc_parallel",
    "nchw_to_nhwc_serial",
    "nhwc_to_nchw_parallel",
    "nhwc_to_nchw_serial",
    "roi_forward_parallel",
    "roi_forward_serial",
    "roi_grad_parallel",
    "roi_grad_serial",
    "zero_rows_parallel",
    "zero_rows_serial",
]

#: Elements per block of the transposes: 16 float32 are one 64-byte cache line.
_BLOCK = 16


@njit(inline="always")
def _std_max(a, b):  # pragma: no cover - compiled
    """C++'s ``std::max(a, b)``: ``a < b ? b : a``."""
    return b if a < b else a


@njit(inline="always")
def _corners(k, ph, pw, iy, ix, y, x, zero):  # pragma: no cover - compiled
    """The four weights and corner pixels of sample (iy, ix) of bin (ph, pw) of box k."""
    y_inside, y_low, y_high, y_frac, y_rest = y
    x_inside, x_low, x_high, x_frac, x_rest = x
    if y_inside[k, ph, iy] and x_inside[k, pw, ix]:
        hy, ly = y_rest[k, ph, iy], y_frac[k, ph, iy]
        hx, lx = x_rest[k, pw, ix], x_frac[k, pw, ix]
        return (
            hy * hx,
            hy * lx,
            ly * hx,
            ly * lx,
            y_low[k, ph, iy],
            y_high[k, ph, iy],
            x_low[k, pw, ix],
            x_high[k, pw, ix],
            True,
        )
    return zero, zero, zero, zero, 0, 0, 0, 0, False


@njit(inline="always")
def _box_bins(image, b, k, y, x, grid_h, grid_w, count, max_mode, tile, zero):  # pragma: no cover
    """Every bin of box ``k`` into ``tile`` (``(pooled_h * pooled_w, depth)``, ``T``)."""
    pooled_h, pooled_w = y[1].shape[1], x[1].shape[1]
    depth = tile.shape[1]
    for ph in range(pooled_h):
        for pw in range(pooled_w):
            row = tile[ph * pooled_w + pw]
            for c in range(depth):
                row[c] = zero
            first = True
            for iy in range(grid_h[k]):
                for ix in range(grid_w[k]):
                    w1, w2, w3, w4, yl, yh, xl, xh, _ = _corners(k, ph, pw, iy, ix, y, x, zero)
                    v1, v2 = image[b, yl, xl], image[b, yl, xh]
                    v3, v4 = image[b, yh, xl], image[b, yh, xh]
                    if max_mode:
                        for c in range(depth):
                            p1, p2, p3, p4 = w1 * v1[c], w2 * v2[c], w3 * v3[c], w4 * v4[c]
                            val = _std_max(_std_max(_std_max(p1, p2), p3), p4)
                            row[c] = val if first else _std_max(row[c], val)
                    else:
                        for c in range(depth):
                            row[c] += ((w1 * v1[c] + w2 * v2[c]) + w3 * v3[c]) + w4 * v4[c]
                    first = False
            if not max_mode:
                n = count[k]
                for c in range(depth):
                    row[c] = row[c] / n


def _roi_forward(
    image, box_indices, y, x, grid_h, grid_w, count, max_mode, channels_first, out,
    num_workers, num_chunks, zero,
):  # fmt: skip  # pragma: no cover - compiled
    """``out``: the roi_align of ``image`` (``T``, NHWC, C-contiguous), every element written.

    ``out`` is ``(num_boxes, depth, bins)`` when ``channels_first``, else ``(num_boxes, bins,
    depth)`` (``T``, C-contiguous; ``bins = pooled_h * pooled_w``). ``num_workers`` workers take
    the ``num_chunks`` chunks of boxes in turn; the serial variant (1, 1) runs them all in one.
    """
    num_boxes = box_indices.shape[0]
    bins = y[1].shape[1] * x[1].shape[1]
    depth = image.shape[3]
    counter = np.zeros(1, np.int64)
    for _ in prange(num_workers):
        tile = np.empty((bins, depth), out.dtype)
        chunk = next_chunk(counter)
        while chunk < num_chunks:
            first, last = chunk_range(chunk, num_chunks, num_boxes)
            for k in range(first, last):
                _box_bins(
                    image, box_indices[k], k, y, x, grid_h, grid_w, count, max_mode, tile, zero
                )
                if channels_first:
                    for c in range(depth):
                        for i in range(bins):
                            out[k, c, i] = tile[i, c]
                else:
                    for i in range(bins):
                        for c in range(depth):
                            out[k, i, c] = tile[i, c]
            chunk = next_chunk(counter)


def _roi_grad(
    grads, box_indices, y, x, grid_h, grid_w, count, inverse, channels_first, acc,
    num_blocks, zero,
):  # fmt: skip  # pragma: no cover - compiled
    """``acc`` (zeroed, ``T``, NHWC) += roi_align's image gradient of ``grads`` (``T``).

    ``grads`` is ``(num_boxes, depth, bins)`` when ``channels_first``, else ``(num_boxes, bins,
    depth)``. ``inverse[k]``: ``1 / count[k]`` (``T``) where ``count[k]`` is a power of two
    (then ``x / count == x * inverse``, exactly), else 0.
    Block ``j`` of ``num_blocks`` sums channels ``[j * depth // num_blocks, (j + 1) * depth //
    num_blocks)`` over every box, in torchvision's order.
    """
    num_boxes = box_indices.shape[0]
    pooled_h, pooled_w = y[1].shape[1], x[1].shape[1]
    bins = pooled_h * pooled_w
    depth = acc.shape[3]
    for block in prange(num_blocks):
        c0 = block * depth // num_blocks
        width = (block + 1) * depth // num_blocks - c0
        g = np.empty((bins, width), acc.dtype)
        for k in range(num_boxes):
            if grid_h[k] * grid_w[k] == 0:
                continue
            if channels_first:
                for c in range(width):
                    for i in range(bins):
                        g[i, c] = grads[k, c0 + c, i]
            else:
                for i in range(bins):
                    for c in range(width):
                        g[i, c] = grads[k, i, c0 + c]
            b = box_indices[k]
            n = count[k]
            scale = inverse[k]
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    gi = g[ph * pooled_w + pw]
                    for iy in range(grid_h[k]):
                        for ix in range(grid_w[k]):
                            w1, w2, w3, w4, yl, yh, xl, xh, inside = _corners(
                                k, ph, pw, iy, ix, y, x, zero
                            )
                            if not inside:
                                continue
                            # one loop per corner: the corners may be the same pixel, and
                            # each element still gets its four terms in order
                            a1 = acc[b, yl, xl, c0 : c0 + width]
                            a2 = acc[b, yl, xh, c0 : c0 + width]
                            a3 = acc[b, yh, xl, c0 : c0 + width]
                            a4 = acc[b, yh, xh, c0 : c0 + width]
                            if scale != zero:
                                for c in range(width):
                                    a1[c] += (gi[c] * w1) * scale
                                for c in range(width):
                                    a2[c] += (gi[c] * w2) * scale
                                for c in range(width):
                                    a3[c] += (gi[c] * w3) * scale
                                for c in range(width):
                                    a4[c] += (gi[c] * w4) * scale
                            else:
                                for c in range(width):
                                    a1[c] += (gi[c] * w1) / n
                                for c in range(width):
                                    a2[c] += (gi[c] * w2) / n
                                for c in range(width):
                                    a3[c] += (gi[c] * w3) / n
                                for c in range(width):
                                    a4[c] += (gi[c] * w4) / n


def _nchw_to_nhwc(source, target):  # pragma: no cover - compiled
    """``target[b, h, w, c] = source[b, c, h, w]`` (both C-contiguous; ``target``'s dtype)."""
    batch, depth, height, width = source.shape
    for item in prange(batch * height):
        b = item // height
        h = item - b * height
        for c0 in range(0, depth, _BLOCK):  # a block of rows in, whole cache lines out
            c1 = min(c0 + _BLOCK, depth)
            for w in range(width):
                for c in range(c0, c1):
                    target[b, h, w, c] = source[b, c, h, w]


def _nhwc_to_nchw(source, target):  # pragma: no cover - compiled
    """``target[b, c, h, w] = source[b, h, w, c]`` (both C-contiguous)."""
    batch, height, width, depth = source.shape
    for item in prange(batch * height):
        b = item // height
        h = item - b * height
        for w0 in range(0, width, _BLOCK):
            w1 = min(w0 + _BLOCK, width)
            for c in range(depth):
                for w in range(w0, w1):
                    target[b, c, h, w] = source[b, h, w, c]


def _zero_rows(target):  # pragma: no cover - compiled
    """``target[:] = 0`` (2-D, C-contiguous), a row per iteration."""
    for row in prange(target.shape[0]):
        for i in range(target.shape[1]):
            target[row, i] = 0


roi_forward_serial, roi_forward_parallel = serial_and_parallel(_roi_forward)
roi_grad_serial, roi_grad_parallel = serial_and_parallel(_roi_grad)
nchw_to_nhwc_serial, nchw_to_nhwc_parallel = serial_and_parallel(_nchw_to_nhwc)
nhwc_to_nchw_serial, nhwc_to_nchw_parallel = serial_and_parallel(_nhwc_to_nchw)
zero_rows_serial, zero_rows_parallel = serial_and_parallel(_zero_rows)
