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

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from cropcore import hostmem

__all__ = [
    "Samples",
    "box_samples",
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "empty_output",
    "output_is_channels_last",
]


class Samples(NamedTuple):
    """Where the samples of one crop axis fall in the image, per box; every tensor is (N, crop)."""

    valid: Tensor  # bool: 0 <= coordinate <= size - 1 (False for NaN and inf)
    low: Tensor  # int64: floorf(coordinate), clamped to the image (0 where invalid)
    high: Tensor  # int64: ceilf(coordinate), clamped (0 where invalid)
    lerp: Tensor  # float32: coordinate - floorf(coordinate) (0 where invalid)
    nearest: Tensor  # int64: roundf(coordinate), clamped (0 where invalid)


def _full(value: float, like: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """A 0-d tensor on ``like``'s device (a fill kernel on CUDA: no host-to-device copy)."""
    return torch.full((), value, dtype=dtype, device=like.device)


#: Below this magnitude a float32 is subnormal.
_FLT_MIN = 2.0**-126
#: float32 terms at least this large are multiples of 2**-125, and so are all their partial sums:
#: none can be subnormal, so such sums need no flushing.
_SUMMABLE = 2.0**-102


def _ftz(x: Tensor) -> Tensor:
    """Flush the subnormal elements of float32 ``x`` to zero of the same sign, in place; ``x``.

    ``x * 0`` keeps the sign, ``x * 1`` keeps every other value (inf and NaN included).
    """
    return x.mul_(x.abs() >= _FLT_MIN)


# Tininess: x86 (TF's CPU wheel) finds a result tiny, and flushes it, when it is below 2**-126
# *after rounding to 24 bits* with an unbounded exponent; torch rounds to the subnormal grid
# instead, which turns an exact product in [2**-126 * (1 - 2**-24), 2**-126 * (1 - 2**-25)) into
# 2**-126, a normal number. Sums and differences are exact when that small, so testing their
# result is right; products, quotients and double-to-float conversions go through
# :func:`_multiply_ftz`, :func:`_divide_ftz` and :func:`_narrow`.
_TINY = 2.0**-126 * (1 - 2.0**-25)  # a double below this is tiny after rounding to float32
_SCALE = 2.0**24  # lifts a product near 2**-126 clear of the subnormal range


def _untiny(result: Tensor, scaled: Tensor) -> Tensor:
    """Flush, in place, the elements of flushed ``result`` that are +-2**-126 but tiny for x86.

    ``scaled``: the same operation with one operand times 2**24, exact near 2**-102 (normal), so
    it rounds as x86 does: the result was tiny iff ``|scaled| < 2**-102``.
    """
    tiny = (result.abs() == _FLT_MIN) & (scaled.abs() < _FLT_MIN * _SCALE)
    return result.mul_(~tiny)  # x * 0 keeps the sign


def _multiply_ftz(a: Tensor, b: Tensor) -> Tensor:
    """float32 ``a * b`` as TF's CPU computes it (flush-to-zero, tininess after rounding): new.

    ``a``, ``b``: broadcastable float32, already flushed (or one of them at most 1 in magnitude):
    a product of +-2**-126 then has both factors at most 1 + 2**-24, so ``a * 2**24`` cannot
    overflow there.
    """
    product = _ftz(a * b)
    if product.device.type == "cpu" and not bool((product.abs() == _FLT_MIN).any()):
        return product  # nothing on the edge (skipped on CPU only: no device sync elsewhere)
    return _untiny(product, (a * _SCALE) * b)


def _divide_ftz(a: Tensor, divisor: Tensor) -> Tensor:
    """float32 ``a / divisor`` for flushed ``a`` and ``divisor >= 1``, as :func:`_multiply_ftz`."""
    return _untiny(_ftz(a / divisor), (a * _SCALE) / divisor)


def _narrow(x: Tensor) -> Tensor:
    """``static_cast<float>`` of float64 ``x`` under flush-to-zero: float32, tiny values to +-0."""
    return x.float().mul_(x.abs() >= _TINY)


def _may_underflow_in_sums(terms: Tensor) -> bool:
    """Whether float32 sums of ``terms`` can have subnormal partial sums (CPU only: a host read)."""
    if terms.device.type != "cpu" or terms.numel() == 0:
        return False
    return bool(((terms != 0) & (terms.abs() < _SUMMABLE)).any())


def _keep(x: Tensor) -> Tensor:
    return x


def _smallest(x: Tensor) -> float:
    """The smallest nonzero finite magnitude of ``x`` (inf if none, or beyond float32's range).

    Reads the data: used on CPU only, to skip flushing where it provably changes nothing.
    """
    if x.numel() == 0:
        return math.inf
    magnitude = x.detach().abs()
    magnitude = torch.where((magnitude > 0) & torch.isfinite(magnitude), magnitude, math.inf)
    value = float(magnitude.min())  # exact: a float64 below 2**-126 stays below it
    return value if value <= torch.finfo(torch.float32).max else math.inf


def _grain(x: Tensor) -> float:
    """A power of two that divides every finite element of ``x`` (as float32); inf if all are 0.

    Sums and differences of multiples of ``q`` are multiples of ``q``; products of multiples of
    ``p`` and ``q`` are multiples of ``p * q``, and rounding keeps this: a nonzero result of such
    operations is at least its grain, so a grain of at least 2**-126 proves nothing is subnormal.
    """
    smallest = _smallest(x)
    if smallest == math.inf:
        return math.inf
    smallest = float(torch.tensor(smallest, dtype=torch.float32))  # as float32 (a tiny one: 0)
    return 2.0 ** (math.frexp(max(smallest, 2.0**-149))[1] - 24)  # the float32 ulp at `smallest`


def _pixel_grain(image: Tensor) -> float:
    """:func:`_grain` of the image's values as float32; dtypes that bound it are not scanned."""
    if not image.is_floating_point():
        return 1.0
    if image.dtype == torch.float16:
        return 2.0**-24  # every float16 is a multiple of its smallest subnormal
    return _grain(image)


def _flush_if(
    device: torch.device, bound
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor, Tensor], Tensor]]:
    """``(flush, multiply)``: :func:`_ftz` and :func:`_multiply_ftz`, unless, on CPU, ``bound()``
    (a lower bound of every nonzero intermediate magnitude) proves no subnormal can occur; then
    no flush and ``torch.mul``. Other devices always flush (no host reads)."""
    if device.type != "cpu" or bound() < _FLT_MIN:
        return _ftz, _multiply_ftz
    return _keep, torch.mul


def _lerp_grain(samples: Samples) -> float:
    """A grain of both ``lerp`` and ``1 - lerp``."""
    return min(_grain(samples.lerp), 1.0)


def _lerp_smallest(samples: Samples) -> float:
    one = _full(1.0, samples.lerp)
    return min(_smallest(samples.lerp), _smallest(one - samples.lerp))


def _coordinates(
    start: Tensor, end: Tensor, size: int, crop: int, *, ratio_first: bool = False
) -> Tensor:
    """TF's sample coordinates ``in_y`` (or ``in_x``) in pixels: float32 (N, crop).

    ``start``, ``end``: float32 (N,) normalised box edges (y1, y2 or x1, x2); ``size``: the image
    height (or width); ``crop``: the crop height (or width). ``ratio_first`` selects
    CropAndResizeGradBoxes' rounding of the scale.
    """
    # C++ `image_height - 1` is an int converted to float: Python's float(), then float32 rounding.
    size_minus_one = _full(float(size - 1), start)
    if crop == 1:
        # `0.5 * (y1 + y2) * (image_height - 1)`: a float sum, then double products (the literal 0.5
        # is a double), rounded to float once, on assignment.
        centre = _ftz(start + end).double() * 0.5 * float(size - 1)
        return _narrow(centre)[:, None]
    crop_minus_one = _full(float(crop - 1), start)
    span = _ftz(end - start)  # can overflow float32 (y1=-3e38, y2=3e38): inf, then NaN below
    if ratio_first:
        # CropAndResizeGradBoxes: height_ratio = float(H - 1) / (ch - 1) first, then (y2 - y1) * it.
        scale = _multiply_ftz(span, size_minus_one / crop_minus_one)
    else:
        # CropAndResize, CropAndResizeGradImage: (y2 - y1) * (image_height - 1) / (crop_height - 1),
        # left to right.
        scale = _divide_ftz(_multiply_ftz(span, size_minus_one), crop_minus_one)
    steps = torch.arange(crop, device=start.device).to(torch.float32)  # the int y, as a float
    # in_y = y1 * (image_height - 1) + y * height_scale, each product rounded to float32.
    return _ftz(
        _multiply_ftz(start, size_minus_one)[:, None] + _multiply_ftz(steps, scale[:, None])
    )


def _samples(start: Tensor, end: Tensor, size: int, crop: int, *, ratio_first: bool) -> Samples:
    coord = _coordinates(start, end, size, crop, ratio_first=ratio_first)
    # TF extrapolates when `in_y < 0 || in_y > image_height - 1`: [0, H-1] inclusive, -0.0 inside.
    # Written NaN-safe: TF's CPU kernel lets NaN through (and crashes); here it is out of range.
    valid = (coord >= 0) & (coord <= float(size - 1))
    inside = torch.where(valid, coord, _full(0.0, coord))
    # Coordinates here are >= 0, so floorf is the conversion to int (truncation), and
    # `in_y - top_y_index` is exact in float32. (torch.floor would do too, but torch runs it on
    # its thread pool from 2048 elements on, which costs a scheduler time slice on a busy machine.)
    floor = inside.to(torch.int64)
    lerp = inside - floor.to(torch.float32)
    # ceilf is floorf + 1 unless the coordinate is an integer; roundf rounds half away from zero,
    # which for v >= 0 is floorf + (frac >= 0.5), exact in float32. Not torch.round (half to even),
    # not floorf(v + 0.5f) (0.49999997 + 0.5f rounds to 1).
    # Clamped: when H - 1 > 2**24, float(H - 1) can round above H - 1 and TF would read one row
    # past the image; we read the last row instead.
    last = size - 1
    low = floor.clamp(max=last)
    high = (floor + (lerp > 0)).clamp_(max=last)
    nearest = (floor + (lerp >= 0.5)).clamp_(max=last)
    return Samples(valid, low, high, lerp, nearest)


def box_samples(
    boxes: Tensor,
    image_height: int,
    image_width: int,
    crop_size: tuple[int, int],
    *,
    ratio_first: bool = False,
) -> tuple[Samples, Samples]:
    """The row (y) and column (x) samples of every box: ``(rows, cols)``.

    ``boxes``: float32 (N, 4) ``[y1, x1, y2, x2]``; rows are (N, crop_height), cols (N, crop_width).
    ``ratio_first`` gives CropAndResizeGradBoxes' coordinates (a third float32 rounding of the
    scale; the forward op and the image gradient share the other one).
    """
    crop_height, crop_width = crop_size
    # Denormals-are-zero: a subnormal box coordinate counts as 0 (-1e-40 is inside the image).
    boxes = _ftz(boxes.to(torch.float32, copy=True))
    rows = _samples(boxes[:, 0], boxes[:, 2], image_height, crop_height, ratio_first=ratio_first)
    cols = _samples(boxes[:, 1], boxes[:, 3], image_width, crop_width, ratio_first=ratio_first)
    return rows, cols


# --------------------------------------------------------------------------------------------------
# Layouts


def nhwc(x: Tensor, channels_first: bool) -> Tensor:
    """An NHWC view of a 4-D tensor given in ``data_format`` (no copy)."""
    return x.permute(0, 2, 3, 1) if channels_first else x


def output_is_channels_last(image: Tensor, channels_first: bool) -> bool:
    """Whether an NCHW result is laid out channels-last in memory (``torch.channels_last``).

    Results follow the image's memory format, as torch's own image ops do: an NCHW image stored
    channels-last gives a channels-last result; every other image gives a contiguous one.
    """
    return (
        channels_first
        and not image.is_contiguous()
        and image.is_contiguous(memory_format=torch.channels_last)
    )


def empty_output(
    shape_nhwc: tuple[int, int, int, int],
    dtype: torch.dtype,
    like: Tensor,
    channels_first: bool,
    channels_last_memory: bool,
) -> Tensor:
    """An uninitialised result: its NHWC view, allocated in the layout the caller will get.

    ``shape_nhwc``: (N, height, width, depth). The returned tensor is NHWC-shaped; the caller gets
    ``.permute(0, 3, 1, 2)`` of it for channels_first, which is then contiguous (or channels-last
    when ``channels_last_memory``). On CPU the memory comes from NumPy, whose allocator asks Linux
    for transparent huge pages for large arrays: a 100 MB result is then written about four times
    faster on first touch than through torch's allocator.
    """
    n, h, w, d = shape_nhwc
    if channels_first and not channels_last_memory:
        physical, to_nhwc = (n, d, h, w), (0, 2, 3, 1)
    else:
        physical, to_nhwc = (n, h, w, d), (0, 1, 2, 3)
    if like.device.type == "cpu":
        # Large results reuse the memory of dropped ones (cropcore.hostmem), as TF's allocator does.
        memory = torch.from_numpy(hostmem.pool().empty(physical, _NUMPY_DTYPES[dtype]))
    else:
        memory = torch.empty(physical, dtype=dtype, device=like.device)
    return memory.permute(*to_nhwc)


class _NumpyDtypes(dict):
    def __missing__(self, dtype: torch.dtype):
        value = self[dtype] = torch.empty((), dtype=dtype).numpy().dtype
        return value


_NUMPY_DTYPES = _NumpyDtypes()


# --------------------------------------------------------------------------------------------------
# The three ops


#: On CPU, the ops work through groups of boxes whose crops hold about this many elements, so that
#: their dozen temporaries stay in cache instead of being fresh memory the OS must zero. (A loop
#: over groups, each vectorised; on other devices there is one group.)
_CPU_CHUNK_ELEMENTS = 1 << 20


def _box_chunks(num_boxes: int, elements_per_box: int, device: torch.device) -> list[slice]:
    if device.type != "cpu" or num_boxes == 0:
        return [slice(0, num_boxes)]
    step = max(1, _CPU_CHUNK_ELEMENTS // max(1, elements_per_box))
    return [slice(start, min(start + step, num_boxes)) for start in range(0, num_boxes, step)]


def _gather(
    image: Tensor,
    batch: Tensor,
    y: Tensor,
    x: Tensor,
    ftz: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``float(image[b, y, x, :])`` for every sample: float32 (N, crop_height, crop_width, depth).

    ``image``: NHWC (any strides); ``batch`` (N, 1, 1), ``y`` (N, crop_height, 1), ``x``
    (N, 1, crop_width): int64. TF casts each pixel to float32 before any arithmetic; with ``ftz``
    :func:`_ftz`, under flush-to-zero (a subnormal float32, or a float64 tiny in float32, is 0).
    """
    if ftz is _ftz:
        if image.dtype == torch.float64:
            return _narrow(image[batch, y, x])
        return _ftz(image[batch, y, x].to(torch.float32))
    return image[batch, y, x].to(torch.float32)


def _readable(image: Tensor) -> Tensor:
    # torch has uint16 tensors but few CUDA kernels for them; int32 holds every value exactly.
    if image.dtype == torch.uint16 and image.device.type != "cpu":
        return image.to(torch.int32)
    return image


def crop_and_resize(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    crop_size: tuple[int, int],
    method: str,
    extrapolation_value: float,
    channels_first: bool,
) -> Tensor:
    """TF's ``CropAndResize``.

    Args:
        image: (batch, height, width, depth), or (batch, depth, height, width) when
            ``channels_first``; any of the nine image dtypes, any strides, any device.
        boxes: float32 (N, 4), ``[y1, x1, y2, x2]``. box_indices: integer (N,), in ``[0, batch)``.
        crop_size: ``(crop_height, crop_width)``, positive. method: ``"bilinear"`` or ``"nearest"``.
        extrapolation_value: written verbatim (as float32) where a sample is outside the image.
        channels_first: the layout of ``image`` and of the result.

    Returns:
        float32 (N, crop_height, crop_width, depth), or (N, depth, crop_height, crop_width) when
        ``channels_first`` (contiguous, or channels-last when the image is).
    """
    image_nhwc = _readable(nhwc(image, channels_first))
    depth = image_nhwc.shape[3]
    num_boxes = boxes.shape[0]
    crop_height, crop_width = crop_size
    out = empty_output(
        (num_boxes, crop_height, crop_width, depth),
        torch.float32,
        image,
        channels_first,
        output_is_channels_last(image, channels_first),
    )
    pixel_grain = _pixel_grain(image_nhwc) if image.device.type == "cpu" else 0.0
    for chunk in _box_chunks(num_boxes, crop_height * crop_width * depth, image.device):
        out[chunk] = _crop(
            image_nhwc,
            boxes[chunk],
            box_indices[chunk],
            crop_size,
            method,
            extrapolation_value,
            pixel_grain,
        )
    return out.permute(0, 3, 1, 2) if channels_first else out


def _crop(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    crop_size: tuple[int, int],
    method: str,
    extrapolation_value: float,
    pixel_grain: float,
) -> Tensor:
    """:func:`crop_and_resize` of some boxes of an NHWC image: float32 (n, ch, cw, depth)."""
    _, image_height, image_width, _ = image.shape
    rows, cols = box_samples(boxes, image_height, image_width, crop_size)
    batch = box_indices.to(torch.int64)[:, None, None]
    if method == "nearest":
        # A float32 pixel is copied as is (subnormals too); converting a float64 one flushes.
        flush = _ftz if image.dtype == torch.float64 else None
        crops = _gather(image, batch, rows.nearest[:, :, None], cols.nearest[:, None, :], flush)
    else:
        # Sums of pixels and their products with lerps: bounded by grains.
        arithmetic = _flush_if(
            image.device, lambda: pixel_grain * _lerp_grain(rows) * _lerp_grain(cols)
        )
        crops = _bilinear(image, batch, rows, cols, *arithmetic)
    # A sample outside the image is replaced entirely (no blending with in-range neighbours).
    inside = rows.valid[:, :, None, None] & cols.valid[:, None, :, None]
    return crops.masked_fill_(~inside, float(extrapolation_value))


def _bilinear(
    image: Tensor,
    batch: Tensor,
    rows: Samples,
    cols: Samples,
    ftz: Callable[[Tensor], Tensor],
    multiply: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """TF's bilinear interpolation of every sample (out-of-range ones too, from pixel 0).

    Lerp form ``a + (b - a) * t``, horizontally then vertically, all float32, each sum followed
    by ``ftz`` (the corners too: denormals-are-zero), each product done by ``multiply`` (see
    :func:`_flush_if`); in place where nothing is flushed, to keep at most three crop-sized
    tensors alive.
    """
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


def crop_and_resize_grad_image(
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    image_shape: tuple[int, int, int, int],
    method: str,
    dtype: torch.dtype,
    channels_first: bool,
) -> Tensor:
    """TF's ``CropAndResizeGradImage``: the gradient of the crops w.r.t. the image.

    Args:
        grads: float32 (N, crop_height, crop_width, depth) (or NCHW when ``channels_first``).
        boxes, box_indices: as for :func:`crop_and_resize`.
        image_shape: ``(batch, height, width, depth)`` (a :class:`cropcore.spec.ImageShape`).
        method: ``"bilinear"`` or ``"nearest"``. dtype: float16, float32 or float64, the result's.

    Returns:
        ``dtype`` (batch, height, width, depth), or NCHW when ``channels_first`` (contiguous).
        Each contribution is computed in float32, cast to ``dtype`` and accumulated in ``dtype``.
        On CPU the additions are sequential, so every pixel receives its contributions in TF's
        single-threaded order (boxes, rows, columns; corners TL, TR, BL, BR) and the result is
        TF's bit for bit; on CUDA the order of the additions is the device's.
    """
    batch_size, image_height, image_width, depth = (int(d) for d in image_shape)
    grads = nhwc(grads, channels_first)
    num_boxes, crop_height, crop_width, _ = grads.shape
    grads_image = torch.zeros(
        (batch_size * image_height * image_width, depth), dtype=dtype, device=grads.device
    )
    # Box by box in order (in groups on CPU): each pixel still receives its contributions in order.
    for chunk in _box_chunks(num_boxes, 4 * crop_height * crop_width * depth, grads.device):
        _add_grad_image(
            grads_image, grads[chunk], boxes[chunk], box_indices[chunk], image_height, image_width,
            method,
        )  # fmt: skip
    grads_image = grads_image.view(batch_size, image_height, image_width, depth)
    return grads_image.permute(0, 3, 1, 2).contiguous() if channels_first else grads_image


def _add_grad_image(
    grads_image: Tensor,
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    image_height: int,
    image_width: int,
    method: str,
) -> None:
    """Add the image gradient of some boxes to ``grads_image`` (pixels, depth), in TF's order."""
    dtype = grads_image.dtype
    num_boxes, crop_height, crop_width, depth = grads.shape
    rows, cols = box_samples(boxes, image_height, image_width, (crop_height, crop_width))
    valid = (rows.valid[:, :, None] & cols.valid[:, None, :])[..., None]  # (N, ch, cw, 1)
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
) -> Tensor:
    """TF's ``CropAndResizeGradBoxes`` (bilinear): the gradient w.r.t. the boxes.

    Args:
        grads: float32 (N, crop_height, crop_width, depth) (or NCHW when ``channels_first``).
        image: the forward op's image, any of the nine dtypes, in the same data format.
        boxes, box_indices: as for :func:`crop_and_resize`.

    Returns:
        float32 (N, 4): d/d ``[y1, x1, y2, x2]``. Each box's terms are summed one after the other in
        TF's order (rows, columns, channels) in float32 on CPU, so the result is TF's bit for bit;
        on other devices they are summed by ``torch.sum``.
    """
    image_nhwc = _readable(nhwc(image, channels_first))
    grads = nhwc(grads, channels_first)
    num_boxes, crop_height, crop_width, depth = grads.shape
    grads_boxes = torch.empty((num_boxes, 4), dtype=torch.float32, device=grads.device)
    pixel_grain = _pixel_grain(image_nhwc) if grads.device.type == "cpu" else 0.0
    for chunk in _box_chunks(num_boxes, 6 * crop_height * crop_width * depth, grads.device):
        grads_boxes[chunk] = _grad_boxes(
            grads[chunk], image_nhwc, boxes[chunk], box_indices[chunk], pixel_grain
        )
    return grads_boxes


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
