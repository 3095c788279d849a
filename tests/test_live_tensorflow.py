"""cropcore against live TensorFlow (and Keras) on fresh random inputs, on every built-in backend
that runs here.

Skipped where TensorFlow is not installed (the project's dev venv has none); run it with a Python
that has TensorFlow, Keras 3 and cropcore installed::

    /work/tfenv/bin/python -m pytest tests/test_live_tensorflow.py -m tensorflow

TensorFlow runs with one intra-op and one inter-op thread so that CropAndResizeGradImage
accumulates in its sequential order (with more threads, boxes sharing an image race). Inputs stay
clear of the inputs that crash TensorFlow (notes §4): boxes are finite and at most 1e30 in
magnitude and images at most 64 pixels high or wide, so no sample coordinate overflows to a NaN.

What is drawn: every image dtype and method, crop sizes 1 to 31, images 1 to 64 pixels, empty
batches, boxes and depths; coordinates on the pixel grid, just inside and outside [0, 1], -0.0,
subnormal and huge; pixels and gradients with inf, -inf and NaN (NaN compares equal to NaN whatever
its sign and payload: the sign of a NaN made from two NaNs is the C++ compiler's choice) or near
float32's underflow (TensorFlow flushes subnormals to zero); non-contiguous inputs. Fixed sweeps
add the edge overshoot of every size and crop from 2 to 64, nearest's rounding ties, detection-sized
crops and long float16 accumulation chains.
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
from cropcore.registry import registry  # noqa: E402

pytestmark = pytest.mark.tensorflow

try:
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    SINGLE_THREADED = True
except RuntimeError:  # TensorFlow was initialised before this module: the thread pools are fixed
    SINGLE_THREADED = tf.config.threading.get_intra_op_parallelism_threads() == 1

IMAGE_DTYPES = cropcore.spec.IMAGE_DTYPES
GRAD_IMAGE_DTYPES = cropcore.spec.GRAD_IMAGE_DTYPES
METHODS = cropcore.spec.METHODS
LIVE = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NAN, INF = float("nan"), float("inf")
# Coordinates where rounding decides: -0.0, one float32 step around 0 and 1, subnormal, huge.
EDGE_COORDINATES = [
    -0.0,
    1e-7,
    -1e-7,
    1 - 1e-7,
    1 + 1e-7,
    1e-40,
    1e-30,
    1e6,
    -1e6,
    3e20,
    1e30,
    -1e30,
]
EXTRAPOLATION_VALUES = [0.0, -1.0, 2.5, NAN, INF, -INF, 1e-40, -1e-45]
# Normal, tiny-normal, near FLT_MIN and subnormal magnitudes (TensorFlow flushes subnormals).
TINY = [1.0, 0.5, 3e-38, 1.1754944e-38, 1.1754942e-38, 1e-39, 1e-40, 1e-45, 1e-30, 0.0]


@pytest.fixture(
    scope="module",
    params=sorted(b.name for b in registry.all() if b.distribution == "cropcore"),
)
def backend(request) -> str:
    """Each built-in backend that can run here (module-scoped: hypothesis draws per test)."""
    found = registry.get(request.param)
    found.probe()
    if found.status != "available":
        pytest.skip(f"backend {request.param!r} is {found.status}: {found.reason}")
    return request.param


def assert_bit_identical(got, expected: np.ndarray) -> None:
    """Same dtype, shape and bits; NaN matches NaN whatever its sign and payload."""
    got = np.asarray(got)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    uint = np.dtype(f"uint{8 * expected.dtype.itemsize}")
    got_nan, expected_nan = np.isnan(got), np.isnan(expected)
    same_bits = np.ascontiguousarray(got).view(uint) == np.ascontiguousarray(expected).view(uint)
    differ = (got_nan != expected_nan) | (~expected_nan & ~same_bits)
    assert not differ.any(), (
        f"{int(differ.sum())} of {expected.size} differ; first at "
        f"{tuple(int(i) for i in np.argwhere(differ)[0])}: cropcore "
        f"{got[differ][0]!r}, TensorFlow {expected[differ][0]!r}"
    )


def sprinkle(rng: np.random.Generator, x: np.ndarray, values: str) -> np.ndarray:
    """``x`` (float), with ``values`` "specials" (inf, -inf, NaN, and 7e4, past float16's range)
    or "tiny" (magnitudes around float32's underflow) in place of some elements."""
    if values == "tiny":
        magnitudes = rng.choice(TINY, size=x.shape) * rng.uniform(0.5, 2.0, size=x.shape)
        return (magnitudes * rng.choice([-1.0, 1.0], size=x.shape)).astype(x.dtype)
    if values == "specials" and x.size:
        mask = rng.random(x.shape) < 0.3
        with np.errstate(over="ignore"):  # 7e4 is inf in float16
            x[mask] = rng.choice([INF, -INF, NAN, 7e4], size=int(mask.sum())).astype(x.dtype)
    return x


def random_image(
    rng: np.random.Generator, dtype: str, shape: tuple[int, ...], values: str = "normal"
) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return sprinkle(rng, (rng.standard_normal(shape) * 100).astype(dt), values)


def random_grads(rng: np.random.Generator, shape: tuple[int, ...], values: str) -> np.ndarray:
    return sprinkle(rng, (rng.standard_normal(shape) * 3).astype(np.float32), values)


def strided(x: np.ndarray) -> np.ndarray:
    """The same values as a non-contiguous view (every other column of a wider array)."""
    wide = np.zeros((*x.shape[:2], x.shape[2] * 2, *x.shape[3:]), x.dtype)
    wide[:, :, ::2] = x
    return wide[:, :, ::2]


@st.composite
def crop_calls(draw, dtypes=IMAGE_DTYPES, min_boxes=0):
    """A valid call: image shape and dtype, boxes, box indices, crop size, how the image and
    gradient values are drawn and laid out, and a seed for them."""
    num_boxes = draw(st.integers(min_boxes, 5))
    batch = draw(st.integers(0 if num_boxes == 0 else 1, 3))
    height, width = (
        draw(st.one_of(st.integers(1, 8), st.sampled_from([16, 58, 64]))) for _ in "hw"
    )
    depth = draw(st.integers(0 if min_boxes == 0 else 1, 3))
    # Coordinates on the pixel grid (floor == ceil) and exactly 0 or 1 are the interesting ones.
    anchors = [0.0, 1.0, 0.5, *(k / (height - 1) for k in range(1, height - 1))]
    coordinate = st.one_of(
        st.floats(-1.5, 2.5, width=32), st.sampled_from(anchors), st.sampled_from(EDGE_COORDINATES)
    )
    boxes = np.array(
        draw(st.lists(st.lists(coordinate, min_size=4, max_size=4), min_size=num_boxes,
                      max_size=num_boxes)),
        dtype=np.float32,
    ).reshape(num_boxes, 4)  # fmt: skip
    box_indices = np.array(
        draw(st.lists(st.integers(0, max(batch - 1, 0)), min_size=num_boxes, max_size=num_boxes)),
        dtype=np.int32,
    )
    crop_dim = st.one_of(st.integers(1, 6), st.sampled_from([13, 22, 31]))
    return {
        "dtype": draw(st.sampled_from(dtypes)),
        "shape": (batch, height, width, depth),
        "boxes": boxes,
        "box_indices": box_indices,
        "crop_size": (draw(crop_dim), draw(crop_dim)),
        "values": draw(st.sampled_from(["normal", "normal", "specials", "tiny"])),
        "strided": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def nchw(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 3, 1))


def laid_out(x: np.ndarray, channels_first: bool, make_strided: bool) -> np.ndarray:
    x = nchw(x) if channels_first else x
    return strided(x) if make_strided else x


@LIVE
@given(
    call=crop_calls(),
    method=st.sampled_from(METHODS),
    extrapolation_value=st.sampled_from(EXTRAPOLATION_VALUES),
    data_format=st.sampled_from(["channels_last", "channels_first"]),
)
def test_crop_and_resize_matches_live_tensorflow(
    backend, call, method, extrapolation_value, data_format
):
    rng = np.random.default_rng(call["seed"])
    image = random_image(rng, call["dtype"], call["shape"], call["values"])
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
        laid_out(image, channels_first, call["strided"]),
        call["boxes"],
        call["box_indices"],
        call["crop_size"],
        method=method,
        extrapolation_value=extrapolation_value,
        data_format=data_format,
        backend=backend,
    )
    assert_bit_identical(
        np.moveaxis(np.asarray(crops), 1, 3) if channels_first else crops, expected
    )


def tf_grad_image(grads, boxes, box_indices, image_shape, method="bilinear", dtype="float32"):
    return tf.raw_ops.CropAndResizeGradImage(
        grads=grads,
        boxes=boxes,
        box_ind=box_indices,
        image_size=np.array(image_shape, np.int32),
        T=tf.as_dtype(dtype),
        method=method,
    ).numpy()


def tf_grad_boxes(grads, image, boxes, box_indices):
    return tf.raw_ops.CropAndResizeGradBoxes(
        grads=grads, image=image, boxes=boxes, box_ind=box_indices
    ).numpy()


@pytest.mark.skipif(not SINGLE_THREADED, reason="TensorFlow's thread pools were already started")
@LIVE
@given(
    call=crop_calls(dtypes=GRAD_IMAGE_DTYPES),
    method=st.sampled_from(METHODS),
    data_format=st.sampled_from(["channels_last", "channels_first"]),
    upsampling=st.booleans(),
)
def test_grad_image_matches_live_tensorflow(backend, call, method, data_format, upsampling):
    rng = np.random.default_rng(call["seed"])
    batch, height, width, depth = call["shape"]
    crop_size = call["crop_size"]
    if upsampling:  # many contributions to each pixel of a tiny image
        height, width, crop_size = min(height, 3), min(width, 3), (17, 19)
    grads = random_grads(rng, (len(call["boxes"]), *crop_size, depth), call["values"])
    expected = tf_grad_image(
        grads, call["boxes"], call["box_indices"], (batch, height, width, depth), method,
        call["dtype"],
    )  # fmt: skip
    channels_first = data_format == "channels_first"
    out = cropcore.crop_and_resize_grad_image(
        laid_out(grads, channels_first, call["strided"]),
        call["boxes"],
        call["box_indices"],
        (batch, depth, height, width) if channels_first else (batch, height, width, depth),
        method=method,
        data_format=data_format,
        dtype=call["dtype"],
        backend=backend,
    )
    assert_bit_identical(np.moveaxis(np.asarray(out), 1, 3) if channels_first else out, expected)


@LIVE
@given(call=crop_calls(), data_format=st.sampled_from(["channels_last", "channels_first"]))
def test_grad_boxes_matches_live_tensorflow(backend, call, data_format):
    rng = np.random.default_rng(call["seed"])
    image = random_image(rng, call["dtype"], call["shape"], call["values"])
    num_boxes, depth = len(call["boxes"]), call["shape"][3]
    grads = random_grads(rng, (num_boxes, *call["crop_size"], depth), call["values"])
    expected = tf_grad_boxes(grads, image, call["boxes"], call["box_indices"])
    channels_first = data_format == "channels_first"
    out = cropcore.crop_and_resize_grad_boxes(
        laid_out(grads, channels_first, call["strided"]),
        laid_out(image, channels_first, call["strided"]),
        call["boxes"],
        call["box_indices"],
        data_format=data_format,
        backend=backend,
    )
    assert_bit_identical(out, expected)


@pytest.mark.skipif(not SINGLE_THREADED, reason="TensorFlow's thread pools were already started")
@settings(max_examples=40, deadline=None)
@given(call=crop_calls(dtypes=("float32",), min_boxes=1), method=st.sampled_from(METHODS))
def test_tape_gradients_match_cropcore_gradient_ops(backend, call, method):
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
            grads, call["boxes"], call["box_indices"], call["shape"], method=method, backend=backend
        ),
        image_grad.numpy(),
    )
    assert_bit_identical(
        cropcore.crop_and_resize_grad_boxes(
            grads, image_np, call["boxes"], call["box_indices"], backend=backend
        ),
        boxes_grad.numpy(),
    )


# --------------------------------------------------------------------------------------------------
# Fixed sweeps and sizes


@pytest.mark.parametrize("method", METHODS)
def test_edge_overshoot_of_every_size_and_crop_matches_live_tensorflow(backend, method):
    """Box [0, 0, 1, 1] and its flip for every image size and crop size from 2 to 64, along each
    axis: where the last float32 sample lands one ulp past the edge, it is extrapolated."""
    boxes = np.array([[0, 0, 1, 1], [1, 1, 0, 0]], np.float32)
    box_indices = np.zeros(2, np.int32)
    for size in range(2, 65):
        tall = np.arange(size * 3, dtype=np.float32).reshape(1, size, 3, 1)
        for image in (tall, np.ascontiguousarray(tall.transpose(0, 2, 1, 3))):
            for crop in range(2, 65):
                crop_size = (crop, 2) if image is tall else (2, crop)
                expected = tf.image.crop_and_resize(
                    image, boxes, box_indices, crop_size, method=method, extrapolation_value=-1.0
                ).numpy()
                got = cropcore.crop_and_resize(
                    image, boxes, box_indices, crop_size, method, -1.0, backend=backend
                )
                assert_bit_identical(got, expected)


@pytest.mark.parametrize("method", METHODS)
def test_rounding_ties_match_live_tensorflow(backend, method):
    """Samples on exact halves and one float32 step either side (H - 1 a power of two makes
    k + 0.5 exact): nearest rounds halves away from zero, and roundf is not floorf(x + 0.5f)."""
    for size in (2, 3, 5, 9, 17, 33):
        image = np.arange(size, dtype=np.float32).reshape(1, size, 1, 1) * 10 + 1
        n = size - 1
        fractions = (0.5, 0.49999997, 0.50000006, 0.25, 0.0)
        coordinates = np.array([(k + f) / n for k in range(n) for f in fractions], np.float32)
        boxes = np.zeros((len(coordinates), 4), np.float32)
        boxes[:, 0] = boxes[:, 2] = coordinates
        walks = np.array([[0.5 / n, 0, 1 - 0.5 / n, 0], [0.49999997 / n, 0, 1, 0]], np.float32)
        calls = [(boxes, crop) for crop in ((1, 1), (2, 1), (3, 2))]
        calls += [(walks, (crop, 1)) for crop in (n, 2 * n + 1, n + 1)]
        for call_boxes, crop_size in calls:
            box_indices = np.zeros(len(call_boxes), np.int32)
            expected = tf.image.crop_and_resize(
                image, call_boxes, box_indices, crop_size, method=method, extrapolation_value=-5.0
            ).numpy()
            got = cropcore.crop_and_resize(
                image, call_boxes, box_indices, crop_size, method, -5.0, backend=backend
            )
            assert_bit_identical(got, expected)


@pytest.mark.parametrize("dtype", ["float32", "uint8", "float16"])
def test_detection_sized_crops_match_live_tensorflow(backend, dtype):
    """Deep feature maps and many boxes: (2, 40, 37, 64), 100 boxes, 14 x 14 crops."""
    rng = np.random.default_rng(14)
    image = random_image(rng, dtype, (2, 40, 37, 64))
    boxes = rng.uniform(-0.3, 1.3, (100, 4)).astype(np.float32)
    box_indices = rng.integers(0, 2, 100).astype(np.int32)
    for method in METHODS:
        expected = tf.image.crop_and_resize(
            image, boxes, box_indices, (14, 14), method=method
        ).numpy()
        got = cropcore.crop_and_resize(
            strided(image), boxes, box_indices, (14, 14), method, backend=backend
        )
        assert_bit_identical(got, expected)


@pytest.mark.skipif(not SINGLE_THREADED, reason="TensorFlow's thread pools were already started")
@pytest.mark.parametrize("dtype", GRAD_IMAGE_DTYPES)
def test_long_accumulation_chains_match_live_tensorflow(backend, dtype):
    """200 boxes onto one 4 x 4 image: long sums into each pixel, rounded to ``dtype`` at each
    step in TensorFlow's sequential order (float16 loses most)."""
    rng = np.random.default_rng(200)
    boxes = rng.uniform(-0.2, 1.2, (200, 4)).astype(np.float32)
    grads = rng.standard_normal((200, 9, 9, 3)).astype(np.float32)
    box_indices = np.zeros(200, np.int32)
    for method in METHODS:
        expected = tf_grad_image(grads, boxes, box_indices, (1, 4, 4, 3), method, dtype)
        got = cropcore.crop_and_resize_grad_image(
            grads, boxes, box_indices, (1, 4, 4, 3), method, dtype=dtype, backend=backend
        )
        assert_bit_identical(got, expected)


@pytest.mark.skipif(not SINGLE_THREADED, reason="TensorFlow's thread pools were already started")
@pytest.mark.parametrize("dtype", GRAD_IMAGE_DTYPES)
def test_d9m_configuration_matches_live_tensorflow(backend, dtype):
    """image_grad_d9m_test's CropAndResizeOpDeterministicTest inputs (64 boxes of 128x128 over 16
    images of 64x64): many crops accumulate into each pixel, in TensorFlow's sequential order."""
    rng = np.random.RandomState(456)
    image = (rng.random_sample((16, 64, 64, 1)) * 2.0 - 1.0).astype(dtype)
    boxes = (rng.random_sample((64, 4)) * 1.01).astype(np.float32)
    box_indices = rng.randint(low=0, high=16, size=(64,)).astype(np.int32)
    grads = (rng.random_sample((64, 128, 128, 1)) * 0.002 - 0.001).astype(np.float32)
    assert_bit_identical(
        cropcore.crop_and_resize_grad_image(
            grads, boxes, box_indices, image.shape, dtype=dtype, backend=backend
        ),
        tf_grad_image(grads, boxes, box_indices, image.shape, dtype=dtype),
    )
    assert_bit_identical(
        cropcore.crop_and_resize_grad_boxes(grads, image, boxes, box_indices, backend=backend),
        tf_grad_boxes(grads, image, boxes, box_indices),
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
def test_crop2d_matches_live_keras(backend, seed, height, width, data_format, dtype, form, data):
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
    out = cropcore.crop2d(x, cropping, data_format, backend=backend)
    assert out.dtype == x.dtype
    np.testing.assert_array_equal(out.astype(expected.dtype), expected, strict=True)
