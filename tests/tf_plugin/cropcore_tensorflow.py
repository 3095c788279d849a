"""TensorFlow's own kernels as a cropcore backend plugin (``tensorflow``), for certifying the
conformance suite against TensorFlow itself (tests/test_tensorflow_plugin.py).

A third party's plugin as docs/plugins.md describes it: NumPy arrays in and out, hooks that call
``tf.raw_ops.CropAndResize``, ``CropAndResizeGradImage`` and ``CropAndResizeGradBoxes``, and
TensorFlow's strided slice for crop2d. TensorFlow is imported when a hook first runs, never when the
plugin is imported or listed. TensorFlow runs with one intra-op and one inter-op thread: its
multi-threaded image gradient adds into a pixel in a racy order.

Its known differences from cropcore's reference, declared below as expected failures, are
TensorFlow's own (notes/tf_semantics.md): it crashes (segfault) on finite boxes whose sample
coordinates overflow float32 to NaN, which the suite sees only with ``--isolate``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cropcore.hookspecs import BackendInfo, hookimpl

_TF: Any = None


def _tf() -> Any:
    global _TF
    if _TF is None:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        _TF = tf
    return _TF


def _nhwc(x: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, 3)) if channels_first else x


def _back(x: np.ndarray, channels_first: bool) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 3, 1)) if channels_first else x


@hookimpl
def cropcore_backend_info() -> BackendInfo:
    return BackendInfo(
        name="tensorflow",
        array_library="numpy",
        devices=("cpu",),
        requires=("tensorflow",),
        description="TensorFlow's own CPU kernels (tf.raw_ops), one thread",
    )


@hookimpl
def cropcore_crop_and_resize(call: Any) -> np.ndarray:
    tf = _tf()
    image = np.asarray(call.image, call.image.dtype.newbyteorder("="))
    out = tf.raw_ops.CropAndResize(
        image=_nhwc(image, call.channels_first),
        boxes=np.asarray(call.boxes),
        box_ind=np.asarray(call.box_indices),
        crop_size=np.asarray(call.crop_size, np.int32),
        method=call.method,
        extrapolation_value=call.extrapolation_value,
    )
    return _back(out.numpy(), call.channels_first)


@hookimpl
def cropcore_crop_and_resize_grad_image(call: Any) -> np.ndarray:
    tf = _tf()
    shape = call.image_shape
    out = tf.raw_ops.CropAndResizeGradImage(
        grads=_nhwc(np.asarray(call.grads, np.float32), call.channels_first),
        boxes=np.asarray(call.boxes),
        box_ind=np.asarray(call.box_indices),
        image_size=np.asarray([shape.batch, shape.height, shape.width, shape.depth], np.int32),
        T=tf.as_dtype(call.dtype),
        method=call.method,
    )
    return _back(out.numpy(), call.channels_first)


@hookimpl
def cropcore_crop_and_resize_grad_boxes(call: Any) -> np.ndarray:
    tf = _tf()
    image = np.asarray(call.image, call.image.dtype.newbyteorder("="))
    out = tf.raw_ops.CropAndResizeGradBoxes(
        grads=_nhwc(np.asarray(call.grads, np.float32), call.channels_first),
        image=_nhwc(image, call.channels_first),
        boxes=np.asarray(call.boxes),
        box_ind=np.asarray(call.box_indices),
        method=call.method,
    )
    return out.numpy()


@hookimpl
def cropcore_crop2d(call: Any) -> np.ndarray:
    # TensorFlow's strided slice: a copy, in native byte order (a tensor holds no other)
    tf = _tf()
    x = np.asarray(call.x, call.x.dtype.newbyteorder("="))
    return tf.convert_to_tensor(x)[call.slices].numpy()


@hookimpl
def cropcore_conformance_expected_failures() -> dict[str, str]:
    crash = (
        "TensorFlow segfaults on finite boxes whose sample coordinates overflow float32 to NaN "
        "(notes/tf_semantics.md; cropcore extrapolates them)"
    )
    return {
        "behaviour/crop2d/result-is-a-view": "a TensorFlow tensor cannot view NumPy memory: "
        "crop2d copies",
        "*/huge-3e38-span-overflows*": crash,
        "edge-cases/forward/huge-float32-max-span-*": crash,
        "edge-cases/forward/huge-mixed-with-normal-*": crash,
        "errors/forward/accepts-huge-finite-box-*": crash,
    }
