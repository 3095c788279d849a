"""The torch backend's public functions: ``cropcore_torch.crop_and_resize`` and its siblings.

Each takes torch tensors and returns one. With ``validate=True`` (the default) a call goes through
:mod:`cropcore`'s checks and dispatch, pinned to the torch backend; with ``validate=False`` only
the shape-and-dtype checks run (no box values are read) and the call goes straight to the custom
ops of :mod:`cropcore_torch.ops`.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from cropcore import arguments, spec
from cropcore_torch.ops import run_crop_and_resize, run_grad_boxes, run_grad_image

__all__ = [
    "crop2d",
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
]


# Each public function: the names of its leading tensor arguments, cropcore's shape-only check of
# its call, and the runner of the checked call.
_PUBLIC = {
    "crop_and_resize": (
        ("image", "boxes", "box_indices"),
        spec.crop_and_resize_call,
        run_crop_and_resize,
    ),
    "crop_and_resize_grad_image": (
        ("grads", "boxes", "box_indices"),
        spec.grad_image_call,
        run_grad_image,
    ),
    "crop_and_resize_grad_boxes": (
        ("grads", "image", "boxes", "box_indices"),
        spec.grad_boxes_call,
        run_grad_boxes,
    ),
}


def _public(op: str, validate: bool, args: tuple, **kwargs: Any) -> Tensor:
    """The body of the public function ``op``, given its arguments: cropcore's checks and dispatch
    when ``validate``, else the shape-only checks (tensors only) and straight to the op."""
    if validate:
        import cropcore

        return _validated(getattr(cropcore, op), *args, **kwargs)
    names, check, run = _PUBLIC[op]
    count = len(names)
    tensors = [_tensor(x, name) for x, name in zip(args[:count], names, strict=True)]
    return run(check(*tensors, *args[count:], **kwargs, check_values=False))


def _tensor(x: Any, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor with validate=False, got {type(x).__name__}"
        )
    return x


def _default_layout(image: Tensor) -> str:
    """``"channels_last"``, with cropcore's warning (at the caller's line) for an evidently NCHW
    image (:func:`cropcore.arguments.default_layout_arg`)."""
    return arguments.default_layout_arg(image, stacklevel=4)


def _validated(function, *args: Any, **kwargs: Any) -> Any:
    # cropcore's checks: box values only where they are on the host and eager, so no device
    # synchronisation; under torch.compile dynamo traces this and the op joins the graph.
    return function(*args, **kwargs, backend="torch")


# --------------------------------------------------------------------------------------------------
# The functions users call


def crop_and_resize(
    image: Tensor,
    boxes: Any,
    box_indices: Any,
    crop_size: Any,
    method: str = "bilinear",
    extrapolation_value: float = 0.0,
    *,
    data_format: str | None = None,
    validate: bool = True,
) -> Tensor:
    """TensorFlow's ``crop_and_resize`` on torch tensors, differentiable w.r.t. image and boxes.

    Args:
        image: ``(batch, height, width, depth)`` (``data_format="channels_last"``, TensorFlow's) or
            ``(batch, depth, height, width)`` (``"channels_first"``, what torch models use); uint8,
            uint16, int8, int16, int32, int64, float16, float32 or float64; any device, any memory
            layout.
        boxes: float ``(num_boxes, 4)``, rows ``[y1, x1, y2, x2]`` normalised so that ``y`` maps to
            pixel row ``y * (height - 1)``; cast to float32 (gradients flow back through the cast).
        box_indices: integer ``(num_boxes,)``, the image of each box, in ``[0, batch)``.
        crop_size: ``(crop_height, crop_width)``, positive, or one int for a square crop (as the
            layer and torchvision's ``roi_align`` take; :func:`cropcore.crop_and_resize` takes a
            pair only, as TensorFlow).
        method: ``"bilinear"`` or ``"nearest"``.
        extrapolation_value: the value of samples outside the image.
        data_format: ``"channels_last"`` or ``"channels_first"``. Left out, channels_last, with a
            ``UserWarning`` where the image is evidently NCHW (see
            :func:`cropcore.crop_and_resize`); the layers default to channels_first.
        validate: ``True`` checks every argument as :func:`cropcore.crop_and_resize` does: the
            box values only where they are on the host and the call is eager (CPU tensors outside
            ``torch.compile``), so CUDA tensors never wait for the device, and ``torch.compile``
            (``fullgraph=True``) and ``torch.export`` work. ``False`` also skips the host read of
            CPU box values and goes straight to the op. Unchecked bad values give
            docs/decisions.md's results: a non-finite box gives ``extrapolation_value``, an
            out-of-range box index raises ``IndexError`` on CPU and gives a NaN crop on CUDA.

    Returns:
        float32 ``(num_boxes, crop_height, crop_width, depth)`` (or
        ``(num_boxes, depth, crop_height, crop_width)``) on the image's device; for channels_first,
        channels-last in memory when the image is.
    """
    if type(crop_size) is int:
        crop_size = (crop_size, crop_size)
    if data_format is None:
        data_format = _default_layout(image)
    args = (image, boxes, box_indices, crop_size, method, extrapolation_value)
    return _public("crop_and_resize", validate, args, data_format=data_format)


def crop_and_resize_grad_image(
    grads: Tensor,
    boxes: Any,
    box_indices: Any,
    image_shape: Any,
    method: str = "bilinear",
    *,
    data_format: str = "channels_last",
    dtype: Any = "float32",
    validate: bool = True,
) -> Tensor:
    """TensorFlow's ``CropAndResizeGradImage`` on torch tensors (see :func:`cropcore.crop_and_resize_grad_image`).

    ``validate=False`` checks shapes only; the caller guarantees what :func:`crop_and_resize`
    lists, and that ``image_shape`` matches ``grads``.
    """
    args = (grads, boxes, box_indices, image_shape, method)
    return _public(
        "crop_and_resize_grad_image", validate, args, data_format=data_format, dtype=dtype
    )


def crop_and_resize_grad_boxes(
    grads: Tensor,
    image: Tensor,
    boxes: Any,
    box_indices: Any,
    method: str = "bilinear",
    *,
    data_format: str | None = None,
    validate: bool = True,
) -> Tensor:
    """TensorFlow's ``CropAndResizeGradBoxes`` on torch tensors (see :func:`cropcore.crop_and_resize_grad_boxes`).

    ``validate=False`` checks shapes only; the caller guarantees what :func:`crop_and_resize` lists.
    ``data_format`` left out is channels_last, with the warning of :func:`crop_and_resize`.
    """
    if data_format is None:
        data_format = _default_layout(image)
    args = (grads, image, boxes, box_indices, method)
    return _public("crop_and_resize_grad_boxes", validate, args, data_format=data_format)


def crop2d(
    x: Tensor, cropping: Any = ((0, 0), (0, 0)), data_format: str = "channels_last"
) -> Tensor:
    """Keras's ``Cropping2D`` on a torch tensor: a view of ``x`` (see :func:`cropcore.crop2d`).

    Checks only shapes (never synchronises a device), so it needs no ``validate`` switch and
    traces under ``torch.compile`` without a graph break.
    """
    call = spec.crop2d_call(x, cropping, data_format)
    return x[call.slices]
