"""One entry point per op that takes the call object, for a module of NHWC kernels.

The vectorised kernels (:mod:`cropcore_numpy.kernels`) and the oracle
(:mod:`cropcore_numpy.reference`) take NHWC arrays and the call's fields; these functions take a
validated call (:mod:`cropcore.calls`) in either data format, serve NCHW through transposed views,
and return the result in the call's data format. :func:`hook` makes a plugin's op hook of one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from cropcore.hookspecs import (
    CropAndResizeCall,
    GradBoxesCall,
    GradImageCall,
    RoiAlignCall,
    RoiAlignGradImageCall,
    hookimpl,
)

__all__ = [
    "crop_and_resize",
    "crop_and_resize_grad_boxes",
    "crop_and_resize_grad_image",
    "hook",
    "roi_align",
    "roi_align_grad_image",
]


def _nhwc(x: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.moveaxis(x, 1, 3) if channels_first else x


def _from_nhwc(x: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 3, 1)) if channels_first else x


def _arguments(
    call: CropAndResizeCall | GradImageCall | GradBoxesCall, *arrays: np.ndarray
) -> tuple:
    """A kernel's leading arguments: the call's ``arrays`` in NHWC, then its boxes and box indices."""
    return (*[_nhwc(x, call.channels_first) for x in arrays], call.boxes, call.box_indices)


def crop_and_resize(call: CropAndResizeCall, kernels: ModuleType) -> np.ndarray:
    """float32 crops, ``call.output_shape``."""
    crops = kernels.crop_and_resize(
        *_arguments(call, call.image), call.crop_size, call.method, call.extrapolation_value
    )
    return _from_nhwc(crops, call.channels_first)


def crop_and_resize_grad_image(call: GradImageCall, kernels: ModuleType) -> np.ndarray:
    """``call.dtype`` image gradient, ``call.output_shape``."""
    grads_image = kernels.crop_and_resize_grad_image(
        *_arguments(call, call.grads), call.image_shape, call.method, call.dtype
    )
    return _from_nhwc(grads_image, call.channels_first)


def crop_and_resize_grad_boxes(call: GradBoxesCall, kernels: ModuleType) -> np.ndarray:
    """float32 ``(num_boxes, 4)`` box gradient."""
    return kernels.crop_and_resize_grad_boxes(*_arguments(call, call.grads, call.image))


def roi_align(call: RoiAlignCall, kernels: ModuleType) -> np.ndarray:
    """The image's dtype, ``call.output_shape``."""
    out = kernels.roi_align(
        _nhwc(call.image, call.channels_first),
        call.boxes,
        call.box_indices,
        call.output_size,
        call.spatial_scale,
        call.sampling_ratio,
        call.aligned,
        call.mode,
    )
    return _from_nhwc(out, call.channels_first)


def roi_align_grad_image(call: RoiAlignGradImageCall, kernels: ModuleType) -> np.ndarray:
    """``grads``' dtype, ``call.output_shape`` (the image's)."""
    out = kernels.roi_align_grad_image(
        _nhwc(call.grads, call.channels_first),
        call.boxes,
        call.box_indices,
        tuple(call.image_shape),
        call.spatial_scale,
        call.sampling_ratio,
        call.aligned,
    )
    return _from_nhwc(out, call.channels_first)


def hook(op: Callable[[Any, ModuleType], np.ndarray], kernels: str) -> Callable[[Any], np.ndarray]:
    """The plugin hook ``cropcore_<op>`` (``op``: an entry point above) on the kernels of the module
    named ``kernels``, imported when the hook first runs (registering the plugin imports none)."""

    def run(call: Any) -> np.ndarray:
        return op(call, importlib.import_module(kernels))

    run.__name__ = run.__qualname__ = f"cropcore_{op.__name__}"
    run.__doc__ = f"{op.__doc__} On :mod:`{kernels}`."
    return hookimpl(run)
