"""Calling TensorFlow's three ops, after refusing every input that would crash it.

Never feed TensorFlow an input that crashes it (notes/tf_semantics.md §4): every call is checked
first by :func:`refuse_crash_input`, which emulates TF's float32 sample coordinates and refuses
any call in which one would be NaN (TF casts it to int: a segfault), NaN boxes for the gradient
ops, and rank-1 boxes for the gradient ops.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import tensorflow as tf

# --------------------------------------------------------------------------------------------------
# Crash guard (notes §4): never run TF on these


def _axis_gives_nan(a: float, b: float, size: int, crop: int) -> bool:
    """Whether TF's float32 sample coordinates along one axis can be NaN, in the forward/GradImage
    order and in GradBoxes' order (which multiplies by a precomputed ratio).

    ``start + i * scale`` is NaN only if ``scale`` is not finite (``0 * inf`` at ``i = 0``) or if
    ``start`` is infinite and ``i * scale`` can overflow to the opposite infinity; the second is
    refused conservatively whenever ``start`` is infinite and ``scale`` is not zero.
    """
    f32 = np.float32
    a, b = f32(a), f32(b)
    if crop == 1:
        return bool(np.isnan(f32(0.5 * np.float64(f32(a + b)) * (size - 1))))
    start = f32(a * f32(size - 1))
    scale_forward = f32(f32(f32(b - a) * f32(size - 1)) / f32(crop - 1))
    scale_boxes = f32(f32(b - a) * f32(f32(size - 1) / f32(crop - 1)))
    for scale in (scale_forward, scale_boxes):
        if not np.isfinite(scale) or (not np.isfinite(start) and scale != 0):
            return True
    return False


def refuse_crash_input(op: str, boxes: Any, height: int, width: int, crop: tuple[int, int]) -> None:
    """Raise if TF 2.21 would crash on this call rather than compute or refuse it."""
    boxes = np.asarray(boxes)
    with np.errstate(all="ignore"):
        finite = bool(np.isfinite(boxes.astype(np.float32)).all())
    if op != "crop_and_resize":
        if boxes.ndim != 2:
            raise RuntimeError(f"{op} aborts on boxes of rank {boxes.ndim} (notes §4 #8)")
        if not finite:
            raise RuntimeError(f"{op} segfaults on non-finite boxes (notes §4 #6, #7)")
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or not finite:
        return  # refused by validation before any coordinate is computed
    if height <= 0 or width <= 0 or min(crop) <= 0:
        return  # likewise
    with np.errstate(all="ignore"):
        for y1, x1, y2, x2 in boxes.astype(np.float32):
            if _axis_gives_nan(y1, y2, height, crop[0]) or _axis_gives_nan(x1, x2, width, crop[1]):
                raise RuntimeError(
                    f"box {[y1, x1, y2, x2]} gives a NaN sample coordinate (notes §4 #5)"
                )


# --------------------------------------------------------------------------------------------------
# Calling TensorFlow


def tf_crop_and_resize(image, boxes, box_indices, crop_size, method, extrapolation_value):
    image = np.asarray(image)
    refuse_crash_input("crop_and_resize", boxes, *_hw(image.shape), _pair(crop_size))
    out = tf.image.crop_and_resize(
        image, boxes, box_indices, crop_size, method=method, extrapolation_value=extrapolation_value
    )
    return out.numpy()


def tf_grad_image(grads, boxes, box_indices, image_size, dtype, method):
    refuse_crash_input("grad_image", boxes, *_hw(image_size), _crop_of(grads))
    out = tf.raw_ops.CropAndResizeGradImage(
        grads=grads,
        boxes=boxes,
        box_ind=box_indices,
        image_size=image_size,
        T=tf.as_dtype(dtype) if isinstance(dtype, str) else dtype,
        method=method,
    )
    return out.numpy()


def tf_grad_boxes(grads, image, boxes, box_indices, method):
    refuse_crash_input("grad_boxes", boxes, *_hw(np.shape(image)), _crop_of(grads))
    out = tf.raw_ops.CropAndResizeGradBoxes(
        grads=grads, image=image, boxes=boxes, box_ind=box_indices, method=method
    )
    return out.numpy()


# For the crash guard only: a malformed shape gets a harmless stand-in, since TF refuses it before
# computing any sample coordinate.
def _hw(shape: Any) -> tuple[int, int]:
    shape = [int(v) for v in np.ravel(shape)] if not isinstance(shape, tuple) else list(shape)
    return (shape[1], shape[2]) if len(shape) == 4 else (1, 1)


def _pair(crop_size: Any) -> tuple[int, int]:
    values = np.ravel(np.asarray(crop_size))
    return (int(values[0]), int(values[1])) if values.size == 2 else (1, 1)


def _crop_of(grads: Any) -> tuple[int, int]:
    shape = np.shape(grads)
    return (int(shape[1]), int(shape[2])) if len(shape) == 4 else (1, 1)


def clean_message(text: str) -> str:
    """The message on one line, without TF's ``{{function_node ...}}`` prefix, ``[Op:...]`` suffix
    and NodeDef dump, or Keras's terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.split(r"\s*\[Op:|\s*;\s*NodeDef:", text)[0]
    return " ".join(text.split())[:300]
