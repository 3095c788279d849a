"""CropAndResizeGradImage in Numba: per-block lists of crop rows in TF's order, so every pixel
receives its contributions in TF's single-threaded order whatever the thread count."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from cropcore_numba._arith import (
    accumulate,
    as_index,
    axis_sample,
    axis_scale,
    axis_table,
    flush_denormals,
    next_chunk,
    restore_fp_mode,
    serial_and_parallel,
)

# --------------------------------------------------------------------------------------------------
# crop_and_resize_grad_image


@njit(nogil=True)
def _block_lists(rows, box_indices, batch, height, block_rows, nearest):  # pragma: no cover
    """For every block of image rows, the crop rows that write to it, in TF's order.

    Image rows are grouped in blocks of ``block_rows`` (block = image * blocks_per_image + k). A
    bilinear crop row writes to the image rows ``floorf`` and ``ceilf`` of its coordinate, a
    nearest one to ``roundf``. Returns ``(start, items)``: the crop rows (item = box * crop_height
    + y) that write to block ``k`` are ``items[start[k]:start[k + 1]]``, in ascending order.
    """
    row_low, row_high, row_nearest, _, row_valid = rows
    num_boxes, crop_height = row_valid.shape
    blocks_per_image = (height + block_rows - 1) // block_rows
    counts = np.zeros(batch * blocks_per_image + 1, np.int64)
    for b in range(num_boxes):
        base = np.int64(box_indices[b]) * blocks_per_image
        for y in range(crop_height):
            if row_valid[b, y]:
                if nearest:
                    counts[base + row_nearest[b, y] // block_rows + 1] += 1
                else:
                    first = row_low[b, y] // block_rows
                    second = row_high[b, y] // block_rows
                    counts[base + first + 1] += 1
                    if second != first:
                        counts[base + second + 1] += 1
    start = np.cumsum(counts)
    fill = start[:-1].copy()
    items = np.empty(start[-1], np.int64)
    for b in range(num_boxes):
        base = np.int64(box_indices[b]) * blocks_per_image
        for y in range(crop_height):
            if row_valid[b, y]:
                item = b * crop_height + y
                if nearest:
                    first = base + row_nearest[b, y] // block_rows
                    second = first
                else:
                    first = base + row_low[b, y] // block_rows
                    second = base + row_high[b, y] // block_rows
                items[fill[first]] = item
                fill[first] += 1
                if second != first:
                    items[fill[second]] = item
                    fill[second] += 1
    return start, items


@njit(inline="always")
def _block_span(block, block_rows, height):  # pragma: no cover - compiled
    """Block ``block`` of :func:`_block_lists`: ``(image_index, row_first, row_last)``, its image
    and its image rows ``row_first..row_last-1``."""
    blocks_per_image = (height + block_rows - 1) // block_rows
    image_index = block // blocks_per_image
    row_first = (block - image_index * blocks_per_image) * block_rows
    return image_index, row_first, min(row_first + block_rows, height)


@njit(nogil=True)
def _grad_image_nhwc_blocks(
    first, last, grads, dims, block_rows, start, items, rows, cols, nearest, lut, out
):  # pragma: no cover - compiled
    """Blocks ``first..last-1`` of an NHWC image gradient (see :func:`_block_lists`).

    ``grads``: the flat float32 (N, crop_height, crop_width, depth) gradient of the crops;
    ``out``: the flat (batch, height, width, depth) result (uint16 bits if float16, with ``lut``
    the half -> float32 table). Each block is zeroed, then receives the contributions of its crop
    rows in order, and within each crop row columns, then channels, then corners TL, TR, BL, BR:
    every pixel gets TF's single-threaded order.
    """
    _, height, width, depth = dims
    row_low, row_high, row_nearest, row_lerp, _ = rows
    col_low, col_high, col_nearest, col_lerp, col_valid = cols
    crop_height = row_low.shape[1]
    crop_width = col_low.shape[1]
    row_size = width * depth
    one = np.float32(1)
    for block in range(first, last):
        image_index, row_first, row_last = _block_span(block, block_rows, height)
        image_base = image_index * height * row_size
        for k in range(image_base + row_first * row_size, image_base + row_last * row_size):
            out[as_index(k)] = 0
        for e in range(start[block], start[block + 1]):
            item = items[e]
            b = item // crop_height
            y = item - b * crop_height
            grad_row = item * crop_width * depth
            if nearest:
                # grads_image(b_in, roundf(in_y), roundf(in_x), d) += grads(b, y, x, d)
                target_row = image_base + row_nearest[b, y] * row_size
                for x in range(crop_width):
                    if col_valid[b, x]:
                        target = target_row + col_nearest[b, x] * depth
                        source = grad_row + x * depth
                        for d in range(depth):
                            accumulate(out, target + d, grads[as_index(source + d)], lut)
                continue
            top, bottom, y_lerp = row_low[b, y], row_high[b, y], row_lerp[b, y]
            has_top = row_first <= top < row_last  # else the previous block has it
            has_bottom = row_first <= bottom < row_last  # else the next block has it
            top_row = image_base + top * row_size
            bottom_row = image_base + bottom * row_size
            if top != bottom and depth >= 32:
                # Deep pixels on two image rows: one pass per row. A pixel of either row gets only
                # that row's corners, still in TF's order, and each pass sweeps one row left to
                # right, so the pixels it revisits (r of x is often l of x + 1) stay in L1.
                for row_pass in range(2):
                    if row_pass == 0:
                        if not has_top:
                            continue
                        target_row = top_row
                        y_weight = one - y_lerp  # dtop = (1 - y_lerp) * grads(b, y, x, d)
                    else:
                        if not has_bottom:
                            continue
                        target_row = bottom_row
                        y_weight = y_lerp  # dbottom = y_lerp * grads(b, y, x, d)
                    for x in range(crop_width):
                        if not col_valid[b, x]:
                            continue
                        left = target_row + col_low[b, x] * depth
                        right = target_row + col_high[b, x] * depth
                        x_lerp = col_lerp[b, x]
                        source = grad_row + x * depth
                        for d in range(depth):
                            weighted = y_weight * grads[as_index(source + d)]
                            accumulate(out, left + d, (one - x_lerp) * weighted, lut)
                            accumulate(out, right + d, x_lerp * weighted, lut)
                continue
            for x in range(crop_width):
                if not col_valid[b, x]:
                    continue
                left = col_low[b, x] * depth
                right = col_high[b, x] * depth
                x_lerp = col_lerp[b, x]
                source = grad_row + x * depth
                if has_top and has_bottom:
                    for d in range(depth):
                        g = grads[as_index(source + d)]
                        dtop = (one - y_lerp) * g  # float dtop = (1 - y_lerp) * grads(b, y, x, d)
                        accumulate(out, top_row + left + d, (one - x_lerp) * dtop, lut)
                        accumulate(out, top_row + right + d, x_lerp * dtop, lut)
                        dbottom = y_lerp * g
                        accumulate(out, bottom_row + left + d, (one - x_lerp) * dbottom, lut)
                        accumulate(out, bottom_row + right + d, x_lerp * dbottom, lut)
                elif has_top:  # the bottom row belongs to the next block
                    for d in range(depth):
                        dtop = (one - y_lerp) * grads[as_index(source + d)]
                        accumulate(out, top_row + left + d, (one - x_lerp) * dtop, lut)
                        accumulate(out, top_row + right + d, x_lerp * dtop, lut)
                else:  # the top row belongs to the previous block
                    for d in range(depth):
                        dbottom = y_lerp * grads[as_index(source + d)]
                        accumulate(out, bottom_row + left + d, (one - x_lerp) * dbottom, lut)
                        accumulate(out, bottom_row + right + d, x_lerp * dbottom, lut)


@njit(nogil=True)
def _grad_image_nchw_blocks(
    first, last, grads, dims, block_rows, start, items, rows, cols, nearest, lut, out
):  # pragma: no cover - compiled
    """Blocks ``first..last-1`` of an NCHW image gradient: as :func:`_grad_image_nhwc_blocks`,
    with ``grads`` (N, depth, crop_height, crop_width) and ``out`` (batch, depth, height, width);
    the channel loop is outside the column loop (a pixel's contributions keep TF's order).
    """
    _, height, width, depth = dims
    row_low, row_high, row_nearest, row_lerp, _ = rows
    col_low, col_high, col_nearest, col_lerp, col_valid = cols
    crop_height = row_low.shape[1]
    crop_width = col_low.shape[1]
    plane = height * width
    one = np.float32(1)
    for block in range(first, last):
        image_index, row_first, row_last = _block_span(block, block_rows, height)
        for d in range(depth):
            plane_base = (image_index * depth + d) * plane
            for k in range(plane_base + row_first * width, plane_base + row_last * width):
                out[as_index(k)] = 0
        for e in range(start[block], start[block + 1]):
            item = items[e]
            b = item // crop_height
            y = item - b * crop_height
            if nearest:
                target_row = row_nearest[b, y] * width
                for d in range(depth):
                    plane_base = (image_index * depth + d) * plane + target_row
                    source = ((b * depth + d) * crop_height + y) * crop_width
                    for x in range(crop_width):
                        if col_valid[b, x]:
                            g = grads[as_index(source + x)]
                            accumulate(out, plane_base + col_nearest[b, x], g, lut)
                continue
            top, bottom, y_lerp = row_low[b, y], row_high[b, y], row_lerp[b, y]
            has_top = row_first <= top < row_last  # else the previous block has it
            has_bottom = row_first <= bottom < row_last  # else the next block has it
            for d in range(depth):
                plane_base = (image_index * depth + d) * plane
                top_row = plane_base + top * width
                bottom_row = plane_base + bottom * width
                source = ((b * depth + d) * crop_height + y) * crop_width
                for x in range(crop_width):
                    if not col_valid[b, x]:
                        continue
                    left = col_low[b, x]
                    right = col_high[b, x]
                    x_lerp = col_lerp[b, x]
                    g = grads[as_index(source + x)]
                    if has_top:
                        dtop = (one - y_lerp) * g
                        accumulate(out, top_row + left, (one - x_lerp) * dtop, lut)
                        accumulate(out, top_row + right, x_lerp * dtop, lut)
                    if has_bottom:
                        dbottom = y_lerp * g
                        accumulate(out, bottom_row + left, (one - x_lerp) * dbottom, lut)
                        accumulate(out, bottom_row + right, x_lerp * dbottom, lut)


@njit(nogil=True)
def _balanced_chunks(start, block_rows, width, crop_width, num_chunks):  # pragma: no cover
    """Chunk boundaries over the blocks of :func:`_block_lists` with about equal work each.

    Zeroing a block costs ``block_rows * width``, each crop row written to it about
    ``2 * crop_width`` (times depth, for both). Returns int64 (num_chunks + 1,).
    """
    num_blocks = start.shape[0] - 1
    cost = np.empty(num_blocks + 1, np.int64)
    cost[0] = 0
    for k in range(num_blocks):
        cost[k + 1] = cost[k] + block_rows * width + (start[k + 1] - start[k]) * crop_width * 2
    bounds = np.searchsorted(cost, cost[-1] * np.arange(num_chunks + 1) // num_chunks)
    bounds[0] = 0
    bounds[-1] = num_blocks
    return np.minimum(bounds, num_blocks)


@njit(cache=True, nogil=True)
def grad_image_direct(
    grads, dims, boxes, box_indices, crop_size, nearest, lut, out, channels_first
):  # pragma: no cover - compiled
    """A small image gradient, in one thread: TF's own loop, with no tables or block lists.

    The same samples (:func:`axis_sample`) and the same order of additions into every pixel
    (boxes, crop rows, crop columns, channels, corners TL, TR, BL, BR) as the blocked kernels;
    for calls too small to pay for building their tables. Either data format, through strides.
    """
    saved = flush_denormals()  # TF's floating-point mode, in this thread
    _, height, width, depth = dims
    crop_height, crop_width = crop_size
    for k in range(out.size):
        out[as_index(k)] = 0
    if channels_first:  # out (batch, depth, height, width), grads (N, depth, ch, cw)
        out_row, out_col, out_channel = width, 1, height * width
        grad_row, grad_col, grad_channel = crop_width, 1, crop_height * crop_width
    else:  # out (batch, height, width, depth), grads (N, ch, cw, depth)
        out_row, out_col, out_channel = width * depth, depth, 1
        grad_row, grad_col, grad_channel = crop_width * depth, depth, 1
    out_image = height * width * depth
    grad_box = crop_height * crop_width * depth
    one = np.float32(1)
    # one box's column samples (:func:`axis_sample`), computed once per box, not once per row
    col_valid = np.empty(crop_width, np.bool_)
    col_low = np.empty(crop_width, np.int64)
    col_high = np.empty(crop_width, np.int64)
    col_nearest = np.empty(crop_width, np.int64)
    col_lerp = np.empty(crop_width, np.float32)
    for b in range(boxes.shape[0]):
        y1, x1, y2, x2 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
        image_base = np.int64(box_indices[b]) * out_image
        y_scale, y_offset = axis_scale(y1, y2, height, crop_height, False)
        x_scale, x_offset = axis_scale(x1, x2, width, crop_width, False)
        for x in range(crop_width):
            col_valid[x], col_low[x], col_high[x], col_nearest[x], col_lerp[x] = axis_sample(
                x1, x2, x_scale, x_offset, x, width, crop_width
            )
        for y in range(crop_height):
            y_ok, top, bottom, y_near, y_lerp = axis_sample(
                y1, y2, y_scale, y_offset, y, height, crop_height
            )
            if not y_ok:
                continue
            for x in range(crop_width):
                if not col_valid[x]:
                    continue
                left, right, x_near, x_lerp = col_low[x], col_high[x], col_nearest[x], col_lerp[x]
                source = b * grad_box + y * grad_row + x * grad_col
                if nearest:
                    target = image_base + y_near * out_row + x_near * out_col
                    for d in range(depth):
                        g = grads[as_index(source + d * grad_channel)]
                        accumulate(out, target + d * out_channel, g, lut)
                    continue
                top_left = image_base + top * out_row + left * out_col
                top_right = image_base + top * out_row + right * out_col
                bottom_left = image_base + bottom * out_row + left * out_col
                bottom_right = image_base + bottom * out_row + right * out_col
                for d in range(depth):
                    g = grads[as_index(source + d * grad_channel)]
                    c = d * out_channel
                    dtop = (one - y_lerp) * g  # float dtop = (1 - y_lerp) * grads(b, y, x, d)
                    accumulate(out, top_left + c, (one - x_lerp) * dtop, lut)
                    accumulate(out, top_right + c, x_lerp * dtop, lut)
                    dbottom = y_lerp * g
                    accumulate(out, bottom_left + c, (one - x_lerp) * dbottom, lut)
                    accumulate(out, bottom_right + c, x_lerp * dbottom, lut)
    restore_fp_mode(saved)


def _grad_image(
    grads, dims, boxes, box_indices, crop_size, nearest, lut, out, channels_first, block_rows,
    num_workers, num_chunks,
):  # fmt: skip  # pragma: no cover - compiled
    """The blocked image gradient: ``num_workers`` workers take the ``num_chunks`` chunks of
    blocks (:func:`_balanced_chunks`) in turn; the serial variant (1, 1) runs them all in one."""
    saved = flush_denormals()  # TF's floating-point mode, in this thread
    rows = axis_table(boxes, 0, dims[1], crop_size[0], False)
    cols = axis_table(boxes, 1, dims[2], crop_size[1], False)
    start, items = _block_lists(rows, box_indices, dims[0], dims[1], block_rows, nearest)
    bounds = _balanced_chunks(start, block_rows, dims[2], crop_size[1], num_chunks)
    counter = np.zeros(1, np.int64)
    for _ in prange(num_workers):
        mode = flush_denormals()  # ... and in each worker thread
        chunk = next_chunk(counter)
        while chunk < num_chunks:
            first, last = bounds[chunk], bounds[chunk + 1]
            if channels_first:
                _grad_image_nchw_blocks(
                    first, last, grads, dims, block_rows, start, items, rows, cols, nearest, lut,
                    out,
                )  # fmt: skip
            else:
                _grad_image_nhwc_blocks(
                    first, last, grads, dims, block_rows, start, items, rows, cols, nearest, lut,
                    out,
                )  # fmt: skip
            chunk = next_chunk(counter)
        restore_fp_mode(mode)
    restore_fp_mode(saved)


grad_image_serial, grad_image_parallel = serial_and_parallel(_grad_image)
