"""roi_align and its image gradient in ``jax.numpy``/``jax.lax``: torchvision's and ONNX Runtime's RoIAlign.

Requirements, in order of priority:

1. **Traceable**: pure functions of arrays under ``jax.jit``, ``jax.grad`` and ``jax.vmap``; the
   output size, sampling ratio, alignment, mode, layout and the sampling grid's bound are static
   (:data:`STATIC`), the spatial scale is an argument (static values compare by equality, and
   ``-0.0 == 0.0``). No box value is read on the host here; :func:`run_roi_align` reads them only
   when they are concrete (an eager call), to size the sampling grid.
2. **Bit-identical to the reference backend on XLA:CPU** (torchvision's CPU kernel, which ONNX
   Runtime's ``RoiAlign`` shares; docs/semantics.md, "roi_align"): every operation of
   :mod:`cropcore.roi_samples` and :mod:`cropcore_numpy.roi_align`, in the compute dtype ``T``
   (float64 for float64, else float32) and in the same order. As in :mod:`cropcore_jax.kernels`,
   every product that feeds a sum goes through :func:`_kept` (XLA:CPU would contract it into a
   fused multiply-add), and every division goes through an opaque divisor (XLA rewrites a division
   by a constant into a multiplication by its reciprocal).
3. **A static sampling grid**: each box's grid (``sampling_ratio``, or ``ceil(roi size / pooled
   size)`` when adaptive) is walked up to a static bound ``(grid_h, grid_w)``, samples beyond a
   box's own grid masked out. Eagerly the bound is the largest grid of the call (exact for every
   box). Under a trace the adaptive grid depends on box values, so the bound comes from the image
   (:func:`traced_grid_bound`) and a box whose grid exceeds it gives NaN rather than a sum over
   part of its samples (docs/decisions.md, "roi_align on the JAX backend").
4. **Safe on unchecked values** (docs/decisions.md, "Unchecked values"): a non-finite sample
   coordinate is empty; a box index outside ``[0, batch)`` gives that box a NaN result and no
   gradient; every index is clamped before a gather.

NHWC and NCHW images; the kernels work on NHWC transposes, which XLA folds into the gathers.
"""

from __future__ import annotations

import contextlib
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from cropcore.hookspecs import RoiAlignCall, RoiAlignGradImageCall
from cropcore.roi_samples import MAX_SAMPLES, samples_of

__all__ = [
    "STATIC",
    "grid_bound",
    "roi_align",
    "roi_align_grad_image",
    "run_roi_align",
    "run_roi_align_grad_image",
    "traced_grid_bound",
]

#: The static arguments of each kernel under ``jax.jit``.
STATIC = {
    "roi_align": (
        "output_size", "sampling_ratio", "aligned", "mode", "channels_first", "grid",
    ),
    "roi_align_grad_image": (
        "image_shape", "sampling_ratio", "aligned", "channels_first", "grid",
    ),
}  # fmt: skip

#: Entries (samples x 4 corners x channels) scattered per step of the image gradient.
_CHUNK_ELEMENTS = 1 << 22

# Quiet NaNs with payloads of our own: see _kept.
_OPAQUE = {
    np.dtype(np.float32): (jnp.uint32, np.uint32(0x7FC0CC0D)),
    np.dtype(np.float64): (jnp.uint64, np.uint64(0x7FF8CC0D0000CC0D)),
}


def _kept(value: jax.Array, witness: jax.Array | None = None) -> jax.Array:
    """``value``, kept a rounded value of its dtype before anything is added to it.

    The identity (a NaN where the bits are one particular NaN), which LLVM cannot prove, so that
    a product feeding a sum is not fused into an FMA (docs/jax.md, "No fused multiply-add"); per
    element. With ``witness`` (same shape and dtype), the test reads it instead: for a divisor
    that XLA must not fold into a reciprocal (NaN wherever ``witness``, the dividend, is NaN).
    """
    unsigned, bits = _OPAQUE[np.dtype(value.dtype)]
    pattern = lax.bitcast_convert_type(value if witness is None else witness, unsigned)
    return jnp.where(pattern != bits, value, jnp.asarray(np.nan, value.dtype))


def _divided(numerator: jax.Array, denominator: Any) -> jax.Array:
    """``numerator / denominator``, rounded once, never turned into a reciprocal's product."""
    divisor = jnp.broadcast_to(jnp.asarray(denominator, numerator.dtype), numerator.shape)
    return numerator / _kept(divisor, witness=numerator)


def _below(size: int, dtype: Any) -> Any:
    """The largest ``T`` value not above the integer ``size``: ``c > size`` (compared in double
    in the C++) is ``c > _below(size)`` for any ``T`` value ``c``."""
    t = np.dtype(dtype).type
    value = t(size)
    if float(value) > size:
        value = np.nextafter(value, t(-np.inf))
    return value


class _Geometry(NamedTuple):
    """One axis of every box: start, bin size, grid (all ``T``, ``(K,)``)."""

    start: jax.Array
    bin_size: jax.Array
    grid: jax.Array  # whole numbers in T; 0 for an empty (non-finite or non-positive) grid


def _geometry(
    boxes: jax.Array,
    scale: jax.Array,
    aligned: bool,
    output_size: tuple[int, int],
    sampling_ratio: int,
) -> tuple[_Geometry, _Geometry]:
    """Per box, the y and x geometry, as :func:`cropcore.roi_samples._geometry` computes it."""
    t = boxes.dtype
    offset = jnp.asarray(0.5 if aligned else 0.0, t)
    scaled = _kept(boxes * scale) - offset  # x1 * T(spatial_scale) - offset, ...
    axes = []
    for first, pooled in ((1, output_size[0]), (0, output_size[1])):  # y from columns 1, 3
        start, end = scaled[:, first], scaled[:, first + 2]
        size = end - start
        if not aligned:  # malformed boxes are forced to 1 x 1
            size = jnp.where(size < 1, jnp.asarray(1, t), size)
        bin_size = _divided(size, pooled)
        if sampling_ratio > 0:
            grid = jnp.full(size.shape, sampling_ratio, t)
        else:  # ceil(size / pooled), the same quotient as the bin size
            ceil = jnp.ceil(bin_size)
            grid = jnp.where(jnp.isfinite(ceil) & (ceil > 0), ceil, jnp.asarray(0, t))
        axes.append(_Geometry(start, bin_size, grid))
    return axes[0], axes[1]


class _Axis(NamedTuple):
    """The samples of one axis: arrays of the shape of the sample index grid given."""

    inside: jax.Array  # bool: a real, non-empty sample
    low: jax.Array  # int32 pixel of the low corner
    high: jax.Array  # int32 pixel of the high corner
    frac: jax.Array  # T: the high corner's weight
    rest: jax.Array  # T: the low corner's weight
    real: jax.Array  # bool: within the box's grid


def _axis(geometry: _Geometry, pooled: int, index: jax.Array, size: int) -> _Axis:
    """Samples ``index`` (int32, broadcast against ``(K, pooled, ...)``) of every box and bin.

    ``y = (start + T(p) * bin) + (T(iy + 0.5f) * bin) / T(grid)``; empty outside ``[-1, size]``,
    else clamped to the image as torchvision's ``bilinear_interpolate``.
    """
    t = geometry.start.dtype
    extra = index.ndim - 1  # the sample axes after (K, pooled)

    def per_box(a: jax.Array) -> jax.Array:
        return a.reshape(a.shape + (1,) * (1 + extra))

    p = jnp.arange(pooled, dtype=jnp.int32).astype(t).reshape((1, pooled) + (1,) * extra)
    i = (index.astype(jnp.float32) + np.float32(0.5)).astype(t)[None]  # static_cast<T>(iy + .5f)
    start, bin_size, grid = (per_box(a) for a in geometry)
    step = _kept(i * bin_size)
    c = (start + _kept(p * bin_size)) + _divided(step, jnp.maximum(grid, jnp.asarray(1, t)))
    real = index[None] < grid
    inside = real & jnp.isfinite(c) & ~((c < -1) | (c > _below(size, t)))
    c = jnp.where(c <= 0, jnp.asarray(0, t), c)
    low = jnp.where(inside, c, jnp.asarray(0, t)).astype(jnp.int32)  # (int) of c >= 0
    at_edge = low >= size - 1
    low = jnp.where(at_edge, size - 1, low)
    high = jnp.where(at_edge, size - 1, low + 1)
    c = jnp.where(at_edge, low.astype(t), c)
    frac = c - low.astype(t)
    return _Axis(inside, low, high, frac, 1 - frac, real)


def _compute_dtype(dtype: Any) -> Any:
    return jnp.float64 if np.dtype(dtype) == np.float64 else jnp.float32


def _x64(dtype: Any) -> contextlib.AbstractContextManager[Any]:
    """64-bit types for a float64 computation, whatever the user's x64 setting."""
    return jax.enable_x64(True) if np.dtype(dtype) == np.float64 else contextlib.nullcontext()


def _nhwc(x: jax.Array, channels_first: bool) -> jax.Array:
    return jnp.transpose(x, (0, 2, 3, 1)) if channels_first else x


def _layout(x: jax.Array, channels_first: bool) -> jax.Array:
    return jnp.transpose(x, (0, 3, 1, 2)) if channels_first else x


def _unusable(
    box_indices: jax.Array, batch: int, y: _Geometry, x: _Geometry, grid: tuple[int, int]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Clamped box indices; boxes with an index outside ``[0, batch)``; boxes whose grid exceeds
    the static bound (only possible under a trace with an adaptive grid)."""
    bad = (box_indices < 0) | (box_indices >= batch)
    over = (y.grid > grid[0]) | (x.grid > grid[1])
    return jnp.clip(box_indices, 0, max(batch - 1, 0)), bad, over


def _std_max(a: jax.Array, b: jax.Array) -> jax.Array:
    """C++'s ``std::max(a, b)``: ``a < b ? b : a``."""
    return jnp.where(a < b, b, a)


def roi_align(
    image: jax.Array,
    boxes: jax.Array,
    box_indices: jax.Array,
    spatial_scale: jax.Array,
    *,
    output_size: tuple[int, int],
    sampling_ratio: int,
    aligned: bool,
    mode: str,
    channels_first: bool,
    grid: tuple[int, int],
) -> jax.Array:
    """torchvision's ``roi_align`` (``mode="avg"``) and ONNX Runtime's ``RoiAlign`` (``"max"``).

    Args:
        image: (batch, height, width, depth), or (batch, depth, height, width) when
            ``channels_first``; float16, float32 or float64 (float16 computed in float32).
        boxes: ``T`` (K, 4) ``[x1, y1, x2, y2]`` in pixels, ``T`` the compute dtype (float64 for
            float64, else float32). box_indices: int32 (K,). spatial_scale: a ``T`` scalar.
        output_size: ``(pooled_height, pooled_width)``. sampling_ratio: ``<= 0`` adaptive.
        grid: the static bound ``(grid_h, grid_w)`` of the samples per bin walked.

    Returns:
        The image's dtype, (K, pooled_height, pooled_width, depth) or NCHW. A box whose index is
        outside ``[0, batch)``, or whose adaptive grid exceeds ``grid``, gives NaN.
    """
    t = _compute_dtype(image.dtype)
    image = _nhwc(image, channels_first)
    batch, height, width, depth = image.shape
    num_boxes = boxes.shape[0]
    pooled_h, pooled_w = output_size
    pixels = image.reshape(batch * height * width, depth).astype(t)
    y, x = _geometry(boxes, spatial_scale, aligned, output_size, sampling_ratio)
    box_indices, bad, over = _unusable(box_indices, batch, y, x, grid)
    base = (box_indices * (height * width))[:, None, None]
    grid_w = grid[1]

    def sample(s: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        out, started = carry
        ya = _axis(y, pooled_h, jnp.full((1, 1), s // grid_w, jnp.int32), height)
        xa = _axis(x, pooled_w, jnp.full((1, 1), s % grid_w, jnp.int32), width)
        ya = _Axis(*(a[:, :, 0, None] for a in ya))  # (K, pooled_h, 1)
        xa = _Axis(*(a[:, None, :, 0] for a in xa))  # (K, 1, pooled_w)
        inside = ya.inside & xa.inside
        real = (ya.real & xa.real)[..., None]
        terms = []
        for y_at, wy in ((ya.low, ya.rest), (ya.high, ya.frac)):
            for x_at, wx in ((xa.low, xa.rest), (xa.high, xa.frac)):
                # an empty sample: weight 0 at pixel 0 (0 * image[b, 0, 0] is still added)
                w = jnp.where(inside, wy * wx, jnp.asarray(0, t))
                row = jnp.where(inside, y_at * width + x_at, 0)
                terms.append(_kept(w[..., None] * pixels[base + row]))
        if mode == "avg":
            term = ((terms[0] + terms[1]) + terms[2]) + terms[3]
            # The running sum starts at +0.0, so it is never -0.0 (x + y is -0.0 only when both
            # are); XLA folds 0 + term into term, which would keep a -0.0 term: normalised here.
            total = out + term
            total = jnp.where(total == 0, jnp.asarray(0, t), total)
            return jnp.where(real, total, out), started
        value = _std_max(_std_max(_std_max(terms[0], terms[1]), terms[2]), terms[3])
        first = real & ~started
        out = jnp.where(first, value, jnp.where(real, _std_max(out, value), out))
        return out, started | real

    out = jnp.zeros((num_boxes, pooled_h, pooled_w, depth), t)
    started = jnp.zeros((num_boxes, pooled_h, pooled_w, 1), bool)
    if num_boxes and depth:
        out, _ = lax.fori_loop(0, grid[0] * grid[1], sample, (out, started))
    if mode == "avg":
        count = jnp.maximum(y.grid * x.grid, jnp.asarray(1, t))[:, None, None, None]
        out = _divided(out, jnp.broadcast_to(count, out.shape))
    out = jnp.where((bad | over)[:, None, None, None], jnp.asarray(np.nan, t), out)
    return _layout(out.astype(image.dtype), channels_first)


def roi_align_grad_image(
    grads: jax.Array,
    boxes: jax.Array,
    box_indices: jax.Array,
    spatial_scale: jax.Array,
    *,
    image_shape: tuple[int, int, int, int],
    sampling_ratio: int,
    aligned: bool,
    channels_first: bool,
    grid: tuple[int, int],
) -> jax.Array:
    """torchvision's roi_align backward: the gradient of ``mode="avg"`` w.r.t. the image.

    Args:
        grads: float16, float32 or float64 (K, pooled_height, pooled_width, depth), or NCHW.
        boxes, box_indices, spatial_scale, sampling_ratio, aligned, grid: as for
            :func:`roi_align`. image_shape: ``(batch, height, width, depth)`` (NHWC order).

    Returns:
        ``grads``' dtype, (batch, height, width, depth) or NCHW: each non-empty sample adds
        ``(g * w) / T(count)`` to its four corners in torchvision's order (boxes, bins, samples,
        corners), accumulated in ``T`` and rounded once. A box whose index is outside
        ``[0, batch)`` adds nothing; one whose adaptive grid exceeds ``grid`` makes its image's
        gradient NaN.
    """
    t = _compute_dtype(grads.dtype)
    grads = _nhwc(grads, channels_first)
    batch, height, width, depth = image_shape
    num_boxes, pooled_h, pooled_w, _ = grads.shape
    pixels = batch * height * width
    acc = jnp.zeros((pixels, depth), t)
    if num_boxes and depth:
        y, x = _geometry(boxes, spatial_scale, aligned, (pooled_h, pooled_w), sampling_ratio)
        box_indices, bad, over = _unusable(box_indices, batch, y, x, grid)
        per_box = pooled_h * pooled_w * grid[0] * grid[1] * 4 * depth
        chunk = min(num_boxes, max(1, _CHUNK_ELEMENTS // per_box))
        steps = -(-num_boxes // chunk)

        def padded(a: jax.Array, fill: Any = 0) -> jax.Array:
            """``a`` (K, ...) as (steps, chunk, ...), padded with ``fill``."""
            extra = steps * chunk - num_boxes
            a = jnp.pad(a, [(0, extra)] + [(0, 0)] * (a.ndim - 1), constant_values=fill)
            return a.reshape((steps, chunk, *a.shape[1:]))

        # (K, pooled, grid) tables of each axis, and what the chunks scan over
        ya = _axis(y, pooled_h, jnp.arange(grid[0], dtype=jnp.int32)[None, :], height)
        xa = _axis(x, pooled_w, jnp.arange(grid[1], dtype=jnp.int32)[None, :], width)
        count = y.grid * x.grid
        xs = (
            _Axis(*(padded(a) for a in ya)),
            _Axis(*(padded(a) for a in xa)),
            padded(grads.astype(t)),
            padded(count, 1),
            padded(box_indices * (height * width)),
            padded(~bad, False),
        )

        def add(acc: jax.Array, chunk_xs: Any) -> tuple[jax.Array, None]:
            ya, xa, g, count, base, usable = chunk_xs
            # (box, ph, pw, iy, ix): torchvision's order of samples for each channel
            inside = ya.inside[:, :, None, :, None] & xa.inside[:, None, :, None, :]
            inside = inside & usable[:, None, None, None, None]
            targets, values = [], []
            for y_at, wy in ((ya.low, ya.rest), (ya.high, ya.frac)):
                for x_at, wx in ((xa.low, xa.rest), (xa.high, xa.frac)):
                    w = wy[:, :, None, :, None] * wx[:, None, :, None, :]
                    row = y_at[:, :, None, :, None] * width + x_at[:, None, :, None, :]
                    row = jnp.where(inside, base[:, None, None, None, None] + row, pixels)
                    product = g[:, :, :, None, None, :] * w[..., None]
                    divisor = jnp.broadcast_to(
                        count[:, None, None, None, None, None], product.shape
                    )
                    targets.append(row)
                    values.append(_divided(product, divisor))
            target = jnp.stack(targets, axis=-1).reshape(-1)  # corners last
            value = jnp.stack(values, axis=-2).reshape(-1, depth)
            return acc.at[target].add(value, mode="drop"), None

        acc, _ = lax.scan(add, acc, xs)
        # a box whose samples were not all walked poisons its image's gradient
        poisoned = jnp.zeros(batch, jnp.int32).at[box_indices].add(over & ~bad) > 0
        acc = acc.reshape(batch, height * width, depth)
        acc = jnp.where(poisoned[:, None, None], jnp.asarray(np.nan, t), acc)
    out = acc.reshape(batch, height, width, depth).astype(grads.dtype)
    return _layout(out, channels_first)


# --------------------------------------------------------------------------------------------------
# The sampling grid's bound, and the hooks' entry points


def traced_grid_bound(
    image_hw: tuple[int, int], output_size: tuple[int, int], sampling_ratio: int
) -> tuple[int, int]:
    """The static bound of the samples per bin walked when the boxes are tracers.

    ``sampling_ratio`` itself when positive. Adaptive: ``ceil(size / pooled) + 1`` per axis, the
    grid of a box as large as the image (roi height at most the image's height in feature-map
    pixels) with one sample to spare for rounding and for boxes up to about a bin beyond it.
    """
    if sampling_ratio > 0:
        return (sampling_ratio, sampling_ratio)
    return tuple(  # type: ignore[return-value]
        math.ceil(size / pooled) + 1 for size, pooled in zip(image_hw, output_size, strict=True)
    )


@functools.cache
def _grids_of() -> Any:
    def grids(boxes, scale, aligned, output_size, sampling_ratio):
        y, x = _geometry(boxes, scale, aligned, output_size, sampling_ratio)
        return jnp.max(y.grid), jnp.max(x.grid)

    return jax.jit(grids, static_argnames=("aligned", "output_size", "sampling_ratio"))


def _eager_grid(boxes: Any, scale: jax.Array, call: Any, output_size: tuple[int, int]) -> tuple:
    """The largest grid of concrete boxes, computed as the kernels compute it; ``ValueError``
    beyond :data:`cropcore.roi_samples.MAX_SAMPLES` samples, as the other backends."""
    if call.sampling_ratio > 0 or boxes.shape[0] == 0:
        return (max(call.sampling_ratio, 1),) * 2
    host = np.asarray(boxes)
    total = samples_of(
        host, call.spatial_scale, call.aligned, output_size, call.sampling_ratio, host.dtype
    )
    if total > MAX_SAMPLES:
        raise ValueError(
            f"roi_align would take {total} samples (output bins x samples per bin over every "
            f"box), more than {MAX_SAMPLES}: the boxes are huge for an adaptive sampling_ratio; "
            "pass a positive sampling_ratio"
        )
    most = _grids_of()(boxes, scale, call.aligned, output_size, call.sampling_ratio)
    return tuple(max(int(m), 1) for m in most)


def grid_bound(call: RoiAlignCall | RoiAlignGradImageCall) -> tuple[int, int]:
    """:func:`traced_grid_bound` of a call (what a traced call walks; an estimate for an eager
    one, which walks its boxes' largest grid)."""
    hw = (call.image_shape.height, call.image_shape.width)
    return traced_grid_bound(hw, call.output_size, call.sampling_ratio)


def _grid(call: Any, boxes: Any, scale: jax.Array, output_size: tuple[int, int]) -> tuple:
    if isinstance(boxes, jax.core.Tracer):
        return grid_bound(call)
    return _eager_grid(boxes, scale, call, output_size)


@functools.cache
def _compiled(name: str) -> Any:
    return jax.jit(globals()[name], static_argnames=STATIC[name])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6, 7, 8, 9))
def _differentiable(
    image, boxes, box_indices, scale, output_size, ratio, aligned, mode, first, grid
):
    """:func:`roi_align`, whose VJP is :func:`roi_align_grad_image` (none for the boxes)."""
    return _compiled("roi_align")(
        image, boxes, box_indices, scale, output_size=output_size, sampling_ratio=ratio,
        aligned=aligned, mode=mode, channels_first=first, grid=grid,
    )  # fmt: skip


def _forward(image, boxes, box_indices, scale, output_size, ratio, aligned, mode, first, grid):
    out = _differentiable.fun(
        image, boxes, box_indices, scale, output_size, ratio, aligned, mode, first, grid
    )
    return out, (image, boxes, box_indices, scale)  # the image for its shape and dtype


def _backward(output_size, ratio, aligned, mode, first, grid, residuals, grads):
    image, boxes, box_indices, scale = residuals
    shape, dtype = image.shape, image.dtype
    if mode == "max":
        raise ValueError(
            "roi_align with mode='max' has no gradient (neither torchvision nor ONNX defines "
            "one); differentiate mode='avg'"
        )
    nhwc = (shape[0], shape[2], shape[3], shape[1]) if first else tuple(shape)
    with _x64(dtype):
        grad_image = _compiled("roi_align_grad_image")(
            grads.astype(dtype), boxes, box_indices, scale, image_shape=nhwc,
            sampling_ratio=ratio, aligned=aligned, channels_first=first, grid=grid,
        )  # fmt: skip
    # torchvision's roi_align has no box gradient: a zero cotangent for the boxes
    no_index_gradient = np.zeros(box_indices.shape, jax.dtypes.float0)
    return grad_image, jnp.zeros_like(boxes), no_index_gradient, jnp.zeros_like(scale)


_differentiable.defvjp(_forward, _backward)


def _traced(*arrays: Any) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


def run_roi_align(call: RoiAlignCall) -> jax.Array:
    """The forward op on a canonical call (arrays already JAX arrays)."""
    from cropcore_jax.ops import _host_indices_checked as host_indices_checked

    if not call.values_checked:
        host_indices_checked(call.box_indices, call.image_shape.batch)
    with _x64(call.boxes.dtype):
        scale = jnp.asarray(call.spatial_scale, call.boxes.dtype)
        grid = _grid(call, call.boxes, scale, call.output_size)
        run: Any = _differentiable
        if not _traced(call.image, call.boxes, call.box_indices):  # nothing to differentiate
            run = _differentiable.fun
        return run(
            call.image, call.boxes, call.box_indices, scale, tuple(call.output_size),
            call.sampling_ratio, call.aligned, call.mode, call.channels_first, grid,
        )  # fmt: skip


def run_roi_align_grad_image(call: RoiAlignGradImageCall) -> jax.Array:
    """The image gradient on a canonical call."""
    from cropcore_jax.ops import _host_indices_checked as host_indices_checked

    shape = call.image_shape
    if not call.values_checked:
        host_indices_checked(call.box_indices, shape.batch)
    with _x64(call.boxes.dtype):
        scale = jnp.asarray(call.spatial_scale, call.boxes.dtype)
        grid = _grid(call, call.boxes, scale, call.output_size)
        return _compiled("roi_align_grad_image")(
            call.grads, call.boxes, call.box_indices, scale,
            image_shape=(shape.batch, shape.height, shape.width, shape.depth),
            sampling_ratio=call.sampling_ratio, aligned=call.aligned,
            channels_first=call.channels_first, grid=grid,
        )  # fmt: skip
