"""Array-library interop: tell which library an array belongs to, and move arrays between libraries.

Requirements (after einops' ``_backends.py``):

- No framework is ever imported here. A library is touched only through ``sys.modules``, and only
  when an array of that library was passed in, so the library is already loaded.
- Moving between libraries goes through DLPack (zero-copy) where the devices allow it; a copy is
  made only to change device (say a CUDA tensor handed to a CPU backend) or to change dtype.
- One small class per library, each with the same few methods, readable side by side.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
from typing import Any, ClassVar

import numpy as np

__all__ = ["ArrayLibrary", "dtype_name", "library_for", "library_name"]

# torch's dtype names that differ from NumPy's, for the dtypes cropcore cares about.
_TORCH_DTYPE_NAMES = {"half": "float16", "float": "float32", "double": "float64"}


_TYPE_LIBRARIES: dict[type, str] = {}
# Top-level modules whose types belong to another library: JAX's arrays live in jaxlib, its
# tracers in jax.
_MODULE_LIBRARIES = {"builtins": "numpy", "jaxlib": "jax"}
_DTYPE_NAMES: dict[Any, str] = {}


def library_name(x: Any) -> str:
    """Top-level module name of ``x``'s type: ``"numpy"``, ``"torch"``, ``"cupy"``, ...

    Python scalars, lists and tuples count as ``"numpy"`` (they are converted with ``np.asarray``).
    """
    kind = type(x)
    name = _TYPE_LIBRARIES.get(kind)
    if name is None:
        if issubclass(kind, (np.ndarray, np.generic)):
            name = "numpy"
        elif hasattr(kind, "__cuda_array_interface__") and not hasattr(kind, "__dlpack__"):
            name = CudaArrayInterfaceLibrary.name  # e.g. numba.cuda device arrays
        else:
            name = kind.__module__.partition(".")[0]
            name = _MODULE_LIBRARIES.get(name, name)
        _TYPE_LIBRARIES[kind] = name
    return name


def dtype_name(x: Any) -> str:
    """The dtype of ``x`` as a NumPy-style name (``"float32"``, ``"uint8"``, ``"bfloat16"``, ...)."""
    dtype = getattr(x, "dtype", None)
    if dtype is None:
        return np.asarray(x).dtype.name
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        if isinstance(dtype, np.dtype):
            name = dtype.name
        else:
            name = str(dtype).rpartition(".")[2]  # "torch.float32" -> "float32"
            name = _TORCH_DTYPE_NAMES.get(name, name)
        _DTYPE_NAMES[dtype] = name
    return name


class ArrayLibrary:
    """How cropcore handles the arrays of one library. Subclasses are stateless singletons."""

    name = "?"

    def module(self) -> Any:
        return sys.modules[self.name]

    def device(self, x: Any) -> str:
        """Device of ``x`` as ``"cpu"`` or ``"<type>:<index>"`` (``"cuda:0"``)."""
        return "cpu"

    def needs_grad(self, x: Any) -> bool:
        """Whether a result computed from ``x`` should carry an autograd graph."""
        return False

    def residence(self, x: Any) -> str:
        """Where ``x``'s values are: ``"host"`` (readable now), ``"device"`` (readable by waiting
        for the device) or ``"traced"`` (no values: ``torch.compile``, ``torch.export``, a meta or
        fake tensor, a ``vmap``/``jax.jit`` tracer)."""
        return "host"

    def export(self, x: Any) -> Any:
        """``x`` in a form this library can hand out through DLPack."""
        return x

    def to_numpy(self, x: Any) -> np.ndarray:
        """A NumPy view of ``x`` when it lives on the host (DLPack), else a host copy."""
        return np.from_dlpack(self.export(x))

    def from_numpy(self, a: np.ndarray, like: Any) -> Any:
        """``a`` as an array of this library, on the device of ``like`` (a host/default one if None)."""
        return self.to_device(self.module().from_dlpack(a), like)

    def to_device(self, x: Any, like: Any) -> Any:
        """``x`` (of this library) on the device of ``like`` (unchanged if ``like`` is None or foreign)."""
        return x

    def convert(self, x: Any, like: Any = None) -> Any:
        """Any array ``x`` as an array of this library, on the device of ``like``.

        Zero-copy through DLPack where the devices allow it; through a host copy otherwise.
        """
        source = library_for(x)
        if source is self:
            return self.to_device(x, like)
        try:
            y = self.module().from_dlpack(source.export(x))
        except (BufferError, RuntimeError, TypeError, ValueError, AttributeError):
            return self.from_numpy(source.to_numpy(x), like)
        return self.to_device(y, like)

    def astype(self, x: Any, dtype: str) -> Any:
        """``x`` with NumPy dtype name ``dtype``; ``x`` itself when it already has it."""
        return x if dtype_name(x) == dtype else x.astype(dtype)


class NumpyLibrary(ArrayLibrary):
    name = "numpy"

    def module(self) -> Any:
        return np

    def export(self, x: Any) -> Any:
        return np.asarray(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_numpy(self, a: np.ndarray, like: Any) -> Any:
        return a

    def convert(self, x: Any, like: Any = None) -> Any:
        source = library_for(x)
        return np.asarray(x) if source is self else source.to_numpy(x)

    def astype(self, x: Any, dtype: str) -> Any:
        x = np.asarray(x)
        if x.dtype == dtype:
            return x
        with np.errstate(over="ignore"):  # 1e40 -> inf is reported by the finiteness check
            return x.astype(dtype)


class TorchLibrary(ArrayLibrary):
    name = "torch"

    def device(self, x: Any) -> str:
        return "cpu" if x.is_cpu else str(x.device)  # (x.device costs several times is_cpu)

    def needs_grad(self, x: Any) -> bool:
        return bool(getattr(x, "requires_grad", False)) and self.module().is_grad_enabled()

    _probes: tuple[Any, Any, Any] | None = None

    def residence(self, x: Any) -> str:
        probes = self._probes
        if probes is None:  # looked up once, outside a trace: this runs for every torch call
            torch = self.module()
            functorch = torch._C._functorch
            probes = (
                torch.compiler.is_compiling,
                functorch.is_functorch_wrapped_tensor,
                torch.Tensor,
            )
            if not probes[0]():  # dynamo could not record the class attribute
                TorchLibrary._probes = probes
        compiling, wrapped, tensor = probes
        if compiling() or wrapped(x):
            return "traced"  # dynamo, or vmap/grad wrappers (no data of their own)
        if type(x) is not tensor:  # FakeTensor, FunctionalTensor; not the common case
            # Loaded wherever a fake tensor exists (torch.export, torch.compile, FakeTensorMode).
            fake = sys.modules.get("torch._subclasses.fake_tensor")
            if fake is not None and fake.is_fake(x):
                return "traced"
        if x.is_cpu:  # (x.device.type costs five times as much)
            return "host"
        return "traced" if x.is_meta else "device"

    def convert(self, x: Any, like: Any = None) -> Any:
        if isinstance(x, np.ndarray) and any(s < 0 for s in x.strides):
            # torch.from_dlpack aborts the process (an uncaught C++ exception, torch 2.13) on a
            # DLPack tensor with negative strides, such as a flipped NumPy view: copy it first.
            x = np.ascontiguousarray(x)
        return super().convert(x, like)

    def export(self, x: Any) -> Any:
        x = x.detach()
        if x.is_conj() or x.is_neg():
            x = x.resolve_conj().resolve_neg()
        return x

    def to_numpy(self, x: Any) -> np.ndarray:
        x = self.export(x)
        if x.device.type != "cpu":
            x = x.cpu()
        return np.from_dlpack(x)

    def from_numpy(self, a: np.ndarray, like: Any) -> Any:
        torch = self.module()
        if not a.flags.writeable or not a.dtype.isnative:
            a = np.array(
                a, dtype=a.dtype.newbyteorder("=")
            )  # torch wraps only writable native memory
        return self.to_device(torch.from_dlpack(a), like)

    def to_device(self, x: Any, like: Any) -> Any:
        if library_name(like) != "torch" or (x.is_cpu and like.is_cpu):  # the common case, cheaply
            return x
        device = like.device
        return x.to(device) if x.device != device else x

    def astype(self, x: Any, dtype: str) -> Any:
        target = getattr(self.module(), dtype)
        return x if x.dtype == target else x.to(target)


class CupyLibrary(ArrayLibrary):
    name = "cupy"

    def device(self, x: Any) -> str:
        return f"cuda:{x.device.id}"

    def residence(self, x: Any) -> str:
        return "device"

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.get()

    def from_numpy(self, a: np.ndarray, like: Any) -> Any:
        cupy = self.module()
        if library_name(like) == "cupy":
            with like.device:
                return cupy.asarray(a)
        return cupy.asarray(a)

    def to_device(self, x: Any, like: Any) -> Any:
        if library_name(like) == "cupy" and x.device != like.device:
            with like.device:
                return x.copy()
        return x


class CudaArrayInterfaceLibrary(ArrayLibrary):
    """Objects that expose only ``__cuda_array_interface__`` (numba.cuda device arrays, ...).

    They are wrapped as CuPy arrays without a copy (CuPy is imported here, when such an object is
    first passed in); results for them come back as CuPy arrays on the same device.
    """

    name = "cuda_array_interface"

    def module(self) -> Any:
        try:
            return importlib.import_module("cupy")
        except ImportError:
            raise TypeError(
                "an array with only __cuda_array_interface__ needs CuPy: "
                'pip install "cropcore[cupy]"'
            ) from None

    def export(self, x: Any) -> Any:
        return self.module().asarray(x)

    def device(self, x: Any) -> str:
        return f"cuda:{self.export(x).device.id}"

    def residence(self, x: Any) -> str:
        return "device"

    def to_numpy(self, x: Any) -> np.ndarray:
        return self.export(x).get()

    def astype(self, x: Any, dtype: str) -> Any:
        return x if dtype_name(x) == dtype else self.export(x).astype(dtype)

    def convert(self, x: Any, like: Any = None) -> Any:
        return _LIBRARIES["cupy"].convert(x if library_name(x) != self.name else self.export(x))


class JaxLibrary(ArrayLibrary):
    """``jax.Array`` (type in ``jaxlib``) and JAX's tracers (``jax.jit``, ``jax.grad``, ``jax.vmap``).

    A tracer is ``"traced"``: nothing here reads its values or asks for its device (selection
    takes JAX's default device). NumPy input is put on the device of ``like`` with its dtype kept:
    64-bit dtypes stay 64-bit (under a scoped ``jax.enable_x64``) whether or not x64 is on.
    """

    name = "jax"

    def _tracer(self, x: Any) -> bool:
        return isinstance(x, sys.modules["jax"].core.Tracer)

    def _device(self, x: Any) -> Any:
        """The one device of a concrete array, or JAX's default device for a tracer."""
        jax = sys.modules["jax"]
        if not self._tracer(x):
            devices = x.devices()
            if len(devices) == 1:
                return next(iter(devices))
        return jax.config.jax_default_device or jax.devices()[0]

    def device(self, x: Any) -> str:
        device = self._device(x)
        if device.platform == "cpu":
            return "cpu"
        kind = device.platform
        if kind == "gpu":  # JAX says "gpu" for CUDA and ROCm; DLPack tells them apart
            kind = (
                "rocm" if "rocm" in str(getattr(device.client, "platform_version", "")) else "cuda"
            )
        return f"{kind}:{device.id}"

    def residence(self, x: Any) -> str:
        if self._tracer(x):
            return "traced"
        return "host" if all(d.platform == "cpu" for d in x.devices()) else "device"

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_numpy(self, a: np.ndarray, like: Any) -> Any:
        jax = sys.modules["jax"]
        a = np.asarray(a)
        # 64-bit types exist only under x64: scoped, so a float64 image stays float64.
        with jax.enable_x64(True) if a.dtype.itemsize == 8 else contextlib.nullcontext():
            if like is not None and library_name(like) == self.name and not self._tracer(like):
                return jax.device_put(a, self._device(like))
            return jax.numpy.asarray(a)

    def to_device(self, x: Any, like: Any) -> Any:
        if like is None or library_name(like) != self.name or self._tracer(x) or self._tracer(like):
            return x
        device = self._device(like)
        if x.devices() == {device}:
            return x
        return sys.modules["jax"].device_put(x, device)

    def convert(self, x: Any, like: Any = None) -> Any:
        source = library_for(x)
        if source is self:
            return self.to_device(x, like)
        return self.from_numpy(source.to_numpy(x), like)

    def astype(self, x: Any, dtype: str) -> Any:
        if dtype_name(x) == dtype:
            return x
        if dtype in ("int64", "float64"):
            with sys.modules["jax"].enable_x64(True):
                return x.astype(dtype)
        return x.astype(dtype)


class DLPackLibrary(ArrayLibrary):
    """Any other library whose module has ``from_dlpack`` (MLX, dpnp, ...): host arrays only."""

    #: Libraries whose arrays' type lives in one module and whose ``from_dlpack`` in another.
    _MODULES: ClassVar[dict[str, str]] = {}

    def __init__(self, name: str) -> None:
        self.name = name

    def residence(self, x: Any) -> str:
        try:  # a host array says device type 1 (kDLCPU); a JAX tracer has no DLPack device
            return "host" if int(x.__dlpack_device__()[0]) == 1 else "device"
        except Exception:
            return "traced"

    def module(self) -> Any:
        module = sys.modules.get(self._MODULES.get(self.name, self.name))
        if module is None or not hasattr(module, "from_dlpack"):
            raise TypeError(
                f"cropcore cannot return {self.name} arrays: the module has no from_dlpack; "
                "convert the input with numpy.asarray first"
            )
        return module


_LIBRARIES: dict[str, ArrayLibrary] = {
    "numpy": NumpyLibrary(),
    "torch": TorchLibrary(),
    "cupy": CupyLibrary(),
    CudaArrayInterfaceLibrary.name: CudaArrayInterfaceLibrary(),
    "jax": JaxLibrary(),
}


def library_for(x_or_name: Any) -> ArrayLibrary:
    """The :class:`ArrayLibrary` for an array, or for a library name."""
    name = x_or_name if isinstance(x_or_name, str) else library_name(x_or_name)
    lib = _LIBRARIES.get(name)
    if lib is None:
        lib = _LIBRARIES[name] = DLPackLibrary(name)
    return lib
