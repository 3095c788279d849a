"""The JAX backend's ops: TensorFlow's gradients as a ``jax.custom_vjp``, and the hooks' entry points.

Requirements:

- ``jax.grad``/``jax.vjp`` of crop_and_resize give exactly what cropcore's gradient ops give
  (TF's registered gradient: ``CropAndResizeGradImage`` for a floating-point image, in the image's
  dtype; ``CropAndResizeGradBoxes`` for the boxes, bilinear whatever the method; nothing for the
  box indices), because the backward rule *is* those kernels.
- Traceable: everything here works on tracers (``jax.jit``, ``jax.vmap``, ``jax.grad``). The only
  host read is of box indices that are concrete and on the CPU (an eager call), where an index
  outside ``[0, batch)`` raises ``IndexError`` as TF does; elsewhere the kernels' NaN rule applies
  (docs/decisions.md, "Unchecked values").
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cropcore.hookspecs import CropAndResizeCall, GradBoxesCall, GradImageCall
from cropcore_jax import kernels

__all__ = ["crop_and_resize", "run_crop_and_resize", "run_grad_boxes", "run_grad_image"]

_FLOAT_DTYPES = ("float16", "float32", "float64")


@functools.cache
def _compiled(name: str) -> Any:
    """Kernel ``name`` of :mod:`cropcore_jax.kernels` under ``jax.jit`` (inlined into a caller's
    trace; compiled once per static arguments and shapes when called eagerly)."""
    return jax.jit(getattr(kernels, name), static_argnames=kernels.STATIC[name])


def _traced(*arrays: Any) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in arrays)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def crop_and_resize(
    image: jax.Array,
    boxes: jax.Array,
    box_indices: jax.Array,
    extrapolation_value: jax.Array,
    crop_size: tuple[int, int],
    method: str,
    channels_first: bool,
) -> jax.Array:
    """:func:`cropcore_jax.kernels.crop_and_resize`, differentiable with TF's gradients.

    Arguments and result as for the kernel; ``boxes`` float32 (N, 4), ``box_indices`` int32 (N,),
    ``extrapolation_value`` a float32 scalar array (an argument, not a static value: static
    arguments are compared by equality, and -0.0 == 0.0). It gets a zero gradient, as in TF,
    where it is an attribute.
    """
    return _compiled("crop_and_resize")(
        image, boxes, box_indices, crop_size=crop_size, method=method,
        extrapolation_value=extrapolation_value, channels_first=channels_first,
    )  # fmt: skip


def _forward(image, boxes, box_indices, extrapolation_value, crop_size, method, channels_first):
    crops = crop_and_resize.fun(
        image, boxes, box_indices, extrapolation_value, crop_size, method, channels_first
    )
    return crops, (image, boxes, box_indices, extrapolation_value)


def _backward(crop_size, method, channels_first, residuals, grads):
    image, boxes, box_indices, extrapolation_value = residuals
    grads = grads.astype(jnp.float32)
    dtype = jnp.dtype(image.dtype).name
    if dtype in _FLOAT_DTYPES:
        shape = image.shape
        nhwc = (shape[0], shape[2], shape[3], shape[1]) if channels_first else tuple(shape)
        grad_image = _compiled("crop_and_resize_grad_image")(
            grads, boxes, box_indices, nhwc, method, dtype, channels_first
        )
    else:  # an integer image has no gradient (JAX's cotangent type for integers)
        grad_image = np.zeros(image.shape, jax.dtypes.float0)
    # TF: "we still approximate grad1 using the gradient derived from bilinear sampling".
    grad_boxes = _compiled("crop_and_resize_grad_boxes")(
        grads, image, boxes, box_indices, channels_first
    )
    no_index_gradient = np.zeros(box_indices.shape, jax.dtypes.float0)
    return grad_image, grad_boxes, no_index_gradient, jnp.zeros_like(extrapolation_value)


crop_and_resize.defvjp(_forward, _backward)


# --------------------------------------------------------------------------------------------------
# Running a canonical call (cropcore's hooks)


def _host_indices_checked(box_indices: Any, batch: int) -> None:
    """Raise ``IndexError`` for a box index outside ``[0, batch)`` when the indices are concrete
    and on the CPU (reading them costs no device synchronisation); tracers and device arrays are
    left to the kernels' NaN rule."""
    if isinstance(box_indices, jax.core.Tracer) or box_indices.size == 0:
        return
    if any(device.platform != "cpu" for device in box_indices.devices()):
        return
    host = np.asarray(box_indices)
    bad = (host < 0) | (host >= batch)
    if bad.any():
        i = int(np.argmax(bad))
        raise IndexError(
            f"box_indices must be in [0, batch) = [0, {batch}); got box_indices[{i}] = "
            f"{int(host[i])}"
        )


def run_crop_and_resize(call: CropAndResizeCall) -> jax.Array:
    """The forward op on a canonical call (arrays already JAX arrays)."""
    if not call.values_checked:
        _host_indices_checked(call.box_indices, call.image_shape.batch)
    run = crop_and_resize
    if not _traced(call.image, call.boxes, call.box_indices):  # nothing to differentiate
        run = crop_and_resize.fun
    extrapolation_value = jnp.asarray(np.float32(call.extrapolation_value))
    return run(
        call.image,
        call.boxes,
        call.box_indices,
        extrapolation_value,
        tuple(call.crop_size),
        call.method,
        call.channels_first,
    )


def run_grad_image(call: GradImageCall) -> jax.Array:
    """The image gradient on a canonical call."""
    shape = call.image_shape
    if not call.values_checked:
        _host_indices_checked(call.box_indices, shape.batch)
    return _compiled("crop_and_resize_grad_image")(
        call.grads,
        call.boxes,
        call.box_indices,
        (shape.batch, shape.height, shape.width, shape.depth),
        call.method,
        call.dtype,
        call.channels_first,
    )


def run_grad_boxes(call: GradBoxesCall) -> jax.Array:
    """The box gradient on a canonical call."""
    if not call.values_checked:
        _host_indices_checked(call.box_indices, call.image_shape.batch)
    arrays = (call.grads, call.image, call.boxes, call.box_indices)
    return _compiled("crop_and_resize_grad_boxes")(*arrays, call.channels_first)
