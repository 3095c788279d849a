"""The torch kernels: TensorFlow's CPU ``CropAndResize`` and its two gradients in torch ops, on any device.

Requirements, in order of priority:

1. **Bit-identical to TensorFlow 2.21's CPU kernel on CPU**, for every image dtype: every float32
   operation of ``tensorflow/core/kernels/image/crop_and_resize_op.cc`` is one torch operation here,
   in the same order. Separate torch ops never fuse a multiply and an add (``torch.addcmul`` and
   ``torch.lerp`` do, so they are not used), and divisions are by tensors, never by Python scalars
   (torch's CUDA kernels turn ``x / scalar`` into ``x * (1 / scalar)``). Where TF computes in double,
   so do we.
2. **TF's floating-point environment**: TF runs its CPU kernels with flush-to-zero and
   denormals-are-zero on, so a subnormal float32 operand counts as zero and a subnormal result
   becomes zero. torch underflows gradually, so every float32 operation here is followed by
   :func:`_ftz` (a pass that costs little next to the gather). Sums whose partial sums could be
   subnormal are flushed step by step on CPU (a rare, slower path); on other devices they are not.
3. **Device-agnostic**: every tensor is created on the image's device, and nothing here waits for
   the device (no ``.item()``, no boolean-mask indexing, no data-dependent shapes), so on CUDA the
   forward pass queues its kernels and returns.
4. **Safe where TF is not**: a sample coordinate that is not finite is out of range (TF's CPU kernel
   would cast NaN to ``int``); indices are clamped to the image, so nothing is read outside it.
5. **Vectorised**: per box, the rows ``(num_boxes, crop_height)`` and columns
   ``(num_boxes, crop_width)`` of the samples are computed once (:func:`box_samples`), then pixels are
   gathered for all boxes at once. Python loops run only over a reduction whose every step must
   round as TF's does (the ``float += double`` of :func:`crop_and_resize_grad_boxes` for a crop
   dimension of 1, and flushed float32 sums), vectorised over boxes or pixels.

On CPU, :mod:`cropcore_torch._native` runs the same tables through compiled loops when it can (one
pass over the output instead of about thirteen); this module is what runs elsewhere, and the
reference the native loops are tested against.

Every function takes the image (or grads) in its own ``data_format`` and any memory layout;
``channels_first`` tensors are read through NHWC views. Inputs are valid and canonical (see
:mod:`cropcore.spec`): float32 boxes, integer box indices in ``[0, batch)``, positive crop sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cropcore_torch.gradients import (
    crop_and_resize_grad_boxes,
    crop_and_resize_grad_image,
    fill_grad_boxes,
    fill_grad_image,
)
from cropcore_torch.samples import (
    Samples,
    _box_chunks,
    _flush_if,
    _ftz,
    _gather,
    _lerp_grain,
    _pixel_grain,
    _readable,
    box_samples,
    empty_output,
    guarded_indices,
    nhwc,
    output_is_channels_last,
)

__all__ = [
    "Samples",
    "box_samples",
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "empty_output",
    "fill_crops",
    "fill_grad_boxes",
    "fill_grad_image",
    "output_is_channels_last",
]


def crop_and_resize(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    crop_size: tuple[int, int],
    method: str,
    extrapolation_value: float,
    channels_first: bool,
    *,
    fill: Callable[..., None] | None = None,
) -> Tensor:
    """TF's ``CropAndResize``.

    Args:
        image: (batch, height, width, depth), or (batch, depth, height, width) when
            ``channels_first``; any of the nine image dtypes, any strides, any device.
        boxes: float32 (N, 4), ``[y1, x1, y2, x2]``. box_indices: integer (N,), in ``[0, batch)``.
        crop_size: ``(crop_height, crop_width)``, positive. method: ``"bilinear"`` or ``"nearest"``.
        extrapolation_value: written verbatim (as float32) where a sample is outside the image.
        channels_first: the layout of ``image`` and of the result.
        fill: what computes the crops into the result's NHWC view, with the arguments of
            :func:`fill_crops` (default): :func:`cropcore_torch._native.fill_crops` on CPU.

    Returns:
        float32 (N, crop_height, crop_width, depth), or (N, depth, crop_height, crop_width) when
        ``channels_first`` (contiguous, or channels-last when the image is).
    """
    image_nhwc = nhwc(image, channels_first)
    crop_height, crop_width = crop_size
    out = empty_output(
        (boxes.shape[0], crop_height, crop_width, image_nhwc.shape[3]),
        torch.float32,
        image,
        channels_first,
        output_is_channels_last(image, channels_first),
    )
    (fill or fill_crops)(out, image_nhwc, boxes, box_indices, method, extrapolation_value)
    return out.permute(0, 3, 1, 2) if channels_first else out


def fill_crops(
    out: Tensor,
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    method: str,
    extrapolation_value: float,
) -> None:
    """Write the crops of the NHWC ``image`` into ``out``, float32 (N, crop_height, crop_width, depth)."""
    image = _readable(image)
    batch, image_height, image_width, _ = image.shape
    num_boxes, crop_height, crop_width, depth = out.shape
    box_indices, bad = guarded_indices(box_indices, batch)
    pixel_grain = _pixel_grain(image) if image.device.type == "cpu" else 0.0
    for chunk in _box_chunks(num_boxes, crop_height * crop_width * depth, image.device):
        rows, cols = box_samples(boxes[chunk], image_height, image_width, (crop_height, crop_width))
        batch = box_indices[chunk].to(torch.int64)[:, None, None]
        if method == "nearest":
            # A float32 pixel is copied as is (subnormals too); converting a float64 one flushes.
            flush = _ftz if image.dtype == torch.float64 else None
            crops = _gather(image, batch, rows.nearest[:, :, None], cols.nearest[:, None, :], flush)
        else:
            crops = _bilinear(image, batch, rows, cols, pixel_grain)
        # A sample outside the image is replaced entirely (no blending with in-range neighbours).
        inside = rows.valid[:, :, None, None] & cols.valid[:, None, :, None]
        out[chunk] = crops.masked_fill_(~inside, float(extrapolation_value))
    if bad is not None:  # a bad box index on a device: the box's crop is NaN
        out.masked_fill_(bad[:, None, None, None], float("nan"))


def _bilinear(
    image: Tensor,
    batch: Tensor,
    rows: Samples,
    cols: Samples,
    pixel_grain: float,
) -> Tensor:
    """TF's bilinear interpolation of every sample (out-of-range ones too, from pixel 0).

    Lerp form ``a + (b - a) * t``, horizontally then vertically, all float32, each sum followed
    by ``ftz`` (the corners too: denormals-are-zero), each product done by ``multiply`` (see
    :func:`_flush_if`); in place where nothing is flushed, to keep at most three crop-sized
    tensors alive. ``pixel_grain``: see :func:`_pixel_grain` (0.0 off the CPU).
    """
    # Sums of pixels and their products with lerps: bounded by grains.
    ftz, multiply = _flush_if(
        image.device, lambda: pixel_grain * _lerp_grain(rows) * _lerp_grain(cols)
    )
    top, bottom = rows.low[:, :, None], rows.high[:, :, None]
    left, right = cols.low[:, None, :], cols.high[:, None, :]
    x_lerp = cols.lerp[:, None, :, None]
    y_lerp = rows.lerp[:, :, None, None]

    def lerp(low: Tensor, high: Tensor, weight: Tensor) -> Tensor:
        """``low + (high - low) * weight``, overwriting ``high``."""
        if multiply is torch.mul:
            return high.sub_(low).mul_(weight).add_(low)
        return ftz(multiply(ftz(high.sub_(low)), weight).add_(low))

    top_left = _gather(image, batch, top, left, ftz)
    top_row = _gather(image, batch, top, right, ftz)
    # top = top_left + (top_right - top_left) * x_lerp
    top_row = lerp(top_left, top_row, x_lerp)
    del top_left
    bottom_left = _gather(image, batch, bottom, left, ftz)
    bottom_row = _gather(image, batch, bottom, right, ftz)
    # bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    bottom_row = lerp(bottom_left, bottom_row, x_lerp)
    del bottom_left
    # crops = top + (bottom - top) * y_lerp
    return lerp(top_row, bottom_row, y_lerp)
