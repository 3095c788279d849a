"""The op specification: what a valid call is, in canonical form.

Every public op goes through one function here that checks its arguments with TensorFlow's (for the
crop_and_resize family) or Keras's (for crop2d) rules and returns a frozen *call* object. A backend
receives only such objects, so it never sees an invalid argument:

- ``image``: 4-D, positive height and width, one of :data:`IMAGE_DTYPES`;
- ``boxes``: float32, shape ``(num_boxes, 4)``, every element finite;
- ``box_indices``: int32, shape ``(num_boxes,)``, every element in ``[0, batch)``;
- ``crop_size``: two positive Python ints; ``method``: ``"bilinear"`` or ``"nearest"``;
- ``extrapolation_value``: a Python float that is exactly representable in float32;
- the result fits in memory (:func:`check_output_size`).

Arrays keep their own library here (a torch tensor stays a torch tensor, with its autograd graph);
only their dtype is made canonical. Moving them to the library a backend computes in is the
dispatcher's job. Refusals are ``ValueError`` (values, shapes), ``TypeError`` (types, dtypes) or
``IndexError`` (box indices), each naming the argument and the value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np

from cropcore._arrays import dtype_name, library_for, library_name
from cropcore._env import getenv
from cropcore.errors import OutputTooLargeError

__all__ = [
    "DATA_FORMATS",
    "GRAD_IMAGE_DTYPES",
    "IMAGE_DTYPES",
    "METHODS",
    "OPS",
    "Crop2DCall",
    "CropAndResizeCall",
    "GradBoxesCall",
    "GradImageCall",
    "ImageShape",
    "as_array",
    "check_output_size",
    "crop2d_call",
    "crop_and_resize_call",
    "grad_boxes_call",
    "grad_dtype_arg",
    "grad_image_call",
    "max_output_bytes",
]

#: The four ops, by the names of the public functions (and of the backend hooks, prefixed ``cropcore_``).
OPS = ("crop_and_resize", "crop_and_resize_grad_image", "crop_and_resize_grad_boxes", "crop2d")
#: Sampling methods of the crop_and_resize family (case-sensitive, as in TensorFlow).
METHODS = ("bilinear", "nearest")
#: ``"channels_last"`` is NHWC (TensorFlow's only layout); ``"channels_first"`` is NCHW.
DATA_FORMATS = ("channels_last", "channels_first")
#: Image dtypes TensorFlow's CropAndResize kernel takes (attr ``T``).
IMAGE_DTYPES = (
    "uint8",
    "uint16",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
)
#: Output dtypes of CropAndResizeGradImage (attr ``T``).
GRAD_IMAGE_DTYPES = ("float16", "float32", "float64")

#: Below this magnitude a float64 rounds to a finite float32 (no overflow warning to silence).
_FLOAT32_LIMIT = 3.4e38
_INT_KINDS = "iu"
_REAL_KINDS = "iuf"

# The common case, checked first and without conversions: NumPy arrays already in canonical
# dtypes. Each fast path below either returns exactly what the general path would, or hands over
# to it (which then also produces the error message).
_FLOAT32 = np.dtype(np.float32)
# box_indices dtype -> the unsigned dtype of its size: viewed as that, a negative index is larger
# than any batch, so one max() checks both bounds.
_FEW_BOXES = 8
_NUMPY_IMAGE_DTYPES = frozenset(np.dtype(name) for name in IMAGE_DTYPES)  # (dtype.name is slow)
_UNSIGNED_VIEW = {np.dtype(np.int32): np.dtype(np.uint32), np.dtype(np.int64): np.dtype(np.uint64)}


_new_tuple = tuple.__new__


class ImageShape(NamedTuple):
    """An image batch's dimensions by meaning, whatever the data format."""

    batch: int
    height: int
    width: int
    depth: int

    def to_format(self, data_format: str) -> tuple[int, int, int, int]:
        """The shape as the array has it in ``data_format``."""
        if data_format == "channels_first":
            return (self.batch, self.depth, self.height, self.width)
        return (self.batch, self.height, self.width, self.depth)

    @classmethod
    def from_format(cls, shape: tuple[int, ...], data_format: str) -> ImageShape:
        if data_format == "channels_first":
            batch, depth, height, width = shape
        else:
            batch, height, width, depth = shape
        return _new_tuple(cls, (int(batch), int(height), int(width), int(depth)))


@dataclass(frozen=True, slots=True)
class _BoxesCall:
    """Fields shared by the crop_and_resize family."""

    boxes: Any
    box_indices: Any
    method: str
    data_format: str
    image_shape: ImageShape

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

    def replace(self, **changes: Any):
        """A copy with some fields changed (the dispatcher swaps arrays for converted ones)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class CropAndResizeCall(_BoxesCall):
    """A valid ``crop_and_resize`` call.

    ``image`` has shape ``image_shape.to_format(data_format)`` and a dtype in :data:`IMAGE_DTYPES`;
    the result has shape :attr:`output_shape` and dtype float32.
    """

    op: ClassVar[str] = "crop_and_resize"
    arrays: ClassVar[tuple[str, ...]] = ("image", "boxes", "box_indices")

    image: Any
    crop_size: tuple[int, int]
    extrapolation_value: float

    @property
    def anchor(self) -> Any:
        """The array whose library and device the result follows."""
        return self.image

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        crop = ImageShape(self.num_boxes, *self.crop_size, self.image_shape.depth)
        return crop.to_format(self.data_format)

    output_dtype: ClassVar[str] = "float32"


@dataclass(frozen=True, slots=True)
class GradImageCall(_BoxesCall):
    """A valid ``crop_and_resize_grad_image`` call.

    ``grads`` (float32) has the shape of the forward op's output; the result has shape
    ``image_shape.to_format(data_format)`` and dtype :attr:`dtype`.
    """

    op: ClassVar[str] = "crop_and_resize_grad_image"
    arrays: ClassVar[tuple[str, ...]] = ("grads", "boxes", "box_indices")

    grads: Any
    dtype: str

    @property
    def anchor(self) -> Any:
        """The array whose library and device the result follows (``grads``: there is no image)."""
        return self.grads

    @property
    def crop_size(self) -> tuple[int, int]:
        return crop_size_of(self.grads.shape, self.data_format)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.image_shape.to_format(self.data_format)

    @property
    def output_dtype(self) -> str:
        return self.dtype


@dataclass(frozen=True, slots=True)
class GradBoxesCall(_BoxesCall):
    """A valid ``crop_and_resize_grad_boxes`` call (bilinear only, as in TensorFlow).

    ``grads`` (float32) has the shape of the forward op's output, ``image`` is the forward op's
    input; the result has shape ``(num_boxes, 4)`` and dtype float32.
    """

    op: ClassVar[str] = "crop_and_resize_grad_boxes"
    arrays: ClassVar[tuple[str, ...]] = ("grads", "image", "boxes", "box_indices")
    output_dtype: ClassVar[str] = "float32"

    grads: Any
    image: Any

    @property
    def anchor(self) -> Any:
        """The array whose library and device the result follows."""
        return self.image

    @property
    def crop_size(self) -> tuple[int, int]:
        return crop_size_of(self.grads.shape, self.data_format)

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.num_boxes, 4)


@dataclass(frozen=True, slots=True)
class Crop2DCall:
    """A valid ``crop2d`` call: ``x[:, top:H-bottom, left:W-right, :]`` (or the NCHW equivalent)."""

    op: ClassVar[str] = "crop2d"
    arrays: ClassVar[tuple[str, ...]] = ("x",)

    x: Any
    cropping: tuple[tuple[int, int], tuple[int, int]]
    data_format: str
    image_shape: ImageShape

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

    @property
    def anchor(self) -> Any:
        """The array whose library and device the result follows (``x``)."""
        return self.x

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        (top, bottom), (left, right) = self.cropping
        s = self.image_shape
        return ImageShape(
            s.batch, s.height - top - bottom, s.width - left - right, s.depth
        ).to_format(self.data_format)

    @property
    def output_dtype(self) -> str:
        return dtype_name(self.x)

    @property
    def slices(self) -> tuple[slice, slice, slice, slice]:
        """The index that crops ``x`` in its own data format."""
        (top, bottom), (left, right) = self.cropping
        s = self.image_shape
        rows, cols = slice(top, s.height - bottom), slice(left, s.width - right)
        if self.channels_first:
            return (slice(None), slice(None), rows, cols)
        return (slice(None), rows, cols, slice(None))

    def replace(self, **changes: Any) -> Crop2DCall:
        return dataclasses.replace(self, **changes)


# --------------------------------------------------------------------------------------------------
# Argument checks shared by the ops


def as_array(x: Any, name: str) -> Any:
    """``x`` itself when it is an array of some library, else ``np.asarray(x)``."""
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        if library_name(x) == "dask":  # lazy: it has no data to hand a backend
            raise TypeError(
                f"{name} is a dask array; cropcore's ops take in-memory arrays: use the function "
                "of the same name in cropcore.dask for a lazy result, or .compute() it first"
            )
        return x
    if x is None:
        raise TypeError(f"{name} must be an array, got None")
    try:
        a = np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}: {exc}") from None
    if a.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got {_short(x)} (dtype object)")
    return a


def _short(x: Any, limit: int = 80) -> str:
    text = repr(x)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shape(x: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in x.shape)


@functools.lru_cache(maxsize=64)
def _kind(dtype: str) -> str:
    try:
        return np.dtype(dtype).kind
    except TypeError:
        return "?"  # a dtype NumPy does not have (bfloat16, ...)


def data_format_arg(data_format: Any) -> str:
    """``"channels_last"`` or ``"channels_first"``; ``None`` means channels_last (as Keras)."""
    if data_format is None or (type(data_format) is str and data_format == "channels_last"):
        return "channels_last"
    if not isinstance(data_format, str):
        raise TypeError(
            f"data_format must be 'channels_last' or 'channels_first', got {_short(data_format)}"
        )
    value = data_format.lower()
    if value not in DATA_FORMATS:
        raise ValueError(
            f"data_format must be 'channels_last' or 'channels_first', got {data_format!r}"
        )
    return value


def method_arg(method: Any, allowed: tuple[str, ...] = METHODS) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {allowed}, got {_short(method)}")
    if method not in allowed:
        choices = " or ".join(repr(m) for m in allowed)
        raise ValueError(
            f"method must be {choices} (case-sensitive, as in TensorFlow), got {method!r}"
        )
    return method


def _layout(data_format: str) -> str:
    return (
        "(batch, depth, height, width)"
        if data_format == "channels_first"
        else "(batch, height, width, depth)"
    )


def image_arg(image: Any, data_format: str, name: str = "image") -> tuple[Any, ImageShape]:
    if type(image) is np.ndarray and image.ndim == 4 and image.dtype.isnative:
        dims = ImageShape.from_format(image.shape, data_format)
        if dims.height > 0 and dims.width > 0 and image.dtype in _NUMPY_IMAGE_DTYPES:
            return image, dims
    image = as_array(image, name)
    shape = _shape(image)
    if len(shape) != 4:
        raise ValueError(
            f"{name} must be 4-D {_layout(data_format)} for data_format={data_format!r}, "
            f"got shape {shape}"
        )
    dims = ImageShape.from_format(shape, data_format)
    if dims.height <= 0 or dims.width <= 0:
        raise ValueError(
            f"{name} height and width must be positive, got height={dims.height}, "
            f"width={dims.width} (shape {shape}, data_format={data_format!r})"
        )
    dtype = dtype_name(image)
    if dtype not in IMAGE_DTYPES:
        raise TypeError(f"{name} dtype must be one of {', '.join(IMAGE_DTYPES)}; got {dtype}")
    if isinstance(image, np.ndarray) and not image.dtype.isnative:
        image = image.astype(image.dtype.newbyteorder("="))
    return image, dims


def grads_arg(grads: Any, data_format: str) -> tuple[Any, tuple[int, int, int, int], ImageShape]:
    """float32 ``grads``, its shape, and its dimensions by meaning (crop height and width, ...)."""
    if type(grads) is np.ndarray and grads.dtype == _FLOAT32 and grads.ndim == 4:
        shape = grads.shape
        dims = ImageShape.from_format(shape, data_format)
        if dims.height > 0 and dims.width > 0:
            return grads, shape, dims
    grads = as_array(grads, "grads")
    shape = _shape(grads)
    if len(shape) != 4:
        layout = (
            "(num_boxes, depth, crop_height, crop_width)"
            if data_format == "channels_first"
            else "(num_boxes, crop_height, crop_width, depth)"
        )
        raise ValueError(
            f"grads must be 4-D {layout} for data_format={data_format!r}, got shape {shape}"
        )
    dims = ImageShape.from_format(shape, data_format)
    if dims.height <= 0 or dims.width <= 0:
        raise ValueError(
            f"grads crop_height and crop_width must be positive, got shape {shape} "
            f"(data_format={data_format!r})"
        )
    dtype = dtype_name(grads)
    if _kind(dtype) != "f":
        raise TypeError(
            f"grads must be a floating-point array (it is cast to float32), got {dtype}"
        )
    return library_for(grads).astype(grads, "float32"), shape, dims


def boxes_arg(boxes: Any, box_indices: Any, batch: int) -> tuple[Any, Any]:
    """Canonical float32 boxes and int32 box indices, checked against an image batch of ``batch``."""
    if type(boxes) is np.ndarray and type(box_indices) is np.ndarray:
        checked = _numpy_boxes(boxes, box_indices, batch)
        if checked is not None:
            return checked
    boxes = as_array(boxes, "boxes")
    box_indices = as_array(box_indices, "box_indices")
    boxes_shape, indices_shape = _shape(boxes), _shape(box_indices)
    if len(boxes_shape) != 2 or boxes_shape[1] != 4:
        raise ValueError(f"boxes must have shape (num_boxes, 4), got shape {boxes_shape}")
    if len(indices_shape) != 1:
        raise ValueError(f"box_indices must be 1-D (num_boxes,), got shape {indices_shape}")
    if indices_shape[0] != boxes_shape[0]:
        raise ValueError(
            f"box_indices has {indices_shape[0]} elements but boxes has {boxes_shape[0]} rows; "
            "they must match"
        )
    boxes_dtype, indices_dtype = dtype_name(boxes), dtype_name(box_indices)
    if _kind(boxes_dtype) not in _REAL_KINDS and boxes_dtype != "bfloat16":
        raise TypeError(
            f"boxes must be a real numeric array (it is cast to float32), got {boxes_dtype}"
        )
    if _kind(indices_dtype) not in _INT_KINDS:
        raise TypeError(f"box_indices must be an integer array, got {indices_dtype}")

    boxes = library_for(boxes).astype(boxes, "float32")
    host_boxes = library_for(boxes).to_numpy(boxes)
    # min and max propagate NaN and reach any infinity: two reductions, no temporary array
    if host_boxes.size and not (np.isfinite(host_boxes.min()) and np.isfinite(host_boxes.max())):
        bad = tuple(int(i) for i in np.argwhere(~np.isfinite(host_boxes))[0])
        raise ValueError(
            f"boxes must be finite (after the cast to float32); got boxes[{bad[0]}, {bad[1]}] = "
            f"{host_boxes[bad]} (the original value may have overflowed float32)"
        )
    host_indices = library_for(box_indices).to_numpy(box_indices)
    if host_indices.size and (host_indices.min() < 0 or host_indices.max() >= batch):
        out = (host_indices < 0) | (host_indices >= batch)
        if out.any():
            i = int(np.argmax(out))
            raise IndexError(
                f"box_indices must be in [0, batch) = [0, {batch}); got box_indices[{i}] = "
                f"{int(host_indices[i])}"
            )
    box_indices = library_for(box_indices).astype(box_indices, "int32")
    return boxes, box_indices


def _numpy_boxes(
    boxes: np.ndarray, box_indices: np.ndarray, batch: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """:func:`boxes_arg` for valid float32 boxes and int32/int64 indices; ``None`` for anything else."""
    unsigned = _UNSIGNED_VIEW.get(box_indices.dtype)
    if (
        unsigned is None
        or boxes.dtype != _FLOAT32
        or boxes.ndim != 2
        or boxes.shape[1] != 4
        or box_indices.shape != boxes.shape[:1]
    ):
        return None
    num_boxes = boxes.shape[0]
    if 0 < num_boxes <= _FEW_BOXES:
        # In Python floats (float64) a sum of float32 values cannot overflow, so it is finite
        # exactly when every value is; for a few boxes, lists are quicker than NumPy reductions.
        if (
            not math.isfinite(sum(boxes.ravel().tolist()))
            or max(box_indices.view(unsigned).tolist()) >= batch
        ):
            return None
    elif num_boxes and (not np.isfinite(boxes).all() or box_indices.view(unsigned).max() >= batch):
        return None
    if box_indices.dtype.itemsize != 4:
        box_indices = box_indices.astype(np.int32)
    return boxes, box_indices


def _int_value(x: Any, what: str) -> int:
    if isinstance(x, bool | np.bool_) or not isinstance(x, numbers.Integral):
        if hasattr(x, "item") and hasattr(x, "dtype") and _kind(dtype_name(x)) in _INT_KINDS:
            return int(x.item())
        raise TypeError(f"{what} must be an integer, got {_short(x)} ({type(x).__name__})")
    return int(x)


def crop_size_arg(crop_size: Any) -> tuple[int, int]:
    if type(crop_size) is tuple and len(crop_size) == 2:
        height, width = crop_size
        if type(height) is int and type(width) is int and height > 0 and width > 0:
            return crop_size
    if hasattr(crop_size, "shape") and hasattr(crop_size, "dtype"):
        shape = _shape(crop_size)
        if len(shape) != 1:
            raise ValueError(f"crop_size must be 1-D (crop_height, crop_width), got shape {shape}")
        crop_size = library_for(crop_size).to_numpy(crop_size).tolist()
    if isinstance(crop_size, str) or not hasattr(crop_size, "__len__"):
        raise TypeError(
            f"crop_size must be a pair of integers (crop_height, crop_width), got {_short(crop_size)}"
        )
    if len(crop_size) != 2:
        raise ValueError(
            f"crop_size must have two elements (crop_height, crop_width), got {_short(crop_size)}"
        )
    height, width = (_int_value(v, "crop_size element") for v in crop_size)
    if height <= 0 or width <= 0:
        raise ValueError(f"crop_size must be positive, got ({height}, {width})")
    return height, width


def extrapolation_value_arg(value: Any) -> float:
    if type(value) is float and value == 0.0:
        return value  # 0.0 or -0.0, both float32
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        if hasattr(value, "item") and getattr(value, "shape", None) in ((), []):
            return extrapolation_value_arg(value.item())
        raise TypeError(f"extrapolation_value must be a real number, got {_short(value)}")
    if -_FLOAT32_LIMIT < value < _FLOAT32_LIMIT:
        return float(np.float32(value))
    with np.errstate(over="ignore"):  # as TF's float attr: 1e40 becomes inf
        return float(np.float32(value))


def image_shape_arg(image_shape: Any, data_format: str) -> ImageShape:
    if type(image_shape) is tuple and len(image_shape) == 4:
        a, b, c, d = image_shape
        if type(a) is int and type(b) is int and type(c) is int and type(d) is int:
            dims = ImageShape.from_format(image_shape, data_format)
            if dims.height > 0 and dims.width > 0 and dims.batch >= 0 and dims.depth >= 0:
                return dims
    if hasattr(image_shape, "shape") and hasattr(image_shape, "dtype"):
        image_shape = library_for(image_shape).to_numpy(image_shape).tolist()
    if isinstance(image_shape, str) or not hasattr(image_shape, "__len__") or len(image_shape) != 4:
        raise ValueError(
            f"image_shape must have 4 elements {_layout(data_format)}, got {_short(image_shape)}"
        )
    values = [_int_value(v, "image_shape element") for v in image_shape]
    dims = ImageShape.from_format(tuple(values), data_format)
    if dims.height <= 0 or dims.width <= 0:
        raise ValueError(
            f"image_shape height and width must be positive, got image_shape={tuple(values)} "
            f"(data_format={data_format!r})"
        )
    if dims.batch < 0 or dims.depth < 0:
        raise ValueError(f"image_shape must not be negative, got image_shape={tuple(values)}")
    return dims


def max_output_bytes() -> int:
    """The largest result cropcore allocates, in bytes.

    ``CROPCORE_MAX_OUTPUT_BYTES`` sets it; by default it is the machine's physical memory.
    """
    configured = getenv("CROPCORE_MAX_OUTPUT_BYTES")
    if configured:
        try:
            return int(configured)
        except ValueError:
            raise ValueError(
                f"CROPCORE_MAX_OUTPUT_BYTES must be a whole number of bytes, got {configured!r}"
            ) from None
    return _physical_memory()


@functools.cache
def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - non-POSIX
        return 2**63 - 1


def check_output_size(shape: tuple[int, ...], dtype: str, what: str) -> None:
    """Refuse, before allocating, a result of ``shape`` and ``dtype`` that cannot fit in memory."""
    nbytes = _itemsize(dtype) * math.prod(map(int, shape))
    limit = max_output_bytes()
    if nbytes > limit:
        raise OutputTooLargeError(
            f"{what} would have shape {tuple(shape)} and dtype {dtype}: {nbytes:,} bytes, more "
            f"than the {limit:,} bytes cropcore allows (the machine's memory, or "
            "CROPCORE_MAX_OUTPUT_BYTES); reduce crop_size or the number of boxes"
        )


@functools.lru_cache(maxsize=32)
def _itemsize(dtype: str) -> int:
    return int(np.dtype(dtype).itemsize)


def crop_size_of(shape: tuple[int, ...], data_format: str) -> tuple[int, int]:
    dims = ImageShape.from_format(tuple(shape), data_format)
    return dims.height, dims.width


# --------------------------------------------------------------------------------------------------
# The four ops


def crop_and_resize_call(
    image: Any,
    boxes: Any,
    box_indices: Any,
    crop_size: Any,
    method: Any = "bilinear",
    extrapolation_value: Any = 0.0,
    data_format: Any = "channels_last",
) -> CropAndResizeCall:
    """Check a ``crop_and_resize`` call (TensorFlow's rules) and return it in canonical form."""
    data_format = data_format_arg(data_format)
    method = method_arg(method)
    image, dims = image_arg(image, data_format)
    crop = crop_size_arg(crop_size)
    extrapolation_value = extrapolation_value_arg(extrapolation_value)
    boxes, box_indices = boxes_arg(boxes, box_indices, dims.batch)
    call = CropAndResizeCall(
        boxes=boxes,
        box_indices=box_indices,
        method=method,
        data_format=data_format,
        image_shape=dims,
        image=image,
        crop_size=crop,
        extrapolation_value=extrapolation_value,
    )
    check_output_size(call.output_shape, "float32", "crop_and_resize's result")
    return call


def grad_image_call(
    grads: Any,
    boxes: Any,
    box_indices: Any,
    image_shape: Any,
    method: Any = "bilinear",
    data_format: Any = "channels_last",
    dtype: Any = "float32",
) -> GradImageCall:
    """Check a ``crop_and_resize_grad_image`` call and return it in canonical form.

    TensorFlow does not check that the boxes are finite here (NaN boxes crash it); cropcore checks
    them as for the forward op.
    """
    data_format = data_format_arg(data_format)
    method = method_arg(method)
    dtype = grad_dtype_arg(dtype)
    grads, grads_shape, grads_dims = grads_arg(grads, data_format)
    dims = image_shape_arg(image_shape, data_format)
    boxes, box_indices = boxes_arg(boxes, box_indices, dims.batch)
    if grads_dims.batch != boxes.shape[0]:
        raise ValueError(
            f"grads has {grads_dims.batch} crops but boxes has {_shape(boxes)[0]} rows; they must match"
        )
    if grads_dims.depth != dims.depth:
        raise ValueError(
            f"grads depth {grads_dims.depth} differs from image_shape depth {dims.depth} "
            f"(grads shape {grads_shape}, image_shape {dims.to_format(data_format)})"
        )
    call = GradImageCall(
        boxes=boxes,
        box_indices=box_indices,
        method=method,
        data_format=data_format,
        image_shape=dims,
        grads=grads,
        dtype=dtype,
    )
    check_output_size(call.output_shape, dtype, "crop_and_resize_grad_image's result")
    return call


def grad_dtype_arg(dtype: Any) -> str:
    if type(dtype) is str and dtype in GRAD_IMAGE_DTYPES:
        return dtype
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = str(dtype).rpartition(".")[2]
    if name not in GRAD_IMAGE_DTYPES:
        raise TypeError(f"dtype must be one of {', '.join(GRAD_IMAGE_DTYPES)}, got {_short(dtype)}")
    return name


def grad_boxes_call(
    grads: Any,
    image: Any,
    boxes: Any,
    box_indices: Any,
    method: Any = "bilinear",
    data_format: Any = "channels_last",
) -> GradBoxesCall:
    """Check a ``crop_and_resize_grad_boxes`` call and return it in canonical form.

    As in TensorFlow only ``method="bilinear"`` exists: the box gradient of a nearest-neighbour
    crop is taken from bilinear sampling.
    """
    data_format = data_format_arg(data_format)
    method = method_arg(method, ("bilinear",))
    grads, grads_shape, grads_dims = grads_arg(grads, data_format)
    image, dims = image_arg(image, data_format)
    if grads_dims.depth != dims.depth:
        raise ValueError(
            f"grads depth {grads_dims.depth} differs from image depth {dims.depth} "
            f"(grads shape {grads_shape}, image shape {_shape(image)})"
        )
    boxes, box_indices = boxes_arg(boxes, box_indices, dims.batch)
    if grads_dims.batch != boxes.shape[0]:
        raise ValueError(
            f"grads has {grads_dims.batch} crops but boxes has {_shape(boxes)[0]} rows; they must match"
        )
    return GradBoxesCall(
        boxes=boxes,
        box_indices=box_indices,
        method=method,
        data_format=data_format,
        image_shape=dims,
        grads=grads,
        image=image,
    )


def cropping_arg(cropping: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """Keras ``Cropping2D``'s ``cropping`` forms: ``n``, ``(h, w)`` or ``((top, bottom), (left, right))``.

    Unlike Keras, NumPy integer scalars are accepted and float entries are refused here (Keras
    accepts ``1.5`` and fails later when slicing).
    """
    if _is_int(cropping):
        n = int(cropping)
        if n < 0:
            raise ValueError(f"`cropping` cannot be negative. Received: cropping={cropping}.")
        return ((n, n), (n, n))
    if isinstance(cropping, str) or not hasattr(cropping, "__len__"):
        raise ValueError(
            "`cropping` should be either an int, a tuple of 2 ints "
            "(symmetric_height_crop, symmetric_width_crop), "
            "or a tuple of 2 tuples of 2 ints "
            "((top_crop, bottom_crop), (left_crop, right_crop)). "
            f"Received: cropping={cropping}."
        )
    if len(cropping) != 2:
        raise ValueError(f"`cropping` should have two elements. Received: cropping={cropping}.")
    height = _pair(cropping[0], "1st entry of cropping")
    width = _pair(cropping[1], "2nd entry of cropping")
    return (height, width)


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool | np.bool_)


def _pair(value: Any, name: str) -> tuple[int, int]:
    message = f"The `{name}` argument must be a tuple of 2 integers. Received {name}={value}"
    if _is_int(value):
        pair: tuple[Any, ...] = (value, value)
    else:
        if isinstance(value, str) or not hasattr(value, "__len__") or len(value) != 2:
            raise ValueError(message)
        pair = tuple(value)
    for v in pair:
        if not _is_int(v):
            raise TypeError(f"{message}, including element {v!r} of type {type(v)}")
    negative = {int(v) for v in pair if v < 0}
    if negative:
        raise ValueError(f"{message}, including values {negative} that do not satisfy `value >= 0`")
    return (int(pair[0]), int(pair[1]))


def crop2d_call(
    x: Any, cropping: Any = ((0, 0), (0, 0)), data_format: Any = "channels_last"
) -> Crop2DCall:
    """Check a ``crop2d`` call (Keras ``Cropping2D``'s rules) and return it in canonical form."""
    data_format = data_format_arg(data_format)
    crop = cropping_arg(cropping)
    x = as_array(x, "x")
    shape = _shape(x)
    if len(shape) != 4:
        raise ValueError(
            f"x must be 4-D {_layout(data_format)} for data_format={data_format!r}, "
            f"got shape {shape} (ndim={len(shape)})"
        )
    dims = ImageShape.from_format(shape, data_format)
    if sum(crop[0]) >= dims.height or sum(crop[1]) >= dims.width:
        raise ValueError(
            "Values in `cropping` argument should be smaller than the corresponding spatial "
            f"dimension of the input. Received: input_shape={shape}, cropping={crop}"
        )
    return Crop2DCall(x=x, cropping=crop, data_format=data_format, image_shape=dims)

