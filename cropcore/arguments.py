"""Argument checks: each turns one user argument into its canonical form, or refuses it.

Requirements: checks that read array values (finite boxes, box indices in range) are separate from
those that read only shapes and dtypes (``boxes_shape_arg`` against ``boxes_values_arg``), so that
:mod:`cropcore.spec` can check every size before it reads anything. Refusals are ``ValueError``
(values, shapes), ``TypeError`` (types, dtypes) or ``IndexError`` (box indices), each naming the
argument and the value. The common case (NumPy arrays already in canonical dtypes) takes quick
routes that return exactly what the general route returns.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Any

import numpy as np

from cropcore import config
from cropcore.arrays import dtype_name, library_for, library_name
from cropcore.calls import (
    DATA_FORMATS,
    GRAD_IMAGE_DTYPES,
    IMAGE_DTYPES,
    METHODS,
    ImageShape,
)

__all__ = [
    "as_array",
    "boxes_arg",
    "boxes_cast_arg",
    "boxes_shape_arg",
    "boxes_values_arg",
    "crop2d_input_arg",
    "crop_size_arg",
    "cropping_arg",
    "data_format_arg",
    "default_layout_arg",
    "extrapolation_value_arg",
    "grad_dtype_arg",
    "grads_arg",
    "image_arg",
    "image_shape_arg",
    "method_arg",
    "per_image_boxes",
]

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
#: Index dtypes whose values the cast to int32 could wrap.
_WIDE_INDEX_DTYPES = frozenset(("int64", "uint32", "uint64"))
_UNSIGNED_VIEW = {np.dtype(np.int32): np.dtype(np.uint32), np.dtype(np.int64): np.dtype(np.uint64)}


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


# A dtype name's NumPy kind ("f", "i", "u", ...), filled for the names cropcore meets, so that a
# traced call (torch.compile) finds it with a dictionary look-up.
_KINDS = {
    name: np.dtype(name).kind
    for name in (*IMAGE_DTYPES, "uint32", "uint64", "bool", "float128", "complex64", "complex128")
    if hasattr(np, name)
}


def _kind(dtype: str) -> str:
    kind = _KINDS.get(dtype)
    if kind is None:
        try:
            kind = np.dtype(dtype).kind
        except TypeError:
            kind = "?"  # a dtype NumPy does not have (bfloat16, ...)
        _KINDS[dtype] = kind
    return kind


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


def default_layout_arg(image: Any, name: str = "image", stacklevel: int = 3) -> str:
    """``"channels_last"`` (the default ``data_format``), warning where ``image``'s shape says it is
    evidently NCHW: read as NHWC it has at most 4 rows, a width over 4 times its height and more
    than 4 channels, which is how an NCHW image of 1 to 4 channels (``(N, 3, 224, 224)``) reads.

    Only for a ``data_format`` left to its default; the check reads the shape only. An NHWC image
    that looks so (a strip of 1 to 4 rows with many channels) gets the warning too, which passing
    ``data_format="channels_last"`` silences.
    """
    shape = getattr(image, "shape", None)
    if shape is not None and len(shape) == 4:
        _, height, width, depth = shape
        # (not while traced: torch.compile(fullgraph=True) cannot trace a warning; eager warns)
        if (
            height <= 4
            and width > 4 * height
            and depth > 4
            and library_for(image).residence(image) != "traced"
        ):
            warnings.warn(
                f"{name} of shape {tuple(int(d) for d in shape)} was read as channels_last "
                f"(NHWC, the default): {int(height)} rows of {int(depth)} channels. If it is "
                "NCHW (batch, channels, height, width), pass data_format='channels_first'; pass "
                "data_format='channels_last' to say it is NHWC and silence this warning",
                UserWarning,
                stacklevel=stacklevel,
            )
    return "channels_last"


def method_arg(method: Any, allowed: tuple[str, ...] = METHODS) -> str:
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, one of {allowed}, got {_short(method)}")
    if method not in allowed:
        choices = " or ".join(repr(m) for m in allowed)
        raise ValueError(
            f"method must be {choices} (case-sensitive, as in TensorFlow), got {method!r}"
        )
    return method


#: How the messages name an image's axes and a gradient's (the crops').
_IMAGE_AXES = ("batch", "height", "width")
_CROPS_AXES = ("num_boxes", "crop_height", "crop_width")


def _layout(data_format: str, axes: tuple[str, str, str] = _IMAGE_AXES) -> str:
    n, h, w = axes
    return (
        f"({n}, depth, {h}, {w})" if data_format == "channels_first" else f"({n}, {h}, {w}, depth)"
    )


def _four_d(
    x: Any, name: str, data_format: str, axes: tuple[str, str, str] = _IMAGE_AXES
) -> tuple[Any, tuple[int, ...], ImageShape]:
    """``x`` as an array with its shape and dimensions, checked to be 4-D with positive spatial
    dimensions (``axes`` name the batch, height and width axes in the messages)."""
    x = as_array(x, name)
    shape = _shape(x)
    if len(shape) != 4:
        raise ValueError(
            f"{name} must be 4-D {_layout(data_format, axes)} for data_format={data_format!r}, "
            f"got shape {shape}"
        )
    dims = ImageShape.from_format(shape, data_format)
    _, h, w = axes
    if dims.height <= 0 or dims.width <= 0:
        raise ValueError(
            f"{name} {h} and {w} must be positive, got {h}={dims.height}, {w}={dims.width} "
            f"(shape {shape}, data_format={data_format!r})"
        )
    return x, shape, dims


def image_arg(image: Any, data_format: str, name: str = "image") -> tuple[Any, ImageShape]:
    if type(image) is np.ndarray and image.ndim == 4 and image.dtype.isnative:
        dims = ImageShape.from_format(image.shape, data_format)
        if dims.height > 0 and dims.width > 0 and image.dtype in _NUMPY_IMAGE_DTYPES:
            return image, dims
    image, _, dims = _four_d(image, name, data_format)
    dtype = dtype_name(image)
    if dtype not in IMAGE_DTYPES and dtype != "bfloat16":
        raise TypeError(
            f"{name} dtype must be one of {', '.join(IMAGE_DTYPES)} (or bfloat16, on backends "
            f"that declare it: torch); got {dtype}"
        )
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
    grads, shape, dims = _four_d(grads, "grads", data_format, _CROPS_AXES)
    dtype = dtype_name(grads)
    if _kind(dtype) != "f":
        raise TypeError(
            f"grads must be a floating-point array (it is cast to float32), got {dtype}"
        )
    return library_for(grads).astype(grads, "float32"), shape, dims


def boxes_arg(boxes: Any, box_indices: Any, batch: int) -> tuple[Any, Any]:
    """Canonical float32 boxes and int32 box indices, checked against an image batch of ``batch``."""
    boxes, box_indices = boxes_shape_arg(boxes, box_indices)
    return boxes_values_arg(boxes, box_indices, batch)


def boxes_shape_arg(boxes: Any, box_indices: Any) -> tuple[Any, Any]:
    """``boxes`` and ``box_indices`` as arrays whose shapes and dtypes are checked; no value is read.

    Arrays are returned as given (no cast), lists as NumPy arrays. An empty ``box_indices`` list
    is taken as int32, as TensorFlow takes ``[]`` (NumPy would make it float64).
    """
    if (
        type(boxes) is np.ndarray
        and type(box_indices) is np.ndarray
        and boxes.dtype == _FLOAT32
        and box_indices.dtype in _UNSIGNED_VIEW
        and boxes.ndim == 2
        and boxes.shape[1] == 4
        and box_indices.shape == boxes.shape[:1]
    ):
        return boxes, box_indices
    if _is_box_list(boxes):
        if box_indices is not None:
            raise ValueError(
                "box_indices must be None when boxes is a list of per-image arrays (the image "
                "index of each box is its array's position in the list)"
            )
        return per_image_boxes(boxes, "float32")
    given_indices = box_indices
    boxes = as_array(boxes, "boxes")
    if box_indices is None:
        raise TypeError(
            "box_indices must be an array of image indices, got None (None is allowed only with "
            "boxes given as a list of per-image (L, 4) arrays)"
        )
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
        if indices_shape == (0,) and box_indices is not given_indices:  # [] from a Python list
            return boxes, np.zeros(0, np.int32)
        raise TypeError(f"box_indices must be an integer array, got {indices_dtype}")
    return boxes, box_indices


def values_checked(boxes: Any, box_indices: Any) -> bool:
    """Whether a call's box values are read and checked: where they are on the host, or on a
    device in strict mode (``CROPCORE_STRICT``); never where they are traced (no values exist)."""
    if type(boxes) is np.ndarray and type(box_indices) is np.ndarray:  # the common case
        return True
    first = library_for(boxes).residence(boxes)
    second = library_for(box_indices).residence(box_indices)
    if first == second == "host":
        return True
    return first != "traced" and second != "traced" and config.get("CROPCORE_STRICT")


def boxes_cast_arg(boxes: Any, box_indices: Any, batch: int) -> tuple[Any, Any]:
    """Checked ``boxes`` and ``box_indices`` (from :func:`boxes_shape_arg`) cast to float32 and
    int32, without reading a value.

    Indices of a wider dtype are first clipped to ``[-1, batch]``, so that the cast cannot wrap an
    out-of-range index into a valid one (2**32 to 0): a backend that receives unchecked indices
    sees every bad one as out of range.
    """
    boxes = library_for(boxes).astype(boxes, "float32")
    lib = library_for(box_indices)
    dtype = dtype_name(box_indices)
    if dtype in _WIDE_INDEX_DTYPES:
        if dtype != "int64":  # torch clips no unsigned dtype; uint64 beyond int64 turns negative
            box_indices = lib.astype(box_indices, "int64")
        box_indices = box_indices.clip(-1, batch)
    return boxes, lib.astype(box_indices, "int32")


def boxes_values_arg(boxes: Any, box_indices: Any, batch: int) -> tuple[Any, Any]:
    """:func:`boxes_cast_arg`, then every box finite and every index in ``[0, batch)``.

    Reads the values on the host (a device synchronisation for device arrays).
    """
    if type(boxes) is np.ndarray and type(box_indices) is np.ndarray:
        checked = _numpy_boxes(boxes, box_indices, batch)
        if checked is not None:
            return checked
    boxes = library_for(boxes).astype(boxes, "float32")
    if _few_valid_boxes(boxes, box_indices, batch):
        return boxes, library_for(box_indices).astype(box_indices, "int32")
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


def _few_valid_boxes(boxes: Any, box_indices: Any, batch: int) -> bool:
    """Whether a few float32 ``boxes`` (an array with ``tolist``: a torch CPU tensor) are finite and
    their indices in ``[0, batch)``, read as Python lists: for a few boxes quicker than DLPack and
    NumPy reductions (about 40 us of a small torch call). ``False`` also means "not checked here"."""
    shape = getattr(boxes, "shape", ())
    if not (len(shape) == 2 and 0 < shape[0] <= _FEW_BOXES) or not hasattr(box_indices, "tolist"):
        return False
    values = boxes.tolist()
    indices = box_indices.tolist()
    if type(values) is not list or type(indices) is not list:
        return False
    # float64 sums of float32 values cannot overflow: finite exactly when every value is
    return (
        math.isfinite(sum(sum(row) for row in values))
        and min(indices) >= 0
        and max(indices) < batch
    )


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
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Integral):
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
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
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
    return isinstance(x, numbers.Integral) and not isinstance(x, (bool, np.bool_))


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


def crop2d_input_arg(x: Any, data_format: str) -> tuple[Any, tuple[int, ...]]:
    """``crop2d``'s ``x`` as an array, and its shape; it must be 4-D (any dtype)."""
    x = as_array(x, "x")
    shape = _shape(x)
    if len(shape) != 4:
        raise ValueError(
            f"x must be 4-D {_layout(data_format)} for data_format={data_format!r}, "
            f"got shape {shape} (ndim={len(shape)})"
        )
    return x, shape


# -- box lists (torchvision's per-image form), shared with cropcore.roi_arguments


def _is_box_list(boxes: Any) -> bool:
    """A list (or tuple) of 2-D arrays: torchvision's per-image box lists."""
    return (
        isinstance(boxes, (list, tuple))
        and len(boxes) > 0
        and all(hasattr(b, "shape") and hasattr(b, "dtype") for b in boxes)
    )


def per_image_boxes(boxes: list[Any], dtype: str) -> tuple[Any, Any]:
    """A list of per-image ``(L, 4)`` arrays (torchvision's form) as one ``(K, 4)`` array of
    ``dtype`` and the int32 image index of each box (its array's position); no value is read."""
    parts = []
    for i, part in enumerate(boxes):
        shape = _shape(part)
        if len(shape) != 2 or shape[1] != 4:
            raise ValueError(f"boxes[{i}] must have shape (L, 4), got shape {shape}")
        _real_boxes(part, f"boxes[{i}]")
        parts.append(library_for(part).astype(part, dtype))
    lib = library_for(parts[0])
    if any(library_name(p) != lib.name for p in parts):
        raise TypeError("the per-image arrays of boxes must all be of one array library")
    counts = [int(_shape(p)[0]) for p in parts]
    indices = np.repeat(np.arange(len(parts), dtype=np.int32), counts)
    return _concatenate(parts), indices


def _real_boxes(boxes: Any, name: str) -> None:
    dtype = dtype_name(boxes)
    if _kind(dtype) not in _REAL_KINDS and dtype != "bfloat16":
        raise TypeError(f"{name} must be a real numeric array, got {dtype}")


def _concatenate(parts: list[Any]) -> Any:
    lib = library_for(parts[0])
    if lib.name == "numpy":
        return np.concatenate(parts)
    module = lib.module()
    return module.cat(parts) if lib.name == "torch" else module.concatenate(parts)
