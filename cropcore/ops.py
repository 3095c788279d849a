"""The ops, described once: name, call type, the spec function that makes the call, the hook.

Requirements: every module that needs to know the ops (the registry, which hooks a plugin offers;
the dispatcher, what runs when a backend has no hook; :func:`cropcore.explain`; the conformance
suite) reads this table instead of matching op names by string. Adding an op is one entry here,
its call type in :mod:`cropcore.calls`, its checks in :mod:`cropcore.spec`, its hookspec, its
public function in :mod:`cropcore.api`, and its kernels in the backends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cropcore import spec
from cropcore.arguments import boxes_values_arg
from cropcore.calls import (
    Crop2DCall,
    CropAndResizeCall,
    GradBoxesCall,
    GradImageCall,
    RoiAlignCall,
    RoiAlignGradImageCall,
)
from cropcore.roi_arguments import roi_boxes_values_arg

__all__ = ["OPS", "Op", "op_for"]


def _slice(call: Crop2DCall) -> Any:
    """crop2d is a slice: a view of the caller's array, in its own library and on its device."""
    return call.x[call.slices]


@dataclass(frozen=True)
class Op:
    """One op of cropcore's API.

    Attributes:
        name: the public function's name, and the hook's without its ``cropcore_`` prefix.
        call_type: the :mod:`cropcore.calls` class its hook receives.
        make_call: the :mod:`cropcore.spec` function that validates the op's arguments into a call.
        in_core: what the core runs itself when the chosen backend has no hook for the op (only
            ops that need no kernel, like crop2d's slice); ``None`` if a backend must implement it.
        check_values: ``(boxes, box_indices, batch) -> (boxes, box_indices)``, the op's value
            checks, for the dispatcher to run on a call whose values were not read
            (``values_checked=False``) before a backend that is not safe on unchecked values.
    """

    name: str
    call_type: type
    make_call: Callable[..., Any]
    in_core: Callable[[Any], Any] | None = None
    check_values: Callable[[Any, Any, int], tuple[Any, Any]] = boxes_values_arg

    @property
    def hook(self) -> str:
        """The hook's name in :mod:`cropcore.hookspecs`."""
        return f"cropcore_{self.name}"


#: Every op, by name, in the order the documentation lists them.
OPS: dict[str, Op] = {
    op.name: op
    for op in (
        Op("crop_and_resize", CropAndResizeCall, spec.crop_and_resize_call),
        Op("crop_and_resize_grad_image", GradImageCall, spec.grad_image_call),
        Op("crop_and_resize_grad_boxes", GradBoxesCall, spec.grad_boxes_call),
        Op("crop2d", Crop2DCall, spec.crop2d_call, in_core=_slice),
        Op("roi_align", RoiAlignCall, spec.roi_align_call, check_values=roi_boxes_values_arg),
        Op(
            "roi_align_grad_image",
            RoiAlignGradImageCall,
            spec.roi_align_grad_image_call,
            check_values=roi_boxes_values_arg,
        ),
    )
}


def op_for(name: str) -> Op:
    """The op called ``name``; ``ValueError`` listing the ops for any other name."""
    try:
        return OPS[name]
    except (KeyError, TypeError):
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {name!r}") from None
