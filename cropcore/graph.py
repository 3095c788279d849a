"""The dispatcher as ``torch.compile`` traces it.

Requirements:

- dynamo traces :func:`run` (so it stays small and plain): no conversion between array libraries
  (the arrays must be the anchor's library's already), no memory checks, no logging;
- the backend is chosen once per traced call site, untraced, by :func:`_choice` (marked as dynamo's
  ``assume_constant_result``, which the core can do without importing torch), with the rules of
  :func:`cropcore.dispatch.select`; the result is a constant of the graph;
- the chosen backend's op hook is traced into the graph (the torch backend's custom ops become
  graph nodes).
"""

from __future__ import annotations

from typing import Any

from cropcore import dispatch
from cropcore.arrays import library_for, library_name
from cropcore.errors import BackendDeclinedError, BackendError
from cropcore.ops import OPS
from cropcore.registry import Backend, registry

__all__ = ["run"]


def run(call: Any, backend: str | None) -> Any:
    """:func:`cropcore.dispatch.run` as ``torch.compile`` traces it (see the module's docstring)."""
    anchor = call.anchor
    lib = library_for(anchor)
    for name in call.arrays:
        if library_name(getattr(call, name)) != lib.name:
            raise TypeError(
                f"inside torch.compile, {name} must be a {lib.name} tensor like the "
                f"{dispatch._anchor_name(call)} (got {library_name(getattr(call, name))}): "
                "cropcore does not convert arrays in a graph"
            )
    needs_grad = any(lib.needs_grad(getattr(call, name)) for name in call.arrays)
    _, dtype, method = dispatch._static_key(call)
    chosen = _choice(call.op, lib.name, lib.device(anchor), dtype, method, needs_grad, backend)
    hook = registry.get(chosen).hook(call.op)
    if hook is None:  # crop2d's slice, which the core runs itself
        return OPS[call.op].in_core(call)
    return hook(call=call)


def _choice(
    op: str,
    library: str,
    device: str,
    dtype: str | None,
    method: str | None,
    needs_grad: bool,
    backend: str | None,
) -> str:
    """The name of the backend that runs a traced call (:func:`run`).

    Runs once per traced call site, untraced (dynamo's ``assume_constant_result``: the result is
    a constant of the graph), so the rules are :func:`cropcore.dispatch.select`'s: ``backend=``, ``use_backend``,
    ``CROPCORE_BACKEND``, then the priority list. A traced call also needs a backend that takes
    the arrays' library as it is and declares ``unchecked_values``; ``declines`` hooks are not
    asked (they would receive fake tensors).
    """
    static = (op, dtype, method)
    device_type = device.partition(":")[0]

    def why_not(candidate: Backend) -> str | None:
        info = candidate.info
        if library != info.array_library and library not in info.native_libraries:
            return f"takes {info.array_library} arrays, and a graph cannot convert {library} ones"
        if not info.unchecked_values:
            return "needs checked box values (BackendInfo.unchecked_values is False)"
        return dispatch._why_not_static(candidate, static, device_type, needs_grad, strict=True)

    named, rule = dispatch.named_by(backend)
    if named is not None:
        chosen = dispatch.named_backend(named, rule)
        why = why_not(chosen)
        if why:
            raise BackendDeclinedError(
                f"backend {chosen.name!r} ({rule}) cannot run {op} inside torch.compile: {why}"
            )
        return chosen.name
    rejected = []
    for name, candidate, why in dispatch._verdicts(
        static, library, device_type, needs_grad, dispatch.get_priority()
    ):
        why = why or why_not(candidate)
        if not why:
            return name
        rejected.append(f"{name}: {why}")
    raise BackendError(
        f"no backend can run {op} on a traced {library} array on {device} (torch.compile): "
        + ("; ".join(rejected) or "the priority list is empty")
    )


_choice._dynamo_marked_constant = True  # type: ignore[attr-defined]  # assume_constant_result
