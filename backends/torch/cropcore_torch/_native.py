"""Compiled CPU loops for the torch backend: TF's loop nests over the tables of :mod:`.kernels`.

Why: composed torch ops make about thirteen passes over a crop-sized tensor (four gathers and nine
float32 operations, since fusing them into ``addcmul``/``lerp`` would round differently), and
measured on the ROI workload that is several times slower than TensorFlow's single fused loop.
These loops make one pass, read the image once per sample and write the result once.

Requirements:

- **Exactly TF's arithmetic.** Each loop body is the C++ of
  ``tensorflow/core/kernels/image/crop_and_resize_op.cc``, expression for expression, compiled with
  ``-ffp-contract=off`` (no FMA) and without fast-math, and run under TF's floating-point modes
  (flush-to-zero, denormals-are-zero). The per-box sample tables (indices, weights, range flags)
  are those of :func:`cropcore_torch.kernels.box_samples`, computed by a compiled loop too (a few
  dozen small torch operations would dominate the cost of small calls); the tests hold the two
  equal.
- **Optional.** The loops are C (``_native.c``, with the arithmetic header it shares with the
  CUDA kernels, :mod:`cropcore.native`), built and loaded by :mod:`._build`. Without a compiler,
  or with ``CROPCORE_TORCH_NATIVE=0``, the torch backend runs :mod:`.kernels` instead: same
  results, slower.
- **Safe.** A box index outside ``[0, batch)`` is reported before anything is read (the caller
  raises ``IndexError``), so the unvalidated entry point cannot read outside the image either.
- **Any layout.** Every array is addressed through its four strides, so NCHW, NHWC,
  channels-last and sliced tensors are read and written in place; only NCHW tensors with more
  than :data:`_FEW_CHANNELS` channels are first transposed to channels innermost (when that costs
  less than the result), because walking channel planes per sample reads a cache line per value.
  Crop-sized NCHW tensors (results, float32 gradients) are transposed box by box inside the loops,
  in a per-thread scratch buffer that stays in cache, by 8 x 8 register blocks. NCHW float32
  images and image gradients with many channels go by blocks of channel planes instead
  (:mod:`._native_planes`), transposing neither tensor whole.
- **Threads.** ctypes releases the GIL; large calls are split into chunks of box rows or boxes
  (forward), boxes (box gradient) or images (image gradient: each image's pixels are summed by
  one thread, in TF's order, so the result does not depend on the split), taken in turn by the
  calling thread and ``torch.get_num_threads() - 1`` pool threads. Large results are written with
  non-temporal stores.
- **roi_align's loops** are in the same library; :mod:`._native_roi` calls them.
"""

from __future__ import annotations

import ctypes
import itertools
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from cropcore import hostmem
from cropcore_torch import kernels
from cropcore_torch._build import _SUFFIX, available, library, status

__all__ = [
    "available",
    "channels_first",
    "fill_crops",
    "fill_grad_boxes",
    "fill_grad_image",
    "status",
]

logger = logging.getLogger("cropcore.torch")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = 0

# Work per thread below which a call runs on the calling thread alone (output elements).
_MIN_WORK_PER_THREAD = 1 << 16
# Results larger than this are written with non-temporal stores (they would not stay in cache).
_STREAM_BYTES = 8 << 20
# Up to this many channels, NCHW images and results are read and written plane by plane in place;
# with more, the loops work channels innermost and transpose.
_FEW_CHANNELS = 4

# The sizes tf_crop_and_resize.h is exact for (CROPCORE_MAX_IMAGE_SIDE, CROPCORE_MAX_CROP_SIDE).
_MAX_IMAGE_SIDE = 1 << 24
_MAX_CROP_SIDE = (1 << 31) - 1
# --------------------------------------------------------------------------------------------------
# Calling the loops


def _run_split(
    function, fixed: tuple, total: int, work: int, scratch=None, *, per_thread: int = 4
) -> list[int]:
    """Call ``function(*fixed, [scratch,] start, stop)`` over ``[0, total)``, split across threads.

    ``work``: the number of output elements, to decide whether threads are worth it. ``scratch``:
    makes a per-thread argument (a buffer's address) and the tensor that owns its memory.

    The range is cut into a few chunks per thread that the calling thread and the pool's threads
    take in turn, so that a thread the OS has descheduled (a busy machine) delays the call by one
    chunk, not by half of it. ``per_thread``: the chunks per thread (fewer: larger chunks).
    """
    threads = min(torch.get_num_threads(), total, max(1, work // _MIN_WORK_PER_THREAD))
    if threads <= 1:  # a small call: no chunks, no lock
        if scratch is None:
            return [function(*fixed, 0, total)]
        pointer, owner = scratch()
        result = function(*fixed, pointer, 0, total)
        del owner  # the scratch buffer lives until here
        return [result]
    pieces = 1 if threads <= 1 else min(total, per_thread * threads)
    bounds = [total * i // pieces for i in range(pieces + 1)]
    chunks = [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
    taken = iter(range(len(chunks)))
    lock = threading.Lock()

    def worker() -> list[int]:
        extra: tuple = ()
        owner = None
        if scratch is not None:
            pointer, owner = scratch()
            extra = (pointer,)
        results = []
        while True:
            with lock:
                i = next(taken, None)
            if i is None:
                del owner  # the scratch buffer lives until here
                return results
            results.append(function(*fixed, *extra, *chunks[i]))

    if threads <= 1:
        return worker()
    helpers = [_thread_pool().submit(worker) for _ in range(threads - 1)]
    results = worker()
    for helper in helpers:
        results += helper.result()
    return results


def _thread_pool() -> ThreadPoolExecutor:
    """This process's pool. A forked child (a DataLoader worker) gets a new one: the parent's
    threads do not exist there, and submitting to their pool would wait forever."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        with _lock:
            if _pool is None or _pool_pid != os.getpid():
                _pool = ThreadPoolExecutor(thread_name_prefix="cropcore-torch")
                _pool_pid = os.getpid()
    return _pool


def _check(results: list[int], box_indices: Tensor, batch: int) -> None:
    bad = [r for r in results if r >= 0]
    if bad:
        i = min(bad)
        raise IndexError(
            f"box_indices must be in [0, batch) = [0, {batch}); got box_indices[{i}] = "
            f"{int(box_indices[i])}"
        )


class _Tables(NamedTuple):
    """The sample tables of both crop axes in one NumPy block (a small call pays for one
    allocation, not a dozen), and the addresses the loops take.

    The block holds, for rows (``R = N * crop_height`` samples) then columns (``C``): int64 low,
    high and nearest (rows: ``3R``, then columns: ``3C``), float32 lerp (``R``, then ``C``) and
    uint8 valid (``R``, then ``C``).
    """

    block: np.ndarray  # uint8, the memory of every table
    address: int  # of block
    shape: tuple[int, int, int]  # N, crop_height, crop_width

    def pointers(self, nearest: bool) -> list[int]:
        """The eight tables (low or nearest, high, lerp, valid; rows, then columns)."""
        num_boxes, crop_height, crop_width = self.shape
        rows, cols = num_boxes * crop_height, num_boxes * crop_width
        i = self.address
        f = i + 24 * (rows + cols)
        v = f + 4 * (rows + cols)
        row_low = i + 16 * rows if nearest else i
        col_low = i + 24 * rows + (16 * cols if nearest else 0)
        row_tables = [row_low, i + 8 * rows, f, v]
        return [*row_tables, col_low, i + 24 * rows + 8 * cols, f + 4 * rows, v + rows]

    def samples(self) -> tuple[kernels.Samples, kernels.Samples]:
        """The tables as :class:`cropcore_torch.kernels.Samples` (views, no copy)."""
        num_boxes, crop_height, crop_width = self.shape
        rows, cols = num_boxes * crop_height, num_boxes * crop_width
        total = rows + cols
        indices = torch.from_numpy(self.block[: 24 * total].view(np.int64))
        lerp = torch.from_numpy(self.block[24 * total : 28 * total].view(np.float32))
        valid = torch.from_numpy(self.block[28 * total :]).view(torch.bool)
        result = []
        for start, crop in ((0, crop_height), (rows, crop_width)):
            count = num_boxes * crop
            low, high, nearest = indices[3 * start : 3 * (start + count)].view(3, num_boxes, crop)
            lerps = lerp[start : start + count].view(num_boxes, crop)
            result.append(
                kernels.Samples(
                    valid[start : start + count].view(num_boxes, crop), low, high, lerps, nearest
                )
            )
        return result[0], result[1]


def _sample_tables(
    lib: ctypes.CDLL,
    boxes: Tensor,
    image_height: int,
    image_width: int,
    crop_size: tuple[int, int],
    *,
    ratio_first: bool = False,
) -> _Tables:
    """:func:`cropcore_torch.kernels.box_samples`, computed by the compiled ``samples`` loop.

    The same tables, computed under TF's floating-point modes in one call per axis instead of a few
    dozen small torch operations (which dominate the cost of small calls).
    """
    boxes = boxes.to(torch.float32).contiguous()
    num_boxes = boxes.shape[0]
    rows, cols = num_boxes * crop_size[0], num_boxes * crop_size[1]
    block = np.empty(29 * (rows + cols), np.uint8)
    tables = _Tables(block, block.ctypes.data, (num_boxes, *crop_size))
    if num_boxes:
        low, high, lerp, valid, col_low, col_high, col_lerp, col_valid = tables.pointers(False)
        box_pointer = boxes.data_ptr()
        lib.samples(
            box_pointer, num_boxes, 0, image_height, crop_size[0], int(ratio_first),
            low, high, low + 16 * rows, lerp, valid,
        )  # fmt: skip
        lib.samples(
            box_pointer, num_boxes, 1, image_width, crop_size[1], int(ratio_first),
            col_low, col_high, col_low + 16 * cols, col_lerp, col_valid,
        )  # fmt: skip
    return tables


def _box_samples(
    lib: ctypes.CDLL,
    boxes: Tensor,
    image_height: int,
    image_width: int,
    crop_size: tuple[int, int],
    *,
    ratio_first: bool = False,
) -> tuple[kernels.Samples, kernels.Samples]:
    """The tables of :func:`_sample_tables` as :class:`cropcore_torch.kernels.Samples`."""
    return _sample_tables(
        lib, boxes, image_height, image_width, crop_size, ratio_first=ratio_first
    ).samples()


def _strided(x: Tensor) -> tuple[int, ...]:
    """A 4-D array as the loops take it: its address, then its four strides (in elements)."""
    return (x.data_ptr(), *x.stride())


def _transposed(x: Tensor, rows: int, cols: int) -> Tensor:
    """A new contiguous float32 tensor holding each of the ``x.shape[0]`` matrices ``(rows, cols)``
    of the contiguous float32 ``x``, transposed, by the compiled tiled loop (torch's strided copy of
    this permutation is several times slower). Memory from cropcore's host pool, as results'."""
    n = x.shape[0]
    out = torch.from_numpy(hostmem.pool().empty((n, cols, rows), np.float32))
    lib = library()
    assert lib is not None
    fixed = (x.data_ptr(), rows * cols, rows, cols, out.data_ptr())
    _run_split(lib.planes_to_channels_f32, fixed, n, x.numel())
    return out


def _channels_innermost(x: Tensor) -> Tensor:
    """An NHWC view ``x``, copied so that channels are innermost unless they are or are few."""
    if x.stride(3) == 1 or x.shape[3] <= _FEW_CHANNELS:
        return x
    n, height, width, depth = x.shape
    planes = height * width
    if x.dtype == torch.float32 and x.stride() == (depth * planes, width, 1, planes) and planes:
        # A contiguous NCHW float32 tensor (features, the gradient of NCHW crops).
        return _transposed(x.permute(0, 3, 1, 2), depth, planes).view(n, height, width, depth)
    return x.contiguous()


def _box_planes(grads: Tensor) -> bool:
    """Whether the loops should transpose the NHWC view ``grads`` box by box, in a per-thread
    scratch buffer: float32 whose boxes are contiguous channel planes (an NCHW gradient), with
    more than a few channels. That replaces the transposed copy of the whole gradient (as large
    as the crops, written and read back through memory) by one that stays in cache."""
    _, crop_height, crop_width, depth = grads.shape
    return (
        grads.dtype == torch.float32
        and depth > _FEW_CHANNELS
        and grads.stride()[1:] == (crop_width, 1, crop_height * crop_width)
    )


def _scratch_of(size: int | None):
    """A per-thread scratch factory for :func:`_run_split`: ``size`` float32 values, or NULL."""

    def scratch() -> tuple[int | None, Tensor | None]:
        if size is None:
            return None, None
        buffer = torch.empty(size, dtype=torch.float32)
        return buffer.data_ptr(), buffer

    return scratch


def channels_first(x: Tensor) -> Tensor:
    """The contiguous NCHW copy of a contiguous NHWC float32 tensor ``x`` (a result computed
    channels innermost), by the compiled tiled transpose."""
    n, height, width, depth = x.shape
    planes = x.permute(0, 3, 1, 2)
    if planes.is_contiguous():  # one channel (or one pixel): the same memory, nothing to move
        return planes
    if not (n and height * width and depth):
        return planes.contiguous()
    return _transposed(x, height * width, depth).view(n, depth, height, width)


def _in_range(image_height: int, image_width: int, crop_size: tuple[int, int]) -> bool:
    """Whether the shared arithmetic is exact for these sizes (see cropcore.native); larger calls
    (a side over 2**24 pixels) run the torch ops, which clamp their indices instead."""
    return max(image_height, image_width) <= _MAX_IMAGE_SIDE and max(crop_size) <= _MAX_CROP_SIDE


def _box_indices(
    box_indices: Tensor, boxes: Tensor, crops: int, depth: int, image_depth: int
) -> Tensor:
    """int32 contiguous box indices, after the shape checks the loops' memory safety rests on.

    The custom ops can be called directly (``torch.ops.cropcore.*``, TorchScript), so these run
    even when cropcore's validation did not; they read shapes only.
    """
    if boxes.dim() != 2 or boxes.shape[1] != 4 or box_indices.shape != (boxes.shape[0],):
        raise ValueError(
            f"boxes must be (num_boxes, 4) and box_indices (num_boxes,), got "
            f"{tuple(boxes.shape)} and {tuple(box_indices.shape)}"
        )
    if crops != boxes.shape[0] or depth != image_depth:
        raise ValueError(
            f"grads hold {crops} crops of depth {depth}; expected {boxes.shape[0]} of depth "
            f"{image_depth}"
        )
    return box_indices.to(torch.int32).contiguous()


class _Loops(NamedTuple):
    """What every compiled loop takes besides its arrays."""

    lib: ctypes.CDLL
    indices: Tensor  # int32 box indices, shape-checked
    tables: _Tables


def _loops(
    boxes: Tensor,
    box_indices: Tensor,
    image_shape: torch.Size,
    crops_shape: torch.Size,
    *,
    ratio_first: bool = False,
) -> _Loops | None:
    """The library, checked box indices and sample tables for an NHWC image and NHWC crops, or
    ``None`` for sizes the loops are not exact for (see :func:`_in_range`): the torch ops run."""
    _, image_height, image_width, image_depth = image_shape
    num_boxes, crop_height, crop_width, depth = crops_shape
    crop_size = (crop_height, crop_width)
    if not _in_range(image_height, image_width, crop_size):
        return None
    lib = library()
    assert lib is not None
    indices = _box_indices(box_indices, boxes, num_boxes, depth, image_depth)
    tables = _sample_tables(
        lib, boxes, image_height, image_width, crop_size, ratio_first=ratio_first
    )
    return _Loops(lib, indices, tables)


def fill_crops(
    out: Tensor,
    image: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    method: str,
    extrapolation_value: float,
    *,
    keep: list | None = None,
) -> None:
    """:func:`cropcore_torch.kernels.fill_crops` on CPU tensors, in one compiled pass.

    ``keep``: a list that receives the loops' box indices and sample tables (``None`` for sizes
    the torch ops run), which :func:`fill_grad_image` of the same boxes can reuse.
    """
    loops = _loops(boxes, box_indices, image.shape, out.shape)
    if keep is not None:
        keep.append(loops)
    if loops is None:
        return kernels.fill_crops(out, image, boxes, box_indices, method, extrapolation_value)
    lib, indices, tables = loops
    batch, depth = image.shape[0], image.shape[3]
    num_boxes, crop_height, crop_width, _ = out.shape
    if not out.numel():
        return None
    few_channels = depth <= _FEW_CHANNELS
    if _planes(image, out):  # NCHW float32 in and out: by blocks of planes (_native_planes)
        return _fill_crops_planes(loops, out, image, method, extrapolation_value)
    if image.stride(3) != 1 and not few_channels and image.numel() <= out.numel():
        # Channels innermost, as the loops read fastest: an NCHW image with many channels is
        # transposed once when that costs less than the result (otherwise, and with a few
        # channels, it is read channel by channel).
        image = _channels_innermost(image)
    fixed = (
        *_strided(image),
        batch,
        indices.data_ptr(),
        crop_height,
        crop_width,
        depth,
        *tables.pointers(method == "nearest"),
        int(method == "nearest"),
        float(extrapolation_value),
        *_strided(out),
    )
    suffix = _SUFFIX[image.dtype]
    if out.stride(3) == 1 or few_channels:
        # Channels innermost in the result: one row of one box per unit; large results are
        # computed in scratch and streamed out.
        stream = out.numel() * 4 > _STREAM_BYTES
        function = getattr(lib, f"crop_{suffix}")
        units, scratch_size = num_boxes * crop_height, crop_width * depth
    else:
        # Channel planes (NCHW): one box per unit, computed channels innermost in scratch
        # and written out plane by plane.
        stream = True
        function = getattr(lib, f"crop_boxes_{suffix}")
        units, scratch_size = num_boxes, 2 * depth * crop_height * crop_width

    scratch = _scratch_of(scratch_size if stream else None)  # without: written in place
    _check(_run_split(function, fixed, units, out.numel(), scratch), indices, batch)
    return None


def fill_grad_image(
    out: Tensor,
    grads: Tensor,
    boxes: Tensor,
    box_indices: Tensor,
    method: str,
    *,
    loops: _Loops | None = None,
) -> None:
    """:func:`cropcore_torch.kernels.fill_grad_image` for float32/float64 results, compiled.

    ``loops``: what :func:`fill_crops` kept for the forward pass of the same boxes, box indices
    and image size (the same sample tables; ``grads`` has that forward result's shape).
    """
    if loops is None:
        loops = _loops(boxes, box_indices, out.shape, grads.shape)
    if loops is None:
        return kernels.fill_grad_image(out, grads, boxes, box_indices, method)
    lib, indices, tables = loops
    batch, depth = out.shape[0], out.shape[3]
    num_boxes, crop_height, crop_width, _ = grads.shape
    if not (out.numel() and grads.numel()):
        return None
    # Channels innermost for the loops (a plane-strided walk over the channels of every pixel
    # would thrash the cache): an NCHW float32 gradient box by box in the loops' scratch, others
    # as a transposed copy.
    planes = _box_planes(grads)
    if not planes:
        grads = _channels_innermost(grads)
    fixed = (
        *_strided(grads),
        indices.data_ptr(),
        num_boxes,
        crop_height,
        crop_width,
        depth,
        *tables.pointers(method == "nearest"),
        int(method == "nearest"),
        *_strided(out),
        batch,
    )
    function = getattr(lib, "grad_image_f32" if out.dtype == torch.float32 else "grad_image_f64")
    scratch = _scratch_of(crop_height * crop_width * depth if planes else None)
    _check(_run_split(function, fixed, batch, grads.numel(), scratch), indices, batch)
    return None


def fill_grad_boxes(
    out: Tensor, grads: Tensor, image: Tensor, boxes: Tensor, box_indices: Tensor
) -> None:
    """:func:`cropcore_torch.kernels.fill_grad_boxes` on CPU tensors, compiled."""
    loops = _loops(boxes, box_indices, image.shape, grads.shape, ratio_first=True)
    if loops is None:
        return kernels.fill_grad_boxes(out, grads, image, boxes, box_indices)
    lib, indices, tables = loops
    batch, image_height, image_width, _ = image.shape
    num_boxes, crop_height, crop_width, depth = grads.shape
    if not num_boxes:
        return None
    # TF's order (rows, columns, channels) walks the channels of every pixel: channels innermost
    # (an NCHW float32 gradient box by box in the loops' scratch).
    image = _channels_innermost(image)
    planes = _box_planes(grads)
    if not planes:
        grads = _channels_innermost(grads)
    fixed = (
        *_strided(grads),
        *_strided(image),
        batch,
        image_height,
        image_width,
        indices.data_ptr(),
        crop_height,
        crop_width,
        depth,
        *tables.pointers(nearest=False),
        out.data_ptr(),
    )
    function = getattr(lib, f"grad_boxes_{_SUFFIX[image.dtype]}")
    scratch = _scratch_of(crop_height * crop_width * depth if planes else None)
    _check(_run_split(function, fixed, num_boxes, grads.numel(), scratch), indices, batch)
    return None


# The NCHW plane-block loops' calls (they use this module's helpers: imported last).
from cropcore_torch._native_planes import _fill_crops_planes, _planes  # noqa: E402
