"""roi_align and its image gradient in Numba: torchvision's CPU arithmetic, compiled and parallel.

The per-box and per-sample tables (corners, weights, which samples are empty) come from
:mod:`cropcore.roi_samples`, the same NumPy code every CPU backend starts from; these kernels do
the gathers and the sums, every operation in the compute dtype ``T`` and in torchvision's order,
so that results are bit-identical to the reference (``cropcore_numpy``) and to ONNX Runtime:

- forward, per bin and channel: ``out += ((w1 * v1 + w2 * v2) + w3 * v3) + w4 * v4`` over the
  samples in ``iy, ix`` order, from 0, then ``out / count`` (avg); or the ``std::max`` chain of
  the weighted corners (max). An empty sample has weights 0 at pixel (0, 0), as in torchvision.
  Parallel over (box, bin row), NHWC (an NCHW image is transposed first).
- image gradient: ``acc += (g * w) / count`` per corner, in the order boxes, bins, samples,
  corners. Parallel over blocks of channels: each channel's image plane is summed by one thread,
  in that order, so the result is deterministic and independent of the thread count.

No flush-to-zero here (torchvision and ONNX Runtime compute with IEEE subnormals), and no
``fastmath`` (no contraction into fused multiply-adds). The kernels run without bounds checks on
validated calls: every box index is in ``[0, batch)`` and every table index is clamped to the
image by :mod:`cropcore.roi_samples`.
"""

from __future__ import annotations

from numba import njit, prange

from cropcore_numba._arith import serial_and_parallel

__all__ = [
    "roi_forward_parallel",
    "roi_forward_serial",
    "roi_grad_parallel",
    "roi_grad_serial",
]


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


def _roi_forward(
    image, box_indices, y, x, grid_h, grid_w, count, max_mode, out, zero
):  # pragma: no cover - compiled
    """``out`` (zeroed, ``T``, NHWC): the roi_align of ``image`` (``T``, NHWC, C-contiguous).

    The channel loop is innermost and contiguous; the caller transposes NCHW images first.
    """
    num_boxes, pooled_h, pooled_w = out.shape[0], y[1].shape[1], x[1].shape[1]
    depth = image.shape[3]
    for item in prange(num_boxes * pooled_h):
        k = item // pooled_h
        ph = item - k * pooled_h
        b = box_indices[k]
        for pw in range(pooled_w):
            first = True
            for iy in range(grid_h[k]):
                for ix in range(grid_w[k]):
                    w1, w2, w3, w4, yl, yh, xl, xh, _ = _corners(k, ph, pw, iy, ix, y, x, zero)
                    for c in range(depth):
                        p1 = w1 * image[b, yl, xl, c]
                        p2 = w2 * image[b, yl, xh, c]
                        p3 = w3 * image[b, yh, xl, c]
                        p4 = w4 * image[b, yh, xh, c]
                        if max_mode:
                            val = _std_max(_std_max(_std_max(p1, p2), p3), p4)
                            out[k, ph, pw, c] = val if first else _std_max(out[k, ph, pw, c], val)
                        else:
                            out[k, ph, pw, c] = out[k, ph, pw, c] + (((p1 + p2) + p3) + p4)
                    first = False
            if not max_mode:
                for c in range(depth):
                    out[k, ph, pw, c] = out[k, ph, pw, c] / count[k]


def _roi_grad(
    grads, box_indices, y, x, grid_h, grid_w, count, channels_first, acc, blocks, zero
):  # pragma: no cover - compiled
    """``acc`` (zeroed, ``T``, the image's layout) += roi_align's image gradient of ``grads``."""
    num_boxes = grads.shape[0]
    pooled_h, pooled_w = y[1].shape[1], x[1].shape[1]
    depth = acc.shape[1] if channels_first else acc.shape[3]
    for block in prange(blocks):
        c0 = block * depth // blocks
        c1 = (block + 1) * depth // blocks
        for k in range(num_boxes):
            b = box_indices[k]
            n = count[k]
            for ph in range(pooled_h):
                for pw in range(pooled_w):
                    for iy in range(grid_h[k]):
                        for ix in range(grid_w[k]):
                            w1, w2, w3, w4, yl, yh, xl, xh, inside = _corners(
                                k, ph, pw, iy, ix, y, x, zero
                            )
                            if not inside:
                                continue
                            for c in range(c0, c1):
                                if channels_first:
                                    g = grads[k, c, ph, pw]
                                    acc[b, c, yl, xl] += (g * w1) / n
                                    acc[b, c, yl, xh] += (g * w2) / n
                                    acc[b, c, yh, xl] += (g * w3) / n
                                    acc[b, c, yh, xh] += (g * w4) / n
                                else:
                                    g = grads[k, ph, pw, c]
                                    acc[b, yl, xl, c] += (g * w1) / n
                                    acc[b, yl, xh, c] += (g * w2) / n
                                    acc[b, yh, xl, c] += (g * w3) / n
                                    acc[b, yh, xh, c] += (g * w4) / n


roi_forward_serial, roi_forward_parallel = serial_and_parallel(_roi_forward)
roi_grad_serial, roi_grad_parallel = serial_and_parallel(_roi_grad)
