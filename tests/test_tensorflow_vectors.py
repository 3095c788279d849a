"""cropcore against vectors recorded from TensorFlow 2.21 and Keras 3 (the conformance package's
``data/tf_reference.npz``, read through :mod:`cropcore_conformance.vectors`).

The file is written by ``scripts/record_reference.py`` (run it with a Python that has TensorFlow);
its ``meta`` entry lists every case with its parameters and the library versions. Each case runs in
both data formats: TensorFlow has only NHWC, so the channels_first expectation is the recorded one
transposed.

- ``crop_and_resize``, ``crop_and_resize_grad_image`` and ``crop_and_resize_grad_boxes`` must be
  bit-identical to TensorFlow's CPU kernels (NaN matches NaN whatever its payload).
- ``crop2d`` must give Keras's values; Keras autocasts float inputs to float32 where cropcore keeps
  the input dtype, so the values are compared after casting cropcore's result to Keras's dtype.
- Each input TensorFlow refuses, cropcore refuses with the mapped Python exception (ValueError for
  values and shapes, TypeError for types and dtypes, IndexError for box indices) and a message that
  names the argument; likewise for Keras's refusals of ``cropping``.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import numpy as np
import pytest

import cropcore
from cropcore_conformance import vectors

BACKEND = "numpy"
DATA_FORMATS = ("channels_last", "channels_first")
EXCEPTIONS = {"ValueError": ValueError, "TypeError": TypeError, "IndexError": IndexError}


def _reference() -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    meta, arrays = vectors.load()
    assert meta, f"no recorded vectors at {vectors.DATA_PATH}"
    return meta, arrays


def cases(op: str) -> list[Any]:
    """The recorded cases of ``op``, as pytest params named by the case."""
    meta, _ = _reference()
    return [pytest.param(case, id=case["name"]) for case in meta["cases"] if case["op"] == op]


def arrays_of(case: dict[str, Any]) -> dict[str, np.ndarray]:
    _, arrays = _reference()
    return {name: arrays[f"{case['id']}/{name}"] for name in case["arrays"]}


def to_channels_first(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 3, 1))


def to_channels_last(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(x), 1, 3)


def nchw_shape(shape: Any) -> list[int]:
    batch, height, width, depth = (int(v) for v in shape)
    return [batch, depth, height, width]


def assert_bit_identical(got: Any, expected: np.ndarray, what: str) -> None:
    """Same dtype, shape and bits; NaN matches NaN whatever its sign and payload."""
    assert isinstance(got, np.ndarray), f"{what}: got a {type(got).__name__}, not a numpy array"
    assert got.dtype == expected.dtype, f"{what}: dtype {got.dtype}, TensorFlow {expected.dtype}"
    assert got.shape == expected.shape, f"{what}: shape {got.shape}, TensorFlow {expected.shape}"
    uint = np.dtype(f"uint{8 * expected.dtype.itemsize}")
    got_nan, expected_nan = np.isnan(got), np.isnan(expected)
    differ = (got_nan != expected_nan) | (
        ~expected_nan & (got.view(uint) != np.ascontiguousarray(expected).view(uint))
    )
    if differ.any():
        where = np.argwhere(differ)
        lines = [
            f"  at {tuple(int(i) for i in index)}: cropcore {got[tuple(index)]!r} "
            f"(0x{int(got.view(uint)[tuple(index)]):x}), TensorFlow {expected[tuple(index)]!r} "
            f"(0x{int(expected.view(uint)[tuple(index)]):x})"
            for index in where[:8]
        ]
        raise AssertionError(
            f"{what}: {len(where)} of {expected.size} elements differ from TensorFlow\n"
            + "\n".join(lines)
        )


# --------------------------------------------------------------------------------------------------
# Values


@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize("case", cases("crop_and_resize"))
def test_crop_and_resize_is_bit_identical_to_tensorflow(case, data_format):
    a = arrays_of(case)
    image = a["image"] if data_format == "channels_last" else to_channels_first(a["image"])
    crops = cropcore.crop_and_resize(
        image,
        a["boxes"],
        a["box_indices"],
        tuple(case["crop_size"]),
        method=case["method"],
        extrapolation_value=case["extrapolation_value"],
        data_format=data_format,
        backend=BACKEND,
    )
    if data_format == "channels_first":
        crops = to_channels_last(crops)
    assert_bit_identical(crops, a["crops"], case["id"])


@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize("case", cases("grad_image"))
def test_grad_image_is_bit_identical_to_tensorflow(case, data_format):
    a = arrays_of(case)
    grads, image_shape = a["grads"], case["image_shape"]
    if data_format == "channels_first":
        grads, image_shape = to_channels_first(grads), nchw_shape(image_shape)
    grads_image = cropcore.crop_and_resize_grad_image(
        grads,
        a["boxes"],
        a["box_indices"],
        image_shape,
        method=case["method"],
        data_format=data_format,
        dtype=case["dtype"],
        backend=BACKEND,
    )
    if data_format == "channels_first":
        grads_image = to_channels_last(grads_image)
    assert_bit_identical(grads_image, a["grads_image"], case["id"])


@pytest.mark.parametrize("data_format", DATA_FORMATS)
@pytest.mark.parametrize("case", cases("grad_boxes"))
def test_grad_boxes_is_bit_identical_to_tensorflow(case, data_format):
    a = arrays_of(case)
    grads, image = a["grads"], a["image"]
    if data_format == "channels_first":
        grads, image = to_channels_first(grads), to_channels_first(image)
    grads_boxes = cropcore.crop_and_resize_grad_boxes(
        grads,
        image,
        a["boxes"],
        a["box_indices"],
        method=case["method"],
        data_format=data_format,
        backend=BACKEND,
    )
    assert_bit_identical(grads_boxes, a["grads_boxes"], case["id"])


def parse_cropping(case: dict[str, Any]) -> Any:
    """The ``cropping`` argument as the recorder gave it to Keras (tuples and lists kept apart)."""
    if case["cropping"] is None:
        return None
    cropping = ast.literal_eval(case["cropping"])
    return np.int64(cropping) if case.get("cropping_numpy_int") else cropping


@pytest.mark.parametrize("case", cases("crop2d"))
def test_crop2d_gives_keras_values(case):
    a = arrays_of(case)
    cropping = parse_cropping(case)
    kwargs = {} if cropping is None else {"cropping": cropping}
    out = cropcore.crop2d(a["x"], data_format=case["data_format"], backend=BACKEND, **kwargs)
    assert isinstance(out, np.ndarray)
    assert out.dtype == a["x"].dtype, "crop2d keeps the input dtype (Keras autocasts to float32)"
    assert out.shape == a["output"].shape
    np.testing.assert_array_equal(out.astype(a["output"].dtype), a["output"], strict=True)


# --------------------------------------------------------------------------------------------------
# Refusals


def call_cropcore(case: dict[str, Any]) -> Any:
    """Replay a recorded refusal through cropcore (channels_last, as TensorFlow had it)."""
    a = arrays_of(case)
    if case["target"] == "crop_and_resize":
        crop_size = a["crop_size"] if "crop_size" in a else case["crop_size"]
        return cropcore.crop_and_resize(
            a["image"],
            a["boxes"],
            a["box_indices"],
            crop_size,
            method=case["method"],
            extrapolation_value=case["extrapolation_value"],
            backend=BACKEND,
        )
    if case["target"] == "grad_image":
        return cropcore.crop_and_resize_grad_image(
            a["grads"],
            a["boxes"],
            a["box_indices"],
            a["image_shape"],
            method=case["method"],
            dtype=case["dtype"],
            backend=BACKEND,
        )
    return cropcore.crop_and_resize_grad_boxes(
        a["grads"], a["image"], a["boxes"], a["box_indices"], method=case["method"], backend=BACKEND
    )


def names(message: str, argument: str) -> bool:
    """Whether ``message`` mentions ``argument`` as a word (``image`` is not ``image_shape``)."""
    return re.search(rf"\b{re.escape(argument)}\b", message) is not None


@pytest.mark.parametrize("case", cases("error"))
def test_refuses_what_tensorflow_refuses(case):
    expected = EXCEPTIONS[case["expected"]]
    with pytest.raises(expected) as info:
        call_cropcore(case)
    message = str(info.value)
    assert names(message, case["argument"]), (
        f"TensorFlow: {case['tf_error']}: {case['tf_message']}\n"
        f"cropcore's message does not name `{case['argument']}`: {message}"
    )


# Where cropcore's documented choice differs from Keras's (cropcore.spec.cropping_arg).
KERAS_DEVIATIONS = {
    # Keras refuses NumPy integer scalars (not `int`, no `__len__`); cropcore takes any integer.
    "numpy-int64-scalar": "accepted",
}


@pytest.mark.parametrize("case", cases("crop2d_error"))
def test_crop2d_refuses_what_keras_refuses(case):
    if KERAS_DEVIATIONS.get(case["name"]) == "accepted":
        out = cropcore.crop2d(
            arrays_of(case)["x"], parse_cropping(case), case["data_format"], backend=BACKEND
        )
        assert out.shape[1:3] == (7 - 4, 9 - 4)
        return
    x = arrays_of(case)["x"]
    expected = EXCEPTIONS[case["keras_error"]]
    with pytest.raises(expected) as info:
        cropcore.crop2d(x, parse_cropping(case), case["data_format"], backend=BACKEND)
    message = str(info.value)
    assert names(message, case["argument"]), (
        f"Keras: {case['keras_error']}: {case['keras_message']}\n"
        f"cropcore's message does not name `{case['argument']}`: {message}"
    )


# --------------------------------------------------------------------------------------------------
# The file itself


def test_reference_file_is_in_the_layout_the_suite_reads():
    meta, arrays = _reference()
    assert meta["format_version"] == vectors.FORMAT_VERSION
    for case in meta["cases"]:
        missing = [name for name in case["arrays"] if f"{case['id']}/{name}" not in arrays]
        assert not missing, f"{case['id']} lacks arrays {missing}"


def test_reference_file_records_its_provenance():
    meta, _ = _reference()
    assert meta["versions"]["tensorflow"].startswith("2.")
    assert meta["versions"]["keras"].startswith("3.")
    assert isinstance(meta["seed"], int)
    assert meta["tf_threads"] == {"intra_op": 1, "inter_op": 1}
    ids = [case["id"] for case in meta["cases"]]
    assert len(ids) == len(set(ids))
    for op in ("crop_and_resize", "grad_image", "grad_boxes", "error", "crop2d", "crop2d_error"):
        assert meta["counts"].get(op, 0) > 0, op


def test_reference_file_covers_every_image_dtype_and_method():
    meta, arrays = _reference()
    seen = {
        (str(arrays[f"{case['id']}/image"].dtype), case["method"])
        for case in meta["cases"]
        if case["op"] == "crop_and_resize"
    }
    for dtype in cropcore.spec.IMAGE_DTYPES:
        for method in cropcore.spec.METHODS:
            assert (dtype, method) in seen
