"""The JAX kernels: TensorFlow's CPU ``CropAndResize`` and its two gradients in ``jax.numpy``/``jax.lax``.

Requirements, in order of priority:

1. **Traceable**: pure functions of arrays, with the crop size, method, layout and dtypes static
   (:data:`STATIC`), so that ``jax.jit`` compiles them and ``jax.vmap`` and ``jax.grad`` transform them. No value is
   read on the host (the one host read, of box indices on the CPU, is in :mod:`cropcore_jax.ops`,
   outside these functions).
2. **Bit-identical to TensorFlow 2.21's CPU kernel on XLA:CPU**: every float32 operation of
   ``tensorflow/core/kernels/image/crop_and_resize_op.cc`` is one ``jnp`` operation here, in the
   same order (no ``jnp.lerp``-style rewrites). XLA:CPU runs with flush-to-zero and
   denormals-are-zero, as TF's CPU kernels do (``port::ScopedFlushDenormal``), so the float32
   arithmetic needs no emulation. XLA:CPU compiles with LLVM's FP-op fusion on, which
   contracts a multiply feeding an add into one FMA (one rounding where TF rounds twice) on any
   CPU with FMA: every product that feeds a sum goes through :func:`_rounded`, an identity LLVM
   cannot see through (docs/jax.md). Where TF
   computes in double (the centre of a crop dimension of 1, the box gradient's
   ``float += double``), so do we, under a scoped ``jax.enable_x64``.
3. **TF's summation order**: the image gradient is a scatter-add in TF's single-threaded order
   (boxes, rows, columns, corners TL TR BL BR), the box gradient a scatter-add per box in TF's order
   (rows, columns, channels); XLA:CPU applies scatter updates one after the other, in order.
   Samples outside the image are routed past the end of the scatter target and dropped, so they
   add nothing at all (adding +0.0 would turn a flushed -0.0 sum into +0.0).
4. **Safe on unchecked values** (docs/decisions.md, "Unchecked values"): a non-finite sample
   coordinate is outside the image; a box index outside ``[0, batch)`` gives a NaN crop (and
   box-gradient row) and no image-gradient contribution; every index is clamped before a gather.

Every function takes the image (or grads) in its own layout (``channels_first``: NCHW) and works on
NHWC transposes, which XLA folds into the gathers. Boxes are float32 ``(N, 4)``, box indices
int32 ``(N,)``.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = [
    "Samples",
    "box_samples",
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
]

_F32 = np.float32

# A quiet NaN with a payload of our own: see _rounded.
_OPAQUE_NAN_BITS = np.uint32(0x7FC0CC0D)


def _rounded(product: jax.Array, witness: jax.Array | None = None) -> jax.Array:
    """``product`` (float32), kept a rounded float32 value before it is added to anything.

    XLA:CPU compiles with LLVM's FP-op fusion on, so ``a + b * c`` becomes one fused multiply-add
    (a single rounding) wherever the CPU has FMA; no XLA flag turns that off per computation. This
    select is the identity (where ``product`` has the bits of one particular NaN, it gives a NaN),
    but LLVM cannot prove it, so the add receives a select, not a product, and cannot be fused.
    Per element on purpose: a condition shared by a row is hoisted out of the loop, which
    exposes the product again.

    With ``witness`` (a float32 array of the same shape), the test reads it instead: for a value
    that is NaN wherever ``witness`` is (a divisor of it), so that XLA cannot fold the value.
    """
    bits = lax.bitcast_convert_type(product if witness is None else witness, jnp.uint32)
    return jnp.where(bits != _OPAQUE_NAN_BITS, product, _F32(np.nan))


#: The arguments of each kernel that ``jax.jit`` must treat as static.
STATIC = {
    # Not extrapolation_value: jit compares static arguments by equality, and -0.0 == 0.0.
    "crop_and_resize": ("crop_size", "method", "channels_first"),
    "crop_and_resize_grad_image": ("image_shape", "method", "dtype", "channels_first"),
    "crop_and_resize_grad_boxes": ("channels_first",),
}


class Samples(NamedTuple):
    """Where the samples of one crop axis fall in the image, per box; every array is (N, crop)."""

    valid: jax.Array  # bool: 0 <= coordinate <= size - 1 (False for NaN and inf)
    low: jax.Array  # int32: floorf(coordinate), clamped to the image (0 where invalid)
    high: jax.Array  # int32: ceilf(coordinate), clamped (0 where invalid)
    lerp: jax.Array  # float32: coordinate - floorf(coordinate) (0 where invalid)
    nearest: jax.Array  # int32: roundf(coordinate), clamped (0 where invalid)


def _coordinates(
    start: jax.Array, end: jax.Array, size: int, crop: int, *, ratio_first: bool
) -> jax.Array:
    """TF's sample coordinates ``in_y`` (or ``in_x``) in pixels: float32 (N, crop).

    ``start``, ``end``: float32 (N,) normalised box edges; ``size``: the image height (or width);
    ``crop``: the crop height (or width); ``ratio_first``: CropAndResizeGradBoxes' rounding.
    """
    # C++ `image_height - 1` is an int converted to float.
    size_minus_one = _F32(size - 1)
    if crop == 1:
        # `0.5 * (y1 + y2) * (image_height - 1)`: a float sum, then double products (the literal
        # 0.5 is a double), rounded to float once, on assignment.
        total = start + end
        with jax.enable_x64(True):
            centre = total.astype(jnp.float64) * 0.5 * np.float64(size - 1)
            return centre.astype(jnp.float32)[:, None]
    span = end - start  # can overflow float32 (y1=-3e38, y2=3e38): inf, then NaN below
    if ratio_first:
        # CropAndResizeGradBoxes: height_ratio = float(H - 1) / (ch - 1) first, then (y2 - y1) * it.
        scale = span * (size_minus_one / _F32(crop - 1))  # (multiplied, not added: no _rounded)
    else:
        # CropAndResize, CropAndResizeGradImage: (y2 - y1) * (image_height - 1) / (crop_height - 1),
        # left to right. XLA rewrites a division by a constant into a multiplication by its
        # (rounded) reciprocal, so the divisor is given as a value XLA cannot fold.
        product = span * size_minus_one
        scale = product / _rounded(jnp.full_like(product, _F32(crop - 1)), witness=product)
    steps = jnp.arange(crop, dtype=jnp.float32)  # the int y, converted to float
    # in_y = y1 * (image_height - 1) + y * height_scale, each product rounded to float32.
    return _rounded(start * size_minus_one)[:, None] + _rounded(steps * scale[:, None])


def _samples(
    start: jax.Array, end: jax.Array, size: int, crop: int, *, ratio_first: bool
) -> Samples:
    coord = _coordinates(start, end, size, crop, ratio_first=ratio_first)
    # TF extrapolates when `in_y < 0 || in_y > image_height - 1`: [0, H-1] inclusive, -0.0 inside.
    # Written NaN-safe: TF's CPU kernel lets NaN through (and crashes); here it is out of range.
    valid = (coord >= 0) & (coord <= _F32(size - 1))
    inside = jnp.where(valid, coord, _F32(0))
    # Coordinates here are >= 0, so floorf is the conversion to int (truncation), and
    # `in_y - top_y_index` is exact in float32 (-0.0 stays -0.0, which decides signed zeros).
    floor = inside.astype(jnp.int32)
    lerp = inside - floor.astype(jnp.float32)
    # ceilf is floorf + 1 unless the coordinate is an integer; roundf rounds half away from zero,
    # which for v >= 0 is floorf + (frac >= 0.5), exact (not jnp.round: half to even). Clamped:
    # when H - 1 > 2**24, float(H - 1) can round above H - 1; we read the last row instead.
    last = size - 1
    low = jnp.minimum(floor, last)
    high = jnp.minimum(floor + (lerp > 0), last)
    nearest = jnp.minimum(floor + (lerp >= 0.5), last)
    return Samples(valid, low, high, lerp, nearest)


def box_samples(
    boxes: jax.Array,
    image_height: int,
    image_width: int,
    crop_size: tuple[int, int],
    *,
    ratio_first: bool = False,
) -> tuple[Samples, Samples]:
    """The row (y) and column (x) samples of every box: ``(rows, cols)``.

    ``boxes``: float32 (N, 4) ``[y1, x1, y2, x2]``; rows are (N, crop_height), cols (N, crop_width).
    """
    crop_height, crop_width = crop_size
    rows = _samples(boxes[:, 0], boxes[:, 2], image_height, crop_height, ratio_first=ratio_first)
    cols = _samples(boxes[:, 1], boxes[:, 3], image_width, crop_width, ratio_first=ratio_first)
    return rows, cols


def _nhwc(x: jax.Array, channels_first: bool) -> jax.Array:
    return jnp.transpose(x, (0, 2, 3, 1)) if channels_first else x


def _layout(x: jax.Array, channels_first: bool) -> jax.Array:
    """An NHWC result in the caller's layout."""
    return jnp.transpose(x, (0, 3, 1, 2)) if channels_first else x


def _to_float32(x: jax.Array) -> jax.Array:
    """``static_cast<float>`` of pixels of any dtype (64-bit ones need 64-bit types to exist)."""
    if x.dtype == jnp.float32:
        return x
    with jax.enable_x64(True):
        return x.astype(jnp.float32)


def _guarded(box_indices: jax.Array, batch: int) -> tuple[jax.Array, jax.Array]:
    """Box indices safe to gather with (clamped into the batch), and which were bad: bool (N,)."""
    bad = (box_indices < 0) | (box_indices >= batch)
    return jnp.clip(box_indices, 0, max(batch - 1, 0)), bad


def _gather(image: jax.Array, batch: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
    """``float(image[b, y, x, :])`` of every sample: float32 (N, crop_height, crop_width, depth).

    ``batch`` (N,), ``y`` (N, crop_height), ``x`` (N, crop_width): int32, inside the image.
    """
    return _to_float32(image[batch[:, None, None], y[:, :, None], x[:, None, :]])


def crop_and_resize(
    image: jax.Array,
    boxes: jax.Array,
    box_indices: jax.Array,
    crop_size: tuple[int, int],
    method: str,
    extrapolation_value: float,
    channels_first: bool,
) -> jax.Array:
    """TF's ``CropAndResize``.

    Args:
        image: (batch, height, width, depth), or (batch, depth, height, width) when
            ``channels_first``; any of the nine image dtypes.
        boxes: float32 (N, 4), ``[y1, x1, y2, x2]``. box_indices: int32 (N,).
        crop_size: ``(crop_height, crop_width)``, positive. method: ``"bilinear"`` or ``"nearest"``.
        extrapolation_value: written (as float32) where a sample is outside the image; a
            float or a float32 scalar array (an argument of the computation, not a constant).
        channels_first: the layout of ``image`` and of the result.

    Returns:
        float32 (N, crop_height, crop_width, depth), or (N, depth, crop_height, crop_width) when
        ``channels_first``. A box whose index is outside ``[0, batch)`` gives a crop of NaN.
    """
    image = _nhwc(image, channels_first)
    batch, image_height, image_width, _ = image.shape
    box_indices, bad = _guarded(box_indices, batch)
    rows, cols = box_samples(boxes, image_height, image_width, crop_size)
    if method == "nearest":
        # A float32 pixel is copied as is (subnormals too); a float64 one is converted.
        crops = _gather(image, box_indices, rows.nearest, cols.nearest)
    else:
        top_left = _gather(image, box_indices, rows.low, cols.low)
        top_right = _gather(image, box_indices, rows.low, cols.high)
        bottom_left = _gather(image, box_indices, rows.high, cols.low)
        bottom_right = _gather(image, box_indices, rows.high, cols.high)
        x_lerp = cols.lerp[:, None, :, None]
        y_lerp = rows.lerp[:, :, None, None]
        top = top_left + _rounded((top_right - top_left) * x_lerp)
        bottom = bottom_left + _rounded((bottom_right - bottom_left) * x_lerp)
        crops = top + _rounded((bottom - top) * y_lerp)
    # A sample outside the image is replaced entirely (no blending with in-range neighbours).
    inside = rows.valid[:, :, None, None] & cols.valid[:, None, :, None]
    crops = jnp.where(inside, crops, jnp.asarray(extrapolation_value, jnp.float32))
    crops = jnp.where(bad[:, None, None, None], _F32(np.nan), crops)
    return _layout(crops, channels_first)


def crop_and_resize_grad_image(
    grads: jax.Array,
    boxes: jax.Array,
    box_indices: jax.Array,
    image_shape: tuple[int, int, int, int],
    method: str,
    dtype: str,
    channels_first: bool,
) -> jax.Array:
    """TF's ``CropAndResizeGradImage``: the gradient of the crops w.r.t. the image.

    Args:
        grads: float32 (N, crop_height, crop_width, depth) (or NCHW when ``channels_first``).
        boxes, box_indices: as for :func:`crop_and_resize`.
        image_shape: ``(batch, height, width, depth)`` (NHWC order, whatever the layout).
        method: ``"bilinear"`` or ``"nearest"``. dtype: ``"float16"``, ``"float32"`` or
            ``"float64"``, the result's and the accumulation's.

    Returns:
        ``dtype`` (batch, height, width, depth), or NCHW when ``channels_first``. Each contribution
        is computed in float32, cast to ``dtype`` and added in ``dtype``, in TF's order. Samples
        outside the image and boxes whose index is outside ``[0, batch)`` add nothing.
    """
    grads = _nhwc(grads, channels_first)
    batch, image_height, image_width, depth = image_shape
    _, crop_height, crop_width, _ = grads.shape
    pixels = batch * image_height * image_width
    box_indices, bad = _guarded(box_indices, batch)
    rows, cols = box_samples(boxes, image_height, image_width, (crop_height, crop_width))
    valid = rows.valid[:, :, None] & cols.valid[:, None, :] & ~bad[:, None, None]  # (N, ch, cw)
    row_base = box_indices[:, None] * image_height  # (N, 1)

    def pixel(y: jax.Array, x: jax.Array) -> jax.Array:
        """Flat pixel index of every sample, or ``pixels`` (dropped) where it adds nothing."""
        flat = ((row_base + y) * image_width)[:, :, None] + x[:, None, :]
        return jnp.where(valid, flat, pixels)

    if method == "nearest":
        targets = pixel(rows.nearest, cols.nearest).reshape(-1)
        contributions = grads  # static_cast<T>(grads(b, y, x, d))
    else:
        y_lerp = rows.lerp[:, :, None, None]
        x_lerp = cols.lerp[:, None, :, None]
        dtop = (1 - y_lerp) * grads  # float dtop = (1 - y_lerp) * grads(b, y, x, d)
        dbottom = y_lerp * grads
        # (N, ch, cw, corner, depth): each sample's four contributions in TF's order TL TR BL BR.
        # (Rounded: XLA may fuse the products into the scatter's additions.)
        contributions = jnp.stack(
            [
                _rounded((1 - x_lerp) * dtop),
                _rounded(x_lerp * dtop),
                _rounded((1 - x_lerp) * dbottom),
                _rounded(x_lerp * dbottom),
            ],
            axis=3,
        )
        targets = jnp.stack(
            [
                pixel(rows.low, cols.low),
                pixel(rows.low, cols.high),
                pixel(rows.high, cols.low),
                pixel(rows.high, cols.high),
            ],
            axis=3,
        ).reshape(-1)
    with jax.enable_x64(True) if dtype == "float64" else contextlib.nullcontext():
        contributions = contributions.reshape(targets.shape[0], depth).astype(dtype)
        out = jnp.zeros((pixels, depth), dtype).at[targets].add(contributions, mode="drop")
        out = out.reshape(batch, image_height, image_width, depth)
        return _layout(out, channels_first)


def crop_and_resize_grad_boxes(
    grads: jax.Array,
    image: jax.Array,
    boxes: jax.Array,
    box_indices: jax.Array,
    channels_first: bool,
) -> jax.Array:
    """TF's ``CropAndResizeGradBoxes`` (bilinear): the gradient w.r.t. the boxes.

    Args:
        grads: float32 (N, crop_height, crop_width, depth) (or NCHW when ``channels_first``).
        image: the forward op's image, any of the nine dtypes, in the same layout.
        boxes, box_indices: as for :func:`crop_and_resize`.

    Returns:
        float32 (N, 4): d/d ``[y1, x1, y2, x2]``, each box's terms summed one after the other in
        TF's order (rows, columns, channels). A box whose index is outside ``[0, batch)`` gives a
        row of NaN.
    """
    grads = _nhwc(grads, channels_first)
    image = _nhwc(image, channels_first)
    batch, image_height, image_width, _ = image.shape
    _, crop_height, crop_width, _ = grads.shape
    box_indices, bad = _guarded(box_indices, batch)
    rows, cols = box_samples(
        boxes, image_height, image_width, (crop_height, crop_width), ratio_first=True
    )
    valid = rows.valid[:, :, None, None] & cols.valid[:, None, :, None]  # (N, ch, cw, 1)
    top_left = _gather(image, box_indices, rows.low, cols.low)
    top_right = _gather(image, box_indices, rows.low, cols.high)
    bottom_left = _gather(image, box_indices, rows.high, cols.low)
    bottom_right = _gather(image, box_indices, rows.high, cols.high)
    x_lerp = cols.lerp[:, None, :, None]
    y_lerp = rows.lerp[:, :, None, None]
    # image_grad_y = (1 - x_lerp) * (bottom_left - top_left) + x_lerp * (bottom_right - top_right)
    image_grad_y = _rounded((1 - x_lerp) * (bottom_left - top_left)) + _rounded(
        x_lerp * (bottom_right - top_right)
    )
    # image_grad_x = (1 - y_lerp) * (top_right - top_left) + y_lerp * (bottom_right - bottom_left)
    image_grad_x = _rounded((1 - y_lerp) * (top_right - top_left)) + _rounded(
        y_lerp * (bottom_right - bottom_left)
    )
    image_grad_y = image_grad_y * grads  # image_grad_y *= top_grad
    image_grad_x = image_grad_x * grads

    columns = []
    for grad, size, crop, axis in (
        (image_grad_y, image_height, crop_height, 1),
        (image_grad_x, image_width, crop_width, 2),
    ):
        if crop > 1:
            size_minus_one = _F32(size - 1)
            ratio = size_minus_one / _F32(crop - 1)  # height_ratio, rounded once (NumPy float32)
            shape = [1, 1, 1, 1]
            shape[axis] = crop
            position = _rounded(jnp.arange(crop, dtype=jnp.float32) * ratio).reshape(shape)
            # grads_boxes(b, 0) += image_grad_y * (image_height - 1 - y * height_ratio)
            first = _sum_float(_rounded(grad * (size_minus_one - position)), valid)
            # grads_boxes(b, 2) += image_grad_y * (y * height_ratio)
            second = _sum_float(_rounded(grad * position), valid)
        else:
            # grads_boxes(b, 0) += image_grad_y * 0.5 * (image_height - 1): double products
            first = second = _sum_double(grad, 0.5 * float(size - 1), valid)
        columns.append((first, second))
    (dy1, dy2), (dx1, dx2) = columns
    out = jnp.stack([dy1, dx1, dy2, dx2], axis=1)
    return jnp.where(bad[:, None], _F32(np.nan), out)


def _sum_float(terms: jax.Array, valid: jax.Array) -> jax.Array:
    """TF's float32 ``acc += term`` over each box's in-range samples, in order: float32 (N,).

    ``terms``: float32 (N, crop_height, crop_width, depth); ``valid``: bool (N, ch, cw, 1). A
    scatter-add of every term into its box's slot, in order (XLA:CPU adds them one by one; a
    reduction would add pairwise); out-of-range samples are dropped, as TF skips them.
    """
    num_boxes = terms.shape[0]
    box = jnp.arange(num_boxes, dtype=jnp.int32)[:, None, None, None]
    targets = jnp.where(valid, box, num_boxes)
    targets = jnp.broadcast_to(targets, terms.shape).reshape(-1)
    return jnp.zeros(num_boxes, jnp.float32).at[targets].add(terms.reshape(-1), mode="drop")


def _sum_double(terms: jax.Array, factor: float, valid: jax.Array) -> jax.Array:
    """TF's ``float acc += double(term) * factor``, i.e. ``acc = float(double(acc) + term * factor)``.

    ``terms``: float32 (N, crop_height, crop_width, depth); returns float32 (N,). Each step rounds
    twice (double, then float), which no scatter or reduction reproduces: a scan over the
    reduction axis, vectorised over boxes (only crops with a dimension of 1 come here).
    """
    num_boxes = terms.shape[0]
    keep = jnp.broadcast_to(valid, terms.shape).reshape(num_boxes, -1).T
    with jax.enable_x64(True):
        steps = terms.reshape(num_boxes, -1).T.astype(jnp.float64) * factor

        def add(acc: jax.Array, step: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, None]:
            term, inside = step
            total = (acc.astype(jnp.float64) + term).astype(jnp.float32)
            return jnp.where(inside, total, acc), None

        acc, _ = lax.scan(add, jnp.zeros(num_boxes, jnp.float32), (steps, keep))
        return acc
