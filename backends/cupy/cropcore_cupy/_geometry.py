"""Launch geometry and index arithmetic: grids and blocks, vector widths, chunks, strides, divisors.

Requirements:

- **No CuPy here, and no device**: plain Python on shapes, strides and pointers, tested where there
  is no GPU (the divisors against integer division, in Python and in the host harness).
- **The result never depends on the device.** Grid shapes change only which thread computes what;
  the box-gradient chunking, which fixes the order of its sums, is a function of the shape alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from cropcore_cupy._limits import MAX_COUNT

__all__ = [
    "BLOCK",
    "GRAD_BOXES_CHUNK",
    "GROUPS_PER_THREAD",
    "MAX_GRID_Y",
    "contiguous_strides",
    "element_strides",
    "fast_divider",
    "grad_boxes_chunking",
    "launch_shape",
    "logical_strides",
    "rows_and_groups",
    "total",
    "vector_width",
]

#: Threads per block (also the fixed width of the box-gradient reduction tree).
BLOCK = 256
#: Largest gridDim.y.
MAX_GRID_Y = 65535
#: Elements of one box that one box-gradient block sums (at least; more when a box has so many
#: elements that 65535 chunks would not cover it).
GRAD_BOXES_CHUNK = 2048
#: Groups of a row one thread computes, at most (see :func:`launch_shape`).
GROUPS_PER_THREAD = 4


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


def rows_and_groups(
    planes: int, height: int, width: int, depth: int, nchw: int, vec: int = 1
) -> tuple[int, int]:
    """The rows x groups a kernel runs over, for ``planes`` arrays of height x width x depth.

    A row is one row of a plane (NHWC) or of one channel of a plane (NCHW); a group is ``vec``
    consecutive channels of one column (NHWC) or one column (NCHW): the split the headers'
    crop_row and image_row undo.
    """
    if nchw:
        return planes * depth * height, width
    return planes * height, width * depth // vec


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


def grad_boxes_chunking(elements: int) -> tuple[int, int]:
    """``(chunk, chunks)``: elements per block and blocks per box. A function of the shape only,
    so the summation order, and the result, never depend on the device.
    """
    chunk = max(GRAD_BOXES_CHUNK, -(-elements // MAX_GRID_Y))
    return chunk, max(1, -(-elements // chunk))


def contiguous_strides(shape: Sequence[int], data_format: str) -> tuple[int, int, int, int]:
    """Element strides (batch, row, column, channel) of a C-contiguous array in ``data_format``."""
    _, height, width, depth = shape
    if data_format == "channels_first":
        return (depth * height * width, width, 1, height * width)
    return (height * width * depth, width * depth, depth, 1)


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
    """The number of elements of ``shape``."""
    return math.prod(int(d) for d in shape)
