"""How a call becomes kernel launches: which kernels, on which grids, with which arguments.

Requirements:

- **No CuPy here, and no device.** Everything here is plain Python on shapes, strides and
  pointers, so that it is tested where there is no GPU: the launches built here are the ones the
  GPU kernels receive, and the ones the host test harness (tests/cupy_host_harness.cpp, which
  compiles the kernels' own arithmetic for the CPU) receives in the tests.
- **One name to import.** The launch builders (:func:`forward`, :func:`grad_image`,
  :func:`grad_boxes`, :func:`roi_align`, :func:`roi_align_grad_image`) live here; the parts they are built from live in their own modules and are
  re-exported, so that callers write ``_plan.<name>`` for all of them:

  - :mod:`cropcore_cupy._limits`: what the kernels decline (index widths, image sizes);
  - :mod:`cropcore_cupy._abi`: kernel names, parameter lists, argument lists, :class:`Launch`;
  - :mod:`cropcore_cupy._geometry`: grids and blocks, vector widths, chunks, strides, divisors;
  - :mod:`cropcore_cupy._source`: the CUDA source NVRTC compiles, and its options.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cropcore.roi_samples import MAX_SAMPLES, samples_of
from cropcore_cupy._abi import (
    CTYPES,
    GRAD_DTYPES,
    GRADS_AXES,
    IMAGE_AXES,
    PARAMS,
    ROI_DTYPES,
    VECTOR_WIDTHS,
    Launch,
    arguments,
    family,
    kernel_names,
    stride_values,
)
from cropcore_cupy._geometry import (
    BLOCK,
    GRAD_BOXES_CHUNK,
    GROUPS_PER_THREAD,
    MAX_GRID_Y,
    contiguous_strides,
    element_strides,
    fast_divider,
    grad_boxes_chunking,
    launch_shape,
    logical_strides,
    rows_and_groups,
    total,
    vector_width,
)
from cropcore_cupy._limits import MAX_AXIS, MAX_COUNT, decline_reason
from cropcore_cupy._source import (
    ARCHITECTURES,
    MIN_COMPUTE_CAPABILITY,
    NVRTC_OPTIONS,
    nvrtc_options,
    source,
)

__all__ = [
    "ARCHITECTURES",
    "BLOCK",
    "CTYPES",
    "GRADS_AXES",
    "GRAD_BOXES_CHUNK",
    "GRAD_DTYPES",
    "GROUPS_PER_THREAD",
    "IMAGE_AXES",
    "MAX_AXIS",
    "MAX_COUNT",
    "MAX_GRID_Y",
    "MIN_COMPUTE_CAPABILITY",
    "NVRTC_OPTIONS",
    "PARAMS",
    "ROI_CHANNELS",
    "ROI_DTYPES",
    "VECTOR_WIDTHS",
    "Launch",
    "arguments",
    "decline_reason",
    "element_strides",
    "family",
    "fast_divider",
    "forward",
    "grad_boxes",
    "grad_boxes_chunking",
    "grad_image",
    "kernel_names",
    "launch_shape",
    "logical_strides",
    "nvrtc_options",
    "roi_align",
    "roi_align_grad_image",
    "roi_reads_boxes",
    "roi_samples_error",
    "rows_and_groups",
    "source",
    "stride_values",
    "total",
    "vector_width",
]


def _nchw(data_format: str) -> int:
    return int(data_format == "channels_first")


def _shared_values(
    boxes: Any, box_indices: Any, image_shape: Sequence[int], crop_size: tuple[int, int]
) -> dict[str, Any]:
    """The parameters every kernel family takes (CROPCORE_SHARED_ARGS): box tables and sizes.

    ``batch`` is what the kernels check each box index against (a bad one gives NaN or nothing:
    docs/cupy.md); the indices themselves are passed as a device array and never read here.
    """
    batch, height, width, depth = (int(d) for d in image_shape)
    crop_height, crop_width = crop_size
    return {
        "boxes": boxes,
        "box_indices": box_indices,
        "batch": batch,
        "height": height,
        "width": width,
        "depth": depth,
        "crop_height": crop_height,
        "crop_width": crop_width,
    }


def forward(
    *,
    image: Any,
    boxes: Any,
    box_indices: Any,
    crops: Any,
    image_shape: Sequence[int],
    image_strides: Sequence[int],
    image_pointer: int,
    dtype: str,
    crop_size: tuple[int, int],
    method: str,
    extrapolation_value: float,
    data_format: str,
) -> Launch:
    """The CropAndResize launch. ``image_shape``/``image_strides``: (batch, row, column, channel),
    strides in elements; ``crops``: a new C-contiguous float32 array in ``data_format``.
    """
    depth = int(image_shape[3])
    crop_height, crop_width = crop_size
    num_boxes = int(boxes.shape[0])
    nchw = _nchw(data_format)
    vec = 1
    if not nchw:
        vec = vector_width(
            depth, np.dtype(dtype).itemsize, image_strides, image_shape, image_pointer
        )
    rows, groups = rows_and_groups(num_boxes, crop_height, crop_width, depth, nchw, vec)
    row_length = crop_width if nchw else crop_width * depth
    groups_per_pixel = max(1, depth // vec)
    kernel = f"cropcore_forward_{dtype}_v{vec}"
    values = {
        "image": image,
        **_shared_values(boxes, box_indices, image_shape, crop_size),
        "crops": crops,
        **stride_values("stride", IMAGE_AXES, image_strides),
        "nchw": nchw,
        "nearest": int(method == "nearest"),
        "extrapolation_value": extrapolation_value,
        "rows": rows,
        "groups": groups,
        "row_length": row_length,
        "groups_per_pixel": groups_per_pixel,
        "by_crop_height": fast_divider(crop_height),
        "by_depth": fast_divider(max(1, depth)),
        "by_groups_per_pixel": fast_divider(groups_per_pixel),
    }
    grid, block = launch_shape(rows, groups)
    return Launch(kernel, "forward", grid, block, arguments(kernel, values))


#: The most memory the deterministic image gradient's row masks may take besides the gradient's
#: own size (:func:`row_mask_words`).
ROW_MASK_BYTES = 1 << 20


def row_mask_words(num_boxes: int, height: int, output_bytes: int) -> int:
    """Words per image row of the gather's row masks, or 0 to run without them.

    A mask holds one bit per box for each image row (``(height, words)`` uint32, zeroed): the box
    set-up sets the bits of the rows each box's span covers, and each image-gradient element then
    visits only the boxes whose bits its row has, in increasing order (TF's order), instead of
    testing every box. Used where the masks take at most ``max(output_bytes, ROW_MASK_BYTES)``.
    """
    words = -(-num_boxes // 32)
    if num_boxes <= 0 or height <= 0:
        return 0
    return words if 4 * words * height <= max(output_bytes, ROW_MASK_BYTES) else 0


def grad_image(
    *,
    grads: Any,
    boxes: Any,
    box_indices: Any,
    output: Any,
    box_axes: Any,
    box_spans: Any,
    row_masks: Any = None,
    grads_strides: Sequence[int],
    image_shape: Sequence[int],
    crop_size: tuple[int, int],
    dtype: str,
    method: str,
    data_format: str,
    deterministic: bool,
) -> list[Launch]:
    """The CropAndResizeGradImage launches.

    Scatter (``deterministic=False``): one launch, atomic, on a zeroed ``output``. Gather: a box
    set-up (filling ``box_axes``, float32 ``(num_boxes, 4)``, and ``box_spans``, int32
    ``(num_boxes, 5)``, and ``row_masks`` when given: zeroed uint32 ``(height,``
    :func:`row_mask_words` ``)``) and one launch that writes every element of ``output`` (no
    zeroing).
    ``output``: C-contiguous in ``data_format``; ``grads_strides``: (box, y, x, channel).
    """
    batch, height, width, depth = (int(d) for d in image_shape)
    crop_height, crop_width = crop_size
    num_boxes = int(boxes.shape[0])
    nchw = _nchw(data_format)
    out_strides = contiguous_strides((batch, height, width, depth), data_format)
    values = {
        "grads": grads,
        **_shared_values(boxes, box_indices, image_shape, crop_size),
        "output": output,
        "box_axes": box_axes if deterministic else None,
        "box_spans": box_spans if deterministic else None,
        "row_masks": row_masks if deterministic else None,
        "mask_words": int(row_masks.shape[1]) if deterministic and row_masks is not None else 0,
        "num_boxes": num_boxes,
        **stride_values("grads_stride", GRADS_AXES, grads_strides),
        **stride_values("output_stride", IMAGE_AXES, out_strides),
        "nchw": nchw,
        "nearest": int(method == "nearest"),
        "by_crop_height": fast_divider(crop_height),
        "by_depth": fast_divider(max(1, depth)),
        "by_height": fast_divider(height),
    }
    if not deterministic:
        rows, groups = rows_and_groups(num_boxes, crop_height, crop_width, depth, nchw)
        kernel = f"cropcore_grad_image_scatter_{dtype}"
        grid, block = launch_shape(rows, groups)
        values.update(rows=rows, groups=groups)
        return [Launch(kernel, "grad_image", grid, block, arguments(kernel, values))]
    setup = f"cropcore_grad_image_setup_{dtype}"
    setup_values = {**values, "rows": num_boxes, "groups": 1}
    setup_grid = (max(1, -(-num_boxes // BLOCK)), 1, 1)
    rows, groups = rows_and_groups(batch, height, width, depth, nchw)
    gather = f"cropcore_grad_image_gather_{dtype}"
    grid, block = launch_shape(rows, groups)
    values.update(rows=rows, groups=groups)
    return [
        Launch(setup, "grad_image", setup_grid, (BLOCK, 1, 1), arguments(setup, setup_values)),
        Launch(gather, "grad_image", grid, block, arguments(gather, values)),
    ]


def grad_boxes(
    *,
    grads: Any,
    image: Any,
    boxes: Any,
    box_indices: Any,
    partial: Any,
    output: Any,
    grads_strides: Sequence[int],
    image_shape: Sequence[int],
    image_strides: Sequence[int],
    crop_size: tuple[int, int],
    dtype: str,
) -> list[Launch]:
    """The CropAndResizeGradBoxes launches: per-chunk sums, then (when a box has more than one
    chunk) their combination. ``partial``: float32 ``(num_boxes, chunks, 4)`` or None when
    :func:`grad_boxes_chunking` gives one chunk; ``output``: float32 ``(num_boxes, 4)``.
    """
    depth = int(image_shape[3])
    crop_height, crop_width = crop_size
    num_boxes = int(boxes.shape[0])
    elements = crop_height * crop_width * depth
    chunk, chunks = grad_boxes_chunking(elements)
    values = {
        "grads": grads,
        "image": image,
        **_shared_values(boxes, box_indices, image_shape, crop_size),
        "partial": partial if chunks > 1 else None,
        "output": output,
        "num_boxes": num_boxes,
        **stride_values("grads_stride", GRADS_AXES, grads_strides),
        **stride_values("image_stride", IMAGE_AXES, image_strides),
        "elements": elements,
        "chunk": chunk,
        "chunks": chunks,
        "by_row_elements": fast_divider(max(1, crop_width * depth)),
        "by_depth": fast_divider(max(1, depth)),
    }
    block = (BLOCK, 1, 1)
    kernel = f"cropcore_grad_boxes_{dtype}"
    launches = [
        Launch(kernel, "grad_boxes", (num_boxes, chunks, 1), block, arguments(kernel, values))
    ]
    if chunks > 1:
        finish = f"cropcore_grad_boxes_finish_{dtype}"
        launches.append(
            Launch(finish, "grad_boxes", (num_boxes, 1, 1), block, arguments(finish, values))
        )
    return launches


# --------------------------------------------------------------------------------------------------
# roi_align


#: Channels one roi_align thread computes side by side, forward and image gradient (roi_align.cuh's
#: CROPCORE_ROI_CHANNELS).
ROI_CHANNELS = 4


def roi_reads_boxes(call: Any) -> bool:
    """Whether the samples check reads the call's box values: only where cropcore has read them on
    the host already (``values_checked``) and the grid is adaptive (a fixed one needs shapes only).
    """
    return bool(call.values_checked) and call.sampling_ratio <= 0


def roi_samples_error(call: Any, host_boxes: Any) -> ValueError | None:
    """The error of a roi_align call that would take more than ``MAX_SAMPLES`` samples, or None.

    ``host_boxes``: the call's boxes as a NumPy array, or None where they are on the device and
    unread; then only a fixed ``sampling_ratio`` is checked (from the shapes), and the kernels
    treat an adaptive box of more than 2**31 samples as bad (docs/cupy.md).
    """
    pooled_height, pooled_width = call.output_size
    if call.sampling_ratio > 0:
        per_box = call.sampling_ratio**2 * pooled_height * pooled_width
        total = per_box * call.num_boxes
    elif host_boxes is None:
        return None
    else:
        total = samples_of(
            host_boxes,
            call.spatial_scale,
            call.aligned,
            call.output_size,
            call.sampling_ratio,
            np.dtype(host_boxes.dtype),
        )
    if total <= MAX_SAMPLES:
        return None
    return ValueError(
        f"roi_align would take {total} samples (output bins x samples per bin over every "
        f"box), more than {MAX_SAMPLES}: the boxes are huge for an adaptive sampling_ratio; "
        "pass a positive sampling_ratio"
    )


def _roi_values(call: Any, boxes: Any, box_indices: Any) -> dict[str, Any]:
    """The parameters both roi_align kernel families take from the call."""
    batch, height, width, depth = (int(d) for d in call.image_shape)
    pooled_height, pooled_width = call.output_size
    return {
        "boxes": boxes,
        "box_indices": box_indices,
        "batch": batch,
        "height": height,
        "width": width,
        "depth": depth,
        "pooled_height": pooled_height,
        "pooled_width": pooled_width,
        "sampling_ratio": max(int(call.sampling_ratio), 0),
        "aligned": int(call.aligned),
        "nchw": _nchw(call.data_format),
        "spatial_scale": float(call.spatial_scale),
        "spatial_scale_f32": np.float32(call.spatial_scale),
    }


def roi_align(
    call: Any,
    *,
    image: Any,
    boxes: Any,
    box_indices: Any,
    output: Any,
    image_strides: Sequence[int],
    dtype: str,
) -> Launch:
    """The roi_align launch: one thread per :data:`ROI_CHANNELS` channels of each output bin.

    ``boxes``: ``(num_boxes, 4)`` C-contiguous in the compute dtype (float64 for a float64
    ``image``, else float32); ``box_indices``: int32; ``image_strides``: (batch, row, column,
    channel) in elements; ``output``: a new C-contiguous array of ``call.output_shape`` and
    ``dtype`` (the image's: float16, float32 or float64).
    """
    depth = int(call.image_shape.depth)
    pooled_height, pooled_width = call.output_size
    nchw = _nchw(call.data_format)
    chunks = -(-depth // ROI_CHANNELS)  # each thread computes this many channels side by side
    rows, groups = rows_and_groups(call.num_boxes, pooled_height, pooled_width, chunks, nchw)
    out_strides = contiguous_strides(
        (call.num_boxes, pooled_height, pooled_width, depth), call.data_format
    )
    kernel = f"cropcore_roi_align_forward_{dtype}"
    values = {
        "image": image,
        **_roi_values(call, boxes, box_indices),
        "output": output,
        "max_mode": int(call.mode == "max"),
        **stride_values("stride", IMAGE_AXES, image_strides),
        **stride_values("output_stride", GRADS_AXES, out_strides),
        "rows": rows,
        "groups": groups,
        "by_pooled_height": fast_divider(pooled_height),
        "by_chunks": fast_divider(max(1, chunks)),
    }
    grid, block = launch_shape(rows, groups)
    return Launch(kernel, "roi_align", grid, block, arguments(kernel, values))


def roi_align_grad_image(
    call: Any,
    *,
    grads: Any,
    boxes: Any,
    box_indices: Any,
    output: Any,
    box_spans: Any,
    row_masks: Any = None,
    grads_strides: Sequence[int],
    dtype: str,
) -> list[Launch]:
    """The roi_align image-gradient launches: a box set-up (filling ``box_spans``, int32
    ``(num_boxes, 5)``, and ``row_masks`` when given: zeroed uint32 ``(height,``
    :func:`row_mask_words` ``)``), then one thread per :data:`ROI_CHANNELS` channels of
    each pixel of ``output`` (C-contiguous in the call's layout, ``call.output_shape``,
    ``dtype``: the grads'), which it writes whole (no zeroing). The sums run in torchvision's order: deterministic, no floating-point atomics.
    """
    batch, height, width, depth = (int(d) for d in call.image_shape)
    nchw = _nchw(call.data_format)
    out_strides = contiguous_strides((batch, height, width, depth), call.data_format)
    chunks = -(-depth // ROI_CHANNELS)  # each thread sums this many channels side by side
    rows, groups = rows_and_groups(batch, height, width, chunks, nchw)
    values = {
        "grads": grads,
        **_roi_values(call, boxes, box_indices),
        "output": output,
        "box_spans": box_spans,
        "row_masks": row_masks,
        "mask_words": int(row_masks.shape[1]) if row_masks is not None else 0,
        "num_boxes": call.num_boxes,
        **stride_values("grads_stride", GRADS_AXES, grads_strides),
        **stride_values("output_stride", IMAGE_AXES, out_strides),
        "rows": rows,
        "groups": groups,
        "by_height": fast_divider(height),
        "by_chunks": fast_divider(max(1, chunks)),
    }
    setup = f"cropcore_roi_align_grad_setup_{dtype}"
    gather = f"cropcore_roi_align_grad_gather_{dtype}"
    setup_grid = (max(1, -(-call.num_boxes // BLOCK)), 1, 1)
    grid, block = launch_shape(rows, groups)
    return [
        Launch(setup, "roi_align_grad", setup_grid, (BLOCK, 1, 1), arguments(setup, values)),
        Launch(gather, "roi_align_grad", grid, block, arguments(gather, values)),
    ]
