"""The CUDA source as NVRTC compiles it, and the options it is compiled with.

Requirements:

- **One self-contained text.** :func:`source` is ``kernels.cu`` with every header it includes,
  directly or not (the package's ``*.cuh`` and cropcore's shared arithmetic header,
  :mod:`cropcore.native`), pasted in place of its ``#include`` line. CuPy keys its on-disk kernel
  cache by the source text and the options, so every byte of every header is in the key: a new
  header can never be paired with an old kernels.cu, and NVRTC needs no include path.
- **TF's CPU rounding** (:data:`NVRTC_OPTIONS`): no FMA contraction, flush-to-zero, IEEE division.
- No CuPy here: the text and options are tested, and compiled with nvcc, where there is no GPU.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from cropcore import native

__all__ = [
    "ARCHITECTURES",
    "MIN_COMPUTE_CAPABILITY",
    "NVRTC_OPTIONS",
    "headers",
    "nvrtc_options",
    "source",
]

#: Architectures the CUDA source is compiled for in CI (nvcc of CUDA 13, which starts at sm_75).
#: At run time CuPy compiles for the device present with NVRTC; the code needs compute capability
#: 6.0 (double-precision atomicAdd), which older toolkits can target.
ARCHITECTURES = ("sm_75", "sm_80", "sm_86", "sm_89", "sm_90", "sm_100", "sm_120")
MIN_COMPUTE_CAPABILITY = 60

#: NVRTC options: TF's CPU rounding (no FMA contraction; flush-to-zero; IEEE division).
NVRTC_OPTIONS = ("--std=c++17", "--fmad=false", "-ftz=true", "--prec-div=true", "--prec-sqrt=true")

_INCLUDE = re.compile(r'^#include "([^"]+)"[^\n]*$', re.MULTILINE)


def headers() -> dict[str, str]:
    """Every header the CUDA source may include, by the name ``#include`` gives it: its text."""
    package = resources.files("cropcore_cupy")
    texts = {
        entry.name: entry.read_text(encoding="utf-8")
        for entry in package.iterdir()
        if entry.name.endswith(".cuh")
    }
    texts[native.HEADER] = (Path(native.include_dir()) / native.HEADER).read_text(encoding="utf-8")
    return texts


def source() -> str:
    """kernels.cu with its headers pasted in place of their ``#include "..."`` lines.

    Each header goes in at its first include, the headers it includes in turn at theirs; a later
    include of a header already in (its include guard would empty it) becomes a comment.
    ``#include <...>`` lines (the shared header's, for host compilers only) stay as they are.
    """
    text = resources.files("cropcore_cupy").joinpath("kernels.cu").read_text(encoding="utf-8")
    available = headers()
    pasted: set[str] = set()

    def paste(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in available:
            raise RuntimeError(f"the CUDA source includes {name}, which is not shipped")
        if name in pasted:
            return f"// {name}: pasted above"
        pasted.add(name)
        return _INCLUDE.sub(paste, available[name])

    return _INCLUDE.sub(paste, text)


def nvrtc_options(op: str) -> tuple[str, ...]:
    """Options for the module of one op family (``forward``, ``grad_image``, ``grad_boxes``)."""
    return (*NVRTC_OPTIONS, f"-DCROPCORE_OP_{op.upper()}")
