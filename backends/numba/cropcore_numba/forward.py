"""CropAndResize in Numba: TF's loop nest over crop rows, NHWC and NCHW, serial and parallel."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from cropcore_numba._arith import (
    as_index,
    axis_table,
    chunk_range,
    flush_denormals,
    next_chunk,
    restore_fp_mode,
    serial_and_parallel,
    to_float,
)

# --------------------------------------------------------------------------------------------------
# crop_and_resize


@njit(nogil=True)
def _forward_nhwc_rows(
    first, last, image, lut, dims, box_indices, rows, cols, nearest, extrapolation_value, crops
):  # pragma: no cover - compiled
    """Crop rows ``first..last-1`` (item = box * crop_height + y) of an NHWC forward pass.

    ``image``: the flat C-order (batch, height, width, depth) image; ``crops``: the flat float32
    (N, crop_height, crop_width, depth) result; ``rows``, ``cols``: :func:`axis_table` tuples.
    """
    _, height, width, depth = dims
    crop_height = rows[0].shape[1]
    crop_width = cols[0].shape[1]
    row_low, row_high, row_nearest, row_lerp, row_valid = rows
    _, _, col_nearest, _, col_valid = cols
    row_size = crop_width * depth
    for item in range(first, last):
        b = item // crop_height
        y = item - b * crop_height
        out = item * row_size
        if not row_valid[b, y]:  # the whole crop row is outside the image
            for k in range(row_size):
                crops[as_index(out + k)] = extrapolation_value
            continue
        image_row = np.int64(box_indices[b]) * height
        if nearest:
            source_row = (image_row + row_nearest[b, y]) * width
            for x in range(crop_width):
                if col_valid[b, x]:
                    source = (source_row + col_nearest[b, x]) * depth
                    for d in range(depth):
                        crops[as_index(out + d)] = to_float(image[as_index(source + d)], lut)
                else:
                    for d in range(depth):
                        crops[as_index(out + d)] = extrapolation_value
                out += depth
            continue
        top_row = (image_row + row_low[b, y]) * width
        bottom_row = (image_row + row_high[b, y]) * width
        y_lerp = row_lerp[b, y]
        # RGB and grey images: the same code with a constant depth, which LLVM unrolls
        if depth == 3:
            _bilinear_row(
                image, lut, crops, out, top_row, bottom_row, y_lerp, b, cols, crop_width, 3,
                extrapolation_value,
            )  # fmt: skip
        elif depth == 1:
            _bilinear_row(
                image, lut, crops, out, top_row, bottom_row, y_lerp, b, cols, crop_width, 1,
                extrapolation_value,
            )  # fmt: skip
        else:
            _bilinear_row(
                image, lut, crops, out, top_row, bottom_row, y_lerp, b, cols, crop_width, depth,
                extrapolation_value,
            )  # fmt: skip


@njit(inline="always")
def _bilinear_row(
    image, lut, crops, out, top_row, bottom_row, y_lerp, b, cols, crop_width, depth,
    extrapolation_value,
):  # fmt: skip  # pragma: no cover - compiled
    """One bilinear crop row of an NHWC forward pass, written from ``crops[out]`` on."""
    col_low, col_high, _, col_lerp, col_valid = cols
    for x in range(crop_width):
        if col_valid[b, x]:
            left = col_low[b, x]
            right = col_high[b, x]
            x_lerp = col_lerp[b, x]
            top_left = (top_row + left) * depth
            top_right = (top_row + right) * depth
            bottom_left = (bottom_row + left) * depth
            bottom_right = (bottom_row + right) * depth
            for d in range(depth):
                crops[as_index(out + d)] = _bilinear(
                    image, lut, top_left + d, top_right + d, bottom_left + d, bottom_right + d,
                    x_lerp, y_lerp,
                )  # fmt: skip
        else:
            for d in range(depth):
                crops[as_index(out + d)] = extrapolation_value
        out += depth


@njit(inline="always")
def _bilinear(
    image, lut, top_left, top_right, bottom_left, bottom_right, x_lerp, y_lerp
):  # pragma: no cover - compiled
    """TF's bilinear sample from four flat image indices: the two rows' lerps, then theirs."""
    tl = to_float(image[as_index(top_left)], lut)
    tr = to_float(image[as_index(top_right)], lut)
    bl = to_float(image[as_index(bottom_left)], lut)
    br = to_float(image[as_index(bottom_right)], lut)
    top = tl + (tr - tl) * x_lerp
    bottom = bl + (br - bl) * x_lerp
    return top + (bottom - top) * y_lerp


@njit(nogil=True)
def _forward_nchw_rows(
    first, last, image, lut, dims, box_indices, rows, cols, nearest, extrapolation_value, crops
):  # pragma: no cover - compiled
    """Crop rows ``first..last-1`` (item = (box * depth + d) * crop_height + y) of an NCHW pass.

    ``image``: the flat C-order (batch, depth, height, width) image; ``crops``: the flat float32
    (N, depth, crop_height, crop_width) result. The column loop is innermost.
    """
    _, height, width, depth = dims
    crop_height = rows[0].shape[1]
    crop_width = cols[0].shape[1]
    row_low, row_high, row_nearest, row_lerp, row_valid = rows
    col_low, col_high, col_nearest, col_lerp, col_valid = cols
    for item in range(first, last):
        plane = item // crop_height  # box * depth + d
        y = item - plane * crop_height
        b = plane // depth
        d = plane - b * depth
        out = item * crop_width
        if not row_valid[b, y]:
            for x in range(crop_width):
                crops[as_index(out + x)] = extrapolation_value
            continue
        image_plane = (np.int64(box_indices[b]) * depth + d) * height
        if nearest:
            source_row = (image_plane + row_nearest[b, y]) * width
            for x in range(crop_width):
                if col_valid[b, x]:
                    crops[as_index(out + x)] = to_float(
                        image[as_index(source_row + col_nearest[b, x])], lut
                    )
                else:
                    crops[as_index(out + x)] = extrapolation_value
            continue
        top_row = (image_plane + row_low[b, y]) * width
        bottom_row = (image_plane + row_high[b, y]) * width
        y_lerp = row_lerp[b, y]
        for x in range(crop_width):
            if col_valid[b, x]:
                left = col_low[b, x]
                right = col_high[b, x]
                crops[as_index(out + x)] = _bilinear(
                    image, lut, top_row + left, top_row + right, bottom_row + left,
                    bottom_row + right, col_lerp[b, x], y_lerp,
                )  # fmt: skip
            else:
                crops[as_index(out + x)] = extrapolation_value


def _forward(
    image, lut, dims, boxes, box_indices, crop_size, nearest, extrapolation_value, crops,
    channels_first, num_workers, num_chunks,
):  # fmt: skip  # pragma: no cover - compiled
    """The whole forward pass: ``num_workers`` workers take the ``num_chunks`` chunks of crop
    rows in turn (:func:`.grad_image._grad_image` splits its blocks the same way); the serial
    variant (1, 1) runs them all in one."""
    saved = flush_denormals()  # TF's floating-point mode, in this thread
    rows = axis_table(boxes, 0, dims[1], crop_size[0], False)
    cols = axis_table(boxes, 1, dims[2], crop_size[1], False)
    total = boxes.shape[0] * crop_size[0] * (dims[3] if channels_first else 1)
    counter = np.zeros(1, np.int64)
    for _ in prange(num_workers):
        mode = flush_denormals()  # ... and in each worker thread
        chunk = next_chunk(counter)
        while chunk < num_chunks:
            first, last = chunk_range(chunk, num_chunks, total)
            if channels_first:
                _forward_nchw_rows(
                    first, last, image, lut, dims, box_indices, rows, cols, nearest,
                    extrapolation_value, crops,
                )  # fmt: skip
            else:
                _forward_nhwc_rows(
                    first, last, image, lut, dims, box_indices, rows, cols, nearest,
                    extrapolation_value, crops,
                )  # fmt: skip
            chunk = next_chunk(counter)
        restore_fp_mode(mode)
    restore_fp_mode(saved)


forward_serial, forward_parallel = serial_and_parallel(_forward)
