"""Category ``sizes``: sizes and values where fast kernels change strategy.

A kernel that tiles, chunks or vectorises has seams the small cases of the other categories never
reach: the last partial chunk of boxes, the tail channels of a vector loop, tiles of crop rows or
columns, narrow index types, and values whose conversion or rounding differs between two
plausible formulations. These cases sit on both sides of each seam, small in bytes (thin images,
one channel where the seam is not the channel count), so the category stays fast:

- box counts around 128, 256 and 1024 (one short, one past), for all three crop_and_resize ops,
  with enough output for a serial loop to turn parallel at 128 boxes;
- depths that are not multiples of 4, 8 or 16 (1, 2, 3, 5, 7, 13, 17, 33), both layouts;
- crop sizes beyond 64 and 256 in each dimension;
- images wider or taller than 32767 and 65535 pixels (one row or one column);
- int64 pixels beyond 2**53 whose direct cast to float32 differs from a cast through float64;
- the nearest-neighbour rounding traps (a coordinate of 0.49999997, a crop of size 1 whose centre
  rounds differently in float64 and float32) for the forward op and both gradients.

Expected values come from the reference backend at run time. Ids:
``sizes/<op>/<name>[-<method>][-nchw]``.
"""

from __future__ import annotations

import numpy as np

from cropcore_conformance.builders import boxes, forward, grad_boxes, grad_image, image, rng
from cropcore_conformance.cases import Case

__all__ = ["size_cases"]

C = "sizes"
BOTH = ("channels_last", "channels_first")


def _grads(n: int, crop: tuple[int, int], depth: int, *key) -> np.ndarray:
    return rng("grads", n, *crop, depth, *key).standard_normal((n, *crop, depth)).astype(np.float32)


def _all_ops(
    name, img, box_values, indices, crop, *, formats=BOTH, methods=("bilinear", "nearest")
):
    grads = _grads(len(box_values), crop, img.shape[3], name)
    return [
        *forward(C, name, img, box_values, indices, crop, methods=methods, formats=formats),
        *grad_image(
            C, name, grads, box_values, indices, img.shape, methods=methods, formats=formats
        ),
        *grad_boxes(C, name, grads, img, box_values, indices, formats=formats),
    ]


def _box_counts() -> list[Case]:
    cases: list[Case] = []
    # 16 x 16 crops of one channel: 128 boxes are 32768 output elements, where a kernel may
    # switch from a serial to a parallel loop (cropcore's numba backend does)
    for n in (127, 128, 129, 255, 256, 257, 1023, 1024, 1025):
        img = image("float32", (2, 5, 6, 1), "count", n)
        b = boxes(n, 5, 6, "count")
        indices = rng("indices", n).integers(0, 2, n).astype(np.int32)
        cases += _all_ops(f"boxes-{n}", img, b, indices, (16, 16), methods=("bilinear",))
    return cases


def _depths() -> list[Case]:
    cases: list[Case] = []
    for depth in (1, 2, 3, 5, 7, 13, 17, 33):
        img = image("float32", (2, 6, 7, depth), "depth")
        b = boxes(6, 6, 7, "depth", depth)
        indices = np.array([0, 1, 1, 0, 1, 0], np.int32)
        cases += _all_ops(f"depth-{depth}", img, b, indices, (3, 4))
    return cases


def _crop_sizes() -> list[Case]:
    cases: list[Case] = []
    for crop in ((1, 300), (300, 1), (65, 3), (3, 65), (257, 2), (2, 257)):
        img = image("float32", (1, 9, 11, 2), "crop", *crop)
        b = boxes(3, 9, 11, "crop", *crop)
        cases += _all_ops(f"crop-{crop[0]}x{crop[1]}", img, b, np.zeros(3, np.int32), crop)
    return cases


def _long_images() -> list[Case]:
    cases: list[Case] = []
    b = np.array(
        [[0, 0, 1, 1], [0.2, 0.999, 0.9, 0.5001], [0, 0.49999, 1, 0.50002], [1, 1, 0, 0]],
        np.float32,
    )
    for size in (32767, 32769, 65535, 65537):
        for shape, name in (((1, 1, size, 1), "wide"), ((1, size, 1, 1), "tall")):
            img = image("float32", shape, name)
            crop = (2, 300) if name == "wide" else (300, 2)
            cases += _all_ops(f"{name}-{size}", img, b, np.zeros(4, np.int32), crop)
    return cases


def _int64_beyond_2_53() -> list[Case]:
    # 2**60 + 2**36 + 1: cast directly to float32 it rounds up to 2**60 + 2**37; through float64
    # (to 2**60 + 2**36, a tie) it rounds to even, 2**60. Likewise for the others.
    values = np.array(
        [
            2**60 + 2**36 + 1,
            -(2**60) - 2**36 - 1,
            2**53 + 1,
            2**62 + 2**38 + 3,
            2**55 + 2**31 + 1,
            7,
        ],
        np.int64,
    )
    img = np.resize(values, (1, 3, 4, 2)).astype(np.int64)
    b = np.array([[0, 0, 1, 1], [1, 0.3, 0, 0.7], [0.5, 0.5, 0.5, 0.5]], np.float32)
    return [
        *forward(C, "int64-beyond-2-53", img, b, np.zeros(3, np.int32), (3, 5), formats=BOTH),
        *grad_boxes(
            C,
            "int64-beyond-2-53",
            _grads(3, (3, 5), 2, "int64"),
            img,
            b,
            np.zeros(3, np.int32),
            formats=BOTH,
        ),
    ]


def _rounding_traps() -> list[Case]:
    below_half = float(np.nextafter(np.float32(0.5), np.float32(0)))  # 0.49999997
    traps = np.array(
        [
            [below_half, below_half, 1, 1],  # in_y = in_x = 0.49999997: nearest is 0, not 1
            [0.2, 0.2, 0.79999995, 0.79999995],  # crop size 1: the centre's float64 rounding
            [0.25, 0.25, 0.75, 0.75],
            [1, 1, below_half, below_half],  # flipped
        ],
        np.float32,
    )
    cases: list[Case] = []
    for crop in ((2, 2), (1, 1), (1, 3)):
        img = image("float32", (1, 2, 2, 1), "traps") if crop == (2, 2) else None
        img = image("float32", (1, 3, 5, 2), "traps", *crop) if img is None else img
        name = f"nearest-traps-{crop[0]}x{crop[1]}"
        grads = _grads(4, crop, img.shape[3], name)
        cases += forward(C, name, img, traps, np.zeros(4, np.int32), crop, formats=BOTH)
        cases += grad_image(
            C,
            name,
            grads,
            traps,
            np.zeros(4, np.int32),
            img.shape,
            methods=("nearest",),
            formats=BOTH,
        )
    return cases


def size_cases() -> list[Case]:
    return [
        *_box_counts(),
        *_depths(),
        *_crop_sizes(),
        *_long_images(),
        *_int64_beyond_2_53(),
        *_rounding_traps(),
    ]
