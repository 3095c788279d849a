"""CropAndResizeGradBoxes in Numba: TF's per-box sums, one box per parallel iteration."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from cropcore_numba._arith import (
    axis_table,
    flush_denormals,
    restore_fp_mode,
    serial_and_parallel,
    table_sample,
    to_float,
)

# --------------------------------------------------------------------------------------------------
# crop_and_resize_grad_boxes


@njit(nogil=True)
def _grad_boxes_range(
    first, last, grads, image, lut, box_indices, rows, cols, out
):  # pragma: no cover
    """Boxes ``first..last-1`` of the box gradient; ``out``: float32 (N, 4).

    ``grads`` float32 (N, crop_height, crop_width, depth) and ``image`` (batch, height, width,
    depth) are C-contiguous NHWC (NCHW calls are transposed first), and the sums run in TF's
    order: rows, columns, channels.
    """
    _, height, width, depth = image.shape
    crop_height = rows[0].shape[1]
    crop_width = cols[0].shape[1]
    one = np.float32(1)
    height_minus_one = np.float32(height - 1)
    width_minus_one = np.float32(width - 1)
    height_ratio = (
        height_minus_one / np.float32(crop_height - 1) if crop_height > 1 else np.float32(0)
    )
    width_ratio = width_minus_one / np.float32(crop_width - 1) if crop_width > 1 else np.float32(0)
    for b in range(first, last):
        image_index = box_indices[b]
        dy1 = np.float32(0)
        dx1 = np.float32(0)
        dy2 = np.float32(0)
        dx2 = np.float32(0)
        for y in range(crop_height):
            y_valid, top, bottom, y_lerp = table_sample(rows, b, y)
            if not y_valid:
                continue
            y_position = np.float32(y) * height_ratio  # y * height_ratio
            for x in range(crop_width):
                x_valid, left, right, x_lerp = table_sample(cols, b, x)
                if not x_valid:
                    continue
                x_position = np.float32(x) * width_ratio
                for d in range(depth):
                    tl = to_float(image[image_index, top, left, d], lut)
                    tr = to_float(image[image_index, top, right, d], lut)
                    bl = to_float(image[image_index, bottom, left, d], lut)
                    br = to_float(image[image_index, bottom, right, d], lut)
                    image_grad_y = (one - x_lerp) * (bl - tl) + x_lerp * (br - tr)
                    image_grad_x = (one - y_lerp) * (tr - tl) + y_lerp * (br - bl)
                    top_grad = grads[b, y, x, d]
                    image_grad_y *= top_grad
                    image_grad_x *= top_grad
                    if crop_height > 1:
                        dy1 += image_grad_y * (height_minus_one - y_position)
                        dy2 += image_grad_y * y_position
                    else:  # image_grad_y * 0.5 * (image_height - 1): double; float += double
                        term = np.float64(image_grad_y) * 0.5 * np.float64(height - 1)
                        dy1 = np.float32(np.float64(dy1) + term)
                        dy2 = np.float32(np.float64(dy2) + term)
                    if crop_width > 1:
                        dx1 += image_grad_x * (width_minus_one - x_position)
                        dx2 += image_grad_x * x_position
                    else:
                        term = np.float64(image_grad_x) * 0.5 * np.float64(width - 1)
                        dx1 = np.float32(np.float64(dx1) + term)
                        dx2 = np.float32(np.float64(dx2) + term)
        out[b, 0] = dy1
        out[b, 1] = dx1
        out[b, 2] = dy2
        out[b, 3] = dx2


def _grad_boxes(grads, image, lut, boxes, box_indices, out):  # pragma: no cover - compiled
    """The box gradient, one box per iteration (each box's sums are independent)."""
    saved = flush_denormals()  # TF's floating-point mode, in this thread
    rows = axis_table(boxes, 0, image.shape[1], grads.shape[1], True)
    cols = axis_table(boxes, 1, image.shape[2], grads.shape[2], True)
    for b in prange(boxes.shape[0]):
        mode = flush_denormals()  # ... and in each worker thread
        _grad_boxes_range(b, b + 1, grads, image, lut, box_indices, rows, cols, out)
        restore_fp_mode(mode)
    restore_fp_mode(saved)


grad_boxes_serial, grad_boxes_parallel = serial_and_parallel(_grad_boxes)
