"""TensorFlow's and Keras's own unit tests for these ops, carried over as data.

Every expected value below is copied from the cited test (or, for the gradient values of
``GRADIENT_VALUES``, from TensorFlow 2.21 as recorded in docs notes §2.4), never from cropcore's
output. Sources (see notes/tf_semantics.md §3 and §5.4 for commits):

- ``tensorflow/core/kernels/image/crop_and_resize_op_test.cc`` (C++ kernel tests, exact equality);
- ``tensorflow/python/ops/image_ops_test.py`` (``testImageCropAndResize*``);
- ``tensorflow/python/ops/image_grad_test_base.py`` (``CropAndResizeOpTestBase``);
- ``tensorflow/python/ops/image_grad_d9m_test.py`` (``CropAndResizeOpDeterministicTest``);
- the ``tf.image.crop_and_resize`` docstring (``image_ops_impl.py``);
- ``keras/src/layers/reshaping/cropping2d_test.py``.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

import cropcore

BACKEND = "numpy"

IMG2 = np.array([[1, 2], [3, 4]], dtype=np.float32).reshape(1, 2, 2, 1)
IMG3 = np.array([[1, 2, 3], [4, 5, 6], [7, 8, 9]], dtype=np.float32).reshape(1, 3, 3, 1)


def crop(image, boxes, box_indices, crop_size, **kwargs):
    return cropcore.crop_and_resize(
        image, np.asarray(boxes, np.float32), box_indices, crop_size, backend=BACKEND, **kwargs
    )


def assert_names(exc: BaseException, argument: str) -> None:
    assert re.search(rf"\b{argument}\b", str(exc)), f"message does not name {argument}: {exc}"


# --------------------------------------------------------------------------------------------------
# crop_and_resize_op_test.cc


# TEST_F(CropAndResizeOpTest, TestCropAndResize##T) / TestCropAndResize##T##nearest, registered
# through REGISTER_TEST for these eight types (half is not among them).
CC_TYPED_TYPES = ("float32", "float64", "uint8", "uint16", "int8", "int16", "int32", "int64")


@pytest.mark.parametrize("dtype", CC_TYPED_TYPES)
@pytest.mark.parametrize(
    ("method", "expected"),
    [
        pytest.param("bilinear", 2.5, id="TestCropAndResize<T>"),
        pytest.param("nearest", 4.0, id="TestCropAndResize<T>nearest"),
    ],
)
def test_cc_typed_2x2_to_1x1(dtype, method, expected):
    crops = crop(IMG2.astype(dtype), [[0, 0, 1, 1]], [0], (1, 1), method=method)
    assert crops.dtype == np.float32
    np.testing.assert_array_equal(crops, np.full((1, 1, 1, 1), expected, np.float32), strict=True)


# (test name, image, boxes, box indices, crop size, method, extrapolation value, expected output)
CC_CASES = [
    ("TestCropAndResize2x2To1x1Uint8", IMG2.astype(np.uint8), [[0, 0, 1, 1]], [0], (1, 1),
     "bilinear", 0.0, [2.5]),
    ("TestCropAndResize2x2To1x1Uint8NearestNeibor", IMG2.astype(np.uint8), [[0, 0, 1, 1]], [0],
     (1, 1), "nearest", 0.0, [4.0]),
    ("TestCropAndResize2x2To1x1Flipped", IMG2, [[1, 1, 0, 0]], [0], (1, 1), "bilinear", 0.0, [2.5]),
    ("TestCropAndResize2x2To1x1FlippedNearestNeighbor", IMG2, [[1, 1, 0, 0]], [0], (1, 1),
     "nearest", 0.0, [4.0]),
    ("TestCropAndResize2x2To3x3", IMG2, [[0, 0, 1, 1]], [0], (3, 3), "bilinear", 0.0,
     [1, 1.5, 2, 2, 2.5, 3, 3, 3.5, 4]),
    ("TestCropAndResize2x2To3x3NearestNeighbor", IMG2, [[0, 0, 1, 1]], [0], (3, 3), "nearest", 0.0,
     [1, 2, 2, 3, 4, 4, 3, 4, 4]),
    ("TestCropAndResize2x2To3x3Flipped", IMG2, [[1, 1, 0, 0]], [0], (3, 3), "bilinear", 0.0,
     [4, 3.5, 3, 3, 2.5, 2, 2, 1.5, 1]),
    ("TestCropAndResize2x2To3x3FlippedNearestNeighbor", IMG2, [[1, 1, 0, 0]], [0], (3, 3),
     "nearest", 0.0, [4, 4, 3, 4, 4, 3, 2, 2, 1]),
    ("TestCropAndResize3x3To2x2", IMG3, [[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [0, 0], (2, 2),
     "bilinear", 0.0, [1, 3, 7, 9, 1, 2, 4, 5]),
    ("TestCropAndResize3x3To2x2NearestNeighbor", IMG3, [[0, 0, 1, 1], [0, 0, 0.5, 0.5]], [0, 0],
     (2, 2), "nearest", 0.0, [1, 3, 7, 9, 1, 2, 4, 5]),
    ("TestCropAndResize3x3To2x2Flipped", IMG3, [[1, 1, 0, 0], [0.5, 0.5, 0, 0]], [0, 0], (2, 2),
     "bilinear", 0.0, [9, 7, 3, 1, 5, 4, 2, 1]),
    ("TestCropAndResize3x3To2x2FlippedNearestNeighbor", IMG3, [[1, 1, 0, 0], [0.5, 0.5, 0, 0]],
     [0, 0], (2, 2), "nearest", 0.0, [9, 7, 3, 1, 5, 4, 2, 1]),
    ("TestCropAndResize2x2To3x3Extrapolated", IMG2, [[-1, -1, 1, 1]], [0], (3, 3), "bilinear",
     -1.0, [-1, -1, -1, -1, 1, 2, -1, 3, 4]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("image", "boxes", "box_indices", "crop_size", "method", "extrapolation_value", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in CC_CASES],
)
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_cc_kernel_case(
    image, boxes, box_indices, crop_size, method, extrapolation_value, expected, data_format
):
    if data_format == "channels_first":
        image = np.moveaxis(image, 3, 1)
    crops = crop(
        image,
        boxes,
        box_indices,
        crop_size,
        method=method,
        extrapolation_value=extrapolation_value,
        data_format=data_format,
    )
    expected = np.asarray(expected, np.float32).reshape(len(boxes), *crop_size, 1)
    if data_format == "channels_first":
        crops = np.moveaxis(crops, 1, 3)
    np.testing.assert_array_equal(crops, expected, strict=True)


def test_cc_TestCropAndResize2x2To3x3NoCrop():
    crops = crop(IMG2, np.zeros((0, 4), np.float32), np.zeros(0, np.int32), (3, 3))
    assert crops.shape == (0, 3, 3, 1)
    assert crops.dtype == np.float32


def test_cc_TestInvalidInputShape():
    with pytest.raises(ValueError, match=r"\bimage\b"):
        crop(np.array([1, 2, 3, 4], np.float32).reshape(2, 2, 1), [[0, 0, 1, 1]], [0], (4, 4))


def test_cc_TestInvalidBoxIndexShape():
    with pytest.raises(ValueError, match=r"\bbox_indices\b"):
        crop(IMG2, [[0, 0, 1, 1]], [0, 0], (4, 4))


def test_cc_TestInvalidBoxIndex():
    with pytest.raises(IndexError) as info:
        crop(IMG2, [[0, 0, 1, 1]], [1], (3, 3))
    assert_names(info.value, "box_indices")


def test_cc_TestWithSharding():
    # A 999x999 image whose every row is 0..998; the two boxes crop its halves at 500x500.
    image = np.tile(np.arange(999, dtype=np.float32), (999, 1)).reshape(1, 999, 999, 1)
    crops = crop(image, [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], [0, 0], (500, 500))
    expected = np.empty((2, 500, 500, 1), np.float32)
    expected[0] = np.arange(500, dtype=np.float32)[None, :, None]
    expected[1] = np.arange(499, 999, dtype=np.float32)[None, :, None]
    np.testing.assert_array_equal(crops, expected, strict=True)


# --------------------------------------------------------------------------------------------------
# image_ops_test.py


def test_py_testImageCropAndResize():
    # On CPU, TF refuses a box of 1e40 (inf in float32): "Boxes contains at least one element that
    # is not finite" (CVE-2020-15266).
    with pytest.raises(ValueError, match=r"\bboxes\b"):
        cropcore.crop_and_resize(
            np.zeros((2, 1, 1, 1)), [[1.0e40, 0, 0, 0]], [1], [1, 1], backend=BACKEND
        )


def test_py_testImageCropAndResizeWithInvalidInput():
    # TF's literal input. Its float64 box indices (np.ones) are refused by cropcore as a type error
    # before the crop size is looked at (TF converts them to int32); TF's test accepts any refusal.
    with pytest.raises(TypeError):
        cropcore.crop_and_resize(
            np.ones((1, 1, 1, 1)),
            np.ones((11, 4)),
            np.ones(11),
            [2065374891, 1145309325],
            backend=BACKEND,
        )


def test_py_testImageCropAndResizeWithInvalidInput_with_integer_box_indices():
    # The same call with valid integer indices: the overflowing crop size itself is refused.
    with pytest.raises(cropcore.OutputTooLargeError) as info:
        cropcore.crop_and_resize(
            np.ones((1, 1, 1, 1)),
            np.ones((11, 4)),
            np.zeros(11, np.int32),
            [2065374891, 1145309325],
            backend=BACKEND,
        )
    assert_names(info.value, "crop_size")


def test_py_testImageCropAndResizeWithNon1DBoxes():
    with pytest.raises(ValueError, match="box_indices") as info:
        cropcore.crop_and_resize(
            np.ones((2, 2, 2, 2)), np.ones((0, 4)), np.ones((0, 1)), [1, 1], backend=BACKEND
        )
    assert "1-D" in str(info.value) or "rank 1" in str(info.value)


# --------------------------------------------------------------------------------------------------
# image_grad_test_base.py: CropAndResizeOpTestBase


def test_grad_base_testShapeIsCorrectAfterOp():
    image = np.arange(0, 2 * 3 * 4 * 2).reshape(2, 3, 4, 2).astype(np.float32)
    boxes = np.array([[0, 0, 1, 1], [0.1, 0.2, 0.7, 0.8]], dtype=np.float32)
    crops = crop(image, boxes, np.array([0, 1], np.int32), [4, 5])
    assert list(crops.shape) == [2, 4, 5, 2]


def _random_uniform_avoid_anchors(rng, low, high, anchors, radius, num_samples):
    """TF's _randomUniformAvoidAnchors (rejection sampling away from pixel-grid anchors)."""
    samples = []
    while len(samples) < num_samples:
        sample = rng.uniform(low, high)
        if np.all(np.fabs(sample - anchors) > radius):
            samples.append(sample)
    return samples


def _grad_random_boxes_configs():
    """testGradRandomBoxes' loop, with its random stream (np.random.seed(1)), one param per config."""
    rng = np.random.RandomState(1)
    delta = 1e-3
    radius = 2 * delta
    low, high = -0.5, 1.5
    image_height = 4
    configs = []
    for image_width in range(1, 3):
        for crop_height in range(1, 3):
            for crop_width in range(2, 4):
                for depth in range(1, 3):
                    for num_boxes in range(1, 3):
                        batch = num_boxes
                        image_shape = (batch, image_height, image_width, depth)
                        image = np.arange(0, np.prod(image_shape)).reshape(image_shape)
                        boxes = []
                        for _ in range(num_boxes):
                            y1, y2 = _random_uniform_avoid_anchors(
                                rng, low, high, np.linspace(0, 1, image_height), radius, 2
                            )
                            x1, x2 = _random_uniform_avoid_anchors(
                                rng, low, high, np.linspace(0, 1, image_width), radius, 2
                            )
                            boxes.append([y1, x1, y2, x2])
                        configs.append(
                            pytest.param(
                                image.astype(np.float32),
                                np.array(boxes, dtype=np.float32),
                                np.arange(batch, dtype=np.int32),
                                (crop_height, crop_width),
                                id=f"W{image_width}-crop{crop_height}x{crop_width}-"
                                f"depth{depth}-boxes{num_boxes}",
                            )
                        )
    return configs


def _numeric_jacobian(f, x, delta):
    """gradient_checker_v2._compute_numeric_jacobian: central differences in x's dtype."""
    x = x.copy()
    y_size = f(x).size
    scale = np.float32(2 * delta)
    jacobian = np.zeros((y_size, x.size), dtype=x.dtype)
    flat = x.reshape(-1)
    for col in range(x.size):
        original = flat[col]
        flat[col] += delta
        y_pos = f(x)
        flat[col] = original
        flat[col] -= delta
        y_neg = f(x)
        flat[col] = original
        jacobian[:, col] = ((y_pos - y_neg) / scale).ravel()
    return jacobian


def _theoretical_jacobian(grad_fn, y_shape, x_size):
    """gradient_checker_v2._compute_theoretical_jacobian: one backward pass per output element."""
    jacobian = np.zeros((int(np.prod(y_shape)), x_size), dtype=np.float32)
    dy = np.zeros(y_shape, np.float32)
    for row in range(dy.size):
        dy.reshape(-1)[:] = 0
        dy.reshape(-1)[row] = 1
        jacobian[row] = np.asarray(grad_fn(dy)).ravel()
    return jacobian


@pytest.mark.parametrize(
    ("image", "boxes", "box_indices", "crop_size"), _grad_random_boxes_configs()
)
def test_grad_base_testGradRandomBoxes(image, boxes, box_indices, crop_size):
    delta = 1.0 / 1024  # gradient_checker_v2.compute_gradient's default
    y_shape = (len(boxes), *crop_size, image.shape[3])

    numeric_image = _numeric_jacobian(
        lambda x: crop(x, boxes, box_indices, crop_size), image, delta
    )
    theoretical_image = _theoretical_jacobian(
        lambda dy: cropcore.crop_and_resize_grad_image(
            dy, boxes, box_indices, image.shape, backend=BACKEND
        ),
        y_shape,
        image.size,
    )
    numeric_boxes = _numeric_jacobian(
        lambda b: crop(image, b, box_indices, crop_size), boxes, delta
    )
    theoretical_boxes = _theoretical_jacobian(
        lambda dy: cropcore.crop_and_resize_grad_boxes(
            dy, image, boxes, box_indices, backend=BACKEND
        ),
        y_shape,
        boxes.size,
    )
    err1 = np.fabs(theoretical_image - numeric_image).max()
    err2 = np.fabs(theoretical_boxes - numeric_boxes).max()
    assert max(err1, err2) < 2e-3


# --------------------------------------------------------------------------------------------------
# image_grad_d9m_test.py: CropAndResizeOpDeterministicTest (run there with force_cpu)


def _deterministic_test_params(dtype):
    """CropAndResizeOpDeterministicTest._genParams (np.random.seed(456))."""
    rng = np.random.RandomState(456)
    batch_size, height, width, depth = 16, 64, 64, 1
    image = (rng.random_sample((batch_size, height, width, depth)) * 2.0 - 1.0).astype(dtype)
    box_count = 4 * batch_size
    boxes = (rng.random_sample((box_count, 4)) * 1.01).astype(np.float32)
    box_indices = rng.randint(low=0, high=batch_size, size=(box_count,)).astype(np.int32)
    crop_size = (height * 2, width * 2)
    injected = rng.random_sample((box_count, *crop_size, depth)) * 0.002 - 0.001
    return image, boxes, box_indices, injected.astype(np.float32)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_d9m_testReproducibleBackpropToImage(dtype):
    image, boxes, box_indices, grads = _deterministic_test_params(dtype)

    def backprop():
        return cropcore.crop_and_resize_grad_image(
            grads, boxes, box_indices, image.shape, dtype=dtype, backend=BACKEND
        )

    first = backprop()
    assert first.dtype == np.dtype(dtype)
    for _ in range(5):
        np.testing.assert_array_equal(backprop(), first, strict=True)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_d9m_testReproducibleBackpropToBoxes(dtype):
    image, boxes, box_indices, grads = _deterministic_test_params(dtype)

    def backprop():
        return cropcore.crop_and_resize_grad_boxes(
            grads, image, boxes, box_indices, backend=BACKEND
        )

    first = backprop()
    for _ in range(5):
        np.testing.assert_array_equal(backprop(), first, strict=True)


# --------------------------------------------------------------------------------------------------
# The tf.image.crop_and_resize docstring


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("bilinear", [[8, 9, 10], [11, 12, 13], [14, 15, 16]]),
        ("nearest", [[8, 10, 10], [14, 16, 16], [14, 16, 16]]),
    ],
)
def test_docstring_example(method, expected):
    image = np.arange(0, 18, 2).astype("float32").reshape(3, 3)
    crops = crop(image[None, :, :, None], [[0.5, 0.5, 1.0, 1.0]], [0], (3, 3), method=method)
    np.testing.assert_array_equal(crops[0, :, :, 0], np.array(expected, np.float32), strict=True)


def test_docstring_random_example_shape():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 256, 256, 3)).astype(np.float32)
    boxes = rng.uniform(size=(5, 4)).astype(np.float32)
    box_indices = rng.uniform(size=(5,), low=0, high=1).astype(np.int32)
    crops = crop(image, boxes, box_indices, (24, 24))
    assert crops.shape == (5, 24, 24, 3)


# --------------------------------------------------------------------------------------------------
# Gradient values recorded from TensorFlow 2.21 CPU (notes §2.4; not from TF's test suite)


GRAD_IMAGE_VALUES = [
    ("bilinear-ones-3x3-box-0011", np.ones((1, 3, 3, 1)), [[0, 0, 1, 1]], (1, 2, 2, 1), "bilinear",
     [2.25, 2.25, 2.25, 2.25]),
    ("nearest-ones-3x3-box-0011", np.ones((1, 3, 3, 1)), [[0, 0, 1, 1]], (1, 2, 2, 1), "nearest",
     [1, 2, 2, 4]),
    ("bilinear-1234-inner-box", np.arange(1, 5).reshape(1, 2, 2, 1), [[0.25, 0.25, 0.75, 0.75]],
     (1, 3, 3, 1), "bilinear", [0.25, 0.75, 0.5, 1.0, 2.5, 1.5, 0.75, 1.75, 1.0]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("grads", "boxes", "image_shape", "method", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in GRAD_IMAGE_VALUES],
)
def test_tf_grad_image_value(grads, boxes, image_shape, method, expected):
    out = cropcore.crop_and_resize_grad_image(
        grads.astype(np.float32), boxes, [0], image_shape, method=method, backend=BACKEND
    )
    np.testing.assert_array_equal(
        out, np.asarray(expected, np.float32).reshape(image_shape), strict=True
    )


GRAD_BOXES_VALUES = [
    ("ones-3x3-img2-box-0011", np.ones((1, 3, 3, 1)), IMG2, [[0, 0, 1, 1]], [[3.0, 1.5, 3.0, 1.5]]),
    ("1234-img3-inner-box", np.arange(1, 5).reshape(1, 2, 2, 1), IMG3, [[0.25, 0.25, 0.75, 0.75]],
     [[18.0, 8.0, 42.0, 12.0]]),
    ("crop-1x1-img2-box-0011", np.ones((1, 1, 1, 1)), IMG2, [[0, 0, 1, 1]], [[1.0, 0.5, 1.0, 0.5]]),
    # tape gradient through a uint8 image: TF gives no image gradient, and this boxes gradient.
    ("uint8-img2-ones-3x3", np.ones((1, 3, 3, 1)), IMG2.astype(np.uint8), [[0, 0, 1, 1]],
     [[3.0, 1.5, 3.0, 1.5]]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("grads", "image", "boxes", "expected"),
    [pytest.param(*case[1:], id=case[0]) for case in GRAD_BOXES_VALUES],
)
def test_tf_grad_boxes_value(grads, image, boxes, expected):
    out = cropcore.crop_and_resize_grad_boxes(
        grads.astype(np.float32), image, boxes, [0], backend=BACKEND
    )
    np.testing.assert_array_equal(out, np.asarray(expected, np.float32), strict=True)


def test_tf_grad_image_refuses_integer_dtype():
    # TF: "Value for attr 'T' of uint8 is not in the list of allowed values: float, half, double"
    with pytest.raises(TypeError) as info:
        cropcore.crop_and_resize_grad_image(
            np.ones((1, 3, 3, 1), np.float32), [[0, 0, 1, 1]], [0], (1, 2, 2, 1), dtype="uint8",
            backend=BACKEND,
        )  # fmt: skip
    assert_names(info.value, "dtype")


def test_tf_grad_boxes_refuses_nearest():
    # TF: "Value for attr 'method' of "nearest" is not in the list of allowed values: "bilinear""
    with pytest.raises(ValueError, match=r"\bmethod\b"):
        cropcore.crop_and_resize_grad_boxes(
            np.ones((1, 3, 3, 1), np.float32), IMG2, [[0, 0, 1, 1]], [0], method="nearest",
            backend=BACKEND,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# keras/src/layers/reshaping/cropping2d_test.py


# test_cropping_2d: (cropping, expected rows, expected columns) on H=7, W=9.
KERAS_CROPPING_CASES = [
    (((1, 2), (3, 4)), slice(1, 5), slice(3, 5)),
    (((2, 2), (2, 2)), slice(2, 5), slice(2, 7)),
    ((2, 2), slice(2, 5), slice(2, 7)),
    (2, slice(2, 5), slice(2, 7)),
    (((0, 2), (0, 4)), slice(0, 5), slice(0, 5)),
    (((1, 0), (3, 0)), slice(1, 7), slice(3, 9)),
    (((1, 0), (3, 4)), slice(1, 7), slice(3, 5)),
    (((1, 2), (3, 0)), slice(1, 5), slice(3, 9)),
]


@pytest.mark.parametrize(
    ("cropping", "rows", "cols"),
    [pytest.param(*case, id=f"test_cropping_2d-{case[0]}") for case in KERAS_CROPPING_CASES],
)
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_keras_test_cropping_2d(cropping, rows, cols, data_format):
    rng = np.random.default_rng(0)
    if data_format == "channels_first":
        inputs = rng.random((3, 5, 7, 9))
        expected = inputs[:, :, rows, cols]
    else:
        inputs = rng.random((3, 7, 9, 5))
        expected = inputs[:, rows, cols, :]
    out = cropcore.crop2d(inputs, cropping, data_format, backend=BACKEND)
    np.testing.assert_array_equal(out, expected, strict=True)


@pytest.mark.parametrize("cropping", [((3, 6), (0, 0)), ((0, 0), (5, 4))])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_keras_test_cropping_2d_errors_if_cropping_more_than_available(cropping, data_format):
    with pytest.raises(ValueError, match="cropping"):
        cropcore.crop2d(np.zeros((3, 7, 9, 5)), cropping, data_format, backend=BACKEND)


@pytest.mark.parametrize(
    "cropping", [(1,), (1, 2, 3), "1", ((1, 2), (3, 4, 5)), ((1, 2), (3, -4)), ((1, 2), "3")]
)
def test_keras_test_cropping_2d_errors_if_cropping_argument_invalid(cropping):
    with pytest.raises(ValueError, match="cropping"):
        cropcore.crop2d(np.zeros((1, 7, 9, 5)), cropping, backend=BACKEND)


@pytest.mark.parametrize(
    "cropping", [((4, 5), (0, 0)), ((0, 0), (5, 5)), ((6, 3), (0, 0)), ((0, 0), (7, 3))]
)
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_keras_test_cropping_2d_error_on_excessive_cropping(cropping, data_format):
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Values in `cropping` argument should be smaller than the corresponding spatial "
            "dimension of the input."
        ),
    ):
        cropcore.crop2d(np.zeros((3, 8, 9, 5)), cropping, data_format, backend=BACKEND)
