"""cropcore against live TensorFlow (and Keras) on fresh random inputs.

Skipped where TensorFlow is not installed (the project's dev venv has none); run it with a Python
that has TensorFlow, Keras 3 and cropcore installed::

    /work/tfenv/bin/python -m pytest tests/test_live_tensorflow.py -m tensorflow

TensorFlow runs with one intra-op and one inter-op thread so that CropAndResizeGradImage
accumulates in its sequential order (with more threads, boxes sharing an image race). Inputs stay
clear of the inputs that crash TensorFlow (notes §4): boxes are finite and small, so no sample
coordinate overflows.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cropcore  # noqa: E402

pytestmark = pytest.mark.tensorflow

try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    SINGLE_THREADED = True
except RuntimeError:  # TensorFlow was initialised before this module: the thread pools are fixed
    SINGLE_THREADED = tf.config.threading.get_intra_op_parallelism_threads() == 1

BACKEND = "numpy"
IMAGE_DTYPES = cropcore.spec.IMAGE_DTYPES
GRAD_IMAGE_DTYPES = cropcore.spec.GRAD_IMAGE_DTYPES
LIVE = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_bit_identical(got: np.ndarray, expected: np.ndarray) -> None:
    """Same dtype, shape and bits; NaN matches NaN whatever its payload."""
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    uint = np.dtype(f"uint{8 * expected.dtype.itemsize}")
    got_nan, expected_nan = np.isnan(got), np.isnan(expected)
    same_bits = got.view(uint) == np.ascontiguousarray(expected).view(uint)
    differ = (got_nan != expected_nan) | (~expected_nan & ~same_bits)
    assert not differ.any(), (
        f"{int(differ.sum())} of {expected.size} differ; first at "
        f"{tuple(int(i) for i in np.argwhere(differ)[0])}: cropcore "
        f"{got[differ][0]!r}, TensorFlow {expected[differ][0]!r}"
    )


def random_image(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dt)


@st.composite
def crop_calls(draw, dtypes=IMAGE_DTYPES, min_boxes=0):
    """A valid crop_and_resize call: image, boxes, box indices, crop size, plus a seed for data."""
    batch = draw(st.integers(1, 3))
    height, width = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    depth = draw(st.integers(1, 3))
    num_boxes = draw(st.integers(min_boxes, 5))
    # Coordinates on the pixel grid (floor == ceil) and exactly 0 or 1 are the interesting ones.
    anchors = [0.0, 1.0, 0.5, *(k / (height - 1) for k in range(1, height - 1))]
    coordinate = st.one_of(st.floats(-1.5, 2.5, width=32), st.sampled_from(anchors))
    boxes = np.array(
        draw(st.lists(st.lists(coordinate, min_size=4, max_size=4), min_size=num_boxes,
                      max_size=num_boxes)),
        dtype=np.float32,
    ).reshape(num_boxes, 4)  # fmt: skip
    box_indices = np.array(
        draw(st.lists(st.integers(0, batch - 1), min_size=num_boxes, max_size=num_boxes)),
        dtype=np.int32,
    )
    return {
        "dtype": draw(st.sampled_from(dtypes)),
        "shape": (batch, height, width, depth),
        "boxes": boxes,
        "box_indices": box_indices,
        "crop_size": (draw(st.integers(1, 6)), draw(st.integers(1, 6))),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 3, 1))


@LIVE
@given(
    call=crop_calls(),
    method=st.sampled_from(["bilinear", "nearest"]),
    extrapolation_value=st.sampled_from([0.0, -1.0, 2.5, float("nan")]),
    data_format=st.sampled_from(["channels_last", "channels_first"]),
)
def test_crop_and_resize_matches_live_tensorflow(call, method, extrapolation_value, data_format):
    rng = np.random.default_rng(call["seed"])
    image = random_image(rng, call["dtype"], call["shape"])
    expected = tf.image.crop_and_resize(
        image,
        call["boxes"],
        call["box_indices"],
        call["crop_size"],
        method=method,
        extrapolation_value=extrapolation_value,
    ).numpy()
    channels_first = data_format == "channels_first"
    crops = cropcore.crop_and_resize(
        nchw(image) if channels_first else image,
        call["boxes"],
        call["box_indices"],
        call["crop_size"],
        method=method,
        extrapolation_value=extrapolation_value,
        data_format=data_format,
        backend=BACKEND,
    )
    assert_bit_identical(np.moveaxis(crops, 1, 3) if channels_first else crops, expected)


@pytest.mark.skipif(not SINGLE_THREADED, reason="TensorFlow's thread pools were already started")
@LIVE
@given(
    call=crop_calls(dtypes=GRAD_IMAGE_DTYPES),
    method=st.sampled_from(["bilinear", "nearest"]),
    data_format=st.sampled_from(["channels_last", "channels_first"]),
)
def test_grad_image_matches_live_tensorflow(call, method, data_format):
    rng = np.random.default_rng(call["seed"])
    num_boxes, depth = len(call["boxes"]), call["shape"][3]
    grads = (rng.standard_normal((num_boxes, *call["crop_size"], depth)) * 3).astype(np.float32)
    expected = tf.raw_ops.CropAndResizeGradImage(
        grads=grads,
        boxes=call["boxes"],
        box_ind=call["box_indices"],
        image_size=np.array(call["shape"], np.int32),
        T=tf.as_dtype(call["dtype"]),
        method=method,
    ).numpy()
    channels_first = data_format == "channels_first"
    batch, height, width, depth = call["shape"]
    out = cropcore.crop_and_resize_grad_image(
        nchw(grads) if channels_first else grads,
        call["boxes"],
        call["box_indices"],
        (batch, depth, height, width) if channels_first else call["shape"],
        method=method,
        data_format=data_format,
        dtype=call["dtype"],
        backend=BACKEND,
    )
    assert_bit_identical(np.moveaxis(out, 1, 3) if channels_first else out, expected)


@LIVE
@given(call=crop_calls(), data_format=st.sampled_from(["channels_last", "channels_first"]))
def test_grad_boxes_matches_live_tensorflow(call, data_format):
    rng = np.random.default_rng(call["seed"])
    image = random_image(rng, call["dtype"], call["shape"])
    num_boxes, depth = len(call["boxes"]), call["shape"][3]
    grads = (rng.standard_normal((num_boxes, *call["crop_size"], depth)) * 3).astype(np.float32)
    expected = tf.raw_ops.CropAndResizeGradBoxes(
        grads=grads, image=image, boxes=call["boxes"], box_ind=call["box_indices"]
    ).numpy()
    channels_first = data_format == "channels_first"
    out = cropcore.crop_and_resize_grad_boxes(
        nchw(grads) if channels_first else grads,
        nchw(image) if channels_first else image,
        call["boxes"],
        call["box_indices"],
        data_format=data_format,
        backend=BACKEND,
    )
    assert_bit_identical(out, expected)


@pytest.mark.skipif(not SINGLE_THREADED, reason="TensorFlow's thread pools were already started")
@settings(max_examples=40, deadline=None)
@given(
    call=crop_calls(dtypes=("float32",), min_boxes=1),
    method=st.sampled_from(["bilinear", "nearest"]),
)
def test_tape_gradients_match_cropcore_gradient_ops(call, method):
    """What tf.GradientTape gives through tf.image.crop_and_resize is what cropcore's two gradient
    ops give (the boxes gradient of a nearest crop is the bilinear one)."""
    rng = np.random.default_rng(call["seed"])
    image_np = random_image(rng, "float32", call["shape"])
    grads = (
        rng.standard_normal((len(call["boxes"]), *call["crop_size"], call["shape"][3]))
    ).astype(np.float32)
    image, boxes = tf.constant(image_np), tf.constant(call["boxes"])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([image, boxes])
        crops = tf.image.crop_and_resize(
            image, boxes, call["box_indices"], call["crop_size"], method=method
        )
    image_grad, boxes_grad = tape.gradient(crops, [image, boxes], output_gradients=grads)
    assert_bit_identical(
        cropcore.crop_and_resize_grad_image(
            grads, call["boxes"], call["box_indices"], call["shape"], method=method, backend=BACKEND
        ),
        image_grad.numpy(),
    )
    assert_bit_identical(
        cropcore.crop_and_resize_grad_boxes(
            grads, image_np, call["boxes"], call["box_indices"], backend=BACKEND
        ),
        boxes_grad.numpy(),
    )


@pytest.mark.skipif(not SINGLE_THREADED, reason="TensorFlow's thread pools were already started")
@pytest.mark.parametrize("dtype", GRAD_IMAGE_DTYPES)
def test_d9m_configuration_matches_live_tensorflow(dtype):
    """image_grad_d9m_test's CropAndResizeOpDeterministicTest inputs (64 boxes of 128x128 over 16
    images of 64x64): many crops accumulate into each pixel, in TensorFlow's sequential order."""
    rng = np.random.RandomState(456)
    image = (rng.random_sample((16, 64, 64, 1)) * 2.0 - 1.0).astype(dtype)
    boxes = (rng.random_sample((64, 4)) * 1.01).astype(np.float32)
    box_indices = rng.randint(low=0, high=16, size=(64,)).astype(np.int32)
    grads = (rng.random_sample((64, 128, 128, 1)) * 0.002 - 0.001).astype(np.float32)
    expected_image = tf.raw_ops.CropAndResizeGradImage(
        grads=grads, boxes=boxes, box_ind=box_indices, image_size=np.array(image.shape, np.int32),
        T=tf.as_dtype(dtype),
    ).numpy()  # fmt: skip
    expected_boxes = tf.raw_ops.CropAndResizeGradBoxes(
        grads=grads, image=image, boxes=boxes, box_ind=box_indices
    ).numpy()
    assert_bit_identical(
        cropcore.crop_and_resize_grad_image(
            grads, boxes, box_indices, image.shape, dtype=dtype, backend=BACKEND
        ),
        expected_image,
    )
    assert_bit_identical(
        cropcore.crop_and_resize_grad_boxes(grads, image, boxes, box_indices, backend=BACKEND),
        expected_boxes,
    )


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(1, 9),
    width=st.integers(1, 9),
    data_format=st.sampled_from(["channels_last", "channels_first"]),
    dtype=st.sampled_from(["float32", "float64", "int32", "uint8", "bool"]),
    form=st.sampled_from(["int", "pair", "pairs", "lists"]),
    data=st.data(),
)
def test_crop2d_matches_live_keras(seed, height, width, data_format, dtype, form, data):
    keras = pytest.importorskip("keras")
    top = data.draw(st.integers(0, height - 1))
    bottom = data.draw(st.integers(0, height - 1 - top))
    left = data.draw(st.integers(0, width - 1))
    right = data.draw(st.integers(0, width - 1 - left))
    cropping = {
        "int": min(top, left, (height - 1) // 2, (width - 1) // 2),
        "pair": (min(top, (height - 1) // 2), min(left, (width - 1) // 2)),
        "pairs": ((top, bottom), (left, right)),
        "lists": [[top, bottom], [left, right]],
    }[form]
    rng = np.random.default_rng(seed)
    shape = (2, 3, height, width) if data_format == "channels_first" else (2, height, width, 3)
    x = (rng.standard_normal(shape) * 50).astype(dtype)
    layer = keras.layers.Cropping2D(cropping=cropping, data_format=data_format)
    expected = keras.ops.convert_to_numpy(layer(x))
    out = cropcore.crop2d(x, cropping, data_format, backend=BACKEND)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out.astype(expected.dtype), expected, strict=True)
