"""The reference kernels: TensorFlow's CPU ``CropAndResize`` and its two gradients, in NumPy.

Requirements, in order of priority:

1. **Bit-identical to TensorFlow 2.21's CPU kernels** (``tensorflow/core/kernels/image/
   crop_and_resize_op.cc``) for every input dtype. Every float32 operation of the C++ is one
   float32 NumPy operation here, in the same order (NumPy never contracts ``a * b + c`` into an
   FMA, and neither does the TF CPU wheel). Where TF computes in double, so do we.
2. **TF's floating-point environment.** TF runs its kernels with the CPU's flush-to-zero and
   denormals-are-zero modes on (``port::ScopedFlushDenormal`` in its thread pools): a subnormal
   float32 operand counts as zero and a subnormal result becomes zero. NumPy underflows gradually,
   so where a subnormal can occur the kernels flush after every operation (:func:`_ftz`). Cheap
   bounds (:func:`_smallest`, :func:`_grain`) prove that for ordinary inputs none can occur, and
   skip that work.
3. **Safe where TF is not.** TF's CPU range test ``in < 0 || in > size - 1`` lets a NaN coordinate
   through and casts it to ``int`` (a crash). Here a sample coordinate that is not finite is out of
   range; indices are computed only for in-range coordinates and clamped, so nothing is read
   outside the image and no invalid float-to-int cast happens.
4. **Vectorised and readable side by side with the C++.** Per box, the sample coordinates of the
   crop rows ``(num_boxes, crop_height)`` and columns ``(num_boxes, crop_width)`` are computed once
   (:func:`_samples`), then pixels are gathered with fancy indexing. There is no Python loop over
   boxes or output elements. Python loops run over a reduction only where a sequential float sum
   must round in a way no NumPy reduction does: TF's ``float += double`` in
   CropAndResizeGradBoxes for a crop dimension of 1, and float32 sums whose partial sums can be
   subnormal (flushed at every step).

Inputs are already validated and canonical (see :mod:`cropcore.spec`): NHWC images (possibly
strided views), float32 finite boxes, int32 box indices in ``[0, batch)``, positive crop sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["crop_and_resize", "crop_and_resize_grad_boxes", "crop_and_resize_grad_image"]

_F32 = np.float32
_ONE = np.float32(1)
_ZERO = np.float32(0)
#: np.add.at gets at most this many elements at once (its int64 index array is 8 bytes each).
_SCATTER_BLOCK = 1 << 24


# --------------------------------------------------------------------------------------------------
# Flush-to-zero
#
# NumPy underflows gradually; emulating TF's flush-to-zero costs a pass per operation, so each
# kernel first bounds how small a nonzero intermediate value can get, and flushes only when that
# bound is below 2**-126:
# - a product of float32 values is at least the product of their smallest nonzero magnitudes
#   (:func:`_smallest`), halved for each rounding;
# - a sum or difference is a multiple of its operands' grain (:func:`_grain`), so a nonzero one
#   is at least that grain.

# Tininess. x86 (TF's CPU wheel) decides that a result underflows *after rounding* it to 24 bits
# with an unbounded exponent, and only then flushes. NumPy rounds to the subnormal grid, which
# turns an exact result in [FLT_MIN * (1 - 2**-24), FLT_MIN * (1 - 2**-25)) into FLT_MIN, a normal
# number that a test of the rounded result keeps, where TF gives 0 (e.g. 2**-126 * (1 - 2**-24)).
# Sums and differences are exact whenever they are that small (their operands are multiples of
# 2**-149), so testing their result is right; products, quotients and double-to-float
# conversions are not, and go through :func:`_multiply_ftz`, :func:`_divide_ftz`, :func:`_narrow`.

_FLT_MIN = 2.0**-126  # below this a float32 is subnormal
_TINY = 2.0**-126 * (1 - 2.0**-25)  # a double below this rounds to 24 bits below FLT_MIN: tiny
_SCALE = np.float32(2.0**24)  # moves a product near FLT_MIN clear of the subnormal range
_SUMMABLE = 2.0**-102  # float32 terms at least this large are multiples of 2**-125, and so are
# all their partial sums: none is subnormal.


def _ftz(x: np.ndarray) -> np.ndarray:
    """Flush the subnormal elements of float32 ``x`` to zero of the same sign, in place.

    Right for a value read from memory (denormals-are-zero) and for the result of a sum or
    difference; see above for products. ``x * 0`` keeps the sign, ``x * 1`` every other value.
    """
    np.multiply(x, np.abs(x) >= _FLT_MIN, out=x)
    return x


def _untiny(result: np.ndarray, scaled: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Flush, in place, the elements of flushed float32 ``result`` that x86 finds tiny.

    Only a result of exactly +-FLT_MIN can be wrong (see above). ``scaled(mask)`` recomputes those
    elements' operation with one operand multiplied by 2**24: an exact value near 2**-102, normal,
    so that it rounds as x86 does, and the result was tiny iff ``|scaled| < 2**-102``.
    """
    edge = np.abs(result) == _F32(_FLT_MIN)
    if edge.any():
        tiny = np.abs(scaled(edge)) < _F32(_FLT_MIN) * _SCALE
        result[edge] = np.where(tiny, result[edge] * _ZERO, result[edge])
    return result


def _multiply_ftz(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 ``a * b`` as TF's CPU computes it: flush-to-zero, tininess after rounding.

    ``a``, ``b``: broadcastable float32, normal or zero (already flushed), or one of them at most
    1 in magnitude. A result of +-FLT_MIN then has both factors at most 1 + 2**-24 in magnitude,
    so scaling one by 2**24 cannot overflow. ``out`` may be ``a`` or ``b``.
    """
    product = _ftz(np.multiply(a, b))  # a fresh array: the operands are read again below

    def scaled(edge: np.ndarray) -> np.ndarray:
        shape = product.shape
        return (np.broadcast_to(a, shape)[edge] * _SCALE) * np.broadcast_to(b, shape)[edge]

    _untiny(product, scaled)
    if out is None:
        return product
    out[...] = product
    return out


def _divide_ftz(a: np.ndarray, divisor: np.float32) -> np.ndarray:
    """float32 ``a / divisor`` for flushed ``a`` and ``divisor >= 1``, as :func:`_multiply_ftz`."""
    quotient = _ftz(a / divisor)
    return _untiny(quotient, lambda edge: (a[edge] * _SCALE) / divisor)


def _narrow(x: np.ndarray) -> np.ndarray:
    """``static_cast<float>`` of float64 ``x`` under flush-to-zero: float32, tiny values to +-0."""
    result = x.astype(_F32)
    np.multiply(result, np.abs(x) >= _TINY, out=result)
    return result


def _multiply_if(bound: float) -> Callable[..., np.ndarray]:
    """:func:`_multiply_ftz` if a nonzero product can be as small as ``bound`` and that is
    subnormal, else ``np.multiply``."""
    return _multiply_ftz if bound < _FLT_MIN else np.multiply


def _keep(x: np.ndarray) -> np.ndarray:
    return x


def _flush_if(bound: float) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`_ftz` if a nonzero result can be as small as ``bound`` and that is subnormal."""
    return _ftz if bound < _FLT_MIN else _keep


def _smallest(x: np.ndarray) -> float:
    """The smallest nonzero finite magnitude of a float array ``x`` (inf if none, or if it is
    beyond float32's range)."""
    if x.size == 0:
        return math.inf
    # On the bit patterns: |x| is the pattern without its sign bit, finite nonzero magnitudes
    # order like unsigned integers below inf's, and `- 1` sends zeros to the top.
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize]
    top = np.iinfo(unsigned).max
    magnitude = np.bitwise_and(x.view(unsigned), top >> 1)
    magnitude -= 1
    bits = magnitude.min()
    if bits == top:
        return math.inf  # all zero
    value = float((np.array(bits, unsigned) + unsigned(1)).view(x.dtype))
    # Exact (a float64 below FLT_MIN stays below it); one beyond float32's range casts to inf.
    return value if value <= np.finfo(_F32).max else math.inf


def _grain(x: np.ndarray) -> float:
    """A power of two that divides every finite element of ``x`` (as float32); inf if all are 0.

    Every float32 value is a multiple of its own ulp, so the ulp of the smallest nonzero one
    divides them all. Sums and differences of multiples of ``q`` are multiples of ``q``, products
    of multiples of ``p`` and ``q`` are multiples of ``p * q``, and rounding keeps this.
    """
    smallest = _smallest(x)
    if smallest == math.inf:
        return math.inf
    with np.errstate(under="ignore"):  # a float64 below float32's range casts to 0
        return float(np.spacing(_F32(max(_F32(smallest), 2.0**-149))))


def _pixel_grain(image: np.ndarray) -> float:
    """:func:`_grain` of ``image`` cast to float32, without a scan where the dtype bounds it."""
    if image.dtype.kind in "iu":
        return 1.0  # integers
    if image.dtype == np.float16:
        return 2.0**-24  # every float16 is a multiple of its smallest subnormal
    return _grain(image)


# --------------------------------------------------------------------------------------------------
# Sample coordinates


class _Samples(NamedTuple):
    """Where the samples of one crop axis fall in the image, per box; every array is (N, crop)."""

    coord: np.ndarray  # float32: TF's in_y / in_x
    valid: np.ndarray  # bool: 0 <= coord <= size - 1 (False for NaN)
    low: np.ndarray  # intp: floorf(coord) (0 where invalid)
    high: np.ndarray  # intp: ceilf(coord) (0 where invalid)
    lerp: np.ndarray  # float32: coord - floorf(coord) (0 where invalid)
    nearest: np.ndarray  # intp: roundf(coord) (0 where invalid)

    @property
    def lerp_grain(self) -> float:
        """A grain (:func:`_grain`) of both ``lerp`` and ``1 - lerp``."""
        return min(_grain(self.lerp), 1.0)

    @property
    def lerp_smallest(self) -> float:
        """The smallest nonzero magnitude of ``lerp`` and ``1 - lerp`` (:func:`_smallest`)."""
        return min(_smallest(self.lerp), _smallest(_ONE - self.lerp))


def _coordinates(
    start: np.ndarray, end: np.ndarray, size: int, crop: int, *, ratio_first: bool = False
) -> np.ndarray:
    """TF's sample coordinates ``in_y`` (or ``in_x``) in pixels: float32 (N, crop).

    ``start``, ``end``: float32 (N,) normalised box edges (y1, y2 or x1, x2), already flushed;
    ``size``: the image height (or width); ``crop``: the crop height (or width). ``ratio_first``
    selects CropAndResizeGradBoxes' rounding of the scale (see below). Each float32 result is
    flushed to zero when subnormal, as under TF (these tables are small).
    """
    size_minus_one = _F32(size - 1)  # C++ `image_height - 1` is an int, converted to float
    if crop == 1:
        # `0.5 * (y1 + y2) * (image_height - 1)`: y1 + y2 is a float sum, but the literal 0.5 is a
        # double, so the two products are done in double and rounded to float once, on assignment.
        total = _ftz(start + end)
        centre = 0.5 * total.astype(np.float64) * np.float64(size - 1)
        return _narrow(centre)[:, None]
    span = _ftz(end - start)  # can overflow float32 (y1=-3e38, y2=3e38) -> inf -> NaN below
    if ratio_first:
        # CropAndResizeGradBoxes: height_ratio = float(H - 1) / (ch - 1) is rounded first, then
        # height_scale = (y2 - y1) * height_ratio -- a different float32 rounding.
        scale = _multiply_ftz(span, size_minus_one / _F32(crop - 1))
    else:
        # CropAndResize, CropAndResizeGradImage: (y2 - y1) * (image_height - 1) / (crop_height - 1),
        # left to right.
        scale = _divide_ftz(_multiply_ftz(span, size_minus_one), _F32(crop - 1))
    steps = np.arange(crop).astype(_F32)  # `y * height_scale`: the int y is converted to float
    # in_y = y1 * (image_height - 1) + y * height_scale, each product rounded to float32.
    return _ftz(
        _multiply_ftz(start, size_minus_one)[:, None] + _multiply_ftz(steps, scale[:, None])
    )


def _samples(
    start: np.ndarray, end: np.ndarray, size: int, crop: int, *, ratio_first: bool = False
) -> _Samples:
    """The coordinates of :func:`_coordinates` with their range test, neighbours and weights."""
    coord = _coordinates(start, end, size, crop, ratio_first=ratio_first)
    # TF extrapolates when `in_y < 0 || in_y > image_height - 1` (the int converted to float), so
    # [0, H-1] is inclusive and -0.0 is inside. Written as a NaN-safe negation: TF's CPU kernel
    # would let a NaN through and crash; we treat it as out of range, as TF's GPU kernel does.
    valid = (coord >= 0) & (coord <= _F32(size - 1))
    inside = np.where(valid, coord, _ZERO)
    # Indices are clamped: when H - 1 > 2**24, float(H - 1) can round above H - 1 and TF would
    # read one row past the image; we read the last row instead.
    last = size - 1
    low = np.minimum(np.floor(inside).astype(np.intp), last)  # int top_y_index = floorf(in_y)
    high = np.minimum(np.ceil(inside).astype(np.intp), last)  # int bottom_y_index = ceilf(in_y)
    # y_lerp = in_y - top_y_index, with the int index converted back to float: exact, never
    # subnormal, and -0.0 for in_y == -0.0 (-0.0 - +0.0), which decides the sign of zero results.
    lerp = inside - low.astype(_F32)
    # roundf rounds half away from zero. Coordinates here are >= 0, so that is floor + (frac >=
    # 0.5), exact in float32. Not np.round (half to even) and not floorf(v + 0.5f), which rounds
    # 0.49999997 up because the float32 sum 0.99999997 rounds to 1.
    nearest = np.minimum(low + (lerp >= 0.5), last)
    return _Samples(coord, valid, low, high, lerp, nearest)


def _box_samples(
    boxes: np.ndarray, image_height: int, image_width: int, crop_size: tuple[int, int], **kwargs
) -> tuple[_Samples, _Samples]:
    """The row (y) and column (x) samples of every box."""
    crop_height, crop_width = crop_size
    # Denormals-are-zero: a subnormal box coordinate counts as 0 (so -1e-40 is inside the image).
    boxes = _ftz(boxes.astype(_F32, copy=True))
    rows = _samples(boxes[:, 0], boxes[:, 2], image_height, crop_height, **kwargs)
    cols = _samples(boxes[:, 1], boxes[:, 3], image_width, crop_width, **kwargs)
    return rows, cols


def _gather(
    image: np.ndarray, batch: np.ndarray, y: np.ndarray, x: np.ndarray, flush: bool = False
) -> np.ndarray:
    """``float(image[b, y, x, :])`` for every sample: float32 (N, crop_height, crop_width, depth).

    ``batch`` (N, 1, 1), ``y`` (N, crop_height, 1), ``x`` (N, 1, crop_width): intp indices.
    TF casts each pixel to float32 (`static_cast<float>`) before any arithmetic; with ``flush``,
    as under TF's flush-to-zero (a float32 that is subnormal, a float64 that is tiny, gives 0).
    """
    if flush:
        if image.dtype == np.float64:
            return _narrow(image[batch, y, x])
        return _ftz(image[batch, y, x].astype(_F32))
    return image[batch, y, x].astype(_F32, copy=False)


def _valid_samples(rows: _Samples, cols: _Samples) -> np.ndarray:
    """bool (N, crop_height, crop_width): the samples inside the image (row test, then column test)."""
    return rows.valid[:, :, None] & cols.valid[:, None, :]


# --------------------------------------------------------------------------------------------------
# CropAndResize


def crop_and_resize(
    image: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    crop_size: tuple[int, int],
    method: str,
    extrapolation_value: float,
) -> np.ndarray:
    """TF's ``CropAndResize`` (CPU functor).

    Args:
        image: (batch, height, width, depth), any of the nine image dtypes; may be a strided view.
        boxes: float32 (N, 4), finite ``[y1, x1, y2, x2]``.
        box_indices: int32 (N,), in ``[0, batch)``.
        crop_size: ``(crop_height, crop_width)``, positive ints.
        method: ``"bilinear"`` or ``"nearest"``.
        extrapolation_value: float32-exact; written verbatim (NaN, inf and subnormals included).

    Returns:
        float32 (N, crop_height, crop_width, depth).
    """
    _, image_height, image_width, _ = image.shape
    with np.errstate(all="ignore"):  # IEEE semantics are the spec: inf - inf is NaN, as in TF
        rows, cols = _box_samples(boxes, image_height, image_width, crop_size)
        batch = box_indices.astype(np.intp)[:, None, None]
        if method == "nearest":
            # A float32 pixel is copied as is (subnormals too); a float64 one is converted, and the
            # conversion flushes a result that is tiny in float32.
            flush = image.dtype == np.float64 and _smallest(image) < _FLT_MIN
            crops = _gather(image, batch, rows.nearest[:, :, None], cols.nearest[:, None, :], flush)
        else:
            # Sums of pixels and their products with lerps: bounded by grains.
            bound = _pixel_grain(image) * rows.lerp_grain * cols.lerp_grain
            crops = _bilinear(image, batch, rows, cols, bound < _FLT_MIN)
        # A sample outside the image is replaced entirely (no blending with in-range neighbours);
        # TF tests the row first, then each column, which selects the same samples.
        crops[~_valid_samples(rows, cols)] = _F32(extrapolation_value)
    return crops


def _bilinear(
    image: np.ndarray, batch: np.ndarray, rows: _Samples, cols: _Samples, flush: bool
) -> np.ndarray:
    """TF's bilinear interpolation of every sample (out-of-range ones included, from pixel 0).

    Lerp form ``a + (b - a) * t``, horizontally then vertically, all in float32: with this form an
    inf or NaN corner poisons the result even with weight 0 (``inf + (inf - inf) * 0``), as in TF.
    With ``flush``, every operation is flushed as under TF's flush-to-zero (the corners too:
    denormals-are-zero). Computed in place to keep at most three crop-sized arrays alive.
    """
    ftz = _ftz if flush else _keep
    multiply = _multiply_ftz if flush else np.multiply
    top, bottom = rows.low[:, :, None], rows.high[:, :, None]
    left, right = cols.low[:, None, :], cols.high[:, None, :]
    x_lerp = cols.lerp[:, None, :, None]
    y_lerp = rows.lerp[:, :, None, None]

    top_left = _gather(image, batch, top, left, flush)
    top_row = _gather(image, batch, top, right, flush)
    # top = top_left + (top_right - top_left) * x_lerp
    ftz(np.subtract(top_row, top_left, out=top_row))
    multiply(top_row, x_lerp, out=top_row)
    ftz(np.add(top_row, top_left, out=top_row))
    del top_left

    bottom_left = _gather(image, batch, bottom, left, flush)
    bottom_row = _gather(image, batch, bottom, right, flush)
    # bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    ftz(np.subtract(bottom_row, bottom_left, out=bottom_row))
    multiply(bottom_row, x_lerp, out=bottom_row)
    ftz(np.add(bottom_row, bottom_left, out=bottom_row))
    del bottom_left

    # crops = top + (bottom - top) * y_lerp
    ftz(np.subtract(bottom_row, top_row, out=bottom_row))
    multiply(bottom_row, y_lerp, out=bottom_row)
    ftz(np.add(bottom_row, top_row, out=bottom_row))
    return bottom_row


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
        float32 (N, 4): d/d ``[y1, x1, y2, x2]``, summed over each box's samples in TF's order
        (rows, columns, channels). Samples outside the image contribute nothing; at an exact
        pixel coordinate both neighbours coincide, so the derivative along that axis is 0.
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
