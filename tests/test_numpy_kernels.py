"""The NumPy reference kernels (``cropcore_numpy.kernels``), through the public API, without TensorFlow.

Expected values are TensorFlow's own unit-test vectors (``crop_and_resize_op_test.cc``,
``image_ops_impl.py``'s docstring), vectors recorded from TF 2.21 (notes/tf_semantics.md §2.4,
§3.4), or derived by hand in a comment. Each test pins one behaviour of TF's CPU kernel.
Conventions: ``img2`` is [[1, 2], [3, 4]] as (1, 2, 2, 1); a normalised coordinate c maps to
pixel c * (size - 1); "in" is that pixel coordinate.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import cropcore
from cropcore.spec import IMAGE_DTYPES


def crop(image, boxes, crop_size, method="bilinear", extrapolation_value=0.0, box_indices=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if box_indices is None:
        box_indices = np.zeros(len(boxes), np.int32)
    return cropcore.crop_and_resize(
        image, boxes, box_indices, crop_size, method, extrapolation_value, backend="numpy"
    )


def grad_image(grads, boxes, image_shape, method="bilinear", dtype="float32", box_indices=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if box_indices is None:
        box_indices = np.zeros(len(boxes), np.int32)
    return cropcore.crop_and_resize_grad_image(
        np.asarray(grads, np.float32), boxes, box_indices, image_shape, method, dtype=dtype,
        backend="numpy",
    )  # fmt: skip


def grad_boxes(grads, image, boxes, box_indices=None):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if box_indices is None:
        box_indices = np.zeros(len(boxes), np.int32)
    return cropcore.crop_and_resize_grad_boxes(
        np.asarray(grads, np.float32), image, boxes, box_indices, backend="numpy"
    )


def image_of(values, shape, dtype="float32"):
    return np.asarray(values, dtype=dtype).reshape(shape)


def img2(dtype="float32"):
    return image_of([1, 2, 3, 4], (1, 2, 2, 1), dtype)


def img3():
    return image_of(range(1, 10), (1, 3, 3, 1))


def assert_bits_equal(actual, expected):
    """Equal bit for bit (so -0.0 != 0.0 and NaN == NaN of the same kind)."""
    expected = np.asarray(expected, dtype=actual.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert np.array_equal(actual, expected, equal_nan=True), (actual, expected)
    unsigned = {2: np.uint16, 4: np.uint32, 8: np.uint64}[actual.dtype.itemsize]
    finite = ~np.isnan(actual)
    assert np.array_equal(actual.view(unsigned)[finite], expected.view(unsigned)[finite])


# --------------------------------------------------------------------------------------------------
# crop_and_resize: TensorFlow's own tests (crop_and_resize_op_test.cc, notes §3.1; docstring §3.3)


@pytest.mark.parametrize("dtype", IMAGE_DTYPES)
def test_tf_2x2_to_1x1_bilinear_samples_centre_in_every_dtype(dtype):
    # TestCropAndResize<T>: the 1x1 crop samples the centre (0.5, 0.5): (1 + 2 + 3 + 4) / 4.
    out = crop(img2(dtype), [0, 0, 1, 1], (1, 1))
    assert out.dtype == np.float32
    assert_bits_equal(out, np.full((1, 1, 1, 1), 2.5))


@pytest.mark.parametrize("dtype", IMAGE_DTYPES)
def test_tf_2x2_to_1x1_nearest_rounds_centre_up_in_every_dtype(dtype):
    # TestCropAndResize<T>nearest: roundf(0.5) = 1 in both axes -> pixel (1, 1) = 4.
    out = crop(img2(dtype), [0, 0, 1, 1], (1, 1), "nearest")
    assert_bits_equal(out, np.full((1, 1, 1, 1), 4.0))


@pytest.mark.parametrize(
    ("name", "image", "boxes", "crop_size", "method", "extrapolation_value", "expected"),
    [
        ("2x2To1x1Flipped", img2(), [1, 1, 0, 0], (1, 1), "bilinear", 0, [2.5]),
        ("2x2To1x1FlippedNearestNeighbor", img2(), [1, 1, 0, 0], (1, 1), "nearest", 0, [4]),
        ("2x2To3x3", img2(), [0, 0, 1, 1], (3, 3), "bilinear", 0, [1, 1.5, 2, 2, 2.5, 3, 3, 3.5, 4]),
        ("2x2To3x3NearestNeighbor", img2(), [0, 0, 1, 1], (3, 3), "nearest", 0, [1, 2, 2, 3, 4, 4, 3, 4, 4]),
        ("2x2To3x3Flipped", img2(), [1, 1, 0, 0], (3, 3), "bilinear", 0, [4, 3.5, 3, 3, 2.5, 2, 2, 1.5, 1]),
        ("2x2To3x3FlippedNearestNeighbor", img2(), [1, 1, 0, 0], (3, 3), "nearest", 0, [4, 4, 3, 4, 4, 3, 2, 2, 1]),
        ("3x3To2x2", img3(), [[0, 0, 1, 1], [0, 0, 0.5, 0.5]], (2, 2), "bilinear", 0, [1, 3, 7, 9, 1, 2, 4, 5]),
        ("3x3To2x2NearestNeighbor", img3(), [[0, 0, 1, 1], [0, 0, 0.5, 0.5]], (2, 2), "nearest", 0, [1, 3, 7, 9, 1, 2, 4, 5]),
        ("3x3To2x2Flipped", img3(), [[1, 1, 0, 0], [0.5, 0.5, 0, 0]], (2, 2), "bilinear", 0, [9, 7, 3, 1, 5, 4, 2, 1]),
        ("3x3To2x2FlippedNearestNeighbor", img3(), [[1, 1, 0, 0], [0.5, 0.5, 0, 0]], (2, 2), "nearest", 0, [9, 7, 3, 1, 5, 4, 2, 1]),
        ("2x2To3x3Extrapolated", img2(), [-1, -1, 1, 1], (3, 3), "bilinear", -1, [-1, -1, -1, -1, 1, 2, -1, 3, 4]),
        ("docstring bilinear", image_of(range(0, 18, 2), (1, 3, 3, 1)), [0.5, 0.5, 1, 1], (3, 3), "bilinear", 0, [8, 9, 10, 11, 12, 13, 14, 15, 16]),
        ("docstring nearest", image_of(range(0, 18, 2), (1, 3, 3, 1)), [0.5, 0.5, 1, 1], (3, 3), "nearest", 0, [8, 10, 10, 14, 16, 16, 14, 16, 16]),
    ],
)  # fmt: skip
def test_tf_unit_test_vectors(name, image, boxes, crop_size, method, extrapolation_value, expected):
    out = crop(image, boxes, crop_size, method, extrapolation_value)
    assert_bits_equal(out.reshape(-1), expected)


def test_tf_sharding_test_large_crops_are_exact_column_indices():
    # TestWithSharding: a 999x999 image whose value is the column index; box 0 covers columns
    # 0..499 and box 1 columns 499..998 with 500 samples each, i.e. one sample per column.
    image = np.tile(np.arange(999, dtype=np.float32), (999, 1)).reshape(1, 999, 999, 1)
    out = crop(image, [[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], (500, 500))
    assert_bits_equal(out[0, :, :, 0], np.tile(np.arange(500), (500, 1)))
    assert_bits_equal(out[1, :, :, 0], np.tile(np.arange(499, 999), (500, 1)))


def test_tf_empty_box_list_gives_empty_output():
    # TestCropAndResize2x2To3x3NoCrop: boxes (0, 4), box_indices (0,) -> (0, 3, 3, 1).
    out = cropcore.crop_and_resize(
        img2(), np.zeros((0, 4), np.float32), np.zeros(0, np.int32), (3, 3), backend="numpy"
    )
    assert out.shape == (0, 3, 3, 1)
    assert out.dtype == np.float32


def test_empty_box_list_on_an_empty_batch():
    out = cropcore.crop_and_resize(
        np.zeros((0, 2, 2, 3), np.uint8), np.zeros((0, 4)), np.zeros(0, np.int32), (2, 5),
        backend="numpy",
    )  # fmt: skip
    assert out.shape == (0, 2, 5, 3)


def test_depth_zero_gives_depth_zero_crops():
    out = crop(np.zeros((1, 2, 2, 0), np.float32), [[0, 0, 1, 1], [0.5, 0, 1, 1]], (3, 4))
    assert out.shape == (2, 3, 4, 0)


# --------------------------------------------------------------------------------------------------
# crop_and_resize: sampling rules


def test_nearest_rounds_half_away_from_zero():
    # arange(5) as a column (H = 5): box y = 0.625 gives in = 0.5 * (0.625 + 0.625) * 4 = 2.5,
    # roundf -> 3 (half to even would give 2); y = 0.125 gives in = 0.5 -> 1 (not 0). notes §3.4.
    image = image_of(range(5), (1, 5, 1, 1))
    assert_bits_equal(crop(image, [0.625, 0, 0.625, 0], (1, 1), "nearest").reshape(-1), [3])
    assert_bits_equal(crop(image, [0.125, 0, 0.125, 0], (1, 1), "nearest").reshape(-1), [1])


def test_nearest_just_below_half_rounds_down():
    # v = float32(0.49999997) = 0.5 - 2**-25; box y = v / 4 (exact), H = 5, crop 1:
    # in = 0.5 * (2v / 4) * 4 = v exactly. roundf(v) = 0, whereas floorf(v + 0.5f) = 1 because
    # the float32 sum 1 - 2**-25 rounds to 1.
    v = np.float32(0.49999997)
    image = image_of(range(5), (1, 5, 1, 1))
    out = crop(image, [v / 4, 0, v / 4, 0], (1, 1), "nearest")
    assert_bits_equal(out.reshape(-1), [0])


def test_crop_size_one_samples_the_box_centre():
    # arange(9) as 3x3, box [0, 0, 0.5, 1]: in_y = 0.5 * (0 + 0.5) * 2 = 0.5, in_x = 0.5 * 1 * 2 = 1:
    # halfway between rows 0 and 1 in column 1: (1 + 4) / 2 = 2.5. notes §3.4.
    out = crop(image_of(range(9), (1, 3, 3, 1)), [0, 0, 0.5, 1], (1, 1))
    assert_bits_equal(out.reshape(-1), [2.5])


def test_crop_size_one_centre_outside_is_extrapolated():
    # box [1, 1, 1.5, 1.5] on 3x3: centre in = 0.5 * 2.5 * 2 = 2.5 > 2 -> extrapolation value.
    out = crop(image_of(range(9), (1, 3, 3, 1)), [1, 1, 1.5, 1.5], (1, 1), extrapolation_value=-2)
    assert_bits_equal(out.reshape(-1), [-2])


def test_flipped_box_samples_from_the_far_edge():
    # img2 with box [1, 0, 0, 1], crop (2, 2): in_y = 1 + y * (-1), so row 0 samples image row 1.
    out = crop(img2(), [1, 0, 0, 1], (2, 2))
    assert_bits_equal(out.reshape(-1), [3, 4, 1, 2])


def test_zero_area_box_repeats_one_sample():
    # arange(9) as 3x3, box [.25, .75, .25, .75]: every sample at in = (0.5, 1.5):
    # rows 0/1, columns 1/2: (1 + 2 + 4 + 5) / 4 = 3. notes §3.4.
    out = crop(image_of(range(9), (1, 3, 3, 1)), [0.25, 0.75, 0.25, 0.75], (2, 2))
    assert_bits_equal(out.reshape(-1), [3, 3, 3, 3])


def test_extrapolation_replaces_whole_samples_per_row_then_column():
    # img2, box [0, -0.5, 1, 1.5], crop (2, 5): in_x = -0.5, 0, 0.5, 1, 1.5; the samples at -0.5
    # and 1.5 are out of range and replaced entirely (no blend with column 0 or 1). notes §3.4.
    out = crop(img2(), [0, -0.5, 1, 1.5], (2, 5), extrapolation_value=9)
    assert_bits_equal(out.reshape(-1), [9, 1, 1.5, 2, 9, 9, 3, 3.5, 4, 9])
    out = crop(img2(), [0, -0.5, 1, 1.5], (2, 5), "nearest", extrapolation_value=9)
    assert_bits_equal(out.reshape(-1), [9, 1, 2, 2, 9, 9, 3, 4, 4, 9])


def test_negative_zero_coordinate_is_inside():
    # -0.0 < 0 is false, so a box edge at -0.0 is inside. notes §3.4.
    out = crop(image_of(range(4), (1, 2, 2, 1)), [-0.0, -0.0, 1, 1], (2, 2), extrapolation_value=-1)
    assert_bits_equal(out.reshape(-1), [0, 1, 2, 3])


def test_tiny_negative_coordinate_is_outside():
    # y1 = -1e-7 gives in_y = -1e-7 < 0 for row 0. notes §3.4.
    out = crop(image_of(range(4), (1, 2, 2, 1)), [-1e-7, 0, 1, 1], (2, 2), extrapolation_value=-1)
    assert_bits_equal(out.reshape(-1), [-1, -1, 2, 3])


def test_edge_overshoot_h58_crop8_extrapolates_the_last_row():
    # height_scale = f32(f32(1 * 57) / 7) = 8.142857551...; the last row is at
    # f32(7 * 8.142857551) = 57.000004 > 57, so it is outside the image. notes §1.10, §3.4.
    out = crop(np.ones((1, 58, 2, 1), np.float32), [0, 0, 1, 1], (8, 1), extrapolation_value=-1)
    assert_bits_equal(out.reshape(-1), [1, 1, 1, 1, 1, 1, 1, -1])


def test_height_one_is_never_extrapolated():
    # H = 1: in_y = y1 * 0 + y * ((y2 - y1) * 0 / (ch - 1)) = 0 for any finite box. notes §3.4.
    out = crop(image_of([0, 1, 2], (1, 1, 3, 1)), [-5, 0, 7, 1], (2, 3), extrapolation_value=-1)
    assert_bits_equal(out.reshape(-1), [0, 1, 2, 0, 1, 2])


def test_width_one_is_never_extrapolated():
    out = crop(image_of([0, 1, 2], (1, 3, 1, 1)), [0, -3, 1, 4], (3, 2), extrapolation_value=-1)
    assert_bits_equal(out.reshape(-1), [0, 0, 1, 1, 2, 2])


@pytest.mark.filterwarnings("error")
def test_span_overflowing_float32_is_extrapolated_not_a_crash():
    # (3e38 - -3e38) * 2 overflows to inf; in_y = -3e38 * 2 + 0 * inf = NaN for row 0 and
    # -inf + inf = NaN for row 1. TF 2.21's CPU kernel segfaults here; cropcore treats a
    # coordinate that is not finite as out of range, without a warning.
    out = crop(
        np.ones((1, 3, 3, 2), np.float32), [-3e38, 0, 3e38, 1], (2, 3), extrapolation_value=7
    )
    assert_bits_equal(out, np.full((1, 2, 3, 2), 7))


def test_huge_finite_centre_is_extrapolated():
    # crop 1: in_y = 0.5 * (1e30 + 1e30) * 2 = 2e30 > 2 -> extrapolation value (TF agrees).
    out = crop(
        np.ones((1, 3, 3, 1), np.float32), [1e30, 0, 1e30, 1], (1, 2), extrapolation_value=-1
    )
    assert_bits_equal(out.reshape(-1), [-1, -1])


def test_nan_extrapolation_value_is_written_verbatim():
    out = crop(img2(), [-1, -1, 1, 1], (3, 3), extrapolation_value=float("nan"))
    assert np.isnan(out.reshape(-1)[[0, 1, 2, 3, 6]]).all()
    assert_bits_equal(out.reshape(-1)[[4, 5, 7, 8]], [1, 2, 3, 4])


def test_inf_pixel_makes_nan_even_with_zero_weight():
    # Lerp form a + (b - a) * t: at the exact pixel (0, 0), inf + (inf - inf) * 0 = NaN. notes §3.4.
    image = image_of([np.inf, 2, 3, 4], (1, 2, 2, 1))
    assert_bits_equal(crop(image, [0, 0, 1, 1], (2, 2)).reshape(-1), [np.nan, 2, 3, 4])


def test_nan_pixel_spreads_to_its_neighbours_samples():
    # Every sample with the NaN pixel among its four corners is NaN. notes §3.4.
    image = image_of([np.nan, 2, 3, 4], (1, 2, 2, 1))
    out = crop(image, [0, 0, 1, 1], (3, 3))
    assert_bits_equal(out.reshape(-1), [np.nan, np.nan, 2, np.nan, np.nan, 3, 3, 3.5, 4])


def test_int64_pixels_round_once_to_float32():
    # 2**60 + 2**36 + 1 rounds to 2**60 + 2**37 as float32 (just above the halfway point); going
    # through float64 first would round to the tie 2**60 + 2**36 and then to even, 2**60.
    image = image_of([2**60 + 2**36 + 1], (1, 1, 1, 1), "int64")
    assert_bits_equal(crop(image, [0, 0, 0, 0], (1, 1), "nearest").reshape(-1), [2.0**60 + 2**37])


def test_float64_pixels_are_cast_to_float32_first():
    # 1 + 1e-12 is 1.0 in float32, so the crop is exactly 1. notes §1.6.
    image = np.full((1, 2, 2, 1), 1 + 1e-12, np.float64)
    assert_bits_equal(crop(image, [0.3, 0.3, 0.6, 0.6], (2, 2)), np.ones((1, 2, 2, 1)))


def test_multi_batch_box_indices_and_depth():
    # arange(24) as (2, 2, 3, 2); box 0 is all of image 1, box 1 the middle row of image 0
    # (in_y = 0.5: the mean of rows 0 and 1). notes §3.4.
    image = image_of(range(24), (2, 2, 3, 2))
    out = crop(image, [[0, 0, 1, 1], [0.5, 0, 0.5, 1]], (2, 3), box_indices=[1, 0])
    assert_bits_equal(out.reshape(-1), list(range(12, 24)) + [3, 4, 5, 6, 7, 8] * 2)


def test_subnormal_box_coordinate_counts_as_zero():
    # TF runs with denormals-are-zero: y1 = -1e-40 is read as -0.0, so in_y = -0.0 is inside
    # (with gradual underflow it would be -1e-40 < 0, outside). Observed in TF 2.21.
    out = crop(image_of(range(4), (1, 2, 2, 1)), [-1e-40, 0, 1, 1], (2, 2), extrapolation_value=-1)
    assert_bits_equal(out.reshape(-1), [0, 1, 2, 3])


def test_subnormal_pixel_is_zero_in_bilinear_arithmetic_but_copied_by_nearest():
    # Bilinear computes tl + (tr - tl) * 0 with tl = 1e-40 read as 0 (denormals-are-zero), so 0;
    # nearest copies the float32 pixel without arithmetic, so 1e-40 survives. Observed in TF 2.21.
    image = image_of([1e-40, 1, 1e-40, 1], (1, 2, 2, 1))
    assert_bits_equal(crop(image, [0, 0, 1, 1], (2, 2)).reshape(-1), [0, 1, 0, 1])
    assert_bits_equal(
        crop(image, [0, 0, 1, 1], (2, 2), "nearest").reshape(-1), np.float32([1e-40, 1, 1e-40, 1])
    )


# x86 decides that a result underflows after rounding it to 24 bits (exponent unbounded), then
# flushes it: an exact product 2**-126 * (1 - 2**-24) is 0 under TF, though rounding it to the
# subnormal grid gives 2**-126. Observed in TF 2.21.
FLT_MIN = np.float32(2.0**-126)
JUST_BELOW_ONE = np.float32(1 - 2.0**-24)


def test_product_just_below_the_smallest_normal_flushes_to_zero():
    # crop 1: in_y = 0.5 * (y1 + y2) * 1 = 1 - 2**-24; bottom - top = 2**-126; times y_lerp: tiny.
    image = image_of([0, FLT_MIN], (1, 2, 1, 1))
    out = crop(image, [JUST_BELOW_ONE, 0, JUST_BELOW_ONE, 0], (1, 1))
    assert_bits_equal(out.reshape(-1), [0])


def test_product_that_rounds_up_to_the_smallest_normal_is_kept():
    # 2**-126 * (1 + 2**-23) * (1 - 2**-23) = 2**-126 * (1 - 2**-46): rounds to 2**-126 in 24 bits.
    y = np.float32(1 - 2.0**-23)
    image = image_of([0, FLT_MIN * np.float32(1 + 2.0**-23)], (1, 2, 1, 1))
    assert_bits_equal(crop(image, [y, 0, y, 0], (1, 1)).reshape(-1), [FLT_MIN])


def test_grad_image_product_just_below_the_smallest_normal_flushes_to_zero():
    boxes = [JUST_BELOW_ONE, 0, JUST_BELOW_ONE, 0]
    out = grad_image(np.full((1, 1, 1, 1), FLT_MIN), boxes, (1, 2, 1, 1))
    assert_bits_equal(out.reshape(-1), [0, 0])


def test_float64_pixel_just_below_the_smallest_normal_converts_to_zero():
    # static_cast<float>(double) flushes too: 2**-126 * (1 - 2**-24) -> 0, (1 - 2**-26) -> 2**-126.
    image = image_of(
        [2.0**-126 * (1 - 2.0**-24), 2.0**-126 * (1 - 2.0**-26)], (1, 2, 1, 1), "float64"
    )
    for method in ("nearest", "bilinear"):
        assert_bits_equal(crop(image, [0, 0, 1, 0], (2, 1), method).reshape(-1), [0, FLT_MIN])


@pytest.mark.parametrize(("box", "crop_size"), [((0, 0, 1, 0), (3, 1)), ((1, 0, 0, 0), (1, 1))])
def test_sample_coordinate_just_below_the_smallest_normal_is_zero(box, crop_size):
    # span = 2**-125 * (1 - 2**-24): height_scale = span / 2 (crop 3) and the centre 0.5 * span
    # (crop 1) are tiny, so every sample is at row 0. A coordinate of 2**-126 would give 2**-26.
    span = np.float32(2.0**-125 * (1 - 2.0**-24))
    image = image_of([0, 2.0**100], (1, 2, 1, 1))
    out = crop(image, [v * span for v in box], crop_size)
    assert_bits_equal(out.reshape(-1), np.zeros(crop_size[0] * crop_size[1]))


def test_negative_zero_sample_coordinate_gives_negative_zero_lerp():
    # 1x1 image holding -0.0, crop 1: in_x = 0.5 * (-0.7 + 0) * 0 = -0.0, and TF's
    # x_lerp = in_x - (int)floorf(in_x) = -0.0 - 0 = -0.0; then top = tl + (tr - tl) * x_lerp =
    # -0.0 + (+0.0 * -0.0) = -0.0 + -0.0 = -0.0. Observed in TF 2.21.
    out = crop(np.full((1, 1, 1, 1), -0.0, np.float32), [-1, -0.7, 0, 0], (1, 1))
    assert_bits_equal(out.reshape(-1), np.float32([-0.0]))


def test_strided_image_gives_the_same_crops():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    strided = np.moveaxis(np.ascontiguousarray(np.moveaxis(image, 3, 1)), 1, 3)
    boxes = [[0.1, 0.2, 0.8, 0.9], [1.2, -0.3, 0.1, 0.7]]
    assert_bits_equal(
        crop(strided, boxes, (3, 4), box_indices=[1, 0]),
        crop(image, boxes, (3, 4), box_indices=[1, 0]),
    )


def test_channels_first_gives_the_transposed_crops():
    rng = np.random.default_rng(1)
    image = rng.standard_normal((2, 5, 4, 3)).astype(np.float32)
    boxes = np.float32([[0.1, 0.2, 0.8, 0.9], [1.2, -0.3, 0.1, 0.7]])
    nchw = cropcore.crop_and_resize(
        np.moveaxis(image, 3, 1), boxes, [1, 0], (3, 4), data_format="channels_first",
        backend="numpy",
    )  # fmt: skip
    assert_bits_equal(nchw, np.moveaxis(crop(image, boxes, (3, 4), box_indices=[1, 0]), 3, 1))


# --------------------------------------------------------------------------------------------------
# crop_and_resize_grad_image


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_grad_image_bilinear_of_identity_upsampling(dtype):
    # notes §2.4: ones (1, 3, 3, 1) back through box [0, 0, 1, 1] onto 2x2. Samples at 0, 0.5, 1
    # per axis give pixel 0 the weights 1, 0.5, 0 (and pixel 1 the weights 0, 0.5, 1), so every
    # pixel receives (1 + 0.5) * (1 + 0.5) = 2.25.
    out = grad_image(np.ones((1, 3, 3, 1)), [0, 0, 1, 1], (1, 2, 2, 1), dtype=dtype)
    assert out.dtype == np.dtype(dtype)
    assert_bits_equal(out.reshape(-1), [2.25] * 4)


def test_grad_image_nearest_of_identity_upsampling():
    # notes §2.4: samples round to 0, 1, 1 per axis, so pixel (i, j) receives n_i * n_j gradients
    # with n = (1, 2): [1, 2, 2, 4].
    out = grad_image(np.ones((1, 3, 3, 1)), [0, 0, 1, 1], (1, 2, 2, 1), "nearest")
    assert_bits_equal(out.reshape(-1), [1, 2, 2, 4])


def test_grad_image_bilinear_of_a_centred_box():
    # notes §2.4: grads [1, 2, 3, 4] through box [.25, .25, .75, .75] onto 3x3: samples at 0.5
    # and 1.5 per axis, each spreading a quarter of its gradient on four pixels.
    out = grad_image(image_of([1, 2, 3, 4], (1, 2, 2, 1)), [0.25, 0.25, 0.75, 0.75], (1, 3, 3, 1))
    assert_bits_equal(out.reshape(-1), [0.25, 0.75, 0.5, 1.0, 2.5, 1.5, 0.75, 1.75, 1.0])


def test_grad_image_drops_contributions_outside_the_image():
    # Box [-1, -1, 1, 1] with crop 3x3 on 2x2 samples in = -1, 0, 1 per axis; the samples in row
    # or column -1 are extrapolated and contribute nothing; the others sit exactly on pixels.
    grads = image_of(range(1, 10), (1, 3, 3, 1))
    out = grad_image(grads, [-1, -1, 1, 1], (1, 2, 2, 1))
    assert_bits_equal(out.reshape(-1), [5, 6, 8, 9])


def test_grad_image_float16_accumulates_in_half_precision():
    # 3000 degenerate boxes each add 1.0 to pixel 0. In float16, 2048 + 1 is a tie between 2048
    # and 2050 that rounds to even, so the sum sticks at 2048; float32 counts to 3000.
    count = 3000
    grads = np.ones((count, 1, 1, 1))
    boxes = np.zeros((count, 4))
    half = grad_image(grads, boxes, (1, 2, 2, 1), "nearest", "float16")
    single = grad_image(grads, boxes, (1, 2, 2, 1), "nearest", "float32")
    assert_bits_equal(half.reshape(-1), [2048, 0, 0, 0])
    assert_bits_equal(single.reshape(-1), [3000, 0, 0, 0])


def test_grad_image_sums_boxes_on_their_own_images():
    # Two identity boxes on image 1, none on image 0.
    out = grad_image(np.ones((2, 2, 2, 1)), [[0, 0, 1, 1]] * 2, (2, 2, 2, 1), box_indices=[1, 1])
    assert_bits_equal(out.reshape(-1), [0, 0, 0, 0, 2, 2, 2, 2])


def test_grad_image_subnormal_gradient_counts_as_zero():
    # Denormals-are-zero: TF's `acc += static_cast<T>(grad)` reads 1e-40 as 0. Observed in TF 2.21.
    out = grad_image(np.full((1, 1, 1, 1), 1e-40), [0, 0, 0, 0], (1, 2, 2, 1), "nearest")
    assert_bits_equal(out.reshape(-1), [0, 0, 0, 0])


def test_grad_image_of_empty_boxes_and_zero_depth():
    out = grad_image(np.zeros((0, 2, 2, 3)), np.zeros((0, 4)), (2, 3, 3, 3))
    assert_bits_equal(out, np.zeros((2, 3, 3, 3)))
    assert grad_image(np.zeros((1, 2, 2, 0)), [0, 0, 1, 1], (1, 3, 3, 0)).shape == (1, 3, 3, 0)


# --------------------------------------------------------------------------------------------------
# crop_and_resize_grad_boxes


def test_grad_boxes_of_identity_upsampling():
    # notes §2.4: img2, ones (1, 3, 3, 1), box [0, 0, 1, 1]. Only the middle row (in_y = 0.5)
    # has a y-derivative, image_grad_y = bottom - top = 2 in each of its 3 samples;
    # height_ratio = 1 / 2, so dy1 = sum 2 * (1 - 1 * 0.5) = 3 and dy2 = sum 2 * 0.5 = 3.
    # Likewise dx1 = dx2 = 3 * 1 * 0.5 = 1.5.
    out = grad_boxes(np.ones((1, 3, 3, 1)), img2(), [0, 0, 1, 1])
    assert_bits_equal(out, [[3.0, 1.5, 3.0, 1.5]])


def test_grad_boxes_of_a_centred_box():
    # notes §2.4 (recorded from TF 2.21).
    out = grad_boxes(image_of([1, 2, 3, 4], (1, 2, 2, 1)), img3(), [0.25, 0.25, 0.75, 0.75])
    assert_bits_equal(out, [[18.0, 8.0, 42.0, 12.0]])


def test_grad_boxes_crop_size_one_uses_half_the_image_extent():
    # notes §2.4: crop 1x1 at the centre of img2: image_grad_y = 2, times 0.5 * (H - 1) = 0.5:
    # dy1 = dy2 = 1; image_grad_x = 1 -> dx1 = dx2 = 0.5.
    out = grad_boxes(np.ones((1, 1, 1, 1)), img2(), [0, 0, 1, 1])
    assert_bits_equal(out, [[1.0, 0.5, 1.0, 0.5]])


@pytest.mark.parametrize("dtype", IMAGE_DTYPES)
def test_grad_boxes_casts_pixels_to_float32(dtype):
    # notes §2.4: a uint8 image gives the same box gradient as a float one.
    out = grad_boxes(np.ones((1, 3, 3, 1)), img2(dtype), [0, 0, 1, 1])
    assert_bits_equal(out, [[3.0, 1.5, 3.0, 1.5]])


def test_grad_boxes_is_zero_when_every_sample_is_on_a_pixel():
    # Box [0, 0, 1, 1] with crop 2x2 on 2x2: every sample is exactly on a pixel, where floor and
    # ceil coincide, so image_grad_y = bottom - top = 0 (TF takes no one-sided derivative).
    assert_bits_equal(grad_boxes(np.ones((1, 2, 2, 1)), img2(), [0, 0, 1, 1]), [[0, 0, 0, 0]])


def test_grad_boxes_drops_samples_outside_the_image():
    # Box [-1, -1, 1, 1], crop 5x5 on img2: samples at in = -1, -0.5, 0, 0.5, 1 per axis; the
    # first two are dropped. height_ratio = 1/4. y-derivative only in row y = 3 (in 0.5):
    # image_grad_y = 2 for its 3 in-range samples, so dy1 = 3 * 2 * (1 - 3/4) = 1.5 and
    # dy2 = 3 * 2 * 3/4 = 4.5; x likewise with image_grad_x = 1: dx1 = 0.75, dx2 = 2.25.
    out = grad_boxes(np.ones((1, 5, 5, 1)), img2(), [-1, -1, 1, 1])
    assert_bits_equal(out, [[1.5, 0.75, 4.5, 2.25]])


def test_grad_boxes_crop_size_one_accumulates_in_double():
    # TF's `grads_boxes(b, 0) += image_grad_y * 0.5 * (image_height - 1)` adds a double to the
    # float sum: acc = float(double(acc) + term). H = 4, W = 1, box y = 0.25 (in_y = 0.75), two
    # channels with image_grad_y = row 1 - row 0 = p0, p1 and grads 1, terms 1.5 * p (exact in
    # double):
    #   p0 = 2 + 2**-22: term 3 + 2**-22 + 2**-23 -> acc = float(term) = 3 + 2**-21 (tie to even);
    #   p1 = 1 + 2**-23: term 1.5 + 2**-23 + 2**-24; the exact sum 4.5 + 2**-21 + 3 * 2**-24 is
    #   3/8 of an ulp (2**-21) above 4.5 + 2**-21 -> 4.5 + 2**-21.
    # Summing in float32 instead would round the term to 1.5 + 2**-22 (tie to even) first and
    # land on the tie 4.5 + 1.5 ulp, which rounds to 4.5 + 2**-20.
    image = np.zeros((1, 4, 1, 2), np.float32)
    image[0, 1, 0] = [2 + 2**-22, 1 + 2**-23]
    out = grad_boxes(np.ones((1, 1, 1, 2)), image, [0.25, 0, 0.25, 0])
    expected = np.float32(4.5 + 2**-21)
    assert_bits_equal(out, [[expected, 0, expected, 0]])


def test_grad_boxes_subnormal_gradient_counts_as_zero():
    # Denormals-are-zero: image_grad_y = 1e30 times a gradient of 1e-40 would be 1e-10, but TF
    # reads the gradient as 0. Observed in TF 2.21.
    image = image_of([0, 0, 1e30, 0], (1, 2, 2, 1))
    out = grad_boxes(np.full((1, 1, 1, 1), 1e-40), image, [0.5, 0, 0.5, 0])
    assert_bits_equal(out, [[0, 0, 0, 0]])


def test_grad_boxes_of_empty_boxes_and_zero_depth():
    assert grad_boxes(np.zeros((0, 2, 2, 1)), img2(), np.zeros((0, 4))).shape == (0, 4)
    out = grad_boxes(np.zeros((1, 2, 2, 0)), np.zeros((1, 2, 2, 0), np.float32), [0, 0, 1, 1])
    assert_bits_equal(out, [[0, 0, 0, 0]])


@pytest.mark.filterwarnings("error")
def test_grad_ops_ignore_samples_with_overflowing_coordinates():
    # As for the forward op: the NaN coordinates of an overflowing span are out of range.
    boxes = [-3e38, 0, 3e38, 1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        image_grad = grad_image(np.ones((1, 2, 2, 1)), boxes, (1, 3, 3, 1))
        box_grad = grad_boxes(np.ones((1, 2, 2, 1)), np.ones((1, 3, 3, 1), np.float32), boxes)
    assert_bits_equal(image_grad, np.zeros((1, 3, 3, 1)))
    assert_bits_equal(box_grad, [[0, 0, 0, 0]])
