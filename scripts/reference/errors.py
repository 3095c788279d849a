"""Recorded refusals: inputs TensorFlow refuses, with TF's exception type and message and the
Python exception cropcore maps the refusal to (op ``error``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from reference.inputs import INF, NAN
from reference.npz import Recorder
from reference.tf_calls import clean_message, tf_crop_and_resize, tf_grad_boxes, tf_grad_image

F32 = np.float32


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

    i32 = np.int32
    # (name, expected exception, argument named, arguments changed)
    # fmt: off
    for name, expected, argument, changes in [
        ("grads-rank-3", "ValueError", "grads", {"grads": grads[0]}),
        ("grads-crop-height-0", "ValueError", "grads", {"grads": np.ones((1, 0, 3, 1), F32)}),
        ("grads-count-differs-from-boxes", "ValueError", "grads",
         {"grads": np.ones((2, 3, 3, 1), F32)}),
        ("boxes-3-columns", "ValueError", "boxes", {"boxes": box[:, :3]}),
        ("box-indices-too-many", "ValueError", "box_indices",
         {"box_indices": np.array([0, 0], i32)}),
        ("image-shape-3-elements", "ValueError", "image_shape",
         {"image_size": np.array([1, 2, 2], i32)}),
        ("image-shape-height-0", "ValueError", "image_shape",
         {"image_size": np.array([1, 0, 2, 1], i32)}),
        ("image-shape-negative-batch", "ValueError", "image_shape",
         {"image_size": np.array([-1, 2, 2, 1], i32)}),
        ("image-shape-depth-differs-from-grads", "ValueError", "grads",
         {"image_size": np.array([1, 2, 2, 2], i32)}),
        ("box-index-equals-batch", "IndexError", "box_indices", {"box_indices": np.array([1], i32)}),
        ("box-index-negative", "IndexError", "box_indices", {"box_indices": np.array([-1], i32)}),
        *[(f"dtype-{dtype}", "TypeError", "dtype", {"dtype": dtype}) for dtype in ("uint8", "int32")],
        ("method-bicubic", "ValueError", "method", {"method": "bicubic"}),
    ]:
        grad_image(name, expected, argument, **changes)
    # fmt: on

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

    # fmt: off
    for name, expected, argument, changes in [
        ("grads-rank-3", "ValueError", "grads", {"grads": grads[0]}),
        ("grads-crop-width-0", "ValueError", "grads", {"grads": np.ones((1, 3, 0, 1), F32)}),
        ("image-rank-3", "ValueError", "image", {"image": image[0]}),
        ("image-height-0", "ValueError", "image", {"image": np.ones((1, 0, 2, 1), F32)}),
        ("image-depth-differs-from-grads", "ValueError", "grads",
         {"image": np.ones((1, 2, 2, 2), F32)}),
        ("image-dtype-bool", "TypeError", "image", {"image": image.astype(bool)}),
        ("boxes-3-columns", "ValueError", "boxes", {"boxes": box[:, :3]}),
        ("box-indices-too-many", "ValueError", "box_indices",
         {"box_indices": np.array([0, 0], i32)}),
        ("grads-count-differs-from-boxes", "ValueError", "grads",
         {"grads": np.ones((2, 3, 3, 1), F32)}),
        ("box-index-equals-batch", "IndexError", "box_indices", {"box_indices": np.array([1], i32)}),
        ("method-nearest", "ValueError", "method", {"method": "nearest"}),
    ]:
        grad_boxes(name, expected, argument, **changes)
    # fmt: on


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
    message = clean_message(str(tf_error))
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
