"""Record reference vectors from TensorFlow and Keras into the conformance package's data.

Run it with a Python that has TensorFlow and Keras 3 (the project's own venv has neither)::

    /work/tfenv/bin/python scripts/record_reference.py [--output PATH]

The default output is ``conformance/cropcore_conformance/data/tf_reference.npz``, the one copy:
the conformance package ships it and cropcore's tests read it through
``cropcore_conformance.vectors``.

Requirements, in order of importance:

- Never feed TensorFlow an input that crashes it (notes/tf_semantics.md §4): every call is checked
  first by :func:`refuse_crash_input`, which emulates TF's float32 sample coordinates and refuses
  any call in which one would be NaN (TF casts it to int: a segfault), NaN boxes for the gradient
  ops, and rank-1 boxes for the gradient ops.
- Deterministic: fixed seeds, and TF runs with one intra-op and one inter-op thread, so that the
  order in which ``CropAndResizeGradImage`` accumulates into a pixel (and hence its rounding) is
  TF's sequential order.
- Compact: small images, small crops, deflated. Re-recording with the same libraries gives the
  same bytes (:func:`write_npz`), so ``sha256sum`` tells whether anything changed.

File layout: key ``meta`` is a JSON document (versions, seed, and one entry per case: ``id``,
``op``, ``name``, the scalar parameters, the names of the case's arrays); each array of a case is
stored under ``"<id>/<array name>"``. Case ids are ``"<op>/<name>"`` and are stable: tests are
parametrised by them. The ops are ``crop_and_resize``, ``grad_image``, ``grad_boxes`` (values
recorded from TF), ``error`` (an input TF refuses, with TF's exception type and the Python
exception cropcore maps it to), ``crop2d`` (Keras ``Cropping2D`` values) and ``crop2d_error``
(Keras's exception type for a bad ``cropping`` or input).
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import os
import platform
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras
import numpy as np
import tensorflow as tf

SEED = 20240229
FORMAT_VERSION = 1
DEFAULT_OUTPUT = (
    Path(__file__).resolve().parents[1]
    / "conformance"
    / "cropcore_conformance"
    / "data"
    / "tf_reference.npz"
)

IMAGE_DTYPES = (
    "uint8",
    "uint16",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
)
GRAD_IMAGE_DTYPES = ("float16", "float32", "float64")
METHODS = ("bilinear", "nearest")
NAN = float("nan")
INF = float("inf")


# --------------------------------------------------------------------------------------------------
# The record


class Recorder:
    """Collects cases; writes them as one compressed npz."""

    def __init__(self) -> None:
        self.cases: list[dict[str, Any]] = []
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, op: str, name: str, arrays: dict[str, Any], **params: Any) -> None:
        case_id = f"{op}/{name}"
        if any(case["id"] == case_id for case in self.cases):
            raise ValueError(f"duplicate case id {case_id}")
        for key, value in arrays.items():
            self.arrays[f"{case_id}/{key}"] = np.asarray(value)
        self.cases.append(
            {"id": case_id, "op": op, "name": name, **params, "arrays": sorted(arrays)}
        )

    def save(self, path: Path) -> None:
        counts: dict[str, int] = {}
        for case in self.cases:
            counts[case["op"]] = counts.get(case["op"], 0) + 1
        meta = {
            "format_version": FORMAT_VERSION,
            "seed": SEED,
            "versions": {
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "numpy": np.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
            },
            "tf_threads": {"intra_op": 1, "inter_op": 1},
            "counts": counts,
            "cases": self.cases,
        }
        entries = {
            "meta": np.array(json.dumps(meta)),
            "tensorflow_version": np.array(tf.__version__),
            "keras_version": np.array(keras.__version__),
            "numpy_version": np.array(np.__version__),
            "seed": np.array(SEED),
            **self.arrays,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npz(path, entries)
        print(f"wrote {path} ({path.stat().st_size:,} bytes): {counts}")


def write_npz(path: Path, entries: dict[str, np.ndarray]) -> None:
    """What ``np.savez_compressed`` writes, but byte-reproducible: fixed member timestamps, so
    re-recording with the same libraries gives the same file (and the same sha256)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for key, value in entries.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)


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


# --------------------------------------------------------------------------------------------------
# Random inputs


def random_image(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values that exercise each dtype: full integer ranges, int64 beyond float32's exact integers,
    float64 detail that float32 cannot hold."""
    dt = np.dtype(dtype)
    if dt == np.int64:
        big = rng.integers(-(2**62), 2**62, size=shape, dtype=np.int64)
        small = rng.integers(-1000, 1000, size=shape, dtype=np.int64)
        return np.where(rng.random(shape) < 0.5, big, small)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    values = rng.standard_normal(shape) * 100
    if dt == np.float64:
        values = values + rng.standard_normal(shape) * 1e-9
    return values.astype(dt)


def random_boxes(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """Boxes in [-0.4, 1.4], flipped about half the time, with a quarter of the coordinates on
    pixel-grid anchors (integer sample positions: floor == ceil) and some exactly 0 or 1."""
    boxes = rng.uniform(-0.4, 1.4, size=(n, 4))
    for index in np.ndindex(n, 4):
        size = height if index[1] % 2 == 0 else width
        u = rng.random()
        if u < 0.25 and size > 1:
            boxes[index] = rng.integers(0, size) / (size - 1)
        elif u < 0.35:
            boxes[index] = float(rng.integers(0, 2))
    return boxes.astype(np.float32)


def random_shape(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "batch": int(rng.integers(1, 4)),
        "height": int(rng.integers(1, 10)),
        "width": int(rng.integers(1, 10)),
        "depth": int(rng.integers(1, 4)),
        "num_boxes": int(rng.integers(1, 5)),
        "crop": (int(rng.integers(1, 7)), int(rng.integers(1, 7))),
    }


# --------------------------------------------------------------------------------------------------
# crop_and_resize


def add_forward(
    rec: Recorder,
    name: str,
    image: Any,
    boxes: Any,
    box_indices: Any = (0,),
    crop_size: tuple[int, int] = (3, 3),
    method: str = "bilinear",
    extrapolation_value: float = 0.0,
) -> None:
    image = np.asarray(image)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    box_indices = np.asarray(box_indices, dtype=np.int32).reshape(-1)
    crops = tf_crop_and_resize(
        image, boxes, box_indices, list(crop_size), method, extrapolation_value
    )
    assert crops.dtype == np.float32
    rec.add(
        "crop_and_resize",
        name,
        {"image": image, "boxes": boxes, "box_indices": box_indices, "crops": crops},
        crop_size=[int(v) for v in crop_size],
        method=method,
        extrapolation_value=float(extrapolation_value),
    )


def both_methods(rec: Recorder, name: str, *args: Any, **kwargs: Any) -> None:
    for method in METHODS:
        add_forward(rec, f"{name}-{method}", *args, method=method, **kwargs)


def record_forward(rec: Recorder, rng: np.random.Generator) -> None:
    for dtype in IMAGE_DTYPES:
        for method in METHODS:
            for i in range(5):
                s = random_shape(rng)
                image = random_image(rng, dtype, (s["batch"], s["height"], s["width"], s["depth"]))
                boxes = random_boxes(rng, s["num_boxes"], s["height"], s["width"])
                box_indices = rng.integers(0, s["batch"], size=s["num_boxes"])
                extrapolation = float(rng.choice([0.0, -1.0, 7.5, NAN]))
                add_forward(
                    rec,
                    f"random-{dtype}-{method}-{i}",
                    image,
                    boxes,
                    box_indices,
                    s["crop"],
                    method,
                    extrapolation,
                )

    img2 = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    arange9 = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    photo = random_image(rng, "float32", (1, 5, 6, 2))

    # Crop size 1 (the box centre, computed partly in float64) in either dimension.
    both_methods(rec, "crop-1x1-box-centre", arange9, [0, 0, 0.5, 1], crop_size=(1, 1))
    both_methods(
        rec,
        "crop-1x1-centre-outside",
        arange9,
        [1, 1, 1.5, 1.5],
        crop_size=(1, 1),
        extrapolation_value=-2.0,
    )
    both_methods(rec, "crop-height-1", photo, random_boxes(rng, 3, 5, 6), [0, 0, 0], (1, 5))
    both_methods(rec, "crop-width-1", photo, random_boxes(rng, 3, 5, 6), [0, 0, 0], (4, 1))

    # Flipped boxes.
    both_methods(rec, "flipped-vertical", photo, [1, 0, 0, 1], crop_size=(5, 6))
    both_methods(rec, "flipped-horizontal", photo, [0, 1, 1, 0], crop_size=(5, 6))
    both_methods(rec, "flipped-both-inner", photo, [0.9, 0.8, 0.1, 0.2], crop_size=(4, 3))

    # Degenerate (zero-area) boxes.
    both_methods(rec, "zero-area-point", arange9, [0.25, 0.75, 0.25, 0.75], crop_size=(2, 2))
    both_methods(rec, "zero-height-line", photo, [0.5, 0, 0.5, 1], crop_size=(3, 4))
    both_methods(rec, "zero-width-line-on-grid", photo, [0, 0.4, 1, 0.4], crop_size=(4, 2))

    # Boxes partly and wholly outside [0, 1].
    both_methods(
        rec,
        "partly-outside",
        photo,
        [-0.5, -0.5, 1.5, 1.5],
        crop_size=(5, 5),
        extrapolation_value=-1.0,
    )
    both_methods(
        rec,
        "partial-column-extrapolation",
        img2,
        [0, -0.5, 1, 1.5],
        crop_size=(2, 5),
        extrapolation_value=9.0,
    )
    both_methods(
        rec, "wholly-outside-below-right", photo, [1.5, 1.5, 2.5, 2.5], extrapolation_value=3.0
    )
    both_methods(rec, "wholly-outside-above-left", photo, [-2, -2, -1, -1], extrapolation_value=3.0)
    add_forward(
        rec,
        "negative-zero-is-inside",
        np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1),
        [-0.0, -0.0, 1, 1],
        crop_size=(2, 2),
        extrapolation_value=-1.0,
    )
    add_forward(
        rec,
        "tiny-negative-is-outside",
        np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1),
        [-1e-7, 0, 1, 1],
        crop_size=(2, 2),
        extrapolation_value=-1.0,
    )

    # Images of height or width 1 (never extrapolated along that axis).
    both_methods(
        rec,
        "image-height-1",
        np.array([[0, 1, 2]], np.float32).reshape(1, 1, 3, 1),
        [-5, 0, 7, 1],
        crop_size=(2, 3),
        extrapolation_value=-1.0,
    )
    both_methods(
        rec,
        "image-width-1",
        np.array([0, 1, 2], np.float32).reshape(1, 3, 1, 1),
        [0, -3, 1, 4],
        crop_size=(3, 2),
        extrapolation_value=-1.0,
    )
    both_methods(
        rec,
        "image-1x1",
        np.array([5, -6], np.float32).reshape(1, 1, 1, 2),
        [[0, 0, 1, 1], [-3, -3, 4, 4]],
        [0, 0],
        (3, 3),
        extrapolation_value=-1.0,
    )

    # Extrapolation values.
    for label, value in [
        ("nan", NAN),
        ("minus-1", -1.0),
        ("inf", INF),
        ("minus-inf", -INF),
        ("0.1-rounds-to-float32", 0.1),
        ("1e30", 1e30),
    ]:
        add_forward(
            rec,
            f"extrapolation-{label}",
            photo,
            [-0.3, -0.2, 1.2, 1.4],
            crop_size=(4, 5),
            extrapolation_value=value,
        )

    # Several images, box indices, depth 0 and 1, no boxes.
    batch = random_image(rng, "float32", (3, 4, 5, 2))
    both_methods(
        rec,
        "multi-batch-box-indices",
        batch,
        random_boxes(rng, 6, 4, 5),
        [2, 0, 1, 2, 0, 1],
        (3, 4),
    )
    both_methods(
        rec,
        "multi-batch-depth-2-tf-notes",
        np.arange(24, dtype=np.float32).reshape(2, 2, 3, 2),
        [[0, 0, 1, 1], [0.5, 0, 0.5, 1]],
        [1, 0],
        (2, 3),
    )
    add_forward(
        rec,
        "depth-0",
        np.zeros((2, 4, 5, 0), np.float32),
        random_boxes(rng, 3, 4, 5),
        [0, 1, 1],
        (3, 2),
    )
    add_forward(
        rec,
        "depth-1",
        random_image(rng, "uint8", (2, 4, 5, 1)),
        random_boxes(rng, 3, 4, 5),
        [1, 0, 1],
        (3, 2),
    )
    add_forward(rec, "no-boxes", photo, np.zeros((0, 4), np.float32), np.zeros(0, np.int32), (3, 3))
    add_forward(
        rec,
        "no-boxes-batch-0",
        np.zeros((0, 3, 3, 1), np.float32),
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.int32),
        (2, 2),
    )

    # Edge overshoot: the last float32 sample lands one ulp past H-1 and is extrapolated.
    add_forward(
        rec,
        "edge-overshoot-height-58-crop-8",
        np.ones((1, 58, 2, 1), np.float32),
        [0, 0, 1, 1],
        crop_size=(8, 1),
        extrapolation_value=-1.0,
    )
    add_forward(
        rec,
        "edge-overshoot-width-4-crop-22",
        np.ones((1, 2, 4, 1), np.float32),
        [0, 0, 1, 1],
        crop_size=(1, 22),
        extrapolation_value=-1.0,
    )
    add_forward(
        rec,
        "edge-overshoot-random-image",
        random_image(rng, "float32", (1, 58, 3, 2)),
        [0, 0, 1, 1],
        crop_size=(8, 3),
        extrapolation_value=-1.0,
        method="nearest",
    )

    # Nearest rounding: halves away from zero, and roundf is not floorf(x + 0.5f).
    column5 = np.arange(5, dtype=np.float32).reshape(1, 5, 1, 1)
    add_forward(
        rec,
        "nearest-tie-2.5-rounds-up",
        column5,
        [0.625, 0, 0.625, 0],
        crop_size=(1, 1),
        method="nearest",
    )
    add_forward(
        rec,
        "nearest-tie-0.5-rounds-up",
        column5,
        [0.125, 0, 0.125, 0],
        crop_size=(1, 1),
        method="nearest",
    )
    add_forward(rec, "nearest-ties-grid", arange9, [0, 0, 1, 1], crop_size=(5, 5), method="nearest")
    add_forward(
        rec,
        "nearest-0.49999997-rounds-down",
        np.array([0, 1], np.float32).reshape(1, 2, 1, 1),
        [0, 0, np.float32(1 - 2**-24), 0],
        crop_size=(1, 1),
        method="nearest",
    )
    add_forward(rec, "nearest-2x2-to-3x3", img2, [0, 0, 1, 1], crop_size=(3, 3), method="nearest")

    # Huge finite coordinates that TF computes without crashing (checked by refuse_crash_input).
    both_methods(rec, "huge-1e6-symmetric", photo, [-1e6, -1e6, 1e6, 1e6], crop_size=(3, 3))
    both_methods(
        rec,
        "huge-1e6-one-sided",
        photo,
        [0, 0, 1e6, 1e6],
        crop_size=(3, 4),
        extrapolation_value=-1.0,
    )
    both_methods(
        rec,
        "huge-3e38-crop-height-1",
        photo,
        [[-3e38, 0, 3e38, 1], [3e38, 0, 3e38, 1]],
        [0, 0],
        (1, 4),
        extrapolation_value=-1.0,
    )
    both_methods(
        rec,
        "huge-3e38-crop-width-1",
        photo,
        [[0, -3e38, 1, 3e38], [0, -3e38, 1, -3e38]],
        [0, 0],
        (3, 1),
        extrapolation_value=-1.0,
    )
    add_forward(
        rec,
        "huge-3e38-equal-edges-crop-2",
        photo,
        [3e38, 3e38, 3e38, 3e38],
        crop_size=(2, 2),
        extrapolation_value=-1.0,
    )

    # Non-finite pixels: the lerp form spreads NaN even with zero weight.
    for dtype in GRAD_IMAGE_DTYPES:
        inf_image = np.array([[np.inf, 2], [3, 4]], dtype).reshape(1, 2, 2, 1)
        nan_image = np.array([[np.nan, 2], [3, 4]], dtype).reshape(1, 2, 2, 1)
        minus_inf = np.array([[1, 2], [3, -np.inf]], dtype).reshape(1, 2, 2, 1)
        add_forward(rec, f"inf-pixel-{dtype}", inf_image, [0, 0, 1, 1], crop_size=(2, 2))
        both_methods(rec, f"nan-pixel-{dtype}", nan_image, [0, 0, 1, 1], crop_size=(3, 3))
        add_forward(rec, f"minus-inf-pixel-{dtype}", minus_inf, [0, 0, 1, 1], crop_size=(3, 3))

    # TF runs with flush-to-zero and denormals-are-zero: subnormal operands and results are 0.
    subnormal = np.array([1e-40, 3e-40, 2e-39, 1e-38], np.float32).reshape(1, 2, 2, 1)
    both_methods(rec, "subnormal-pixels", subnormal, [0, 0, 1, 1], crop_size=(3, 3))
    both_methods(
        rec,
        "subnormal-pixels-float64",
        subnormal.astype(np.float64),
        [0, 0, 1, 1],
        crop_size=(3, 3),
    )
    tiny = (random_image(rng, "float32", (1, 4, 5, 2)) * np.float32(1e-40)).astype(np.float32)
    tiny[0, ::2, ::2] *= np.float32(1e4)
    both_methods(rec, "near-underflow-random", tiny, random_boxes(rng, 3, 4, 5), [0, 0, 0], (4, 4))
    # float16 subnormals are normal float32 numbers: nothing to flush.
    half_subnormal = np.array([6e-8, 1e-6, 3e-5, 6.1e-5], np.float16).reshape(1, 2, 2, 1)
    both_methods(rec, "float16-subnormal-pixels", half_subnormal, [0, 0, 1, 1], crop_size=(3, 3))
    add_forward(
        rec,
        "extrapolation-subnormal",
        photo,
        [-1, -1, 2, 2],
        crop_size=(3, 3),
        extrapolation_value=1e-40,
    )

    # Values each dtype cannot carry exactly into float32.
    add_forward(
        rec,
        "int64-beyond-2-24",
        np.array([2**53 + 1, -(2**40) - 1, 2**24 + 1, 7], np.int64).reshape(1, 2, 2, 1),
        [0, 0, 1, 1],
        crop_size=(3, 3),
    )
    add_forward(
        rec,
        "int32-extremes",
        np.array([2**31 - 1, -(2**31), 0, 1], np.int32).reshape(1, 2, 2, 1),
        [0, 0, 1, 1],
        crop_size=(3, 3),
    )
    add_forward(
        rec,
        "float64-detail-lost",
        np.array([1 + 1e-12, 1e300, -1e-300, 2 / 3], np.float64).reshape(1, 2, 2, 1),
        [0, 0, 0, 0],
        crop_size=(2, 2),
    )
    for dtype in ("uint8", "int8", "uint16", "int16"):
        info = np.iinfo(dtype)
        extremes = np.array([info.min, info.max, info.max, info.min], dtype).reshape(1, 2, 2, 1)
        both_methods(rec, f"{dtype}-extremes", extremes, [0, 0, 1, 1], crop_size=(3, 3))


# --------------------------------------------------------------------------------------------------
# Gradients


def add_grad_image(
    rec, name, grads, boxes, box_indices, image_size, dtype="float32", method="bilinear"
) -> None:
    grads = np.asarray(grads, np.float32)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    box_indices = np.asarray(box_indices, np.int32).reshape(-1)
    image_size = np.asarray(image_size, np.int32)
    output = tf_grad_image(grads, boxes, box_indices, image_size, dtype, method)
    assert output.dtype == np.dtype(dtype)
    rec.add(
        "grad_image",
        name,
        {"grads": grads, "boxes": boxes, "box_indices": box_indices, "grads_image": output},
        image_shape=[int(v) for v in image_size],
        dtype=dtype,
        method=method,
    )


def add_grad_boxes(rec, name, grads, image, boxes, box_indices) -> None:
    grads = np.asarray(grads, np.float32)
    image = np.asarray(image)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    box_indices = np.asarray(box_indices, np.int32).reshape(-1)
    output = tf_grad_boxes(grads, image, boxes, box_indices, "bilinear")
    assert output.dtype == np.float32
    rec.add(
        "grad_boxes",
        name,
        {
            "grads": grads,
            "image": image,
            "boxes": boxes,
            "box_indices": box_indices,
            "grads_boxes": output,
        },
        method="bilinear",
    )


def random_grads(rng, num_boxes, crop, depth) -> np.ndarray:
    return (rng.standard_normal((num_boxes, *crop, depth)) * 3).astype(np.float32)


def record_grad_image(rec: Recorder, rng: np.random.Generator) -> None:
    for dtype in GRAD_IMAGE_DTYPES:
        for method in METHODS:
            for i in range(6):
                s = random_shape(rng)
                s["num_boxes"] = int(rng.integers(1, 7))  # several boxes often share an image
                boxes = random_boxes(rng, s["num_boxes"], s["height"], s["width"])
                add_grad_image(
                    rec,
                    f"random-{dtype}-{method}-{i}",
                    random_grads(rng, s["num_boxes"], s["crop"], s["depth"]),
                    boxes,
                    rng.integers(0, s["batch"], size=s["num_boxes"]),
                    [s["batch"], s["height"], s["width"], s["depth"]],
                    dtype,
                    method,
                )

    for dtype in GRAD_IMAGE_DTYPES:
        for method in METHODS:
            tag = f"{dtype}-{method}"
            # Many overlapping boxes on one image: accumulation order decides the rounding.
            add_grad_image(
                rec,
                f"overlapping-boxes-{tag}",
                random_grads(rng, 8, (6, 5), 2),
                random_boxes(rng, 8, 4, 3) * 0.5 + 0.25,
                np.zeros(8),
                [1, 4, 3, 2],
                dtype,
                method,
            )
            add_grad_image(
                rec,
                f"partly-outside-{tag}",
                random_grads(rng, 2, (5, 4), 1),
                [[-0.5, -0.5, 1.5, 1.5], [1.2, -0.3, -0.1, 0.7]],
                [0, 1],
                [2, 3, 4, 1],
                dtype,
                method,
            )
            add_grad_image(
                rec,
                f"crop-1x1-{tag}",
                random_grads(rng, 3, (1, 1), 2),
                [[0, 0, 1, 1], [0.1, 0.3, 0.8, 0.4], [1, 1, 1.5, 1.5]],
                [0, 0, 0],
                [1, 4, 5, 2],
                dtype,
                method,
            )
    for method in METHODS:
        add_grad_image(
            rec,
            f"wholly-outside-{method}",
            random_grads(rng, 1, (3, 3), 1),
            [1.5, 1.5, 2.5, 2.5],
            [0],
            [1, 3, 3, 1],
            "float32",
            method,
        )
        add_grad_image(
            rec,
            f"crop-height-1-{method}",
            random_grads(rng, 2, (1, 4), 1),
            random_boxes(rng, 2, 4, 5),
            [0, 0],
            [1, 4, 5, 1],
            "float32",
            method,
        )
        add_grad_image(
            rec,
            f"crop-width-1-{method}",
            random_grads(rng, 2, (4, 1), 1),
            random_boxes(rng, 2, 4, 5),
            [0, 0],
            [1, 4, 5, 1],
            "float32",
            method,
        )
        add_grad_image(
            rec,
            f"image-height-1-{method}",
            random_grads(rng, 1, (2, 3), 1),
            [-5, 0, 7, 1],
            [0],
            [1, 1, 3, 1],
            "float32",
            method,
        )
        add_grad_image(
            rec,
            f"image-width-1-{method}",
            random_grads(rng, 1, (3, 2), 1),
            [0, -3, 1, 4],
            [0],
            [1, 3, 1, 1],
            "float32",
            method,
        )
        add_grad_image(
            rec,
            f"edge-overshoot-height-58-crop-8-{method}",
            random_grads(rng, 1, (8, 1), 1),
            [0, 0, 1, 1],
            [0],
            [1, 58, 2, 1],
            "float32",
            method,
        )
        add_grad_image(
            rec,
            f"huge-1e6-{method}",
            random_grads(rng, 1, (3, 3), 1),
            [-1e6, -1e6, 1e6, 1e6],
            [0],
            [1, 4, 4, 1],
            "float32",
            method,
        )
        add_grad_image(
            rec,
            f"flipped-{method}",
            random_grads(rng, 1, (4, 5), 1),
            [1, 0.9, 0, 0.1],
            [0],
            [1, 4, 5, 1],
            "float32",
            method,
        )
    add_grad_image(
        rec,
        "nearest-ties",
        np.ones((1, 5, 5, 1)),
        [0, 0, 1, 1],
        [0],
        [1, 3, 3, 1],
        "float32",
        "nearest",
    )
    add_grad_image(
        rec, "no-boxes", np.ones((0, 3, 3, 1)), np.zeros((0, 4)), np.zeros(0), [1, 2, 2, 1]
    )
    add_grad_image(
        rec, "no-boxes-batch-0", np.ones((0, 3, 3, 1)), np.zeros((0, 4)), np.zeros(0), [0, 2, 2, 1]
    )
    add_grad_image(rec, "depth-0", np.ones((1, 3, 3, 0)), [0, 0, 1, 1], [0], [1, 2, 2, 0])
    for method in METHODS:
        add_grad_image(
            rec,
            f"subnormal-grads-{method}",
            np.full((1, 3, 3, 1), 1e-38),
            [0, 0, 1, 1],
            [0],
            [1, 2, 2, 1],
            method=method,
        )
        add_grad_image(
            rec,
            f"near-underflow-random-{method}",
            (random_grads(rng, 4, (4, 3), 2) * np.float32(1e-37)).astype(np.float32),
            random_boxes(rng, 4, 3, 4),
            [0, 0, 0, 0],
            [1, 3, 4, 2],
            method=method,
        )
    for method in METHODS:
        # float16 results whose contributions and sums are float16 subnormals.
        add_grad_image(
            rec,
            f"float16-subnormal-accumulation-{method}",
            np.full((2, 3, 3, 1), 1e-6),
            [[0, 0, 1, 1], [0.2, 0.1, 0.9, 0.7]],
            [0, 0],
            [1, 2, 2, 1],
            dtype="float16",
            method=method,
        )
    for dtype in ("float16", "float64"):
        add_grad_image(
            rec,
            f"subnormal-grads-{dtype}",
            np.full((1, 3, 3, 1), 1e-38),
            [0, 0, 1, 1],
            [0],
            [1, 2, 2, 1],
            dtype=dtype,
        )
    # notes §2.4
    add_grad_image(
        rec, "notes-ones-3x3-bilinear", np.ones((1, 3, 3, 1)), [0, 0, 1, 1], [0], [1, 2, 2, 1]
    )
    add_grad_image(
        rec,
        "notes-ones-3x3-nearest",
        np.ones((1, 3, 3, 1)),
        [0, 0, 1, 1],
        [0],
        [1, 2, 2, 1],
        method="nearest",
    )
    add_grad_image(
        rec,
        "notes-inner-box",
        np.arange(1, 5).reshape(1, 2, 2, 1),
        [0.25, 0.25, 0.75, 0.75],
        [0],
        [1, 3, 3, 1],
    )


def record_grad_boxes(rec: Recorder, rng: np.random.Generator) -> None:
    for dtype in IMAGE_DTYPES:
        for i in range(3):
            s = random_shape(rng)
            image = random_image(rng, dtype, (s["batch"], s["height"], s["width"], s["depth"]))
            add_grad_boxes(
                rec,
                f"random-{dtype}-{i}",
                random_grads(rng, s["num_boxes"], s["crop"], s["depth"]),
                image,
                random_boxes(rng, s["num_boxes"], s["height"], s["width"]),
                rng.integers(0, s["batch"], size=s["num_boxes"]),
            )

    photo = random_image(rng, "float32", (2, 5, 6, 2))
    for dtype in ("float32", "uint8", "float16", "float64", "int64"):
        image = random_image(rng, dtype, (2, 5, 6, 2))
        add_grad_boxes(
            rec,
            f"partly-outside-{dtype}",
            random_grads(rng, 2, (4, 5), 2),
            image,
            [[-0.5, -0.5, 1.5, 1.5], [1.2, -0.3, -0.1, 0.7]],
            [0, 1],
        )
        add_grad_boxes(
            rec,
            f"crop-1x1-{dtype}",
            random_grads(rng, 3, (1, 1), 2),
            image,
            [[0, 0, 1, 1], [0.1, 0.3, 0.8, 0.4], [1, 1, 1.5, 1.5]],
            [0, 1, 0],
        )
    add_grad_boxes(
        rec,
        "crop-height-1",
        random_grads(rng, 3, (1, 4), 2),
        photo,
        random_boxes(rng, 3, 5, 6),
        [0, 1, 1],
    )
    add_grad_boxes(
        rec,
        "crop-width-1",
        random_grads(rng, 3, (4, 1), 2),
        photo,
        random_boxes(rng, 3, 5, 6),
        [1, 0, 1],
    )
    add_grad_boxes(
        rec, "wholly-outside", random_grads(rng, 1, (3, 3), 2), photo, [1.5, 1.5, 2.5, 2.5], [0]
    )
    add_grad_boxes(rec, "on-grid", random_grads(rng, 1, (5, 6), 2), photo, [0, 0, 1, 1], [1])
    add_grad_boxes(
        rec, "zero-area", random_grads(rng, 1, (2, 3), 2), photo, [0.3, 0.6, 0.3, 0.6], [0]
    )
    add_grad_boxes(
        rec,
        "flipped",
        random_grads(rng, 2, (3, 4), 2),
        photo,
        [[1, 0.9, 0, 0.1], [0.8, 0.7, 0.2, 0.3]],
        [0, 1],
    )
    add_grad_boxes(
        rec,
        "image-height-1",
        random_grads(rng, 1, (2, 3), 1),
        np.array([[0, 1, 2]], np.float32).reshape(1, 1, 3, 1),
        [-5, 0, 7, 1],
        [0],
    )
    add_grad_boxes(
        rec,
        "image-width-1",
        random_grads(rng, 1, (3, 2), 1),
        np.array([0, 1, 2], np.float32).reshape(1, 3, 1, 1),
        [0, -3, 1, 4],
        [0],
    )
    add_grad_boxes(
        rec,
        "edge-overshoot-height-58-crop-8",
        random_grads(rng, 1, (8, 2), 1),
        random_image(rng, "float32", (1, 58, 2, 1)),
        [0, 0, 1, 1],
        [0],
    )
    add_grad_boxes(
        rec, "huge-1e6", random_grads(rng, 1, (3, 3), 2), photo, [-1e6, -1e6, 1e6, 1e6], [0]
    )
    add_grad_boxes(rec, "no-boxes", np.ones((0, 3, 3, 2)), photo, np.zeros((0, 4)), np.zeros(0))
    add_grad_boxes(
        rec,
        "depth-0",
        np.ones((1, 3, 3, 0)),
        np.ones((1, 2, 2, 0), np.float32),
        [0.1, 0.2, 0.7, 0.9],
        [0],
    )
    inf_image = np.array([[np.inf, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    subnormal = np.array([1e-40, 3e-40, 2e-39, 1e-38], np.float32).reshape(1, 2, 2, 1)
    add_grad_boxes(
        rec, "subnormal-grads", np.full((1, 3, 3, 1), 1e-38), subnormal * 1e3, [0.1, 0, 1, 1], [0]
    )
    add_grad_boxes(
        rec, "subnormal-pixels", np.ones((1, 3, 3, 1)), subnormal, [0.1, 0.2, 0.9, 1], [0]
    )
    add_grad_boxes(
        rec,
        "near-underflow-random",
        (random_grads(rng, 2, (3, 4), 2) * np.float32(1e-36)).astype(np.float32),
        (random_image(rng, "float32", (1, 4, 5, 2)) * 1e-3).astype(np.float32),
        random_boxes(rng, 2, 4, 5),
        [0, 0],
    )
    add_grad_boxes(rec, "inf-pixel", np.ones((1, 3, 3, 1)), inf_image, [0, 0, 1, 1], [0])
    # notes §2.4
    img2 = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    add_grad_boxes(rec, "notes-ones-3x3", np.ones((1, 3, 3, 1)), img2, [0, 0, 1, 1], [0])
    add_grad_boxes(
        rec,
        "notes-inner-box",
        np.arange(1, 5).reshape(1, 2, 2, 1),
        np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1),
        [0.25, 0.25, 0.75, 0.75],
        [0],
    )
    add_grad_boxes(rec, "notes-crop-1x1", np.ones((1, 1, 1, 1)), img2, [0, 0, 1, 1], [0])


# --------------------------------------------------------------------------------------------------
# Inputs TensorFlow refuses


# cropcore's mapping of a refusal (design.md): bad value or shape -> ValueError, bad type or dtype
# -> TypeError, box index out of range -> IndexError. ``argument`` is the cropcore argument that the
# message must name.
def record_errors(rec: Recorder) -> None:
    img2 = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    box = np.array([[0, 0, 1, 1]], np.float32)
    index = np.array([0], np.int32)
    crop = np.array([3, 3], np.int32)

    def forward(
        name,
        expected,
        argument,
        image=img2,
        boxes=box,
        box_indices=index,
        crop_size: Any = crop,
        method="bilinear",
        extrapolation_value: Any = 0.0,
    ):
        arrays = {"image": image, "boxes": boxes, "box_indices": box_indices}
        params: dict[str, Any] = {"method": method, "extrapolation_value": extrapolation_value}
        if isinstance(crop_size, np.ndarray):
            arrays["crop_size"] = crop_size
        else:
            params["crop_size"] = list(crop_size)
        record_error(rec, "crop_and_resize", name, expected, argument, arrays, params)

    forward("image-rank-3", "ValueError", "image", image=img2[0])
    forward("image-rank-5", "ValueError", "image", image=img2[None])
    forward("image-height-0", "ValueError", "image", image=np.zeros((1, 0, 2, 1), np.float32))
    forward("image-width-0", "ValueError", "image", image=np.zeros((1, 2, 0, 1), np.float32))
    for dtype in ("bool", "complex64", "uint32", "uint64"):
        forward(f"image-dtype-{dtype}", "TypeError", "image", image=img2.astype(dtype))
    forward("boxes-rank-1", "ValueError", "boxes", boxes=box[0])
    forward(
        "boxes-rank-1-empty",
        "ValueError",
        "boxes",
        boxes=np.zeros(0, np.float32),
        box_indices=np.zeros(0, np.int32),
    )
    forward("boxes-rank-3", "ValueError", "boxes", boxes=box[None])
    forward("boxes-3-columns", "ValueError", "boxes", boxes=box[:, :3])
    forward("boxes-5-columns", "ValueError", "boxes", boxes=np.zeros((1, 5), np.float32))
    for label, value in [("nan", NAN), ("inf", INF), ("minus-inf", -INF)]:
        bad = box.copy()
        bad[0, 2] = value
        forward(f"boxes-{label}", "ValueError", "boxes", boxes=bad)
    # 1e40 is finite in float64 but overflows to inf in float32 (CVE-2020-15266's input).
    forward(
        "boxes-1e40-overflows-float32",
        "ValueError",
        "boxes",
        image=np.zeros((2, 1, 1, 1), np.float32),
        boxes=np.array([[1e40, 0, 0, 0]]),
        box_indices=np.array([1], np.int32),
        crop_size=[1, 1],
    )
    forward("box-indices-rank-0", "ValueError", "box_indices", box_indices=np.int32(0))
    forward("box-indices-rank-2", "ValueError", "box_indices", box_indices=index[None])
    forward(
        "box-indices-rank-2-empty",
        "ValueError",
        "box_indices",
        image=np.ones((2, 2, 2, 2), np.float32),
        boxes=np.ones((0, 4), np.float32),
        box_indices=np.ones((0, 1), np.int32),
        crop_size=[1, 1],
    )
    forward(
        "box-indices-too-many", "ValueError", "box_indices", box_indices=np.array([0, 0], np.int32)
    )
    forward("box-indices-too-few", "ValueError", "box_indices", boxes=np.repeat(box, 2, axis=0))
    forward(
        "box-index-equals-batch", "IndexError", "box_indices", box_indices=np.array([1], np.int32)
    )
    forward("box-index-negative", "IndexError", "box_indices", box_indices=np.array([-1], np.int32))
    forward(
        "box-index-int32-max",
        "IndexError",
        "box_indices",
        box_indices=np.array([2**31 - 1], np.int32),
    )
    forward(
        "box-index-second-of-three",
        "IndexError",
        "box_indices",
        image=np.zeros((2, 2, 2, 1), np.float32),
        boxes=np.repeat(box, 3, axis=0),
        box_indices=np.array([1, 2, 0], np.int32),
    )
    forward(
        "box-index-batch-0-image",
        "IndexError",
        "box_indices",
        image=np.zeros((0, 2, 2, 1), np.float32),
    )
    forward(
        "crop-size-zero-height", "ValueError", "crop_size", crop_size=np.array([0, 3], np.int32)
    )
    forward(
        "crop-size-negative-width", "ValueError", "crop_size", crop_size=np.array([3, -1], np.int32)
    )
    forward(
        "crop-size-three-elements",
        "ValueError",
        "crop_size",
        crop_size=np.array([3, 3, 3], np.int32),
    )
    forward("crop-size-one-element", "ValueError", "crop_size", crop_size=np.array([3], np.int32))
    forward("crop-size-rank-0", "ValueError", "crop_size", crop_size=np.array(3, np.int32))
    forward("crop-size-rank-2", "ValueError", "crop_size", crop_size=np.array([[3, 3]], np.int32))
    forward("crop-size-floats", "TypeError", "crop_size", crop_size=[3.0, 3.0])
    forward("crop-size-fraction", "TypeError", "crop_size", crop_size=[2.5, 3])
    # TF: "Encountered overflow when multiplying ..." (testImageCropAndResizeWithInvalidInput);
    # cropcore: OutputTooLargeError, a ValueError.
    forward(
        "crop-size-overflows-int64",
        "ValueError",
        "crop_size",
        image=np.ones((1, 1, 1, 1), np.float32),
        boxes=np.ones((11, 4), np.float32),
        box_indices=np.zeros(11, np.int32),
        crop_size=np.array([2065374891, 1145309325], np.int32),
    )
    # TF: ResourceExhaustedError (OOM when allocating); cropcore refuses before allocating.
    forward(
        "crop-size-out-of-memory",
        "ValueError",
        "crop_size",
        crop_size=np.array([2**31 - 1, 2**31 - 1], np.int32),
    )
    for method in ("bicubic", "Bilinear", "NEAREST", ""):
        forward(f"method-{method or 'empty'}", "ValueError", "method", method=method)
    forward(
        "extrapolation-value-string", "TypeError", "extrapolation_value", extrapolation_value="a"
    )

    grads = np.ones((1, 3, 3, 1), np.float32)
    size = np.array([1, 2, 2, 1], np.int32)

    def grad_image(
        name,
        expected,
        argument,
        grads=grads,
        boxes=box,
        box_indices=index,
        image_size=size,
        dtype="float32",
        method="bilinear",
    ):
        arrays = {
            "grads": grads,
            "boxes": boxes,
            "box_indices": box_indices,
            "image_shape": image_size,
        }
        record_error(
            rec, "grad_image", name, expected, argument, arrays, {"dtype": dtype, "method": method}
        )

    grad_image("grads-rank-3", "ValueError", "grads", grads=grads[0])
    grad_image(
        "grads-crop-height-0", "ValueError", "grads", grads=np.ones((1, 0, 3, 1), np.float32)
    )
    grad_image(
        "grads-count-differs-from-boxes",
        "ValueError",
        "grads",
        grads=np.ones((2, 3, 3, 1), np.float32),
    )
    grad_image("boxes-3-columns", "ValueError", "boxes", boxes=box[:, :3])
    grad_image(
        "box-indices-too-many", "ValueError", "box_indices", box_indices=np.array([0, 0], np.int32)
    )
    grad_image(
        "image-shape-3-elements",
        "ValueError",
        "image_shape",
        image_size=np.array([1, 2, 2], np.int32),
    )
    grad_image(
        "image-shape-height-0",
        "ValueError",
        "image_shape",
        image_size=np.array([1, 0, 2, 1], np.int32),
    )
    grad_image(
        "image-shape-negative-batch",
        "ValueError",
        "image_shape",
        image_size=np.array([-1, 2, 2, 1], np.int32),
    )
    grad_image(
        "image-shape-depth-differs-from-grads",
        "ValueError",
        "grads",
        image_size=np.array([1, 2, 2, 2], np.int32),
    )
    grad_image(
        "box-index-equals-batch", "IndexError", "box_indices", box_indices=np.array([1], np.int32)
    )
    grad_image(
        "box-index-negative", "IndexError", "box_indices", box_indices=np.array([-1], np.int32)
    )
    for dtype in ("uint8", "int32"):
        grad_image(f"dtype-{dtype}", "TypeError", "dtype", dtype=dtype)
    grad_image("method-bicubic", "ValueError", "method", method="bicubic")

    image = img2

    def grad_boxes(
        name,
        expected,
        argument,
        grads=grads,
        image=image,
        boxes=box,
        box_indices=index,
        method="bilinear",
    ):
        arrays = {"grads": grads, "image": image, "boxes": boxes, "box_indices": box_indices}
        record_error(rec, "grad_boxes", name, expected, argument, arrays, {"method": method})

    grad_boxes("grads-rank-3", "ValueError", "grads", grads=grads[0])
    grad_boxes("grads-crop-width-0", "ValueError", "grads", grads=np.ones((1, 3, 0, 1), np.float32))
    grad_boxes("image-rank-3", "ValueError", "image", image=image[0])
    grad_boxes("image-height-0", "ValueError", "image", image=np.ones((1, 0, 2, 1), np.float32))
    grad_boxes(
        "image-depth-differs-from-grads",
        "ValueError",
        "grads",
        image=np.ones((1, 2, 2, 2), np.float32),
    )
    grad_boxes("image-dtype-bool", "TypeError", "image", image=image.astype(bool))
    grad_boxes("boxes-3-columns", "ValueError", "boxes", boxes=box[:, :3])
    grad_boxes(
        "box-indices-too-many", "ValueError", "box_indices", box_indices=np.array([0, 0], np.int32)
    )
    grad_boxes(
        "grads-count-differs-from-boxes",
        "ValueError",
        "grads",
        grads=np.ones((2, 3, 3, 1), np.float32),
    )
    grad_boxes(
        "box-index-equals-batch", "IndexError", "box_indices", box_indices=np.array([1], np.int32)
    )
    grad_boxes("method-nearest", "ValueError", "method", method="nearest")


def _clean_message(text: str) -> str:
    """The message on one line, without TF's ``{{function_node ...}}`` prefix, ``[Op:...]`` suffix
    and NodeDef dump, or Keras's terminal colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    text = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", text)
    text = re.split(r"\s*\[Op:|\s*;\s*NodeDef:", text)[0]
    return " ".join(text.split())[:300]


def record_error(rec, op, name, expected, argument, arrays, params) -> None:
    try:
        if op == "crop_and_resize":
            tf_crop_and_resize(
                arrays["image"],
                arrays["boxes"],
                arrays["box_indices"],
                arrays.get("crop_size", params.get("crop_size")),
                params["method"],
                params["extrapolation_value"],
            )
        elif op == "grad_image":
            tf_grad_image(
                arrays["grads"],
                arrays["boxes"],
                arrays["box_indices"],
                arrays["image_shape"],
                params["dtype"],
                params["method"],
            )
        else:
            tf_grad_boxes(
                arrays["grads"],
                arrays["image"],
                arrays["boxes"],
                arrays["box_indices"],
                params["method"],
            )
    except RuntimeError as exc:
        if "notes §4" in str(exc):
            raise
        tf_error = exc
    except Exception as exc:
        tf_error = exc
    else:
        raise AssertionError(f"TensorFlow accepted error case {op}/{name}")
    message = _clean_message(str(tf_error))
    rec.add(
        "error",
        f"{op}-{name}",
        arrays,
        target=op,
        **params,
        expected=expected,
        argument=argument,
        tf_error=type(tf_error).__name__,
        tf_message=message,
    )


# --------------------------------------------------------------------------------------------------
# Keras Cropping2D


def keras_crop(x: np.ndarray, cropping: Any, data_format: Any) -> np.ndarray:
    layer = keras.layers.Cropping2D(cropping=cropping, data_format=data_format)
    return keras.ops.convert_to_numpy(layer(x))


def record_crop2d(rec: Recorder, rng: np.random.Generator) -> None:
    channels_last = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    channels_first = np.ascontiguousarray(channels_last.transpose(0, 3, 1, 2))
    inputs = {"channels_last": channels_last, "channels_first": channels_first}

    # `cropping` is stored as its Python source text (tuples and lists stay distinct).
    forms = [
        ("int", "2"),
        ("int-zero", "0"),
        ("pair", "(1, 2)"),
        ("pair-list", "[1, 2]"),
        ("pair-of-pairs", "((1, 2), (3, 4))"),
        ("list-of-lists", "[[1, 2], [3, 4]]"),
        ("list-of-tuples", "[(1, 0), (0, 3)]"),
        ("pair-int-and-pair", "(1, (2, 3))"),
        ("zero-pairs", "((0, 0), (0, 0))"),
        ("keras-test-top-bottom-only-left", "((1, 0), (3, 0))"),
        ("keras-test-no-bottom", "((1, 0), (3, 4))"),
        ("keras-test-no-right", "((1, 2), (3, 0))"),
        ("keras-test-zero-top-left", "((0, 2), (0, 4))"),
        ("leaves-one-row-one-column", "((3, 3), (4, 4))"),
    ]
    for data_format, x in inputs.items():
        for label, text in forms:
            add_crop2d(rec, f"{label}-{data_format}", x, text, data_format)
        add_crop2d(rec, f"default-{data_format}", x, None, data_format)

    dtypes = ("float64", "float16", "int32", "uint8", "int8", "int64", "uint16", "bool")
    for data_format, x in inputs.items():
        for dtype in dtypes:
            if dtype == "bool":
                values = x > 0
            elif np.dtype(dtype).kind == "u":
                values = (np.abs(x) * 50).astype(dtype)
            else:
                values = (x * 50).astype(dtype)
            add_crop2d(rec, f"dtype-{dtype}-{data_format}", values, "((1, 2), (3, 4))", data_format)
    add_crop2d(rec, "data-format-mixed-case", channels_first, "((1, 2), (3, 4))", "Channels_First")
    add_crop2d(rec, "data-format-none-is-channels-last", channels_last, "((1, 2), (3, 4))", None)
    add_crop2d(rec, "single-pixel-image", channels_last[:, :1, :1], "0", "channels_last")


def add_crop2d(rec, name, x, cropping_text, data_format) -> None:

    cropping = ((0, 0), (0, 0)) if cropping_text is None else ast.literal_eval(cropping_text)
    if cropping_text is None:
        layer = keras.layers.Cropping2D(data_format=data_format)
        output = keras.ops.convert_to_numpy(layer(x))
    else:
        output = keras_crop(x, cropping, data_format)
    rec.add(
        "crop2d",
        name,
        {"x": x, "output": output},
        cropping=cropping_text,
        data_format=data_format,
        keras_dtype=str(output.dtype),
    )


def record_crop2d_errors(rec: Recorder) -> None:
    x = np.zeros((2, 7, 9, 3), np.float32)
    x_first = np.zeros((2, 3, 7, 9), np.float32)
    bad_cropping = [
        ("negative-int", "-1"),
        ("one-element", "(1,)"),
        ("three-elements", "(1, 2, 3)"),
        ("string", "'1'"),
        ("string-two-chars", "'12'"),
        ("none", "None"),
        ("float", "1.0"),
        ("second-entry-three-elements", "((1, 2), (3, 4, 5))"),
        ("second-entry-negative", "((1, 2), (3, -4))"),
        ("pair-negative", "(-1, 2)"),
        ("second-entry-string", "((1, 2), '3')"),
        ("second-entry-strings", "((1, 2), ('3', '4'))"),
        ("fractional-entry", "((1.5, 2), (0, 0))"),
        ("first-entry-none", "(None, (0, 0))"),
    ]
    for label, text in bad_cropping:
        add_crop2d_error(rec, label, x, text, "channels_last")
    add_crop2d_error(rec, "numpy-int64-scalar", x, "2", "channels_last", numpy_int=True)
    # Over-cropping (nothing left, or more than there is), both formats (Keras's own test cases).
    over = [
        ("height-exactly-0-left", "((3, 4), (0, 0))"),
        ("width-exactly-0-left", "((0, 0), (5, 4))"),
        ("height-more-than-all", "((6, 3), (0, 0))"),
        ("width-more-than-all", "((0, 0), (7, 3))"),
        ("int-too-large", "4"),
    ]
    for label, text in over:
        add_crop2d_error(rec, f"over-cropping-{label}-channels_last", x, text, "channels_last")
        add_crop2d_error(
            rec, f"over-cropping-{label}-channels_first", x_first, text, "channels_first"
        )
    add_crop2d_error(rec, "input-rank-3", x[0], "1", "channels_last", argument="x")
    add_crop2d_error(rec, "input-rank-5", x[None], "1", "channels_last", argument="x")
    add_crop2d_error(rec, "data-format-nhwc", x, "1", "nhwc", argument="data_format")


def add_crop2d_error(
    rec, name, x, cropping_text, data_format, numpy_int=False, argument="cropping"
) -> None:
    """``argument`` is the crop2d argument a refusal's message must name."""
    cropping = ast.literal_eval(cropping_text)
    if numpy_int:
        cropping = np.int64(cropping)
    stage = "init"
    try:
        layer = keras.layers.Cropping2D(cropping=cropping, data_format=data_format)
        stage = "call"
        layer(x)
    except Exception as exc:
        keras_error = exc
    else:
        raise AssertionError(f"Keras accepted error case {name}")
    rec.add(
        "crop2d_error",
        name,
        {"x": x},
        cropping=cropping_text,
        cropping_numpy_int=numpy_int,
        data_format=data_format,
        argument=argument,
        keras_error=type(keras_error).__name__,
        keras_stage=stage,
        keras_message=_clean_message(str(keras_error)),
    )


# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)

    # One thread each, before any op runs: GradImage's accumulation order is then sequential.
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.config.set_image_data_format("channels_last")
    keras.utils.set_random_seed(SEED)

    rec = Recorder()
    record_forward(rec, np.random.default_rng([SEED, 1]))
    record_grad_image(rec, np.random.default_rng([SEED, 2]))
    record_grad_boxes(rec, np.random.default_rng([SEED, 3]))
    record_errors(rec)
    record_crop2d(rec, np.random.default_rng([SEED, 4]))
    record_crop2d_errors(rec)
    rec.save(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
