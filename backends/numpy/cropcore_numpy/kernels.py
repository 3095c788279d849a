"""The fast kernels: TensorFlow's CPU ``CropAndResize`` and its two gradients, vectorised NumPy.

They are tested equal, bit for bit, to the oracle :mod:`cropcore_numpy.reference` (TF's loop
nests in Python) over the whole conformance suite. This module holds the forward op; the
gradients are in :mod:`cropcore_numpy.gradients`, the sample coordinates in
:mod:`cropcore_numpy.samples`, flush-to-zero in :mod:`cropcore_numpy.ftz`; all three ops are
importable from here.

Requirements, in order of priority:

1. **Bit-identical to TensorFlow 2.21's CPU kernels** (``tensorflow/core/kernels/image/
   crop_and_resize_op.cc``) for every input dtype. Every float32 operation of the C++ is one
   float32 NumPy operation here, in the same order (NumPy never contracts ``a * b + c`` into an
   FMA, and neither does the TF CPU wheel). Where TF computes in double, so do we.
2. **TF's floating-point environment.** TF runs its kernels with the CPU's flush-to-zero and
   denormals-are-zero modes on (``port::ScopedFlushDenormal`` in its thread pools): a subnormal
   float32 operand counts as zero and a result that x86 finds tiny becomes zero. NumPy underflows
   gradually, so where a subnormal can occur the kernels flush after every operation
   (:mod:`cropcore_numpy.ftz`). Cheap bounds prove that for ordinary inputs none can occur, and
   skip that work.
3. **Safe where TF is not.** TF's CPU range test ``in < 0 || in > size - 1`` lets a NaN coordinate
   through and casts it to ``int`` (a crash). Here a sample coordinate that is not finite is out of
   range; indices are computed only for in-range coordinates and clamped, so nothing is read
   outside the image and no invalid float-to-int cast happens.
4. **Vectorised and readable side by side with the C++.** Per box, the sample coordinates of the
   crop rows ``(num_boxes, crop_height)`` and columns ``(num_boxes, crop_width)`` are computed once
   (:mod:`cropcore_numpy.samples`), then pixels are gathered with fancy indexing. There is no
   Python loop over boxes or output elements. Python loops run over a reduction only where a sequential float sum
   must round in a way no NumPy reduction does: TF's ``float += double`` in
   CropAndResizeGradBoxes for a crop dimension of 1, and float32 sums whose partial sums can be
   subnormal (flushed at every step).

Inputs are already validated and canonical (see :mod:`cropcore.spec`): NHWC images (possibly
strided views), float32 finite boxes, int32 box indices in ``[0, batch)``, positive crop sizes.
"""

from __future__ import annotations

import numpy as np

from cropcore_numpy.ftz import (
    _F32,
    _FLT_MIN,
    _ftz,
    _keep,
    _multiply_ftz,
    _pixel_grain,
    _smallest,
)
from cropcore_numpy.gradients import crop_and_resize_grad_boxes, crop_and_resize_grad_image
from cropcore_numpy.samples import (
    _box_samples,
    _coordinates,  # noqa: F401 (tests compare their coordinates with these)
    _gather,
    _Samples,
    _valid_samples,
)

__all__ = ["crop_and_resize", "crop_and_resize_grad_boxes", "crop_and_resize_grad_image"]


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

    Horizontally then vertically, each a :func:`_lerp`. With ``flush``, every operation is flushed
    as under TF's flush-to-zero (the corners too: denormals-are-zero). Computed in place to keep at
    most three crop-sized arrays alive.
    """
    # top = top_left + (top_right - top_left) * x_lerp
    top = _horizontal(image, batch, rows.low, cols, flush)
    # bottom = bottom_left + (bottom_right - bottom_left) * x_lerp
    bottom = _horizontal(image, batch, rows.high, cols, flush)
    # crops = top + (bottom - top) * y_lerp
    return _lerp(top, bottom, rows.lerp[:, :, None, None], flush)


def _horizontal(
    image: np.ndarray, batch: np.ndarray, y: np.ndarray, cols: _Samples, flush: bool
) -> np.ndarray:
    """Each sample's lerp between its left and right neighbours in image rows ``y`` (N, crop)."""
    y = y[:, :, None]
    left = _gather(image, batch, y, cols.low[:, None, :], flush)
    right = _gather(image, batch, y, cols.high[:, None, :], flush)
    return _lerp(left, right, cols.lerp[:, None, :, None], flush)


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray, flush: bool) -> np.ndarray:
    """TF's lerp ``a + (b - a) * t`` in float32, computed in place in ``b`` (returned).

    In this form an inf or NaN ``a`` or ``b`` poisons the result even with weight 0
    (``inf + (inf - inf) * 0``), as in TF. With ``flush``, each operation is flushed to zero.
    """
    ftz = _ftz if flush else _keep
    multiply = _multiply_ftz if flush else np.multiply
    ftz(np.subtract(b, a, out=b))
    multiply(b, t, out=b)
    ftz(np.add(b, a, out=b))
    return b
