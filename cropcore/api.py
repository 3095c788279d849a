"""The functions users call. Each one validates (:mod:`cropcore.spec`) and dispatches
(:mod:`cropcore.dispatch`); the work happens in a backend.

Under ``torch.compile`` dynamo traces these functions as they are: the static checks trace (they
read no data), and the dispatcher puts the backend's op in the graph (:func:`cropcore.dispatch.run`),
so ``fullgraph=True`` holds. ``torch.export`` runs them on fake tensors."""

from __future__ import annotations

from typing import Any

from cropcore import arguments, dispatch, spec
from cropcore.casting import output_dtype_arg, saturate_cast
from cropcore.ops import op_for
from cropcore.registry import Backend, registry

__all__ = [
    "backends",
    "crop2d",
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "explain",
    "roi_align",
    "roi_align_grad_image",
]


def crop_and_resize(
    image: Any,
    boxes: Any,
    box_indices: Any,
    crop_size: Any,
    method: str = "bilinear",
    extrapolation_value: float = 0.0,
    *,
    data_format: str | None = None,
    output_dtype: Any = None,
    backend: str | None = None,
) -> Any:
    """Crop boxes out of a batch of images and resize each crop, exactly as ``tf.image.crop_and_resize``.

    Args:
        image: ``(batch, height, width, depth)`` (``data_format="channels_last"``) or
            ``(batch, depth, height, width)`` (``"channels_first"``); dtype uint8, uint16, int8,
            int16, int32, int64, float16, float32 or float64. Any array library (NumPy, torch,
            CuPy, anything with DLPack); height and width must be positive.
        boxes: ``(num_boxes, 4)`` rows ``[y1, x1, y2, x2]`` in normalised coordinates: ``y`` maps to
            pixel row ``y * (height - 1)``. Flipped boxes (``y1 > y2``) give flipped crops;
            coordinates outside ``[0, 1]`` sample ``extrapolation_value``. Cast to float32; every
            element must then be finite. Or a list with one ``(L, 4)`` array per image (image
            ``i``'s boxes at position ``i``, as torchvision takes them), with ``box_indices=None``.
        box_indices: ``(num_boxes,)`` integers in ``[0, batch)``: the image each box is cut from;
            ``None`` when ``boxes`` is a list of per-image arrays.
        crop_size: ``(crop_height, crop_width)``, both positive. A size of 1 samples the box centre.
        method: ``"bilinear"`` or ``"nearest"`` (nearest rounds halves away from zero).
        extrapolation_value: the value (as float32) of samples outside the image.
        data_format: ``"channels_last"`` (NHWC, TensorFlow's) or ``"channels_first"`` (NCHW).
            Left out (``None``), it is channels_last, and an image whose shape is evidently NCHW
            (as NHWC: at most 4 rows, a width over 4 times its height, more than 4 channels, as
            ``(N, 3, 224, 224)``) gets a ``UserWarning``.
        output_dtype: ``None`` (float32, TensorFlow's result), or one of the nine image dtypes
            (a name, a NumPy or torch dtype; ``image.dtype`` keeps the input's): the float32
            crops are then cast, integers rounded half to even and saturated, NaN to 0.
        backend: a backend name or alias (``"numpy"``, ``"numba"``, ``"torch"``, ``"cupy"`` /
            ``"cuda"``, or a plugin's); ``None`` chooses one (see :func:`explain`).

    Returns:
        ``(num_boxes, crop_height, crop_width, depth)`` (or ``(num_boxes, depth, crop_height,
        crop_width)`` for channels_first) of dtype float32 or ``output_dtype``, in ``image``'s
        array library and on its device.

    Raises:
        ValueError: a bad shape or value (non-finite box, non-positive crop size, unknown method).
        TypeError: a bad type or dtype.
        IndexError: a box index outside ``[0, batch)``.
        cropcore.errors.OutputTooLargeError: the result would not fit in memory.
        cropcore.errors.BackendError: the named backend is unknown, unavailable or cannot run the call.
    """
    dtype = output_dtype_arg(output_dtype)
    if data_format is None:
        data_format = arguments.default_layout_arg(image)
    call = spec.crop_and_resize_call(
        image, boxes, box_indices, crop_size, method, extrapolation_value, data_format
    )
    crops = dispatch.run(call, backend)
    return crops if dtype == "float32" else saturate_cast(crops, dtype)


def crop_and_resize_grad_image(
    grads: Any,
    boxes: Any,
    box_indices: Any,
    image_shape: Any,
    method: str = "bilinear",
    *,
    data_format: str = "channels_last",
    dtype: Any = "float32",
    backend: str | None = None,
) -> Any:
    """Gradient of :func:`crop_and_resize` with respect to the image (``tf.raw_ops.CropAndResizeGradImage``).

    Args:
        grads: float ``(num_boxes, crop_height, crop_width, depth)`` (channels_last) or
            ``(num_boxes, depth, crop_height, crop_width)``: the gradient of the crops (cast to float32).
        boxes: ``(num_boxes, 4)`` (or a list of per-image arrays), as for :func:`crop_and_resize`.
        box_indices: ``(num_boxes,)`` integers in ``[0, batch)`` (``None`` with a list of boxes).
        image_shape: the image's shape, 4 integers in ``data_format`` order.
        method: ``"bilinear"`` or ``"nearest"``, as in the forward call.
        data_format: ``"channels_last"`` or ``"channels_first"``.
        dtype: float16, float32 or float64: the result's dtype, which TensorFlow also accumulates in.
        backend: as for :func:`crop_and_resize`.

    Returns:
        ``dtype`` array of shape ``image_shape``, in ``grads``' library and on its device. Samples
        outside the image contribute nothing.
    """
    call = spec.grad_image_call(grads, boxes, box_indices, image_shape, method, data_format, dtype)
    return dispatch.run(call, backend)


def crop_and_resize_grad_boxes(
    grads: Any,
    image: Any,
    boxes: Any,
    box_indices: Any,
    method: str = "bilinear",
    *,
    data_format: str | None = None,
    backend: str | None = None,
) -> Any:
    """Gradient of :func:`crop_and_resize` with respect to the boxes (``tf.raw_ops.CropAndResizeGradBoxes``).

    Args:
        grads: float ``(num_boxes, crop_height, crop_width, depth)`` (or channels_first): the
            gradient of the crops (cast to float32).
        image: the forward call's image (any dtype :func:`crop_and_resize` takes).
        boxes: ``(num_boxes, 4)`` (or a list of per-image arrays); box_indices: ``(num_boxes,)``
            (or ``None`` with a list), as for :func:`crop_and_resize`.
        method: only ``"bilinear"``, as in TensorFlow (the box gradient of a nearest crop is the
            bilinear one).
        data_format: ``"channels_last"`` or ``"channels_first"``; left out, channels_last, with a
            warning for an evidently NCHW image as for :func:`crop_and_resize`.
        backend: as for :func:`crop_and_resize`.

    Returns:
        float32 ``(num_boxes, 4)``: d loss / d ``[y1, x1, y2, x2]``, in ``image``'s library and device.
    """
    if data_format is None:
        data_format = arguments.default_layout_arg(image)
    call = spec.grad_boxes_call(grads, image, boxes, box_indices, method, data_format)
    return dispatch.run(call, backend)


def crop2d(
    x: Any,
    cropping: Any = ((0, 0), (0, 0)),
    data_format: str | None = "channels_last",
    *,
    backend: str | None = None,
) -> Any:
    """Keras's ``Cropping2D``: remove rows and columns from the edges of a batch of images.

    Args:
        x: 4-D ``(batch, height, width, channels)`` (channels_last) or
            ``(batch, channels, height, width)``, any dtype, any array library.
        cropping: ``n`` (every side), ``(h, w)`` (symmetric) or ``((top, bottom), (left, right))``;
            non-negative integers that leave at least one row and one column.
        data_format: ``"channels_last"`` or ``"channels_first"`` (``None`` means channels_last).
        backend: as for :func:`crop_and_resize`.

    Returns:
        ``x[:, top:height - bottom, left:width - right, :]`` (or the channels_first equivalent),
        with ``x``'s dtype, library and device; a view where the library makes one.
    """
    call = spec.crop2d_call(x, cropping, data_format)
    return dispatch.run(call, backend)


def roi_align(
    image: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    box_indices: Any = None,
    mode: str = "avg",
    data_format: str = "channels_first",
    backend: str | None = None,
) -> Any:
    """RoIAlign (Mask R-CNN), exactly as ``torchvision.ops.roi_align`` and ONNX ``RoiAlign``.

    Each output bin of each box is the average (``mode="avg"``) of ``sampling_ratio`` x
    ``sampling_ratio`` bilinear samples on a regular grid inside the bin (ONNX's ``mode="max"``:
    the largest weighted corner of any sample). docs/semantics.md has the formulas.

    Args:
        image: ``(batch, depth, height, width)`` (``data_format="channels_first"``, the default, as
            torchvision and ONNX) or ``(batch, height, width, depth)``; float16, float32 or
            float64 (float16 is computed in float32 and rounded once).
        boxes: pixel boxes ``[x1, y1, x2, y2]`` (scaled by ``spatial_scale``), as ``(num_boxes,
            5)`` rows ``[image index, x1, y1, x2, y2]``, as a list with one ``(L, 4)`` array per
            image, or as ``(num_boxes, 4)`` with ``box_indices``. Cast to float32 (float64 for a
            float64 image); every value must then be finite.
        output_size: ``(pooled_height, pooled_width)`` or one int for both; positive.
        spatial_scale: multiplies the box coordinates (e.g. 1/16 for a stride-16 feature map).
        sampling_ratio: samples per bin along each axis; ``<= 0`` means adaptive,
            ``ceil(roi size / output size)`` (torchvision's -1, ONNX's 0).
        aligned: ``True`` shifts boxes by -0.5 pixel (pixel centres; ONNX's
            ``coordinate_transformation_mode="half_pixel"``); ``False`` (torchvision's default,
            ONNX's ``"output_half_pixel"``) also makes every box at least 1 x 1 pixel.
        box_indices: ``(num_boxes,)`` integers in ``[0, batch)``, with ``(num_boxes, 4)`` boxes only.
        mode: ``"avg"`` (torchvision, ONNX's default) or ``"max"`` (ONNX Runtime's).
        data_format: ``"channels_first"`` (NCHW) or ``"channels_last"`` (NHWC).
        backend: as for :func:`crop_and_resize`.

    Returns:
        ``(num_boxes, depth, pooled_height, pooled_width)`` array (channels_first; channels_last:
        ``(num_boxes, pooled_height, pooled_width, depth)``) of ``image``'s dtype, in its library
        and on its device.

    Raises:
        ValueError: a bad shape or value (non-finite box, fractional image index in column 0,
            non-positive output size, unknown mode).
        TypeError: a bad type or dtype (an integer image).
        IndexError: an image index outside ``[0, batch)``.
    """
    call = spec.roi_align_call(
        image,
        boxes,
        output_size,
        spatial_scale,
        sampling_ratio,
        aligned,
        box_indices,
        mode,
        data_format,
    )
    return dispatch.run(call, backend)


def roi_align_grad_image(
    grads: Any,
    boxes: Any,
    image_shape: Any,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    box_indices: Any = None,
    data_format: str = "channels_first",
    backend: str | None = None,
) -> Any:
    """Gradient of :func:`roi_align` (``mode="avg"``) with respect to the image, as torchvision's.

    Args:
        grads: ``(num_boxes, depth, pooled_height, pooled_width)`` (channels_first) or
            ``(num_boxes, pooled_height, pooled_width, depth)``; float16, float32 or float64.
        boxes: as for :func:`roi_align`.
        image_shape: the image's shape, 4 integers in ``data_format`` order.
        spatial_scale: as in the forward call.
        sampling_ratio: as in the forward call.
        aligned: as in the forward call.
        box_indices: as for :func:`roi_align`.
        data_format: ``"channels_first"`` or ``"channels_last"``.
        backend: as for :func:`crop_and_resize`.

    Returns:
        ``grads``' dtype, shape ``image_shape``, in ``grads``' library and on its device. Samples
        outside the image contribute nothing.
    """
    call = spec.roi_align_grad_image_call(
        grads,
        boxes,
        image_shape,
        spatial_scale,
        sampling_ratio,
        aligned,
        box_indices,
        data_format,
    )
    return dispatch.run(call, backend)


def explain(op: str, *args: Any, backend: str | None = None, **kwargs: Any) -> dispatch.Decision:
    """Which backend ``op(*args, **kwargs)`` would run on, and why, without running it.

    ``op`` is one of ``"crop_and_resize"``, ``"crop_and_resize_grad_image"``,
    ``"crop_and_resize_grad_boxes"``, ``"crop2d"``; the other arguments are the op's own. The
    arguments are validated as for the op itself. ``print()`` the result for a readable account::

        >>> print(cropcore.explain("crop_and_resize", image, boxes, box_indices, (7, 7)))
        crop_and_resize on a numpy array (cpu) runs on backend 'numpy', chosen by the priority list ...
    """
    return dispatch.explain_call(op_for(op).make_call(*args, **kwargs), backend)


def backends(*, probe: bool = False, refresh: bool = False) -> list[Backend]:
    """Every discovered backend plugin: name, aliases, version, status, reason, devices.

    Listing imports no framework. ``probe=True`` also runs each backend's availability check
    (which may import torch, numba or cupy), turning status ``"installed"`` into ``"available"`` or
    ``"unavailable"`` with the reason. ``refresh=True`` rescans the entry points (for plugins
    installed after cropcore was imported).
    """
    if refresh:
        registry.refresh()
    found = registry.all()
    if probe:
        for backend in found:
            backend.probe()
    return found
