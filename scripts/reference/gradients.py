"""Recorded ``CropAndResizeGradImage`` and ``CropAndResizeGradBoxes`` cases: random calls over
every dtype and method, then edge cases (overlapping boxes, crop size 1, outside and flipped boxes,
images of height or width 1, edge overshoot, empty inputs, subnormal values, notes §2.4).
"""

from __future__ import annotations

import numpy as np

from cropcore.spec import GRAD_IMAGE_DTYPES, IMAGE_DTYPES, METHODS
from reference.inputs import pixels_2x2, random_boxes, random_grads, random_image, random_shape
from reference.npz import Recorder
from reference.tf_calls import tf_grad_boxes, tf_grad_image

F32 = np.float32


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


def add_grad_image_rows(
    rec: Recorder, rows: list[tuple], suffix: str = "", dtype="float32", method="bilinear"
) -> None:
    """Each row ``(name, grads, boxes, box_indices, image_shape)``, named ``name + suffix``."""
    for name, grads, boxes, box_indices, image_shape in rows:
        add_grad_image(rec, name + suffix, grads, boxes, box_indices, image_shape, dtype, method)


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

    def grads(num_boxes: int, crop: tuple[int, int], depth: int = 1) -> np.ndarray:
        return random_grads(rng, num_boxes, crop, depth)

    # Rows draw from rng as they are written (grads before boxes): their order is the file's.
    # fmt: off
    for dtype in GRAD_IMAGE_DTYPES:
        for method in METHODS:
            add_grad_image_rows(rec, [
                # Many overlapping boxes on one image: accumulation order decides the rounding.
                ("overlapping-boxes", grads(8, (6, 5), 2), random_boxes(rng, 8, 4, 3) * 0.5 + 0.25,
                 np.zeros(8), [1, 4, 3, 2]),
                ("partly-outside", grads(2, (5, 4)), [[-0.5, -0.5, 1.5, 1.5], [1.2, -0.3, -0.1, 0.7]],
                 [0, 1], [2, 3, 4, 1]),
                ("crop-1x1", grads(3, (1, 1), 2),
                 [[0, 0, 1, 1], [0.1, 0.3, 0.8, 0.4], [1, 1, 1.5, 1.5]], [0, 0, 0], [1, 4, 5, 2]),
            ], f"-{dtype}-{method}", dtype, method)
    for method in METHODS:
        add_grad_image_rows(rec, [
            ("wholly-outside", grads(1, (3, 3)), [1.5, 1.5, 2.5, 2.5], [0], [1, 3, 3, 1]),
            ("crop-height-1", grads(2, (1, 4)), random_boxes(rng, 2, 4, 5), [0, 0], [1, 4, 5, 1]),
            ("crop-width-1", grads(2, (4, 1)), random_boxes(rng, 2, 4, 5), [0, 0], [1, 4, 5, 1]),
            ("image-height-1", grads(1, (2, 3)), [-5, 0, 7, 1], [0], [1, 1, 3, 1]),
            ("image-width-1", grads(1, (3, 2)), [0, -3, 1, 4], [0], [1, 3, 1, 1]),
            ("edge-overshoot-height-58-crop-8", grads(1, (8, 1)), [0, 0, 1, 1], [0], [1, 58, 2, 1]),
            ("huge-1e6", grads(1, (3, 3)), [-1e6, -1e6, 1e6, 1e6], [0], [1, 4, 4, 1]),
            ("flipped", grads(1, (4, 5)), [1, 0.9, 0, 0.1], [0], [1, 4, 5, 1]),
        ], f"-{method}", "float32", method)
    add_grad_image_rows(
        rec, [("nearest-ties", np.ones((1, 5, 5, 1)), [0, 0, 1, 1], [0], [1, 3, 3, 1])],
        method="nearest",
    )
    add_grad_image_rows(rec, [
        ("no-boxes", np.ones((0, 3, 3, 1)), np.zeros((0, 4)), np.zeros(0), [1, 2, 2, 1]),
        ("no-boxes-batch-0", np.ones((0, 3, 3, 1)), np.zeros((0, 4)), np.zeros(0), [0, 2, 2, 1]),
        ("depth-0", np.ones((1, 3, 3, 0)), [0, 0, 1, 1], [0], [1, 2, 2, 0]),
    ])
    for method in METHODS:
        add_grad_image_rows(rec, [
            ("subnormal-grads", np.full((1, 3, 3, 1), 1e-38), [0, 0, 1, 1], [0], [1, 2, 2, 1]),
            ("near-underflow-random", (grads(4, (4, 3), 2) * F32(1e-37)).astype(F32),
             random_boxes(rng, 4, 3, 4), [0, 0, 0, 0], [1, 3, 4, 2]),
        ], f"-{method}", method=method)
    for method in METHODS:
        # float16 results whose contributions and sums are float16 subnormals.
        add_grad_image_rows(rec, [
            ("float16-subnormal-accumulation", np.full((2, 3, 3, 1), 1e-6),
             [[0, 0, 1, 1], [0.2, 0.1, 0.9, 0.7]], [0, 0], [1, 2, 2, 1]),
        ], f"-{method}", "float16", method)
    for dtype in ("float16", "float64"):
        add_grad_image_rows(rec, [
            ("subnormal-grads", np.full((1, 3, 3, 1), 1e-38), [0, 0, 1, 1], [0], [1, 2, 2, 1]),
        ], f"-{dtype}", dtype)
    # notes §2.4
    ones_3x3 = np.ones((1, 3, 3, 1))
    add_grad_image_rows(rec, [
        ("notes-ones-3x3-bilinear", ones_3x3, [0, 0, 1, 1], [0], [1, 2, 2, 1]),
    ])
    add_grad_image_rows(rec, [
        ("notes-ones-3x3-nearest", ones_3x3, [0, 0, 1, 1], [0], [1, 2, 2, 1]),
    ], method="nearest")
    add_grad_image_rows(rec, [
        ("notes-inner-box", np.arange(1, 5).reshape(1, 2, 2, 1), [0.25, 0.25, 0.75, 0.75], [0],
         [1, 3, 3, 1]),
    ])
    # fmt: on


def add_grad_boxes_rows(rec: Recorder, rows: list[tuple], suffix: str = "") -> None:
    """Each row ``(name, grads, image, boxes, box_indices)``, named ``name + suffix``."""
    for name, grads, image, boxes, box_indices in rows:
        add_grad_boxes(rec, name + suffix, grads, image, boxes, box_indices)


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

    def grads(num_boxes: int, crop: tuple[int, int], depth: int = 2) -> np.ndarray:
        return random_grads(rng, num_boxes, crop, depth)

    photo = random_image(rng, "float32", (2, 5, 6, 2))
    img2 = pixels_2x2([1, 2, 3, 4], "float32")
    subnormal = pixels_2x2([1e-40, 3e-40, 2e-39, 1e-38], "float32")
    ones_3x3 = np.ones((1, 3, 3, 1))
    # Rows draw from rng as they are written (grads, image, boxes): their order is the file's.
    # fmt: off
    for dtype in ("float32", "uint8", "float16", "float64", "int64"):
        image = random_image(rng, dtype, (2, 5, 6, 2))
        add_grad_boxes_rows(rec, [
            ("partly-outside", grads(2, (4, 5)), image,
             [[-0.5, -0.5, 1.5, 1.5], [1.2, -0.3, -0.1, 0.7]], [0, 1]),
            ("crop-1x1", grads(3, (1, 1)), image,
             [[0, 0, 1, 1], [0.1, 0.3, 0.8, 0.4], [1, 1, 1.5, 1.5]], [0, 1, 0]),
        ], f"-{dtype}")
    add_grad_boxes_rows(rec, [
        ("crop-height-1", grads(3, (1, 4)), photo, random_boxes(rng, 3, 5, 6), [0, 1, 1]),
        ("crop-width-1", grads(3, (4, 1)), photo, random_boxes(rng, 3, 5, 6), [1, 0, 1]),
        ("wholly-outside", grads(1, (3, 3)), photo, [1.5, 1.5, 2.5, 2.5], [0]),
        ("on-grid", grads(1, (5, 6)), photo, [0, 0, 1, 1], [1]),
        ("zero-area", grads(1, (2, 3)), photo, [0.3, 0.6, 0.3, 0.6], [0]),
        ("flipped", grads(2, (3, 4)), photo, [[1, 0.9, 0, 0.1], [0.8, 0.7, 0.2, 0.3]], [0, 1]),
        ("image-height-1", grads(1, (2, 3), 1), np.array([[0, 1, 2]], F32).reshape(1, 1, 3, 1),
         [-5, 0, 7, 1], [0]),
        ("image-width-1", grads(1, (3, 2), 1), np.array([0, 1, 2], F32).reshape(1, 3, 1, 1),
         [0, -3, 1, 4], [0]),
        ("edge-overshoot-height-58-crop-8", grads(1, (8, 2), 1),
         random_image(rng, "float32", (1, 58, 2, 1)), [0, 0, 1, 1], [0]),
        ("huge-1e6", grads(1, (3, 3)), photo, [-1e6, -1e6, 1e6, 1e6], [0]),
        ("no-boxes", np.ones((0, 3, 3, 2)), photo, np.zeros((0, 4)), np.zeros(0)),
        ("depth-0", np.ones((1, 3, 3, 0)), np.ones((1, 2, 2, 0), F32), [0.1, 0.2, 0.7, 0.9], [0]),
        ("subnormal-grads", np.full((1, 3, 3, 1), 1e-38), subnormal * 1e3, [0.1, 0, 1, 1], [0]),
        ("subnormal-pixels", ones_3x3, subnormal, [0.1, 0.2, 0.9, 1], [0]),
        ("near-underflow-random", (grads(2, (3, 4)) * F32(1e-36)).astype(F32),
         (random_image(rng, "float32", (1, 4, 5, 2)) * 1e-3).astype(F32),
         random_boxes(rng, 2, 4, 5), [0, 0]),
        ("inf-pixel", ones_3x3, pixels_2x2([np.inf, 2, 3, 4], "float32"), [0, 0, 1, 1], [0]),
        # notes §2.4
        ("notes-ones-3x3", ones_3x3, img2, [0, 0, 1, 1], [0]),
        ("notes-inner-box", np.arange(1, 5).reshape(1, 2, 2, 1),
         np.arange(1, 10, dtype=F32).reshape(1, 3, 3, 1), [0.25, 0.25, 0.75, 0.75], [0]),
        ("notes-crop-1x1", np.ones((1, 1, 1, 1)), img2, [0, 0, 1, 1], [0]),
    ])
    # fmt: on
