"""The numba backend: the reference's answers bit for bit, in parallel, from any thread or fork.

Exactness is checked differentially against the reference backend (``numpy``, itself checked
against TensorFlow) on random calls and edge cases, and against the vectors recorded from
TensorFlow (the conformance package's ``tf_reference.npz``). Every check runs through the serial and the parallel
variant of each kernel (the ``variant`` fixture moves the size threshold between them).

Compilation is paid once: the kernels are compiled with ``cache=True`` (on disk, once per machine)
and the module-scoped ``compiled`` fixture loads or compiles every specialisation before the first
test, so no test pays for it.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

numba = pytest.importorskip("numba")

import contextlib  # noqa: E402

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import cropcore  # noqa: E402
from cropcore import hostmem  # noqa: E402
from cropcore.spec import GRAD_IMAGE_DTYPES, IMAGE_DTYPES  # noqa: E402
from cropcore_numba import _arith, kernels  # noqa: E402

BACKEND = "numba"
REFERENCE = "numpy"
FORMATS = ("channels_last", "channels_first")
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    # `variant` only sets a module constant, the same for every example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
#: The parallel kernels share their per-pixel code with the serial ones, so they are tested on a
#: few dtypes (one of each kind of pixel load) to keep the compilation the suite needs small.
PARALLEL_DTYPES = ("uint8", "float16", "float32", "float64")


# --------------------------------------------------------------------------------------------------
# Helpers and fixtures


def assert_bit_identical(got: Any, expected: np.ndarray) -> None:
    """Same type, dtype, shape and bits; NaN matches NaN whatever its payload."""
    assert isinstance(got, np.ndarray)
    assert got.dtype == expected.dtype
    assert got.shape == expected.shape
    uint = np.dtype(f"uint{8 * expected.dtype.itemsize}")
    got_bits = np.ascontiguousarray(got).view(uint)
    expected_bits = np.ascontiguousarray(expected).view(uint)
    got_nan, expected_nan = np.isnan(got), np.isnan(expected)
    differ = (got_nan != expected_nan) | (~expected_nan & (got_bits != expected_bits))
    assert not differ.any(), (
        f"{int(differ.sum())} of {expected.size} elements differ; first at "
        f"{tuple(int(i) for i in np.argwhere(differ)[0])}: numba {got[differ][0]!r}, "
        f"reference {expected[differ][0]!r}"
    )


def both(op: str, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
    """``op`` run on the numba backend and on the reference backend."""
    function = getattr(cropcore, op)
    return function(*args, backend=BACKEND, **kwargs), function(*args, backend=REFERENCE, **kwargs)


def assert_same_as_reference(op: str, *args: Any, **kwargs: Any) -> np.ndarray:
    got, expected = both(op, *args, **kwargs)
    assert_bit_identical(got, expected)
    return got


def to_format(x: np.ndarray, data_format: str) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 3, 1)) if data_format == "channels_first" else x


def random_image(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    return (rng.standard_normal(shape) * 100).astype(dt)


def random_boxes(rng: np.random.Generator, n: int, low=-0.5, high=1.5) -> np.ndarray:
    return rng.uniform(low, high, (n, 4)).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def compiled() -> None:
    """Compile (or load from Numba's disk cache) every kernel specialisation the tests use, once."""
    rng = np.random.default_rng(0)
    boxes = random_boxes(rng, 3)
    indices = np.zeros(3, np.int32)
    saved = kernels.PARALLEL_THRESHOLD, kernels.DIRECT_THRESHOLD
    try:
        for direct, threshold, dtypes in (
            (1 << 62, 1 << 62, IMAGE_DTYPES),
            (0, 1 << 62, IMAGE_DTYPES),
            (0, 0, PARALLEL_DTYPES),
        ):
            # direct (small image gradients), serial, then parallel
            kernels.DIRECT_THRESHOLD, kernels.PARALLEL_THRESHOLD = direct, threshold
            for data_format in FORMATS:
                for dtype in dtypes:
                    image = to_format(random_image(rng, (1, 4, 5, 2), dtype), data_format)
                    cropcore.crop_and_resize(
                        image, boxes, indices, (3, 2), data_format=data_format, backend=BACKEND
                    )
                    grads = to_format(np.ones((3, 3, 2, 2), np.float32), data_format)
                    cropcore.crop_and_resize_grad_boxes(
                        grads, image, boxes, indices, data_format=data_format, backend=BACKEND
                    )
                for dtype in GRAD_IMAGE_DTYPES:
                    cropcore.crop_and_resize_grad_image(
                        grads, boxes, indices, image.shape, dtype=dtype, data_format=data_format,
                        backend=BACKEND,
                    )  # fmt: skip
    finally:
        kernels.PARALLEL_THRESHOLD, kernels.DIRECT_THRESHOLD = saved


@pytest.fixture(params=["direct", "serial", "parallel"])
def variant(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[str, ...]:
    """Run the test through each kernel variant, whatever the size of the call.

    ``direct``: the image gradient's plain loop for small calls (the other ops run serially);
    ``serial``: the serial kernels (the image gradient's blocked one); ``parallel``: the parallel
    kernels. Returns the image dtypes to test with that variant.
    """
    parallel = request.param == "parallel"
    monkeypatch.setattr(kernels, "PARALLEL_THRESHOLD", 0 if parallel else 1 << 62)
    monkeypatch.setattr(kernels, "DIRECT_THRESHOLD", 1 << 62 if request.param == "direct" else 0)
    return PARALLEL_DTYPES if parallel else IMAGE_DTYPES


# --------------------------------------------------------------------------------------------------
# Random calls, against the reference


coordinates = st.one_of(
    st.floats(-1.5, 2.5, width=32),
    st.sampled_from([0.0, -0.0, 1.0, 0.5, 0.25, 1 / 3, 2 / 3, 1e-7, -1e-7, 0.9999999]),
    st.sampled_from([3e38, -3e38, 1e30, -1e30, 1e8, -1e8]),  # spans that overflow float32
    # subnormal and near-subnormal sides: under flush-to-zero a crop-size-1 centre can become -0.0
    st.sampled_from([1e-39, -9.46e-41, 2.25e-38, -2.27e-38, -6.25e-39]),
)


@st.composite
def crop_calls(draw: st.DrawFn, dtypes: tuple[str, ...] = IMAGE_DTYPES) -> dict[str, Any]:
    """A valid crop_and_resize call (NHWC arrays; tests convert to the data format)."""
    dtype = draw(st.sampled_from(dtypes))
    shape = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 9)),
        draw(st.integers(1, 9)),
        draw(st.integers(0, 4)),
    )
    num_boxes = draw(st.integers(0, 6))
    boxes = np.array(
        draw(st.lists(st.tuples(*[coordinates] * 4), min_size=num_boxes, max_size=num_boxes)),
        np.float32,
    ).reshape(num_boxes, 4)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    image = random_image(rng, shape, dtype)
    if np.dtype(dtype).kind == "f" and image.size and draw(st.booleans()):
        image.reshape(-1)[rng.integers(0, image.size, 2)] = [np.nan, np.inf]
    return {
        "image": image,
        "boxes": boxes,
        "box_indices": rng.integers(0, shape[0], num_boxes).astype(np.int32),
        "crop_size": (draw(st.integers(1, 7)), draw(st.integers(1, 7))),
        "method": draw(st.sampled_from(["bilinear", "nearest"])),
        "extrapolation_value": draw(st.sampled_from([0.0, -1.0, 7.5, np.nan, -np.inf])),
        "data_format": draw(st.sampled_from(FORMATS)),
        "seed": seed,
    }


@SETTINGS
@given(data=st.data())
def test_crop_and_resize_is_bit_identical_to_the_reference(data, variant):
    call = data.draw(crop_calls(variant))
    fmt = call["data_format"]
    assert_same_as_reference(
        "crop_and_resize",
        to_format(call["image"], fmt),
        call["boxes"],
        call["box_indices"],
        call["crop_size"],
        call["method"],
        call["extrapolation_value"],
        data_format=fmt,
    )


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from(GRAD_IMAGE_DTYPES))
def test_grad_image_is_bit_identical_to_the_reference(data, dtype, variant):
    call = data.draw(crop_calls(variant))
    fmt = call["data_format"]
    batch, height, width, depth = call["image"].shape
    rng = np.random.default_rng(call["seed"])
    grads = rng.standard_normal((len(call["boxes"]), *call["crop_size"], depth)).astype(np.float32)
    image_shape = (
        (batch, depth, height, width) if fmt == "channels_first" else (batch, height, width, depth)
    )
    assert_same_as_reference(
        "crop_and_resize_grad_image",
        to_format(grads, fmt),
        call["boxes"],
        call["box_indices"],
        image_shape,
        call["method"],
        data_format=fmt,
        dtype=dtype,
    )


@SETTINGS
@given(data=st.data())
def test_grad_boxes_is_bit_identical_to_the_reference(data, variant):
    call = data.draw(crop_calls(variant))
    fmt = call["data_format"]
    depth = call["image"].shape[3]
    rng = np.random.default_rng(call["seed"])
    grads = rng.standard_normal((len(call["boxes"]), *call["crop_size"], depth)).astype(np.float32)
    assert_same_as_reference(
        "crop_and_resize_grad_boxes",
        to_format(grads, fmt),
        to_format(call["image"], fmt),
        call["boxes"],
        call["box_indices"],
        data_format=fmt,
    )


@pytest.mark.parametrize("dtype", PARALLEL_DTYPES)
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_large_calls_match_the_reference(dtype, data_format, method):
    """Big enough for the parallel kernels at the default threshold, with many boxes per image."""
    rng = np.random.default_rng(7)
    image = random_image(rng, (2, 33, 47, 5), dtype)
    boxes = random_boxes(rng, 40, -0.2, 1.2)
    indices = rng.integers(0, 2, 40).astype(np.int32)
    args = (to_format(image, data_format), boxes, indices, (17, 19), method, -3.0)
    crops = assert_same_as_reference("crop_and_resize", *args, data_format=data_format)
    grads = np.ascontiguousarray(rng.standard_normal(crops.shape).astype(np.float32))
    if np.dtype(dtype).kind == "f":
        assert_same_as_reference(
            "crop_and_resize_grad_image", grads, boxes, indices, args[0].shape, method,
            data_format=data_format, dtype=dtype,
        )  # fmt: skip
    assert_same_as_reference(
        "crop_and_resize_grad_boxes", grads, args[0], boxes, indices, data_format=data_format
    )


@pytest.mark.parametrize("dtype", GRAD_IMAGE_DTYPES)
@pytest.mark.parametrize("data_format", FORMATS)
def test_deep_images_match_the_reference(dtype, data_format, variant):
    """Many channels (the image gradient sweeps each image row in its own pass), boxes on and off
    the pixel grid, many boxes per image, rows split between blocks of image rows."""
    rng = np.random.default_rng(9)
    image = random_image(rng, (2, 21, 18, 40), dtype)
    boxes = np.concatenate([random_boxes(rng, 30, -0.2, 1.2), [[0, 0, 1, 1], [0.5, 0, 0.5, 1]]])
    boxes = boxes.astype(np.float32)
    indices = rng.integers(0, 2, len(boxes)).astype(np.int32)
    image = to_format(image, data_format)
    for method in ("bilinear", "nearest"):
        crops = assert_same_as_reference(
            "crop_and_resize", image, boxes, indices, (11, 6), method, data_format=data_format
        )
        grads = rng.standard_normal(crops.shape).astype(np.float32)
        assert_same_as_reference(
            "crop_and_resize_grad_image", grads, boxes, indices, image.shape, method,
            data_format=data_format, dtype=dtype,
        )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# TensorFlow's recorded answers


from cropcore_conformance.vectors import DATA_PATH as TF_VECTORS  # noqa: E402


def _recorded() -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    with np.load(TF_VECTORS, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return json.loads(str(arrays.pop("meta")))["cases"], arrays


def test_recorded_tensorflow_answers_are_reproduced_bit_for_bit(variant):
    cases, arrays = _recorded()
    checked = 0
    for case in cases:
        a = {name: arrays[f"{case['id']}/{name}"] for name in case["arrays"]}
        for fmt in FORMATS:
            if case["op"] == "crop_and_resize":
                got = cropcore.crop_and_resize(
                    to_format(a["image"], fmt), a["boxes"], a["box_indices"],
                    tuple(case["crop_size"]), case["method"], case["extrapolation_value"],
                    data_format=fmt, backend=BACKEND,
                )  # fmt: skip
                expected = a["crops"]
            elif case["op"] == "grad_image":
                b, h, w, d = case["image_shape"]
                got = cropcore.crop_and_resize_grad_image(
                    to_format(a["grads"], fmt), a["boxes"], a["box_indices"],
                    (b, d, h, w) if fmt == "channels_first" else (b, h, w, d), case["method"],
                    data_format=fmt, dtype=case["dtype"], backend=BACKEND,
                )  # fmt: skip
                expected = a["grads_image"]
            elif case["op"] == "grad_boxes":
                got = cropcore.crop_and_resize_grad_boxes(
                    to_format(a["grads"], fmt), to_format(a["image"], fmt), a["boxes"],
                    a["box_indices"], data_format=fmt, backend=BACKEND,
                )  # fmt: skip
                assert_bit_identical(got, a["grads_boxes"])
                checked += 1
                continue
            else:
                break
            if fmt == "channels_first":
                got = np.moveaxis(got, 1, 3)
            assert_bit_identical(got, expected)
            checked += 1
    assert checked > 300


# --------------------------------------------------------------------------------------------------
# Edge cases


def _views(image: np.ndarray) -> dict[str, np.ndarray]:
    """The same pixels as ``image`` through unusual memory: strided, read-only, big-endian, ..."""
    padded = np.zeros(
        (image.shape[0], image.shape[1] * 2, image.shape[2] + 1, image.shape[3] + 2), image.dtype
    )
    padded[:, ::2, 1:, 1:-1] = image
    readonly = image.copy()
    readonly.flags.writeable = False
    return {
        "strided": padded[:, ::2, 1:, 1:-1],
        "read-only": readonly,
        "non-native byte order": image.astype(image.dtype.newbyteorder("S")),
        "fortran order": np.asfortranarray(image),
        "negative strides": np.ascontiguousarray(image[:, ::-1, ::-1])[:, ::-1, ::-1],
    }


@pytest.mark.parametrize(
    "kind", ["strided", "read-only", "non-native byte order", "fortran order", "negative strides"]
)
@pytest.mark.parametrize("dtype", PARALLEL_DTYPES)
def test_unusual_memory_layouts_give_the_same_bits(kind, dtype, variant):
    rng = np.random.default_rng(3)
    image = random_image(rng, (2, 6, 7, 3), dtype)
    boxes = random_boxes(rng, 5)
    indices = rng.integers(0, 2, 5).astype(np.int32)
    expected = cropcore.crop_and_resize(image, boxes, indices, (4, 5), backend=REFERENCE)
    strange = _views(image)[kind]
    got = cropcore.crop_and_resize(strange, boxes, indices, (4, 5), backend=BACKEND)
    assert_bit_identical(got, expected)
    strange_boxes = _views(boxes[None, :, :, None])[kind][0, :, :, 0]
    strange_indices = _views(indices[None, :, None, None])[kind][0, :, 0, 0]
    got = cropcore.crop_and_resize(image, strange_boxes, strange_indices, (4, 5), backend=BACKEND)
    assert_bit_identical(got, expected)
    grads = rng.standard_normal(expected.shape).astype(np.float32)
    strange_grads = _views(grads)[kind]
    assert_bit_identical(
        cropcore.crop_and_resize_grad_image(
            strange_grads, boxes, indices, image.shape, backend=BACKEND
        ),
        cropcore.crop_and_resize_grad_image(grads, boxes, indices, image.shape, backend=REFERENCE),
    )
    assert_bit_identical(
        cropcore.crop_and_resize_grad_boxes(
            strange_grads, strange, boxes, indices, backend=BACKEND
        ),
        cropcore.crop_and_resize_grad_boxes(grads, image, boxes, indices, backend=REFERENCE),
    )


EDGE_BOXES = {
    "identity": [[0, 0, 1, 1]],
    "flipped": [[1, 1, 0, 0]],
    "flipped rows only": [[1, 0, 0, 1]],
    "zero area": [[0.25, 0.75, 0.25, 0.75]],
    "partly outside": [[-0.5, -0.25, 1.5, 1.25]],
    "fully outside": [[2, 2, 3, 3]],
    "negative zero": [[-0.0, -0.0, 1, 1]],
    "tiny negative": [[-1e-7, 0, 1, 1]],
    "span overflows float32": [[-3e38, 0, 3e38, 1]],
    "huge finite edge": [[0, 0, 3e38, 1]],
    "huge centre": [[3e38, 3e38, 3e38, 3e38]],
    "subnormal": [[1e-45, 1e-45, 1, 1]],
    "several per image": [[0, 0, 1, 1], [0.1, 0.2, 0.9, 0.7], [1, 1, 0, 0]],
}


@pytest.mark.parametrize("boxes", EDGE_BOXES.values(), ids=EDGE_BOXES.keys())
@pytest.mark.parametrize("crop_size", [(1, 1), (1, 4), (5, 1), (3, 3), (8, 1), (22, 3)])
@pytest.mark.parametrize("data_format", FORMATS)
def test_edge_boxes_match_the_reference(boxes, crop_size, data_format, variant):
    rng = np.random.default_rng(5)
    boxes = np.array(boxes, np.float32)
    indices = np.zeros(len(boxes), np.int32)
    for shape in [(1, 58, 4, 2), (1, 1, 3, 2), (1, 3, 1, 2), (1, 2, 2, 1)]:
        image = to_format(rng.standard_normal(shape).astype(np.float32), data_format)
        for method in ("bilinear", "nearest"):
            crops = assert_same_as_reference(
                "crop_and_resize", image, boxes, indices, crop_size, method, -1.0,
                data_format=data_format,
            )  # fmt: skip
            grads = rng.standard_normal(crops.shape).astype(np.float32)
            assert_same_as_reference(
                "crop_and_resize_grad_image", grads, boxes, indices, image.shape, method,
                data_format=data_format,
            )  # fmt: skip
        assert_same_as_reference(
            "crop_and_resize_grad_boxes", grads, image, boxes, indices, data_format=data_format
        )


def test_span_overflowing_float32_is_extrapolated_not_a_crash():
    """TF 2.21 segfaults here (notes §4 #5): the coordinates are NaN. cropcore extrapolates."""
    image = np.arange(9, dtype=np.float32).reshape(1, 3, 3, 1)
    crops = cropcore.crop_and_resize(
        image, [[-3e38, 0, 3e38, 1]], [0], (4, 3), "bilinear", -1.0, backend=BACKEND
    )
    np.testing.assert_array_equal(crops, np.full((1, 4, 3, 1), -1.0, np.float32))
    grads_image = cropcore.crop_and_resize_grad_image(
        np.ones((1, 2, 2, 1), np.float32), [[0, 0, 3e38, 1]], [0], (1, 3, 3, 1), backend=BACKEND
    )
    assert np.isfinite(grads_image).all()


def test_empty_inputs(variant):
    no_boxes, no_indices = np.zeros((0, 4), np.float32), np.zeros(0, np.int32)
    image = np.ones((2, 5, 6, 3), np.float32)
    crops = cropcore.crop_and_resize(image, no_boxes, no_indices, (3, 4), backend=BACKEND)
    assert crops.shape == (0, 3, 4, 3)
    assert cropcore.crop_and_resize(
        np.ones((0, 5, 6, 3), np.uint8), no_boxes, no_indices, (3, 4), backend=BACKEND
    ).shape == (0, 3, 4, 3)
    depth_zero = cropcore.crop_and_resize(
        np.ones((1, 5, 6, 0), np.float32), [[0, 0, 1, 1]], [0], (3, 4), backend=BACKEND
    )
    assert depth_zero.shape == (1, 3, 4, 0)
    grads_image = cropcore.crop_and_resize_grad_image(
        np.zeros((0, 3, 4, 3), np.float32), no_boxes, no_indices, (2, 5, 6, 3), backend=BACKEND
    )
    assert_bit_identical(grads_image, np.zeros((2, 5, 6, 3), np.float32))
    grads_boxes = cropcore.crop_and_resize_grad_boxes(
        np.zeros((0, 3, 4, 3), np.float32), image, no_boxes, no_indices, backend=BACKEND
    )
    assert grads_boxes.shape == (0, 4)


def test_grad_image_is_deterministic_and_independent_of_the_thread_count():
    rng = np.random.default_rng(11)
    boxes = random_boxes(rng, 300, -0.1, 1.1)  # many boxes on few images: heavy overlap
    indices = rng.integers(0, 2, 300).astype(np.int32)
    grads = rng.standard_normal((300, 9, 11, 4)).astype(np.float32)
    expected = cropcore.crop_and_resize_grad_image(
        grads, boxes, indices, (2, 40, 30, 4), backend=REFERENCE
    )
    threads = numba.get_num_threads()
    try:
        for count in sorted({1, threads}):
            numba.set_num_threads(count)
            for _ in range(3):
                got = cropcore.crop_and_resize_grad_image(
                    grads, boxes, indices, (2, 40, 30, 4), backend=BACKEND
                )
                assert_bit_identical(got, expected)
    finally:
        numba.set_num_threads(threads)


# --------------------------------------------------------------------------------------------------
# float16 through its bits


@numba.njit(cache=False)
def _half_bits_of(values, out):  # pragma: no cover - compiled
    for i in range(values.shape[0]):
        out[i] = _arith.float_to_half_bits(values[i])


def test_float32_to_float16_rounding_matches_numpy_everywhere():
    rng = np.random.default_rng(0)
    halves = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float32)
    finite = halves[np.isfinite(halves)]
    # every half, the midpoints between neighbours (ties) and one float32 ulp either side of them
    ordered = np.unique(finite)
    midpoints = (ordered[:-1].astype(np.float64) + ordered[1:]) / 2
    ties = midpoints.astype(np.float32)
    values = np.concatenate([
        halves, ties, np.nextafter(ties, np.float32(np.inf)), np.nextafter(ties, np.float32(-np.inf)),
        rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
        np.array([65504, 65519.996, 65520, 1e10, -1e10, 1e-10, 2**-25, 2**-24, 3 * 2**-26], np.float32),
    ])  # fmt: skip
    out = np.empty(values.shape, np.uint16)
    _half_bits_of(values, out)
    with np.errstate(over="ignore"):
        expected = values.astype(np.float16)
    got = out.view(np.float16)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint16)[~nan], expected.view(np.uint16)[~nan])


# --------------------------------------------------------------------------------------------------
# Bad inputs: refused before the kernels run, never a crash


def _bad_calls() -> dict[str, tuple[type[Exception], Any]]:
    image = np.ones((2, 3, 3, 1), np.float32)
    one_box = np.array([[0, 0, 1, 1]], np.float32)
    grads = np.ones((1, 2, 2, 1), np.float32)
    car = cropcore.crop_and_resize
    gi = cropcore.crop_and_resize_grad_image
    gb = cropcore.crop_and_resize_grad_boxes
    return {
        "1e40 box (TF CVE-2020-15266)": (ValueError, lambda: car(np.zeros((2, 1, 1, 1), np.float32), [[1e40, 0, 0, 0]], [1], (1, 1))),
        "nan box": (ValueError, lambda: car(image, [[np.nan, 0, 1, 1]], [0], (2, 2))),
        "inf box": (ValueError, lambda: car(image, [[0, 0, np.inf, 1]], [0], (2, 2))),
        "nan box, grad image (TF segfault)": (ValueError, lambda: gi(grads, [[np.nan, 1, 1, 1]], [0], (1, 3, 3, 1))),
        "nan box, grad boxes (TF segfault)": (ValueError, lambda: gb(grads, image, [[np.nan, 1, 1, 1]], [0])),
        "rank-1 empty boxes, grad image (TF abort)": (ValueError, lambda: gi(np.zeros((0, 1, 1, 1), np.float32), np.zeros(0, np.float32), [0], (1, 1, 1, 1))),
        "rank-1 empty boxes, grad boxes (TF abort)": (ValueError, lambda: gb(np.zeros((0, 1, 1, 1), np.float32), image, np.zeros(0, np.float32), [0])),
        "box index out of range": (IndexError, lambda: car(image, one_box, [2], (2, 2))),
        "negative box index": (IndexError, lambda: car(image, one_box, [-1], (2, 2))),
        "box index with an empty batch": (IndexError, lambda: car(np.ones((0, 3, 3, 1), np.float32), one_box, [0], (2, 2))),
        "huge crop size (TF #46890)": (ValueError, lambda: car(np.ones((1, 1, 1, 1), np.float32), np.ones((11, 4), np.float32), np.zeros(11, np.int32), (2065374891, 1145309325))),
        "output larger than memory": (cropcore.OutputTooLargeError, lambda: car(image, np.ones((4, 4), np.float32), np.zeros(4, np.int32), (1 << 20, 1 << 20))),
        "zero crop size": (ValueError, lambda: car(image, one_box, [0], (0, 2))),
        "image rank 3": (ValueError, lambda: car(image[0], one_box, [0], (2, 2))),
        "zero image height": (ValueError, lambda: car(np.ones((1, 0, 3, 1), np.float32), one_box, [0], (2, 2))),
        "boxes with 5 columns": (ValueError, lambda: car(image, np.ones((1, 5), np.float32), [0], (2, 2))),
        "box indices of rank 2 (TF test)": (ValueError, lambda: car(np.ones((2, 2, 2, 2)), np.ones((0, 4)), np.ones((0, 1)), (1, 1))),
        "bool image": (TypeError, lambda: car(image.astype(bool), one_box, [0], (2, 2))),
        "complex image": (TypeError, lambda: car(image.astype(np.complex64), one_box, [0], (2, 2))),
        "uint32 image": (TypeError, lambda: car(image.astype(np.uint32), one_box, [0], (2, 2))),
        "float box indices": (TypeError, lambda: car(image, one_box, [0.0], (2, 2))),
        "unknown method": (ValueError, lambda: car(image, one_box, [0], (2, 2), "bicubic")),
        "grad image in uint8": (TypeError, lambda: gi(grads, one_box, [0], (1, 3, 3, 1), dtype="uint8")),
        "grad image depth mismatch": (ValueError, lambda: gi(grads, one_box, [0], (1, 3, 3, 2))),
        "grad boxes with nearest": (ValueError, lambda: gb(grads, image, one_box, [0], "nearest")),
        "grad boxes depth mismatch": (ValueError, lambda: gb(np.ones((1, 2, 2, 3), np.float32), image, one_box, [0])),
    }  # fmt: skip


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_bad_inputs_are_refused_without_a_crash(name):
    expected, call = _bad_calls()[name]
    with cropcore.use_backend(BACKEND), pytest.raises(expected):
        call()


# --------------------------------------------------------------------------------------------------
# Threads and fork


def _job(seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    size = (16, 32)[seed % 2]  # half the jobs run the parallel kernels, half the serial ones
    image = rng.standard_normal((2, 40, 50, 8)).astype(np.float32)
    boxes = random_boxes(rng, 64, -0.2, 1.2)
    indices = rng.integers(0, 2, 64).astype(np.int32)
    fmt = FORMATS[(seed // 2) % 2]
    image = to_format(image, fmt)
    crops = cropcore.crop_and_resize(
        image, boxes, indices, (size, size), data_format=fmt, backend=BACKEND
    )
    grads_image = cropcore.crop_and_resize_grad_image(
        crops, boxes, indices, image.shape, data_format=fmt, backend=BACKEND
    )
    grads_boxes = cropcore.crop_and_resize_grad_boxes(
        crops, image, boxes, indices, data_format=fmt, backend=BACKEND
    )
    return crops.copy(), grads_image.copy(), grads_boxes


def test_concurrent_calls_from_eight_threads_agree_with_serial_calls():
    seeds = list(range(8)) * 4
    serial = {seed: _job(seed) for seed in set(seeds)}
    barrier = threading.Barrier(8)

    def run(seed: int) -> tuple[np.ndarray, ...]:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=60)
        return _job(seed)

    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(run, seeds))
    for seed, results in zip(seeds, concurrent, strict=True):
        for got, expected in zip(results, serial[seed], strict=True):
            assert_bit_identical(got, expected)


def _digest_in_child(seed: int) -> list[bytes]:
    return [x.tobytes() for x in _job(seed)]


def test_a_forked_child_runs_the_kernels_after_the_parent_did():
    if "fork" not in multiprocessing.get_all_start_methods():
        pytest.skip("no fork on this platform")
    expected = [x.tobytes() for x in _job(1)]  # the parent starts Numba's thread pool first
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        results = pool.map_async(_digest_in_child, [1, 1, 2]).get(timeout=300)
    assert results[0] == expected
    assert results[1] == expected
    assert results[2] == [x.tobytes() for x in _job(2)]


def test_threading_layer_is_thread_and_fork_safe_unless_the_user_chose():
    layer = kernels.threading_layer()
    assert layer in ("tbb", "workqueue", "omp")
    if numba.config.THREADING_LAYER == "forksafe":  # our choice, not the user's
        assert layer in ("tbb", "workqueue")


# --------------------------------------------------------------------------------------------------
# Result memory


def test_results_own_their_memory_until_dropped():
    rng = np.random.default_rng(2)
    image = rng.standard_normal((1, 64, 64, 16)).astype(np.float32)
    boxes = random_boxes(rng, 64)
    indices = np.zeros(64, np.int32)
    first = cropcore.crop_and_resize(image, boxes, indices, (32, 32), backend=BACKEND)
    snapshot = first.copy()
    view = first[3:5]
    del first
    second = cropcore.crop_and_resize(image, boxes[::-1].copy(), indices, (32, 32), backend=BACKEND)
    np.testing.assert_array_equal(view, snapshot[3:5])  # the view kept its memory out of the pool
    assert not np.shares_memory(second, view)


def test_recycled_memory_is_fully_overwritten():
    image = np.ones((1, 64, 64, 16), np.float32)
    indices = np.zeros(64, np.int32)
    inside = np.tile(np.array([[0, 0, 1, 1]], np.float32), (64, 1))
    outside = np.tile(np.array([[2, 2, 3, 3]], np.float32), (64, 1))
    for _ in range(3):
        crops = cropcore.crop_and_resize(image, inside, indices, (32, 32), backend=BACKEND)
        assert (crops == 1).all()
        del crops
        crops = cropcore.crop_and_resize(
            image, outside, indices, (32, 32), "bilinear", 5.0, backend=BACKEND
        )
        assert (crops == 5).all()
        del crops
        grads = np.ones((64, 32, 32, 16), np.float32)
        grads_image = cropcore.crop_and_resize_grad_image(
            grads, outside, indices, image.shape, backend=BACKEND
        )
        assert (grads_image == 0).all()  # samples outside contribute nothing; the rest is zeroed
        del grads_image


def test_large_results_come_from_the_shared_host_pool():
    pool = hostmem.pool()
    if pool.max_bytes < 4 << 20:
        pytest.skip(f"the pool's budget is {pool.max_bytes} bytes here")
    pool.clear()
    image = np.zeros((1, 8, 8, 64), np.float32)
    crops = cropcore.crop_and_resize(
        image, [[0, 0, 1, 1]] * 64, [0] * 64, (16, 16), backend=BACKEND
    )
    assert crops.nbytes >= pool.min_bytes
    assert isinstance(crops.base, hostmem._Lease)
    address = crops.ctypes.data
    del crops
    again = cropcore.crop_and_resize(
        image, [[0, 0, 1, 1]] * 64, [0] * 64, (16, 16), backend=BACKEND
    )
    assert again.ctypes.data == address


# --------------------------------------------------------------------------------------------------
# The plugin


def test_numpy_arrays_go_to_numba_by_default():
    image = np.zeros((1, 4, 4, 1), np.float32)
    decision = cropcore.explain("crop_and_resize", image, [[0, 0, 1, 1]], [0], (2, 2))
    assert decision.backend == "numba"
    assert decision.rule.startswith("the priority list")
    cropcore.set_priority(["numpy", "numba"])
    decision = cropcore.explain("crop_and_resize", image, [[0, 0, 1, 1]], [0], (2, 2))
    assert decision.backend == "numpy"


def test_backend_info_and_check():
    backend = cropcore.backends(probe=True)
    numba_backend = next(b for b in backend if b.name == "numba")
    assert numba_backend.status == "available", numba_backend.reason
    assert numba_backend.version == numba.__version__
    assert numba_backend.info.requires == ("numba",)
    assert numba_backend.install_hint == 'pip install "cropcore[numba]"'
    assert set(numba_backend.ops) == {
        "crop_and_resize", "crop_and_resize_grad_image", "crop_and_resize_grad_boxes", "crop2d",
        "roi_align", "roi_align_grad_image",
    }  # fmt: skip


def test_importing_the_plugin_or_listing_backends_does_not_import_numba():
    code = (
        "import sys, cropcore, cropcore_numba; cropcore.backends(); "
        "print('numba' in sys.modules, 'cropcore_numba.kernels' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("data_format", FORMATS)
def test_crop2d_is_a_view_with_the_reference_values(data_format):
    x = np.arange(2 * 7 * 9 * 3, dtype=np.int16).reshape(2, 7, 9, 3)
    x = to_format(x, data_format)
    got = cropcore.crop2d(x, ((1, 2), (3, 1)), data_format, backend=BACKEND)
    expected = cropcore.crop2d(x, ((1, 2), (3, 1)), data_format, backend=REFERENCE)
    np.testing.assert_array_equal(got, expected, strict=True)
    assert np.shares_memory(got, x)
