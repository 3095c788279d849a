"""The torch ops: ``cropcore::crop_and_resize`` and its gradients as torch custom ops, with autograd.

Importing this module registers three operators with torch (``torch.ops.cropcore.*``):

``crop_and_resize(Tensor image, Tensor boxes, Tensor box_indices, int crop_height, int crop_width,
str method, float extrapolation_value, bool channels_first) -> Tensor``
    Differentiable w.r.t. ``image`` (floating dtypes) and ``boxes``: the backward pass runs the two
    gradient ops below, which are TensorFlow's ``CropAndResizeGradImage`` and
    ``CropAndResizeGradBoxes``. As in TensorFlow, the box gradient of a ``"nearest"`` crop is the
    bilinear one. The image gradient is differentiable w.r.t. ``grads`` (it is linear: its
    gradient is the forward crop, extrapolation value 0), so a double backward w.r.t. the image
    works; a second derivative w.r.t. the boxes raises.

``crop_and_resize_grad_image(Tensor grads, Tensor boxes, Tensor box_indices, int batch, int height,
int width, int depth, str method, ScalarType dtype, bool channels_first) -> Tensor``

``crop_and_resize_grad_boxes(Tensor grads, Tensor image, Tensor boxes, Tensor box_indices,
bool channels_first) -> Tensor``

Being custom ops, they are single nodes for ``torch.compile`` (no graph break; a fake
implementation gives shapes and strides) and callable from TorchScript. They do **not** validate
their arguments beyond what memory safety needs: the functions of :mod:`cropcore_torch.functions`
with ``validate=True`` (the default) go through :mod:`cropcore`'s checks first.

CPU tensors run the compiled loops of :mod:`cropcore_torch._native` when available, everything else
the torch kernels of :mod:`cropcore_torch.kernels`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from cropcore import spec
from cropcore_torch import _native, _native_planes, _small, kernels

if TYPE_CHECKING:
    from cropcore.hookspecs import CropAndResizeCall, GradBoxesCall, GradImageCall

__all__ = ["IMAGE_DTYPES", "run_crop_and_resize", "run_grad_boxes", "run_grad_image"]

#: The image dtypes of the ops: TensorFlow's nine, as torch dtypes, and bfloat16, which TensorFlow's
#: kernel does not take: a bfloat16 image is widened to float32 (exactly) and computed as float32.
IMAGE_DTYPES = (*(getattr(torch, name) for name in spec.IMAGE_DTYPES), torch.bfloat16)
_GRAD_DTYPES = (torch.float16, torch.float32, torch.float64)


def _native_for(x: Tensor) -> bool:
    return x.device.type == "cpu" and _native.available()


def _checked_image(image: Tensor) -> Tensor:
    """``image`` as the kernels take it: one of TensorFlow's nine dtypes (bfloat16 widened to
    float32, which represents every bfloat16 value exactly)."""
    if image.dtype not in IMAGE_DTYPES:
        raise TypeError(
            f"image dtype must be one of {', '.join(spec.IMAGE_DTYPES)} or bfloat16, "
            f"got {image.dtype}"
        )
    return image.float() if image.dtype == torch.bfloat16 else image


# --------------------------------------------------------------------------------------------------
# The custom ops


def _own(result: Tensor) -> Tensor:
    """``result`` as a tensor of its own, not a view, on the same memory and strides.

    The kernels return views (a permuted NHWC buffer for channels_first, a slice of a recycled host
    block), and autograd refuses in-place changes to a view that a custom op returned
    (``crops.sub_(mean)``, ``nn.ReLU(inplace=True)`` after the layer); ``Tensor.set_`` makes a
    tensor without a base, over the same storage, which it allows. No data is copied.
    """
    base = result._base
    if base is None:
        return result
    if (  # a view with the whole of its base's geometry (an identity permute): the base itself
        base.shape == result.shape
        and base.stride() == result.stride()
        and base.storage_offset() == result.storage_offset()
        and base.dtype == result.dtype
    ):
        return base
    own = result.new_empty((0,))
    return own.set_(
        result.untyped_storage(), result.storage_offset(), result.shape, result.stride()
    )


def _crop_and_resize_impl(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    crop_height: int,
    crop_width: int,
    method: str,
    extrapolation_value: float,
    channels_first: bool,
    *,
    keep: list | None = None,
) -> Tensor:
    # keep (not part of the op's schema: only _EagerCropAndResize passes it): receives the compiled
    # loops' sample tables, for the image gradient of the same call to reuse.
    image = _checked_image(image)
    fill = None
    if _native_for(image):
        small = _small.crop_and_resize(
            image, boxes, box_indices, crop_height, crop_width, method, extrapolation_value,
            channels_first, keep,
        )  # fmt: skip
        if small is not None:
            return small
        fill = _native.fill_crops if keep is None else partial(_native.fill_crops, keep=keep)
    return _own(
        kernels.crop_and_resize(
            image,
            boxes.to(torch.float32),
            box_indices,
            (crop_height, crop_width),
            method,
            extrapolation_value,
            channels_first,
            fill=fill,
        )
    )


def _crop_and_resize_op_impl(
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    crop_height: int,
    crop_width: int,
    method: str,
    extrapolation_value: float,
    channels_first: bool,
) -> Tensor:
    return _crop_and_resize_impl(
        image, boxes, box_indices, crop_height, crop_width, method, extrapolation_value,
        channels_first,
    )  # fmt: skip


# The op; its implementation is also called directly by eager calls (run_crop_and_resize).
_crop_and_resize = torch.library.custom_op("cropcore::crop_and_resize", mutates_args=())(
    _crop_and_resize_op_impl
)


@_crop_and_resize.register_fake
def _crop_and_resize_fake(
    image, boxes, box_indices, crop_height, crop_width, method, extrapolation_value, channels_first
):
    depth = image.shape[1] if channels_first else image.shape[3]
    return _fake_output(
        image,
        (boxes.shape[0], crop_height, crop_width, depth),
        torch.float32,
        channels_first,
        kernels.output_is_channels_last(image, channels_first),
    )


def _fake_output(like, shape_nhwc, dtype, channels_first, channels_last_memory):
    """An empty tensor with the shape and strides :func:`kernels.empty_output` gives."""
    n, h, w, d = shape_nhwc
    if channels_first and not channels_last_memory:
        return like.new_empty((n, d, h, w), dtype=dtype)
    out = like.new_empty((n, h, w, d), dtype=dtype)
    return out.permute(0, 3, 1, 2) if channels_first else out


def _setup_context(ctx, inputs, output) -> None:
    image, boxes, box_indices, _, _, method, _, channels_first = inputs
    ctx.method = method
    ctx.channels_first = channels_first
    ctx.image_dtype = image.dtype
    ctx.image_shape = spec.ImageShape.from_format(
        tuple(image.shape), "channels_first" if channels_first else "channels_last"
    )
    # The box gradient reads the image; the image gradient needs only the boxes.
    ctx.save_for_backward(image if ctx.needs_input_grad[1] else None, boxes, box_indices)


def _backward(ctx, grad: Tensor):
    image, boxes, box_indices = ctx.saved_tensors
    grad_image = grad_boxes = None
    # Without create_graph, a plain eager CPU backward runs the gradient ops' implementations
    # directly (see _direct): the dispatcher would cost as much as a small call's arithmetic.
    direct = not torch.is_grad_enabled() and _direct(grad, boxes)
    if ctx.needs_input_grad[0]:
        # bfloat16 (no TensorFlow kernel): accumulated in float32, rounded to bfloat16 once.
        bfloat16 = ctx.image_dtype == torch.bfloat16
        grad_image_op: Callable[..., Tensor] = (
            _grad_image_impl if direct else torch.ops.cropcore.crop_and_resize_grad_image
        )
        args = (
            grad, boxes, box_indices, *ctx.image_shape, ctx.method,
            torch.float32 if bfloat16 else ctx.image_dtype, ctx.channels_first,
        )  # fmt: skip
        tables = getattr(ctx, "tables", None)  # the forward's, from _EagerCropAndResize
        if direct and tables is not None:
            grad_image = _grad_image_impl(*args, loops=tables)
        else:
            grad_image = grad_image_op(*args)
        if bfloat16:
            grad_image = grad_image.to(torch.bfloat16)
    if ctx.needs_input_grad[1]:
        # TF: "we still approximate grad1 using the gradient derived from bilinear sampling".
        grad_boxes_op = (
            _grad_boxes_impl if direct else torch.ops.cropcore.crop_and_resize_grad_boxes
        )
        grad_boxes = grad_boxes_op(grad, image, boxes, box_indices, ctx.channels_first)
    return grad_image, grad_boxes, None, None, None, None, None, None


_crop_and_resize.register_autograd(_backward, setup_context=_setup_context)


class _EagerCropAndResize(torch.autograd.Function):
    """The op with its autograd for plain eager CPU calls that need gradients (see
    :func:`_eager_autograd`): the op's implementation, context and backward, called without the
    dispatcher and the custom op's autograd wrapper (together about 40 us of a small call).
    Everything that must see the op (autocast, tracing, modes, functorch, torch.compile) gets
    the op."""

    @staticmethod
    def forward(ctx, image, boxes, box_indices, crop_height, crop_width, method, value, first):
        inputs = (image, boxes, box_indices, crop_height, crop_width, method, value, first)
        keep: list = []
        output = _crop_and_resize_impl(*inputs, keep=keep)
        _setup_context(ctx, inputs, output)
        # The compiled loops' sample tables and checked box indices: the image gradient's too.
        ctx.tables = keep[0] if keep and ctx.needs_input_grad[0] else None
        return output

    @staticmethod
    def backward(ctx, grad):
        return _backward(ctx, grad)


def _grad_image_impl(
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    batch: int,
    height: int,
    width: int,
    depth: int,
    method: str,
    dtype: torch.dtype,
    channels_first: bool,
    *,
    loops: Any = None,
) -> Tensor:
    # loops (not part of the op's schema): the forward's tables, kept by _native.fill_crops
    if dtype not in _GRAD_DTYPES:
        raise TypeError(f"dtype must be float16, float32 or float64, got {dtype}")
    # The compiled loops accumulate in float32 or float64; float16 sums go through torch.
    native = _native_for(grads) and dtype != torch.float16
    # NCHW grads stored channels_last (those of a channels_last image's crops): the result is
    # channels_last too, the NHWC sums as they are (docs/decisions.md).
    follow = kernels.output_is_channels_last(grads, channels_first)
    if native:  # declines channels-last grads itself
        small = _small.grad_image(
            grads, boxes, box_indices, (batch, height, width, depth), method, dtype,
            channels_first, loops,
        )  # fmt: skip
        if small is not None:
            return small
    if native and channels_first:  # NCHW with many channels: summed plane by plane, no transpose
        image_shape = (batch, height, width, depth)
        planes = _native_planes.grad_image_planes(
            grads, boxes, box_indices, image_shape, method, dtype, loops=loops
        )
        if planes is not None:
            return _own(planes)
    # Other NCHW float32 gradients: accumulated NHWC, then transposed by the compiled blocked
    # loop (torch's strided copy of that permutation costs about as much as the gradient itself).
    transpose = native and channels_first and dtype == torch.float32 and not follow
    nhwc = transpose or follow
    result = kernels.crop_and_resize_grad_image(
        grads.to(torch.float32).permute(0, 2, 3, 1) if nhwc else grads.to(torch.float32),
        boxes.to(torch.float32),
        box_indices,
        (batch, height, width, depth),
        method,
        dtype,
        channels_first and not nhwc,
        fill=_grad_image_fill(native, loops),
    )
    if follow:
        return _own(result.permute(0, 3, 1, 2))
    return _own(_native.channels_first(result) if transpose else result)


def _grad_image_fill(native: bool, loops: Any) -> Callable[..., None] | None:
    if not native:
        return None
    if loops is None:
        return _native.fill_grad_image
    return partial(_native.fill_grad_image, loops=loops)


def _grad_image_op_impl(
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    batch: int,
    height: int,
    width: int,
    depth: int,
    method: str,
    dtype: torch.dtype,
    channels_first: bool,
) -> Tensor:
    return _grad_image_impl(
        grads, boxes, box_indices, batch, height, width, depth, method, dtype, channels_first
    )


_grad_image = torch.library.custom_op("cropcore::crop_and_resize_grad_image", mutates_args=())(
    _grad_image_op_impl
)


@_grad_image.register_fake
def _grad_image_fake(
    grads, boxes, box_indices, batch, height, width, depth, method, dtype, channels_first
):
    if kernels.output_is_channels_last(grads, channels_first):  # as the implementation
        return grads.new_empty((batch, height, width, depth), dtype=dtype).permute(0, 3, 1, 2)
    shape = (batch, depth, height, width) if channels_first else (batch, height, width, depth)
    return grads.new_empty(shape, dtype=dtype)


def _grad_boxes_impl(
    grads: Tensor, image: Tensor, boxes: Tensor, box_indices: Tensor, channels_first: bool
) -> Tensor:
    image = _checked_image(image)
    return _own(
        kernels.crop_and_resize_grad_boxes(
            grads.to(torch.float32),
            image,
            boxes.to(torch.float32),
            box_indices,
            channels_first,
            fill=_native.fill_grad_boxes if _native_for(image) else None,
        )
    )


_grad_boxes = torch.library.custom_op("cropcore::crop_and_resize_grad_boxes", mutates_args=())(
    _grad_boxes_impl
)


@_grad_boxes.register_fake
def _grad_boxes_fake(grads, image, boxes, box_indices, channels_first):
    return boxes.new_empty((boxes.shape[0], 4), dtype=torch.float32)


def _grad_image_setup_context(ctx, inputs, output) -> None:
    grads, boxes, box_indices, _, _, _, _, method, _, channels_first = inputs
    ctx.method = method
    ctx.channels_first = channels_first
    ctx.grads_dtype = grads.dtype
    ctx.crop_size = tuple(grads.shape[2:] if channels_first else grads.shape[1:3])
    ctx.save_for_backward(boxes, box_indices)


def _grad_image_backward(ctx, grad: Tensor):
    """The image gradient is linear in ``grads``: its own gradient is the forward crop of ``grad``
    with extrapolation value 0 (samples outside the image added nothing). Its gradient w.r.t. the
    boxes (a second derivative of the crop in the boxes) is not implemented."""
    boxes, box_indices = ctx.saved_tensors
    if ctx.needs_input_grad[1]:
        raise RuntimeError(
            "cropcore: a double backward through crop_and_resize is supported w.r.t. the image "
            "only, not the boxes; detach the boxes (boxes.detach()) for a gradient penalty on "
            "the image"
        )
    grad_grads = None
    if ctx.needs_input_grad[0]:
        grad_grads = torch.ops.cropcore.crop_and_resize(
            grad, boxes, box_indices, *ctx.crop_size, ctx.method, 0.0, ctx.channels_first
        ).to(ctx.grads_dtype)
    return grad_grads, None, None, None, None, None, None, None, None, None


def _grad_boxes_backward(ctx, grad: Tensor):
    raise RuntimeError(
        "cropcore: the box gradient of crop_and_resize is not differentiable; a double backward "
        "through the boxes (create_graph=True, then differentiating the box gradient) is not "
        "supported (w.r.t. the image it is)"
    )


def _no_context(ctx, inputs, output) -> None:
    pass


_grad_image.register_autograd(_grad_image_backward, setup_context=_grad_image_setup_context)
_grad_boxes.register_autograd(_grad_boxes_backward, setup_context=_no_context)

# Under torch.autocast the ops run in float32, as F.grid_sample does (TensorFlow has no bfloat16 or
# float16-accumulating kernel to follow there): floating inputs are cast to float32 (exact for
# bfloat16 and float16 images), the result is float32, and autograd casts the gradients back.
for _op in (_crop_and_resize, _grad_image, _grad_boxes):
    for _device in ("cpu", "cuda"):
        torch.library.register_autocast(_op, _device, torch.float32)


# --------------------------------------------------------------------------------------------------
# Running a canonical call (cropcore's hooks and the functions below)


def run_crop_and_resize(call: CropAndResizeCall) -> Tensor:
    """The op ``cropcore::crop_and_resize`` on a canonical call (boxes moved to the image's device).

    A plain eager CPU call runs the op's implementation directly: the same function the
    dispatcher would reach, without its cost (about 25 us of a small call); with autograd, through
    :class:`_EagerCropAndResize`.
    """
    image = call.image
    boxes, box_indices = _on(image.device, call.boxes, call.box_indices)
    if _direct(image, boxes):
        op = _crop_and_resize_impl if not _needs_grad(image, boxes) else _EagerCropAndResize.apply
    else:
        op = torch.ops.cropcore.crop_and_resize
    return op(
        image,
        boxes,
        box_indices,
        *call.crop_size,
        call.method,
        call.extrapolation_value,
        call.channels_first,
    )


def _needs_grad(image: Tensor, boxes: Tensor) -> bool:
    return torch.is_grad_enabled() and (image.requires_grad or boxes.requires_grad)


def _direct(image: Tensor, boxes: Tensor) -> bool:
    """Whether the op's implementation may run without the dispatcher: plain CPU tensors in eager
    mode, with nothing the dispatcher would apply (autocast, a trace, a torch function or dispatch
    mode, a functorch transform). With autograd, through :class:`_EagerCropAndResize`."""
    return (
        type(image) is Tensor
        and type(boxes) is Tensor
        and image.is_cpu
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch._C._is_torch_function_mode_enabled()
        and torch._C._len_torch_dispatch_stack() == 0
        and not torch._C._functorch.is_functorch_wrapped_tensor(image)
    )


def run_grad_image(call: GradImageCall) -> Tensor:
    """The op ``cropcore::crop_and_resize_grad_image`` on a canonical call."""
    return torch.ops.cropcore.crop_and_resize_grad_image(
        call.grads,
        *_on(call.grads.device, call.boxes, call.box_indices),
        *call.image_shape,
        call.method,
        getattr(torch, call.dtype),
        call.channels_first,
    )


def run_grad_boxes(call: GradBoxesCall) -> Tensor:
    """The op ``cropcore::crop_and_resize_grad_boxes`` on a canonical call."""
    return torch.ops.cropcore.crop_and_resize_grad_boxes(
        call.grads,
        call.image,
        *_on(call.image.device, call.boxes, call.box_indices),
        call.channels_first,
    )


def _on(device: torch.device, boxes: Tensor, box_indices: Tensor) -> tuple[Tensor, Tensor]:
    """Boxes and box indices (canonical dtypes already) on ``device``, where the op runs."""
    if device.type == "cpu" and boxes.is_cpu and box_indices.is_cpu:  # (is_cpu is cheap)
        return boxes, box_indices
    return boxes.to(device=device), box_indices.to(device=device)
