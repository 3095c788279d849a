"""The oracle: TensorFlow's three CPU kernels as plain loops, to read next to the C++.

Requirements, in order of priority:

1. **Read line by line against** ``tensorflow/core/kernels/image/crop_and_resize_op.cc``: the
   ``CropAndResizePerBox`` lambda of ``functor::CropAndResize<CPUDevice, T>``, the
   ``CropAndResizeBackImgPerBox`` lambda of ``functor::CropAndResizeBackpropImage<CPUDevice, T>``
   and the loop of ``functor::CropAndResizeBackpropBoxes<CPUDevice, T>`` (read at tensorflow
   commit 0983cbc9; unchanged in these functors since at least c963b834, see
   notes/tf_semantics.md). Same loops, same names
   (``in_y``, ``top_y_index``, ``y_lerp``, ``top_left``, ...), same order of operations. One loop
   iteration per output element or accumulation; no vectorisation, no shortcuts. It is slow by
   design: it is the specification that :mod:`cropcore_numpy.kernels` is tested equal to, bit for
   bit, over the whole conformance suite (``tests/test_reference_oracle.py``).
2. **TF's float32 arithmetic, exactly.** Values are Python floats holding float32 values. Each
   C++ float operation is one call here: :func:`add`, :func:`sub`, :func:`mul`, :func:`div` do the
   operation in double and round to float32 (:func:`to_float`). That is exact: a product of two
   float32 values is exact in double, and rounding +, -, *, / twice (53 then 24 bits) gives the
   correctly rounded float32 because 53 >= 2 * 24 + 2. Where TF computes in double (the
   crop-size-1 centre, GradBoxes' ``float += double``), so does the oracle, with Python floats.
3. **TF's floating-point environment**: its CPU thread pools run kernels under
   ``port::ScopedFlushDenormal``: flush-to-zero and denormals-are-zero. A subnormal float32 read
   as an operand counts as a zero of its sign (:func:`daz`), and a result that x86 finds tiny
   becomes a zero of its sign. x86 decides tininess *after rounding* to 24 bits with an unbounded
   exponent: an exact result below ``2**-126 * (1 - 2**-25)`` is tiny (so ``2**-126 * (1 -
   2**-24)`` gives 0, not ``2**-126``). :func:`to_float` applies that rule to the double result,
   which is exact whenever it is that small (products always; sums and differences of float32
   values are exact when small; a quotient is settled exactly with fractions).
4. **cropcore's documented deviations** (``docs/semantics.md``, "Where cropcore differs"): a sample
   coordinate that is not finite is outside the image (TF's CPU kernel crashes), and neighbour
   indices are clamped to the last row or column (TF can read past the image when
   ``float(H - 1)`` rounds up, H - 1 > 2**24).

Arguments are those of :mod:`cropcore_numpy.kernels` (validated and canonical, NHWC). The module
is also a cropcore plugin: register it to run the conformance suite on the oracle::

    from cropcore.registry import registry
    from cropcore_numpy import reference
    registry.register(reference, name="numpy-reference")

It is not installed as an entry point, so it is never chosen by default.
"""

from __future__ import annotations

import dataclasses
import math
from fractions import Fraction

import numpy as np

import cropcore_numpy
from cropcore.hookspecs import BackendInfo, hookimpl
from cropcore_numpy import entry

__all__ = [
    "add",
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "daz",
    "div",
    "mul",
    "sub",
    "to_float",
]

FLT_MIN = 2.0**-126  # the smallest normal float32
TINY = 2.0**-126 * (1 - 2.0**-25)  # an exact result below this rounds (24 bits) below FLT_MIN


# --------------------------------------------------------------------------------------------------
# float32 arithmetic under flush-to-zero / denormals-are-zero


def to_float(value: float) -> float:
    """``static_cast<float>(value)`` of a double under flush-to-zero, as a Python float.

    Tiny after rounding to 24 bits (see the module docstring): a zero of the same sign.
    """
    if abs(value) < TINY:  # False for NaN
        return math.copysign(0.0, value)
    return float(np.float32(value))  # one rounding (TINY and up round to FLT_MIN and up); overflows
    # to +-inf as the hardware does


def daz(value: float) -> float:
    """A float32 read as an arithmetic operand: a subnormal counts as a zero of its sign."""
    return math.copysign(0.0, value) if abs(value) < FLT_MIN else value


def add(a: float, b: float) -> float:
    """float32 ``a + b`` (operands already flushed)."""
    return to_float(a + b)


def sub(a: float, b: float) -> float:
    """float32 ``a - b``."""
    return to_float(a - b)


def mul(a: float, b: float) -> float:
    """float32 ``a * b`` (exact in double, rounded once)."""
    return to_float(a * b)


def div(a: float, b: float) -> float:
    """float32 ``a / b`` for ``b >= 1``; tininess settled exactly when the double sits on TINY."""
    quotient = a / b
    if abs(quotient) == TINY:  # the double rounded onto the threshold: compare exactly
        tiny = abs(Fraction(a) / Fraction(b)) < Fraction(TINY)
        return math.copysign(0.0, quotient) if tiny else float(np.float32(quotient))
    return to_float(quotient)


def int_to_float(value: int) -> float:
    """An ``int`` converted to ``float`` (rounds once above 2**24)."""
    return float(np.float32(value))


def _quiet(kernel):
    """Run ``kernel`` without NumPy's floating-point warnings: IEEE results are the spec."""

    def run(*args, **kwargs):
        with np.errstate(all="ignore"):
            return kernel(*args, **kwargs)

    run.__name__, run.__doc__ = kernel.__name__, kernel.__doc__
    return run


def _to_int(value: float) -> int:
    """``(int)`` of a finite, in-range coordinate (floorf / ceilf already applied)."""
    return int(value)


def floorf(value: float) -> float:
    return float(math.floor(value))


def ceilf(value: float) -> float:
    return float(math.ceil(value))


def roundf(value: float) -> float:
    """C ``roundf``: half away from zero (exact in double for a float32 ``value``)."""
    return math.copysign(float(math.floor(abs(value) + 0.5)), value)


def _pixel(image: np.ndarray, b: int, y: int, x: int, d: int) -> float:
    """``static_cast<float>(image(b, y, x, d))``: integers round once, float16 is exact, a double
    is flushed when tiny; a float32 comes back as is (subnormals too)."""
    value = image[b, y, x, d]
    if image.dtype == np.float64:
        return to_float(float(value))
    return float(value.astype(np.float32))


def _coordinate(start: float, end: float, index: int, scale: float, size: int, crop: int) -> float:
    """TF's ``in_y`` (``start``, ``end`` = y1, y2; ``size`` = image_height; ``index`` = y):

    ``(crop_height > 1) ? y1 * (image_height - 1) + y * height_scale
                         : 0.5 * (y1 + y2) * (image_height - 1)``

    The second branch is double (``0.5`` is a double literal): rounded to float on assignment.
    """
    if crop > 1:
        return add(mul(start, int_to_float(size - 1)), mul(int_to_float(index), scale))
    return to_float(0.5 * add(start, end) * (size - 1))


def _outside(coordinate: float, size: int) -> bool:
    """TF's ``in_y < 0 || in_y > image_height - 1``, and NaN (where TF's CPU kernel crashes)."""
    return not (0 <= coordinate <= int_to_float(size - 1))


def _index(value: float, size: int) -> int:
    """An index from floorf / ceilf / roundf, clamped to the image (cropcore's deviation)."""
    return min(_to_int(value), size - 1)


def _box(boxes: np.ndarray, b: int) -> tuple[float, float, float, float]:
    """TF's ``y1 = boxes(b, 0)``, ``x1``, ``y2``, ``x2``: every use is an operand (:func:`daz`)."""
    y1, x1, y2, x2 = (daz(float(v)) for v in boxes[b])
    return y1, x1, y2, x2


def _scale(start: float, end: float, size: int, crop: int) -> float:
    """TF's ``height_scale`` (``start``, ``end`` = y1, y2; ``size`` = image_height; ``crop`` =
    crop_height) in CropAndResize and CropAndResizeGradImage:

    ``(crop_height > 1) ? (y2 - y1) * (image_height - 1) / (crop_height - 1) : 0``
    """
    if crop > 1:
        return div(mul(sub(end, start), int_to_float(size - 1)), int_to_float(crop - 1))
    return 0.0


def _ratio(size: int, crop: int) -> float:
    """CropAndResizeGradBoxes' ``height_ratio``: ``(crop_height > 1) ? static_cast<float>(
    image_height - 1) / (crop_height - 1) : 0`` (rounded first, unlike :func:`_scale`)."""
    return div(int_to_float(size - 1), int_to_float(crop - 1)) if crop > 1 else 0.0


def _neighbours(coordinate: float, size: int) -> tuple[int, int, float]:
    """TF's ``top_y_index = floorf(in_y)``, ``bottom_y_index = ceilf(in_y)`` and ``y_lerp = in_y -
    top_y_index`` (or the same for ``in_x``: left, right, ``x_lerp``)."""
    low = _index(floorf(coordinate), size)
    high = _index(ceilf(coordinate), size)
    return low, high, sub(coordinate, float(low))


def _corners(
    image: np.ndarray, b_in: int, top: int, bottom: int, left: int, right: int, d: int
) -> tuple[float, float, float, float]:
    """TF's ``top_left``, ``top_right``, ``bottom_left``, ``bottom_right``: the four neighbours of
    a sample in channel ``d``, converted to float (:func:`_pixel`) and read as operands."""
    return (
        daz(_pixel(image, b_in, top, left, d)),
        daz(_pixel(image, b_in, top, right, d)),
        daz(_pixel(image, b_in, bottom, left, d)),
        daz(_pixel(image, b_in, bottom, right, d)),
    )


def _edges(
    image_grad: float, index: int, ratio: float, size: int, crop: int
) -> tuple[float, float]:
    """TF's terms for the two edges of one axis: what ``grads_boxes(b, 0)`` (y1) and
    ``grads_boxes(b, 2)`` (y2) get for ``image_grad_y``, row ``y``, ``height_ratio`` (or x1, x2).

    ``crop_height > 1``: ``image_grad_y * (image_height - 1 - y * height_ratio)`` and
    ``image_grad_y * (y * height_ratio)``; otherwise ``image_grad_y * 0.5 * (image_height - 1)``
    for both, in double (``0.5`` is a double literal).
    """
    if crop > 1:
        position = mul(int_to_float(index), ratio)  # y * height_ratio
        rest = sub(int_to_float(size - 1), position)
        return mul(image_grad, rest), mul(image_grad, position)
    term = image_grad * 0.5 * (size - 1)  # double products
    return term, term


# --------------------------------------------------------------------------------------------------
# CropAndResize: functor::CropAndResize<CPUDevice, T>, the CropAndResizePerBox lambda


@_quiet
def crop_and_resize(
    image, boxes, box_indices, crop_size, method, extrapolation_value
) -> np.ndarray:
    """As :func:`cropcore_numpy.kernels.crop_and_resize` (its arguments, typed there): float32
    (N, crop_height, crop_width, depth)."""
    _, image_height, image_width, depth = image.shape
    crop_height, crop_width = crop_size
    num_boxes = len(boxes)
    crops = np.empty((num_boxes, crop_height, crop_width, depth), np.float32)
    extrapolation = np.float32(extrapolation_value)  # written verbatim
    for b in range(num_boxes):
        y1, x1, y2, x2 = _box(boxes, b)
        b_in = int(box_indices[b])

        height_scale = _scale(y1, y2, image_height, crop_height)
        width_scale = _scale(x1, x2, image_width, crop_width)

        for y in range(crop_height):
            in_y = _coordinate(y1, y2, y, height_scale, image_height, crop_height)
            if _outside(in_y, image_height):
                crops[b, y, :, :] = extrapolation
                continue
            if method == "bilinear":
                top_y_index, bottom_y_index, y_lerp = _neighbours(in_y, image_height)

                for x in range(crop_width):
                    in_x = _coordinate(x1, x2, x, width_scale, image_width, crop_width)
                    if _outside(in_x, image_width):
                        crops[b, y, x, :] = extrapolation
                        continue
                    left_x_index, right_x_index, x_lerp = _neighbours(in_x, image_width)

                    for d in range(depth):
                        top_left, top_right, bottom_left, bottom_right = _corners(
                            image, b_in, top_y_index, bottom_y_index, left_x_index, right_x_index, d
                        )
                        top = add(top_left, mul(sub(top_right, top_left), x_lerp))
                        bottom = add(bottom_left, mul(sub(bottom_right, bottom_left), x_lerp))
                        crops[b, y, x, d] = add(top, mul(sub(bottom, top), y_lerp))
            else:  # method == "nearest"
                for x in range(crop_width):
                    in_x = _coordinate(x1, x2, x, width_scale, image_width, crop_width)
                    if _outside(in_x, image_width):
                        crops[b, y, x, :] = extrapolation
                        continue
                    closest_x_index = _index(roundf(in_x), image_width)
                    closest_y_index = _index(roundf(in_y), image_height)
                    for d in range(depth):
                        if image.dtype == np.float32:  # no arithmetic: the bits are copied
                            crops[b, y, x, d] = image[b_in, closest_y_index, closest_x_index, d]
                        else:
                            crops[b, y, x, d] = _pixel(
                                image, b_in, closest_y_index, closest_x_index, d
                            )
    return crops


# --------------------------------------------------------------------------------------------------
# CropAndResizeGradImage: functor::CropAndResizeBackpropImage<CPUDevice, T>,
# the CropAndResizeBackImgPerBox lambda (run on one thread: TF's deterministic order)


@_quiet
def crop_and_resize_grad_image(grads, boxes, box_indices, image_shape, method, dtype) -> np.ndarray:
    """As :func:`cropcore_numpy.kernels.crop_and_resize_grad_image` (its arguments, typed there):
    ``dtype`` (batch, H, W, depth)."""
    batch_size, image_height, image_width, depth = (int(v) for v in image_shape)
    num_boxes, crop_height, crop_width, _ = grads.shape
    T = np.dtype(dtype).name  # TF's template parameter
    grads_image = np.zeros((batch_size, image_height, image_width, depth), T)  # setZero()

    def accumulate(y_index: int, x_index: int, d: int, value: float) -> None:
        """``grads_image(b_in, y_index, x_index, d) += static_cast<T>(value)``.

        TF's compiled ``acc += c`` computes ``c + acc`` (so a NaN ``c`` wins over a NaN sum); a
        float16 sum is done in float32 and rounded to half.
        """
        acc = grads_image[b_in, y_index, x_index, d]
        if T == "float32":
            total = add(daz(value), daz(float(acc)))
        elif T == "float64":
            total = daz(value) + float(acc)
        else:  # Eigen::half: float sum, rounded to half
            total = np.float16(add(float(np.float16(value)), float(acc)))
        grads_image[b_in, y_index, x_index, d] = total

    for b in range(num_boxes):
        y1, x1, y2, x2 = _box(boxes, b)
        b_in = int(box_indices[b])

        height_scale = _scale(y1, y2, image_height, crop_height)
        width_scale = _scale(x1, x2, image_width, crop_width)

        for y in range(crop_height):
            in_y = _coordinate(y1, y2, y, height_scale, image_height, crop_height)
            if _outside(in_y, image_height):
                continue
            top_y_index, bottom_y_index, y_lerp = _neighbours(in_y, image_height)

            for x in range(crop_width):
                in_x = _coordinate(x1, x2, x, width_scale, image_width, crop_width)
                if _outside(in_x, image_width):
                    continue

                if method == "bilinear":
                    left_x_index, right_x_index, x_lerp = _neighbours(in_x, image_width)

                    for d in range(depth):
                        grad = daz(float(grads[b, y, x, d]))
                        dtop = mul(sub(1.0, y_lerp), grad)
                        accumulate(top_y_index, left_x_index, d, mul(sub(1.0, x_lerp), dtop))
                        accumulate(top_y_index, right_x_index, d, mul(x_lerp, dtop))
                        dbottom = mul(y_lerp, grad)
                        accumulate(bottom_y_index, left_x_index, d, mul(sub(1.0, x_lerp), dbottom))
                        accumulate(bottom_y_index, right_x_index, d, mul(x_lerp, dbottom))
                else:  # method_name == "nearest"
                    for d in range(depth):
                        closest_x_index = _index(roundf(in_x), image_width)
                        closest_y_index = _index(roundf(in_y), image_height)
                        accumulate(closest_y_index, closest_x_index, d, float(grads[b, y, x, d]))
    return grads_image


# --------------------------------------------------------------------------------------------------
# CropAndResizeGradBoxes: functor::CropAndResizeBackpropBoxes<CPUDevice, T>


@_quiet
def crop_and_resize_grad_boxes(grads, image, boxes, box_indices) -> np.ndarray:
    """As :func:`cropcore_numpy.kernels.crop_and_resize_grad_boxes` (its arguments, typed there):
    float32 (N, 4)."""
    _, image_height, image_width, depth = image.shape
    num_boxes, crop_height, crop_width, _ = grads.shape
    grads_boxes = [[0.0, 0.0, 0.0, 0.0] for _ in range(num_boxes)]  # setZero()

    def accumulate(b: int, k: int, term: float) -> None:
        """``grads_boxes(b, k) += term``: a float sum, or ``float(double(acc) + term)``."""
        grads_boxes[b][k] = to_float(grads_boxes[b][k] + term)

    for b in range(num_boxes):
        y1, x1, y2, x2 = _box(boxes, b)
        b_in = int(box_indices[b])

        # The ratio is rounded first here (unlike the other two kernels' scales).
        height_ratio = _ratio(image_height, crop_height)
        width_ratio = _ratio(image_width, crop_width)
        height_scale = mul(sub(y2, y1), height_ratio) if crop_height > 1 else 0.0
        width_scale = mul(sub(x2, x1), width_ratio) if crop_width > 1 else 0.0

        for y in range(crop_height):
            in_y = _coordinate(y1, y2, y, height_scale, image_height, crop_height)
            if _outside(in_y, image_height):
                continue
            top_y_index, bottom_y_index, y_lerp = _neighbours(in_y, image_height)

            for x in range(crop_width):
                in_x = _coordinate(x1, x2, x, width_scale, image_width, crop_width)
                if _outside(in_x, image_width):
                    continue
                left_x_index, right_x_index, x_lerp = _neighbours(in_x, image_width)

                for d in range(depth):
                    top_left, top_right, bottom_left, bottom_right = _corners(
                        image, b_in, top_y_index, bottom_y_index, left_x_index, right_x_index, d
                    )
                    # Compute the image gradient.
                    image_grad_y = add(
                        mul(sub(1.0, x_lerp), sub(bottom_left, top_left)),
                        mul(x_lerp, sub(bottom_right, top_right)),
                    )
                    image_grad_x = add(
                        mul(sub(1.0, y_lerp), sub(top_right, top_left)),
                        mul(y_lerp, sub(bottom_right, bottom_left)),
                    )
                    # Modulate the image gradient with the incoming gradient.
                    top_grad = daz(float(grads[b, y, x, d]))
                    image_grad_y = mul(image_grad_y, top_grad)
                    image_grad_x = mul(image_grad_x, top_grad)
                    # dy1, dy2
                    dy1, dy2 = _edges(image_grad_y, y, height_ratio, image_height, crop_height)
                    accumulate(b, 0, dy1)
                    accumulate(b, 2, dy2)
                    # dx1, dx2
                    dx1, dx2 = _edges(image_grad_x, x, width_ratio, image_width, crop_width)
                    accumulate(b, 1, dx1)
                    accumulate(b, 3, dx2)
    return np.array(grads_boxes, np.float32).reshape(num_boxes, 4)


# --------------------------------------------------------------------------------------------------
# Plugin hooks (through the same entry points as cropcore_numpy's)


@hookimpl
def cropcore_backend_info() -> BackendInfo:
    return dataclasses.replace(
        cropcore_numpy.cropcore_backend_info(),  # the same library, devices and requirements
        name="numpy-reference",
        description="the oracle: TensorFlow's CPU loop nests in Python (slow, for testing)",
    )


cropcore_crop_and_resize = entry.hook(entry.crop_and_resize, __name__)
cropcore_crop_and_resize_grad_image = entry.hook(entry.crop_and_resize_grad_image, __name__)
cropcore_crop_and_resize_grad_boxes = entry.hook(entry.crop_and_resize_grad_boxes, __name__)
