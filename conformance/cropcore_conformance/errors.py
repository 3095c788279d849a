"""Category ``errors``: bad inputs are refused with the reference's exception type.

cropcore validates every call before a backend sees it, so these cases mostly certify that a
backend does not get around that: by a code path of its own, or for inputs of its own array
library (each case is also run with the inputs converted to the backend's library). The
``accepts-*`` cases are the other side: inputs at the edge of validity must be computed, not
refused. Ids: ``errors/<op>/<name>``; the recorded TensorFlow and Keras refusals add
``errors/<op>/tf-<name>`` and ``errors/crop2d/keras-<name>`` (see :mod:`.vectors`).
"""

from __future__ import annotations

import numpy as np

from cropcore_conformance.builders import error, forward, grad_boxes, grad_image, image
from cropcore_conformance.cases import Case

__all__ = ["error_cases"]

F32 = np.float32


def _forward_errors() -> list[Case]:
    img = np.arange(4, dtype=F32).reshape(1, 2, 2, 1)
    box = np.array([[0, 0, 1, 1]], F32)
    index = np.array([0], np.int32)
    base = {"image": img, "boxes": box, "box_indices": index, "crop_size": (3, 3)}
    cases = []

    def bad(name, **changes):
        cases.append(error("forward", name, **{**base, **changes}))

    bad("image-rank-3", image=img[0])
    bad("image-rank-5", image=img[None])
    bad("image-height-0", image=np.zeros((1, 0, 2, 1), F32))
    bad("image-width-0", image=np.zeros((1, 2, 0, 1), F32))
    bad("image-height-0-nchw", image=np.zeros((1, 1, 0, 2), F32), data_format="channels_first")
    bad("image-none", image=None)
    bad("image-string", image="image")
    bad("image-object-array", image=np.array([[[[object()]]]]))
    for dtype in ("bool", "complex64", "complex128", "uint32", "uint64"):
        bad(f"image-dtype-{dtype}", image=img.astype(dtype))
    bad("boxes-rank-1", boxes=box[0])
    bad("boxes-rank-1-empty", boxes=np.zeros(0, F32), box_indices=np.zeros(0, np.int32))
    bad("boxes-rank-3", boxes=box[None])
    bad("boxes-3-columns", boxes=box[:, :3])
    bad("boxes-5-columns", boxes=np.zeros((1, 5), F32))
    bad("boxes-empty-5-columns", boxes=np.zeros((0, 5), F32), box_indices=np.zeros(0, np.int32))
    for label, value in [("nan", np.nan), ("inf", np.inf), ("minus-inf", -np.inf)]:
        b = box.copy()
        b[0, 2] = value
        bad(f"boxes-{label}", boxes=b)
    bad("boxes-1e40-overflows-float32", boxes=np.array([[1e40, 0, 0, 0]]))
    bad("boxes-complex", boxes=box.astype(np.complex64))
    bad("boxes-bool", boxes=box.astype(bool))
    bad("boxes-strings", boxes=[["a", "b", "c", "d"]])
    bad("box-indices-rank-0", box_indices=np.int32(0))
    bad("box-indices-rank-2", box_indices=index[None])
    bad(
        "box-indices-rank-2-empty",
        boxes=np.zeros((0, 4), F32),
        box_indices=np.zeros((0, 1), np.int32),
    )
    bad("box-indices-too-many", box_indices=np.array([0, 0], np.int32))
    bad("box-indices-too-few", boxes=np.repeat(box, 2, axis=0))
    bad("box-indices-float", box_indices=np.array([0.0]))
    bad("box-index-equals-batch", box_indices=np.array([1], np.int32))
    bad("box-index-negative", box_indices=np.array([-1], np.int32))
    bad("box-index-int32-max", box_indices=np.array([2**31 - 1], np.int32))
    bad("box-index-beyond-int32", box_indices=np.array([2**40], np.int64))
    bad(
        "box-index-second-of-three",
        image=np.zeros((2, 2, 2, 1), F32),
        boxes=np.repeat(box, 3, axis=0),
        box_indices=np.array([1, 2, 0], np.int32),
    )
    bad("box-index-batch-0-image", image=np.zeros((0, 2, 2, 1), F32))
    bad("crop-size-zero-height", crop_size=(0, 3))
    bad("crop-size-negative-width", crop_size=(3, -1))
    bad("crop-size-three-elements", crop_size=(3, 3, 3))
    bad("crop-size-one-element", crop_size=(3,))
    bad("crop-size-int", crop_size=3)
    bad("crop-size-rank-2-array", crop_size=np.array([[3, 3]], np.int32))
    bad("crop-size-floats", crop_size=(3.0, 3.0))
    bad("crop-size-bool", crop_size=(True, True))
    bad("crop-size-string", crop_size="33")
    bad("crop-size-none", crop_size=None)
    bad(
        "crop-size-overflows-int64",
        image=np.ones((1, 1, 1, 1), F32),
        boxes=np.ones((11, 4), F32),
        box_indices=np.zeros(11, np.int32),
        crop_size=(2065374891, 1145309325),
    )
    bad("crop-size-out-of-memory", crop_size=(2**31 - 1, 2**31 - 1))
    for name, method in [
        ("bicubic", "bicubic"),
        ("capitalised-bilinear", "Bilinear"),
        ("upper-case-nearest", "NEAREST"),
        ("empty", ""),
        ("none", None),
        ("int", 1),
    ]:
        bad(f"method-{name}", method=method)
    bad("extrapolation-value-string", extrapolation_value="a")
    bad("extrapolation-value-none", extrapolation_value=None)
    bad("extrapolation-value-array", extrapolation_value=np.array([0.0, 1.0]))
    bad("extrapolation-value-complex", extrapolation_value=1j)
    bad("data-format-nhwc", data_format="nhwc")
    bad("data-format-int", data_format=1)
    return cases


def _grad_image_errors() -> list[Case]:
    grads = np.ones((1, 3, 3, 1), F32)
    box = np.array([[0, 0, 1, 1]], F32)
    base = {
        "grads": grads,
        "boxes": box,
        "box_indices": np.array([0], np.int32),
        "image_shape": (1, 2, 2, 1),
    }
    cases = []

    def bad(name, **changes):
        cases.append(error("grad_image", name, **{**base, **changes}))

    bad("grads-rank-3", grads=grads[0])
    bad("grads-crop-height-0", grads=np.ones((1, 0, 3, 1), F32))
    bad("grads-integer", grads=grads.astype(np.int32))
    bad("grads-complex", grads=grads.astype(np.complex64))
    bad("grads-count-differs-from-boxes", grads=np.ones((2, 3, 3, 1), F32))
    bad("boxes-3-columns", boxes=box[:, :3])
    bad(
        "boxes-rank-1-empty",
        grads=np.ones((0, 1, 1, 1), F32),
        boxes=np.zeros(0, F32),
        box_indices=np.zeros(0, np.int32),
    )
    bad("boxes-nan", boxes=np.array([[np.nan, 1, 1, 1]], F32))
    bad("boxes-inf", boxes=np.array([[0, 0, np.inf, 1]], F32))
    bad("box-indices-too-many", box_indices=np.array([0, 0], np.int32))
    bad("image-shape-3-elements", image_shape=(1, 2, 2))
    bad("image-shape-height-0", image_shape=(1, 0, 2, 1))
    bad("image-shape-negative-batch", image_shape=(-1, 2, 2, 1))
    bad("image-shape-negative-depth", image_shape=(1, 2, 2, -1))
    bad("image-shape-floats", image_shape=(1.0, 2.0, 2.0, 1.0))
    bad("image-shape-depth-differs-from-grads", image_shape=(1, 2, 2, 2))
    bad("image-shape-out-of-memory", image_shape=(2**40, 2**20, 2**20, 1))
    bad("box-index-equals-batch", box_indices=np.array([1], np.int32))
    bad("box-index-negative", box_indices=np.array([-1], np.int32))
    for dtype in ("uint8", "int32", "bfloat16", "complex64"):
        bad(f"dtype-{dtype}", dtype=dtype)
    bad("method-bicubic", method="bicubic")
    bad("data-format-nchw-string", data_format="NCHW")
    return cases


def _grad_boxes_errors() -> list[Case]:
    grads = np.ones((1, 3, 3, 1), F32)
    img = np.array([[1, 2], [3, 4]], F32).reshape(1, 2, 2, 1)
    box = np.array([[0, 0, 1, 1]], F32)
    base = {"grads": grads, "image": img, "boxes": box, "box_indices": np.array([0], np.int32)}
    cases = []

    def bad(name, **changes):
        cases.append(error("grad_boxes", name, **{**base, **changes}))

    bad("grads-rank-3", grads=grads[0])
    bad("grads-crop-width-0", grads=np.ones((1, 3, 0, 1), F32))
    bad("grads-integer", grads=grads.astype(np.int64))
    bad("image-rank-3", image=img[0])
    bad("image-height-0", image=np.ones((1, 0, 2, 1), F32))
    bad("image-depth-differs-from-grads", image=np.ones((1, 2, 2, 2), F32))
    bad("image-dtype-bool", image=img.astype(bool))
    bad("image-dtype-complex", image=img.astype(np.complex64))
    bad("boxes-3-columns", boxes=box[:, :3])
    bad("boxes-nan", boxes=np.array([[np.nan, 1, 1, 1]], F32))
    bad("box-indices-too-many", box_indices=np.array([0, 0], np.int32))
    bad("grads-count-differs-from-boxes", grads=np.ones((2, 3, 3, 1), F32))
    bad("box-index-equals-batch", box_indices=np.array([1], np.int32))
    bad("box-index-negative", box_indices=np.array([-1], np.int32))
    bad("method-nearest", method="nearest")
    return cases


def _crop2d_errors() -> list[Case]:
    x = np.zeros((2, 7, 9, 3), F32)
    cases = []

    def bad(name, x=x, **kwargs):
        cases.append(error("crop2d", name, x=x, **kwargs))

    for name, cropping in [
        ("negative-int", -1),
        ("one-element", (1,)),
        ("three-elements", (1, 2, 3)),
        ("string", "1"),
        ("string-two-chars", "12"),
        ("none", None),
        ("float", 1.0),
        ("bool", True),
        ("second-entry-three-elements", ((1, 2), (3, 4, 5))),
        ("second-entry-negative", ((1, 2), (3, -4))),
        ("pair-negative", (-1, 2)),
        ("second-entry-string", ((1, 2), "3")),
        ("second-entry-strings", ((1, 2), ("3", "4"))),
        ("fractional-entry", ((1.5, 2), (0, 0))),
        ("first-entry-none", (None, (0, 0))),
    ]:
        bad(f"cropping-{name}", cropping=cropping)
    for name, cropping in [
        ("height-exactly-0-left", ((3, 4), (0, 0))),
        ("width-exactly-0-left", ((0, 0), (5, 4))),
        ("height-more-than-all", ((6, 3), (0, 0))),
        ("width-more-than-all", ((0, 0), (7, 3))),
        ("int-too-large", 4),
    ]:
        bad(f"over-cropping-{name}", cropping=cropping)
        bad(
            f"over-cropping-{name}-nchw",
            x=np.zeros((2, 3, 7, 9), F32),
            cropping=cropping,
            data_format="channels_first",
        )
    bad("input-rank-3", x=x[0], cropping=1)
    bad("input-rank-5", x=x[None], cropping=1)
    bad("input-none", x=None, cropping=1)
    bad("data-format-nhwc", cropping=1, data_format="nhwc")
    return cases


def _accepts() -> list[Case]:
    """Inputs at the edge of validity: a backend must compute them as the reference does."""
    photo = image("float32", (2, 4, 5, 2), "accepts")
    cases: list[Case] = []
    for name, kwargs in [
        (
            "accepts-empty-boxes",
            {"box_values": np.zeros((0, 4)), "box_indices": np.zeros(0, np.int32)},
        ),
        ("accepts-boxes-outside-unit-square", {"box_values": [[-7, -8, 9, 10]]}),
        ("accepts-flipped-box", {"box_values": [[1, 1, 0, 0]]}),
        ("accepts-zero-area-box", {"box_values": [[0.5, 0.5, 0.5, 0.5]]}),
        ("accepts-huge-finite-box", {"box_values": [[-3e38, -3e38, 3e38, 3e38]]}),
        (
            "accepts-last-box-index",
            {"box_values": [[0, 0, 1, 1]], "box_indices": np.array([1], np.int32)},
        ),
    ]:
        cases += forward(
            "errors",
            name,
            photo,
            kwargs.pop("box_values"),
            kwargs.pop("box_indices", None),
            (2, 2),
            methods=("bilinear",),
        )
    cases += forward(
        "errors",
        "accepts-depth-0",
        np.zeros((1, 3, 3, 0), F32),
        [[0, 0, 1, 1]],
        crop_size=(2, 2),
        methods=("bilinear",),
    )
    cases += forward(
        "errors",
        "accepts-batch-0-without-boxes",
        np.zeros((0, 3, 3, 1), F32),
        np.zeros((0, 4)),
        np.zeros(0, np.int32),
        (2, 2),
        methods=("bilinear",),
    )
    cases += forward(
        "errors",
        "accepts-crop-size-1x1",
        photo,
        [[0, 0, 1, 1]],
        crop_size=(1, 1),
        methods=("nearest",),
    )
    cases += forward(
        "errors",
        "accepts-extrapolation-nan",
        photo,
        [[-1, -1, 2, 2]],
        crop_size=(3, 3),
        extrapolation_value=float("nan"),
        methods=("bilinear",),
    )
    cases += forward(
        "errors",
        "accepts-data-format-upper-case",
        photo,
        [[0, 0, 1, 1]],
        crop_size=(2, 2),
        methods=("bilinear",),
        formats=("CHANNELS_LAST",),
    )
    cases += grad_image(
        "errors",
        "accepts-empty-boxes",
        np.zeros((0, 2, 2, 1), F32),
        np.zeros((0, 4)),
        [],
        (1, 3, 3, 1),
        methods=("bilinear",),
    )
    cases += grad_image(
        "errors",
        "accepts-batch-0",
        np.zeros((0, 2, 2, 1), F32),
        np.zeros((0, 4)),
        [],
        (0, 3, 3, 1),
        methods=("nearest",),
    )
    cases += grad_boxes(
        "errors", "accepts-empty-boxes", np.zeros((0, 2, 2, 2), F32), photo, np.zeros((0, 4)), []
    )
    cases += grad_boxes(
        "errors",
        "accepts-uint8-image",
        np.ones((1, 2, 2, 2), F32),
        image("uint8", (2, 4, 5, 2), "accepts"),
        [[0.1, 0.2, 0.9, 0.7]],
        [1],
    )
    return cases


def error_cases() -> list[Case]:
    """Every hand-written case of the ``errors`` category."""
    return [
        *_forward_errors(),
        *_grad_image_errors(),
        *_grad_boxes_errors(),
        *_crop2d_errors(),
        *_accepts(),
    ]
