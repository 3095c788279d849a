"""Calls of the compiled plane-block loops (``_native_planes.c``) for NCHW float32 tensors with
many channels: the forward of an NCHW image into NCHW crops, and the image gradient of NCHW crops
into a contiguous NCHW image gradient, neither transposing a whole tensor.

Requirements (besides :mod:`._native`'s): work is split by blocks of :data:`_PLANE_BLOCK` channels,
each taken whole by one thread; a thread gathers its block of every image channels-innermost into
a buffer that stays in its cache and runs every box over it (the gradient sums into such a
buffer), so each pixel of each channel still receives its contributions in TF's order and the
result does not depend on the threads. Block buffers over :data:`_PLANE_BUFFER_BYTES` are not
taken: those calls run the general loops.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cropcore import hostmem
from cropcore_torch._native import (
    _FEW_CHANNELS,
    _STREAM_BYTES,
    _check,
    _Loops,
    _loops,
    _run_split,
    _scratch_of,
)

__all__ = ["grad_image_planes"]


#: Channels per unit of work of the plane-block loops: a thread gathers a block of every image
#: channels-innermost into a buffer that stays in its cache and runs every box over it; an NCHW
#: box's result for 32 channels of a 7 x 7 crop is 98 whole cache lines.
_PLANE_BLOCK = 32
#: The most memory one thread's block buffer may take (bytes); larger images take the other path.
_PLANE_BUFFER_BYTES = 32 << 20
_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64}


def _planes(image: Tensor, crops: Tensor) -> bool:
    """Whether the plane-block forward runs for the NHWC views ``image`` and ``crops``: both are
    channel planes (NCHW; channels not innermost), float32, with more than :data:`_FEW_CHANNELS`
    channels, and a block of the image fits :data:`_PLANE_BUFFER_BYTES`."""
    batch, height, width, depth = image.shape
    return (
        image.dtype == torch.float32
        and depth > _FEW_CHANNELS
        and image.stride(3) != 1
        and crops.stride(3) != 1
        and batch * height * width * _PLANE_BLOCK * 4 <= _PLANE_BUFFER_BYTES
    )


def _planes_strided(x: Tensor) -> tuple[int, ...]:
    """An NHWC view as the plane-block loops take it: address, then strides in NCHW order."""
    n, y, x_, d = x.stride()
    return (x.data_ptr(), n, d, y, x_)


def _fill_crops_planes(
    loops: _Loops, out: Tensor, image: Tensor, method: str, extrapolation_value: float
) -> None:
    """:func:`fill_crops` for an NCHW float32 image and NCHW crops (NHWC views ``image``, ``out``):
    ``crop_planes_f32`` over blocks of :data:`_PLANE_BLOCK` channels, neither tensor transposed
    whole; large results are streamed out (:data:`_STREAM_BYTES`)."""
    lib, indices, tables = loops
    batch, height, width, depth = image.shape
    num_boxes, crop_height, crop_width, _ = out.shape
    fixed = (
        *_planes_strided(image),
        batch,
        height,
        width,
        indices.data_ptr(),
        num_boxes,
        crop_height,
        crop_width,
        *tables.pointers(method == "nearest"),
        int(method == "nearest"),
        float(extrapolation_value),
        *_planes_strided(out),
        depth,
        _PLANE_BLOCK,
        int(out.numel() * 4 > _STREAM_BYTES),
    )
    floats = (batch * height * width + 2 * crop_height * crop_width) * _PLANE_BLOCK
    blocks = -(-depth // _PLANE_BLOCK)
    results = _run_split(
        lib.crop_planes_f32, fixed, blocks, out.numel(), _scratch_of(floats), per_thread=2
    )
    _check(results, indices, batch)


def grad_image_planes(
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    image_shape: tuple[int, int, int, int],
    method: str,
    dtype: torch.dtype,
    *,
    loops: _Loops | None = None,
) -> Tensor | None:
    """The image gradient of NCHW float32 ``grads`` (N, depth, crop_height, crop_width) as a new
    contiguous NCHW ``dtype`` (float32 or float64) tensor (batch, depth, height, width), summed by
    ``grad_image_planes_*`` over blocks of channels in TF's order, without transposing either
    tensor whole; ``None`` where this does not apply (channels innermost or few, another dtype, a
    block buffer over :data:`_PLANE_BUFFER_BYTES`, sizes the loops are not exact for): the caller
    takes the general path.

    ``image_shape``: (batch, height, width, depth). ``loops``: the forward's, as for
    :func:`fill_grad_image`.
    """
    batch, height, width, depth = image_shape
    nhwc = grads.permute(0, 2, 3, 1)
    size = 8 if dtype == torch.float64 else 4
    if (
        depth <= _FEW_CHANNELS
        or grads.dtype != torch.float32
        or dtype not in _NUMPY_FLOATS
        or nhwc.stride(3) == 1
        or batch * height * width * _PLANE_BLOCK * size > _PLANE_BUFFER_BYTES
    ):
        return None
    if loops is None:
        loops = _loops(boxes, box_indices, (batch, height, width, depth), nhwc.shape)
    if loops is None:
        return None
    lib, indices, tables = loops
    num_boxes, _, crop_height, crop_width = grads.shape
    out = torch.from_numpy(
        hostmem.pool().empty((batch, depth, height, width), _NUMPY_FLOATS[dtype])
    )
    if not (out.numel() and grads.numel()):
        return out.zero_()
    fixed = (
        *_planes_strided(nhwc),
        indices.data_ptr(),
        num_boxes,
        crop_height,
        crop_width,
        *tables.pointers(method == "nearest"),
        int(method == "nearest"),
        out.data_ptr(),
        batch,
        height,
        width,
        depth,
        _PLANE_BLOCK,
    )
    floats = (batch * height * width * size // 4 + crop_height * crop_width) * _PLANE_BLOCK
    name = "grad_image_planes_f32" if dtype == torch.float32 else "grad_image_planes_f64"
    blocks = -(-depth // _PLANE_BLOCK)
    results = _run_split(
        getattr(lib, name), fixed, blocks, grads.numel(), _scratch_of(floats), per_thread=2
    )
    _check(results, indices, batch)
    return out
