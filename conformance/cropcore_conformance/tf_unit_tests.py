"""Category ``tf-tests``: TensorFlow's and Keras's own unit tests for these ops, carried over as data.

Sources (see the project's notes/tf_semantics.md §3 and §5.4 for the commits):

- ``tensorflow/core/kernels/image/crop_and_resize_op_test.cc`` (C++ kernel tests; exact equality);
- ``tensorflow/python/ops/image_ops_test.py`` (``testImageCropAndResize*``, CPU expectations);
- ``tensorflow/python/ops/image_grad_test_base.py`` (``CropAndResizeOpTestBase``: output shape and
  the gradient check on random boxes) and ``image_grad_d9m_test.py`` (reproducible gradients);
- the docstring examples of ``tf.image.crop_and_resize``;
- ``keras/src/layers/reshaping/cropping2d_test.py``.

TensorFlow's exception types are mapped to cropcore's (design.md): ``InvalidArgumentError`` on a
value or shape is ``ValueError``, ``OutOfRangeError`` on a box index is ``IndexError``; a named
type accepts its subclasses, as ``assertRaises`` does. Ids: ``tf-tests/<op>/<test name>``.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

from cropcore_conformance.cases import (
    Case,
    ErrorCase,
    ValueCase,
)
from cropcore_conformance.tf_unit_gradients import d9m_cases, grad_random_boxes_cases

__all__ = ["CPP_TESTS", "KERAS_CROPPING2D_TESTS", "tf_test_cases"]

C = "tf-tests"
IMG2 = [[1, 2], [3, 4]]
IMG3 = [[1, 2, 3], [4, 5, 6], [7, 8, 9]]

#: ``crop_and_resize_op_test.cc``: (test name, image dtype, method, image, boxes, box_ind,
#: crop size, extrapolation value, expected output (row-major, depth 1)).
# fmt: off
CPP_TESTS: list[tuple[str, str, str, Any, Any, Any, tuple[int, int], float, Any]] = [
    *[
        # REGISTER_TEST(T): TestCropAndResize<T> and TestCropAndResize<T>nearest.
        (f"TestCropAndResize{dtype.title()}{suffix}", dtype, method, IMG2,
         [[0, 0, 1, 1]], [0], (1, 1), 0.0, [value])
        for dtype in ("float32", "float64", "uint8", "uint16", "int8", "int16", "int32", "int64")
        for suffix, method, value in (("", "bilinear", 2.5), ("Nearest", "nearest", 4.0))
    ],
    ("TestCropAndResize2x2To1x1Uint8", "uint8", "bilinear", IMG2,
     [[0, 0, 1, 1]], [0], (1, 1), 0.0, [2.5]),
    ("TestCropAndResize2x2To1x1Uint8NearestNeibor", "uint8", "nearest", IMG2,
     [[0, 0, 1, 1]], [0], (1, 1), 0.0, [4.0]),
    ("TestCropAndResize2x2To1x1Flipped", "float32", "bilinear", IMG2,
     [[1, 1, 0, 0]], [0], (1, 1), 0.0, [2.5]),
    ("TestCropAndResize2x2To1x1FlippedNearestNeighbor", "float32", "nearest", IMG2,
     [[1, 1, 0, 0]], [0], (1, 1), 0.0, [4.0]),
    ("TestCropAndResize2x2To3x3", "float32", "bilinear", IMG2,
     [[0, 0, 1, 1]], [0], (3, 3), 0.0, [1, 1.5, 2, 2, 2.5, 3, 3, 3.5, 4]),
    ("TestCropAndResize2x2To3x3NearestNeighbor", "float32", "nearest", IMG2,
     [[0, 0, 1, 1]], [0], (3, 3), 0.0, [1, 2, 2, 3, 4, 4, 3, 4, 4]),
    ("TestCropAndResize2x2To3x3Flipped", "float32", "bilinear", IMG2,
     [[1, 1, 0, 0]], [0], (3, 3), 0.0, [4, 3.5, 3, 3, 2.5, 2, 2, 1.5, 1]),
    ("TestCropAndResize2x2To3x3FlippedNearestNeighbor", "float32", "nearest", IMG2,
     [[1, 1, 0, 0]], [0], (3, 3), 0.0, [4, 4, 3, 4, 4, 3, 2, 2, 1]),
    ("TestCropAndResize3x3To2x2", "float32", "bilinear", IMG3,
     [[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [0, 0], (2, 2), 0.0, [1, 3, 7, 9, 1, 2, 4, 5]),
    ("TestCropAndResize3x3To2x2NearestNeighbor", "float32", "nearest", IMG3,
     [[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [0, 0], (2, 2), 0.0, [1, 3, 7, 9, 1, 2, 4, 5]),
    ("TestCropAndResize3x3To2x2Flipped", "float32", "bilinear", IMG3,
     [[1, 1, 0, 0], [0.5, 0.5, 0, 0]], [0, 0], (2, 2), 0.0, [9, 7, 3, 1, 5, 4, 2, 1]),
    ("TestCropAndResize3x3To2x2FlippedNearestNeighbor", "float32", "nearest", IMG3,
     [[1, 1, 0, 0], [0.5, 0.5, 0, 0]], [0, 0], (2, 2), 0.0, [9, 7, 3, 1, 5, 4, 2, 1]),
    ("TestCropAndResize2x2To3x3Extrapolated", "float32", "bilinear", IMG2,
     [[-1, -1, 1, 1]], [0], (3, 3), -1.0, [-1, -1, -1, -1, 1, 2, -1, 3, 4]),
    ("TestCropAndResize2x2To3x3NoCrop", "float32", "bilinear", IMG2,
     np.zeros((0, 4)), [], (3, 3), 0.0, np.zeros((0, 3, 3, 1))),
]
# fmt: on

#: ``crop_and_resize_op_test.cc`` refusals: (test name, image, boxes, box_ind, crop, exception).
CPP_ERROR_TESTS = [
    (
        "TestInvalidInputShape",
        np.array([1, 2, 3, 4], np.float32).reshape(2, 2, 1),
        [[0, 0, 1, 1]],
        [0],
        (4, 4),
        "ValueError",
    ),
    ("TestInvalidBoxIndexShape", IMG2, [[0, 0, 1, 1]], [0, 0], (4, 4), "ValueError"),
    ("TestInvalidBoxIndex", IMG2, [[0, 0, 1, 1]], [1], (3, 3), "IndexError"),
]

#: ``image_ops_test.py`` (CPU expectations): (test name, call arguments, exception).
PYTHON_ERROR_TESTS = [
    (
        "testImageCropAndResize",
        {
            "image": np.zeros((2, 1, 1, 1), np.float32),
            "boxes": np.array([[1.0e40, 0, 0, 0]]),
            "box_indices": [1],
            "crop_size": [1, 1],
        },
        "ValueError",
    ),
    # TF checks the output size before the box indices (which are out of range here too); cropcore
    # checks the box indices first. The test's point, a refusal rather than a crash, holds.
    (
        "testImageCropAndResizeWithInvalidInput",
        {
            "image": np.ones((1, 1, 1, 1)),
            "boxes": np.ones((11, 4)),
            "box_indices": np.ones(11, np.int64),
            "crop_size": [2065374891, 1145309325],
        },
        "ValueError|IndexError",
    ),
    (
        "testImageCropAndResizeWithNon1DBoxes",
        {
            "image": np.ones((2, 2, 2, 2)),
            "boxes": np.ones((0, 4)),
            "box_indices": np.ones((0, 1), np.int64),
            "crop_size": [1, 1],
        },
        "ValueError",
    ),
]

#: ``cropping2d_test.py::test_cropping_2d``: cropping -> (row slice, column slice) on H=7, W=9.
KERAS_CROPPING2D_TESTS = [
    (((1, 2), (3, 4)), (1, 5), (3, 5)),
    (((2, 2), (2, 2)), (2, 5), (2, 7)),
    ((2, 2), (2, 5), (2, 7)),
    (2, (2, 5), (2, 7)),
    (((0, 2), (0, 4)), (0, 5), (0, 5)),
    (((1, 0), (3, 0)), (1, 7), (3, 9)),
    (((1, 0), (3, 4)), (1, 7), (3, 5)),
    (((1, 2), (3, 0)), (1, 5), (3, 9)),
]


def _slug(text: str) -> str:
    """``TestCropAndResize2x2To3x3`` -> ``test-crop-and-resize2x2-to3x3``."""
    text = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", text)
    return text.lower()


def _forward(name: str, kwargs: dict[str, Any], description: str, **expectation: Any) -> Case:
    """``tf-tests/forward/<name>``: an :class:`ErrorCase` given ``expected_error``, else a
    :class:`ValueCase`."""
    kind = ErrorCase if "expected_error" in expectation else ValueCase
    return kind(
        f"{C}/forward/{name}",
        "forward",
        "tensorflow-test",
        kwargs=kwargs,
        description=description,
        **expectation,
    )


def _cpp_cases() -> list[Case]:
    cases: list[Case] = []
    for name, dtype, method, img, box, ind, crop, ev, expected in CPP_TESTS:
        image = np.asarray(img, dtype).reshape(1, *np.shape(img), 1)
        boxes = np.asarray(box, np.float32).reshape(-1, 4)
        expected = np.asarray(expected, np.float32).reshape(len(boxes), *crop, 1)
        kwargs = {
            "image": image,
            "boxes": boxes,
            "box_indices": np.asarray(ind, np.int32),
            "crop_size": crop,
            "method": method,
            "extrapolation_value": ev,
        }
        cases.append(
            _forward(_slug(name), kwargs, f"crop_and_resize_op_test.cc {name}", expected=expected)
        )
    for name, img, box, ind, crop, exc in CPP_ERROR_TESTS:
        image = np.asarray(img, np.float32)
        if image.ndim == 2:
            image = image.reshape(1, *image.shape, 1)
        kwargs = {
            "image": image,
            "boxes": np.asarray(box, np.float32),
            "box_indices": np.asarray(ind, np.int32),
            "crop_size": crop,
        }
        cases.append(
            _forward(_slug(name), kwargs, f"crop_and_resize_op_test.cc {name}", expected_error=exc)
        )
    # TestWithSharding: value = column index; box 0 gives columns 0..499, box 1 499..998.
    column = np.tile(np.arange(999, dtype=np.float32), (999, 1)).reshape(1, 999, 999, 1)
    expected = np.empty((2, 500, 500, 1), np.float32)
    expected[0, :, :, 0] = np.arange(500)
    expected[1, :, :, 0] = np.arange(499, 999)
    kwargs = {
        "image": column,
        "boxes": np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], np.float32),
        "box_indices": np.array([0, 0], np.int32),
        "crop_size": (500, 500),
    }
    description = "crop_and_resize_op_test.cc TestWithSharding"
    cases.append(_forward("test-with-sharding", kwargs, description, expected=expected))
    return cases


def _python_cases() -> list[Case]:
    cases: list[Case] = []
    for name, kwargs, exc in PYTHON_ERROR_TESTS:
        description = f"image_ops_test.py {name} (CPU)"
        cases.append(_forward(_slug(name), kwargs, description, expected_error=exc))
    image = np.arange(48, dtype=np.float32).reshape(2, 3, 4, 2)
    kwargs = {
        "image": image,
        "boxes": np.array([[0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8]], np.float32),
        "box_indices": np.array([0, 1], np.int32),
        "crop_size": (4, 5),
    }
    description = "image_grad_test_base.py testShapeIsCorrectAfterOp"
    cases.append(
        _forward(
            "test-shape-is-correct-after-op",
            kwargs,
            description,
            shape_only=True,
            expected_shape=(2, 4, 5, 2),
        )
    )
    # The docstring of tf.image.crop_and_resize.
    doc = np.arange(0, 18, 2, dtype=np.float32).reshape(1, 3, 3, 1)
    for method, values in (
        ("bilinear", [8, 9, 10, 11, 12, 13, 14, 15, 16]),
        ("nearest", [8, 10, 10, 14, 16, 16, 14, 16, 16]),
    ):
        cases.append(
            ValueCase(
                f"{C}/forward/docstring-example-{method}",
                "forward",
                "tensorflow-test",
                kwargs={
                    "image": doc,
                    "boxes": np.array([[0.5, 0.5, 1, 1]], np.float32),
                    "box_indices": np.array([0], np.int32),
                    "crop_size": (3, 3),
                    "method": method,
                },
                expected=np.asarray(values, np.float32).reshape(1, 3, 3, 1),
                description="tf.image.crop_and_resize docstring example",
            )
        )
    cases += grad_random_boxes_cases()
    cases += d9m_cases()
    return cases


def _keras_cases() -> list[Case]:
    cases: list[Case] = []
    rng = np.random.RandomState(1337)
    last = rng.rand(3, 7, 9, 5).astype(np.float32)
    first = rng.rand(3, 5, 7, 9).astype(np.float32)
    for index, (cropping, rows, cols) in enumerate(KERAS_CROPPING2D_TESTS):
        for data_format, x in (("channels_last", last), ("channels_first", first)):
            if data_format == "channels_last":
                expected = x[:, rows[0] : rows[1], cols[0] : cols[1], :]
            else:
                expected = x[:, :, rows[0] : rows[1], cols[0] : cols[1]]
            cases.append(
                ValueCase(
                    f"{C}/crop2d/test-cropping-2d-{index}-{data_format}",
                    "crop2d",
                    "keras-test",
                    kwargs={"x": x, "cropping": cropping, "data_format": data_format},
                    expected=np.ascontiguousarray(expected),
                    description=f"cropping2d_test.py test_cropping_2d cropping={cropping}",
                )
            )
    errors = [
        ("more-than-available", (3, 7, 9, 5), [((3, 6), (0, 0)), ((0, 0), (5, 4))]),
        (
            "excessive",
            (3, 8, 9, 5),
            [((4, 5), (0, 0)), ((0, 0), (5, 5)), ((6, 3), (0, 0)), ((0, 0), (7, 3))],
        ),
    ]
    for label, shape, croppings in errors:
        for index, cropping in enumerate(croppings):
            for data_format in ("channels_last", "channels_first"):
                cases.append(
                    ErrorCase(
                        f"{C}/crop2d/test-cropping-2d-errors-{label}-{index}-{data_format}",
                        "crop2d",
                        "keras-test",
                        kwargs={
                            "x": np.zeros(shape, np.float32),
                            "cropping": cropping,
                            "data_format": data_format,
                        },
                        expected_error="ValueError",
                        description=f"cropping2d_test.py: cropping {cropping} of {shape} is refused",
                    )
                )
    for index, cropping in enumerate(
        [(1,), (1, 2, 3), "1", ((1, 2), (3, 4, 5)), ((1, 2), (3, -4)), ((1, 2), "3")]
    ):
        cases.append(
            ErrorCase(
                f"{C}/crop2d/test-cropping-2d-errors-if-cropping-argument-invalid-{index}",
                "crop2d",
                "keras-test",
                kwargs={"x": np.zeros((3, 7, 9, 5), np.float32), "cropping": cropping},
                expected_error="ValueError",
                description=f"cropping2d_test.py: cropping={cropping!r} is refused",
            )
        )
    return cases


def tf_test_cases() -> list[Case]:
    """Every case of the ``tf-tests`` category."""
    return [*_cpp_cases(), *_python_cases(), *_keras_cases()]
