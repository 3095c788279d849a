"""Scalar arithmetic shared by the Numba kernels: TF's floating-point mode, float16, pixel loads,
gradient accumulation and the per-box sample tables.

Requirements: every float32 operation is the one TensorFlow's CPU kernel does, in the same order
(see :mod:`cropcore_numba.kernels` for the whole list). The C/CUDA backends share one header for
this arithmetic (:mod:`cropcore.native`); Numba cannot compile C, so this module is its Python
transcription, tested bit for bit against the reference like the rest.
"""

from __future__ import annotations

import math
import platform
from types import FunctionType

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

#: Flat indices are converted to this before indexing: Numba then skips its negative-index
#: wraparound, which otherwise turns every contiguous channel loop into gathers and scatters.
as_index = np.uint64

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
def flush_denormals():  # pragma: no cover - compiled
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
def restore_fp_mode(saved):  # pragma: no cover - compiled
    _write_fp_mode(saved)


@intrinsic
def next_chunk(typingctx, counter):
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
def float_to_half_bits(value):  # pragma: no cover - compiled
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


def to_float(value, lut):  # pragma: no cover - replaced by the overload below
    """``static_cast<float>(pixel)``; ``lut`` is None, or the float32 table of the 65536 half values."""


@overload(to_float)
def _to_float_impl(value, lut):
    if isinstance(lut, types.NoneType):
        return lambda value, lut: np.float32(value)
    return lambda value, lut: lut[value]  # value: the uint16 bits of a half


def accumulate(out, index, value, lut):  # pragma: no cover - replaced by the overload below
    """TF's ``out[index] += static_cast<T>(value)`` for the result dtype T (float16 via its bits)."""


@overload(accumulate)
def _accumulate_impl(out, index, value, lut):
    if isinstance(lut, types.NoneType):
        if out.dtype == types.float64:

            def add_double(out, index, value, lut):
                i = as_index(index)
                out[i] = np.float64(value) + out[i]  # TF's compiled `acc += c` is `c + acc`

            return add_double

        def add(out, index, value, lut):
            i = as_index(index)
            out[i] = value + out[i]  # float32; TF's compiled `acc += c` is `c + acc` (NaN order)

        return add

    def add_half(out, index, value, lut):
        # Eigen::half and NumPy: h = half(float(h) + float(half(value)))
        i = as_index(index)
        out[i] = float_to_half_bits(lut[out[i]] + lut[float_to_half_bits(value)])

    return add_half


# --------------------------------------------------------------------------------------------------
# Sample tables: where each box's crop rows (or columns) fall in the image


_FLT_MIN = np.float32(2.0**-126)  # below this a float32 is subnormal


@njit(inline="always")
def _flushed(value):  # pragma: no cover - compiled
    """float32 ``value`` as TF's flush-to-zero mode leaves it: a subnormal becomes a zero of its sign.

    The CPU flushes by itself while the kernels run (:func:`flush_denormals`), but LLVM optimises
    as if it did not: given ``fptrunc(x) >= 0`` it may compare the double ``x`` instead, and a
    double that rounds to a negative subnormal float (TF: -0.0, inside the image) then counts as
    negative (outside). Flushing in code gives the same value whichever way LLVM compiles it.
    """
    if abs(value) < _FLT_MIN:
        return np.float32(math.copysign(0.0, value))
    return value


@njit(inline="always")
def axis_scale(start, end, size, crop, ratio_first):  # pragma: no cover - compiled
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
def axis_sample(start, end, scale, offset, k, size, crop):  # pragma: no cover - compiled
    """Sample ``k`` of a box side (see :func:`axis_scale`), as ``(valid, low, high, nearest, lerp)``.

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
def axis_table(boxes, first_column, size, crop, ratio_first):  # pragma: no cover - compiled
    """The samples of one crop axis for every box (:func:`axis_sample`, tabulated).

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
        scale, offset = axis_scale(start, end, size, crop, ratio_first)
        for k in range(crop):
            ok, lo, hi, near, fraction = axis_sample(start, end, scale, offset, k, size, crop)
            if ok:
                low[b, k] = lo
                high[b, k] = hi
                nearest[b, k] = near
                lerp[b, k] = fraction
                valid[b, k] = True
    return low, high, nearest, lerp, valid


@njit(inline="always")
def table_sample(table, b, k):  # pragma: no cover - compiled
    """Sample ``k`` of box ``b`` in an :func:`axis_table`, as ``(valid, low, high, lerp)``."""
    low, high, _, lerp, valid = table
    return valid[b, k], low[b, k], high[b, k], lerp[b, k]


@njit
def chunk_range(chunk, num_chunks, total):  # pragma: no cover - compiled
    """The item range ``[first, last)`` of chunk ``chunk`` when ``total`` items make ``num_chunks``."""
    return total * chunk // num_chunks, total * (chunk + 1) // num_chunks


def serial_and_parallel(body):
    """``body`` compiled twice, with ``cache=True``: a serial and a ``parallel=True`` dispatcher.

    ``body`` spreads its work with ``prange``, which is ``range`` in the serial variant, so the
    serial variant skips the thread-pool launch. Each variant compiles its own copy of ``body``,
    named ``<name>_serial`` and ``<name>_parallel`` (``name`` without the leading underscore):
    Numba's disk cache keys a function by its name, line and bytecode, not by the options it is
    compiled with, so two dispatchers of one function would load each other's machine code.
    """
    variants = []
    for suffix, parallel in (("serial", False), ("parallel", True)):
        name = f"{body.__name__.lstrip('_')}_{suffix}"
        copy = FunctionType(body.__code__, body.__globals__, name, body.__defaults__)
        copy.__qualname__ = name
        copy.__module__ = body.__module__
        copy.__doc__ = body.__doc__
        variants.append(njit(cache=True, nogil=True, parallel=parallel)(copy))
    return tuple(variants)
