"""The roi_align oracle: torchvision's CPU loop nests (``roi_align_kernel.cpp``: the forward's
``pre_calc_for_bilinear_interpolate`` and ``roi_align_forward_kernel_impl``, the backward's
``bilinear_interpolate_gradient`` and ``roi_align_backward_kernel_impl``) in Python, statement
for statement, on NumPy scalars of the compute dtype. ONNX Runtime's CPU ``RoiAlign`` is the same
forward (from Caffe2), plus its ``mode="max"``, written here as its ``RoiAlignForward`` does.

Slow (a Python loop per sample and channel); the tests hold the vectorised kernels of
:mod:`cropcore_numpy.roi_align` to it, bit for bit. NCHW, as the C++ code; not registered as a
backend.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["roi_align", "roi_align_grad_image"]


def _box(roi, spatial_scale, aligned, pooled_height, pooled_width, sampling_ratio, t):
    offset = t(0.5) if aligned else t(0.0)
    scale = t(spatial_scale)
    roi_start_w = t(roi[0]) * scale - offset
    roi_start_h = t(roi[1]) * scale - offset
    roi_end_w = t(roi[2]) * scale - offset
    roi_end_h = t(roi[3]) * scale - offset
    roi_width = t(roi_end_w - roi_start_w)
    roi_height = t(roi_end_h - roi_start_h)
    if not aligned:
        roi_width = max(roi_width, t(1.0))  # Python's max keeps the first of equals, as std::max
        roi_height = max(roi_height, t(1.0))
    bin_size_h = t(roi_height / t(pooled_height))
    bin_size_w = t(roi_width / t(pooled_width))
    if sampling_ratio > 0:
        grid_h = grid_w = sampling_ratio
    else:
        grid_h = _ceil(roi_height / t(pooled_height))
        grid_w = _ceil(roi_width / t(pooled_width))
    return roi_start_h, roi_start_w, bin_size_h, bin_size_w, grid_h, grid_w


def _ceil(x) -> int:
    return math.ceil(float(x)) if math.isfinite(float(x)) and x > 0 else 0


def _coordinate(start, p, i, bin_size, grid, t):
    """``start + p * bin + static_cast<T>(i + .5f) * bin / static_cast<T>(grid)``."""
    return t(
        t(start + t(p) * bin_size) + t(t(np.float32(i + np.float32(0.5))) * bin_size) / t(grid)
    )


def _bilinear(height, width, y, x, t):
    """torchvision's ``bilinear_interpolate_gradient``: weights and corners, or None (empty)."""
    if float(y) < -1.0 or float(y) > height or float(x) < -1.0 or float(x) > width:
        return None
    if y <= 0:
        y = t(0)
    if x <= 0:
        x = t(0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_high = y_low = height - 1
        y = t(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_high = x_low = width - 1
        x = t(x_low)
    else:
        x_high = x_low + 1
    ly, lx = t(y - t(y_low)), t(x - t(x_low))
    hy, hx = t(t(1) - ly), t(t(1) - lx)
    weights = (t(hy * hx), t(hy * lx), t(ly * hx), t(ly * lx))
    return weights, (y_low, x_low, y_high, x_high)


def roi_align(image, boxes, box_indices, output_size, spatial_scale, sampling_ratio, aligned, mode):
    """NCHW ``image`` -> ``(num_boxes, depth, pooled_h, pooled_w)`` of its dtype."""
    t = np.float64 if image.dtype == np.float64 else np.float32
    _, channels, height, width = image.shape
    pooled_height, pooled_width = output_size
    out = np.zeros((len(boxes), channels, pooled_height, pooled_width), t)
    data = image.astype(t)
    for n in range(len(boxes)):
        b = int(box_indices[n])
        start_h, start_w, bin_h, bin_w, grid_h, grid_w = _box(
            boxes[n], spatial_scale, aligned, pooled_height, pooled_width, sampling_ratio, t
        )
        count = t(max(grid_h * grid_w, 1))
        # pre_calc: per bin and sample, the corners' positions and weights (empty: 0 at pixel 0)
        pre = []
        for ph in range(pooled_height):
            for pw in range(pooled_width):
                for iy in range(grid_h):
                    yy = _coordinate(start_h, ph, iy, bin_h, grid_h, t)
                    for ix in range(grid_w):
                        xx = _coordinate(start_w, pw, ix, bin_w, grid_w, t)
                        found = _bilinear(height, width, yy, xx, t)
                        if found is None:
                            pre.append(((0, 0, 0, 0), (t(0),) * 4))
                            continue
                        w, (y_low, x_low, y_high, x_high) = found
                        pos = (
                            y_low * width + x_low,
                            y_low * width + x_high,
                            y_high * width + x_low,
                            y_high * width + x_high,
                        )
                        pre.append((pos, w))
        for c in range(channels):
            plane = data[b, c].reshape(-1)
            index = 0
            for ph in range(pooled_height):
                for pw in range(pooled_width):
                    value = t(0)
                    started = False
                    for _ in range(grid_h * grid_w):
                        pos, w = pre[index]
                        index += 1
                        products = [t(w[j] * plane[pos[j]]) for j in range(4)]
                        if mode == "avg":
                            term = t(t(t(products[0] + products[1]) + products[2]) + products[3])
                            value = t(value + term)
                            continue
                        val = products[0]
                        for p in products[1:]:
                            val = p if val < p else val  # std::max(val, p)
                        if not started:
                            value, started = val, True
                        else:
                            value = val if value < val else value
                    if mode == "avg":
                        value = t(value / count)
                    out[n, c, ph, pw] = value
    return out.astype(image.dtype)


def roi_align_grad_image(
    grads, boxes, box_indices, image_shape, spatial_scale, sampling_ratio, aligned
):
    """NCHW ``grads`` -> NCHW image gradient of ``grads``' dtype (float16: float32 sums)."""
    t = np.float64 if grads.dtype == np.float64 else np.float32
    batch, channels, height, width = image_shape
    num_boxes, _, pooled_height, pooled_width = grads.shape
    out = np.zeros((batch, channels, height * width), t)
    g_all = grads.astype(t)
    for index in range(num_boxes * channels * pooled_height * pooled_width):
        pw = index % pooled_width
        ph = (index // pooled_width) % pooled_height
        c = (index // pooled_width // pooled_height) % channels
        n = index // pooled_width // pooled_height // channels
        b = int(box_indices[n])
        start_h, start_w, bin_h, bin_w, grid_h, grid_w = _box(
            boxes[n], spatial_scale, aligned, pooled_height, pooled_width, sampling_ratio, t
        )
        g = g_all[n, c, ph, pw]
        count = t(grid_h * grid_w)
        for iy in range(grid_h):
            y = _coordinate(start_h, ph, iy, bin_h, grid_h, t)
            for ix in range(grid_w):
                x = _coordinate(start_w, pw, ix, bin_w, grid_w, t)
                found = _bilinear(height, width, y, x, t)
                if found is None:
                    continue
                w, (y_low, x_low, y_high, x_high) = found
                plane = out[b, c]
                for j, pos in enumerate(
                    (
                        y_low * width + x_low,
                        y_low * width + x_high,
                        y_high * width + x_low,
                        y_high * width + x_high,
                    )
                ):
                    plane[pos] = t(plane[pos] + t(t(g * w[j]) / count))
    return out.reshape(image_shape).astype(grads.dtype)
