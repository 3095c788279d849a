"""TensorFlow's CPU ``CropAndResizeGradImage`` and ``CropAndResizeGradBoxes``, vectorised NumPy.

Requirements: those of :mod:`cropcore_numpy.kernels` (bit-identical to TF 2.21's CPU kernels,
tested equal to the oracle :mod:`cropcore_numpy.reference`), plus TF's order of accumulation:
the image gradient adds each contribution in TF's single-threaded order and rounds after each
(``np.add.at`` is unbuffered and ordered), the box gradient sums strictly left to right.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from cropcore_numpy.ftz import (
    _F32,
    _FLT_MIN,
    _ONE,
    _SUMMABLE,
    _ZERO,
    _flush_if,
    _ftz,
    _grain,
    _keep,
    _multiply_ftz,
    _multiply_if,
    _narrow,
    _pixel_grain,
    _smallest,
)
from cropcore_numpy.samples import _box_samples, _gather, _valid_samples

__all__ = ["crop_and_resize_grad_boxes", "crop_and_resize_grad_image"]

#: np.add.at gets at most this many elements at once (its int64 index array is 8 bytes each).
_SCATTER_BLOCK = 1 << 24


# --------------------------------------------------------------------------------------------------
# CropAndResizeGradImage


def crop_and_resize_grad_image(
    grads: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    image_shape: tuple[int, int, int, int],
    method: str,
    dtype: str,
) -> np.ndarray:
    """TF's ``CropAndResizeGradImage`` (CPU functor): the gradient of the crops w.r.t. the image.

    Args:
        grads: float32 (N, crop_height, crop_width, depth); may be a strided view.
        boxes, box_indices: as for :func:`crop_and_resize`.
        image_shape: ``(batch, height, width, depth)`` (a :class:`cropcore.spec.ImageShape`).
        method: ``"bilinear"`` or ``"nearest"``.
        dtype: ``"float16"``, ``"float32"`` or ``"float64"``: the result's dtype.

    Returns:
        ``dtype`` (batch, height, width, depth). Each contribution is computed in float32, cast to
        ``dtype`` and accumulated in ``dtype`` (float16 sums round at every step), in TF's
        single-threaded order: boxes, then rows, columns, channels; corners TL, TR, BL, BR.
        Samples outside the image contribute nothing.
    """
    batch_size, image_height, image_width, depth = (int(d) for d in image_shape)
    crop_size = (int(grads.shape[1]), int(grads.shape[2]))
    out_dtype = np.dtype(dtype)
    # Channel-major, (depth, batch * H * W): channels never share an accumulator, and this layout
    # lets np.add.at scatter contiguous blocks of channels (see _scatter_add).
    grads_image = np.zeros((depth, batch_size * image_height * image_width), out_dtype)
    with np.errstate(all="ignore"):
        rows, cols = _box_samples(boxes, image_height, image_width, crop_size)
        valid = _valid_samples(rows, cols)
        # Only in-range samples, in C order: (box, y, x), TF's loop order; then channel-major.
        sample_grads = np.ascontiguousarray(grads[valid].T, dtype=_F32)  # (depth, K)
        row_base = box_indices.astype(np.intp)[:, None] * image_height  # (N, 1)

        def pixel(y: np.ndarray, x: np.ndarray) -> np.ndarray:
            """Flat pixel index of each in-range sample's (y, x): intp (K,)."""
            flat = ((row_base + y)[:, :, None] * image_width) + x[:, None, :]
            return flat[valid]

        smallest = _smallest(sample_grads)
        if method == "nearest":
            targets = pixel(rows.nearest, cols.nearest)
            # static_cast<T>(grads(b, y, x, d)); for float32/float64 the `+=` (or the conversion)
            # then reads a subnormal gradient as 0 (denormals-are-zero); float16 rounds it to 0.
            ftz = _flush_if(smallest)
            contributions = ftz(sample_grads).astype(out_dtype, copy=False)
        else:
            # Events in TF's order: sample by sample, corners TL, TR, BL, BR.
            targets = np.stack(
                [
                    pixel(rows.low, cols.low),  # top left
                    pixel(rows.low, cols.high),  # top right
                    pixel(rows.high, cols.low),  # bottom left
                    pixel(rows.high, cols.high),  # bottom right
                ],
                axis=1,
            ).reshape(-1)
            # Products only: bounded by the smallest factors (a subnormal gradient, read as 0 by
            # TF, gives a product below 2**-126 that is flushed to the same signed 0).
            smallest *= rows.lerp_smallest * cols.lerp_smallest / 4
            multiply = _multiply_if(smallest)
            y_lerp = np.broadcast_to(rows.lerp[:, :, None], valid.shape)[valid]  # (K,)
            x_lerp = np.broadcast_to(cols.lerp[:, None, :], valid.shape)[valid]
            count = sample_grads.shape[1]
            contributions = np.empty((depth, count, 4), out_dtype)
            # float dtop = (1 - y_lerp) * grads(b, y, x, d)
            dtop = multiply(_ONE - y_lerp, sample_grads)
            # += static_cast<T>((1 - x_lerp) * dtop), then x_lerp * dtop
            contributions[:, :, 0] = multiply(_ONE - x_lerp, dtop)
            contributions[:, :, 1] = multiply(x_lerp, dtop)
            del dtop
            dbottom = multiply(y_lerp, sample_grads)
            del sample_grads
            contributions[:, :, 2] = multiply(_ONE - x_lerp, dbottom)
            contributions[:, :, 3] = multiply(x_lerp, dbottom)
            del dbottom
            contributions = contributions.reshape(depth, 4 * count)
        # float16 and float64 sums of these are never subnormal in float32 terms; float32 partial
        # sums can be only if some contribution is below 2**-102 (then each one is flushed).
        if out_dtype == np.float32 and smallest < _SUMMABLE and _grain(contributions) < _FLT_MIN:
            _scatter_add_ftz(grads_image, targets, contributions)
        else:
            _scatter_add(grads_image, targets, contributions)
        if np.isnan(grads_image).any():
            _last_nan_wins(grads_image, targets, contributions)
    nhwc = grads_image.T.reshape(batch_size, image_height, image_width, depth)
    return np.ascontiguousarray(nhwc)


def _scatter_add(out: np.ndarray, targets: np.ndarray, values: np.ndarray) -> None:
    """``out[:, targets[e]] += values[:, e]`` for e = 0, 1, ... in order, rounding after each.

    ``out``: contiguous (depth, pixels); ``targets``: intp (E,); ``values``: contiguous
    (depth, E) of ``out``'s dtype. np.add.at is unbuffered and goes through its indices in order,
    so every pixel receives its contributions in TF's order and rounds after each, as TF's `+=`
    does. Channels are independent, so they go in blocks that bound the index array's size.
    """
    depth, pixels = out.shape
    flat = out.reshape(-1)
    block = max(1, _SCATTER_BLOCK // max(len(targets), 1))
    for start in range(0, depth, block):
        stop = min(start + block, depth)
        index = (np.arange(start, stop)[:, None] * pixels + targets).reshape(-1)
        np.add.at(flat, index, values[start:stop].reshape(-1))


def _last_nan_wins(out: np.ndarray, targets: np.ndarray, values: np.ndarray) -> None:
    """Give each NaN sum the sign and payload TF gives it: those of its last NaN contribution.

    When both operands of an addition are NaN, x86 returns the first; TF's compiled `acc += c`
    evaluates ``c + acc`` (observed), so a NaN contribution replaces a NaN sum, while np.add.at
    keeps the sum's. A sum that became NaN through ``inf + -inf`` with no NaN contribution is the
    same default NaN either way. Arguments as for :func:`_scatter_add`.
    """
    channel, event = np.nonzero(np.isnan(values))  # in scatter order within each channel
    if len(event) == 0:
        return
    element = channel * out.shape[1] + targets[event]
    reverse = element[::-1]
    elements, first_in_reverse = np.unique(reverse, return_index=True)
    last = len(reverse) - 1 - first_in_reverse
    # `+ 0` quiets a signalling NaN, as the addition does in TF.
    out.reshape(-1)[elements] = values[channel[last], event[last]] + np.zeros((), values.dtype)


def _scatter_add_ftz(out: np.ndarray, targets: np.ndarray, values: np.ndarray) -> None:
    """:func:`_scatter_add` for float32 with every partial sum flushed to zero when subnormal.

    A Python loop over the k-th contribution of every pixel at once (k = 0, 1, ...), because
    np.add.at cannot flush between additions. Used only when a contribution is below 2**-102.
    """
    count = len(targets)
    if count == 0:
        return
    order = np.argsort(targets, kind="stable")  # each pixel's contributions, in TF's order
    sorted_targets = targets[order]
    first = np.ones(count, bool)
    first[1:] = sorted_targets[1:] != sorted_targets[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(count), 0))
    rank = np.arange(count) - group_start  # k: position of the contribution within its pixel
    by_rank = order[np.argsort(rank, kind="stable")]
    start = 0
    for size in np.bincount(rank):
        events = by_rank[start : start + size]  # at most one per pixel
        start += size
        pixels = targets[events]
        out[:, pixels] = _ftz(out[:, pixels] + values[:, events])


# --------------------------------------------------------------------------------------------------
# CropAndResizeGradBoxes


def crop_and_resize_grad_boxes(
    grads: np.ndarray, image: np.ndarray, boxes: np.ndarray, box_indices: np.ndarray
) -> np.ndarray:
    """TF's ``CropAndResizeGradBoxes`` (CPU functor, bilinear): the gradient w.r.t. the boxes.

    Args:
        grads: float32 (N, crop_height, crop_width, depth); may be a strided view.
        image: (batch, height, width, depth), any of the nine image dtypes; may be a strided view.
        boxes, box_indices: as for :func:`crop_and_resize`.

    Returns:
        A float32 (N, 4) array, d/d ``[y1, x1, y2, x2]``, summed over each box's samples in
        TF's order (rows, columns, channels). Samples outside the image contribute nothing; at an
        exact pixel coordinate both neighbours coincide, so the derivative along that axis is 0.
    """
    _, image_height, image_width, _ = image.shape
    num_boxes, crop_height, crop_width, _ = grads.shape
    grads_boxes = np.zeros((num_boxes, 4), _F32)
    with np.errstate(all="ignore"):
        rows, cols = _box_samples(
            boxes, image_height, image_width, (crop_height, crop_width), ratio_first=True
        )
        valid = _valid_samples(rows, cols)
        batch = box_indices.astype(np.intp)[:, None, None]
        top, bottom = rows.low[:, :, None], rows.high[:, :, None]
        left, right = cols.low[:, None, :], cols.high[:, None, :]
        x_lerp = cols.lerp[:, None, :, None]
        y_lerp = rows.lerp[:, :, None, None]
        # Sums of pixels and their products with lerps: bounded by grains.
        bound = _pixel_grain(image) * min(rows.lerp_grain, cols.lerp_grain)
        flush = bound < _FLT_MIN
        ftz, multiply = (_ftz, _multiply_ftz) if flush else (_keep, np.multiply)
        top_left = _gather(image, batch, top, left, flush)
        top_right = _gather(image, batch, top, right, flush)
        bottom_left = _gather(image, batch, bottom, left, flush)
        bottom_right = _gather(image, batch, bottom, right, flush)
        # image_grad_y = (1 - x_lerp) * (bottom_left - top_left) + x_lerp * (bottom_right - top_right)
        image_grad_y = ftz(
            multiply(_ONE - x_lerp, ftz(bottom_left - top_left))
            + multiply(x_lerp, ftz(bottom_right - top_right))
        )
        # image_grad_x = (1 - y_lerp) * (top_right - top_left) + y_lerp * (bottom_right - bottom_left)
        image_grad_x = ftz(
            multiply(_ONE - y_lerp, ftz(top_right - top_left))
            + multiply(y_lerp, ftz(bottom_right - bottom_left))
        )
        del top_left, top_right, bottom_left, bottom_right
        grads_smallest = _smallest(grads)
        if grads_smallest < _FLT_MIN:
            # Denormals-are-zero: `image_grad_y *= top_grad` reads a subnormal gradient as 0.
            grads = _ftz(grads.astype(_F32, copy=True))
            grads_smallest = _smallest(grads)
        for grad, size, crop, first, second, axis in (
            (image_grad_y, image_height, crop_height, 0, 2, (slice(None), None, None)),
            (image_grad_x, image_width, crop_width, 1, 3, (None, slice(None), None)),
        ):
            # From here on products only, then the sums: bounded by the smallest factors.
            smallest = _smallest(grad) * grads_smallest / 2
            _multiply_if(smallest)(grad, grads, out=grad)  # image_grad_y *= top_grad
            if crop > 1:
                ratio = _F32(size - 1) / _F32(crop - 1)  # height_ratio
                position = np.arange(crop).astype(_F32) * ratio  # y * height_ratio
                factors = (_F32(size - 1) - position, position)
                smallest *= min(_smallest(factors[0]), _smallest(factors[1])) / 2
                multiply = _multiply_if(smallest)
                # grads_boxes(b, 0) += image_grad_y * (image_height - 1 - y * height_ratio)
                # grads_boxes(b, 2) += image_grad_y * (y * height_ratio)
                for column, factor in zip((first, second), factors, strict=True):
                    terms = multiply(grad, factor[axis])
                    flush = smallest < _SUMMABLE and _grain(terms) < _FLT_MIN
                    grads_boxes[:, column] = _sum_float(terms, valid, flush)
            else:
                # grads_boxes(b, 0) += image_grad_y * 0.5 * (image_height - 1): double products
                term = grad.astype(np.float64) * 0.5 * np.float64(size - 1)
                grads_boxes[:, first] = grads_boxes[:, second] = _sum_double(term, valid)
    return grads_boxes


def _sum_float(terms: np.ndarray, valid: np.ndarray, flush: bool) -> np.ndarray:
    """TF's float32 ``acc += term`` over each box's valid samples, in order: float32 (N,).

    ``terms``: float32 (N, crop_height, crop_width, depth), overwritten; ``valid``: bool
    (N, crop_height, crop_width). np.add.accumulate adds strictly left to right (np.sum would add
    pairwise). Skipped samples become +0.0, which leaves any sum unchanged but -0.0; TF's sum
    starts from +0.0 and, without subnormals, can never be -0.0, hence the final ``+ 0``. With
    ``flush`` (some term below 2**-102) each partial sum is flushed to zero when subnormal, as
    under TF, which needs a Python loop over the samples, vectorised over the boxes.
    """
    num_boxes, steps = terms.shape[0], math.prod(terms.shape[1:])
    if steps == 0:
        return np.zeros(num_boxes, _F32)
    if flush:
        return _sequential_sum(terms, valid, lambda acc, term: _ftz(acc + term))
    terms[~valid] = _ZERO
    flat = terms.reshape(num_boxes, steps)
    np.add.accumulate(flat, axis=1, out=flat)
    return flat[:, -1] + _ZERO


def _sum_double(terms: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """TF's ``float acc += double term``, i.e. ``acc = float(double(acc) + term)``: float32 (N,).

    ``terms``: float64 (N, crop_height, crop_width, depth); ``valid`` as for :func:`_sum_float`.
    Each step rounds twice (double, then float, flushed when subnormal), which no NumPy reduction
    reproduces, so this is a Python loop over the samples (crop_width * depth steps when
    crop_height == 1), vectorised over the boxes.
    """
    return _sequential_sum(terms, valid, lambda acc, term: _narrow(acc.astype(np.float64) + term))


def _sequential_sum(
    terms: np.ndarray,
    valid: np.ndarray,
    add: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """Fold ``add`` over each box's valid terms, in (y, x, d) order, from +0.0: float32 (N,)."""
    num_boxes, steps = terms.shape[0], math.prod(terms.shape[1:])
    by_step = np.ascontiguousarray(terms.reshape(num_boxes, steps).T)  # (steps, N)
    keep = np.ascontiguousarray(
        np.broadcast_to(valid[..., None], terms.shape).reshape(num_boxes, steps).T
    )
    acc = np.zeros(num_boxes, _F32)
    for term, inside in zip(by_step, keep, strict=True):
        acc = np.where(inside, add(acc, term), acc)  # TF skips out-of-range samples
    return acc
