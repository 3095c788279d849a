"""Category ``edge-cases``, the geometry of boxes and nearest's rounding: plain and flipped
resizes, degenerate boxes, crop size 1, boxes partly or wholly outside the image, the inclusive
range test, TensorFlow's edge overshoot, images of one row or column, and rounding ties (see
:mod:`cropcore_conformance.edge_cases` for the category).
"""

from __future__ import annotations

import numpy as np

from cropcore_conformance.builders import forward, image
from cropcore_conformance.cases import Case

__all__ = ["geometry_cases", "rounding_cases"]

C = "edge-cases"
BOTH = ("channels_last", "channels_first")
F32 = np.float32


def geometry_cases() -> list[Case]:
    photo = image("float32", (1, 5, 6, 2), "photo")
    big = image("float32", (1, 9, 10, 2), "big")
    cases: list[Case] = []

    def add(name, box_values, crop_size=(3, 3), ev=0.0, img=photo, formats=BOTH, **kw):
        cases.extend(
            forward(
                C,
                name,
                img,
                box_values,
                crop_size=crop_size,
                extrapolation_value=ev,
                formats=formats,
                **kw,
            )
        )

    # Plain resizes, then flipped boxes (y1 > y2 and/or x1 > x2 mirror the crop).
    add("identity", [0, 0, 1, 1], (5, 6))
    add("upsample", [0, 0, 1, 1], (9, 11))
    add("downsample", [0, 0, 1, 1], (3, 4), img=big)
    add("inner-box", [0.2, 0.3, 0.7, 0.9], (4, 5))
    add("flipped-vertical", [1, 0, 0, 1], (5, 6))
    add("flipped-horizontal", [0, 1, 1, 0], (5, 6))
    add("flipped-both", [1, 1, 0, 0], (5, 6))
    add("flipped-inner", [0.9, 0.8, 0.1, 0.2], (4, 3))
    add("flipped-upsample", [1, 0.9, 0.05, 0.1], (7, 8), img=big)
    # Degenerate boxes: every sample of a zero-area box is the same point.
    add("zero-area-point-off-grid", [0.3, 0.7, 0.3, 0.7], (3, 3))
    add("zero-area-point-on-grid", [0.25, 0.2, 0.25, 0.2], (2, 2))
    add("zero-height-line", [0.5, 0, 0.5, 1], (3, 4))
    add("zero-width-line", [0, 0.4, 1, 0.4], (4, 2))
    # Crop size 1 samples the box centre (computed partly in float64 by TensorFlow).
    several = [[0, 0, 1, 1], [0.3, 0.1, 0.6, 0.9], [1, 1, 0, 0], [0.1, 0.7, 0.9, 0.2]]
    add("crop-height-1", several, (1, 5))
    add("crop-width-1", several, (4, 1))
    add("crop-1x1", [*several, [0, 0, 0.5, 1]], (1, 1))
    add(
        "crop-1x1-centre-outside",
        [[1, 1, 1.5, 1.5], [-1, -1, 0.5, 0.5], [0.5, 1.2, 1.5, 1.2]],
        (1, 1),
        ev=-2.0,
    )
    add("crop-1x1-centre-on-last-pixel", [0.5, 0.5, 1.5, 1.5], (1, 1), ev=-2.0)
    add("crop-height-1-width-2", [[0.2, -0.5, 0.6, 1.5]], (1, 2), ev=-3.0)
    # A centre whose float32 is a negative subnormal flushes to -0.0 (TF runs with flush-to-zero):
    # inside the image, not extrapolated. Sides from a live comparison that caught a backend out.
    add(
        "crop-1-centre-subnormal",
        [
            [
                2.2504417533234157e-38,
                -9.461006711735435e-41,
                -0.16201534867286682,
                -2.2744949013337048e-38,
            ],
            [
                4.3953783439693516e-38,
                -2.0742395416924381e-38,
                1.5264577865600586,
                -6.25015268589248e-39,
            ],
        ],
        (3, 1),
        ev=-1.0,
        img=image("float32", (1, 4, 2, 2), "narrow"),  # width 2: the centre is not scaled up
    )
    # Boxes partly or wholly outside the image: whole samples become extrapolation_value.
    add("partly-outside-top", [-0.5, 0, 0.5, 1], (5, 5), ev=-1.0)
    add("partly-outside-bottom", [0.5, 0, 1.5, 1], (5, 5), ev=-1.0)
    add("partly-outside-left", [0, -0.5, 1, 0.5], (5, 5), ev=-1.0)
    add("partly-outside-right", [0, 0.5, 1, 1.5], (5, 5), ev=-1.0)
    add("partly-outside-all-sides", [-0.5, -0.5, 1.5, 1.5], (7, 7), ev=-1.0)
    add("partly-outside-flipped", [1.3, 1.2, -0.2, -0.4], (6, 5), ev=-1.0)
    add("wholly-outside-above", [-2, 0, -1, 1], ev=3.0)
    add("wholly-outside-below", [1.5, 0, 2.5, 1], ev=3.0)
    add("wholly-outside-left", [0, -2, 1, -1], ev=3.0)
    add("wholly-outside-right", [0, 1.5, 1, 2.5], ev=3.0)
    add("wholly-outside-corner", [-2, -2, -1, -1], ev=3.0)
    # The range test is 0 <= coordinate <= size - 1, inclusive; -0.0 is inside.
    quad = np.arange(4, dtype=F32).reshape(1, 2, 2, 1) + 1
    add("negative-zero-is-inside", [-0.0, -0.0, 1, 1], (2, 2), ev=-1.0, img=quad)
    add("tiny-negative-is-outside", [-1e-7, 0, 1, 1], (2, 2), ev=-1.0, img=quad)
    below_one, past_one = (float(np.nextafter(F32(1), F32(to))) for to in (0, 2))
    # fmt: off
    add("just-past-one-is-outside", [0, 0, past_one, 1], (2, 2), ev=-1.0, img=quad)
    add("just-below-one-is-inside", [0, 0, below_one, 1], (2, 2), ev=-1.0, img=quad)
    # TensorFlow's float32 step can overshoot size - 1 on the last sample: then it is extrapolated.
    add("edge-overshoot-height-58-crop-8", [0, 0, 1, 1], (8, 3), ev=-1.0,
        img=image("float32", (1, 58, 3, 1), "overshoot"))
    add("edge-overshoot-width-4-crop-22", [0, 0, 1, 1], (2, 22), ev=-1.0,
        img=image("float32", (1, 2, 4, 2), "overshoot"))
    # 1-pixel, 1-row and 1-column images are never extrapolated along their size-1 axis.
    row, column = image("float32", (1, 1, 6, 2), "row"), image("float32", (1, 5, 1, 2), "column")
    add("image-1x1", [[0, 0, 1, 1], [-3, -3, 4, 4], [0.5, 0.5, 0.5, 0.5]], (3, 3), ev=-1.0,
        img=np.array([5, -6], F32).reshape(1, 1, 1, 2))
    add("image-height-1", [[-5, 0, 7, 1], [0, 0, 1, 1], [0.3, -0.5, 0.3, 1.5]], (2, 3), ev=-1.0,
        img=row)
    add("image-width-1", [[0, -3, 1, 4], [0, 0, 1, 1], [-0.5, 0.3, 1.5, 0.3]], (3, 2), ev=-1.0,
        img=column)
    add("image-height-1-crop-1", [[-5, 0, 7, 1]], (1, 1), ev=-1.0, img=row)
    # fmt: on
    return cases


def rounding_cases() -> list[Case]:
    """Nearest rounds half away from zero (roundf), not half to even, and not floorf(x + 0.5f)."""
    cases: list[Case] = []
    grid5 = np.arange(25, dtype=F32).reshape(1, 5, 5, 1)
    column5 = np.arange(5, dtype=F32).reshape(1, 5, 1, 1)
    pair = np.array([10, 20], F32).reshape(1, 2, 1, 1)
    # Coordinates 0.5, 1.5, 2.5, 3.5 exactly, in both axes.
    cases += forward(
        C,
        "nearest-ties-every-half",
        grid5,
        [0.125, 0.125, 0.875, 0.875],
        crop_size=(4, 4),
        formats=BOTH,
    )
    cases += forward(C, "nearest-tie-2.5", column5, [0.625, 0, 0.625, 0], crop_size=(1, 1))
    cases += forward(C, "nearest-tie-0.5", column5, [0.125, 0, 0.125, 0], crop_size=(1, 1))
    cases += forward(
        C,
        "nearest-ties-upsample-2-to-3",
        np.array([[1, 2], [3, 4]], F32).reshape(1, 2, 2, 1),
        [0, 0, 1, 1],
        crop_size=(3, 3),
    )
    cases += forward(
        C,
        "nearest-ties-upsample-11-to-21",
        image("float32", (1, 11, 11, 1), "ties"),
        [0, 0, 1, 1],
        crop_size=(21, 21),
    )
    cases += forward(
        C, "nearest-ties-flipped", grid5, [0.875, 0.875, 0.125, 0.125], crop_size=(4, 4)
    )
    # 0.49999997 rounds to 0; floorf(0.49999997f + 0.5f) gives 1 (the float32 sum rounds up).
    below_half = float(np.nextafter(F32(0.5), F32(0)))
    cases += forward(
        C, "nearest-0.49999997-rounds-down", pair, [below_half, 0, below_half, 0], crop_size=(2, 1)
    )
    cases += forward(
        C,
        "nearest-0.49999997-crop-1",
        pair,
        [0, 0, float(np.nextafter(F32(1), F32(0))), 0],
        crop_size=(1, 1),
    )
    above_half = float(np.nextafter(F32(0.5), F32(1)))
    cases += forward(
        C, "nearest-0.50000006-rounds-up", pair, [above_half, 0, above_half, 0], crop_size=(2, 1)
    )
    return cases
