"""The call types: a valid, canonical call of each op, as a backend receives it.

Requirements: importing this imports only NumPy. A call object is frozen; its arrays keep their own
library (a torch tensor stays a torch tensor); :mod:`cropcore.spec` makes them, and nothing else
should. Each call type knows its op's name, its array arguments, the array whose library and
device the result follows (``anchor``), and the result's shape and dtype.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from cropcore.arrays import dtype_name

__all__ = [
    "DATA_FORMATS",
    "GRAD_IMAGE_DTYPES",
    "IMAGE_DTYPES",
    "METHODS",
    "ROI_ALIGN_DTYPES",
    "ROI_ALIGN_MODES",
    "Crop2DCall",
    "CropAndResizeCall",
    "GradBoxesCall",
    "GradImageCall",
    "ImageShape",
    "RoiAlignCall",
    "RoiAlignGradImageCall",
    "crop_size_of",
    "roi_compute_dtype",
]

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


class _Call:
    """What every call type has: its op, its array arguments, and the one the result follows."""

    __slots__ = ()
    op: ClassVar[str]
    #: The names of its array arguments.
    arrays: ClassVar[tuple[str, ...]]
    #: The argument whose array library and device the result follows.
    anchor_name: ClassVar[str]

    @property
    def anchor(self) -> Any:
        """The array whose library and device the result follows (:attr:`anchor_name`)."""
        return getattr(self, self.anchor_name)

    def replace(self, **changes: Any):
        """A copy with some fields changed (the dispatcher swaps arrays for converted ones)."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, slots=True)
class _BoxesCall(_Call):
    """Fields shared by the crop_and_resize family."""

    boxes: Any
    box_indices: Any
    method: str
    data_format: str
    image_shape: ImageShape
    #: Whether cropcore read and checked the box values (finite boxes, indices in range). When
    #: ``False`` (traced or device-resident boxes), the backend must run safely on any values and
    #: give the documented results for bad ones (docs/decisions.md, "Unchecked values").
    values_checked: bool = dataclasses.field(default=True, kw_only=True)

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"


@dataclass(frozen=True, slots=True)
class CropAndResizeCall(_BoxesCall):
    """A valid ``crop_and_resize`` call.

    ``image`` has shape ``image_shape.to_format(data_format)`` and a dtype in :data:`IMAGE_DTYPES`;
    the result has shape :attr:`output_shape` and dtype float32.
    """

    op: ClassVar[str] = "crop_and_resize"
    arrays: ClassVar[tuple[str, ...]] = ("image", "boxes", "box_indices")
    anchor_name: ClassVar[str] = "image"

    image: Any
    crop_size: tuple[int, int]
    extrapolation_value: float

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        crop = ImageShape(self.num_boxes, *self.crop_size, self.image_shape.depth)
        return crop.to_format(self.data_format)

    output_dtype: ClassVar[str] = "float32"


@dataclass(frozen=True, slots=True)
class _GradsCall(_BoxesCall):
    """The gradient ops: ``grads`` (float32) has the shape of the forward op's output."""

    grads: Any

    @property
    def crop_size(self) -> tuple[int, int]:
        return crop_size_of(self.grads.shape, self.data_format)


@dataclass(frozen=True, slots=True)
class GradImageCall(_GradsCall):
    """A valid ``crop_and_resize_grad_image`` call.

    ``grads`` (float32) has the shape of the forward op's output; the result has shape
    ``image_shape.to_format(data_format)`` and dtype :attr:`dtype`.
    """

    op: ClassVar[str] = "crop_and_resize_grad_image"
    arrays: ClassVar[tuple[str, ...]] = ("grads", "boxes", "box_indices")
    anchor_name: ClassVar[str] = "grads"  # there is no image

    dtype: str

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.image_shape.to_format(self.data_format)

    @property
    def output_dtype(self) -> str:
        return self.dtype


@dataclass(frozen=True, slots=True)
class GradBoxesCall(_GradsCall):
    """A valid ``crop_and_resize_grad_boxes`` call (bilinear only, as in TensorFlow).

    ``grads`` (float32) has the shape of the forward op's output, ``image`` is the forward op's
    input; the result has shape ``(num_boxes, 4)`` and dtype float32.
    """

    op: ClassVar[str] = "crop_and_resize_grad_boxes"
    arrays: ClassVar[tuple[str, ...]] = ("grads", "image", "boxes", "box_indices")
    output_dtype: ClassVar[str] = "float32"
    anchor_name: ClassVar[str] = "image"

    image: Any

    @property
    def output_shape(self) -> tuple[int, int]:
        return (self.num_boxes, 4)


@dataclass(frozen=True, slots=True)
class Crop2DCall(_Call):
    """A valid ``crop2d`` call: ``x[:, top:H-bottom, left:W-right, :]`` (or the NCHW equivalent)."""

    op: ClassVar[str] = "crop2d"
    arrays: ClassVar[tuple[str, ...]] = ("x",)
    anchor_name: ClassVar[str] = "x"

    x: Any
    cropping: tuple[tuple[int, int], tuple[int, int]]
    data_format: str
    image_shape: ImageShape

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"

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


def crop_size_of(shape: tuple[int, ...], data_format: str) -> tuple[int, int]:
    dims = ImageShape.from_format(tuple(shape), data_format)
    return dims.height, dims.width


#: roi_align's pooling modes (ONNX RoiAlign's ``mode``; torchvision has avg only).
ROI_ALIGN_MODES = ("avg", "max")
#: Image dtypes of roi_align (torchvision's and ONNX's float types).
ROI_ALIGN_DTYPES = ("float16", "float32", "float64")


def roi_compute_dtype(dtype: str) -> str:
    """The dtype roi_align computes in for an image (or grads) of ``dtype``: float64 for float64,
    float32 for float32 and float16 (rounded to float16 once, at the end)."""
    return "float64" if dtype == "float64" else "float32"


@dataclass(frozen=True, slots=True)
class _RoiCall(_Call):
    """Fields shared by roi_align and its image gradient.

    ``boxes`` are ``(num_boxes, 4)`` rows ``[x1, y1, x2, y2]`` in input pixels (before
    ``spatial_scale``), in the compute dtype (:func:`roi_compute_dtype`); ``box_indices`` int32.
    """

    boxes: Any
    box_indices: Any
    spatial_scale: float
    sampling_ratio: int
    aligned: bool
    data_format: str
    image_shape: ImageShape
    values_checked: bool = dataclasses.field(default=True, kw_only=True)

    @property
    def num_boxes(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def channels_first(self) -> bool:
        return self.data_format == "channels_first"


@dataclass(frozen=True, slots=True)
class RoiAlignCall(_RoiCall):
    """A valid ``roi_align`` call (torchvision's ``roi_align``, ONNX's ``RoiAlign``).

    ``image`` has shape ``image_shape.to_format(data_format)`` and a dtype in
    :data:`ROI_ALIGN_DTYPES`; the result has shape :attr:`output_shape` and the image's dtype.
    """

    op: ClassVar[str] = "roi_align"
    arrays: ClassVar[tuple[str, ...]] = ("image", "boxes", "box_indices")
    anchor_name: ClassVar[str] = "image"

    image: Any
    output_size: tuple[int, int]
    mode: str

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        out = ImageShape(self.num_boxes, *self.output_size, self.image_shape.depth)
        return out.to_format(self.data_format)

    @property
    def output_dtype(self) -> str:
        return dtype_name(self.image)


@dataclass(frozen=True, slots=True)
class RoiAlignGradImageCall(_RoiCall):
    """A valid ``roi_align_grad_image`` call: the gradient of roi_align (``mode="avg"``) with
    respect to the image.

    ``grads`` (a float dtype of :data:`ROI_ALIGN_DTYPES`) has the shape of roi_align's result; the
    result has shape ``image_shape.to_format(data_format)`` and ``grads``' dtype.
    """

    op: ClassVar[str] = "roi_align_grad_image"
    arrays: ClassVar[tuple[str, ...]] = ("grads", "boxes", "box_indices")
    anchor_name: ClassVar[str] = "grads"

    grads: Any

    @property
    def output_size(self) -> tuple[int, int]:
        return crop_size_of(self.grads.shape, self.data_format)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.image_shape.to_format(self.data_format)

    @property
    def output_dtype(self) -> str:
        return dtype_name(self.grads)
