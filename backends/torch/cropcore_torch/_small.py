"""The torch backend's small CPU forward: one compiled call per crop (issue 16).

Requirements:

- **What the general path computes, bit for bit.** The compiled ``crop_packed_*`` of
  ``_native.c`` (``crop_once_*`` with its arguments packed in one int64 array: ``ctypes`` costs
  about 0.2 us per argument) computes the sample tables and runs ``crop_*`` over every row, as
  :func:`cropcore_torch._native.fill_crops` does for a call it runs on the calling thread,
  without scratch or streaming. This path takes only such calls (a result of fewer than
  ``2 * _native._MIN_WORK_PER_THREAD`` elements, channels read and written in place) and returns
  ``None`` for every other, which then takes the general path.
- **Cheap.** A tiny call (1 x 16 x 16 image, 4 boxes, 7 x 7) costs about as much in Python as in
  its loops: one ``ctypes`` call of two arguments instead of three of 11 to 28, the result
  allocated once by ``torch.empty`` in its final layout (no permuted views, no NumPy memory),
  the tables allocated by the C side unless kept, the shape checks as int comparisons.
- **Safe.** The same shape checks as :func:`cropcore_torch._native._box_indices` (the op can be
  called directly), and a box index outside ``[0, batch)`` raises the same ``IndexError`` before
  anything of its box is read.
- **Reusable tables.** With ``keep``, the tables and checked box indices are kept as
  :class:`cropcore_torch._native._Loops`, which the image gradient of the same call reuses.
"""

from __future__ import annotations

from array import array

import numpy as np
import torch
from torch import Tensor

from cropcore_torch import _native, kernels
from cropcore_torch._build import _SUFFIX, library

__all__ = ["crop_and_resize", "grad_image"]

# Results below this many elements run on the calling thread in fill_crops (see _run_split).
_SMALL = 2 * _native._MIN_WORK_PER_THREAD
_FEW_CHANNELS = _native._FEW_CHANNELS
_FLOAT32, _INT32 = torch.float32, torch.int32
_CHANNELS_LAST = torch.channels_last
# Results on the CPU in float32 whatever torch's default dtype and device are.
_CPU = torch.device("cpu")
_RESULT = {"dtype": _FLOAT32, "device": _CPU}
_CROP = {dtype: f"crop_packed_{suffix}" for dtype, suffix in _SUFFIX.items()}
_GRAD_IMAGE = {torch.float32: "grad_image_packed_f32", torch.float64: "grad_image_packed_f64"}

# The compiled functions, by name, for the library they were looked up in.
_functions: dict[str, object] = {}
_functions_of: list[object] = [None]


def _function(lib: object, name: str) -> object:
    if _functions_of[0] is not lib:
        _functions.clear()
        _functions_of[0] = lib
    function = _functions.get(name)
    if function is None:
        function = _functions[name] = getattr(lib, name)
    return function


def _loop_boxes(boxes: Tensor, box_indices: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes as contiguous float32 and box indices as contiguous int32: what the loops read."""
    if boxes.dtype != _FLOAT32:
        boxes = boxes.to(_FLOAT32)
    if not boxes.is_contiguous():
        boxes = boxes.contiguous()
    if box_indices.dtype != _INT32:
        box_indices = box_indices.to(_INT32)
    if not box_indices.is_contiguous():
        box_indices = box_indices.contiguous()
    return boxes, box_indices


def crop_and_resize(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    crop_height: int,
    crop_width: int,
    method: str,
    extrapolation_value: float,
    channels_first: bool,
    keep: list | None = None,
) -> Tensor | None:
    """The op ``cropcore::crop_and_resize`` on a small CPU call in one compiled pass, or ``None``.

    Args:
        image: a CPU tensor of one of the nine image dtypes (bfloat16 already widened), NHWC, or
            NCHW when ``channels_first``; any strides.
        boxes: (N, 4), cast to float32 here; box_indices: integer (N,), cast to int32 here.
        crop_height, crop_width, method, extrapolation_value, channels_first: as the op's.
        keep: a list that receives the loops' box indices and tables (see the module docstring).

    Returns:
        The op's result (float32, (N, crop_height, crop_width, depth), or (N, depth, crop_height,
        crop_width) for channels_first, channels-last in memory when the image is), or ``None``
        when the call is not small or not one the one-pass loop runs as the general path would.
    """
    lib = library()
    if lib is None:
        return None
    if channels_first:
        batch, depth, height, width = image.shape
        stride_b, stride_d, stride_y, stride_x = image.stride()
    else:
        batch, height, width, depth = image.shape
        stride_b, stride_y, stride_x, stride_d = image.stride()
    num_boxes = boxes.shape[0]
    if (
        boxes.dim() != 2
        or boxes.shape[1] != 4
        or box_indices.dim() != 1
        or box_indices.shape[0] != num_boxes
    ):
        return None  # the general path refuses it
    crop_pixels = crop_height * crop_width
    total = num_boxes * crop_pixels * depth
    if not 0 < total < _SMALL or height <= 0 or width <= 0 or batch <= 0:
        return None
    if max(height, width) > _native._MAX_IMAGE_SIDE:
        return None
    few_channels = depth <= _FEW_CHANNELS
    if not few_channels and stride_d != 1:
        return None  # the general path transposes the image or writes channel planes
    if channels_first:
        # The result follows the image's memory format (kernels.output_is_channels_last).
        if image.is_contiguous() or not image.is_contiguous(memory_format=_CHANNELS_LAST):
            if not few_channels:
                return None  # a contiguous NCHW result with many channels: plane by plane
            out = torch.empty((num_boxes, depth, crop_height, crop_width), **_RESULT)
            out_strides = (depth * crop_pixels, crop_width, 1, crop_pixels)
        else:
            out = torch.empty(
                (num_boxes, depth, crop_height, crop_width), memory_format=_CHANNELS_LAST, **_RESULT
            )
            out_strides = (crop_pixels * depth, crop_width * depth, depth, 1)
    else:
        out = torch.empty((num_boxes, crop_height, crop_width, depth), **_RESULT)
        out_strides = (crop_pixels * depth, crop_width * depth, depth, 1)
    boxes, indices = _loop_boxes(boxes, box_indices)
    block = address = None
    if keep is not None:  # tables the image gradient reuses; otherwise the C side's own
        block = np.empty(29 * num_boxes * (crop_height + crop_width), np.uint8)
        address = block.__array_interface__["data"][0]
    packed = array(
        "q",
        (
            image.data_ptr(), stride_b, stride_y, stride_x, stride_d, batch, height, width,
            boxes.data_ptr(), indices.data_ptr(), num_boxes, crop_height, crop_width, depth,
            address or 0, method == "nearest", out.data_ptr(), *out_strides,
        ),
    )  # fmt: skip
    bad = _function(lib, _CROP[image.dtype])(packed.buffer_info()[0], float(extrapolation_value))  # type: ignore[operator]
    if bad >= 0:
        _native._check([bad], indices, batch)
    if bad == -2:
        raise MemoryError("cannot allocate the sample tables of a small crop")
    if keep is not None:
        tables = _native._Tables(block, address, (num_boxes, crop_height, crop_width))
        keep.append(_native._Loops(lib, indices, tables))
    return out


def grad_image(
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    image_shape: tuple[int, int, int, int],
    method: str,
    dtype: torch.dtype,
    channels_first: bool,
    loops: _native._Loops | None = None,
) -> Tensor | None:
    """The op ``cropcore::crop_and_resize_grad_image`` on a small CPU call in one compiled pass,
    or ``None``.

    Args:
        grads: (N, crop_height, crop_width, depth), or NCHW when ``channels_first``; cast to
            float32 here; any strides.
        boxes, box_indices: as :func:`crop_and_resize` takes them.
        image_shape: ``(batch, height, width, depth)``. method: ``"bilinear"`` or ``"nearest"``.
        dtype: the result's, float32 or float64 (float16 sums go through torch: ``None``).
        loops: what :func:`crop_and_resize` kept for the forward of the same call.

    Returns:
        ``dtype`` (batch, height, width, depth), or contiguous NCHW for channels_first: what the
        general path returns, bit for bit (each pixel's terms added in TF's order); or ``None``
        when the call is not small (the general path splits it across threads), or when NCHW
        ``grads`` are channels-last in memory (the general path's result follows them,
        docs/decisions.md).
    """
    name = _GRAD_IMAGE.get(dtype)
    lib = library()
    if name is None or lib is None or kernels.output_is_channels_last(grads, channels_first):
        return None
    batch, height, width, depth = image_shape
    if channels_first:
        num_crops, grads_depth, crop_height, crop_width = grads.shape
    else:
        num_crops, crop_height, crop_width, grads_depth = grads.shape
    num_boxes = boxes.shape[0]
    if (
        boxes.dim() != 2
        or boxes.shape[1] != 4
        or box_indices.dim() != 1
        or box_indices.shape[0] != num_boxes
        or num_crops != num_boxes
        or grads_depth != depth
    ):
        return None  # the general path refuses it
    total = num_crops * crop_height * crop_width * depth
    if not 0 < total < _SMALL or height <= 0 or width <= 0 or batch <= 0:
        return None
    if max(height, width) > _native._MAX_IMAGE_SIDE:
        return None
    if grads.dtype != _FLOAT32:
        grads = grads.to(_FLOAT32)
    if channels_first:
        out = torch.zeros((batch, depth, height, width), dtype=dtype, device=_CPU)
        out_strides = (depth * height * width, width, 1, height * width)
        stride_n, stride_d, stride_y, stride_x = grads.stride()
    else:
        out = torch.zeros((batch, height, width, depth), dtype=dtype, device=_CPU)
        out_strides = (height * width * depth, width * depth, depth, 1)
        stride_n, stride_y, stride_x, stride_d = grads.stride()
    if loops is None:
        boxes, indices = _loop_boxes(boxes, box_indices)
        tables = 0
    else:
        indices, tables = loops.indices, loops.tables.address
    packed = array(
        "q",
        (
            grads.data_ptr(), stride_n, stride_y, stride_x, stride_d, indices.data_ptr(),
            num_boxes, crop_height, crop_width, depth, boxes.data_ptr(), height, width, tables,
            method == "nearest", out.data_ptr(), *out_strides, batch,
        ),
    )  # fmt: skip
    bad = _function(lib, name)(packed.buffer_info()[0])  # type: ignore[operator]
    if bad >= 0:
        _native._check([bad], indices, batch)
    if bad == -2:
        raise MemoryError("cannot allocate the sample tables of a small image gradient")
    return out
