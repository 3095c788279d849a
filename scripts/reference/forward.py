"""Recorded ``crop_and_resize`` cases: random calls over every dtype and method, then edge cases
(crop size 1, flipped, degenerate and outside boxes, extrapolation values, empty inputs, edge
overshoot, nearest rounding, huge coordinates, non-finite and subnormal pixels, dtype extremes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cropcore.spec import GRAD_IMAGE_DTYPES, IMAGE_DTYPES, METHODS
from reference.inputs import INF, NAN, pixels_2x2, random_boxes, random_image, random_shape
from reference.npz import Recorder
from reference.tf_calls import tf_crop_and_resize

BOTH = METHODS
BILINEAR = ("bilinear",)
NEAREST = ("nearest",)
F32 = np.float32


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


def add_rows(rec: Recorder, rows: list[tuple]) -> None:
    """Each row ``(name, methods, image, boxes, box_indices, crop_size, extrapolation_value)``:
    one case per method, named ``name`` for one method and ``name-<method>`` for both."""
    for name, methods, image, boxes, box_indices, crop_size, extrapolation_value in rows:
        for method in methods:
            label = f"{name}-{method}" if len(methods) > 1 else name
            add_forward(
                rec, label, image, boxes, box_indices, crop_size, method, extrapolation_value
            )


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

    img2 = pixels_2x2([1, 2, 3, 4], "float32")
    arange4 = np.arange(4, dtype=F32).reshape(1, 2, 2, 1)
    arange9 = np.arange(9, dtype=F32).reshape(1, 3, 3, 1)
    column5 = np.arange(5, dtype=F32).reshape(1, 5, 1, 1)
    photo = random_image(rng, "float32", (1, 5, 6, 2))
    extrapolations = [
        ("nan", NAN), ("minus-1", -1.0), ("inf", INF), ("minus-inf", -INF),
        ("0.1-rounds-to-float32", 0.1), ("1e30", 1e30),
    ]  # fmt: skip
    # Rows draw from rng as they are written: their order is the recorded file's.
    # fmt: off
    add_rows(rec, [
        # Crop size 1 (the box centre, computed partly in float64) in either dimension.
        ("crop-1x1-box-centre", BOTH, arange9, [0, 0, 0.5, 1], (0,), (1, 1), 0.0),
        ("crop-1x1-centre-outside", BOTH, arange9, [1, 1, 1.5, 1.5], (0,), (1, 1), -2.0),
        ("crop-height-1", BOTH, photo, random_boxes(rng, 3, 5, 6), [0, 0, 0], (1, 5), 0.0),
        ("crop-width-1", BOTH, photo, random_boxes(rng, 3, 5, 6), [0, 0, 0], (4, 1), 0.0),
        # Flipped boxes.
        ("flipped-vertical", BOTH, photo, [1, 0, 0, 1], (0,), (5, 6), 0.0),
        ("flipped-horizontal", BOTH, photo, [0, 1, 1, 0], (0,), (5, 6), 0.0),
        ("flipped-both-inner", BOTH, photo, [0.9, 0.8, 0.1, 0.2], (0,), (4, 3), 0.0),
        # Degenerate (zero-area) boxes.
        ("zero-area-point", BOTH, arange9, [0.25, 0.75, 0.25, 0.75], (0,), (2, 2), 0.0),
        ("zero-height-line", BOTH, photo, [0.5, 0, 0.5, 1], (0,), (3, 4), 0.0),
        ("zero-width-line-on-grid", BOTH, photo, [0, 0.4, 1, 0.4], (0,), (4, 2), 0.0),
        # Boxes partly and wholly outside [0, 1].
        ("partly-outside", BOTH, photo, [-0.5, -0.5, 1.5, 1.5], (0,), (5, 5), -1.0),
        ("partial-column-extrapolation", BOTH, img2, [0, -0.5, 1, 1.5], (0,), (2, 5), 9.0),
        ("wholly-outside-below-right", BOTH, photo, [1.5, 1.5, 2.5, 2.5], (0,), (3, 3), 3.0),
        ("wholly-outside-above-left", BOTH, photo, [-2, -2, -1, -1], (0,), (3, 3), 3.0),
        ("negative-zero-is-inside", BILINEAR, arange4, [-0.0, -0.0, 1, 1], (0,), (2, 2), -1.0),
        ("tiny-negative-is-outside", BILINEAR, arange4, [-1e-7, 0, 1, 1], (0,), (2, 2), -1.0),
        # Images of height or width 1 (never extrapolated along that axis).
        ("image-height-1", BOTH, np.array([[0, 1, 2]], F32).reshape(1, 1, 3, 1),
         [-5, 0, 7, 1], (0,), (2, 3), -1.0),
        ("image-width-1", BOTH, np.array([0, 1, 2], F32).reshape(1, 3, 1, 1),
         [0, -3, 1, 4], (0,), (3, 2), -1.0),
        ("image-1x1", BOTH, np.array([5, -6], F32).reshape(1, 1, 1, 2),
         [[0, 0, 1, 1], [-3, -3, 4, 4]], [0, 0], (3, 3), -1.0),
        # Extrapolation values.
        *[(f"extrapolation-{label}", BILINEAR, photo, [-0.3, -0.2, 1.2, 1.4], (0,), (4, 5), value)
          for label, value in extrapolations],
    ])
    # Several images, box indices, depth 0 and 1, no boxes.
    batch = random_image(rng, "float32", (3, 4, 5, 2))
    add_rows(rec, [
        ("multi-batch-box-indices", BOTH, batch, random_boxes(rng, 6, 4, 5), [2, 0, 1, 2, 0, 1],
         (3, 4), 0.0),
        ("multi-batch-depth-2-tf-notes", BOTH, np.arange(24, dtype=F32).reshape(2, 2, 3, 2),
         [[0, 0, 1, 1], [0.5, 0, 0.5, 1]], [1, 0], (2, 3), 0.0),
        ("depth-0", BILINEAR, np.zeros((2, 4, 5, 0), F32), random_boxes(rng, 3, 4, 5), [0, 1, 1],
         (3, 2), 0.0),
        ("depth-1", BILINEAR, random_image(rng, "uint8", (2, 4, 5, 1)), random_boxes(rng, 3, 4, 5),
         [1, 0, 1], (3, 2), 0.0),
        ("no-boxes", BILINEAR, photo, np.zeros((0, 4), F32), np.zeros(0, np.int32), (3, 3), 0.0),
        ("no-boxes-batch-0", BILINEAR, np.zeros((0, 3, 3, 1), F32), np.zeros((0, 4), F32),
         np.zeros(0, np.int32), (2, 2), 0.0),
        # Edge overshoot: the last float32 sample lands one ulp past H-1 and is extrapolated.
        ("edge-overshoot-height-58-crop-8", BILINEAR, np.ones((1, 58, 2, 1), F32), [0, 0, 1, 1],
         (0,), (8, 1), -1.0),
        ("edge-overshoot-width-4-crop-22", BILINEAR, np.ones((1, 2, 4, 1), F32), [0, 0, 1, 1],
         (0,), (1, 22), -1.0),
        ("edge-overshoot-random-image", NEAREST, random_image(rng, "float32", (1, 58, 3, 2)),
         [0, 0, 1, 1], (0,), (8, 3), -1.0),
        # Nearest rounding: halves away from zero, and roundf is not floorf(x + 0.5f).
        ("nearest-tie-2.5-rounds-up", NEAREST, column5, [0.625, 0, 0.625, 0], (0,), (1, 1), 0.0),
        ("nearest-tie-0.5-rounds-up", NEAREST, column5, [0.125, 0, 0.125, 0], (0,), (1, 1), 0.0),
        ("nearest-ties-grid", NEAREST, arange9, [0, 0, 1, 1], (0,), (5, 5), 0.0),
        ("nearest-0.49999997-rounds-down", NEAREST, np.array([0, 1], F32).reshape(1, 2, 1, 1),
         [0, 0, F32(1 - 2**-24), 0], (0,), (1, 1), 0.0),
        ("nearest-2x2-to-3x3", NEAREST, img2, [0, 0, 1, 1], (0,), (3, 3), 0.0),
        # Huge finite coordinates that TF computes without crashing (checked by the crash guard).
        ("huge-1e6-symmetric", BOTH, photo, [-1e6, -1e6, 1e6, 1e6], (0,), (3, 3), 0.0),
        ("huge-1e6-one-sided", BOTH, photo, [0, 0, 1e6, 1e6], (0,), (3, 4), -1.0),
        ("huge-3e38-crop-height-1", BOTH, photo, [[-3e38, 0, 3e38, 1], [3e38, 0, 3e38, 1]],
         [0, 0], (1, 4), -1.0),
        ("huge-3e38-crop-width-1", BOTH, photo, [[0, -3e38, 1, 3e38], [0, -3e38, 1, -3e38]],
         [0, 0], (3, 1), -1.0),
        ("huge-3e38-equal-edges-crop-2", BILINEAR, photo, [3e38] * 4, (0,), (2, 2), -1.0),
    ])
    # Non-finite pixels: the lerp form spreads NaN even with zero weight.
    for dtype in GRAD_IMAGE_DTYPES:
        add_rows(rec, [
            (f"inf-pixel-{dtype}", BILINEAR, pixels_2x2([[np.inf, 2], [3, 4]], dtype),
             [0, 0, 1, 1], (0,), (2, 2), 0.0),
            (f"nan-pixel-{dtype}", BOTH, pixels_2x2([[np.nan, 2], [3, 4]], dtype),
             [0, 0, 1, 1], (0,), (3, 3), 0.0),
            (f"minus-inf-pixel-{dtype}", BILINEAR, pixels_2x2([[1, 2], [3, -np.inf]], dtype),
             [0, 0, 1, 1], (0,), (3, 3), 0.0),
        ])
    # fmt: on
    record_forward_underflow_and_dtypes(rec, rng, photo)


def record_forward_underflow_and_dtypes(
    rec: Recorder, rng: np.random.Generator, photo: np.ndarray
) -> None:
    # TF runs with flush-to-zero and denormals-are-zero: subnormal operands and results are 0.
    subnormal = pixels_2x2([1e-40, 3e-40, 2e-39, 1e-38], "float32")
    tiny = (random_image(rng, "float32", (1, 4, 5, 2)) * F32(1e-40)).astype(F32)
    tiny[0, ::2, ::2] *= F32(1e4)
    # float16 subnormals are normal float32 numbers: nothing to flush.
    half_subnormal = pixels_2x2([6e-8, 1e-6, 3e-5, 6.1e-5], "float16")
    # fmt: off
    add_rows(rec, [
        ("subnormal-pixels", BOTH, subnormal, [0, 0, 1, 1], (0,), (3, 3), 0.0),
        ("subnormal-pixels-float64", BOTH, subnormal.astype(np.float64), [0, 0, 1, 1], (0,),
         (3, 3), 0.0),
        ("near-underflow-random", BOTH, tiny, random_boxes(rng, 3, 4, 5), [0, 0, 0], (4, 4), 0.0),
        ("float16-subnormal-pixels", BOTH, half_subnormal, [0, 0, 1, 1], (0,), (3, 3), 0.0),
        ("extrapolation-subnormal", BILINEAR, photo, [-1, -1, 2, 2], (0,), (3, 3), 1e-40),
        # Values each dtype cannot carry exactly into float32.
        ("int64-beyond-2-24", BILINEAR, pixels_2x2([2**53 + 1, -(2**40) - 1, 2**24 + 1, 7], "int64"),
         [0, 0, 1, 1], (0,), (3, 3), 0.0),
        ("int32-extremes", BILINEAR, pixels_2x2([2**31 - 1, -(2**31), 0, 1], "int32"),
         [0, 0, 1, 1], (0,), (3, 3), 0.0),
        ("float64-detail-lost", BILINEAR, pixels_2x2([1 + 1e-12, 1e300, -1e-300, 2 / 3], "float64"),
         [0, 0, 0, 0], (0,), (2, 2), 0.0),
        *[(f"{dtype}-extremes", BOTH, _extremes(dtype), [0, 0, 1, 1], (0,), (3, 3), 0.0)
          for dtype in ("uint8", "int8", "uint16", "int16")],
    ])
    # fmt: on


def _extremes(dtype: str) -> np.ndarray:
    info = np.iinfo(dtype)
    return pixels_2x2([info.min, info.max, info.max, info.min], dtype)
