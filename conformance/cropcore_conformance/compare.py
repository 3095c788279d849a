"""Comparing a backend's result with the expected one, under a named tolerance.

Requirements:

- **Exact by default.** cropcore's contract for CPU backends is bit-identity with TensorFlow's CPU
  kernel, so the default tolerance, ``exact``, accepts only identical bits (any NaN matches any
  NaN: TensorFlow does not specify NaN payloads). Signed zeros must match.
- **Looser classes are named, few, and stated in the report.** A backend that cannot be
  bit-identical (a GPU contracting ``a * b + c`` into an FMA, a parallel gradient that sums in
  another order) declares a class for the cases concerned; the class's bound is written in units
  of the result dtype's epsilon, so tolerances follow dtype.
- Every comparison yields statistics the report aggregates: elements compared, elements
  bit-identical, worst absolute error and worst distance in units in the last place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["TOLERANCES", "Comparison", "Tolerance", "compare_arrays", "ulp_distance"]


@dataclass(frozen=True)
class Tolerance:
    """A named acceptance rule for numeric results.

    ``bound(expected, scale)`` returns the largest accepted ``|actual - expected|`` per element
    (``None`` for exact comparison); ``scale`` is what the case knows about the magnitude of the
    terms behind each element (see :meth:`cropcore_conformance.cases.Case.scale`).
    """

    name: str
    description: str
    bound: Callable[[np.ndarray, Any], np.ndarray | None]


def _exact(expected: np.ndarray, scale: Any) -> None:
    return None


def _eps(dtype: np.dtype) -> float:
    return float(np.finfo(dtype).eps) if dtype.kind in "fc" else 0.0


def _fma(expected: np.ndarray, scale: Any) -> np.ndarray:
    finite = np.abs(expected[np.isfinite(expected)]) if expected.dtype.kind == "f" else None
    magnitude = float(finite.max()) if finite is not None and finite.size else 0.0
    # 2**-14 of the case's largest magnitude: a sample coordinate one float32 ulp away (the
    # effect of an FMA in `y1 * (H - 1) + y * scale`) moves a bilinear result by about
    # ulp(H - 1) times the largest pixel difference; ~2**-14 covers images up to a few hundred
    # pixels. An index-level bug (wrong pixel, wrong rounding) moves it by O(1) of that magnitude.
    return np.full(expected.shape, magnitude * 2.0**-14)


def _reordered_sums(expected: np.ndarray, scale: Any) -> np.ndarray | None:
    if scale is None:  # not a sum (the forward ops): nothing may be reordered
        return None
    terms, total = scale  # the number of terms, and the sum of their magnitudes, per element
    return terms * _eps(expected.dtype) * np.asarray(total, np.float64)


#: The tolerance classes a backend may declare (see ``cropcore_conformance_tolerances``).
TOLERANCES: dict[str, Tolerance] = {
    t.name: t
    for t in (
        Tolerance(
            "exact",
            "identical bits in the result dtype (any NaN matches any NaN; signed zeros must match)",
            _exact,
        ),
        Tolerance(
            "fma",
            "|actual - expected| <= 2**-14 x the case's largest finite |expected|; NaN and +-inf "
            "exactly where expected (for FMA contraction or another float32 rounding order of the "
            "sample coordinates, as on GPUs)",
            _fma,
        ),
        Tolerance(
            "reordered-sums",
            "gradients: |actual - expected| <= n x eps(dtype) x (sum of |terms|) per element, n the "
            "number of terms (the bound of a sum taken in any order); other ops exact",
            _reordered_sums,
        ),
    )
}


@dataclass
class Comparison:
    """The outcome of comparing one result array with the expected one."""

    passed: bool
    elements: int = 0
    identical: int = 0
    max_abs: float = 0.0
    max_ulp: int = 0
    message: str = ""


def _unsigned(a: np.ndarray) -> np.ndarray:
    return a.view(f"u{a.dtype.itemsize}")


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Units in the last place between two float arrays of one dtype (int64; NaN pairs give 0)."""
    bits = {2: np.int16, 4: np.int32, 8: np.int64}[a.dtype.itemsize]
    sign_mask = np.int64(1) << (8 * a.dtype.itemsize - 1)

    def ordered(x: np.ndarray) -> np.ndarray:
        i = np.ascontiguousarray(x).view(bits).astype(np.int64)
        # Negative floats: map to negative integers so that the order is the floats' order.
        return np.where(i < 0, -(i & (sign_mask - 1)), i)

    with np.errstate(over="ignore"):
        distance = np.abs(ordered(a) - ordered(b))
    both_nan = np.isnan(a) & np.isnan(b)
    return np.where(both_nan, 0, distance)


def _identical(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """Per element: identical bits (or both NaN, for floating dtypes)."""
    kind = expected.dtype.kind
    if kind == "c":
        return _identical(actual.real.copy(), expected.real.copy()) & _identical(
            actual.imag.copy(), expected.imag.copy()
        )
    if kind == "f":
        a, e = np.ascontiguousarray(actual), np.ascontiguousarray(expected)
        return (_unsigned(a) == _unsigned(e)) | (np.isnan(a) & np.isnan(e))
    return actual == expected


def _index(flat: int, shape: tuple[int, ...]) -> str:
    return str([int(i) for i in np.unravel_index(flat, shape)]) if shape else "[]"


def compare_arrays(
    actual: np.ndarray,
    expected: np.ndarray,
    tolerance: Tolerance | None = None,
    scale: Any = None,
) -> Comparison:
    """Compare two NumPy arrays (same shape and dtype required) under ``tolerance``.

    The dtype is compared up to byte order: a result equal in value to the expected one but in
    the other byte order passes (docs/conformance.md, "Byte order").
    """
    tolerance = tolerance or TOLERANCES["exact"]
    if actual.shape != expected.shape:
        return Comparison(False, message=f"shape {actual.shape}, expected {expected.shape}")
    if actual.dtype.newbyteorder("=") != expected.dtype.newbyteorder("="):
        return Comparison(False, message=f"dtype {actual.dtype}, expected {expected.dtype}")
    actual = np.asarray(actual, dtype=actual.dtype.newbyteorder("="))
    expected = np.asarray(expected, dtype=expected.dtype.newbyteorder("="))
    n = int(expected.size)
    if n == 0:
        return Comparison(True)
    same = _identical(actual, expected)
    identical = int(np.count_nonzero(same))
    kind = expected.dtype.kind
    if kind == "f":
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        nan_mismatch = np.isnan(actual) != np.isnan(expected)
        diff = np.where(same, 0.0, np.where(np.isnan(diff) | nan_mismatch, np.inf, diff))
        ulps = np.where(same, 0, ulp_distance(actual, expected))
        ulps = np.where(nan_mismatch, np.iinfo(np.int64).max, ulps)
        max_abs, max_ulp = float(diff.max()), int(ulps.max())
    elif kind in "iub":
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
        max_abs, max_ulp = float(diff.max()), 0
    else:
        diff = np.where(same, 0.0, np.inf)
        max_abs, max_ulp = float(diff.max()), 0

    bound = tolerance.bound(expected, scale) if kind == "f" else None
    if bound is None:
        accepted = same
    else:
        finite = np.isfinite(expected)
        accepted = same | (finite & np.isfinite(actual) & (diff <= bound))
    bad = np.flatnonzero(~accepted)
    if not bad.size:
        return Comparison(True, n, identical, max_abs, max_ulp)
    worst = int(bad[np.argmax(diff.reshape(-1)[bad])])
    first = int(bad[0])
    a, e = actual.reshape(-1), expected.reshape(-1)

    def describe(i: int) -> str:
        detail = f"got {a[i]!s}, expected {e[i]!s}"
        if kind == "f" and np.isfinite(diff.reshape(-1)[i]):
            detail += f" (|diff| {diff.reshape(-1)[i]:.3g}, {ulps.reshape(-1)[i]} ulp)"
        return f"at {_index(i, expected.shape)} {detail}"

    where = describe(first) + ("" if worst == first else f"; worst {describe(worst)}")
    message = (
        f"{bad.size} of {n} elements differ under tolerance {tolerance.name!r} "
        f"({identical} bit-identical); first {where}"
    )
    return Comparison(False, n, identical, max_abs, max_ulp, message)
