"""The machine a benchmark ran on: CPU, cores, memory, versions and thread settings.

Requirements: imports nothing beyond the standard library, NumPy and cropcore: versions are read
from loaded modules or package metadata.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from typing import Any

import numpy as np

import cropcore

__all__ = ["machine_info", "memory_bytes"]


def _version(module: str, *distributions: str) -> str | None:
    loaded = sys.modules.get(module)
    if loaded is not None and getattr(loaded, "__version__", None):
        return str(loaded.__version__)
    for dist in distributions or (module,):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_bytes() -> int | None:
    """This machine's physical memory in bytes, or ``None`` where it cannot be read."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def machine_info() -> dict[str, Any]:
    """The machine, the versions that matter and the thread settings, for the report.

    Reads versions from loaded modules or package metadata: imports nothing.
    """
    versions = {
        "python": platform.python_version(),
        "cropcore": cropcore.__version__,
        "numpy": np.__version__,
        "numba": _version("numba"),
        "llvmlite": _version("llvmlite"),
        "torch": _version("torch"),
        "tensorflow": _version("tensorflow", "tensorflow", "tensorflow-cpu", "tensorflow-intel"),
        "torchvision": _version("torchvision"),
    }
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "python_implementation": platform.python_implementation(),
        "versions": {k: v for k, v in versions.items() if v is not None},
    }
    if hasattr(os, "sched_getaffinity"):
        info["usable_cores"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average"] = list(os.getloadavg())
    numba = sys.modules.get("numba")
    if numba is not None:
        info["numba_threads"] = numba.get_num_threads()  # starts the thread pool if needed
        with contextlib.suppress(ValueError):  # no threading layer could start
            info["numba_threading_layer"] = numba.threading_layer()
    if "torch" in sys.modules:
        info["torch_threads"] = sys.modules["torch"].get_num_threads()
    return info
