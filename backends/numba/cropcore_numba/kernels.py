"""The Numba kernels: TensorFlow's CPU ``CropAndResize`` and its two gradients, compiled and parallel.

Requirements, in order of priority:

1. **Bit-identical to TensorFlow 2.21's CPU kernel** and to the reference backend
   (:mod:`cropcore_numpy.kernels`) for every input dtype. Every float32 operation of the C++ is one
   float32 operation here, in the same order; where TF computes in double, so do we. No
   ``fastmath``: it would allow FMA contraction and reassociation, and drop the NaN checks below.
   TF computes with flush-to-zero and denormals-are-zero on; so do these kernels, by setting the
   same two CPU control bits in every thread while they run (:func:`._arith.flush_denormals`; x86-64).
2. **Safe.** Kernels run without bounds checks, so they receive only validated, canonical arrays
   (see :mod:`cropcore.spec`), and still clamp every computed index. A sample coordinate that is
   not finite (a huge finite box whose span overflows float32) is out of range: no float is
   converted to an integer unless it is known to lie in ``[0, size - 1]``.
3. **Fast where TF is not.** TF parallelises over whole boxes and recomputes every sample's
   interpolation weights. Here the row and column samples of every box (indices, weights, range
   test) are computed once into small tables (:func:`._arith.axis_table`), and the work is split over
   *crop rows* (box, y), so a few large crops use every core as well as many small ones. The
   channel loop is innermost and contiguous in NHWC, the column loop in NCHW. Flat indices are
   unsigned (:data:`._arith.as_index`), which lets LLVM vectorise the channel loops. Large results reuse the
   memory of dropped ones (:mod:`cropcore.hostmem`), as TF's allocator does, instead of paying the
   kernel's page faults again.
4. **Deterministic image gradient, in TF's order.** TF accumulates the image gradient with ``+=``
   from box to box; several threads doing that would race. Here each thread owns whole blocks of
   *image rows*: every block gets the list of crop rows that write to it, in TF's order (boxes,
   then rows), so every pixel receives its contributions in exactly TF's single-threaded order,
   whatever the number of threads. The result is bit-identical to TF run with one thread (and to
   the reference), and never depends on the thread count.
5. **Quick to start, cheap to call.** Every kernel is compiled lazily with ``cache=True`` (compiled
   once per machine, then loaded from disk). Small calls run a serial variant of each kernel, which
   skips the thread-pool launch.

Modules: this one holds the entry points the plugin calls (argument preparation, the choice of
variant, the threading layer); :mod:`._arith` the scalar arithmetic (TF's floating-point mode,
float16, pixel loads, accumulation, sample tables); :mod:`.forward`, :mod:`.grad_image` and
:mod:`.grad_boxes` one op's kernels each. Serial and parallel variants of each kernel are
separately compiled, separately cached dispatchers on purpose (a parallel one costs a thread-pool
launch). Numba's on-disk cache checks only the file of the cached function: after editing
``_arith.py`` during development, touch the kernel modules (or delete their ``__pycache__``), as an
installed upgrade does by replacing every file.

Threading: Numba's ``workqueue`` layer aborts the process when two Python threads launch parallel
kernels at once, and GNU OpenMP (the ``omp`` layer on Linux) breaks in a forked child. Unless the
user chose a layer (``NUMBA_THREADING_LAYER`` or ``numba.config.THREADING_LAYER``), this module asks
Numba for its ``"forksafe"`` selection: TBB when installed (thread- and fork-safe), else
``workqueue``, whose parallel launches are then serialised by a lock. If the layer turns out to
be ``omp`` anyway (the user's choice), a forked child runs the serial kernels.

float16 has no Numba CPU type: half images are read through their uint16 bits and a 65536-entry
float32 table, and a half image gradient is accumulated on its uint16 bits with the same rounding
as NumPy (round to nearest even, through float32).
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import numba
import numpy as np
from numba.np.ufunc import parallel as _numba_parallel

from cropcore import hostmem
from cropcore.hookspecs import (
    CropAndResizeCall,
    GradBoxesCall,
    GradImageCall,
    RoiAlignCall,
    RoiAlignGradImageCall,
)
from cropcore.roi_samples import compute_dtype, sample_axes
from cropcore_numba._arith import FLUSH_MODE_SUPPORTED
from cropcore_numba.forward import forward_parallel, forward_serial
from cropcore_numba.grad_boxes import grad_boxes_parallel, grad_boxes_serial
from cropcore_numba.grad_image import (
    grad_image_direct,
    grad_image_parallel,
    grad_image_serial,
)
from cropcore_numba.roi_align import (
    nchw_to_nhwc_parallel,
    nchw_to_nhwc_serial,
    nhwc_to_nchw_parallel,
    nhwc_to_nchw_serial,
    roi_forward_parallel,
    roi_forward_serial,
    roi_grad_parallel,
    roi_grad_serial,
    zero_rows_parallel,
    zero_rows_serial,
)

__all__ = [
    "FLUSH_MODE_SUPPORTED",
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "roi_align",
    "roi_align_grad_image",
    "threading_layer",
]

# --------------------------------------------------------------------------------------------------
# Threading layer, locks and the choice between the serial and the parallel variant

if (
    not _numba_parallel._is_initialized
    and "NUMBA_THREADING_LAYER" not in os.environ
    and str(numba.config.THREADING_LAYER).lower() == "default"
):
    # TBB if installed, else workqueue (never GNU OpenMP, which is not fork-safe).
    numba.config.THREADING_LAYER = "forksafe"

_launch_lock = threading.Lock()  # serialises parallel launches on the non-thread-safe workqueue
_forked = False  # set in a child process created by fork()


def _after_fork_in_child() -> None:
    global _launch_lock, _forked
    _launch_lock = threading.Lock()  # a lock held by another thread at fork time stays held
    _forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)

#: Below this many output elements (or gradient elements), the serial kernels run: the cost of
#: launching the thread pool (tens of microseconds) exceeds the work.
PARALLEL_THRESHOLD = 1 << 15
#: Below this many elements (image gradient plus crop gradient), the image gradient runs TF's
#: plain loop (:func:`.grad_image.grad_image_direct`) instead of building tables and block lists.
DIRECT_THRESHOLD = 1 << 15


def threading_layer() -> str:
    """The Numba threading layer in use (``"tbb"``, ``"omp"`` or ``"workqueue"``); starts it if needed."""
    if not _numba_parallel._is_initialized:
        _numba_parallel._launch_threads()
    return _numba_parallel.threading_layer()


def _parallel_ok(work: int) -> bool:
    """Whether to run the parallel variant for ``work`` elements."""
    if work < PARALLEL_THRESHOLD or numba.get_num_threads() < 2:
        return False
    # GNU OpenMP cannot start a thread team in a child forked after the parent used one.
    return not (_forked and threading_layer() == "omp")


def _launch(parallel_kernel: Any, *args: Any) -> None:
    """Run a parallel kernel, holding the lock when the threading layer needs it."""
    if threading_layer() == "workqueue":
        with _launch_lock:
            parallel_kernel(*args)
    else:
        parallel_kernel(*args)


# --------------------------------------------------------------------------------------------------
# The entry points the plugin calls

_HALF_TO_FLOAT: np.ndarray | None = None


def _half_table() -> np.ndarray:
    """float32 (65536,): the value of every float16 bit pattern (exact)."""
    global _HALF_TO_FLOAT
    if _HALF_TO_FLOAT is None:
        _HALF_TO_FLOAT = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    return _HALF_TO_FLOAT


_FLOAT32 = np.dtype(np.float32)
_INT32 = np.dtype(np.int32)
_GRAD_DTYPES = {name: np.dtype(name) for name in ("float16", "float32", "float64")}


def _native(a: np.ndarray, dtype: np.dtype | None = None) -> np.ndarray:
    """``a`` as a C-contiguous array in native byte order (``a`` itself when it already is)."""
    if a.flags.c_contiguous and a.dtype.isnative and (dtype is None or a.dtype == dtype):
        return a
    dtype = a.dtype if dtype is None else dtype
    return np.ascontiguousarray(a, dtype=dtype.newbyteorder("="))


def _pixels(image: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """What the kernels read: the image (float16 as uint16 bits) and the half table or None."""
    if image.dtype.kind == "f" and image.dtype.itemsize == 2:
        return image.view(np.uint16), _half_table()
    return image, None


#: Integer and half images are converted to float32 up front when the crops read more pixels than
#: the image holds, and the copy takes at most this many bytes.
CONVERT_MAX_BYTES = 1 << 28


def _worth_converting(image: np.ndarray, reads: int) -> bool:
    """Whether to convert ``image`` to float32 once rather than at each of ``reads`` pixel reads.

    Not float64: TF's conversion of a float64 pixel to float32 flushes subnormal results to zero
    (it runs under flush-to-zero), which NumPy's conversion does not do.
    """
    if image.dtype.kind not in "iu" and image.dtype != np.float16:
        return False
    return reads > image.size and 4 * image.size <= CONVERT_MAX_BYTES


def _workers_and_chunks(items: int) -> tuple[int, int]:
    """Worker count and chunk count for ``items`` units of parallel work (chunks are dealt out
    dynamically: a few per worker, so a worker the OS delays does not hold up the others)."""
    workers = numba.get_num_threads()
    return workers, max(1, min(items, 16 * workers))


def crop_and_resize(call: CropAndResizeCall) -> np.ndarray:
    """TF's ``CropAndResize`` of a validated call.

    ``call.image``: (batch, height, width, depth), or (batch, depth, height, width) for
    channels_first; any of the nine image dtypes, any strides and byte order. ``call.boxes``:
    float32 (N, 4), finite; ``call.box_indices``: int32 (N,) in ``[0, batch)``;
    ``call.extrapolation_value``: float32-exact, written verbatim.

    Returns:
        float32 (N, crop_height, crop_width, depth), or (N, depth, crop_height, crop_width).
    """
    channels_first, method = call.channels_first, call.method
    image = _native(call.image)
    if channels_first:
        batch, depth, height, width = image.shape
    else:
        batch, height, width, depth = image.shape
    dims = (int(batch), int(height), int(width), int(depth))
    boxes = _native(call.boxes, _FLOAT32)
    box_indices = _native(call.box_indices, _INT32)
    crop_height, crop_width = call.crop_size
    num_boxes = boxes.shape[0]
    shape = (
        (num_boxes, depth, crop_height, crop_width)
        if channels_first
        else (num_boxes, crop_height, crop_width, depth)
    )
    crops = hostmem.pool().empty(shape, _FLOAT32)
    if crops.size == 0:
        return crops
    if _worth_converting(image, crops.size * (1 if method == "nearest" else 4)):
        # One vectorised pass instead of a conversion per corner read (exact: every integer and
        # half value is a float32, converted with the same rounding).
        converted = hostmem.pool().empty(image.shape, _FLOAT32)
        np.copyto(converted, image, casting="unsafe")
        image = converted
    pixels, lut = _pixels(image)
    args = (
        pixels.reshape(-1),
        lut,
        dims,
        boxes,
        box_indices,
        (crop_height, crop_width),
        method == "nearest",
        np.float32(call.extrapolation_value),
        crops.reshape(-1),
        channels_first,
    )
    if _parallel_ok(crops.size):
        items = num_boxes * crop_height * (depth if channels_first else 1)
        _launch(forward_parallel, *args, *_workers_and_chunks(items))
    else:
        forward_serial(*args, 1, 1)
    return crops


def crop_and_resize_grad_image(call: GradImageCall) -> np.ndarray:
    """TF's ``CropAndResizeGradImage`` of a validated call, deterministic, in TF's serial order.

    ``call.grads``: float32 (N, crop_height, crop_width, depth), or (N, depth, crop_height,
    crop_width) for channels_first; any strides and byte order. ``call.dtype``: ``"float16"``,
    ``"float32"`` or ``"float64"``.

    Returns:
        ``call.dtype`` (batch, height, width, depth), or (batch, depth, height, width).
    """
    channels_first, method = call.channels_first, call.method
    grads = _native(call.grads, _FLOAT32)
    boxes = _native(call.boxes, _FLOAT32)
    box_indices = _native(call.box_indices, _INT32)
    dims = batch, height, width, depth = tuple(call.image_shape)
    if channels_first:
        crop_size = grads.shape[2:]
        shape = (batch, depth, height, width)
    else:
        crop_size = grads.shape[1:3]
        shape = (batch, height, width, depth)
    out_dtype = _GRAD_DTYPES[call.dtype]
    result = hostmem.pool().empty(shape, out_dtype)
    if result.size == 0:
        return result
    lut = None
    out = result.reshape(-1)
    if out_dtype.itemsize == 2:  # float16: accumulate on the bits
        out, lut = out.view(np.uint16), _half_table()
    args = (
        grads.reshape(-1),
        dims,
        boxes,
        box_indices,
        crop_size,
        method == "nearest",
        lut,
        out,
        channels_first,
    )
    work = result.size + grads.size
    if work < DIRECT_THRESHOLD:
        grad_image_direct(*args)
    # Blocks of up to 8 image rows: few enough that a crop row is rarely read twice (once for the
    # block of its top row, once for its bottom row), many enough to balance the threads.
    elif _parallel_ok(work):
        block_rows = max(1, min(8, (batch * height) // (8 * numba.get_num_threads())))
        num_blocks = batch * -(-height // block_rows)
        _launch(grad_image_parallel, *args, block_rows, *_workers_and_chunks(num_blocks))
    else:
        grad_image_serial(*args, 8, 1, 1)
    return result


def crop_and_resize_grad_boxes(call: GradBoxesCall) -> np.ndarray:
    """TF's ``CropAndResizeGradBoxes`` (bilinear) of a validated call: float32 (N, 4), each box's
    sums in TF's order. ``call.grads`` float32 and ``call.image`` (any image dtype) in either
    data format."""
    grads, image = call.grads, call.image
    if call.channels_first:  # NHWC order: the sums run over rows, columns, then channels, as in TF
        grads = np.moveaxis(grads, 1, 3)
        image = np.moveaxis(image, 1, 3)
    # C-contiguous copies where needed (one compiled layout; this op is not the hot one)
    grads = _native(grads, _FLOAT32)
    image = _native(image)
    boxes = _native(call.boxes, _FLOAT32)
    box_indices = _native(call.box_indices, _INT32)
    out = np.zeros((boxes.shape[0], 4), np.float32)
    if out.size == 0 or grads.size == 0:
        return out
    pixels, lut = _pixels(image)
    args = (grads, pixels, lut, boxes, box_indices, out)
    if _parallel_ok(grads.size) and boxes.shape[0] > 1:
        _launch(grad_boxes_parallel, *args)
    else:
        grad_boxes_serial(*args)
    return out


# --------------------------------------------------------------------------------------------------
# roi_align


def _roi_tables(call: RoiAlignCall | RoiAlignGradImageCall, dtype: type, size: tuple[int, int]):
    """The sample tables of :mod:`cropcore.roi_samples`, as the kernels take them."""
    dims = call.image_shape
    y, x, grid_h, grid_w = sample_axes(
        np.ascontiguousarray(call.boxes),
        (dims.height, dims.width),
        size,
        call.spatial_scale,
        call.sampling_ratio,
        call.aligned,
        dtype,
    )

    def table(axis):
        return tuple(
            np.ascontiguousarray(a)
            for a in (axis.inside, axis.low, axis.high, axis.frac, axis.rest)
        )

    return table(y), table(x), grid_h, grid_w


def _zero(target: np.ndarray) -> None:
    """Zero ``target`` (C-contiguous, 4-D), in parallel where it is large."""
    rows = target.reshape(-1, target.shape[-1])
    if _parallel_ok(target.size):
        _launch(zero_rows_parallel, rows)
    else:
        zero_rows_serial(rows)


def _transposed(kernels: tuple[Any, Any], source: np.ndarray, shape: tuple, dtype: Any):
    """``source`` (C-contiguous, native) transposed by ``kernels`` (serial, parallel) into a new
    C-contiguous array of ``shape`` and ``dtype`` from the host pool (every element written)."""
    target = hostmem.pool().empty(shape, np.dtype(dtype))
    if _parallel_ok(source.size):
        _launch(kernels[1], source, target)
    else:
        kernels[0](source, target)
    return target


def roi_align(call: RoiAlignCall) -> np.ndarray:
    """roi_align of a validated call (torchvision's arithmetic, bit for bit).

    ``call.image``: float16, float32 or float64, NCHW (channels_first) or NHWC, any strides.
    Returns the image's dtype, ``call.output_shape``.
    """
    image = call.image
    dtype = compute_dtype(image.dtype)
    dims = call.image_shape
    k, (pooled_h, pooled_w) = call.num_boxes, call.output_size
    bins, depth = pooled_h * pooled_w, dims.depth
    if k * bins * depth == 0:
        return np.zeros(call.output_shape, image.dtype)
    # NHWC, contiguous, in the compute dtype (float16 converted once, exactly): an NCHW image is
    # transposed first, which costs less than gathering every channel from its own plane
    # (measured: 160 against 255 ms on a 2 x 256 x 200 x 272 image, 1000 boxes, 7 x 7).
    nhwc = (dims.batch, dims.height, dims.width, depth)
    if call.channels_first and image.dtype == dtype:
        pixels = _transposed(
            (nchw_to_nhwc_serial, nchw_to_nhwc_parallel), _native(image), nhwc, dtype
        )
    else:
        source = np.moveaxis(image, 1, 3) if call.channels_first else image
        pixels = _native(source, np.dtype(dtype))
    y, x, grid_h, grid_w = _roi_tables(call, dtype, call.output_size)
    count = np.maximum(grid_h * grid_w, 1).astype(dtype)
    indices = _native(call.box_indices, _INT32)
    layout = (k, depth, bins) if call.channels_first else (k, bins, depth)
    out = hostmem.pool().empty(layout, np.dtype(dtype))  # every element is written
    args = (pixels, indices, y, x, grid_h, grid_w, count, call.mode == "max")
    args += (call.channels_first, out)
    if _parallel_ok(out.size):
        _launch(roi_forward_parallel, *args, *_workers_and_chunks(k), dtype(0))
    else:
        roi_forward_serial(*args, 1, 1, dtype(0))
    out = out.reshape(call.output_shape)
    return out if image.dtype == out.dtype else out.astype(image.dtype)


def roi_align_grad_image(call: RoiAlignGradImageCall) -> np.ndarray:
    """roi_align's image gradient of a validated call, in torchvision's order (deterministic).

    ``call.grads``: float16, float32 or float64, roi_align's output shape. Returns ``grads``'
    dtype, ``call.output_shape`` (float16: summed in float32, rounded once).
    """
    grads = call.grads
    dtype = compute_dtype(grads.dtype)
    dims = call.image_shape
    nhwc = (dims.batch, dims.height, dims.width, dims.depth)
    if math.prod(nhwc) == 0 or call.num_boxes == 0:
        return np.zeros(call.output_shape, grads.dtype)
    y, x, grid_h, grid_w = _roi_tables(call, dtype, call.output_size)
    samples = grid_h * grid_w
    count = samples.astype(dtype)
    # x / count is x * (1 / count) exactly where count is a power of two (0: divide)
    exact = (samples > 0) & ((samples & (samples - 1)) == 0)
    inverse = np.where(exact, 1 / np.maximum(count, 1), 0).astype(dtype)
    indices = _native(call.box_indices, _INT32)
    depth = dims.depth
    work = grads.size * 4 * int(max(1, grid_h.max() * grid_w.max()))
    parallel = _parallel_ok(work)
    blocks = min(depth, numba.get_num_threads()) if parallel else 1  # even work: one each
    bins = call.output_size[0] * call.output_size[1]
    layout = (call.num_boxes, depth, bins) if call.channels_first else (call.num_boxes, bins, depth)
    acc = hostmem.pool().empty(nhwc, np.dtype(dtype))
    _zero(acc)
    args = (_native(grads, np.dtype(dtype)).reshape(layout), indices, y, x, grid_h, grid_w)
    args += (count, inverse, call.channels_first, acc, blocks, dtype(0))
    if parallel:
        _launch(roi_grad_parallel, *args)
    else:
        roi_grad_serial(*args)
    if call.channels_first:
        kernels = (nhwc_to_nchw_serial, nhwc_to_nchw_parallel)
        acc = _transposed(kernels, acc, tuple(call.output_shape), dtype)
    return acc if grads.dtype == acc.dtype else acc.astype(grads.dtype)
