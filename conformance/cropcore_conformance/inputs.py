"""Case inputs: NumPy arrays with a memory layout, made fresh for every run, and moved to a library.

Requirements:

- A case's arrays are made anew for each run (:func:`materialize`), so a backend that writes into
  its inputs cannot corrupt the case for the next backend, and the suite can check afterwards that
  the inputs it handed over are unchanged.
- Some cases are about *how* an array is laid out, not its values: strided views, negative
  strides, Fortran order, read-only memory, non-native byte order. :class:`Laid` keeps the values
  and rebuilds the layout on every run.
- Moving inputs to another array library or device (:func:`to_library`) imports that library only
  when asked to; :func:`library_available` says whether it can be used here.
"""

from __future__ import annotations

import copy
import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "LAYOUTS",
    "Laid",
    "library_available",
    "library_of",
    "materialize",
    "snapshot",
    "to_library",
    "to_numpy",
]

#: Layouts :class:`Laid` can rebuild, and what each one is.
LAYOUTS = {
    "strided": "a view taking every other element of a twice-as-long last axis",
    "reversed": "a view with a negative stride along the first axis",
    "fortran": "Fortran (column-major) order",
    "read-only": "memory that may not be written (flags.writeable is False)",
    "byteswapped": "non-native byte order",
    "transposed": "an NHWC array viewed as NCHW without a copy (channels_first inputs)",
}


@dataclass(frozen=True)
class Laid:
    """An input array of given values, rebuilt with layout ``layout`` on every run."""

    values: np.ndarray
    layout: str

    def make(self) -> np.ndarray:
        a = np.array(self.values, copy=True)
        if self.layout == "strided":
            if a.ndim == 0:
                return a
            big = np.zeros((*a.shape[:-1], 2 * a.shape[-1]), a.dtype)
            view = big[..., ::2]
            view[...] = a
            return view
        if self.layout == "reversed":
            return np.flip(np.flip(a, 0).copy(), 0) if a.ndim else a
        if self.layout == "fortran":
            return np.asfortranarray(a)
        if self.layout == "read-only":
            a.flags.writeable = False
            return a
        if self.layout == "byteswapped":
            return a.astype(a.dtype.newbyteorder("S"))
        if self.layout == "transposed":  # values are NCHW; memory is NHWC
            return np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, 3)), 3, 1)
        raise ValueError(f"unknown layout {self.layout!r}; known: {', '.join(LAYOUTS)}")


def materialize(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Fresh copies of a case's arguments (arrays rebuilt with their layouts)."""
    out = {}
    for key, value in kwargs.items():
        if isinstance(value, Laid):
            out[key] = value.make()
        elif isinstance(value, np.ndarray):
            out[key] = value.copy()
        else:
            out[key] = copy.deepcopy(value)
    return out


def snapshot(kwargs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Copies of the NumPy arrays among ``kwargs``, to check afterwards that they are unchanged."""
    return {k: np.array(v, copy=True) for k, v in kwargs.items() if isinstance(v, np.ndarray)}


def changed_inputs(before: dict[str, np.ndarray], kwargs: dict[str, Any]) -> list[str]:
    """Names of the arrays of ``kwargs`` whose contents differ from ``before``."""
    changed = []
    for key, old in before.items():
        new = kwargs[key]
        same = (
            old.shape == new.shape
            and old.dtype == new.dtype
            and np.ascontiguousarray(old).tobytes() == np.ascontiguousarray(new).tobytes()
        )
        if not same:
            changed.append(key)
    return changed


def library_of(x: Any) -> str:
    """The top-level module of ``x``'s type (``"numpy"``, ``"torch"``, ``"cupy"``, ...)."""
    if isinstance(x, np.ndarray | np.generic):
        return "numpy"
    library = type(x).__module__.partition(".")[0]
    return "jax" if library == "jaxlib" else library  # jax.Array's type lives in jaxlib


def device_of(x: Any) -> str:
    """``"cpu"`` or ``"<type>:<index>"``."""
    library = library_of(x)
    if library == "torch":
        return str(x.device) if x.device.type == "cpu" else f"{x.device.type}:{x.device.index}"
    if library == "cupy":
        return f"cuda:{x.device.id}"
    if library == "jax":
        (device,) = x.devices()
        return "cpu" if device.platform == "cpu" else f"cuda:{device.id}"
    return "cpu"


def library_available(library: str, device: str = "cpu") -> str | None:
    """``None`` if arrays of ``library`` on ``device`` can be made here, else why not."""
    if library == "numpy":
        return None if device == "cpu" else "NumPy arrays live on the host only"
    if importlib.util.find_spec(library) is None:
        return f"{library} is not installed"
    if library == "torch":
        import torch

        kind = device.partition(":")[0]
        if kind == "cuda" and not torch.cuda.is_available():
            return "torch has no CUDA device here"
        if kind not in ("cpu", "cuda"):
            return f"device {device!r} is not supported by the suite"
        return None
    if library == "jax":
        try:
            _jax_device(device)
        except Exception as exc:  # no such platform or index
            return f"jax has no device {device!r} here: {type(exc).__name__}: {exc}"
        return None
    if library == "cupy":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                return "CuPy finds no CUDA device"
        except Exception as exc:  # no driver, no device
            return f"CuPy cannot run: {type(exc).__name__}: {exc}"
        return None
    return f"the suite cannot make {library} arrays"


def to_library(a: Any, library: str, device: str = "cpu") -> Any:
    """NumPy array ``a`` as an array of ``library`` on ``device`` (values and dtype kept)."""
    if not isinstance(a, np.ndarray) or library == "numpy":
        return a
    # np.array, not np.ascontiguousarray: the latter turns a 0-d array into a 1-d one.
    native = np.array(a, dtype=a.dtype.newbyteorder("="), order="C")
    if library == "torch":
        import torch

        return torch.from_numpy(native).to(device)
    if library == "cupy":
        import cupy

        with cupy.cuda.Device(int(device.partition(":")[2] or 0)):
            return cupy.asarray(native)
    if library == "jax":
        import jax

        with jax.enable_x64(True):  # 64-bit inputs stay 64-bit whether or not x64 is on
            return jax.device_put(native, _jax_device(device))
    raise ValueError(f"the suite cannot make {library} arrays")


def _jax_device(device: str) -> Any:
    """The JAX device for ``"cpu"``, ``"cuda"`` or ``"cuda:1"`` (CUDA is JAX's ``"gpu"``)."""
    import jax

    kind, _, index = device.partition(":")
    return jax.devices("gpu" if kind == "cuda" else kind)[int(index or 0)]


def to_numpy(x: Any) -> np.ndarray:
    """Any supported array as a NumPy array (copied to the host where needed)."""
    library = library_of(x)
    if library == "torch":
        x = x.detach()
        if x.is_conj():
            x = x.resolve_conj()
        return x.cpu().numpy()
    if library == "cupy":
        return x.get()
    return np.asarray(x)
