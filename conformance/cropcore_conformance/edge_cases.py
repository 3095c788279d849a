"""Category ``edge-cases``: hand-written inputs at the edges of crop_and_resize and crop2d.

Each group names what it pins down; the expected values are the reference backend's. Ids:
``edge-cases/forward/<name>-<method>[-nchw]`` and ``edge-cases/crop2d/<name>``. The groups on box
geometry and nearest's rounding are in :mod:`cropcore_conformance.edge_geometry`.
"""

from __future__ import annotations

import numpy as np

from cropcore.spec import IMAGE_DTYPES, METHODS
from cropcore_conformance.builders import (
    boxes,
    forward,
    image,
    nchw,
)
from cropcore_conformance.cases import Case, ValueCase
from cropcore_conformance.edge_geometry import geometry_cases, rounding_cases
from cropcore_conformance.inputs import Laid

__all__ = ["edge_cases"]

C = "edge-cases"
BOTH = ("channels_last", "channels_first")
NHWC = ("channels_last",)
F32 = np.float32


def _huge_and_extrapolation() -> list[Case]:
    photo = image("float32", (1, 5, 6, 2), "photo")
    cases: list[Case] = []
    big = float(np.finfo(F32).max)
    for name, box_values, crop in [
        ("huge-1e6-symmetric", [-1e6, -1e6, 1e6, 1e6], (3, 3)),
        ("huge-1e6-one-sided", [0, 0, 1e6, 1e6], (3, 4)),
        ("huge-1e30-flipped", [1e30, 1e30, -1e30, -1e30], (3, 3)),
        # The span overflows float32: TensorFlow's CPU kernel segfaults; in cropcore a sample
        # coordinate that is not finite is outside the image.
        ("huge-3e38-span-overflows", [-3e38, 0, 3e38, 1], (3, 3)),
        ("huge-3e38-crop-height-1", [[-3e38, 0, 3e38, 1], [3e38, 0, 3e38, 1]], (1, 4)),
        ("huge-3e38-crop-width-1", [[0, -3e38, 1, 3e38], [0, -3e38, 1, -3e38]], (3, 1)),
        ("huge-float32-max-everywhere", [big, big, big, big], (2, 2)),
        ("huge-float32-max-span", [-big, -big, big, big], (3, 3)),
        ("huge-mixed-with-normal", [[0, -3e38, 1, 3e38], [0.2, 0.1, 0.9, 0.8]], (3, 3)),
    ]:
        cases += forward(C, name, photo, box_values, crop_size=crop, extrapolation_value=-1.0)
    inner = [-0.3, -0.2, 1.2, 1.4]
    for name, value in [
        ("nan", float("nan")),
        ("inf", float("inf")),
        ("minus-inf", float("-inf")),
        ("negative-zero", -0.0),
        ("0.1-rounds-to-float32", 0.1),
        ("1e30", 1e30),
        ("float32-max", big),
        ("1e40-overflows-to-inf", 1e40),
    ]:
        cases += forward(
            C,
            f"extrapolation-{name}",
            photo,
            inner,
            crop_size=(4, 5),
            extrapolation_value=value,
            formats=BOTH,
        )
    return cases


def _shapes() -> list[Case]:
    photo = image("float32", (1, 5, 6, 2), "photo")
    batch = image("float32", (3, 4, 5, 2), "batch")
    cases: list[Case] = []
    no_boxes, no_indices = np.zeros((0, 4), F32), np.zeros(0, np.int32)
    # (name, image, boxes, box indices, crop size, data formats)
    # fmt: off
    rows = [
        ("no-boxes", photo, no_boxes, no_indices, (3, 3), BOTH),
        ("no-boxes-batch-0", np.zeros((0, 3, 3, 1), F32), no_boxes, no_indices, (2, 2), BOTH),
        ("no-boxes-depth-0", np.zeros((2, 3, 3, 0), F32), no_boxes, no_indices, (2, 2), NHWC),
        ("depth-0", np.zeros((2, 4, 5, 0), F32), boxes(3, 4, 5, "d0"), [0, 1, 1], (3, 2), BOTH),
        ("depth-1", image("uint8", (2, 4, 5, 1), "d1"), boxes(3, 4, 5, "d1"), [1, 0, 1], (3, 2),
         BOTH),
        ("depth-7", image("float32", (2, 4, 5, 7), "d7"), boxes(3, 4, 5, "d7"), [1, 0, 1], (3, 4),
         BOTH),
        ("box-indices", batch, boxes(7, 4, 5, "bi"), [2, 0, 1, 2, 0, 1, 2], (3, 4), BOTH),
        ("box-indices-last-image", batch, boxes(3, 4, 5, "last"), [2, 2, 2], (2, 3), NHWC),
        ("box-indices-same-box-every-image", batch, np.tile([[0.1, 0.2, 0.8, 0.9]], (3, 1)),
         [0, 1, 2], (3, 3), NHWC),
        ("many-boxes", image("float32", (2, 8, 9, 3), "many"), boxes(64, 8, 9, "many"),
         np.arange(64) % 2, (5, 5), NHWC),
    ]
    # fmt: on
    for name, img, box_values, box_indices, crop_size, formats in rows:
        indices = np.asarray(box_indices, np.int32)
        cases += forward(C, name, img, box_values, indices, crop_size, formats=formats)
    cases += forward(
        C,
        "large-crop",
        image("float32", (1, 20, 24, 3), "large"),
        [[0.1, 0.05, 0.9, 0.95], [-0.1, 1.1, 1.1, -0.1]],
        np.zeros(2, np.int32),
        (33, 41),
        extrapolation_value=0.5,
        formats=BOTH,
    )
    return cases


def _dtypes() -> list[Case]:
    cases: list[Case] = []
    for dtype in IMAGE_DTYPES:
        img = image(dtype, (2, 5, 6, 3), "dtype")
        cases += forward(
            C,
            f"dtype-{dtype}",
            img,
            boxes(5, 5, 6, "dtype", dtype),
            np.array([0, 1, 1, 0, 1], np.int32),
            (4, 5),
            formats=BOTH,
            extrapolation_value=-7.0,
        )
    for dtype in ("uint8", "int8", "uint16", "int16", "int32", "int64"):
        info = np.iinfo(dtype)
        extremes = np.array([info.min, info.max, info.max, info.min], dtype).reshape(1, 2, 2, 1)
        cases += forward(C, f"dtype-{dtype}-extremes", extremes, [0, 0, 1, 1], crop_size=(3, 3))
    cases += forward(
        C,
        "dtype-int64-beyond-2-24",
        np.array([2**53 + 1, -(2**40) - 1, 2**24 + 1, 7], np.int64).reshape(1, 2, 2, 1),
        [0, 0, 1, 1],
        crop_size=(3, 3),
    )
    cases += forward(
        C,
        "dtype-float64-detail-lost",
        np.array([1 + 1e-12, 1e300, -1e-300, 2 / 3], np.float64).reshape(1, 2, 2, 1),
        [[0, 0, 0, 0], [0, 0, 1, 1]],
        np.zeros(2, np.int32),
        crop_size=(2, 2),
    )
    cases += forward(
        C,
        "dtype-float16-subnormal-and-max",
        np.array([6e-8, 65504, -65504, 6.1e-5], np.float16).reshape(1, 2, 2, 1),
        [0, 0, 1, 1],
        crop_size=(3, 3),
    )
    for dtype in ("float16", "float32", "float64"):
        special = {
            "nan": [[np.nan, 2], [3, 4]],
            "inf": [[np.inf, 2], [3, 4]],
            "minus-inf": [[1, 2], [3, -np.inf]],
        }
        for label, values in special.items():
            cases += forward(
                C,
                f"{label}-pixel-{dtype}",
                np.array(values, dtype).reshape(1, 2, 2, 1),
                [0, 0, 1, 1],
                crop_size=(3, 3),
            )
    return cases


def _layouts() -> list[Case]:
    """Strided, reversed, Fortran-order, read-only and byte-swapped inputs; argument forms."""
    cases: list[Case] = []
    img = image("float32", (2, 5, 6, 3), "layout")
    bx = boxes(4, 5, 6, "layout")
    idx = np.array([1, 0, 1, 1], np.int32)

    def add(
        name, image_values=img, box_values=bx, box_indices=idx, formats=("channels_last",), **kw
    ):
        cases.extend(
            forward(
                C,
                name,
                image_values,
                box_values,
                box_indices,
                (4, 3),
                extrapolation_value=-1.0,
                formats=formats,
                **kw,
            )
        )

    for layout in ("strided", "reversed", "fortran", "read-only", "byteswapped"):
        add(f"layout-image-{layout}", Laid(img, layout), formats=BOTH)
        add(f"layout-boxes-{layout}", box_values=Laid(bx, layout))
        add(f"layout-box-indices-{layout}", box_indices=Laid(idx, layout))
    for method in METHODS:
        cases.append(
            ValueCase(
                f"{C}/forward/layout-image-transposed-nchw-{method}",
                "forward",
                kwargs={
                    "image": Laid(nchw(img), "transposed"),
                    "boxes": bx,
                    "box_indices": idx,
                    "crop_size": (4, 3),
                    "method": method,
                    "extrapolation_value": -1.0,
                    "data_format": "channels_first",
                },
            )
        )
    add(
        "layout-all-read-only",
        Laid(img, "read-only"),
        Laid(bx, "read-only"),
        Laid(idx, "read-only"),
    )
    for dtype in ("uint16", "int16", "int32", "int64", "float16", "float64"):
        add(
            f"layout-image-byteswapped-{dtype}",
            Laid(image(dtype, (2, 5, 6, 3), "swap"), "byteswapped"),
        )
    # Argument forms the core converts: lists, other integer and float dtypes, NumPy scalars.
    add("args-boxes-float64", box_values=bx.astype(np.float64), keep_boxes=True)
    add("args-boxes-float16", box_values=bx.astype(np.float16), keep_boxes=True)
    add(
        "args-boxes-int64",
        box_values=np.array([[0, 0, 1, 1], [1, 0, 0, 1]], np.int64),
        box_indices=np.array([0, 1], np.int64),
        keep_boxes=True,
    )
    add("args-boxes-list", box_values=bx.tolist(), keep_boxes=True)
    add("args-box-indices-int64", box_indices=idx.astype(np.int64))
    add("args-box-indices-uint8", box_indices=idx.astype(np.uint8))
    add("args-box-indices-list", box_indices=idx.tolist())
    for name, crop_size in [
        ("args-crop-size-numpy-int32", np.array([4, 3], np.int32)),
        ("args-crop-size-numpy-int64-scalars", (np.int64(4), np.int64(3))),
        ("args-crop-size-list", [4, 3]),
    ]:
        cases.extend(forward(C, name, img, bx, idx, crop_size, extrapolation_value=-1.0))
    for name, value in [
        ("args-extrapolation-numpy-float32", np.float32(-1.5)),
        ("args-extrapolation-int", -2),
        ("args-extrapolation-numpy-float64", np.float64(0.1)),
    ]:
        cases.extend(forward(C, name, img, bx, idx, (4, 3), extrapolation_value=value))
    return cases


def _crop2d() -> list[Case]:
    cases: list[Case] = []
    x = image("float32", (2, 7, 9, 3), "crop2d")

    def add(name, values, cropping=((1, 2), (3, 4)), data_format="channels_last"):
        kwargs = {"x": values, "cropping": cropping, "data_format": data_format}
        cases.append(ValueCase(f"{C}/crop2d/{name}", "crop2d", kwargs=kwargs))

    for data_format, tag, values in (
        ("channels_last", "", x),
        ("channels_first", "-nchw", nchw(x)),
    ):
        for dtype in (*IMAGE_DTYPES, "bool", "uint32", "uint64", "complex64", "complex128"):
            if dtype == "bool":
                v = values > 0
            elif dtype.startswith("complex"):
                v = (values + 1j * values[::-1]).astype(dtype)
            else:
                v = image(dtype, values.shape, "crop2d")
            add(f"dtype-{dtype}{tag}", v, data_format=data_format)
        for name, cropping in [
            ("int", 2),
            ("int-zero", 0),
            ("pair", (1, 2)),
            ("pair-list", [1, 2]),
            ("pairs", ((1, 2), (3, 4))),
            ("lists", [[1, 2], [3, 4]]),
            ("no-bottom-no-right", ((1, 0), (3, 0))),
            ("only-bottom-right", ((0, 2), (0, 4))),
            ("zero-pairs", ((0, 0), (0, 0))),
            ("leaves-one-row-one-column", ((3, 3), (4, 4))),
            ("numpy-int-entries", ((np.int64(1), np.int32(2)), (np.uint8(3), 4))),
            ("numpy-int", np.int64(2)),
        ]:
            add(f"cropping-{name}{tag}", values, cropping, data_format)
    add("default-cropping", x, ((0, 0), (0, 0)))
    add("data-format-none", x, ((1, 2), (3, 4)), None)
    add("data-format-upper-case", nchw(x), ((1, 2), (3, 4)), "CHANNELS_FIRST")
    add("single-pixel-image", x[:, :1, :1], 0)
    add("depth-0", np.zeros((2, 7, 9, 0), np.float32))
    add("batch-0", np.zeros((0, 7, 9, 3), np.float32))
    special = np.array([np.nan, -0.0, np.inf, -np.inf, 1e-45, -1.0] * 21, np.float32).reshape(
        1, 7, 9, 2
    )
    add("special-values", special)
    for layout in ("strided", "reversed", "fortran", "read-only", "byteswapped"):
        add(f"layout-{layout}", Laid(x, layout))
    add("layout-transposed-nchw", Laid(nchw(x), "transposed"), data_format="channels_first")
    return cases


def edge_cases() -> list[Case]:
    """Every case of the ``edge-cases`` category."""
    return [
        *geometry_cases(),
        *rounding_cases(),
        *_huge_and_extrapolation(),
        *_shapes(),
        *_dtypes(),
        *_layouts(),
        *_crop2d(),
        *_tininess(),
    ]


def _tininess() -> list[Case]:
    """Results just below FLT_MIN: x86 decides underflow after rounding to 24 bits, so TF's
    flush-to-zero turns an exact 2**-126 * (1 - 2**-24) into 0 where gradual underflow rounds it up
    to 2**-126. TF 2.21 (observed): ``window-product`` 0, ``above-window-product`` 2**-126,
    ``window-gradient`` all 0, ``window-float64-pixel`` [0, 2**-126], ``window-quotient`` and
    ``window-centre`` all 0 (a sample coordinate of 2**-126 would give 2**-26)."""
    from cropcore_conformance.builders import grad_image

    tiny = F32(2.0**-126)
    lerp = F32(1 - 2.0**-24)  # a crop-1 centre at 1 - 2**-24 on a 2-row image
    above = F32(1 - 2.0**-23)  # 2**-126 * (1 + 2**-23) * (1 - 2**-23) rounds to 2**-126
    cases: list[Case] = []
    cases += forward(
        C, "window-product", np.array([0, tiny], F32).reshape(1, 2, 1, 1),
        [lerp, 0, lerp, 0], crop_size=(1, 1), methods=("bilinear",),
    )  # fmt: skip
    cases += forward(
        C, "above-window-product",
        np.array([0, tiny * (1 + F32(2.0**-23))], F32).reshape(1, 2, 1, 1),
        [above, 0, above, 0], crop_size=(1, 1), methods=("bilinear",),
    )  # fmt: skip
    cases += grad_image(
        C, "window-gradient", np.full((1, 1, 1, 1), tiny, F32), [lerp, 0, lerp, 0], [0],
        (1, 2, 1, 1), methods=("bilinear",),
    )  # fmt: skip
    cases += forward(
        C, "window-float64-pixel",
        np.array([2.0**-126 * (1 - 2.0**-24), 2.0**-126 * (1 - 2.0**-26)]).reshape(1, 2, 1, 1),
        [0, 0, 1, 0], crop_size=(2, 1), methods=("nearest", "bilinear"),
    )  # fmt: skip
    # Sample coordinates: height_scale = span / 2 and the crop-1 centre 0.5 * span, both tiny.
    span = F32(2.0**-125 * (1 - 2.0**-24))
    steep = np.array([0, 2.0**100], F32).reshape(1, 2, 1, 1)
    cases += forward(
        C, "window-quotient", steep, [0, 0, span, 0], crop_size=(3, 1), methods=("bilinear",)
    )
    cases += forward(
        C, "window-centre", steep, [span, 0, 0, 0], crop_size=(1, 1), methods=("bilinear",)
    )
    return cases
