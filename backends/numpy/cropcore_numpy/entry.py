"""One entry point per op that takes the call object, for a module of NHWC kernels.

The vectorised kernels (:mod:`cropcore_numpy.kernels`) and the oracle
(:mod:`cropcore_numpy.reference`) take NHWC arrays and the call's fields; these functions take a
validated call (:mod:`cropcore.calls`) in either data format, serve NCHW through transposed views,
and return the result in the call's data format.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np

from cropcore.hookspecs import CropAndResizeCall, GradBoxesCall, GradImageCall

__all__ = ["crop_and_resize", "crop_and_resize_grad_boxes", "crop_and_resize_grad_image"]


def _nhwc(x: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.moveaxis(x, 1, 3) if channels_first else x


def _from_nhwc(x: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 3, 1)) if channels_first else x


def crop_and_resize(call: CropAndResizeCall, kernels: ModuleType) -> np.ndarray:
    """float32 crops, ``call.output_shape``."""
    crops = kernels.crop_and_resize(
        _nhwc(call.image, call.channels_first),
        call.boxes,
        call.box_indices,
        call.crop_size,
        call.method,
        call.extrapolation_value,
    )
    return _from_nhwc(crops, call.channels_first)


def crop_and_resize_grad_image(call: GradImageCall, kernels: ModuleType) -> np.ndarray:
    """``call.dtype`` image gradient, ``call.output_shape``."""
    grads_image = kernels.crop_and_resize_grad_image(
        _nhwc(call.grads, call.channels_first),
        call.boxes,
        call.box_indices,
        call.image_shape,
        call.method,
        call.dtype,
    )
    return _from_nhwc(grads_image, call.channels_first)


def crop_and_resize_grad_boxes(call: GradBoxesCall, kernels: ModuleType) -> np.ndarray:
    """float32 ``(num_boxes, 4)`` box gradient."""
    return kernels.crop_and_resize_grad_boxes(
        _nhwc(call.grads, call.channels_first),
        _nhwc(call.image, call.channels_first),
        call.boxes,
        call.box_indices,
    )
