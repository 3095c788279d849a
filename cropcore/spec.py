"""The op specification: what a valid call is, in canonical form.

Every public op goes through one function here that checks its arguments with TensorFlow's (for the
crop_and_resize family) or Keras's (for crop2d) rules and returns a frozen *call* object
(:mod:`cropcore.calls`). A backend receives only such objects, so it never sees an invalid argument:

- ``image``: 4-D, positive height and width, one of :data:`IMAGE_DTYPES`;
- ``boxes``: float32, shape ``(num_boxes, 4)``, every element finite;
- ``box_indices``: int32, shape ``(num_boxes,)``, every element in ``[0, batch)``;
- ``crop_size``: two positive Python ints; ``method``: ``"bilinear"`` or ``"nearest"``;
- ``extrapolation_value``: a Python float that is exactly representable in float32;
- the result fits in memory (:func:`cropcore.memory.check_output_size`).

The checks run in this order: arguments that are not arrays, then shapes and dtypes, then the
result's size (the *static* checks: they never read array data, so they run on traced and
device-resident arrays too), and last the values of ``boxes`` and ``box_indices``. The values are
read only where they already are on the host and the call is eager
(:func:`cropcore.arguments.values_checked`): a CUDA tensor or a traced one (``torch.compile``,
``torch.export``, a meta or fake tensor) is never copied to the host to be checked, unless
``CROPCORE_STRICT=1`` asks for it on a device. A call whose values were not checked says so
(``values_checked=False``), and only a backend that declares it safe on any values
(``BackendInfo.unchecked_values``) receives it; docs/decisions.md says what bad values give then.
``check_values=True`` or ``False`` overrides the rule (``False`` is the *shape-only mode*).

Arrays keep their own library here (a torch tensor stays a torch tensor, with its autograd graph);
only their dtype is made canonical. Moving them to the library a backend computes in is the
dispatcher's job. Refusals are ``ValueError`` (values, shapes), ``TypeError`` (types, dtypes) or
``IndexError`` (box indices), each naming the argument and the value.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from cropcore import calls
from cropcore.arguments import (
    _FEW_BOXES,
    as_array,
    boxes_arg,
    boxes_cast_arg,
    boxes_shape_arg,
    boxes_values_arg,
    crop2d_input_arg,
    crop_size_arg,
    cropping_arg,
    data_format_arg,
    extrapolation_value_arg,
    grad_dtype_arg,
    grads_arg,
    image_arg,
    image_shape_arg,
    method_arg,
    values_checked,
)
from cropcore.arrays import dtype_name as _dtype
from cropcore.calls import DATA_FORMATS, GRAD_IMAGE_DTYPES, IMAGE_DTYPES, METHODS, ImageShape
from cropcore.memory import check_output_size, max_output_bytes
from cropcore.roi_arguments import (
    aligned_arg,
    output_size_arg,
    roi_boxes_cast_arg,
    roi_boxes_shape_arg,
    roi_boxes_values_arg,
    roi_grads_arg,
    roi_image_arg,
    roi_mode_arg,
    sampling_ratio_arg,
    spatial_scale_arg,
)

__all__ = [
    "DATA_FORMATS",
    "GRAD_IMAGE_DTYPES",
    "IMAGE_DTYPES",
    "METHODS",
    "as_array",
    "boxes_arg",
    "check_output_size",
    "crop2d_call",
    "crop_and_resize_call",
    "crop_size_arg",
    "cropping_arg",
    "data_format_arg",
    "extrapolation_value_arg",
    "grad_boxes_call",
    "grad_dtype_arg",
    "grad_image_call",
    "grads_arg",
    "image_arg",
    "image_shape_arg",
    "max_output_bytes",
    "method_arg",
    "roi_align_call",
    "roi_align_grad_image_call",
]


def _boxes_fields(
    boxes: Any,
    box_indices: Any,
    dims: ImageShape,
    method: str,
    data_format: str,
    check_values: bool | None,
) -> dict[str, Any]:
    """The last step of every crop_and_resize-family check, and the fields the family shares.

    The box values are checked where :func:`~cropcore.arguments.values_checked` says (unless
    ``check_values`` decides), else only cast; ``values_checked`` records which.
    """
    if check_values is None:
        check_values = values_checked(boxes, box_indices)
    if check_values:
        boxes, box_indices = boxes_values_arg(boxes, box_indices, dims.batch)
    else:
        boxes, box_indices = boxes_cast_arg(boxes, box_indices, dims.batch)
    return {
        "boxes": boxes,
        "box_indices": box_indices,
        "values_checked": bool(check_values),
        "method": method,
        "data_format": data_format,
        "image_shape": dims,
    }


def _crops_match_boxes(crops: int, boxes: Any) -> None:
    if crops != boxes.shape[0]:
        raise ValueError(
            f"grads has {crops} crops but boxes has {int(boxes.shape[0])} rows; they must match"
        )


def crop_and_resize_call(
    image: Any,
    boxes: Any,
    box_indices: Any,
    crop_size: Any,
    method: Any = "bilinear",
    extrapolation_value: Any = 0.0,
    data_format: Any = "channels_last",
    *,
    check_values: bool | None = None,
) -> calls.CropAndResizeCall:
    """Check a ``crop_and_resize`` call (TensorFlow's rules) and return it in canonical form.

    ``check_values=False``: the shape-only mode (see the module's docstring).
    """
    data_format = data_format_arg(data_format)
    method = method_arg(method)
    if check_values is not False:
        quick = _quick_torch_call(
            image, boxes, box_indices, crop_size, method, extrapolation_value, data_format
        )
        if quick is not None:
            return quick
    image, dims = image_arg(image, data_format)
    crop = crop_size_arg(crop_size)
    extrapolation_value = extrapolation_value_arg(extrapolation_value)
    boxes, box_indices = boxes_shape_arg(boxes, box_indices)
    output = ImageShape(int(boxes.shape[0]), *crop, dims.depth).to_format(data_format)
    check_output_size(output, "float32", "crop_and_resize's result")
    return calls.CropAndResizeCall(
        **_boxes_fields(boxes, box_indices, dims, method, data_format, check_values),
        image=image,
        crop_size=crop,
        extrapolation_value=extrapolation_value,
    )


_TORCH_DTYPES: dict[str, Any] = {}  # "image": the image dtypes as torch dtypes, "float32", "int32"


def _quick_torch_call(
    image: Any,
    boxes: Any,
    box_indices: Any,
    crop_size: Any,
    method: str,
    extrapolation_value: Any,
    data_format: str,
) -> calls.CropAndResizeCall | None:
    """:func:`crop_and_resize_call`'s answer for the common torch case, or ``None``.

    The common case (issue 16: small calls): eager plain CPU tensors (not traced, not wrapped by
    functorch), a valid image, float32 ``(N, 4)`` boxes and int32 or int64 indices, a few boxes
    (as :func:`cropcore.arguments.boxes_values_arg` reads them as lists), every value valid. The
    same checks as the general route, in its order, on plain ints; any doubt returns ``None`` and
    the general route decides (and words any refusal). ``method`` and ``data_format`` are checked.
    """
    torch = sys.modules.get("torch")
    if torch is None or torch.compiler.is_compiling():
        return None
    tensor = torch.Tensor
    if type(image) is not tensor or type(boxes) is not tensor or type(box_indices) is not tensor:
        return None
    dtypes = _TORCH_DTYPES or _torch_dtypes(torch)
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    if (
        not (image.is_cpu and boxes.is_cpu and box_indices.is_cpu)
        or wrapped(image)
        or wrapped(boxes)
        or wrapped(box_indices)
        or image.dim() != 4
        or image.dtype not in dtypes["image"]
        or boxes.dtype is not dtypes["float32"]
        or boxes.dim() != 2
        or boxes.shape[1] != 4
        or box_indices.dim() != 1
        or box_indices.dtype not in dtypes["indices"]
    ):
        return None
    dims = ImageShape.from_format(image.shape, data_format)
    num_boxes = boxes.shape[0]
    if (
        dims.height <= 0
        or dims.width <= 0
        or box_indices.shape[0] != num_boxes
        or not 0 < num_boxes <= _FEW_BOXES
    ):
        return None
    crop = crop_size_arg(crop_size)
    extrapolation_value = extrapolation_value_arg(extrapolation_value)
    output = ImageShape(num_boxes, *crop, dims.depth).to_format(data_format)
    check_output_size(output, "float32", "crop_and_resize's result")
    # The values, as boxes_values_arg reads a few: finite boxes, indices in [0, batch).
    indices = box_indices.tolist()
    if (
        not math.isfinite(sum(sum(row) for row in boxes.tolist()))
        or min(indices) < 0
        or max(indices) >= dims.batch
    ):
        return None
    if box_indices.dtype is not dtypes["int32"]:
        box_indices = box_indices.to(dtypes["int32"])
    return calls.CropAndResizeCall(
        boxes=boxes,
        box_indices=box_indices,
        values_checked=True,
        method=method,
        data_format=data_format,
        image_shape=dims,
        image=image,
        crop_size=crop,
        extrapolation_value=extrapolation_value,
    )


def _torch_dtypes(torch: Any) -> dict[str, Any]:
    _TORCH_DTYPES.update(
        image=frozenset(getattr(torch, name) for name in (*IMAGE_DTYPES, "bfloat16")),
        indices=frozenset((torch.int32, torch.int64)),
        float32=torch.float32,
        int32=torch.int32,
    )
    return _TORCH_DTYPES


def grad_image_call(
    grads: Any,
    boxes: Any,
    box_indices: Any,
    image_shape: Any,
    method: Any = "bilinear",
    data_format: Any = "channels_last",
    dtype: Any = "float32",
    *,
    check_values: bool | None = None,
) -> calls.GradImageCall:
    """Check a ``crop_and_resize_grad_image`` call and return it in canonical form.

    TensorFlow does not check that the boxes are finite here (NaN boxes crash it); cropcore checks
    them as for the forward op. ``check_values=False``: the shape-only mode.
    """
    data_format = data_format_arg(data_format)
    method = method_arg(method)
    dtype = grad_dtype_arg(dtype)
    grads, grads_shape, grads_dims = grads_arg(grads, data_format)
    dims = image_shape_arg(image_shape, data_format)
    boxes, box_indices = boxes_shape_arg(boxes, box_indices)
    _crops_match_boxes(grads_dims.batch, boxes)
    if grads_dims.depth != dims.depth:
        raise ValueError(
            f"grads depth {grads_dims.depth} differs from image_shape depth {dims.depth} "
            f"(grads shape {grads_shape}, image_shape {dims.to_format(data_format)})"
        )
    check_output_size(dims.to_format(data_format), dtype, "crop_and_resize_grad_image's result")
    return calls.GradImageCall(
        **_boxes_fields(boxes, box_indices, dims, method, data_format, check_values),
        grads=grads,
        dtype=dtype,
    )


def grad_boxes_call(
    grads: Any,
    image: Any,
    boxes: Any,
    box_indices: Any,
    method: Any = "bilinear",
    data_format: Any = "channels_last",
    *,
    check_values: bool | None = None,
) -> calls.GradBoxesCall:
    """Check a ``crop_and_resize_grad_boxes`` call and return it in canonical form.

    As in TensorFlow only ``method="bilinear"`` exists: the box gradient of a nearest-neighbour
    crop is taken from bilinear sampling. ``check_values=False``: the shape-only mode.
    """
    data_format = data_format_arg(data_format)
    method = method_arg(method, ("bilinear",))
    grads, grads_shape, grads_dims = grads_arg(grads, data_format)
    image, dims = image_arg(image, data_format)
    if grads_dims.depth != dims.depth:
        raise ValueError(
            f"grads depth {grads_dims.depth} differs from image depth {dims.depth} "
            f"(grads shape {grads_shape}, image shape {tuple(int(d) for d in image.shape)})"
        )
    boxes, box_indices = boxes_shape_arg(boxes, box_indices)
    _crops_match_boxes(grads_dims.batch, boxes)
    return calls.GradBoxesCall(
        **_boxes_fields(boxes, box_indices, dims, method, data_format, check_values),
        grads=grads,
        image=image,
    )


def crop2d_call(
    x: Any, cropping: Any = ((0, 0), (0, 0)), data_format: Any = "channels_last"
) -> calls.Crop2DCall:
    """Check a ``crop2d`` call (Keras ``Cropping2D``'s rules) and return it in canonical form."""
    data_format = data_format_arg(data_format)
    crop = cropping_arg(cropping)
    x, shape = crop2d_input_arg(x, data_format)
    dims = ImageShape.from_format(shape, data_format)
    if sum(crop[0]) >= dims.height or sum(crop[1]) >= dims.width:
        raise ValueError(
            "Values in `cropping` argument should be smaller than the corresponding spatial "
            f"dimension of the input. Received: input_shape={shape}, cropping={crop}"
        )
    return calls.Crop2DCall(x=x, cropping=crop, data_format=data_format, image_shape=dims)


def _roi_fields(
    boxes: Any,
    box_indices: Any,
    dims: ImageShape,
    compute_dtype: str,
    spatial_scale: Any,
    sampling_ratio: Any,
    aligned: Any,
    data_format: str,
    check_values: bool | None,
) -> dict[str, Any]:
    """The fields roi_align and its gradient share; box values read as :func:`_boxes_fields`."""
    spatial_scale = spatial_scale_arg(spatial_scale)
    sampling_ratio = sampling_ratio_arg(sampling_ratio)
    aligned = aligned_arg(aligned)
    boxes, box_indices = roi_boxes_shape_arg(boxes, box_indices, compute_dtype)
    if check_values is None:
        check_values = values_checked(boxes, box_indices)
    check = roi_boxes_values_arg if check_values else roi_boxes_cast_arg
    boxes, box_indices = check(boxes, box_indices, dims.batch)
    return {
        "boxes": boxes,
        "box_indices": box_indices,
        "spatial_scale": spatial_scale,
        "sampling_ratio": sampling_ratio,
        "aligned": aligned,
        "data_format": data_format,
        "image_shape": dims,
        "values_checked": bool(check_values),
    }


def roi_align_call(
    image: Any,
    boxes: Any,
    output_size: Any,
    spatial_scale: Any = 1.0,
    sampling_ratio: Any = -1,
    aligned: Any = False,
    box_indices: Any = None,
    mode: Any = "avg",
    data_format: Any = "channels_first",
    *,
    check_values: bool | None = None,
) -> calls.RoiAlignCall:
    """Check a ``roi_align`` call (torchvision's and ONNX's rules) and return it in canonical form.

    The boxes (any of :func:`~cropcore.roi_arguments.roi_boxes_shape_arg`'s forms) become
    ``(num_boxes, 4)`` in the compute dtype and int32 image indices; values are read where
    :func:`~cropcore.arguments.values_checked` says. ``check_values=False``: the shape-only mode.
    """
    data_format = data_format_arg(data_format)
    image, dims = roi_image_arg(image, data_format)
    size = output_size_arg(output_size)
    mode = roi_mode_arg(mode)
    fields = _roi_fields(
        boxes,
        box_indices,
        dims,
        calls.roi_compute_dtype(_dtype(image)),
        spatial_scale,
        sampling_ratio,
        aligned,
        data_format,
        check_values,
    )
    output = ImageShape(int(fields["boxes"].shape[0]), *size, dims.depth).to_format(data_format)
    check_output_size(output, _dtype(image), "roi_align's result")
    return calls.RoiAlignCall(**fields, image=image, output_size=size, mode=mode)


def roi_align_grad_image_call(
    grads: Any,
    boxes: Any,
    image_shape: Any,
    spatial_scale: Any = 1.0,
    sampling_ratio: Any = -1,
    aligned: Any = False,
    box_indices: Any = None,
    data_format: Any = "channels_first",
    *,
    check_values: bool | None = None,
) -> calls.RoiAlignGradImageCall:
    """Check a ``roi_align_grad_image`` call and return it in canonical form."""
    data_format = data_format_arg(data_format)
    grads, grads_dims = roi_grads_arg(grads, data_format)
    dims = image_shape_arg(image_shape, data_format)
    dtype = _dtype(grads)
    fields = _roi_fields(
        boxes,
        box_indices,
        dims,
        calls.roi_compute_dtype(dtype),
        spatial_scale,
        sampling_ratio,
        aligned,
        data_format,
        check_values,
    )
    _crops_match_boxes(grads_dims.batch, fields["boxes"])
    if grads_dims.depth != dims.depth:
        raise ValueError(
            f"grads depth {grads_dims.depth} differs from image_shape depth {dims.depth}"
        )
    check_output_size(dims.to_format(data_format), dtype, "roi_align_grad_image's result")
    return calls.RoiAlignGradImageCall(**fields, grads=grads)
