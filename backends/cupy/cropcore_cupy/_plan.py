"""How a call becomes kernel launches: kernel names, argument lists, launch geometry, limits.

Requirements:

- **No CuPy here, and no device.** Everything in this module is plain Python on shapes, strides
  and pointers, so that it is tested where there is no GPU: the argument lists built here are the
  ones the GPU kernels receive, and the ones the host test harness (tests/cupy_host_harness.cpp,
  which compiles the kernels' own arithmetic for the CPU) receives in the tests.
- **One place for the kernels' ABI.** :data:`PARAMS` lists each kernel family's parameters in the
  order of the ``CROPCORE_*_PARAMS`` macros of ``crop_and_resize.cuh``, with their C types.
- **Index widths are checked here.** The kernels use 32-bit counts (rows, groups, elements per
  box) and 64-bit offsets; :func:`decline_reason` refuses calls whose counts do not fit, and images
  taller or wider than 2**24 pixels (where float32 stops representing pixel indices exactly).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cropcore import native

__all__ = [
    "ARCHITECTURES",
    "MAX_AXIS",
    "MAX_COUNT",
    "NVRTC_OPTIONS",
    "PARAMS",
    "Launch",
    "decline_reason",
    "fast_divider",
    "forward",
    "grad_boxes",
    "grad_image",
    "kernel_names",
    "launch_shape",
    "source",
    "vector_width",
]

#: Largest count a kernel indexes with 32 bits (rows, groups, elements of one box).
MAX_COUNT = 2**31 - 1
#: Largest image height or width: float32 represents every pixel index up to 2**24 exactly.
MAX_AXIS = 2**24
#: Threads per block (also the fixed width of the box-gradient reduction tree).
BLOCK = 256
#: Largest gridDim.y.
MAX_GRID_Y = 65535
#: Elements of one box that one box-gradient block sums (at least; more when a box has so many
#: elements that 65535 chunks would not cover it).
GRAD_BOXES_CHUNK = 2048
#: Groups of a row one thread computes, at most (see :func:`launch_shape`).
GROUPS_PER_THREAD = 4

#: Architectures the CUDA source is compiled for in CI (nvcc of CUDA 13, which starts at sm_75).
#: At run time CuPy compiles for the device present with NVRTC; the code needs compute capability
#: 6.0 (double-precision atomicAdd), which older toolkits can target.
ARCHITECTURES = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
MIN_COMPUTE_CAPABILITY = 60

#: NVRTC options: TF's CPU rounding (no FMA contraction; flush-to-zero; IEEE division).
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false", "-ftz=true", "--prec-div=true", "--prec-sqrt=true")

#: The C type names of the nine image dtypes, and the three of the image gradient.
CTYPES = {
    "uint8": "unsigned char",
    "uint16": "unsigned short",
    "int8": "signed char",
    "int16": "short",
    "int32": "int",
    "int64": "long long",
    "float16": "cropcore::half_t",
    "float32": "float",
    "float64": "double",
}
GRAD_DTYPES = ("float16", "float32", "float64")
VECTOR_WIDTHS = (1, 2, 4)

_SCALARS = {"i32": np.int32, "i64": np.int64, "u32": np.uint32, "f32": np.float32}

#: Each kernel family's parameters, in the order of crop_and_resize.cuh's CROPCORE_*_PARAMS:
#: (name, kind) with kind ``ptr`` (an array, or None for a null pointer), ``i32``, ``i64``,
#: ``u32``, ``f32``, or ``div`` (a :func:`fast_divider` triple: u32 divisor, u32 magic, i32 shift).
PARAMS: dict[str, tuple[tuple[str, str], ...]] = {
    "forward": (
        ("image", "ptr"),
        ("boxes", "ptr"),
        ("box_indices", "ptr"),
        ("crops", "ptr"),
        ("height", "i32"),
        ("width", "i32"),
        ("depth", "i32"),
        ("stride_batch", "i64"),
        ("stride_row", "i64"),
        ("stride_column", "i64"),
        ("stride_channel", "i64"),
        ("crop_height", "i32"),
        ("crop_width", "i32"),
        ("nchw", "i32"),
        ("nearest", "i32"),
        ("extrapolation_value", "f32"),
        ("rows", "u32"),
        ("groups", "u32"),
        ("row_length", "u32"),
        ("groups_per_pixel", "u32"),
        ("by_crop_height", "div"),
        ("by_depth", "div"),
        ("by_groups_per_pixel", "div"),
    ),
    "grad_image": (
        ("grads", "ptr"),
        ("boxes", "ptr"),
        ("box_indices", "ptr"),
        ("output", "ptr"),
        ("box_axes", "ptr"),
        ("box_spans", "ptr"),
        ("num_boxes", "i32"),
        ("height", "i32"),
        ("width", "i32"),
        ("depth", "i32"),
        ("crop_height", "i32"),
        ("crop_width", "i32"),
        ("grads_stride_box", "i64"),
        ("grads_stride_y", "i64"),
        ("grads_stride_x", "i64"),
        ("grads_stride_channel", "i64"),
        ("output_stride_batch", "i64"),
        ("output_stride_row", "i64"),
        ("output_stride_column", "i64"),
        ("output_stride_channel", "i64"),
        ("nchw", "i32"),
        ("nearest", "i32"),
        ("rows", "u32"),
        ("groups", "u32"),
        ("by_crop_height", "div"),
        ("by_depth", "div"),
        ("by_height", "div"),
    ),
    "grad_boxes": (
        ("grads", "ptr"),
        ("image", "ptr"),
        ("boxes", "ptr"),
        ("box_indices", "ptr"),
        ("partial", "ptr"),
        ("output", "ptr"),
        ("height", "i32"),
        ("width", "i32"),
        ("depth", "i32"),
        ("crop_height", "i32"),
        ("crop_width", "i32"),
        ("num_boxes", "i32"),
        ("grads_stride_box", "i64"),
        ("grads_stride_y", "i64"),
        ("grads_stride_x", "i64"),
        ("grads_stride_channel", "i64"),
        ("image_stride_batch", "i64"),
        ("image_stride_row", "i64"),
        ("image_stride_column", "i64"),
        ("image_stride_channel", "i64"),
        ("elements", "u32"),
        ("chunk", "u32"),
        ("chunks", "u32"),
        ("by_row_elements", "div"),
        ("by_depth", "div"),
    ),
}


def kernel_names() -> list[str]:
    """Every kernel kernels.cu defines (and the host harness mirrors), by extern "C" name."""
    names = [f"cropcore_forward_{dtype}_v{vec}" for dtype in CTYPES for vec in VECTOR_WIDTHS]
    names += [
        f"cropcore_grad_image_{kind}_{dtype}"
        for dtype in GRAD_DTYPES
        for kind in ("scatter", "setup", "gather")
    ]
    names += [f"cropcore_grad_boxes_{kind}{dtype}" for dtype in CTYPES for kind in ("", "finish_")]
    return names


def family(kernel: str) -> str:
    """The :data:`PARAMS` key of a kernel name."""
    for name in ("forward", "grad_image", "grad_boxes"):
        if kernel.startswith(f"cropcore_{name}_"):
            return name
    raise ValueError(f"not a cropcore kernel: {kernel!r}")


def source() -> str:
    """kernels.cu with its headers pasted in place of their ``#include`` lines.

    crop_and_resize.cuh goes in for its include in kernels.cu, and cropcore's shared arithmetic
    header (:mod:`cropcore.native`) for its include in crop_and_resize.cuh. One self-contained
    text, so that CuPy's on-disk kernel cache (keyed by the source and the options) can never pair
    a new kernels.cu with an old header, and NVRTC needs no include path.
    """
    package = resources.files("cropcore_cupy")
    text = package.joinpath("kernels.cu").read_text(encoding="utf-8")
    for name, header in (
        ("crop_and_resize.cuh", package.joinpath("crop_and_resize.cuh")),
        (native.HEADER, Path(native.include_dir()) / native.HEADER),
    ):
        include = f'#include "{name}"'
        if include not in text:
            raise RuntimeError(f"the CUDA source does not include {name}")
        text = text.replace(include, header.read_text(encoding="utf-8"), 1)
    return text


def nvrtc_options(op: str) -> tuple[str, ...]:
    """Options for the module of one op family (``forward``, ``grad_image``, ``grad_boxes``)."""
    return (*NVRTC_OPTIONS, f"-DCROPCORE_OP_{op.upper()}")


# --------------------------------------------------------------------------------------------------
# Arithmetic helpers


def fast_divider(divisor: int) -> tuple[int, int, int]:
    """``(divisor, magic, shift)`` with ``n // divisor == (umulhi(n, magic) + n) >> shift``.

    Valid for ``0 <= n < 2**31`` and ``1 <= divisor < 2**31`` (the round-up method of Granlund and
    Montgomery, as PyTorch's IntDivider uses it).
    """
    if not 1 <= divisor <= MAX_COUNT:
        raise ValueError(f"divisor must be in [1, 2**31), got {divisor}")
    shift = max(0, (divisor - 1).bit_length())  # smallest shift with 2**shift >= divisor
    magic = ((1 << 32) * ((1 << shift) - divisor)) // divisor + 1
    if not 0 < magic < (1 << 32):
        raise AssertionError(f"magic number for {divisor} out of range: {magic}")
    return divisor, magic, shift


def launch_shape(rows: int, groups: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(grid, block)`` for a rows x groups kernel: groups along x (coalesced), rows along y.

    A block is 256 threads: as many along x as the groups need (a power of two), the rest along
    y, so that short rows (7 columns of an NCHW crop) do not leave most threads idle. A thread
    takes up to :data:`GROUPS_PER_THREAD` groups of its row, which spreads the row's set-up (the
    box's coordinates, two divisions) over several outputs.
    """
    groups = max(1, groups)
    block_x = min(BLOCK, 1 << (groups - 1).bit_length())
    block_y = BLOCK // block_x
    grid_x = -(-groups // (block_x * GROUPS_PER_THREAD))
    grid_y = min(max(1, -(-rows // block_y)), MAX_GRID_Y)
    return (grid_x, grid_y, 1), (block_x, block_y, 1)


def vector_width(
    depth: int,
    itemsize: int,
    strides: Sequence[int],
    shape: Sequence[int],
    pointer: int,
) -> int:
    """Channels per thread of an NHWC forward crop: 4, 2 or 1.

    Several channels are loaded and stored as one vector (at most 16 bytes) when the channels are
    contiguous, their count is a multiple, and every pixel address is aligned to the vector.
    ``strides`` and ``shape`` are the image's (batch, row, column, channel) in elements.
    """
    for vec in (4, 2):
        if vec * itemsize > 16 or depth % vec or strides[3] != 1:
            continue
        if any(s % vec for s, n in zip(strides[:3], shape[:3], strict=True) if n > 1):
            continue
        if pointer % (vec * itemsize):
            continue
        return vec
    return 1


def _count(name: str, value: int) -> str | None:
    if value > MAX_COUNT:
        return f"{name} = {value} exceeds 2**31 - 1, the largest count these kernels index"
    return None


def decline_reason(call: Any) -> str | None:
    """Why the CUDA kernels cannot run ``call`` (a validated cropcore call), or ``None``."""
    if call.op == "crop2d":
        return None
    shape = call.image_shape
    if shape.height > MAX_AXIS or shape.width > MAX_AXIS:
        return (
            f"image height {shape.height} or width {shape.width} exceeds 2**24, beyond which "
            "float32 sample coordinates cannot address every pixel"
        )
    crop_height, crop_width = call.crop_size
    num_boxes, depth = call.num_boxes, shape.depth
    checks = [
        ("num_boxes * crop_height * depth", num_boxes * crop_height * max(depth, 1)),
        ("crop_width * depth", crop_width * depth),
    ]
    if call.op == "crop_and_resize_grad_boxes":
        checks.append(("crop_height * crop_width * depth", crop_height * crop_width * depth))
    if call.op == "crop_and_resize_grad_image":
        checks += [
            ("batch * height * depth", shape.batch * shape.height * max(depth, 1)),
            ("width * depth", shape.width * depth),
        ]
    for name, value in checks:
        reason = _count(name, value)
        if reason:
            return reason
    return None


# --------------------------------------------------------------------------------------------------
# Launches


@dataclass(frozen=True)
class Launch:
    """One kernel launch: which kernel, of which op module, on which grid, with which arguments.

    ``args`` is in kernel-parameter order; arrays (and ``None`` for null pointers) are passed
    through as given, scalars are NumPy scalars of the parameter's C type.
    """

    kernel: str
    op: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple[Any, ...]


def _arguments(kernel: str, values: dict[str, Any]) -> tuple[Any, ...]:
    out: list[Any] = []
    spec = PARAMS[family(kernel)]
    missing = {name for name, _ in spec} - set(values)
    extra = set(values) - {name for name, _ in spec}
    if missing or extra:
        raise AssertionError(f"{kernel}: missing {sorted(missing)}, unexpected {sorted(extra)}")
    for name, kind in spec:
        value = values[name]
        if kind == "ptr":
            out.append(value)
        elif kind == "div":
            divisor, magic, shift = value
            out += [np.uint32(divisor), np.uint32(magic), np.int32(shift)]
        else:
            out.append(_SCALARS[kind](value))
    return tuple(out)


def _nchw(data_format: str) -> int:
    return int(data_format == "channels_first")


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
    _, height, width, depth = (int(d) for d in image_shape)
    crop_height, crop_width = crop_size
    num_boxes = int(boxes.shape[0])
    nchw = _nchw(data_format)
    if nchw:
        vec = 1
        rows, groups = num_boxes * depth * crop_height, crop_width
        row_length = crop_width
    else:
        vec = vector_width(
            depth, np.dtype(dtype).itemsize, image_strides, image_shape, image_pointer
        )
        rows, groups = num_boxes * crop_height, crop_width * depth // vec
        row_length = crop_width * depth
    groups_per_pixel = max(1, depth // vec)
    kernel = f"cropcore_forward_{dtype}_v{vec}"
    values = {
        "image": image,
        "boxes": boxes,
        "box_indices": box_indices,
        "crops": crops,
        "height": height,
        "width": width,
        "depth": depth,
        "stride_batch": image_strides[0],
        "stride_row": image_strides[1],
        "stride_column": image_strides[2],
        "stride_channel": image_strides[3],
        "crop_height": crop_height,
        "crop_width": crop_width,
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
    return Launch(kernel, "forward", grid, block, _arguments(kernel, values))


def _contiguous_strides(shape: Sequence[int], data_format: str) -> tuple[int, int, int, int]:
    """Element strides (batch, row, column, channel) of a C-contiguous array in ``data_format``."""
    _, height, width, depth = shape
    if data_format == "channels_first":
        return (depth * height * width, width, 1, height * width)
    return (height * width * depth, width * depth, depth, 1)


def grad_image(
    *,
    grads: Any,
    boxes: Any,
    box_indices: Any,
    output: Any,
    box_axes: Any,
    box_spans: Any,
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
    ``(num_boxes, 5)``) and one launch that writes every element of ``output`` (no zeroing).
    ``output``: C-contiguous in ``data_format``; ``grads_strides``: (box, y, x, channel).
    """
    batch, height, width, depth = (int(d) for d in image_shape)
    crop_height, crop_width = crop_size
    num_boxes = int(boxes.shape[0])
    nchw = _nchw(data_format)
    out_strides = _contiguous_strides((batch, height, width, depth), data_format)
    values = {
        "grads": grads,
        "boxes": boxes,
        "box_indices": box_indices,
        "output": output,
        "box_axes": box_axes if deterministic else None,
        "box_spans": box_spans if deterministic else None,
        "num_boxes": num_boxes,
        "height": height,
        "width": width,
        "depth": depth,
        "crop_height": crop_height,
        "crop_width": crop_width,
        "grads_stride_box": grads_strides[0],
        "grads_stride_y": grads_strides[1],
        "grads_stride_x": grads_strides[2],
        "grads_stride_channel": grads_strides[3],
        "output_stride_batch": out_strides[0],
        "output_stride_row": out_strides[1],
        "output_stride_column": out_strides[2],
        "output_stride_channel": out_strides[3],
        "nchw": nchw,
        "nearest": int(method == "nearest"),
        "by_crop_height": fast_divider(crop_height),
        "by_depth": fast_divider(max(1, depth)),
        "by_height": fast_divider(height),
    }
    if not deterministic:
        if nchw:
            rows, groups = num_boxes * depth * crop_height, crop_width
        else:
            rows, groups = num_boxes * crop_height, crop_width * depth
        kernel = f"cropcore_grad_image_scatter_{dtype}"
        grid, block = launch_shape(rows, groups)
        values.update(rows=rows, groups=groups)
        return [Launch(kernel, "grad_image", grid, block, _arguments(kernel, values))]
    setup = f"cropcore_grad_image_setup_{dtype}"
    setup_values = {**values, "rows": num_boxes, "groups": 1}
    setup_grid = (max(1, -(-num_boxes // BLOCK)), 1, 1)
    if nchw:
        rows, groups = batch * depth * height, width
    else:
        rows, groups = batch * height, width * depth
    gather = f"cropcore_grad_image_gather_{dtype}"
    grid, block = launch_shape(rows, groups)
    values.update(rows=rows, groups=groups)
    return [
        Launch(setup, "grad_image", setup_grid, (BLOCK, 1, 1), _arguments(setup, setup_values)),
        Launch(gather, "grad_image", grid, block, _arguments(gather, values)),
    ]


def grad_boxes_chunking(elements: int) -> tuple[int, int]:
    """``(chunk, chunks)``: elements per block and blocks per box. A function of the shape only,
    so the summation order, and the result, never depend on the device.
    """
    chunk = max(GRAD_BOXES_CHUNK, -(-elements // MAX_GRID_Y))
    return chunk, max(1, -(-elements // chunk))


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
    _, height, width, depth = (int(d) for d in image_shape)
    crop_height, crop_width = crop_size
    num_boxes = int(boxes.shape[0])
    elements = crop_height * crop_width * depth
    chunk, chunks = grad_boxes_chunking(elements)
    values = {
        "grads": grads,
        "image": image,
        "boxes": boxes,
        "box_indices": box_indices,
        "partial": partial if chunks > 1 else None,
        "output": output,
        "height": height,
        "width": width,
        "depth": depth,
        "crop_height": crop_height,
        "crop_width": crop_width,
        "num_boxes": num_boxes,
        "grads_stride_box": grads_strides[0],
        "grads_stride_y": grads_strides[1],
        "grads_stride_x": grads_strides[2],
        "grads_stride_channel": grads_strides[3],
        "image_stride_batch": image_strides[0],
        "image_stride_row": image_strides[1],
        "image_stride_column": image_strides[2],
        "image_stride_channel": image_strides[3],
        "elements": elements,
        "chunk": chunk,
        "chunks": chunks,
        "by_row_elements": fast_divider(max(1, crop_width * depth)),
        "by_depth": fast_divider(max(1, depth)),
    }
    block = (BLOCK, 1, 1)
    kernel = f"cropcore_grad_boxes_{dtype}"
    launches = [
        Launch(kernel, "grad_boxes", (num_boxes, chunks, 1), block, _arguments(kernel, values))
    ]
    if chunks > 1:
        finish = f"cropcore_grad_boxes_finish_{dtype}"
        launches.append(
            Launch(finish, "grad_boxes", (num_boxes, 1, 1), block, _arguments(finish, values))
        )
    return launches


def element_strides(strides_bytes: Sequence[int], itemsize: int) -> tuple[int, ...] | None:
    """Byte strides in elements, or None if one is not a whole number of elements."""
    if any(s % itemsize for s in strides_bytes):
        return None
    return tuple(s // itemsize for s in strides_bytes)


def logical_strides(strides: Sequence[int], data_format: str) -> tuple[int, int, int, int]:
    """Strides of a 4-D array in ``data_format`` order, as (batch/box, row, column, channel)."""
    if data_format == "channels_first":
        return (strides[0], strides[2], strides[3], strides[1])
    return (strides[0], strides[1], strides[2], strides[3])


def total(shape: Sequence[int]) -> int:
    return math.prod(int(d) for d in shape)
