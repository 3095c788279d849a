"""``torch.nn`` layers: :class:`CropAndResize` and Keras's :class:`Cropping2D`.

Both default to ``data_format="channels_first"`` (NCHW, what torch models use); pass
``"channels_last"`` for NHWC. Both work in ``nn.Sequential``, under ``torch.no_grad()``,
``torch.inference_mode()`` and ``torch.compile``, and can be scripted with ``torch.jit.script``
(deprecated by PyTorch itself since 2.10, but still working).

What runs where:

- eager mode, ``validate=True`` (default): every call is checked by :mod:`cropcore` (box values
  only where they are on the host: CPU tensors; never a device synchronisation), then runs the op
  ``torch.ops.cropcore.crop_and_resize``; under ``torch.compile`` (``fullgraph=True``) and
  ``torch.export`` the checks that need no data run at trace time and the op joins the graph;
- eager mode, ``validate=False``: the host read of CPU box values is skipped too (see
  :func:`cropcore_torch.functions.crop_and_resize` for what bad values then give);
- TorchScript: the scripted module checks shapes, dtypes and (when ``validate``, for CPU tensors)
  the box values itself, with the same rules; its errors surface as ``torch.jit.Error`` (a
  ``RuntimeError``) whose message names the Python exception (``ValueError: ...``), as TorchScript
  does.
"""

# No `from __future__ import annotations`: TorchScript reads the annotations of these classes.
from typing import Any, Optional

import torch
from torch import Tensor, nn

from cropcore import spec
from cropcore_torch import functions

__all__ = ["CropAndResize", "Cropping2D"]


class CropAndResize(nn.Module):
    """``tf.image.crop_and_resize`` as a layer: crops boxes out of a batch of images and resizes them.

    Args:
        crop_size: ``(crop_height, crop_width)`` (or one int for a square crop), positive.
        method: ``"bilinear"`` or ``"nearest"`` (halves round away from zero, as TensorFlow's).
        extrapolation_value: the value of samples outside the image.
        data_format: ``"channels_first"`` (NCHW, default) or ``"channels_last"`` (NHWC).
        boxes: optional fixed boxes, float ``(num_boxes, 4)`` ``[y1, x1, y2, x2]`` normalised: when
            given, ``forward(image)`` cuts every one of them out of every image (a float32 buffer: it
            follows ``.to(device)`` and is saved in the ``state_dict``, but ``.half()``,
            ``.bfloat16()`` and ``.to(dtype)`` leave it float32, so the crops do not move). This is
            what makes the layer usable in ``nn.Sequential``. Without fixed boxes the layer has no
            buffer.
        validate: whether each call checks box values (see the module docstring).

    Shapes:
        ``forward(image, boxes, box_indices)``: ``image`` ``(batch, depth, height, width)`` (or
        NHWC), any of TensorFlow's nine dtypes; ``boxes`` float ``(num_boxes, 4)``;
        ``box_indices`` integer ``(num_boxes,)`` in ``[0, batch)``. Returns float32
        ``(num_boxes, depth, crop_height, crop_width)`` (or NHWC).

        ``forward(image)`` with fixed boxes ``(k, 4)``: returns float32
        ``(batch * k, depth, crop_height, crop_width)``, image-major (the crops of image 0 first).

    Gradients flow to the image (floating dtypes) and to the boxes, equal to TensorFlow's
    ``CropAndResizeGradImage`` and ``CropAndResizeGradBoxes``.
    """

    crop_size: tuple[int, int]
    method: str
    extrapolation_value: float
    data_format: str
    channels_first: bool
    validate: bool
    has_fixed_boxes: bool

    def __init__(
        self,
        crop_size: Any,
        method: str = "bilinear",
        extrapolation_value: float = 0.0,
        data_format: str = "channels_first",
        boxes: Any = None,
        validate: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(crop_size, int) and not isinstance(crop_size, bool):
            crop_size = (crop_size, crop_size)
        self.crop_size = spec.crop_size_arg(crop_size)
        self.method = spec.method_arg(method)
        self.extrapolation_value = spec.extrapolation_value_arg(extrapolation_value)
        self.data_format = spec.data_format_arg(data_format)
        self.channels_first = self.data_format == "channels_first"
        self.validate = bool(validate)
        self.has_fixed_boxes = boxes is not None
        fixed: Optional[Tensor] = None  # noqa: UP045
        if boxes is not None:
            fixed, _ = spec.boxes_arg(boxes, torch.zeros(len(boxes), dtype=torch.int32), 1)
            fixed = torch.as_tensor(fixed, dtype=torch.float32).clone()
        # No fixed boxes: no buffer (None is left out of the state_dict).
        self.register_buffer("boxes", fixed)

    def _apply(self, fn: Any, recurse: bool = True) -> "CropAndResize":
        # model.half() / .bfloat16() / .double() cast every floating buffer; the fixed boxes are
        # coordinates, not activations, and stay float32 (0.9 is 0.8984 in bfloat16): they follow
        # device moves only.
        boxes = self.boxes
        super()._apply(fn, recurse)
        moved = self.boxes
        if boxes is not None and moved is not None and moved.dtype != torch.float32:
            self._buffers["boxes"] = boxes.to(device=moved.device)
        return self

    @torch.jit.unused
    def _load_from_state_dict(self, state_dict, prefix, *args: Any, **kwargs: Any) -> None:
        # Checkpoints saved before issue 16 hold an empty (0, 4) "boxes" for a layer without
        # fixed boxes, which now has no buffer: such an entry is dropped, not reported unexpected.
        key = prefix + "boxes"
        if self.boxes is None and key in state_dict and state_dict[key].numel() == 0:
            state_dict = {k: v for k, v in state_dict.items() if k != key}
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(
        self,
        image: Tensor,
        boxes: Optional[Tensor] = None,  # noqa: UP045
        box_indices: Optional[Tensor] = None,  # noqa: UP045
    ) -> Tensor:
        if boxes is None and box_indices is None:
            fixed = self.boxes
            if fixed is None:
                raise ValueError(
                    "CropAndResize needs boxes and box_indices (or fixed boxes given at construction)"
                )
            batch = image.shape[0]
            per_image = fixed.shape[0]
            boxes = fixed.repeat(batch, 1)
            box_indices = torch.arange(batch, device=image.device).repeat_interleave(per_image)
        elif boxes is None or box_indices is None:
            raise ValueError("CropAndResize takes boxes and box_indices together")
        assert boxes is not None
        assert box_indices is not None
        if torch.jit.is_scripting():
            return self._scripted_crop(image, boxes, box_indices)
        return self._eager_crop(image, boxes, box_indices)

    @torch.jit.unused
    def _eager_crop(self, image: Tensor, boxes: Tensor, box_indices: Tensor) -> Tensor:
        return functions.crop_and_resize(
            image,
            boxes,
            box_indices,
            self.crop_size,
            self.method,
            self.extrapolation_value,
            data_format=self.data_format,
            validate=self.validate,
        )

    def _scripted_crop(self, image: Tensor, boxes: Tensor, box_indices: Tensor) -> Tensor:
        """The TorchScript path: cropcore's rules, written in TorchScript, then the op."""
        channels_first = self.channels_first
        if image.dim() != 4:
            raise ValueError(f"image must be 4-D, got {image.dim()} dimensions")
        if image.is_complex() or image.dtype == torch.bool:
            raise TypeError(
                f"image dtype must be one of TensorFlow's nine or bfloat16, got {image.dtype}"
            )
        height = image.shape[2] if channels_first else image.shape[1]
        width = image.shape[3] if channels_first else image.shape[2]
        if height <= 0 or width <= 0:
            raise ValueError("image height and width must be positive")
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError("boxes must have shape (num_boxes, 4)")
        if box_indices.dim() != 1 or box_indices.shape[0] != boxes.shape[0]:
            raise ValueError("box_indices must have shape (num_boxes,)")
        if box_indices.is_floating_point():
            raise TypeError("box_indices must be an integer tensor")
        boxes = boxes.to(device=image.device, dtype=torch.float32)
        box_indices = box_indices.to(device=image.device, dtype=torch.int32)
        if self.validate and boxes.shape[0] > 0 and boxes.device.type == "cpu":
            if not bool(torch.isfinite(boxes).all()):
                raise ValueError("boxes must be finite (after the cast to float32)")
            batch = image.shape[0]
            if int(box_indices.min()) < 0 or int(box_indices.max()) >= batch:
                raise IndexError(f"box_indices must be in [0, batch) = [0, {batch})")
        crop_height, crop_width = self.crop_size
        return torch.ops.cropcore.crop_and_resize(
            image,
            boxes,
            box_indices,
            crop_height,
            crop_width,
            self.method,
            self.extrapolation_value,
            channels_first,
        )

    def extra_repr(self) -> str:
        fixed = f", boxes={tuple(self.boxes.shape)}" if self.boxes is not None else ""
        return (
            f"crop_size={self.crop_size}, method={self.method!r}, "
            f"extrapolation_value={self.extrapolation_value}, data_format={self.data_format!r}"
            f"{fixed}, validate={self.validate}"
        )


class Cropping2D(nn.Module):
    """Keras's ``Cropping2D`` layer: removes rows and columns from the edges of a batch of images.

    Args:
        cropping: Keras's forms: ``n`` (every side), ``(h, w)`` (symmetric: ``h`` rows top and
            bottom, ``w`` columns left and right) or ``((top, bottom), (left, right))``;
            non-negative integers, refused with Keras's messages.
        data_format: ``"channels_first"`` (NCHW, default) or ``"channels_last"`` (NHWC).

    Shapes:
        ``forward(x)``: ``(batch, channels, height, width)`` (or NHWC), any dtype; returns
        ``(batch, channels, height - top - bottom, width - left - right)``, a view of ``x`` (no
        copy; gradients flow through it). The cropping must leave at least one row and one column
        (``ValueError`` otherwise, as in Keras).
    """

    top: int
    bottom: int
    left: int
    right: int
    channels_first: bool

    def __init__(self, cropping: Any = ((0, 0), (0, 0)), data_format: str = "channels_first"):
        super().__init__()
        (self.top, self.bottom), (self.left, self.right) = spec.cropping_arg(cropping)
        self.data_format = spec.data_format_arg(data_format)
        self.channels_first = self.data_format == "channels_first"

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"Cropping2D expects a 4-D input, got shape {list(x.shape)}")
        height = x.shape[2] if self.channels_first else x.shape[1]
        width = x.shape[3] if self.channels_first else x.shape[2]
        if self.top + self.bottom >= height or self.left + self.right >= width:
            cropping = ((self.top, self.bottom), (self.left, self.right))
            raise ValueError(
                "Values in `cropping` argument should be smaller than the corresponding spatial "
                f"dimension of the input. Received: input_shape={list(x.shape)}, "
                f"cropping={cropping}"
            )
        if self.channels_first:
            return x[:, :, self.top : height - self.bottom, self.left : width - self.right]
        return x[:, self.top : height - self.bottom, self.left : width - self.right, :]

    def extra_repr(self) -> str:
        return (
            f"cropping={((self.top, self.bottom), (self.left, self.right))}, "
            f"data_format={self.data_format!r}"
        )
