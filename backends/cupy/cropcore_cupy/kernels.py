"""The CuPy side of the backend: compile kernels.cu with NVRTC and launch it on the caller's device.

Imported by the op hooks only (it imports cupy). Each op family's kernels form one
``cupy.RawModule``, compiled the first time the family runs on a device and cached by CuPy on disk
across processes. Launches go to the current CuPy stream of the image's device (the stream DLPack
exchanges with torch synchronise against). Arrays that arrive on another device (box tables made
from NumPy arrays land on the current device) are copied to the image's device first.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import cupy
import numpy as np

from cropcore.hookspecs import (
    CropAndResizeCall,
    GradBoxesCall,
    GradImageCall,
    RoiAlignCall,
    RoiAlignGradImageCall,
)
from cropcore_cupy import _plan

__all__ = [
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "roi_align",
    "roi_align_grad_image",
]

_lock = threading.Lock()
_modules: dict[str, Any] = {}
_NULL = np.uint64(0)  # a null pointer argument


def _module(op: str) -> Any:
    module = _modules.get(op)
    if module is None:
        with _lock:
            module = _modules.get(op)
            if module is None:
                module = cupy.RawModule(code=_plan.source(), options=_plan.nvrtc_options(op))
                _modules[op] = module
    return module


def _run(launches: Sequence[_plan.Launch]) -> None:
    for launch in launches:
        function = _module(launch.op).get_function(launch.kernel)
        args = tuple(_NULL if a is None else a for a in launch.args)
        function(launch.grid, launch.block, args)


def _to_device(device: Any, x: Any) -> Any:
    """``x`` (a CuPy array), copied to ``device`` if it is elsewhere."""
    if x.device.id != device.id:
        with device:
            x = x.copy()
    return x


def _on(device: Any, x: Any, dtype: Any) -> Any:
    """``x`` (a CuPy array) on ``device``, C-contiguous, as ``dtype``."""
    x = _to_device(device, x)
    if x.dtype != dtype:
        x = x.astype(dtype)
    return cupy.ascontiguousarray(x)


def _strided(x: Any, device: Any, data_format: str) -> tuple[Any, tuple[int, int, int, int]]:
    """``x`` on ``device`` and its (batch, row, column, channel) strides in elements.

    A strided view is read in place; only strides that are not whole elements force a copy.
    """
    x = _to_device(device, x)
    strides = _plan.element_strides(x.strides, x.itemsize)
    if strides is None:
        x = cupy.ascontiguousarray(x)
        strides = _plan.element_strides(x.strides, x.itemsize)
    assert strides is not None
    return x, _plan.logical_strides(strides, data_format)


def _call_values(device: Any, call: Any, *arrays: str) -> dict[str, Any]:
    """The arguments of a launch builder that come from the call: the box tables on ``device``
    (float32 ``boxes``, int32 ``box_indices``), ``image_shape``, ``crop_size``, and for each name
    in ``arrays`` (``"image"``, ``"grads"``) that array and its strides (``<name>_strides``)."""
    values = {
        "boxes": _on(device, call.boxes, cupy.float32),
        "box_indices": _on(device, call.box_indices, cupy.int32),
        "image_shape": call.image_shape,
        "crop_size": call.crop_size,
    }
    for name in arrays:
        values[name], values[f"{name}_strides"] = _strided(
            getattr(call, name), device, call.data_format
        )
    return values


def crop_and_resize(call: CropAndResizeCall) -> Any:
    device = call.image.device
    with device:
        crops = cupy.empty(call.output_shape, cupy.float32)
        if crops.size == 0:
            return crops
        values = _call_values(device, call, "image")
        image = values["image"]
        launch = _plan.forward(
            **values,
            crops=crops,
            image_pointer=int(image.data.ptr),
            dtype=image.dtype.name,
            method=call.method,
            extrapolation_value=call.extrapolation_value,
            data_format=call.data_format,
        )
        _run([launch])
    return crops


def crop_and_resize_grad_image(call: GradImageCall, deterministic: bool) -> Any:
    device = call.grads.device
    shape, dtype = call.output_shape, np.dtype(call.dtype)
    with device:
        size = _plan.total(shape)
        if size == 0 or call.num_boxes == 0:
            return cupy.zeros(shape, dtype)
        values = _call_values(device, call, "grads")
        num_boxes = call.num_boxes
        if deterministic:  # the gather writes every element
            output = cupy.empty(shape, dtype)
            box_axes = cupy.empty((num_boxes, 4), cupy.float32)
            box_spans = cupy.empty((num_boxes, 5), cupy.int32)
            height = call.image_shape.height
            words = _plan.row_mask_words(num_boxes, height, size * dtype.itemsize)
            row_masks = cupy.zeros((height, words), cupy.uint32) if words else None
        else:  # float16 atomics update 32-bit words: pad so the last one stays inside
            pad = 1 if dtype == np.float16 else 0
            output = cupy.zeros(size + pad, dtype)[:size].reshape(shape)
            box_axes = box_spans = row_masks = None
        launches = _plan.grad_image(
            **values,
            output=output,
            box_axes=box_axes,
            box_spans=box_spans,
            row_masks=row_masks,
            dtype=dtype.name,
            method=call.method,
            data_format=call.data_format,
            deterministic=deterministic,
        )
        _run(launches)
    return output


def crop_and_resize_grad_boxes(call: GradBoxesCall) -> Any:
    device = call.image.device
    num_boxes = call.num_boxes
    crop_height, crop_width = call.crop_size
    with device:
        elements = crop_height * crop_width * call.image_shape.depth
        if num_boxes == 0 or elements == 0:
            return cupy.zeros((num_boxes, 4), cupy.float32)
        values = _call_values(device, call, "image", "grads")
        _, chunks = _plan.grad_boxes_chunking(elements)
        output = cupy.empty((num_boxes, 4), cupy.float32)
        partial = cupy.empty((num_boxes, chunks, 4), cupy.float32) if chunks > 1 else None
        dtype = values["image"].dtype.name
        _run(_plan.grad_boxes(**values, partial=partial, output=output, dtype=dtype))
    return output


def _roi_boxes(device: Any, call: RoiAlignCall | RoiAlignGradImageCall, dtype: Any) -> Any:
    """The call's boxes on ``device`` in the compute dtype, after the samples check.

    Boxes cropcore read on the host (``values_checked``) are read again here, only for an adaptive
    grid, to refuse more than 2**31 samples as the other backends do; unread device boxes are not
    (the kernels treat a box of more than 2**31 samples as bad instead: no synchronisation).
    """
    host = None
    if _plan.roi_reads_boxes(call):
        host = cupy.asnumpy(call.boxes) if isinstance(call.boxes, cupy.ndarray) else call.boxes
        host = np.asarray(host)
    error = _plan.roi_samples_error(call, host)
    if error is not None:
        raise error
    return _on(device, call.boxes, dtype)


def roi_align(call: RoiAlignCall) -> Any:
    device = call.image.device
    with device:
        output = cupy.empty(call.output_shape, call.image.dtype)
        if output.size == 0:
            return output
        compute = cupy.float64 if call.image.dtype == cupy.float64 else cupy.float32
        boxes = _roi_boxes(device, call, compute)
        image, strides = _strided(call.image, device, call.data_format)
        launch = _plan.roi_align(
            call,
            image=image,
            boxes=boxes,
            box_indices=_on(device, call.box_indices, cupy.int32),
            output=output,
            image_strides=strides,
            dtype=image.dtype.name,
        )
        _run([launch])
    return output


def roi_align_grad_image(call: RoiAlignGradImageCall) -> Any:
    device = call.grads.device
    dtype = call.grads.dtype
    with device:
        if _plan.total(call.output_shape) == 0 or call.num_boxes == 0:
            return cupy.zeros(call.output_shape, dtype)
        compute = cupy.float64 if dtype == cupy.float64 else cupy.float32
        boxes = _roi_boxes(device, call, compute)
        grads, strides = _strided(call.grads, device, call.data_format)
        output = cupy.empty(call.output_shape, dtype)  # the gather writes every element
        height = call.image_shape.height
        words = _plan.row_mask_words(call.num_boxes, height, output.nbytes)
        launches = _plan.roi_align_grad_image(
            call,
            grads=grads,
            boxes=boxes,
            box_indices=_on(device, call.box_indices, cupy.int32),
            output=output,
            box_spans=cupy.empty((call.num_boxes, 5), cupy.int32),
            row_masks=cupy.zeros((height, words), cupy.uint32) if words else None,
            grads_strides=strides,
            dtype=dtype.name,
        )
        _run(launches)
    return output
