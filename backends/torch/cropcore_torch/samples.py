"""The torch kernels' shared pieces: TF's flush-to-zero float32 operations, the sample tables of
every box, layouts and outputs, chunking and gathering (see :mod:`cropcore_torch.kernels` for the
requirements they serve).
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
    "empty_output",
    "guarded_indices",
    "nhwc",
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


def guarded_indices(box_indices: Tensor, batch: int) -> tuple[Tensor, Tensor | None]:
    """Box indices that are safe to read the image with, and which boxes had a bad one.

    cropcore may hand over box indices it did not read (traced or device-resident calls:
    docs/decisions.md, "What do unchecked bad values give?"). On the host the indices are read here,
    as TensorFlow's kernel reads them, and one outside ``[0, batch)`` raises ``IndexError``; the
    mask is then ``None``. On a device, reading them would wait for it: a bad index is clamped to a
    valid one instead, and the returned bool (N,) mask says which boxes the caller must turn into
    NaN (crops, box-gradient rows) or leave out (image-gradient contributions).
    """
    bad = (box_indices < 0) | (box_indices >= batch)
    if _indices_on_host(box_indices):
        if box_indices.numel() and bool(bad.any()):
            i = int(bad.nonzero()[0, 0])
            raise IndexError(
                f"box_indices must be in [0, batch) = [0, {batch}); got box_indices[{i}] = "
                f"{int(box_indices[i])}"
            )
        return box_indices, None
    return box_indices.clamp(0, max(batch - 1, 0)), bad


def _indices_on_host(box_indices: Tensor) -> bool:
    """Whether reading ``box_indices`` costs no device synchronisation (the tests patch this to
    run the device rule on CPU)."""
    return box_indices.device.type == "cpu"


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
