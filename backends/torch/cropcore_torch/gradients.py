"""The torch kernels of TF's two gradients, ``CropAndResizeGradImage`` and ``CropAndResizeGradBoxes``
(requirements: :mod:`cropcore_torch.kernels`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from cropcore_torch.samples import (
    _box_chunks,
    _flush_if,
    _ftz,
    _full,
    _gather,
    _lerp_grain,
    _lerp_smallest,
    _may_underflow_in_sums,
    _narrow,
    _pixel_grain,
    _readable,
    _smallest,
    box_samples,
    guarded_indices,
    nhwc,
)

__all__ = [
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "fill_grad_boxes",
    "fill_grad_image",
]


def crop_and_resize_grad_image(
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    image_shape: tuple[int, int, int, int],
    method: str,
    dtype: torch.dtype,
    channels_first: bool,
    *,
    fill: Callable[..., None] | None = None,
) -> Tensor:
    """TF's ``CropAndResizeGradImage``: the gradient of the crops w.r.t. the image.

    Args:
        grads: float32 (N, crop_height, crop_width, depth) (or NCHW when ``channels_first``).
        boxes, box_indices: as for :func:`crop_and_resize`.
        image_shape: ``(batch, height, width, depth)`` (a :class:`cropcore.spec.ImageShape`).
        method: ``"bilinear"`` or ``"nearest"``. dtype: float16, float32 or float64, the result's.
        fill: what adds the gradient into the zeroed NHWC result, with the arguments of
            :func:`fill_grad_image` (default): :func:`cropcore_torch._native.fill_grad_image` on
            CPU (float32 and float64 results).

    Returns:
        ``dtype`` (batch, height, width, depth), or NCHW when ``channels_first`` (contiguous).
        Each contribution is computed in float32, cast to ``dtype`` and accumulated in ``dtype``.
        On CPU the additions are sequential, so every pixel receives its contributions in TF's
        single-threaded order (boxes, rows, columns; corners TL, TR, BL, BR) and the result is
        TF's bit for bit; on CUDA the order of the additions is the device's.
    """
    batch, image_height, image_width, depth = (int(d) for d in image_shape)
    out = torch.zeros((batch, image_height, image_width, depth), dtype=dtype, device=grads.device)
    (fill or fill_grad_image)(out, nhwc(grads, channels_first), boxes, box_indices, method)
    return out.permute(0, 3, 1, 2).contiguous() if channels_first else out


def fill_grad_image(
    out: Tensor, grads: Tensor, boxes: Tensor, box_indices: Tensor, method: str
) -> None:
    """Add the image gradient of the NHWC ``grads`` to ``out``, zeros (batch, height, width, depth)."""
    batch, image_height, image_width, depth = out.shape
    num_boxes, crop_height, crop_width, _ = grads.shape
    grads_image = out.view(batch * image_height * image_width, depth)
    box_indices, bad = guarded_indices(box_indices, batch)
    # Box by box in order (in groups on CPU): each pixel still receives its contributions in order.
    for chunk in _box_chunks(num_boxes, 4 * crop_height * crop_width * depth, grads.device):
        _add_grad_image(
            grads_image, grads[chunk], boxes[chunk], box_indices[chunk], image_height, image_width,
            method, None if bad is None else bad[chunk],
        )  # fmt: skip


def _add_grad_image(
    grads_image: Tensor,
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    image_height: int,
    image_width: int,
    method: str,
    bad: Tensor | None = None,
) -> None:
    """Add the image gradient of some boxes to ``grads_image`` (pixels, depth), in TF's order.

    ``bad``: boxes whose index was bad (:func:`guarded_indices`): they contribute nothing.
    """
    dtype = grads_image.dtype
    num_boxes, crop_height, crop_width, depth = grads.shape
    rows, cols = box_samples(boxes, image_height, image_width, (crop_height, crop_width))
    valid = (rows.valid[:, :, None] & cols.valid[:, None, :])[..., None]  # (N, ch, cw, 1)
    if bad is not None:
        valid = valid & ~bad[:, None, None, None]
    # Samples outside the image contribute +0.0: a sum that starts at +0.0 is unchanged by it.
    # Denormals-are-zero: a subnormal gradient counts as 0.
    sample_grads = torch.where(valid, grads, _full(0.0, grads))
    # Products only: bounded by the smallest factors (a subnormal gradient gives a product below
    # 2**-126, flushed to the same signed 0 that reading it as 0 would give).
    ftz, multiply = _flush_if(
        grads.device,
        lambda: _smallest(sample_grads) * _lerp_smallest(rows) * _lerp_smallest(cols) / 4,
    )
    ftz(sample_grads)
    row_base = box_indices.to(torch.int64)[:, None] * image_height  # (N, 1)

    def pixel(y: Tensor, x: Tensor) -> Tensor:
        """Flat pixel index of every sample: int64 (N, ch, cw)."""
        return ((row_base + y) * image_width)[:, :, None] + x[:, None, :]

    if method == "nearest":
        targets = pixel(rows.nearest, cols.nearest).reshape(-1)
        events = valid.reshape(-1)
        contributions = sample_grads.to(dtype)  # static_cast<T>(grads(b, y, x, d))
    else:
        # (N, ch, cw, corner): each sample's four targets in TF's order TL, TR, BL, BR.
        targets = torch.stack(
            [
                pixel(rows.low, cols.low),
                pixel(rows.low, cols.high),
                pixel(rows.high, cols.low),
                pixel(rows.high, cols.high),
            ],
            dim=3,
        ).reshape(-1)
        events = valid.expand(num_boxes, crop_height, crop_width, 4).reshape(-1)
        one = _full(1.0, grads)
        y_lerp = rows.lerp[:, :, None, None]
        x_lerp = cols.lerp[:, None, :, None]
        dtop = multiply(one - y_lerp, sample_grads)  # float dtop = (1 - y_lerp) * grads(b, y, x, d)
        dbottom = multiply(y_lerp, sample_grads)
        contributions = torch.stack(
            [
                multiply(one - x_lerp, dtop),
                multiply(x_lerp, dtop),
                multiply(one - x_lerp, dbottom),
                multiply(x_lerp, dbottom),
            ],
            dim=3,
        )
        contributions = contributions.to(dtype)  # static_cast<T>(...) of each float product
    contributions = contributions.reshape(targets.shape[0], depth)
    if dtype == torch.float32 and _may_underflow_in_sums(contributions):
        # Only in-range samples: a flushed sum can be -0.0, which adding +0.0 would change.
        _index_add_flushed(grads_image, targets[events], contributions[events])
    elif grads.device.type == "cpu" and dtype != torch.float16:
        # Sequential, in the order of `targets`: TF's order, exactly (and faster than index_put_).
        grads_image.index_add_(0, targets, contributions)
    else:
        # On CPU also sequential, rounding to float16 after every addition as TF's half `+=` does
        # (index_add_ sums float16 in float32 and rounds once).
        grads_image.index_put_((targets,), contributions, accumulate=True)


def _index_add_flushed(out: Tensor, targets: Tensor, values: Tensor) -> None:
    """``out[targets[e]] += values[e]`` for e = 0, 1, ... in order, each partial sum flushed.

    ``out``: float32 (pixels, depth); ``targets``: int64 (E,); ``values``: float32 (E, depth).
    A loop over the k-th contribution of every pixel at once (k = 0, 1, ...), because no torch
    scatter can flush between additions; used only when a contribution is below 2**-102.
    """
    count = targets.shape[0]
    if count == 0:
        return
    order = torch.sort(targets, stable=True).indices  # each pixel's events, in TF's order
    ordered = targets[order]
    first = torch.ones(count, dtype=torch.bool, device=targets.device)
    first[1:] = ordered[1:] != ordered[:-1]
    position = torch.arange(count, device=targets.device)
    group_start = torch.cummax(torch.where(first, position, 0), dim=0).values
    rank = position - group_start  # k: the event's place among its pixel's events
    by_rank = order[torch.sort(rank, stable=True).indices]
    start = 0
    for size in torch.bincount(rank).tolist():
        events = by_rank[start : start + size]  # at most one per pixel
        start += size
        pixels = targets[events]
        out[pixels] = _ftz(out[pixels] + values[events])


def crop_and_resize_grad_boxes(
    grads: Tensor,
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    channels_first: bool,
    *,
    fill: Callable[..., None] | None = None,
) -> Tensor:
    """TF's ``CropAndResizeGradBoxes`` (bilinear): the gradient w.r.t. the boxes.

    Args:
        grads: float32 (N, crop_height, crop_width, depth) (or NCHW when ``channels_first``).
        image: the forward op's image, any of the nine dtypes, in the same data format.
        boxes, box_indices: as for :func:`crop_and_resize`.
        fill: what writes the gradient into the zeroed result, with the arguments of
            :func:`fill_grad_boxes` (default): :func:`cropcore_torch._native.fill_grad_boxes` on CPU.

    Returns:
        float32 (N, 4): d/d ``[y1, x1, y2, x2]``. Each box's terms are summed one after the other in
        TF's order (rows, columns, channels) in float32 on CPU, so the result is TF's bit for bit;
        on other devices they are summed by ``torch.sum``.
    """
    out = torch.zeros((grads.shape[0], 4), dtype=torch.float32, device=grads.device)
    (fill or fill_grad_boxes)(
        out, nhwc(grads, channels_first), nhwc(image, channels_first), boxes, box_indices
    )
    return out


def fill_grad_boxes(
    out: Tensor, grads: Tensor, image: Tensor, boxes: Tensor, box_indices: Tensor
) -> None:
    """Write the box gradient of the NHWC ``grads`` and ``image`` into ``out``, float32 (N, 4)."""
    image = _readable(image)
    num_boxes, crop_height, crop_width, depth = grads.shape
    box_indices, bad = guarded_indices(box_indices, image.shape[0])
    pixel_grain = _pixel_grain(image) if grads.device.type == "cpu" else 0.0
    for chunk in _box_chunks(num_boxes, 6 * crop_height * crop_width * depth, grads.device):
        out[chunk] = _grad_boxes(grads[chunk], image, boxes[chunk], box_indices[chunk], pixel_grain)
    if bad is not None:  # a bad box index on a device: the box's gradient row is NaN
        out.masked_fill_(bad[:, None], float("nan"))


def _grad_boxes(
    grads: Tensor, image_nhwc: Tensor, boxes: Tensor, box_indices: Tensor, pixel_grain: float
) -> Tensor:
    """:func:`crop_and_resize_grad_boxes` of some boxes (NHWC grads and image): float32 (n, 4)."""
    _, image_height, image_width, _ = image_nhwc.shape
    _, crop_height, crop_width, _ = grads.shape
    rows, cols = box_samples(
        boxes, image_height, image_width, (crop_height, crop_width), ratio_first=True
    )
    valid = (rows.valid[:, :, None] & cols.valid[:, None, :])[..., None]
    batch = box_indices.to(torch.int64)[:, None, None]
    top, bottom = rows.low[:, :, None], rows.high[:, :, None]
    left, right = cols.low[:, None, :], cols.high[:, None, :]
    # One bound for every float32 intermediate: sums of pixels times lerps (their grains), times a
    # gradient, times a position factor (at least 2**-31), each product rounding down at most 2x.
    ftz, multiply = _flush_if(
        grads.device,
        lambda: (
            pixel_grain
            * min(_lerp_grain(rows), _lerp_grain(cols))
            * _smallest(grads)
            * 2.0**-31
            / 4
        ),
    )
    top_left = _gather(image_nhwc, batch, top, left, ftz)
    top_right = _gather(image_nhwc, batch, top, right, ftz)
    bottom_left = _gather(image_nhwc, batch, bottom, left, ftz)
    bottom_right = _gather(image_nhwc, batch, bottom, right, ftz)
    one = _full(1.0, grads)
    x_lerp = cols.lerp[:, None, :, None]
    y_lerp = rows.lerp[:, :, None, None]

    def lerp_sum(a: Tensor, a_low: Tensor, a_high: Tensor, b_low: Tensor, b_high: Tensor) -> Tensor:
        """(1 - a) * (a_high - a_low) + a * (b_high - b_low), every operation flushed."""
        first = multiply(ftz(one - a), ftz(a_high - a_low))
        return ftz(first.add_(multiply(a, ftz(b_high - b_low))))

    # image_grad_y = (1 - x_lerp) * (bottom_left - top_left) + x_lerp * (bottom_right - top_right)
    image_grad_y = lerp_sum(x_lerp, top_left, bottom_left, top_right, bottom_right)
    # image_grad_x = (1 - y_lerp) * (top_right - top_left) + y_lerp * (bottom_right - bottom_left)
    image_grad_x = lerp_sum(y_lerp, top_left, top_right, bottom_left, bottom_right)
    del top_left, top_right, bottom_left, bottom_right
    grads = ftz(grads.to(torch.float32, copy=True))  # denormals-are-zero
    if multiply is torch.mul:  # in place: no flush
        image_grad_y.mul_(grads)  # image_grad_y *= top_grad
        image_grad_x.mul_(grads)
    else:
        image_grad_y = multiply(image_grad_y, grads)
        image_grad_x = multiply(image_grad_x, grads)

    columns = []
    for grad, size, crop, steps_shape in (
        (image_grad_y, image_height, crop_height, (1, crop_height, 1, 1)),
        (image_grad_x, image_width, crop_width, (1, 1, crop_width, 1)),
    ):
        if crop > 1:
            size_minus_one = _full(float(size - 1), grads)
            ratio = size_minus_one / _full(float(crop - 1), grads)  # height_ratio
            position = torch.arange(crop, device=grads.device).to(torch.float32) * ratio
            position = position.view(steps_shape)  # y * height_ratio
            # grads_boxes(b, 0) += image_grad_y * (image_height - 1 - y * height_ratio)
            first = _sum_float(multiply(grad, ftz(size_minus_one - position)), valid)
            # grads_boxes(b, 2) += image_grad_y * (y * height_ratio)
            second = _sum_float(multiply(grad, position), valid)
        else:
            # grads_boxes(b, 0) += image_grad_y * 0.5 * (image_height - 1): double products
            first = second = _sum_double(grad.double() * 0.5 * float(size - 1), valid)
        columns.append((first, second))
    (dy1, dy2), (dx1, dx2) = columns
    return torch.stack([dy1, dx1, dy2, dx2], dim=1)


def _sum_float(terms: Tensor, valid: Tensor) -> Tensor:
    """TF's float32 ``acc += term`` over each box's in-range samples, in order: float32 (N,).

    ``terms``: float32 (N, crop_height, crop_width, depth); ``valid``: bool (N, ch, cw, 1).
    Out-of-range samples add +0.0, which changes no unflushed sum that starts at +0.0. On CPU,
    ``scatter_add_`` adds strictly in order (``torch.sum`` adds pairwise, ``torch.cumsum`` in
    double), or, when a partial sum could be subnormal, a loop flushes after every step (and
    skips out-of-range samples: a flushed sum can be -0.0); elsewhere ``torch.sum`` is used.
    """
    num_boxes, steps = terms.shape[0], math.prod(terms.shape[1:])
    flat = torch.where(valid, terms, _full(0.0, terms)).reshape(num_boxes, steps)
    if terms.device.type != "cpu":
        return flat.sum(dim=1)
    if _may_underflow_in_sums(flat):
        keep = valid.expand(terms.shape).reshape(num_boxes, steps)
        return _sequential_sum(flat, keep, lambda acc, term: _ftz(acc + term))
    index = torch.zeros((1, 1), dtype=torch.int64).expand(flat.shape)
    return torch.zeros((num_boxes, 1)).scatter_add_(1, index, flat)[:, 0]


def _sum_double(terms: Tensor, valid: Tensor) -> Tensor:
    """TF's ``float acc += double term``, i.e. ``acc = float(double(acc) + term)``: float32 (N,).

    ``terms``: float64 (N, crop_height, crop_width, depth). Each step rounds twice (double, then
    float, flushed when subnormal), which no torch reduction reproduces: a loop over the
    reduction axis, vectorised over the boxes (only crops with a dimension of 1 come here).
    """
    num_boxes, steps = terms.shape[0], math.prod(terms.shape[1:])
    keep = valid.expand(terms.shape).reshape(num_boxes, steps)
    flat = terms.reshape(num_boxes, steps)
    return _sequential_sum(flat, keep, lambda acc, term: _narrow(acc.double() + term))


def _sequential_sum(flat: Tensor, keep: Tensor, add) -> Tensor:
    """Fold ``add`` over each row of ``flat`` (N, steps) where ``keep``, in order, from +0.0.

    Returns float32 (N,). Out-of-range samples are skipped, as TF skips them.
    """
    acc = torch.zeros(flat.shape[0], dtype=torch.float32, device=flat.device)
    for step, inside in zip(flat.unbind(dim=1), keep.unbind(dim=1), strict=True):
        acc = torch.where(inside, add(acc, step), acc)
    return acc
