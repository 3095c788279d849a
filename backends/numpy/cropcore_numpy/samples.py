"""Where TensorFlow's samples fall: per box, the coordinates of the crop rows and columns.

Requirements: the sample coordinates (``in_y``, ``in_x``) of all three kernels, in TF's float32
rounding (each kernel's own), with the range test, neighbours, lerp weights and nearest indices
computed once per box and axis, as tables of shape (num_boxes, crop). Shared by
:mod:`cropcore_numpy.kernels` and :mod:`cropcore_numpy.gradients`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from cropcore_numpy.ftz import (
    _F32,
    _ONE,
    _ZERO,
    _divide_ftz,
    _ftz,
    _grain,
    _multiply_ftz,
    _narrow,
    _smallest,
)


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
