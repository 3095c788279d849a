"""Building and loading the torch backend's compiled CPU loops (``_native.c``).

Requirements:

- **Optional.** ``_native.c`` (which includes the arithmetic header it shares with the CUDA
  kernels, :mod:`cropcore.native`) is compiled once per machine with the system's C compiler
  (``$CC``, else ``cc``, ``gcc`` or ``clang``) into ``$CROPCORE_CACHE_DIR`` (default
  ``~/.cache/cropcore``) and loaded with :mod:`ctypes`. Without a compiler, or with
  ``CROPCORE_TORCH_NATIVE=0``, :func:`library` is ``None`` and the torch backend runs
  :mod:`.kernels` instead.
- **Exactly TF's arithmetic.** ``-ffp-contract=off`` (no FMA), no fast-math.
- **Never a stale or foreign library.** The file name is a hash of the source files' text, the
  compiler, the flags and the CPU (``-march=native``); the cache directory must be writable by
  this user only, and a library is installed by an atomic rename.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

from cropcore import config, native

__all__ = ["available", "library", "status"]

logger = logging.getLogger("cropcore.torch")

# Image dtypes, by the suffix of their C functions.
_SUFFIX = {
    torch.uint8: "u8",
    torch.uint16: "u16",
    torch.int8: "i8",
    torch.int16: "i16",
    torch.int32: "i32",
    torch.int64: "i64",
    torch.float16: "f16",
    torch.float32: "f32",
    torch.float64: "f64",
}


#: The C source of the loops; it includes cropcore.native's shared arithmetic header.
_SOURCE = Path(__file__).with_name("_native.c")
#: The NCHW plane-block loops, which _native.c includes.
_PLANES_SOURCE = Path(__file__).with_name("_native_planes.c")
#: The small calls in one compiled call (issue 16), which _native.c includes too.
_SMALL_SOURCE = Path(__file__).with_name("_native_small.c")


def _sources() -> dict[str, str]:
    """The text of every file the library is built from, by name (the build cache's key)."""
    header = Path(native.include_dir()) / native.HEADER
    return {
        path.name: path.read_text(encoding="utf-8")
        for path in (_SOURCE, _PLANES_SOURCE, _SMALL_SOURCE, header)
    }


# -fp-contract=off: no FMA; no -ffast-math; -fno-math-errno only lets floorf/ceilf inline.
_FLAGS = ["-O3", "-std=c99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno"]
_MARCH = ["-march=native"]

_lock = threading.Lock()
_state: dict[str, object] = {}  # "lib": the CDLL, or "error": why there is none

_I64, _F32, _INT, _PTR = ctypes.c_int64, ctypes.c_float, ctypes.c_int, ctypes.c_void_p
_TABLES = [_PTR] * 8


def _signatures() -> dict[str, list]:
    crop = [_PTR, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, *_TABLES, _INT, _F32]
    crop += [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64, _I64]
    boxes = [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _I64]
    boxes += [_PTR, _I64, _I64, _I64, *_TABLES, _PTR, _PTR, _I64, _I64]
    image = [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, _I64, *_TABLES, _INT]
    image += [_PTR, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _I64]
    names = {f"crop_{s}": crop for s in _SUFFIX.values()}
    names.update({f"crop_boxes_{s}": crop for s in _SUFFIX.values()})
    names.update({f"grad_boxes_{s}": boxes for s in _SUFFIX.values()})
    names.update({"grad_image_f32": image, "grad_image_f64": image})
    planes = [_PTR, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, *_TABLES]
    planes += [_INT, _F32, _PTR, _I64, _I64, _I64, _I64, _I64, _I64, _INT, _PTR, _I64, _I64]
    names["crop_planes_f32"] = planes
    image_planes = [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, *_TABLES, _INT]
    image_planes += [_PTR, _I64, _I64, _I64, _I64, _I64, _PTR, _I64, _I64]
    names.update({f"grad_image_planes_{s}": image_planes for s in ("f32", "f64")})
    names["samples"] = [_PTR, _I64, _I64, _I64, _I64, _INT, _PTR, _PTR, _PTR, _PTR, _PTR]
    once = [_PTR, _I64, _I64, _I64, _I64, _I64, _I64, _I64, _PTR, _PTR, _I64, _I64, _I64, _I64]
    once += [_PTR, _INT, _F32, _PTR, _I64, _I64, _I64, _I64]
    names.update({f"crop_once_{s}": once for s in _SUFFIX.values()})
    names.update({f"crop_packed_{s}": [_PTR, _F32] for s in _SUFFIX.values()})
    names.update({"grad_image_packed_f32": [_PTR], "grad_image_packed_f64": [_PTR]})
    names["planes_to_channels_f32"] = [_PTR, _I64, _I64, _I64, _PTR, _I64, _I64]
    roi_tables = [_PTR] * 10 + [_PTR, _PTR, _PTR]  # y, x tables; grid_h, grid_w, count
    roi = [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, _I64, *roi_tables]
    roi_grad = [_PTR, _I64, _I64, _I64, _I64, _PTR, _I64, _I64, _I64, _I64, _I64]
    roi_grad += [*roi_tables, _PTR, _INT, _PTR, _PTR, _I64, _I64]
    for suffix in ("f32", "f64"):
        names[f"roi_forward_{suffix}"] = [*roi, _INT, _INT, _PTR, _PTR, _I64, _I64]
        names[f"roi_grad_{suffix}"] = roi_grad
    return names


def _cache_dirs() -> list[Path]:
    """Where to keep the compiled library: the configured or user cache, else a private temp dir."""
    configured = config.get("CROPCORE_CACHE_DIR")
    if configured:
        return [Path(configured)]
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return [Path(base) / "cropcore", Path(tempfile.gettempdir()) / f"cropcore-{uid}"]


def _private_dir(path: Path) -> Path:
    """``path``, created if needed, refused unless only we can write to it (we load code from it)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if hasattr(os, "getuid"):
        st = path.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise PermissionError(f"{path} is writable by other users; not loading code from it")
    return path


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cpu_id() -> str:
    """What ``-march=native`` depends on: the CPU's model and feature flags."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))][:2]
        return "".join(lines)
    except OSError:
        return platform.processor()


def _build() -> ctypes.CDLL:
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc or clang)")
    key = hashlib.sha256(
        "\0".join(
            [*_sources().values(), compiler, *_FLAGS, *_MARCH, _cpu_id(), sys.platform]
        ).encode()
    ).hexdigest()[:16]
    errors = []
    for directory in _cache_dirs():
        try:
            return _load(_compiled(compiler, _private_dir(directory), key))
        except OSError as exc:  # an unwritable cache: try the next place
            errors.append(f"{directory}: {exc}")
    raise OSError("; ".join(errors))


def _compiled(compiler: str, directory: Path, key: str) -> Path:
    """The compiled library in ``directory``, compiling it there first if it is not yet."""
    target = directory / f"cropcore_torch_native_{key}.so"
    if not target.exists():
        with tempfile.TemporaryDirectory(dir=directory) as tmp:
            built = Path(tmp) / "native.so"
            include = ["-I", native.include_dir()]
            for march in (_MARCH, []):  # a compiler without -march=native still builds
                command = [compiler, *_FLAGS, *march, *include, str(_SOURCE), "-o", str(built)]
                command.append("-lm")
                result = subprocess.run(command, capture_output=True, text=True, timeout=300)
                if result.returncode == 0:
                    break
            else:
                raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()[-2000:]}")
            os.replace(built, target)  # atomic: concurrent builders each install a whole file
        logger.debug("compiled the native CPU kernels into %s", target)
    return target


def _load(target: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(target))
    for name, argtypes in _signatures().items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = None if name == "samples" else _I64
    return lib


def library() -> ctypes.CDLL | None:
    """The compiled kernels, building them the first time; ``None`` when they cannot be had."""
    if not config.get("CROPCORE_TORCH_NATIVE"):
        return None
    lib = _state.get("lib")
    if lib is not None or "error" in _state:
        return lib  # type: ignore[return-value]
    with _lock:
        if "lib" not in _state and "error" not in _state:
            try:
                _state["lib"] = _build()
            except Exception as exc:  # no compiler, a read-only home, ...: the torch ops still work
                _state["error"] = f"{type(exc).__name__}: {exc}"
                logger.warning(
                    "cropcore's torch backend runs without its compiled CPU kernels (slower, "
                    "same results): %s",
                    _state["error"],
                )
    return _state.get("lib")  # type: ignore[return-value]


def available() -> bool:
    """Whether the compiled CPU kernels are in use (compiling them on the first call)."""
    return library() is not None


def status() -> str:
    """One line: whether the compiled CPU kernels are in use, and if not, why."""
    if library() is not None:
        return "compiled CPU kernels in use"
    if "error" in _state:
        return f"compiled CPU kernels unavailable ({_state['error']}); torch ops in use"
    return "compiled CPU kernels disabled by CROPCORE_TORCH_NATIVE; torch ops in use"
