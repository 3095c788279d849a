"""The Numba kernels: TensorFlow's CPU ``CropAndResize`` and its two gradients, compiled and parallel.

Requirements, in order of priority:

1. **Bit-identical to TensorFlow 2.21's CPU kernel** and to the reference backend
   (:mod:`cropcore_numpy.kernels`) for every input dtype. Every float32 operation of the C++ is one
   float32 operation here, in the same order; where TF computes in double, so do we. No
   ``fastmath``: it would allow FMA contraction and reassociation, and drop the NaN checks below.
   TF computes with flush-to-zero and denormals-are-zero on; so do these kernels, by setting the
   same two CPU control bits in every thread while they run (:func:`_flush_denormals`; x86-64).
2. **Safe.** Kernels run without bounds checks, so they receive only validated, canonical arrays
   (see :mod:`cropcore.spec`), and still clamp every computed index. A sample coordinate that is
   not finite (a huge finite box whose span overflows float32) is out of range: no float is
   converted to an integer unless it is known to lie in ``[0, size - 1]``.
3. **Fast where TF is not.** TF parallelises over whole boxes and recomputes every sample's
   interpolation weights. Here the row and column samples of every box (indices, weights, range
   test) are computed once into small tables (:func:`_axis_table`), and the work is split over
   *crop rows* (box, y), so a few large crops use every core as well as many small ones. The
   channel loop is innermost and contiguous in NHWC, the column loop in NCHW. Flat indices are
   unsigned (:data:`_at`), which lets LLVM vectorise the channel loops. Large results reuse the
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
import platform
import threading
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np.ufunc import parallel as _numba_parallel

from cropcore import hostmem

__all__ = [
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
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
#: plain loop (:func:`_grad_image_direct`) instead of building tables and block lists.
DIRECT_THRESHOLD = 1 << 15


#: Flat indices are converted to this before indexing: Numba then skips its negative-index
#: wraparound, which otherwise turns every contiguous channel loop into gathers and scatters.
_at = np.uint64


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
# Scalar helpers: pixel loads and gradient accumulation for every dtype, float16 included


#: x86-64 only: TF's floating-point mode is set through the SSE control register.
FLUSH_MODE_SUPPORTED = platform.machine().lower() in ("x86_64", "amd64")
_FTZ_DAZ = 0x8040  # MXCSR bits: flush-to-zero (15), denormals-are-zero (6)


def _mxcsr_call(builder: ir.IRBuilder, name: str, slot: ir.Value) -> None:
    function = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t]), name
    )
    builder.call(function, [builder.bitcast(slot, cgutils.voidptr_t)])


@intrinsic
def _read_fp_mode(typingctx):
    """The calling thread's MXCSR (``stmxcsr``)."""

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        _mxcsr_call(builder, "llvm.x86.sse.stmxcsr", slot)
        return builder.load(slot)

    return types.uint32(), codegen


@intrinsic
def _write_fp_mode(typingctx, mode):
    """Set the calling thread's MXCSR (``ldmxcsr``)."""
    if not isinstance(mode, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        slot = cgutils.alloca_once(builder, ir.IntType(32))
        builder.store(context.cast(builder, args[0], signature.args[0], types.uint32), slot)
        _mxcsr_call(builder, "llvm.x86.sse.ldmxcsr", slot)
        return context.get_dummy_value()

    return types.none(mode), codegen


@njit
def _flush_denormals():  # pragma: no cover - compiled
    """Enter TF's floating-point mode in this thread; returns the mode to restore.

    TF runs its kernels with flush-to-zero and denormals-are-zero on (``port::ScopedFlushDenormal``
    in its thread pools): a subnormal float operand counts as zero and a subnormal result becomes
    zero. The CPU does exactly that once the two MXCSR bits are set, so the kernels compute with
    them set, in every thread that runs a part of them, and restore the mode afterwards.
    """
    saved = _read_fp_mode()
    _write_fp_mode(saved | _FTZ_DAZ)
    return saved


@njit
def _restore_fp_mode(saved):  # pragma: no cover - compiled
    _write_fp_mode(saved)


@intrinsic
def _next_chunk(typingctx, counter):
    """Atomically increment ``counter[0]`` (an int64 array); returns the value before.

    The parallel kernels hand out their chunks through this counter, so a worker that the OS
    delays takes fewer chunks instead of holding everyone up (Numba's own schedule is static).
    Which worker computes a chunk never changes its result.
    """
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        one = ir.Constant(ir.IntType(64), 1)
        return builder.atomic_rmw("add", array.data, one, "monotonic")

    return types.int64(counter), codegen


@intrinsic
def _float32_bits(typingctx, value):
    """The IEEE bits of a float32 as a uint32 (a bit cast, no conversion)."""
    if value != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@njit
def _float_to_half_bits(value):  # pragma: no cover - compiled
    """float32 -> float16 bits, rounding to nearest even (NumPy's ``npy_floatbits_to_halfbits``)."""
    f = np.uint32(_float32_bits(value))
    sign = np.uint16((f & np.uint32(0x80000000)) >> np.uint32(16))
    f_exp = f & np.uint32(0x7F800000)
    f_sig = f & np.uint32(0x007FFFFF)
    if f_exp >= np.uint32(0x47800000):  # overflow, inf or NaN
        if f_exp == np.uint32(0x7F800000) and f_sig != np.uint32(0):
            # NaN: keep the payload's top bits and the quiet bit, as the hardware conversion does
            return sign | np.uint16(0x7E00) | np.uint16(f_sig >> np.uint32(13))
        return sign | np.uint16(0x7C00)
    if f_exp <= np.uint32(0x38000000):  # a subnormal half or a signed zero
        if f_exp < np.uint32(0x33000000):
            return sign
        shift = np.uint32(113) - (f_exp >> np.uint32(23))
        sig = (np.uint32(0x00800000) + f_sig) >> shift
        # round half to even: add one at the first dropped bit unless it is an exact tie on even
        # (the shift may have dropped up to 11 bits of f, which decide whether it is a tie)
        tie_on_even = (sig & np.uint32(0x3FFF)) == np.uint32(0x1000)
        if not tie_on_even or (f & np.uint32(0x7FF)) != np.uint32(0):
            sig += np.uint32(0x1000)
        return sign | np.uint16(sig >> np.uint32(13))
    h_exp = (f_exp - np.uint32(0x38000000)) >> np.uint32(13)
    if (f_sig & np.uint32(0x3FFF)) != np.uint32(0x1000):
        f_sig += np.uint32(0x1000)
    # a carry out of the significand increments the exponent (up to inf), which is correct
    return sign | np.uint16(h_exp + (f_sig >> np.uint32(13)))


def _to_float(value, lut):  # pragma: no cover - replaced by the overload below
    """``static_cast<float>(pixel)``; ``lut`` is None, or the float32 table of the 65536 half values."""


@overload(_to_float)
def _to_float_impl(value, lut):
    if isinstance(lut, types.NoneType):
        return lambda value, lut: np.float32(value)
    return lambda value, lut: lut[value]  # value: the uint16 bits of a half


def _accumulate(out, index, value, lut):  # pragma: no cover - replaced by the overload below
    """TF's ``out[index] += static_cast<T>(value)`` for the result dtype T (float16 via its bits)."""


@overload(_accumulate)
def _accumulate_impl(out, index, value, lut):
    if isinstance(lut, types.NoneType):
        if out.dtype == types.float64:

            def add_double(out, index, value, lut):
                i = _at(index)
                out[i] = np.float64(value) + out[i]  # TF's compiled `acc += c` is `c + acc`

            return add_double

        def add(out, index, value, lut):
            i = _at(index)
            out[i] = value + out[i]  # float32; TF's compiled `acc += c` is `c + acc` (NaN order)

        return add

    def add_half(out, index, value, lut):
        # Eigen::half and NumPy: h = half(float(h) + float(half(value)))
        i = _at(index)
        out[i] = _float_to_half_bits(lut[out[i]] + lut[_float_to_half_bits(value)])

    return add_half


# --------------------------------------------------------------------------------------------------
# Sample tables: where each box's crop rows (or columns) fall in the image


_FLT_MIN = np.float32(2.0**-126)  # below this a float32 is subnormal


@njit(inline="always")
def _flushed(value):  # pragma: no cover - compiled
    """float32 ``value`` as TF's flush-to-zero mode leaves it: a subnormal becomes a zero of its sign.

    The CPU flushes by itself while the kernels run (:func:`_flush_denormals`), but LLVM optimises
    as if it did not: given ``fptrunc(x) >= 0`` it may compare the double ``x`` instead, and a
    double that rounds to a negative subnormal float (TF: -0.0, inside the image) then counts as
    negative (outside). Flushing in code gives the same value whichever way LLVM compiles it.
    """
    if abs(value) < _FLT_MIN:
        return np.float32(math.copysign(0.0, value))
    return value


@njit(inline="always")
def _axis_scale(start, end, size, crop, ratio_first):  # pragma: no cover - compiled
    """A box side's ``(scale, offset)``: sample ``k`` lies at ``offset + k * scale`` (crop > 1).

    ``start``/``end``: the box's float32 y1/y2 (or x1/x2); ``size``: image height (or width);
    ``crop``: crop height (or width); ``ratio_first``: CropAndResizeGradBoxes' rounding of the scale.
    """
    zero = np.float32(0)
    if crop <= 1:
        return zero, zero
    size_minus_one = np.float32(size - 1)  # C++ `image_height - 1`, an int converted to float
    if ratio_first:
        # GradBoxes: height_ratio = float(H - 1) / (ch - 1) first, then (y2 - y1) * ratio
        scale = (end - start) * (size_minus_one / np.float32(crop - 1))
    else:
        # (y2 - y1) * (H - 1) / (ch - 1), left to right; may overflow to inf (-> NaN below)
        scale = (end - start) * size_minus_one / np.float32(crop - 1)
    return scale, start * size_minus_one


@njit(inline="always")
def _axis_sample(start, end, scale, offset, k, size, crop):  # pragma: no cover - compiled
    """Sample ``k`` of a box side (see :func:`_axis_scale`), as ``(valid, low, high, nearest, lerp)``.

    ``valid``: ``0 <= coord <= size - 1`` (False for NaN); ``low``, ``high``, ``nearest``: int64
    ``floorf``, ``ceilf`` and ``roundf`` of the coordinate (clamped to ``size - 1``; 0 where
    invalid); ``lerp``: float32 ``coord - floorf(coord)`` (0 where invalid).
    """
    if crop > 1:
        coord = offset + np.float32(k) * scale  # y1 * (H - 1) + y * height_scale
    else:
        # 0.5 * (y1 + y2) * (H - 1): a float sum, then double products, rounded once
        coord = _flushed(np.float32(0.5 * np.float64(start + end) * np.float64(size - 1)))
    # TF: extrapolate if `in < 0 || in > H - 1`; written NaN-safe (NaN is outside)
    if coord >= np.float32(0) and coord <= np.float32(size - 1):
        last = size - 1
        floor = math.floor(coord)  # 0 <= coord <= H - 1: a safe conversion
        fraction = coord - np.float32(floor)  # exact
        low = min(floor, last)  # float(H - 1) can round above H - 1 when H > 2**24
        high = min(math.ceil(coord), last)
        # roundf (half away from zero) of a coordinate >= 0; exact, unlike floorf(v + 0.5f)
        nearest = min(low + (1 if fraction >= 0.5 else 0), last)
        return True, np.int64(low), np.int64(high), np.int64(nearest), fraction
    zero = np.int64(0)
    return False, zero, zero, zero, np.float32(0)


@njit(cache=True, nogil=True)
def _axis_table(boxes, first_column, size, crop, ratio_first):  # pragma: no cover - compiled
    """The samples of one crop axis for every box (:func:`_axis_sample`, tabulated).

    ``boxes``: float32 (N, 4); ``first_column``: 0 for rows (y1 = column 0, y2 = column 2), 1 for
    columns (x1, x2); ``size``: image height (or width); ``crop``: crop height (or width);
    ``ratio_first``: CropAndResizeGradBoxes' rounding of the scale.

    Returns ``(low, high, nearest, lerp, valid)``, each (N, crop): int64 ``floorf``, ``ceilf`` and
    ``roundf`` of the coordinate (0 where invalid, clamped to ``size - 1``), float32 ``coord -
    floorf(coord)`` (0 where invalid) and bool ``0 <= coord <= size - 1`` (False for NaN).
    """
    num_boxes = boxes.shape[0]
    low = np.zeros((num_boxes, crop), np.int64)
    high = np.zeros((num_boxes, crop), np.int64)
    nearest = np.zeros((num_boxes, crop), np.int64)
    lerp = np.zeros((num_boxes, crop), np.float32)
    valid = np.zeros((num_boxes, crop), np.bool_)
    for b in range(num_boxes):
        start = boxes[b, first_column]
        end = boxes[b, first_column + 2]
        scale, offset = _axis_scale(start, end, size, crop, ratio_first)
        for k in range(crop):
            ok, lo, hi, near, fraction = _axis_sample(start, end, scale, offset, k, size, crop)
            if ok:
                low[b, k] = lo
                high[b, k] = hi
                nearest[b, k] = near
                lerp[b, k] = fraction
                valid[b, k] = True
    return low, high, nearest, lerp, valid


@njit
def _chunk(chunk, num_chunks, total):  # pragma: no cover - compiled
    """The item range ``[first, last)`` of chunk ``chunk`` when ``total`` items make ``num_chunks``."""
    return total * chunk // num_chunks, total * (chunk + 1) // num_chunks


# --------------------------------------------------------------------------------------------------
# crop_and_resize


@njit(nogil=True)
def _forward_nhwc_rows(
    first, last, image, lut, dims, box_indices, rows, cols, nearest, extrapolation_value, crops
):  # pragma: no cover - compiled
    """Crop rows ``first..last-1`` (item = box * crop_height + y) of an NHWC forward pass.

    ``image``: the flat C-order (batch, height, width, depth) image; ``crops``: the flat float32
    (N, crop_height, crop_width, depth) result; ``rows``, ``cols``: :func:`_axis_table` tuples.
    """
    _, height, width, depth = dims
    crop_height = rows[0].shape[1]
    crop_width = cols[0].shape[1]
    row_low, row_high, row_nearest, row_lerp, row_valid = rows
    _, _, col_nearest, _, col_valid = cols
    row_size = crop_width * depth
    for item in range(first, last):
        b = item // crop_height
        y = item - b * crop_height
        out = item * row_size
        if not row_valid[b, y]:  # the whole crop row is outside the image
            for k in range(row_size):
                crops[_at(out + k)] = extrapolation_value
            continue
        image_row = np.int64(box_indices[b]) * height
        if nearest:
            source_row = (image_row + row_nearest[b, y]) * width
            for x in range(crop_width):
                if col_valid[b, x]:
                    source = (source_row + col_nearest[b, x]) * depth
                    for d in range(depth):
                        crops[_at(out + d)] = _to_float(image[_at(source + d)], lut)
                else:
                    for d in range(depth):
                        crops[_at(out + d)] = extrapolation_value
                out += depth
            continue
        top_row = (image_row + row_low[b, y]) * width
        bottom_row = (image_row + row_high[b, y]) * width
        y_lerp = row_lerp[b, y]
        # RGB and grey images: the same code with a constant depth, which LLVM unrolls
        if depth == 3:
            _bilinear_row(
                image, lut, crops, out, top_row, bottom_row, y_lerp, b, cols, crop_width, 3,
                extrapolation_value,
            )  # fmt: skip
        elif depth == 1:
            _bilinear_row(
                image, lut, crops, out, top_row, bottom_row, y_lerp, b, cols, crop_width, 1,
                extrapolation_value,
            )  # fmt: skip
        else:
            _bilinear_row(
                image, lut, crops, out, top_row, bottom_row, y_lerp, b, cols, crop_width, depth,
                extrapolation_value,
            )  # fmt: skip


@njit(inline="always")
def _bilinear_row(
    image, lut, crops, out, top_row, bottom_row, y_lerp, b, cols, crop_width, depth,
    extrapolation_value,
):  # fmt: skip  # pragma: no cover - compiled
    """One bilinear crop row of an NHWC forward pass, written from ``crops[out]`` on."""
    col_low, col_high, _, col_lerp, col_valid = cols
    for x in range(crop_width):
        if col_valid[b, x]:
            left = col_low[b, x]
            right = col_high[b, x]
            x_lerp = col_lerp[b, x]
            top_left = (top_row + left) * depth
            top_right = (top_row + right) * depth
            bottom_left = (bottom_row + left) * depth
            bottom_right = (bottom_row + right) * depth
            for d in range(depth):
                tl = _to_float(image[_at(top_left + d)], lut)
                tr = _to_float(image[_at(top_right + d)], lut)
                bl = _to_float(image[_at(bottom_left + d)], lut)
                br = _to_float(image[_at(bottom_right + d)], lut)
                top = tl + (tr - tl) * x_lerp
                bottom = bl + (br - bl) * x_lerp
                crops[_at(out + d)] = top + (bottom - top) * y_lerp
        else:
            for d in range(depth):
                crops[_at(out + d)] = extrapolation_value
        out += depth


@njit(nogil=True)
def _forward_nchw_rows(
    first, last, image, lut, dims, box_indices, rows, cols, nearest, extrapolation_value, crops
):  # pragma: no cover - compiled
    """Crop rows ``first..last-1`` (item = (box * depth + d) * crop_height + y) of an NCHW pass.

    ``image``: the flat C-order (batch, depth, height, width) image; ``crops``: the flat float32
    (N, depth, crop_height, crop_width) result. The column loop is innermost.
    """
    _, height, width, depth = dims
    crop_height = rows[0].shape[1]
    crop_width = cols[0].shape[1]
    row_low, row_high, row_nearest, row_lerp, row_valid = rows
    col_low, col_high, col_nearest, col_lerp, col_valid = cols
    for item in range(first, last):
        plane = item // crop_height  # box * depth + d
        y = item - plane * crop_height
        b = plane // depth
        d = plane - b * depth
        out = item * crop_width
        if not row_valid[b, y]:
            for x in range(crop_width):
                crops[_at(out + x)] = extrapolation_value
            continue
        image_plane = (np.int64(box_indices[b]) * depth + d) * height
        if nearest:
            source_row = (image_plane + row_nearest[b, y]) * width
            for x in range(crop_width):
                if col_valid[b, x]:
                    crops[_at(out + x)] = _to_float(image[_at(source_row + col_nearest[b, x])], lut)
                else:
                    crops[_at(out + x)] = extrapolation_value
            continue
        top_row = (image_plane + row_low[b, y]) * width
        bottom_row = (image_plane + row_high[b, y]) * width
        y_lerp = row_lerp[b, y]
        for x in range(crop_width):
            if col_valid[b, x]:
                left = col_low[b, x]
                right = col_high[b, x]
                x_lerp = col_lerp[b, x]
                tl = _to_float(image[_at(top_row + left)], lut)
                tr = _to_float(image[_at(top_row + right)], lut)
                bl = _to_float(image[_at(bottom_row + left)], lut)
                br = _to_float(image[_at(bottom_row + right)], lut)
                top = tl + (tr - tl) * x_lerp
                bottom = bl + (br - bl) * x_lerp
                crops[_at(out + x)] = top + (bottom - top) * y_lerp
            else:
                crops[_at(out + x)] = extrapolation_value


# One dispatcher per data format and variant, so that each compilation holds only what runs.


@njit(cache=True, nogil=True)
def _forward_nhwc_serial(
    image, lut, dims, boxes, box_indices, crop_size, nearest, extrapolation_value, crops
):  # pragma: no cover - compiled
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    rows = _axis_table(boxes, 0, dims[1], crop_size[0], False)
    cols = _axis_table(boxes, 1, dims[2], crop_size[1], False)
    _forward_nhwc_rows(
        0, boxes.shape[0] * crop_size[0], image, lut, dims, box_indices, rows, cols, nearest,
        extrapolation_value, crops,
    )  # fmt: skip
    _restore_fp_mode(saved)


@njit(cache=True, nogil=True, parallel=True)
def _forward_nhwc_parallel(
    image, lut, dims, boxes, box_indices, crop_size, nearest, extrapolation_value, crops,
    num_workers, num_chunks,
):  # fmt: skip  # pragma: no cover - compiled
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    rows = _axis_table(boxes, 0, dims[1], crop_size[0], False)
    cols = _axis_table(boxes, 1, dims[2], crop_size[1], False)
    total = boxes.shape[0] * crop_size[0]
    counter = np.zeros(1, np.int64)
    for _ in prange(num_workers):
        mode = _flush_denormals()  # ... and in each worker thread
        chunk = _next_chunk(counter)
        while chunk < num_chunks:
            first, last = _chunk(chunk, num_chunks, total)
            _forward_nhwc_rows(
                first, last, image, lut, dims, box_indices, rows, cols, nearest,
                extrapolation_value, crops,
            )  # fmt: skip
            chunk = _next_chunk(counter)
        _restore_fp_mode(mode)
    _restore_fp_mode(saved)


@njit(cache=True, nogil=True)
def _forward_nchw_serial(
    image, lut, dims, boxes, box_indices, crop_size, nearest, extrapolation_value, crops
):  # pragma: no cover - compiled
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    rows = _axis_table(boxes, 0, dims[1], crop_size[0], False)
    cols = _axis_table(boxes, 1, dims[2], crop_size[1], False)
    _forward_nchw_rows(
        0, boxes.shape[0] * dims[3] * crop_size[0], image, lut, dims, box_indices, rows, cols,
        nearest, extrapolation_value, crops,
    )  # fmt: skip
    _restore_fp_mode(saved)


@njit(cache=True, nogil=True, parallel=True)
def _forward_nchw_parallel(
    image, lut, dims, boxes, box_indices, crop_size, nearest, extrapolation_value, crops,
    num_workers, num_chunks,
):  # fmt: skip  # pragma: no cover - compiled
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    rows = _axis_table(boxes, 0, dims[1], crop_size[0], False)
    cols = _axis_table(boxes, 1, dims[2], crop_size[1], False)
    total = boxes.shape[0] * dims[3] * crop_size[0]
    counter = np.zeros(1, np.int64)
    for _ in prange(num_workers):
        mode = _flush_denormals()  # ... and in each worker thread
        chunk = _next_chunk(counter)
        while chunk < num_chunks:
            first, last = _chunk(chunk, num_chunks, total)
            _forward_nchw_rows(
                first, last, image, lut, dims, box_indices, rows, cols, nearest,
                extrapolation_value, crops,
            )  # fmt: skip
            chunk = _next_chunk(counter)
        _restore_fp_mode(mode)
    _restore_fp_mode(saved)


# --------------------------------------------------------------------------------------------------
# crop_and_resize_grad_image


@njit(nogil=True)
def _block_lists(rows, box_indices, batch, height, block_rows, nearest):  # pragma: no cover
    """For every block of image rows, the crop rows that write to it, in TF's order.

    Image rows are grouped in blocks of ``block_rows`` (block = image * blocks_per_image + k). A
    bilinear crop row writes to the image rows ``floorf`` and ``ceilf`` of its coordinate, a
    nearest one to ``roundf``. Returns ``(start, items)``: the crop rows (item = box * crop_height
    + y) that write to block ``k`` are ``items[start[k]:start[k + 1]]``, in ascending order.
    """
    row_low, row_high, row_nearest, _, row_valid = rows
    num_boxes, crop_height = row_valid.shape
    blocks_per_image = (height + block_rows - 1) // block_rows
    counts = np.zeros(batch * blocks_per_image + 1, np.int64)
    for b in range(num_boxes):
        base = np.int64(box_indices[b]) * blocks_per_image
        for y in range(crop_height):
            if row_valid[b, y]:
                if nearest:
                    counts[base + row_nearest[b, y] // block_rows + 1] += 1
                else:
                    first = row_low[b, y] // block_rows
                    second = row_high[b, y] // block_rows
                    counts[base + first + 1] += 1
                    if second != first:
                        counts[base + second + 1] += 1
    start = np.cumsum(counts)
    fill = start[:-1].copy()
    items = np.empty(start[-1], np.int64)
    for b in range(num_boxes):
        base = np.int64(box_indices[b]) * blocks_per_image
        for y in range(crop_height):
            if row_valid[b, y]:
                item = b * crop_height + y
                if nearest:
                    first = base + row_nearest[b, y] // block_rows
                    second = first
                else:
                    first = base + row_low[b, y] // block_rows
                    second = base + row_high[b, y] // block_rows
                items[fill[first]] = item
                fill[first] += 1
                if second != first:
                    items[fill[second]] = item
                    fill[second] += 1
    return start, items


@njit(nogil=True)
def _grad_image_nhwc_blocks(
    first, last, grads, dims, block_rows, start, items, rows, cols, nearest, lut, out
):  # pragma: no cover - compiled
    """Blocks ``first..last-1`` of an NHWC image gradient (see :func:`_block_lists`).

    ``grads``: the flat float32 (N, crop_height, crop_width, depth) gradient of the crops;
    ``out``: the flat (batch, height, width, depth) result (uint16 bits if float16, with ``lut``
    the half -> float32 table). Each block is zeroed, then receives the contributions of its crop
    rows in order, and within each crop row columns, then channels, then corners TL, TR, BL, BR:
    every pixel gets TF's single-threaded order.
    """
    _, height, width, depth = dims
    row_low, row_high, row_nearest, row_lerp, _ = rows
    col_low, col_high, col_nearest, col_lerp, col_valid = cols
    crop_height = row_low.shape[1]
    crop_width = col_low.shape[1]
    blocks_per_image = (height + block_rows - 1) // block_rows
    row_size = width * depth
    one = np.float32(1)
    for block in range(first, last):
        image_index = block // blocks_per_image
        row_first = (block - image_index * blocks_per_image) * block_rows
        row_last = min(row_first + block_rows, height)
        image_base = image_index * height * row_size
        for k in range(image_base + row_first * row_size, image_base + row_last * row_size):
            out[_at(k)] = 0
        for e in range(start[block], start[block + 1]):
            item = items[e]
            b = item // crop_height
            y = item - b * crop_height
            grad_row = item * crop_width * depth
            if nearest:
                # grads_image(b_in, roundf(in_y), roundf(in_x), d) += grads(b, y, x, d)
                target_row = image_base + row_nearest[b, y] * row_size
                for x in range(crop_width):
                    if col_valid[b, x]:
                        target = target_row + col_nearest[b, x] * depth
                        source = grad_row + x * depth
                        for d in range(depth):
                            _accumulate(out, target + d, grads[_at(source + d)], lut)
                continue
            top = row_low[b, y]
            bottom = row_high[b, y]
            has_top = row_first <= top < row_last
            has_bottom = row_first <= bottom < row_last
            y_lerp = row_lerp[b, y]
            top_row = image_base + top * row_size
            bottom_row = image_base + bottom * row_size
            if top != bottom and depth >= 32:
                # Deep pixels on two image rows: one pass per row. A pixel of either row gets only
                # that row's corners, still in TF's order, and each pass sweeps one row left to
                # right, so the pixels it revisits (r of x is often l of x + 1) stay in L1.
                for row_pass in range(2):
                    if row_pass == 0:
                        if not has_top:
                            continue
                        target_row = top_row
                        y_weight = one - y_lerp  # dtop = (1 - y_lerp) * grads(b, y, x, d)
                    else:
                        if not has_bottom:
                            continue
                        target_row = bottom_row
                        y_weight = y_lerp  # dbottom = y_lerp * grads(b, y, x, d)
                    for x in range(crop_width):
                        if not col_valid[b, x]:
                            continue
                        left = target_row + col_low[b, x] * depth
                        right = target_row + col_high[b, x] * depth
                        x_lerp = col_lerp[b, x]
                        source = grad_row + x * depth
                        for d in range(depth):
                            weighted = y_weight * grads[_at(source + d)]
                            _accumulate(out, left + d, (one - x_lerp) * weighted, lut)
                            _accumulate(out, right + d, x_lerp * weighted, lut)
                continue
            for x in range(crop_width):
                if not col_valid[b, x]:
                    continue
                left = col_low[b, x] * depth
                right = col_high[b, x] * depth
                x_lerp = col_lerp[b, x]
                source = grad_row + x * depth
                if has_top and has_bottom:
                    for d in range(depth):
                        g = grads[_at(source + d)]
                        dtop = (one - y_lerp) * g  # float dtop = (1 - y_lerp) * grads(b, y, x, d)
                        _accumulate(out, top_row + left + d, (one - x_lerp) * dtop, lut)
                        _accumulate(out, top_row + right + d, x_lerp * dtop, lut)
                        dbottom = y_lerp * g
                        _accumulate(out, bottom_row + left + d, (one - x_lerp) * dbottom, lut)
                        _accumulate(out, bottom_row + right + d, x_lerp * dbottom, lut)
                elif has_top:  # the bottom row belongs to the next block
                    for d in range(depth):
                        dtop = (one - y_lerp) * grads[_at(source + d)]
                        _accumulate(out, top_row + left + d, (one - x_lerp) * dtop, lut)
                        _accumulate(out, top_row + right + d, x_lerp * dtop, lut)
                else:  # the top row belongs to the previous block
                    for d in range(depth):
                        dbottom = y_lerp * grads[_at(source + d)]
                        _accumulate(out, bottom_row + left + d, (one - x_lerp) * dbottom, lut)
                        _accumulate(out, bottom_row + right + d, x_lerp * dbottom, lut)


@njit(nogil=True)
def _grad_image_nchw_blocks(
    first, last, grads, dims, block_rows, start, items, rows, cols, nearest, lut, out
):  # pragma: no cover - compiled
    """Blocks ``first..last-1`` of an NCHW image gradient: as :func:`_grad_image_nhwc_blocks`,
    with ``grads`` (N, depth, crop_height, crop_width) and ``out`` (batch, depth, height, width);
    the channel loop is outside the column loop (a pixel's contributions keep TF's order).
    """
    _, height, width, depth = dims
    row_low, row_high, row_nearest, row_lerp, _ = rows
    col_low, col_high, col_nearest, col_lerp, col_valid = cols
    crop_height = row_low.shape[1]
    crop_width = col_low.shape[1]
    blocks_per_image = (height + block_rows - 1) // block_rows
    plane = height * width
    one = np.float32(1)
    for block in range(first, last):
        image_index = block // blocks_per_image
        row_first = (block - image_index * blocks_per_image) * block_rows
        row_last = min(row_first + block_rows, height)
        for d in range(depth):
            plane_base = (image_index * depth + d) * plane
            for k in range(plane_base + row_first * width, plane_base + row_last * width):
                out[_at(k)] = 0
        for e in range(start[block], start[block + 1]):
            item = items[e]
            b = item // crop_height
            y = item - b * crop_height
            if nearest:
                target_row = row_nearest[b, y] * width
                for d in range(depth):
                    plane_base = (image_index * depth + d) * plane + target_row
                    source = ((b * depth + d) * crop_height + y) * crop_width
                    for x in range(crop_width):
                        if col_valid[b, x]:
                            g = grads[_at(source + x)]
                            _accumulate(out, plane_base + col_nearest[b, x], g, lut)
                continue
            top = row_low[b, y]
            bottom = row_high[b, y]
            has_top = row_first <= top < row_last
            has_bottom = row_first <= bottom < row_last
            y_lerp = row_lerp[b, y]
            for d in range(depth):
                plane_base = (image_index * depth + d) * plane
                top_row = plane_base + top * width
                bottom_row = plane_base + bottom * width
                source = ((b * depth + d) * crop_height + y) * crop_width
                for x in range(crop_width):
                    if not col_valid[b, x]:
                        continue
                    left = col_low[b, x]
                    right = col_high[b, x]
                    x_lerp = col_lerp[b, x]
                    g = grads[_at(source + x)]
                    if has_top:
                        dtop = (one - y_lerp) * g
                        _accumulate(out, top_row + left, (one - x_lerp) * dtop, lut)
                        _accumulate(out, top_row + right, x_lerp * dtop, lut)
                    if has_bottom:
                        dbottom = y_lerp * g
                        _accumulate(out, bottom_row + left, (one - x_lerp) * dbottom, lut)
                        _accumulate(out, bottom_row + right, x_lerp * dbottom, lut)


@njit(nogil=True)
def _balanced_chunks(start, block_rows, width, crop_width, num_chunks):  # pragma: no cover
    """Chunk boundaries over the blocks of :func:`_block_lists` with about equal work each.

    Zeroing a block costs ``block_rows * width``, each crop row written to it about
    ``2 * crop_width`` (times depth, for both). Returns int64 (num_chunks + 1,).
    """
    num_blocks = start.shape[0] - 1
    cost = np.empty(num_blocks + 1, np.int64)
    cost[0] = 0
    for k in range(num_blocks):
        cost[k + 1] = cost[k] + block_rows * width + (start[k + 1] - start[k]) * crop_width * 2
    bounds = np.searchsorted(cost, cost[-1] * np.arange(num_chunks + 1) // num_chunks)
    bounds[0] = 0
    bounds[-1] = num_blocks
    return np.minimum(bounds, num_blocks)


@njit(cache=True, nogil=True)
def _grad_image_direct(
    grads, dims, boxes, box_indices, crop_size, nearest, lut, out, channels_first
):  # pragma: no cover - compiled
    """A small image gradient, in one thread: TF's own loop, with no tables or block lists.

    The same samples (:func:`_axis_sample`) and the same order of additions into every pixel
    (boxes, crop rows, crop columns, channels, corners TL, TR, BL, BR) as the blocked kernels;
    for calls too small to pay for building their tables. Either data format, through strides.
    """
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    _, height, width, depth = dims
    crop_height, crop_width = crop_size
    for k in range(out.size):
        out[_at(k)] = 0
    if channels_first:  # out (batch, depth, height, width), grads (N, depth, ch, cw)
        out_row, out_col, out_channel = width, 1, height * width
        grad_row, grad_col, grad_channel = crop_width, 1, crop_height * crop_width
    else:  # out (batch, height, width, depth), grads (N, ch, cw, depth)
        out_row, out_col, out_channel = width * depth, depth, 1
        grad_row, grad_col, grad_channel = crop_width * depth, depth, 1
    out_image = height * width * depth
    grad_box = crop_height * crop_width * depth
    one = np.float32(1)
    # one box's column samples (:func:`_axis_sample`), computed once per box, not once per row
    col_valid = np.empty(crop_width, np.bool_)
    col_low = np.empty(crop_width, np.int64)
    col_high = np.empty(crop_width, np.int64)
    col_nearest = np.empty(crop_width, np.int64)
    col_lerp = np.empty(crop_width, np.float32)
    for b in range(boxes.shape[0]):
        y1, x1, y2, x2 = boxes[b, 0], boxes[b, 1], boxes[b, 2], boxes[b, 3]
        image_base = np.int64(box_indices[b]) * out_image
        y_scale, y_offset = _axis_scale(y1, y2, height, crop_height, False)
        x_scale, x_offset = _axis_scale(x1, x2, width, crop_width, False)
        for x in range(crop_width):
            col_valid[x], col_low[x], col_high[x], col_nearest[x], col_lerp[x] = _axis_sample(
                x1, x2, x_scale, x_offset, x, width, crop_width
            )
        for y in range(crop_height):
            y_ok, top, bottom, y_near, y_lerp = _axis_sample(
                y1, y2, y_scale, y_offset, y, height, crop_height
            )
            if not y_ok:
                continue
            for x in range(crop_width):
                if not col_valid[x]:
                    continue
                left, right, x_near, x_lerp = col_low[x], col_high[x], col_nearest[x], col_lerp[x]
                source = b * grad_box + y * grad_row + x * grad_col
                if nearest:
                    target = image_base + y_near * out_row + x_near * out_col
                    for d in range(depth):
                        g = grads[_at(source + d * grad_channel)]
                        _accumulate(out, target + d * out_channel, g, lut)
                    continue
                top_left = image_base + top * out_row + left * out_col
                top_right = image_base + top * out_row + right * out_col
                bottom_left = image_base + bottom * out_row + left * out_col
                bottom_right = image_base + bottom * out_row + right * out_col
                for d in range(depth):
                    g = grads[_at(source + d * grad_channel)]
                    c = d * out_channel
                    dtop = (one - y_lerp) * g  # float dtop = (1 - y_lerp) * grads(b, y, x, d)
                    _accumulate(out, top_left + c, (one - x_lerp) * dtop, lut)
                    _accumulate(out, top_right + c, x_lerp * dtop, lut)
                    dbottom = y_lerp * g
                    _accumulate(out, bottom_left + c, (one - x_lerp) * dbottom, lut)
                    _accumulate(out, bottom_right + c, x_lerp * dbottom, lut)
    _restore_fp_mode(saved)


@njit(cache=True, nogil=True)
def _grad_image_nhwc_serial(
    grads, dims, boxes, box_indices, crop_size, nearest, lut, out, block_rows
):  # pragma: no cover - compiled
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    rows = _axis_table(boxes, 0, dims[1], crop_size[0], False)
    cols = _axis_table(boxes, 1, dims[2], crop_size[1], False)
    start, items = _block_lists(rows, box_indices, dims[0], dims[1], block_rows, nearest)
    _grad_image_nhwc_blocks(
        0, start.shape[0] - 1, grads, dims, block_rows, start, items, rows, cols, nearest, lut,
        out,
    )  # fmt: skip
    _restore_fp_mode(saved)


@njit(cache=True, nogil=True, parallel=True)
def _grad_image_nhwc_parallel(
    grads, dims, boxes, box_indices, crop_size, nearest, lut, out, block_rows, num_workers,
    num_chunks,
):  # fmt: skip  # pragma: no cover - compiled
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    rows = _axis_table(boxes, 0, dims[1], crop_size[0], False)
    cols = _axis_table(boxes, 1, dims[2], crop_size[1], False)
    start, items = _block_lists(rows, box_indices, dims[0], dims[1], block_rows, nearest)
    bounds = _balanced_chunks(start, block_rows, dims[2], crop_size[1], num_chunks)
    counter = np.zeros(1, np.int64)
    for _ in prange(num_workers):
        mode = _flush_denormals()  # ... and in each worker thread
        chunk = _next_chunk(counter)
        while chunk < num_chunks:
            _grad_image_nhwc_blocks(
                bounds[chunk], bounds[chunk + 1], grads, dims, block_rows, start, items, rows,
                cols, nearest, lut, out,
            )  # fmt: skip
            chunk = _next_chunk(counter)
        _restore_fp_mode(mode)
    _restore_fp_mode(saved)


@njit(cache=True, nogil=True)
def _grad_image_nchw_serial(
    grads, dims, boxes, box_indices, crop_size, nearest, lut, out, block_rows
):  # pragma: no cover - compiled
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    rows = _axis_table(boxes, 0, dims[1], crop_size[0], False)
    cols = _axis_table(boxes, 1, dims[2], crop_size[1], False)
    start, items = _block_lists(rows, box_indices, dims[0], dims[1], block_rows, nearest)
    _grad_image_nchw_blocks(
        0, start.shape[0] - 1, grads, dims, block_rows, start, items, rows, cols, nearest, lut,
        out,
    )  # fmt: skip
    _restore_fp_mode(saved)


@njit(cache=True, nogil=True, parallel=True)
def _grad_image_nchw_parallel(
    grads, dims, boxes, box_indices, crop_size, nearest, lut, out, block_rows, num_workers,
    num_chunks,
):  # fmt: skip  # pragma: no cover - compiled
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    rows = _axis_table(boxes, 0, dims[1], crop_size[0], False)
    cols = _axis_table(boxes, 1, dims[2], crop_size[1], False)
    start, items = _block_lists(rows, box_indices, dims[0], dims[1], block_rows, nearest)
    bounds = _balanced_chunks(start, block_rows, dims[2], crop_size[1], num_chunks)
    counter = np.zeros(1, np.int64)
    for _ in prange(num_workers):
        mode = _flush_denormals()  # ... and in each worker thread
        chunk = _next_chunk(counter)
        while chunk < num_chunks:
            _grad_image_nchw_blocks(
                bounds[chunk], bounds[chunk + 1], grads, dims, block_rows, start, items, rows,
                cols, nearest, lut, out,
            )  # fmt: skip
            chunk = _next_chunk(counter)
        _restore_fp_mode(mode)
    _restore_fp_mode(saved)


# --------------------------------------------------------------------------------------------------
# crop_and_resize_grad_boxes


@njit(nogil=True)
def _grad_boxes_range(
    first, last, grads, image, lut, box_indices, rows, cols, out
):  # pragma: no cover
    """Boxes ``first..last-1`` of the box gradient; ``out``: float32 (N, 4).

    ``grads`` float32 (N, crop_height, crop_width, depth) and ``image`` (batch, height, width,
    depth) are C-contiguous NHWC (NCHW calls are transposed first), and the sums run in TF's
    order: rows, columns, channels.
    """
    _, height, width, depth = image.shape
    crop_height = rows[0].shape[1]
    crop_width = cols[0].shape[1]
    row_low, row_high, _, row_lerp, row_valid = rows
    col_low, col_high, _, col_lerp, col_valid = cols
    one = np.float32(1)
    height_minus_one = np.float32(height - 1)
    width_minus_one = np.float32(width - 1)
    height_ratio = (
        height_minus_one / np.float32(crop_height - 1) if crop_height > 1 else np.float32(0)
    )
    width_ratio = width_minus_one / np.float32(crop_width - 1) if crop_width > 1 else np.float32(0)
    for b in range(first, last):
        image_index = box_indices[b]
        dy1 = np.float32(0)
        dx1 = np.float32(0)
        dy2 = np.float32(0)
        dx2 = np.float32(0)
        for y in range(crop_height):
            if not row_valid[b, y]:
                continue
            top = row_low[b, y]
            bottom = row_high[b, y]
            y_lerp = row_lerp[b, y]
            y_position = np.float32(y) * height_ratio  # y * height_ratio
            for x in range(crop_width):
                if not col_valid[b, x]:
                    continue
                left = col_low[b, x]
                right = col_high[b, x]
                x_lerp = col_lerp[b, x]
                x_position = np.float32(x) * width_ratio
                for d in range(depth):
                    tl = _to_float(image[image_index, top, left, d], lut)
                    tr = _to_float(image[image_index, top, right, d], lut)
                    bl = _to_float(image[image_index, bottom, left, d], lut)
                    br = _to_float(image[image_index, bottom, right, d], lut)
                    image_grad_y = (one - x_lerp) * (bl - tl) + x_lerp * (br - tr)
                    image_grad_x = (one - y_lerp) * (tr - tl) + y_lerp * (br - bl)
                    top_grad = grads[b, y, x, d]
                    image_grad_y *= top_grad
                    image_grad_x *= top_grad
                    if crop_height > 1:
                        dy1 += image_grad_y * (height_minus_one - y_position)
                        dy2 += image_grad_y * y_position
                    else:  # image_grad_y * 0.5 * (image_height - 1): double; float += double
                        term = np.float64(image_grad_y) * 0.5 * np.float64(height - 1)
                        dy1 = np.float32(np.float64(dy1) + term)
                        dy2 = np.float32(np.float64(dy2) + term)
                    if crop_width > 1:
                        dx1 += image_grad_x * (width_minus_one - x_position)
                        dx2 += image_grad_x * x_position
                    else:
                        term = np.float64(image_grad_x) * 0.5 * np.float64(width - 1)
                        dx1 = np.float32(np.float64(dx1) + term)
                        dx2 = np.float32(np.float64(dx2) + term)
        out[b, 0] = dy1
        out[b, 1] = dx1
        out[b, 2] = dy2
        out[b, 3] = dx2


@njit(cache=True, nogil=True)
def _grad_boxes_serial(grads, image, lut, boxes, box_indices, out):  # pragma: no cover - compiled
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    rows = _axis_table(boxes, 0, image.shape[1], grads.shape[1], True)
    cols = _axis_table(boxes, 1, image.shape[2], grads.shape[2], True)
    _grad_boxes_range(0, boxes.shape[0], grads, image, lut, box_indices, rows, cols, out)
    _restore_fp_mode(saved)


@njit(cache=True, nogil=True, parallel=True)
def _grad_boxes_parallel(grads, image, lut, boxes, box_indices, out):  # pragma: no cover - compiled
    saved = _flush_denormals()  # TF's floating-point mode, in this thread
    rows = _axis_table(boxes, 0, image.shape[1], grads.shape[1], True)
    cols = _axis_table(boxes, 1, image.shape[2], grads.shape[2], True)
    for b in prange(boxes.shape[0]):
        mode = _flush_denormals()  # ... and in each worker thread
        _grad_boxes_range(b, b + 1, grads, image, lut, box_indices, rows, cols, out)
        _restore_fp_mode(mode)
    _restore_fp_mode(saved)


# --------------------------------------------------------------------------------------------------
# Output memory


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


def crop_and_resize(
    image: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    crop_size: tuple[int, int],
    method: str,
    extrapolation_value: float,
    channels_first: bool = False,
) -> np.ndarray:
    """TF's ``CropAndResize``.

    Args:
        image: (batch, height, width, depth), or (batch, depth, height, width) if
            ``channels_first``; any of the nine image dtypes, any strides and byte order.
        boxes: float32 (N, 4), finite; box_indices: int32 (N,) in ``[0, batch)``.
        crop_size: ``(crop_height, crop_width)``, positive; method: ``"bilinear"`` or ``"nearest"``.
        extrapolation_value: float32-exact, written verbatim.

    Returns:
        float32 (N, crop_height, crop_width, depth), or (N, depth, crop_height, crop_width).
    """
    image = _native(image)
    if channels_first:
        batch, depth, height, width = image.shape
    else:
        batch, height, width, depth = image.shape
    dims = (int(batch), int(height), int(width), int(depth))
    boxes = _native(boxes, _FLOAT32)
    box_indices = _native(box_indices, _INT32)
    crop_height, crop_width = (int(c) for c in crop_size)
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
        np.float32(extrapolation_value),
        crops.reshape(-1),
    )
    if _parallel_ok(crops.size):
        items = num_boxes * crop_height * (depth if channels_first else 1)
        kernel = _forward_nchw_parallel if channels_first else _forward_nhwc_parallel
        _launch(kernel, *args, *_workers_and_chunks(items))
    elif channels_first:
        _forward_nchw_serial(*args)
    else:
        _forward_nhwc_serial(*args)
    return crops


def crop_and_resize_grad_image(
    grads: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    image_shape: tuple[int, int, int, int],
    method: str,
    dtype: str,
    channels_first: bool = False,
) -> np.ndarray:
    """TF's ``CropAndResizeGradImage``, deterministic and in TF's single-threaded order.

    Args:
        grads: float32 (N, crop_height, crop_width, depth), or (N, depth, crop_height, crop_width)
            if ``channels_first``; any strides and byte order.
        boxes, box_indices: as for :func:`crop_and_resize`.
        image_shape: ``(batch, height, width, depth)`` whatever the data format.
        method: ``"bilinear"`` or ``"nearest"``; dtype: ``"float16"``, ``"float32"`` or ``"float64"``.

    Returns:
        ``dtype`` (batch, height, width, depth), or (batch, depth, height, width).
    """
    grads = _native(grads, _FLOAT32)
    boxes = _native(boxes, _FLOAT32)
    box_indices = _native(box_indices, _INT32)
    dims = batch, height, width, depth = tuple(image_shape)
    if channels_first:
        crop_size = grads.shape[2:]
        shape = (batch, depth, height, width)
    else:
        crop_size = grads.shape[1:3]
        shape = (batch, height, width, depth)
    out_dtype = _GRAD_DTYPES[dtype]
    result = hostmem.pool().empty(shape, out_dtype)
    if result.size == 0:
        return result
    lut = None
    out = result.reshape(-1)
    if out_dtype.itemsize == 2:  # float16: accumulate on the bits
        out, lut = out.view(np.uint16), _half_table()
    args = (grads.reshape(-1), dims, boxes, box_indices, crop_size, method == "nearest", lut, out)
    work = result.size + grads.size
    if work < DIRECT_THRESHOLD:
        _grad_image_direct(*args, channels_first)
    # Blocks of up to 8 image rows: few enough that a crop row is rarely read twice (once for the
    # block of its top row, once for its bottom row), many enough to balance the threads.
    elif _parallel_ok(work):
        block_rows = max(1, min(8, (batch * height) // (8 * numba.get_num_threads())))
        kernel = _grad_image_nchw_parallel if channels_first else _grad_image_nhwc_parallel
        num_blocks = batch * -(-height // block_rows)
        _launch(kernel, *args, block_rows, *_workers_and_chunks(num_blocks))
    elif channels_first:
        _grad_image_nchw_serial(*args, 8)
    else:
        _grad_image_nhwc_serial(*args, 8)
    return result


def crop_and_resize_grad_boxes(
    grads: np.ndarray,
    image: np.ndarray,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    channels_first: bool = False,
) -> np.ndarray:
    """TF's ``CropAndResizeGradBoxes`` (bilinear): float32 (N, 4), each box's sums in TF's order.

    Args:
        grads: float32 (N, crop_height, crop_width, depth), or (N, depth, crop_height, crop_width)
            if ``channels_first``.
        image: (batch, height, width, depth), or (batch, depth, height, width); any image dtype.
        boxes, box_indices: as for :func:`crop_and_resize`.
    """
    if channels_first:  # NHWC order: the sums run over rows, columns, then channels, as in TF
        grads = np.moveaxis(grads, 1, 3)
        image = np.moveaxis(image, 1, 3)
    # C-contiguous copies where needed (one compiled layout; this op is not the hot one)
    grads = _native(grads, _FLOAT32)
    image = _native(image)
    boxes = _native(boxes, _FLOAT32)
    box_indices = _native(box_indices, _INT32)
    out = np.zeros((boxes.shape[0], 4), np.float32)
    if out.size == 0 or grads.size == 0:
        return out
    pixels, lut = _pixels(image)
    args = (grads, pixels, lut, boxes, box_indices, out)
    if _parallel_ok(grads.size) and boxes.shape[0] > 1:
        _launch(_grad_boxes_parallel, *args)
    else:
        _grad_boxes_serial(*args)
    return out
