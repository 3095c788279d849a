"""crop_and_resize(..., output_dtype=...): float32 crops cast in the caller's library; integers
rounded half to even and saturated, NaN to 0. Expected values derived by hand."""

from __future__ import annotations

import numpy as np
import pytest

import cropcore

INF = float("inf")
# One row of pixels; a nearest-neighbour crop of the box [0, 0, 1, 1] at the image's own size
# copies every pixel as it is (bilinear would turn an infinite pixel into NaN: inf + (x - inf) * 0).
VALUES = [0.5, 1.5, 2.5, -0.5, 255.5, -3.0, 300.0, float("nan"), INF, -INF, 2.0**31, 3e9]
EXPECTED = {
    # ties to even: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0 -> 0; then the dtype's range
    "uint8": [0, 2, 2, 0, 255, 0, 255, 0, 255, 0, 255, 255],
    "int8": [0, 2, 2, 0, 127, -3, 127, 0, 127, -128, 127, 127],
    "int16": [0, 2, 2, 0, 256, -3, 300, 0, 32767, -32768, 32767, 32767],
    # the largest float32 not above 2**31 - 1 is 2**31 - 128
    "int32": [0, 2, 2, 0, 256, -3, 300, 0, 2**31 - 128, -(2**31), 2**31 - 128, 2**31 - 128],
}


def _image() -> np.ndarray:
    return np.array(VALUES, np.float32).reshape(1, 1, len(VALUES), 1)


def _crops(image, **kwargs):
    return cropcore.crop_and_resize(
        image, [[0, 0, 1, 1]], [0], (1, len(VALUES)), "nearest", **kwargs
    )


@pytest.mark.parametrize("dtype", sorted(EXPECTED))
def test_integers_are_rounded_half_to_even_and_saturated(dtype):
    got = _crops(_image(), output_dtype=dtype)
    assert got.dtype == np.dtype(dtype)
    assert got.ravel().tolist() == EXPECTED[dtype]


def test_floats_are_cast_with_ieee_rounding():
    got = _crops(_image(), output_dtype="float16").ravel()
    assert got.dtype == np.float16
    with np.errstate(over="ignore"):
        expected = np.array(VALUES, np.float16)  # 2**31 and 3e9 overflow to infinity
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(
        _crops(_image(), output_dtype=np.float64).ravel(),
        np.array(VALUES, np.float32).astype(np.float64),
    )
    assert _crops(_image()).dtype == np.float32


def test_keeping_a_uint8_images_dtype():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (2, 9, 10, 3), dtype=np.uint8)
    boxes = rng.uniform(0, 1, (4, 4)).astype(np.float32)
    crops = cropcore.crop_and_resize(image, boxes, [0, 1, 1, 0], (5, 6))
    kept = cropcore.crop_and_resize(image, boxes, [0, 1, 1, 0], (5, 6), output_dtype=image.dtype)
    assert kept.dtype == np.uint8
    np.testing.assert_array_equal(kept, np.clip(np.rint(crops), 0, 255).astype(np.uint8))


def test_torch_tensors_are_cast_by_torch_with_the_same_rule():
    torch = pytest.importorskip("torch")
    image = torch.from_numpy(_image())
    for dtype, expected in EXPECTED.items():
        got = _crops(image, output_dtype=getattr(torch, dtype))
        assert got.dtype == getattr(torch, dtype)
        assert got.ravel().tolist() == expected


@pytest.mark.parametrize("bad", ["bfloat16", "complex64", "bool", 3])
def test_other_dtypes_are_refused(bad):
    with pytest.raises(TypeError, match="output_dtype must be one of"):
        _crops(_image(), output_dtype=bad)
