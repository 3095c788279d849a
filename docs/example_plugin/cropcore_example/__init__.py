"""cropcore-example-backend: a third-party cropcore backend, as a worked example.

A backend is a module of hook functions, registered under the entry-point group
``cropcore.backends`` in its package's ``pyproject.toml``::

    [project.entry-points."cropcore.backends"]
    example = "cropcore_example"

cropcore validates every call and hands the hooks canonical inputs (see ``cropcore.hookspecs``):
NumPy arrays here, because ``array_library="numpy"``; float32 finite boxes; int32 box indices in
range. The hooks compute and return a NumPy array of the call's ``output_shape`` and
``output_dtype``; cropcore returns it in the caller's array library. The kernels live in
:mod:`cropcore_example.loops`, imported on first use so that listing backends stays cheap.
"""

from __future__ import annotations

import numpy as np

from cropcore import BackendInfo, hookimpl

__version__ = "0.1.0"


def _nhwc(x, channels_first: bool):
    return np.moveaxis(x, 1, 3) if channels_first else x


def _back(x, channels_first: bool):
    return np.ascontiguousarray(np.moveaxis(x, 3, 1)) if channels_first else x


@hookimpl
def cropcore_backend_info() -> BackendInfo:
    return BackendInfo(
        name="example",
        array_library="numpy",
        devices=("cpu",),
        version=__version__,
        description="worked example: per-box NumPy loops (docs/example_plugin)",
    )


@hookimpl
def cropcore_crop_and_resize(call):
    from cropcore_example import loops

    crops = loops.crop_and_resize(
        _nhwc(call.image, call.channels_first),
        call.boxes,
        call.box_indices,
        call.crop_size,
        call.method,
        call.extrapolation_value,
    )
    return _back(crops, call.channels_first)


@hookimpl
def cropcore_crop_and_resize_grad_image(call):
    from cropcore_example import loops

    grads_image = loops.crop_and_resize_grad_image(
        _nhwc(call.grads, call.channels_first),
        call.boxes,
        call.box_indices,
        tuple(call.image_shape),
        call.method,
        call.dtype,
    )
    return _back(grads_image, call.channels_first)


@hookimpl
def cropcore_crop_and_resize_grad_boxes(call):
    from cropcore_example import loops

    return loops.crop_and_resize_grad_boxes(
        _nhwc(call.grads, call.channels_first),
        _nhwc(call.image, call.channels_first),
        call.boxes,
        call.box_indices,
    )


@hookimpl
def cropcore_crop2d(call):
    (top, bottom), (left, right) = call.cropping
    height, width = call.image_shape.height, call.image_shape.width
    if call.channels_first:
        return call.x[:, :, top : height - bottom, left : width - right]
    return call.x[:, top : height - bottom, left : width - right, :]


# A backend that is known to fail some conformance cases declares them here, with the reason; the
# suite then reports them as expected failures (and flags a declaration that no longer matches).
# This one passes everything, so it declares nothing:
#
# @hookimpl
# def cropcore_conformance_expected_failures():
#     return {"edge-cases/forward/layout-image-byteswapped-*": "needs native byte order"}
