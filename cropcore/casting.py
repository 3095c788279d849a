"""Results in another dtype than float32: ``crop_and_resize(..., output_dtype=...)``.

Requirements: the rule is one for every array library: a float result is cast with IEEE rounding
(to nearest, ties to even; float16 overflows to infinity); an integer result is rounded to the
nearest integer, ties to even (IEEE's default, NumPy's ``rint``, torch's ``round``, OpenCV's
``saturate_cast``), then saturated to the dtype's range, NaN becoming 0. The arithmetic is the
caller's library's own (NumPy, CuPy, JAX or torch functions), on its device, without a host copy.
Core module: no framework import (``sys.modules`` through :mod:`cropcore.arrays`).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from cropcore.arrays import dtype_name, library_for
from cropcore.calls import IMAGE_DTYPES

__all__ = ["output_dtype_arg", "saturate_cast"]


def output_dtype_arg(dtype: Any) -> str:
    """``None`` (float32, TensorFlow's), a dtype name, a NumPy dtype or type, or a torch dtype,
    as the NumPy name of one of the image dtypes."""
    if dtype is None:
        return "float32"
    if isinstance(dtype, str):
        name = dtype
    elif type(dtype).__module__.startswith("torch"):
        name = str(dtype).rpartition(".")[2]
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = repr(dtype)
    if name not in IMAGE_DTYPES:
        raise TypeError(
            f"output_dtype must be one of {', '.join(IMAGE_DTYPES)} (or None), got {dtype!r}"
        )
    return name


def _bounds(name: str) -> tuple[float, float]:
    """The smallest and largest float32 values inside the integer dtype's range."""
    info = np.iinfo(name)
    low, high = np.float32(info.min), np.float32(info.max)
    if int(high) > info.max:  # 2**31 - 1 rounds up to 2**31 in float32
        high = np.nextafter(high, np.float32(0))
    return float(low), float(high)


def saturate_cast(x: Any, name: str) -> Any:
    """``x`` (a float array of any library) as dtype ``name``, by the rule of the module."""
    if dtype_name(x) == name:
        return x
    lib = library_for(x)
    if np.dtype(name).kind == "f":
        with np.errstate(over="ignore"):  # float16 overflows to infinity, as documented
            return lib.astype(x, name)
    low, high = _bounds(name)
    if lib.name == "torch":
        torch = lib.module()
        y = torch.nan_to_num(torch.round(x).clamp(low, high), nan=0.0)
        return y.to(getattr(torch, name))
    xp = sys.modules["jax.numpy"] if lib.name == "jax" else lib.module()
    y = xp.clip(xp.rint(x), low, high)
    y = xp.where(xp.isnan(y), 0, y)
    return y.astype(name)
