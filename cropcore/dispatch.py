"""Who runs this call: backend selection, array conversion, and the trip back to the caller's library.

Selection order (the first rule that applies decides):

1. ``backend=`` given to the op: that backend (a name or an alias), or an error;
2. the innermost :func:`use_backend` context of this thread (or task);
3. the ``CROPCORE_BACKEND`` environment variable;
4. automatic: the first backend of the priority list (:func:`set_priority`, the
   ``CROPCORE_PRIORITY`` environment variable, or :data:`DEFAULT_PRIORITY`) that is installed and
   can run, computes on the device type of the call's image, implements the op, supports its dtype
   and method, and does not decline it. When the image needs gradients (a torch tensor with
   ``requires_grad`` under grad mode), backends with autograd come first.

A backend named by rules 1-3 that cannot run raises (never a silent fallback), listing what is
installed and how to install the missing one. Every decision is logged at DEBUG on the
``cropcore.dispatch`` logger, and :func:`explain` tells which backend a call would use and why
without running it.
"""

from __future__ import annotations

import functools
import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cropcore import config, dispatch_cache, memory
from cropcore.arrays import dtype_name, library_for, library_name
from cropcore.errors import (
    BackendDeclinedError,
    BackendError,
    BackendUnavailableError,
    UnknownBackendError,
)
from cropcore.ops import OPS
from cropcore.priority import (
    DEFAULT_PRIORITY,
    current_override,
    get_priority,
    set_priority,
    use_backend,
)
from cropcore.registry import Backend, registry

__all__ = [
    "DEFAULT_PRIORITY",
    "Decision",
    "current_override",
    "explain_call",
    "get_priority",
    "named_backend",
    "run",
    "select",
    "set_priority",
    "use_backend",
]

logger = logging.getLogger("cropcore.dispatch")

#: How to install the built-in backends, for error messages about a missing one.
INSTALL_HINTS = {
    "numpy": "pip install cropcore (the numpy backend ships with it)",
    "numba": 'pip install "cropcore[numba]"',
    "torch": 'pip install "cropcore[torch]"',
    "cupy": 'pip install "cropcore[cupy]" (needs an NVIDIA GPU)',
    "jax": 'pip install "cropcore[jax]"',
    "cuda": 'pip install "cropcore[cupy]" (needs an NVIDIA GPU)',
}

# Libraries whose arrays all live on one device (the host), so no device move is ever needed.
_SINGLE_DEVICE_LIBRARIES = frozenset({"numpy"})


@dataclass
class Decision:
    """Which backend a call runs on, and why (see :func:`cropcore.explain`)."""

    op: str
    backend: str
    rule: str
    library: str
    device: str
    reasons: list[str] = field(default_factory=list)
    conversions: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"{self.op} on a {self.library} array ({self.device}) runs on backend "
            f"{self.backend!r}, chosen by {self.rule}."
        ]
        lines += [f"  - {r}" for r in self.reasons]
        lines += [f"  - moves {c}" for c in self.conversions]
        return "\n".join(lines)


def _installed_summary() -> str:
    parts = []
    for b in registry.all():
        aliases = f" (alias {', '.join(b.aliases)})" if b.aliases else ""
        state = b.status if b.status in ("available", "installed") else f"{b.status}: {b.reason}"
        parts.append(f"{b.name}{aliases} [{state}]")
    return "; ".join(parts) or "none"


def named_by(backend: str | None) -> tuple[str | None, str]:
    """The backend a call names, and the rule that names it: ``backend=``, then a
    :func:`use_backend` block, then ``CROPCORE_BACKEND``; ``(None, "")`` when none does."""
    if backend is not None:
        return backend, "the backend= argument"
    named = current_override()
    if named is not None:
        return named, "a use_backend() context"
    named = config.get("CROPCORE_BACKEND") or None
    if named is not None:
        return named, "the CROPCORE_BACKEND environment variable"
    return None, ""


def named_backend(name: str, rule: str = "the backend= argument") -> Backend:
    """The backend ``name`` (a name or alias) names, probed; raises if unknown or unavailable.

    ``rule`` says where the name came from, for the error messages.
    """
    if not isinstance(name, str):
        raise TypeError(f"backend must be a backend name (str) or None, got {name!r}")
    backend = registry.get(name)
    if backend is None:
        hint = (
            f" Install it with: {INSTALL_HINTS[name.lower()]}."
            if name.lower() in INSTALL_HINTS
            else ""
        )
        raise UnknownBackendError(
            f"backend={name!r} ({rule}) is not an installed cropcore backend.{hint} "
            f"Installed: {_installed_summary()}. `cropcore backends` shows details."
        )
    backend.probe()
    if backend.status in ("broken", "unavailable"):
        hint = backend.install_hint or INSTALL_HINTS.get(backend.name, "")
        hint = f" Install with: {hint}." if hint and hint not in backend.reason else ""
        raise BackendUnavailableError(
            f"backend {backend.name!r} ({rule}) is {backend.status}: {backend.reason}.{hint} "
            f"Installed: {_installed_summary()}."
        )
    return backend


def _why_not(
    backend: Backend, call: Any, device_type: str, needs_grad: bool, strict: bool
) -> str | None:
    """Why ``backend`` cannot take ``call`` (``None`` if it can). ``strict`` adds the device test."""
    return _why_not_static(backend, _static_key(call), device_type, needs_grad, strict) or (
        backend.declines(call)
    )


def _static_key(call: Any) -> tuple[str, str | None, str | None]:
    """What of ``call`` a backend's capabilities are checked against: op, image dtype, method."""
    dtype = dtype_name(call.image) if hasattr(call, "image") else None
    return (call.op, dtype, getattr(call, "method", None))


def _why_not_static(
    backend: Backend,
    key: tuple[str, str | None, str | None],
    device_type: str,
    needs_grad: bool,
    strict: bool,
) -> str | None:
    """:func:`_why_not` without the backend's own ``declines`` hook (which depends on the call)."""
    info = backend.info
    assert info is not None
    op, dtype, method = key
    if op not in backend.ops:
        return f"does not implement {op}"
    if dtype is not None and dtype not in info.dtypes:
        return f"does not support image dtype {dtype}"
    if method is not None and method not in info.methods:
        return f"does not support method={method!r}"
    if strict and device_type not in info.devices:
        return f"computes on {', '.join(info.devices)}, the image is on {device_type}"
    if strict and needs_grad and not info.autograd:
        return "does not propagate autograd gradients"
    return None


def _needs_grad(call: Any, libraries: dict[str, str]) -> bool:
    return any(
        library_for(lib).needs_grad(getattr(call, name))
        for name, lib in libraries.items()
        if lib == "torch"
    )


def _libraries(call: Any) -> dict[str, str]:
    """The array library of each of the call's arrays, by argument name."""
    return {name: library_name(getattr(call, name)) for name in call.arrays}


def select(
    call: Any, backend: str | None = None, libraries: dict[str, str] | None = None
) -> tuple[Backend, Decision]:
    """Choose the backend for a validated ``call`` (from :mod:`cropcore.spec`)."""
    libraries = _libraries(call) if libraries is None else libraries
    anchor = call.anchor
    lib = library_for(anchor)
    device = lib.device(anchor)
    device_type = device.partition(":")[0]
    decision = Decision(call.op, "", "", lib.name, device)

    named, rule = named_by(backend)
    needs_grad = "torch" in libraries.values() and _needs_grad(call, libraries)
    if needs_grad and lib.name != "torch":
        # The result follows the anchor's library, which has no autograd graph to join.
        inputs = ", ".join(
            name
            for name, library in libraries.items()
            if library == "torch" and library_for("torch").needs_grad(getattr(call, name))
        )
        warnings.warn(
            f"{inputs} of {call.op} require(s) grad, but the result is a {lib.name} array (it "
            f"follows the {_anchor_name(call)}), which carries no autograd graph: it is detached. "
            f"Pass the {_anchor_name(call)} as a torch tensor to differentiate through the call",
            RuntimeWarning,
            stacklevel=4,
        )
        needs_grad = False
    if named is not None:
        chosen = named_backend(named, rule)
        why = _why_not(chosen, call, device_type, needs_grad, strict=False)
        if why:
            raise BackendDeclinedError(
                f"backend {chosen.name!r} ({rule}) cannot run this call: {why}"
            )
        if needs_grad and not chosen.info.autograd:
            warnings.warn(
                f"backend {chosen.name!r} does not propagate autograd gradients: the result of "
                f"{call.op} is detached from the graph",
                RuntimeWarning,
                stacklevel=4,
            )
        decision.backend, decision.rule = chosen.name, rule
    else:
        chosen = _automatic(call, device_type, needs_grad, decision)
    if logger.isEnabledFor(logging.DEBUG):
        decision.conversions = _planned_conversions(call, chosen, libraries)
        logger.debug("%s", decision)
    return chosen, decision


def _anchor_name(call: Any) -> str:
    """The name of the argument whose library and device the result follows."""
    return next(name for name in call.arrays if getattr(call, name) is call.anchor)


def _native_first(priority: tuple[str, ...], library: str) -> list[tuple[str, Backend | None]]:
    """The priority list, looked up, with the backends that take ``library``'s arrays natively first.

    The image's array type decides, then the priority list (design.md): NumPy arrays go to a NumPy
    backend (numba, numpy) before one that would convert them (torch), in priority order.
    """
    found = [(name, registry.get(name)) for name in priority]

    def converts(entry: tuple[str, Backend | None]) -> bool:
        info = entry[1].info if entry[1] is not None else None
        return info is None or (
            info.array_library != library and library not in info.native_libraries
        )

    return sorted(found, key=converts)  # stable: priority order within each group


# What automatic selection finds about each backend of the priority list for one kind of call,
# before asking the backends' declines hooks: (name, backend or None, why not or None) each.
# Keyed by the call's op, image dtype, method, array library, device type, the autograd attempt,
# the priority list and the registry's generation (which changes whenever a backend comes or goes).
_Verdict = tuple[str, "Backend | None", "str | None"]
_verdicts_cache: dict[tuple[Any, ...], _LazyVerdicts] = {}
_VERDICTS_CACHE_SIZE = 256


class _LazyVerdicts:
    """The verdicts on the backends of one priority list, worked out in order, as far as asked.

    A verdict probes its backend (its check may import the backend's framework), so a backend is
    probed only when every backend before it has been turned down: a NumPy call that numba takes
    never imports torch (issue 18).
    """

    __slots__ = ("_done", "_entries", "_key", "_lock")

    def __init__(self, entries: list[tuple[str, Backend | None]], key: tuple[Any, ...]) -> None:
        self._entries = entries
        self._key = key
        self._done: list[_Verdict] = []
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[_Verdict]:
        done = self._done
        index = 0
        while True:
            if index < len(done):
                yield done[index]
                index += 1
                continue
            with self._lock:
                if index == len(done):
                    if index == len(self._entries):
                        return
                    done.append(self._verdict(*self._entries[index]))

    def _verdict(self, name: str, backend: Backend | None) -> _Verdict:
        if backend is None:
            return (name, None, "not installed")
        backend.probe()
        if backend.status not in ("available",):
            return (backend.name, backend, f"{backend.status} ({backend.reason})")
        static, _, device_type, attempt, _, _ = self._key
        return (
            backend.name,
            backend,
            _why_not_static(backend, static, device_type, attempt, strict=True),
        )


def _verdicts(
    static: tuple[str, str | None, str | None],
    library: str,
    device_type: str,
    attempt: bool,
    priority: tuple[str, ...],
) -> _LazyVerdicts:
    """What automatic selection finds about each backend of ``priority`` for calls whose
    :func:`_static_key` is ``static``, before their ``declines`` hooks: an iterable that probes
    each backend only when it is reached (cached)."""
    key = (static, library, device_type, attempt, priority, registry.generation)
    found = _verdicts_cache.get(key)
    if found is not None:
        return found
    found = _LazyVerdicts(_native_first(priority, library), key)
    if key[-1] == registry.generation:  # no backend came or went meanwhile
        if len(_verdicts_cache) >= _VERDICTS_CACHE_SIZE:
            _verdicts_cache.clear()
        _verdicts_cache[key] = found
    return found


@functools.lru_cache(maxsize=64)
def _priority_rule(priority: tuple[str, ...]) -> str:
    return f"the priority list {list(priority)}"


def _automatic(call: Any, device_type: str, needs_grad: bool, decision: Decision) -> Backend:
    priority = get_priority()
    decision.rule = _priority_rule(priority)
    rejected: list[str] = []
    for attempt in (needs_grad, False) if needs_grad else (False,):
        rejected = []
        for name, backend, why in _verdicts(
            _static_key(call), decision.library, device_type, attempt, priority
        ):
            if why is None:
                assert backend is not None
                why = backend.declines(call)
            if why:
                rejected.append(f"{name}: {why}")
                continue
            assert backend is not None
            if needs_grad and not attempt:
                torch_backend = registry.get("torch")
                if torch_backend is None or torch_backend.status in ("broken", "unavailable"):
                    hint = 'pip install "cropcore[torch]" gives autograd'
                elif call.op in torch_backend.ops:
                    hint = (
                        "backend 'torch' gives autograd but was not chosen: see "
                        "cropcore.explain() for why, or pass backend='torch'"
                    )
                else:
                    hint = f"no autograd backend implements {call.op} yet"
                warnings.warn(
                    f"no installed backend propagates autograd gradients for {call.op} on "
                    f"{device_type}; backend {backend.name!r} runs it and the result is detached "
                    f"from the graph ({hint})",
                    RuntimeWarning,
                    stacklevel=5,
                )
            decision.backend = backend.name
            decision.reasons = [f"skipped {r}" for r in rejected]
            return backend
    raise BackendError(
        f"no backend can run {call.op} on a {decision.library} array on {decision.device}: "
        + ("; ".join(rejected) or "the priority list is empty")
        + ". Name one with backend=..., or install one: "
        + ", ".join(f"{k}: {v}" for k, v in INSTALL_HINTS.items() if k != "cuda")
    )


def _planned_conversions(call: Any, backend: Backend, libraries: dict[str, str]) -> list[str]:
    target = backend.info.array_library
    accepted = (target, *backend.info.native_libraries)
    out = []
    for name, source in libraries.items():
        value = getattr(call, name)
        if source not in accepted:
            out.append(f"{name}: {source} ({library_for(value).device(value)}) -> {target}")
    anchor_lib = library_name(call.anchor)
    if anchor_lib not in accepted:
        out.append(f"result: {target} -> {anchor_lib}")
    return out


def _to_backend(call: Any, backend: Backend, libraries: dict[str, str]) -> Any:
    """``call`` with every array in the backend's library (and, where it is the same, device)."""
    info = backend.info
    target = info.array_library
    if target in _SINGLE_DEVICE_LIBRARIES and set(libraries.values()) == {target}:
        return call  # the common case: NumPy in, NumPy backend
    accepted = (target, *info.native_libraries)
    target_lib = library_for(target)
    like = call.anchor if library_name(call.anchor) == target else None
    changes = {}
    for name, lib in libraries.items():
        value = getattr(call, name)
        if lib == target:  # what convert does with its own library's arrays, without its look-up
            converted = target_lib.to_device(value, like)
        elif lib in accepted:
            continue
        else:
            converted = target_lib.convert(value, like)
        if converted is not value:
            changes[name] = converted
    return call.replace(**changes) if changes else call


def _quick_choice(call: Any, backend: str | None, libraries: dict[str, str]) -> Backend | None:
    """:func:`select`'s answer for the common case, without building a :class:`Decision`.

    The common case: automatic selection (nothing named), no torch arrays (so no autograd
    preference), no DEBUG logging, and a backend that takes the call. ``None`` otherwise, and
    :func:`select` decides (and explains, warns or raises).
    """
    if (
        named_by(backend)[0] is not None
        or "torch" in libraries.values()
        or logger.isEnabledFor(logging.DEBUG)
    ):
        return None
    anchor = call.anchor
    lib = library_for(anchor)
    device_type = lib.device(anchor).partition(":")[0]
    for _, candidate, why in _verdicts(
        _static_key(call), lib.name, device_type, False, get_priority()
    ):
        if why is None and candidate is not None and candidate.declines(call) is None:
            return candidate
    return None


def _choice(call: Any, backend: str | None, libraries: dict[str, str]) -> Backend:
    """:func:`select`'s backend, remembered per kind of call (:mod:`cropcore.dispatch_cache`)."""
    if logger.isEnabledFor(logging.DEBUG):  # every decision is logged: select makes each one
        return select(call, backend, libraries)[0]
    named, priority, names = named_by(backend)[0], get_priority(), tuple(libraries.values())
    needs_grad = "torch" in names and _needs_grad(call, libraries)
    static = _static_key(call)
    entry = dispatch_cache.key(call, names, named, priority, needs_grad, static)
    chosen = dispatch_cache.cached_choice(entry, call)
    if chosen is not None:
        return chosen
    chosen, decision = select(call, backend, libraries)
    if (
        (needs_grad and decision.library != "torch")  # select warned: the result is detached
        or named_by(backend)[0] != named  # changed meanwhile (another thread)
        or get_priority() != priority
    ):
        return chosen
    verdicts = (  # automatic: the priority list's static verdicts that select went through
        _verdicts(static, decision.library, entry[2].partition(":")[0], needs_grad, priority)
        if named is None
        else None
    )
    dispatch_cache.remember(entry, chosen, verdicts, logger, needs_grad)
    return chosen


def run(call: Any, backend: str | None = None) -> Any:
    """Select a backend for ``call``, run it, and return the result in the caller's library."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.compiler.is_dynamo_compiling():
        return graph.run(call, backend)
    libraries = _libraries(call)
    chosen = _quick_choice(call, backend, libraries)
    if chosen is None:
        chosen = _choice(call, backend, libraries)
    hook = chosen.hook(call.op)
    if hook is None:  # an op the core runs itself (crop2d's slice), on the caller's arrays
        return OPS[call.op].in_core(call)
    if not getattr(call, "values_checked", True) and not chosen.info.unchecked_values:
        call = _values_checked_for(call, chosen)
    output_shape, output_dtype = call.output_shape, call.output_dtype
    output_bytes = memory.nbytes(output_shape, output_dtype)
    if _nothing_to_compute(call, output_bytes, libraries):
        return _zeros(call)
    converted = _to_backend(call, chosen, libraries)
    if _array_bytes(converted, output_bytes) > memory.ASK_BYTES:
        peak = chosen.peak_bytes(converted, output_bytes)
        memory.check_peak(peak, output_bytes, chosen.name, call.op)
    result = hook(call=converted)
    shape = result.shape
    if shape != output_shape:  # torch.Size and NumPy shapes compare equal to tuples
        shape = tuple(int(d) for d in shape)
    if shape != output_shape or dtype_name(result) != output_dtype:
        raise BackendError(
            f"backend {chosen.name!r} returned {dtype_name(result)} {shape} from {call.op}; the "
            f"specification requires {output_dtype} {tuple(output_shape)} (a backend bug)"
        )
    anchor = call.anchor
    if library_name(result) == library_name(anchor):
        return library_for(anchor).to_device(result, anchor)
    return library_for(anchor).convert(result, anchor)


def _values_checked_for(call: Any, chosen: Backend) -> Any:
    """``call`` with its box values checked, for a backend that is not safe on unchecked ones.

    Reads the values on the host (for device arrays, a synchronisation); traced values cannot be
    read, so the call is refused.
    """
    for name, array in (("boxes", call.boxes), ("box_indices", call.box_indices)):
        if library_for(array).residence(array) == "traced":
            traced, anchor = library_name(array), library_name(call.anchor)
            hint = (
                "Use a backend that declares unchecked_values (cropcore backends lists them), "
                "or call it eagerly"
            )
            if traced != anchor:  # e.g. jax.jit over the boxes of a NumPy image
                hint = (
                    f"The {name} are traced {traced} values, but the result follows the "
                    f"{_anchor_name(call)}, a {anchor} array, which a traced computation cannot "
                    f"return: pass the {_anchor_name(call)} as a {traced} array too"
                )
            raise BackendError(
                f"backend {chosen.name!r} cannot run {call.op} on traced {name} (jax.jit, "
                "torch.compile, torch.export, a meta or fake tensor): it needs box values "
                f"cropcore has checked, and traced ones have none. {hint}"
            )
    check = OPS[call.op].check_values
    boxes, box_indices = check(call.boxes, call.box_indices, call.image_shape.batch)
    return call.replace(boxes=boxes, box_indices=box_indices, values_checked=True)


def _array_bytes(call: Any, output_bytes: int) -> int:
    """Bytes of the call's arrays and of its result."""
    total = output_bytes
    for name in call.arrays:
        total += getattr(getattr(call, name), "nbytes", 0)
    return total


def _nothing_to_compute(call: Any, output_bytes: int, libraries: dict[str, str]) -> bool:
    """Whether the result is empty, or a gradient of empty ``grads`` (no boxes, or depth 0): zeros.

    Not when an input needs autograd: the backend then builds the (empty) graph.
    """
    if output_bytes:
        grads = getattr(call, "grads", None)  # the gradients have grads; crop2d may come here too
        if grads is None or 0 not in grads.shape:
            return False
    return "torch" not in libraries.values() or not _needs_grad(call, libraries)


def _zeros(call: Any) -> Any:
    """The result of a call with nothing to compute, in the anchor's library and on its device.

    Only the result is allocated: a backend could allocate tables as large as the crop for an
    empty result (a crop of 2**31 rows for no box).
    """
    anchor = call.anchor
    zeros = np.zeros(call.output_shape, call.output_dtype)
    return library_for(anchor).from_numpy(zeros, anchor)


def explain_call(call: Any, backend: str | None = None) -> Decision:
    """The :class:`Decision` dispatch would make for ``call``, without running it."""
    libraries = _libraries(call)
    chosen, decision = select(call, backend, libraries)
    decision.conversions = _planned_conversions(call, chosen, libraries)
    return decision


# Last: the traced path uses this module's selection rules (a cycle that is safe here, as every
# name it needs is defined by now).
from cropcore import graph  # noqa: E402
