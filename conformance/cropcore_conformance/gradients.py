"""Category ``gradients``: CropAndResizeGradImage and CropAndResizeGradBoxes on hand-written inputs.

What they pin down: samples outside the image contribute nothing; contributions land on the four
(bilinear) or one (nearest) right pixels, of the right image of the batch, in TensorFlow's
sequential order (which decides float16 and float32 rounding when boxes overlap); crop size 1
samples the box centre (and GradBoxes sums it in float64); at an exact pixel coordinate the box
derivative along that axis is 0; and running a gradient twice gives the same bits. Ids:
``gradients/grad_image/<name>-<method>[-<dtype>][-nchw]``, ``gradients/grad_boxes/<name>[-nchw]``.
"""

from __future__ import annotations

import numpy as np

from cropcore.spec import GRAD_IMAGE_DTYPES, IMAGE_DTYPES
from cropcore_conformance.builders import (
    boxes,
    grad_boxes,
    grad_image,
    image,
    random_grads,
)
from cropcore_conformance.cases import (
    Case,
    Context,
    FailCase,
    FunctionCase,
    Outcome,
    check_result,
)
from cropcore_conformance.inputs import Laid, materialize

__all__ = ["gradient_cases"]

C = "gradients"
BOTH = ("channels_last", "channels_first")
F32 = np.float32


def _grad_image_cases() -> list[Case]:
    cases: list[Case] = []

    def add(
        name,
        grads,
        box_values,
        box_indices,
        image_shape,
        dtypes=GRAD_IMAGE_DTYPES,
        formats=BOTH,
        **kw,
    ):
        cases.extend(
            grad_image(
                C,
                name,
                grads,
                box_values,
                box_indices,
                image_shape,
                dtypes=dtypes,
                formats=formats,
                **kw,
            )
        )

    add(
        "random",
        random_grads(5, (4, 3), 2, "gi"),
        boxes(5, 4, 5, "gi"),
        [1, 0, 1, 1, 0],
        (2, 4, 5, 2),
    )
    # Overlapping boxes on one image: the order of the sums decides the rounding.
    add(
        "overlapping-boxes",
        random_grads(8, (6, 5), 2, "ov"),
        boxes(8, 4, 3, "ov") * 0.5 + 0.25,
        np.zeros(8),
        (1, 4, 3, 2),
    )
    add(
        "partly-outside",
        random_grads(3, (5, 4), 1, "po"),
        [[-0.5, -0.5, 1.5, 1.5], [1.2, -0.3, -0.1, 0.7], [0.2, 0.9, 0.6, 1.7]],
        [0, 1, 1],
        (2, 3, 4, 1),
    )
    add(
        "wholly-outside",
        random_grads(2, (3, 3), 1, "wo"),
        [[1.5, 1.5, 2.5, 2.5], [-2, 0, -1, 1]],
        [0, 0],
        (1, 3, 3, 1),
        dtypes=("float32",),
    )
    add(
        "crop-1x1",
        random_grads(4, (1, 1), 2, "c1"),
        [[0, 0, 1, 1], [0.1, 0.3, 0.8, 0.4], [1, 1, 1.5, 1.5], [0.5, 0.5, 0.5, 0.5]],
        [0, 0, 0, 0],
        (1, 4, 5, 2),
    )
    add(
        "crop-height-1",
        random_grads(2, (1, 4), 1, "ch1"),
        boxes(2, 4, 5, "ch1"),
        [0, 0],
        (1, 4, 5, 1),
        dtypes=("float32",),
    )
    add(
        "crop-width-1",
        random_grads(2, (4, 1), 1, "cw1"),
        boxes(2, 4, 5, "cw1"),
        [0, 0],
        (1, 4, 5, 1),
        dtypes=("float32",),
    )
    add(
        "image-1x1",
        random_grads(2, (3, 3), 2, "i11"),
        [[0, 0, 1, 1], [-3, -3, 4, 4]],
        [0, 0],
        (1, 1, 1, 2),
        dtypes=("float32",),
    )
    add(
        "image-height-1",
        random_grads(1, (2, 3), 1, "ih1"),
        [-5, 0, 7, 1],
        [0],
        (1, 1, 3, 1),
        dtypes=("float32",),
    )
    add(
        "image-width-1",
        random_grads(1, (3, 2), 1, "iw1"),
        [0, -3, 1, 4],
        [0],
        (1, 3, 1, 1),
        dtypes=("float32",),
    )
    add(
        "flipped",
        random_grads(2, (4, 5), 1, "fl"),
        [[1, 0.9, 0, 0.1], [0.8, 0.7, 0.2, 0.3]],
        [0, 0],
        (1, 4, 5, 1),
        dtypes=("float32",),
    )
    add(
        "zero-area",
        random_grads(1, (3, 3), 1, "za"),
        [0.3, 0.6, 0.3, 0.6],
        [0],
        (1, 4, 5, 1),
        dtypes=("float32",),
    )
    add(
        "edge-overshoot-height-58-crop-8",
        random_grads(1, (8, 2), 1, "eo"),
        [0, 0, 1, 1],
        [0],
        (1, 58, 2, 1),
        dtypes=("float32",),
    )
    add(
        "huge-1e6",
        random_grads(1, (3, 3), 1, "h6"),
        [-1e6, -1e6, 1e6, 1e6],
        [0],
        (1, 4, 4, 1),
        dtypes=("float32",),
    )
    # A span that overflows float32 gives NaN coordinates: outside, so no contribution.
    add(
        "huge-3e38-span-overflows",
        random_grads(2, (3, 2), 1, "h38"),
        [[-3e38, 0, 3e38, 1], [0.1, 0.2, 0.7, 0.9]],
        [0, 0],
        (1, 4, 4, 1),
        dtypes=("float32",),
    )
    add(
        "nearest-ties",
        np.ones((1, 5, 5, 1), F32),
        [0, 0, 1, 1],
        [0],
        (1, 3, 3, 1),
        dtypes=("float32",),
        methods=("nearest",),
    )
    add(
        "box-indices",
        random_grads(6, (3, 3), 2, "bi"),
        boxes(6, 4, 5, "bi"),
        [2, 0, 2, 1, 2, 0],
        (3, 4, 5, 2),
        dtypes=("float32",),
    )
    add(
        "no-boxes",
        np.ones((0, 3, 3, 1), F32),
        np.zeros((0, 4)),
        [],
        (1, 2, 2, 1),
        dtypes=("float32",),
    )
    add(
        "no-boxes-batch-0",
        np.ones((0, 3, 3, 1), F32),
        np.zeros((0, 4)),
        [],
        (0, 2, 2, 1),
        dtypes=("float32",),
    )
    add(
        "depth-0",
        np.ones((2, 3, 3, 0), F32),
        boxes(2, 2, 2, "d0"),
        [0, 1],
        (2, 2, 2, 0),
        dtypes=("float32",),
    )
    add(
        "large",
        random_grads(10, (9, 11), 3, "lg"),
        boxes(10, 20, 24, "lg"),
        np.arange(10) % 2,
        (2, 20, 24, 3),
    )
    g = random_grads(3, (4, 3), 2, "layout")
    b = boxes(3, 4, 5, "layout")
    for layout in ("strided", "reversed", "read-only", "byteswapped"):
        add(
            f"layout-grads-{layout}",
            Laid(g, layout),
            b,
            [0, 1, 1],
            (2, 4, 5, 2),
            dtypes=("float32",),
            formats=("channels_last",),
        )
        add(
            f"layout-boxes-{layout}",
            g,
            Laid(b, layout),
            [0, 1, 1],
            (2, 4, 5, 2),
            dtypes=("float32",),
            formats=("channels_last",),
        )
    for dtype in ("float64", "float16"):
        add(
            f"args-grads-{dtype}",
            g.astype(dtype),
            b,
            [0, 1, 1],
            (2, 4, 5, 2),
            dtypes=("float32",),
            formats=("channels_last",),
        )
    return cases


def _grad_boxes_cases() -> list[Case]:
    cases: list[Case] = []

    def add(name, grads, image_values, box_values, box_indices, formats=BOTH):
        cases.extend(
            grad_boxes(C, name, grads, image_values, box_values, box_indices, formats=formats)
        )

    for dtype in IMAGE_DTYPES:
        add(
            f"dtype-{dtype}",
            random_grads(4, (3, 4), 2, "gb", dtype),
            image(dtype, (2, 5, 6, 2), "gb"),
            boxes(4, 5, 6, "gb", dtype),
            [0, 1, 1, 0],
        )
    photo = image("float32", (2, 5, 6, 2), "gbphoto")
    for dtype in ("float32", "uint8", "float16", "float64", "int64"):
        img = image(dtype, (2, 5, 6, 2), "gbc1")
        # Crop size 1: TensorFlow accumulates these in float64, rounding to float32 each step.
        add(
            f"crop-1x1-{dtype}",
            random_grads(3, (1, 1), 2, "gbc1", dtype),
            img,
            [[0, 0, 1, 1], [0.1, 0.3, 0.8, 0.4], [1, 1, 1.5, 1.5]],
            [0, 1, 0],
        )
        add(
            f"crop-height-1-{dtype}",
            random_grads(3, (1, 5), 3, "gbch", dtype),
            image(dtype, (2, 5, 6, 3), "gbch"),
            boxes(3, 5, 6, "gbch"),
            [0, 1, 1],
        )
        add(
            f"crop-width-1-{dtype}",
            random_grads(3, (5, 1), 3, "gbcw", dtype),
            image(dtype, (2, 5, 6, 3), "gbcw"),
            boxes(3, 5, 6, "gbcw"),
            [1, 0, 1],
        )
    add(
        "partly-outside",
        random_grads(2, (4, 5), 2, "gbpo"),
        photo,
        [[-0.5, -0.5, 1.5, 1.5], [1.2, -0.3, -0.1, 0.7]],
        [0, 1],
    )
    add("wholly-outside", random_grads(1, (3, 3), 2, "gbwo"), photo, [1.5, 1.5, 2.5, 2.5], [0])
    add("on-grid", random_grads(1, (5, 6), 2, "gbog"), photo, [0, 0, 1, 1], [1])
    add("zero-area", random_grads(1, (2, 3), 2, "gbza"), photo, [0.3, 0.6, 0.3, 0.6], [0])
    add(
        "flipped",
        random_grads(2, (3, 4), 2, "gbfl"),
        photo,
        [[1, 0.9, 0, 0.1], [0.8, 0.7, 0.2, 0.3]],
        [0, 1],
    )
    add(
        "image-height-1",
        random_grads(1, (2, 3), 1, "gbh1"),
        np.array([[0, 1, 2]], F32).reshape(1, 1, 3, 1),
        [-5, 0, 7, 1],
        [0],
    )
    add(
        "image-width-1",
        random_grads(1, (3, 2), 1, "gbw1"),
        np.array([0, 1, 2], F32).reshape(1, 3, 1, 1),
        [0, -3, 1, 4],
        [0],
    )
    add(
        "edge-overshoot-height-58-crop-8",
        random_grads(1, (8, 2), 1, "gbeo"),
        image("float32", (1, 58, 2, 1), "gbeo"),
        [0, 0, 1, 1],
        [0],
    )
    add("huge-1e6", random_grads(1, (3, 3), 2, "gbh6"), photo, [-1e6, -1e6, 1e6, 1e6], [0])
    add(
        "huge-3e38-span-overflows",
        random_grads(2, (3, 3), 2, "gb38"),
        photo,
        [[-3e38, 0, 3e38, 1], [0.1, 0.2, 0.7, 0.9]],
        [0, 1],
    )
    add(
        "inf-pixel",
        np.ones((1, 3, 3, 1), F32),
        np.array([[np.inf, 2], [3, 4]], F32).reshape(1, 2, 2, 1),
        [0, 0, 1, 1],
        [0],
    )
    add(
        "box-indices",
        random_grads(5, (3, 3), 2, "gbbi"),
        image("float32", (3, 4, 5, 2), "gbbi"),
        boxes(5, 4, 5, "gbbi"),
        [2, 0, 1, 2, 1],
    )
    add("no-boxes", np.ones((0, 3, 3, 2), F32), photo, np.zeros((0, 4)), [])
    add(
        "depth-0", np.ones((1, 3, 3, 0), F32), np.ones((1, 2, 2, 0), F32), [0.1, 0.2, 0.7, 0.9], [0]
    )
    add(
        "large",
        random_grads(6, (9, 11), 3, "gblg"),
        image("float32", (2, 20, 24, 3), "gblg"),
        boxes(6, 20, 24, "gblg"),
        np.arange(6) % 2,
    )
    g = random_grads(3, (4, 3), 2, "gblayout")
    b = boxes(3, 5, 6, "gblayout")
    for layout in ("strided", "reversed", "read-only", "byteswapped"):
        add(f"layout-grads-{layout}", Laid(g, layout), photo, b, [0, 1, 1], ("channels_last",))
        add(f"layout-image-{layout}", g, Laid(photo, layout), b, [0, 1, 1], ("channels_last",))
        add(f"layout-boxes-{layout}", g, photo, Laid(b, layout), [0, 1, 1], ("channels_last",))
    return cases


def _reproducible(op: str, name: str, kwargs: dict) -> FunctionCase:
    """The same call twice gives the same bits (TensorFlow's determinism tests)."""

    def check(ctx: Context) -> Outcome:
        first, second = (
            check_result(op, ctx.run_backend(op, inputs), inputs)
            for inputs in (ctx.prepare(materialize(kwargs)), ctx.prepare(materialize(kwargs)))
        )
        if first.shape != second.shape or first.tobytes() != second.tobytes():
            differ = int(np.count_nonzero(first != second)) if first.shape == second.shape else -1
            raise FailCase(f"two identical calls gave different results ({differ} elements differ)")
        return Outcome.passed()

    return FunctionCase(
        f"{C}/{op}/{name}",
        op,
        check=check,
        description="two identical calls must give identical bits",
    )


def _reproducibility_cases() -> list[Case]:
    g = random_grads(32, (7, 7), 3, "repro")
    b = boxes(32, 16, 16, "repro", low=0.0, high=1.0)
    indices = np.arange(32, dtype=np.int32) % 2
    cases: list[Case] = []
    for dtype in GRAD_IMAGE_DTYPES:
        cases.append(
            _reproducible(
                "grad_image",
                f"reproducible-{dtype}",
                {
                    "grads": g,
                    "boxes": b,
                    "box_indices": indices,
                    "image_shape": (2, 16, 16, 3),
                    "dtype": dtype,
                },
            )
        )
    cases.append(
        _reproducible(
            "grad_boxes",
            "reproducible",
            {
                "grads": g,
                "image": image("float32", (2, 16, 16, 3), "repro"),
                "boxes": b,
                "box_indices": indices,
            },
        )
    )
    return cases


def gradient_cases() -> list[Case]:
    """Every case of the ``gradients`` category."""
    return [*_grad_image_cases(), *_grad_boxes_cases(), *_reproducibility_cases()]
