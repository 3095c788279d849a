"""The native (C, C++ and CUDA) source that more than one backend compiles, shipped as data.

Requirements:

- **One text of TensorFlow's float32 per-sample arithmetic.** ``tf_crop_and_resize.h`` holds the
  coordinate mapping (``in_y``/``in_x``, with the centre of a crop of 1), the range test, the
  neighbours and weights, ``roundf`` for nearest, the bilinear blend, the two gradients' per-sample
  terms, flush-to-zero and float16 conversion. The CuPy backend's CUDA kernels and the torch
  backend's compiled CPU loops both include it, so their arithmetic cannot drift apart.
- **What it guarantees.** Compiled without ``a * b + c`` contraction (``-ffp-contract=off``, no
  fast-math; CUDA ``--fmad=false``) and run under flush-to-zero and denormals-are-zero
  (``cropcore_fp_enter()`` on the host; CUDA ``-ftz=true``), every function returns TensorFlow
  CPU kernel's float32 result bit for bit, for image sides up to 2**24. It compiles as C99, C++17
  and CUDA (NVRTC included: no standard header under CUDA).
- **Data, not code.** Backends must not import each other or share files between their packages;
  this package is the core's, imports nothing, and only says where the headers are.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["HEADER", "include_dir"]

#: The header's file name, as ``#include`` names it.
HEADER = "tf_crop_and_resize.h"


def include_dir() -> str:
    """The directory to pass as ``-I`` to a C, C++ or CUDA compiler (like ``numpy.get_include()``)."""
    return str(Path(__file__).resolve().parent)
