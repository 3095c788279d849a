"""Run a script with torchvision's compiled CPU ops loaded on a CPU-only torch.

The only torchvision wheel for torch 2.13 on this project's package index is a CUDA build. Its
``_C.so`` names ``libc10_cuda.so`` and ``libtorch_cuda.so``, which a CPU torch does not ship, so
the library does not load and ``torchvision.ops.roi_align`` fails with "operator
torchvision::roi_align does not exist". Its CPU kernels need nothing from CUDA. This runner builds
two stand-in libraries with those names that define the CUDA symbols ``_C.so`` refers to, each
aborting the process if it is ever called (only torchvision's CUDA kernels call them, and a CPU
torch never dispatches to those), loads them, imports torchvision, checks that its ``roi_align``
op now exists, and runs the script::

    pip install --no-deps torchvision==0.28.0      # the CUDA build; nothing else is installed
    python benchmarks/torchvision_cpu.py benchmarks/bench_torch.py --workloads tiny
    python benchmarks/torchvision_cpu.py -m cropcore bench --workloads maskrcnn-7
    python benchmarks/torchvision_cpu.py scripts/compare_torchvision_roi_align.py

Where torchvision's ops already load (a CPU build, or a CUDA torch), it only runs the script. It
needs ``nm``, ``objdump`` and a C compiler (``cc``). For benchmarks and comparisons only: cropcore's
ops never import torchvision (``cropcore bench`` does, as a reference, where it is installed).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

#: what a CUDA build of torchvision needs that a CPU torch does not ship
CUDA_LIBRARIES = ("libc10_cuda.so", "libtorch_cuda.so")


def _symbols(path: Path, undefined: bool) -> set[str]:
    flag = "--undefined-only" if undefined else "--defined-only"
    out = subprocess.run(["nm", "-D", flag, str(path)], capture_output=True, text=True, check=True)
    return {line.split()[-1].split("@")[0] for line in out.stdout.splitlines() if line.strip()}


def needed_libraries(path: Path) -> list[str]:
    """The ``DT_NEEDED`` entries of a shared library (``objdump -p``)."""
    out = subprocess.run(["objdump", "-p", str(path)], capture_output=True, text=True, check=True)
    return re.findall(r"^\s*NEEDED\s+(\S+)", out.stdout, flags=re.MULTILINE)


def stub_symbols(undefined: set[str], provided: set[str]) -> list[str]:
    """The CUDA symbols of ``undefined`` that nothing in ``provided`` defines, sorted.

    The rest of what is undefined (the C and C++ runtimes) the system resolves.
    """
    return sorted(s for s in undefined - provided if "cuda" in s.lower())


def stub_source(symbols: list[str]) -> str:
    """C source defining each symbol (by its mangled name) as a function that aborts."""
    lines = ["#include <stdio.h>", "#include <stdlib.h>"]
    for i, name in enumerate(symbols):
        lines.append(f'void cropcore_stub_{i}(void) __asm__("{name}");')
        lines.append(
            f"void cropcore_stub_{i}(void) {{"
            f' fputs("CUDA stub called: {name}\\n", stderr); abort(); }}'
        )
    return "\n".join(lines) + "\n"


def _find_c_library() -> Path | None:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        for candidate in sorted(Path(folder).glob("_C*.so")):
            return candidate
    return None


def load() -> str:
    """Make ``torch.ops.torchvision.roi_align`` available; say how (or raise ``RuntimeError``)."""
    import torch

    library = _find_c_library()
    if library is None:
        raise RuntimeError("torchvision is not installed")
    torch_lib = Path(torch.__file__).parent / "lib"
    missing = [
        name
        for name in needed_libraries(library)
        if name in CUDA_LIBRARIES and not (torch_lib / name).exists()
    ]
    if missing:
        provided: set[str] = set()
        for folder in (torch_lib, library.parent.parent / "torchvision.libs"):
            for so in folder.glob("*.so*"):
                provided |= _symbols(so, undefined=False)
        symbols = stub_symbols(_symbols(library, undefined=True), provided)
        build = Path(tempfile.mkdtemp(prefix="torchvision-cuda-stubs-"))
        (build / "stubs.c").write_text(stub_source(symbols))
        for i, name in enumerate(missing):
            source = build / "stubs.c" if i == 0 else build / "empty.c"
            if i:
                source.write_text("")
            cmd = ["cc", "-shared", "-fPIC", "-o", str(build / name), f"-Wl,-soname,{name}"]
            subprocess.run([*cmd, str(source)], check=True)
            ctypes.CDLL(str(build / name), mode=ctypes.RTLD_GLOBAL)
    import torchvision  # noqa: F401  (loads _C.so, which registers the ops)

    if not hasattr(torch.ops.torchvision, "roi_align"):
        raise RuntimeError(f"torchvision's ops did not load from {library}")
    if missing:
        return f"torchvision's CPU ops loaded with {len(symbols)} CUDA symbols stubbed ({library})"
    return f"torchvision's ops load as installed ({library})"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if argv else 2)
    print(load(), file=sys.stderr)
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
