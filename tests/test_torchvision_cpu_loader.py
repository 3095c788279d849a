"""benchmarks/torchvision_cpu.py: the CUDA stand-ins it builds, and the live torchvision comparison.

The stand-in libraries are built and checked here with ``cc`` and ``nm`` (no torchvision needed).
Where torchvision is installed, scripts/compare_torchvision_roi_align.py runs through the loader and
must find every result bit-identical (torchvision's compiled CPU kernel against cropcore).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import torchvision_cpu  # noqa: E402

needs_toolchain = pytest.mark.skipif(
    not (shutil.which("cc") and shutil.which("nm")), reason="needs a C compiler (cc) and nm"
)

# two of the mangled names torchvision 0.28.0's _C.so takes from libc10_cuda.so, and one from libc
CUDA = ["_ZN3c104cuda12device_countEv", "_ZNK3c104cuda10CUDAStream5queryEv"]
UNDEFINED = {*CUDA, "__cxa_atexit", "_ZN3c106detail14torchCheckFailEPKcS2_jS2_"}


def test_only_the_cuda_symbols_nothing_provides_are_stubbed():
    provided = {"_ZN3c106detail14torchCheckFailEPKcS2_jS2_", "_ZN3c104cuda12device_countEv"}
    assert torchvision_cpu.stub_symbols(UNDEFINED, provided) == [
        "_ZNK3c104cuda10CUDAStream5queryEv"
    ]
    assert torchvision_cpu.stub_symbols(UNDEFINED, set()) == sorted(CUDA)


@needs_toolchain
def test_the_stand_in_library_defines_each_symbol_and_aborts_when_called(tmp_path):
    source = tmp_path / "stubs.c"
    source.write_text(torchvision_cpu.stub_source(CUDA))
    library = tmp_path / "libc10_cuda.so"
    subprocess.run(
        ["cc", "-shared", "-fPIC", "-o", str(library), "-Wl,-soname,libc10_cuda.so", str(source)],
        check=True,
    )
    assert torchvision_cpu.needed_libraries(library) == ["libc.so.6"]
    defined = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout
    assert all(f" T {name}" in defined for name in CUDA)
    # calling one aborts the process with the symbol's name (it never returns garbage)
    call = f"import ctypes, sys; lib = ctypes.CDLL(sys.argv[1]); getattr(lib, {CUDA[0]!r})()"
    done = subprocess.run([sys.executable, "-c", call, str(library)], capture_output=True)
    assert done.returncode == -6  # SIGABRT
    assert f"CUDA stub called: {CUDA[0]}".encode() in done.stderr


def test_the_runner_without_a_script_prints_its_usage():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "torchvision_cpu.py")], capture_output=True
    )
    assert done.returncode == 2
    assert b"torchvision's compiled CPU ops" in done.stdout


@needs_toolchain
@pytest.mark.skipif(
    importlib.util.find_spec("torchvision") is None,
    reason="torchvision is not installed (pip install --no-deps torchvision)",
)
def test_torchvision_compiled_roi_align_equals_cropcore_bit_for_bit():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "scripts"), *sys.path]))
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "torchvision_cpu.py"),
            str(ROOT / "scripts" / "compare_torchvision_roi_align.py"),
            "--cases",
            "15",
            "--backends",
            "numpy",
            "torch",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "results that differ: 0" in done.stdout
