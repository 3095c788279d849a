"""Flush-to-zero: TensorFlow's CPU floating-point environment, emulated on NumPy arrays.

Requirements:

- TF's CPU kernels run under ``port::ScopedFlushDenormal`` (flush-to-zero, denormals-are-zero):
  a subnormal float32 operand reads as a zero of its sign, and a result that x86 finds tiny becomes
  a zero of its sign. The helpers here give NumPy's gradual underflow those semantics, element
  for element, for the kernels of :mod:`cropcore_numpy.kernels` and :mod:`.gradients`.
- Cheap: flushing costs a pass per operation, so the kernels first bound how small a nonzero
  intermediate can get (:func:`_smallest`, :func:`_grain`) and flush only when it can be tiny.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_F32 = np.float32
_ONE = np.float32(1)
_ZERO = np.float32(0)

# NumPy underflows gradually; emulating TF's flush-to-zero costs a pass per operation, so each
# kernel first bounds how small a nonzero intermediate value can get, and flushes only when that
# bound is below 2**-126:
# - a product of float32 values is at least the product of their smallest nonzero magnitudes
#   (:func:`_smallest`), halved for each rounding;
# - a sum or difference is a multiple of its operands' grain (:func:`_grain`), so a nonzero one
#   is at least that grain.

# Tininess. x86 (TF's CPU wheel) decides that a result underflows *after rounding* it to 24 bits
# with an unbounded exponent, and only then flushes. NumPy rounds to the subnormal grid, which
# turns an exact result in [FLT_MIN * (1 - 2**-24), FLT_MIN * (1 - 2**-25)) into FLT_MIN, a normal
# number that a test of the rounded result keeps, where TF gives 0 (e.g. 2**-126 * (1 - 2**-24)).
# Sums and differences are exact whenever they are that small (their operands are multiples of
# 2**-149), so testing their result is right; products, quotients and double-to-float
# conversions are not, and go through :func:`_multiply_ftz`, :func:`_divide_ftz`, :func:`_narrow`.

_FLT_MIN = 2.0**-126  # below this a float32 is subnormal
_TINY = 2.0**-126 * (1 - 2.0**-25)  # a double below this rounds to 24 bits below FLT_MIN: tiny
_SCALE = np.float32(2.0**24)  # moves a product near FLT_MIN clear of the subnormal range
_SUMMABLE = 2.0**-102  # float32 terms at least this large are multiples of 2**-125, and so are
# all their partial sums: none is subnormal.


def _ftz(x: np.ndarray) -> np.ndarray:
    """Flush the subnormal elements of float32 ``x`` to zero of the same sign, in place.

    Right for a value read from memory (denormals-are-zero) and for the result of a sum or
    difference; see above for products. ``x * 0`` keeps the sign, ``x * 1`` every other value.
    """
    np.multiply(x, np.abs(x) >= _FLT_MIN, out=x)
    return x


def _untiny(result: np.ndarray, scaled: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Flush, in place, the elements of flushed float32 ``result`` that x86 finds tiny.

    Only a result of exactly +-FLT_MIN can be wrong (see above). ``scaled(mask)`` recomputes those
    elements' operation with one operand multiplied by 2**24: an exact value near 2**-102, normal,
    so that it rounds as x86 does, and the result was tiny iff ``|scaled| < 2**-102``.
    """
    edge = np.abs(result) == _F32(_FLT_MIN)
    if edge.any():
        tiny = np.abs(scaled(edge)) < _F32(_FLT_MIN) * _SCALE
        result[edge] = np.where(tiny, result[edge] * _ZERO, result[edge])
    return result


def _multiply_ftz(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 ``a * b`` as TF's CPU computes it: flush-to-zero, tininess after rounding.

    ``a``, ``b``: broadcastable float32, normal or zero (already flushed), or one of them at most
    1 in magnitude. A result of +-FLT_MIN then has both factors at most 1 + 2**-24 in magnitude,
    so scaling one by 2**24 cannot overflow. ``out`` may be ``a`` or ``b``.
    """
    product = _ftz(np.multiply(a, b))  # a fresh array: the operands are read again below

    def scaled(edge: np.ndarray) -> np.ndarray:
        shape = product.shape
        return (np.broadcast_to(a, shape)[edge] * _SCALE) * np.broadcast_to(b, shape)[edge]

    _untiny(product, scaled)
    if out is None:
        return product
    out[...] = product
    return out


def _divide_ftz(a: np.ndarray, divisor: np.float32) -> np.ndarray:
    """float32 ``a / divisor`` for flushed ``a`` and ``divisor >= 1``, as :func:`_multiply_ftz`."""
    quotient = _ftz(a / divisor)
    return _untiny(quotient, lambda edge: (a[edge] * _SCALE) / divisor)


def _narrow(x: np.ndarray) -> np.ndarray:
    """``static_cast<float>`` of float64 ``x`` under flush-to-zero: float32, tiny values to +-0."""
    result = x.astype(_F32)
    np.multiply(result, np.abs(x) >= _TINY, out=result)
    return result


def _multiply_if(bound: float) -> Callable[..., np.ndarray]:
    """:func:`_multiply_ftz` if a nonzero product can be as small as ``bound`` and that is
    subnormal, else ``np.multiply``."""
    return _multiply_ftz if bound < _FLT_MIN else np.multiply


def _keep(x: np.ndarray) -> np.ndarray:
    return x


def _flush_if(bound: float) -> Callable[[np.ndarray], np.ndarray]:
    """:func:`_ftz` if a nonzero result can be as small as ``bound`` and that is subnormal."""
    return _ftz if bound < _FLT_MIN else _keep


def _smallest(x: np.ndarray) -> float:
    """The smallest nonzero finite magnitude of a float array ``x`` (inf if none, or if it is
    beyond float32's range)."""
    if x.size == 0:
        return math.inf
    # On the bit patterns: |x| is the pattern without its sign bit, finite nonzero magnitudes
    # order like unsigned integers below inf's, and `- 1` sends zeros to the top.
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize]
    top = np.iinfo(unsigned).max
    magnitude = np.bitwise_and(x.view(unsigned), top >> 1)
    magnitude -= 1
    bits = magnitude.min()
    if bits == top:
        return math.inf  # all zero
    value = float((np.array(bits, unsigned) + unsigned(1)).view(x.dtype))
    # Exact (a float64 below FLT_MIN stays below it); one beyond float32's range casts to inf.
    return value if value <= np.finfo(_F32).max else math.inf


def _grain(x: np.ndarray) -> float:
    """A power of two that divides every finite element of ``x`` (as float32); inf if all are 0.

    Every float32 value is a multiple of its own ulp, so the ulp of the smallest nonzero one
    divides them all. Sums and differences of multiples of ``q`` are multiples of ``q``, products
    of multiples of ``p`` and ``q`` are multiples of ``p * q``, and rounding keeps this.
    """
    smallest = _smallest(x)
    if smallest == math.inf:
        return math.inf
    with np.errstate(under="ignore"):  # a float64 below float32's range casts to 0
        return float(np.spacing(_F32(max(_F32(smallest), 2.0**-149))))


def _pixel_grain(image: np.ndarray) -> float:
    """:func:`_grain` of ``image`` cast to float32, without a scan where the dtype bounds it."""
    if image.dtype.kind in "iu":
        return 1.0  # integers
    if image.dtype == np.float16:
        return 2.0**-24  # every float16 is a multiple of its smallest subnormal
    return _grain(image)
