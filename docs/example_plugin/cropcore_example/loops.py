"""TensorFlow's CropAndResize and its gradients as plain loops: per box, per crop row.

Written to be read next to ``tensorflow/core/kernels/image/crop_and_resize_op.cc``; only the
columns and channels of one crop row are NumPy vectors. Three things make it exactly right, as the
conformance suite checks:

- **float32 arithmetic in TensorFlow's order.** Each C++ float operation is one float32 NumPy
  operation here (NumPy never fuses ``a * b + c``). Where TF computes in double (the crop-size-1
  centre, the GradBoxes ``float += double``), Python floats (doubles) are used.
- **TF's floating-point environment**: flush-to-zero and denormals-are-zero. :func:`flush` turns
  a subnormal float32 into a zero of the same sign, after every sum and difference. Products,
  quotients and double-to-float conversions go through :func:`mul`, :func:`div` and
  :func:`narrow`, because x86 decides that a result is tiny after rounding it to 24 bits:
  ``2**-126 * (1 - 2**-24)`` is 0 under TF, where rounding to float32 first gives ``2**-126``.
- **Safe coordinates**: a sample coordinate that is not finite is outside the image (TF's CPU
  kernel would crash), and nearest rounds half away from zero (``floor(x + 0.5)`` in double).

Arrays are NHWC; the hooks in ``__init__`` turn NCHW into NHWC views.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32
TINY = F32(2.0**-126)  # the smallest normal float32


def flush(x):
    """``x`` as float32 with subnormals flushed to a zero of the same sign (TF's FTZ/DAZ)."""
    x = np.asarray(x, dtype=F32)
    return np.where(np.abs(x) < TINY, x * F32(0), x)


def narrow(x):
    """Double ``x`` rounded to float32 under flush-to-zero: below this bound, x86 rounds to 24 bits
    under 2**-126 and flushes, so the result is a zero of the same sign."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(np.abs(x) < 2.0**-126 * (1 - 2.0**-25), x * 0, x).astype(F32)


def mul(a, b):
    """float32 ``a * b``: exact in double, then :func:`narrow`."""
    return narrow(np.multiply(a, b, dtype=np.float64))


def div(a, b):
    """float32 ``a / b``: rounding in double first changes no float32 result, then :func:`narrow`."""
    return narrow(np.divide(a, b, dtype=np.float64))


def pixels(values):
    """``static_cast<float>`` of gathered pixels, read as operands (denormals-are-zero)."""
    return narrow(values) if values.dtype == np.float64 else flush(values.astype(F32))


def coordinates(start, end, size: int, crop: int, ratio_first: bool = False) -> np.ndarray:
    """The ``crop`` sample coordinates between normalised edges ``start`` and ``end`` (float32)."""
    start, end = flush(start), flush(end)
    if crop == 1:  # the box centre: `0.5 * (y1 + y2) * (image_height - 1)`, in double
        return narrow([0.5 * float(flush(start + end)) * (size - 1)])
    span = flush(end - start)
    if ratio_first:  # CropAndResizeGradBoxes rounds (H - 1) / (ch - 1) first
        scale = mul(span, F32(size - 1) / F32(crop - 1))
    else:
        scale = div(mul(span, F32(size - 1)), F32(crop - 1))
    steps = np.arange(crop, dtype=F32)
    return flush(mul(start, F32(size - 1)) + mul(steps, scale))


def inside(coordinate, size: int):
    """Whether a coordinate is in ``[0, size - 1]`` (NaN is not)."""
    return (coordinate >= 0) & (coordinate <= F32(size - 1))


def neighbours(coordinate, size: int):
    """floor, ceil (clamped to the image) and the lerp weight of in-range coordinates."""
    low = np.minimum(np.floor(coordinate).astype(np.intp), size - 1)
    high = np.minimum(np.ceil(coordinate).astype(np.intp), size - 1)
    return low, high, coordinate - low.astype(F32)


def nearest_index(coordinate, size: int):
    """roundf: half away from zero (coordinates here are >= 0), exact in double."""
    return np.minimum(np.floor(coordinate.astype(np.float64) + 0.5).astype(np.intp), size - 1)


def crop_and_resize(image, boxes, box_indices, crop_size, method, extrapolation_value):
    with np.errstate(all="ignore"):  # IEEE semantics are the specification: inf - inf is NaN
        return _crop_and_resize(image, boxes, box_indices, crop_size, method, extrapolation_value)


def _crop_and_resize(image, boxes, box_indices, crop_size, method, extrapolation_value):
    _, height, width, depth = image.shape
    crop_height, crop_width = crop_size
    crops = np.empty((len(boxes), crop_height, crop_width, depth), F32)
    fill = F32(extrapolation_value)
    for b in range(len(boxes)):
        picture = image[box_indices[b]]
        y1, x1, y2, x2 = boxes[b]
        ys = coordinates(y1, y2, height, crop_height)
        xs = coordinates(x1, x2, width, crop_width)
        x_ok = inside(xs, width)
        xs = np.where(x_ok, xs, F32(0))
        for y in range(crop_height):
            in_y = ys[y]
            if not inside(in_y, height):
                crops[b, y] = fill
                continue
            if method == "nearest":
                row = picture[nearest_index(np.array(in_y), height), nearest_index(xs, width)]
                # A float32 pixel is copied; the float64 -> float32 conversion flushes.
                row = narrow(row) if image.dtype == np.float64 else row.astype(F32)
            else:
                row = _bilinear_row(picture, in_y, xs, height, width)
            row[~x_ok] = fill
            crops[b, y] = row
    return crops


def _bilinear_row(picture, in_y, xs, height, width):
    top, bottom, y_lerp = neighbours(np.array(in_y), height)
    left, right, x_lerp = neighbours(xs, width)
    x_lerp = x_lerp[:, None]
    top_left = pixels(picture[top, left])
    top_right = pixels(picture[top, right])
    bottom_left = pixels(picture[bottom, left])
    bottom_right = pixels(picture[bottom, right])
    upper = flush(top_left + mul(flush(top_right - top_left), x_lerp))
    lower = flush(bottom_left + mul(flush(bottom_right - bottom_left), x_lerp))
    return flush(upper + mul(flush(lower - upper), y_lerp))


def crop_and_resize_grad_image(grads, boxes, box_indices, image_shape, method, dtype):
    with np.errstate(all="ignore"):
        return _grad_image(grads, boxes, box_indices, image_shape, method, dtype)


def _grad_image(grads, boxes, box_indices, image_shape, method, dtype):
    batch, height, width, depth = image_shape
    out = np.zeros((batch * height * width, depth), dtype)
    crop_height, crop_width = grads.shape[1:3]
    for b in range(len(boxes)):
        y1, x1, y2, x2 = boxes[b]
        ys = coordinates(y1, y2, height, crop_height)
        xs = coordinates(x1, x2, width, crop_width)
        x_ok = inside(xs, width)
        columns = np.flatnonzero(x_ok)  # samples outside the image contribute nothing
        base = int(box_indices[b]) * height
        for y in range(crop_height):
            if not inside(ys[y], height) or not len(columns):
                continue
            g = grads[b, y, columns].astype(F32)  # (columns, depth)
            if method == "nearest":
                row = base + int(nearest_index(np.array(ys[y]), height))
                targets = row * width + nearest_index(xs[columns], width)
                values = flush(g).astype(dtype)
            else:
                top, bottom, y_lerp = neighbours(np.array(ys[y]), height)
                left, right, x_lerp = neighbours(xs[columns], width)
                x_lerp = x_lerp[:, None]
                dtop = mul(F32(1) - y_lerp, g)
                dbottom = mul(y_lerp, g)
                corners = [
                    ((base + top) * width + left, mul(F32(1) - x_lerp, dtop)),
                    ((base + top) * width + right, mul(x_lerp, dtop)),
                    ((base + bottom) * width + left, mul(F32(1) - x_lerp, dbottom)),
                    ((base + bottom) * width + right, mul(x_lerp, dbottom)),
                ]
                # TF's order: column by column, corners TL, TR, BL, BR.
                targets = np.stack([t for t, _ in corners], axis=1).reshape(-1)
                values = np.stack([v.astype(dtype) for _, v in corners], axis=1)
                values = values.reshape(len(targets), depth)
            _add_in_order(out, targets, values)
    return out.reshape(batch, height, width, depth)


def _add_in_order(out, targets, values):
    """``out[targets[i]] += values[i]`` in order, each sum rounded (and flushed) as TF's ``+=``."""
    small = np.abs(values[values != 0]) if values.dtype == F32 else ()
    if len(small) and small.min() < 2.0**-102:  # partial sums could be subnormal: flush each
        for target, value in zip(targets, values, strict=True):
            out[target] = flush(out[target] + value)
        return
    np.add.at(out, targets, values)  # unbuffered: in index order


def crop_and_resize_grad_boxes(grads, image, boxes, box_indices):
    with np.errstate(all="ignore"):
        return _grad_boxes(grads, image, boxes, box_indices)


def _grad_boxes(grads, image, boxes, box_indices):
    _, height, width, _ = image.shape
    num_boxes, crop_height, crop_width, _ = grads.shape
    out = np.zeros((num_boxes, 4), F32)
    for b in range(num_boxes):
        picture = image[box_indices[b]]
        y1, x1, y2, x2 = boxes[b]
        ys = coordinates(y1, y2, height, crop_height, ratio_first=True)
        xs = coordinates(x1, x2, width, crop_width, ratio_first=True)
        columns = np.flatnonzero(inside(xs, width))  # samples outside contribute nothing
        terms = {0: [], 1: [], 2: [], 3: []}  # per box coordinate, in TF's (y, x, d) order
        for y in range(crop_height):
            if not inside(ys[y], height) or not len(columns):
                continue
            grad_y, grad_x = _image_gradients(picture, ys[y], xs[columns], height, width)
            g = flush(grads[b, y, columns].astype(F32))
            grad_y, grad_x = mul(grad_y, g), mul(grad_x, g)
            for image_grad, size, crop, first, second, position in (
                (grad_y, height, crop_height, 0, 2, np.full((len(columns), 1), y, F32)),
                (grad_x, width, crop_width, 1, 3, columns.astype(F32)[:, None]),
            ):
                if crop > 1:
                    at = position * (F32(size - 1) / F32(crop - 1))  # y * height_ratio
                    terms[first].append(mul(image_grad, F32(size - 1) - at).ravel())
                    terms[second].append(mul(image_grad, at).ravel())
                else:  # `image_grad_y * 0.5 * (image_height - 1)`: a double product
                    doubles = image_grad.astype(np.float64).ravel() * 0.5 * (size - 1)
                    terms[first].append(doubles)
                    terms[second].append(doubles)
        for column, parts in terms.items():
            out[b, column] = _sum(np.concatenate(parts) if parts else np.zeros(0, F32))
    return out


def _image_gradients(picture, in_y, xs, height, width):
    """TF's image_grad_y and image_grad_x for the samples of one row: float32 (columns, depth)."""
    top, bottom, y_lerp = neighbours(np.array(in_y), height)
    left, right, x_lerp = neighbours(xs, width)
    x_lerp = x_lerp[:, None]
    top_left = pixels(picture[top, left])
    top_right = pixels(picture[top, right])
    bottom_left = pixels(picture[bottom, left])
    bottom_right = pixels(picture[bottom, right])
    one = F32(1)
    grad_y = flush(
        mul(one - x_lerp, flush(bottom_left - top_left))
        + mul(x_lerp, flush(bottom_right - top_right))
    )
    grad_x = flush(
        mul(one - y_lerp, flush(top_right - top_left))
        + mul(y_lerp, flush(bottom_right - bottom_left))
    )
    return grad_y, grad_x


def _sum(terms) -> F32:
    """TF's ``float acc = 0; acc += term`` in order; a double term rounds twice, as in C++."""
    acc = F32(0)
    if terms.dtype == np.float64:
        for term in terms:
            acc = narrow(float(acc) + float(term))
        return F32(acc)
    small = np.abs(terms[terms != 0])
    if len(small) and small.min() < 2.0**-102:  # a partial sum could be subnormal
        for term in terms:
            acc = flush(acc + term)
        return F32(acc)
    return np.add.accumulate(np.concatenate([[F32(0)], terms]).astype(F32))[-1]
