"""Validation: every bad argument is refused with the right exception type and a message that
names the argument and the value. Rules follow TensorFlow's kernels (crop_and_resize family) and
Keras's Cropping2D (crop2d); see docs/semantics.md and docs/decisions.md."""

from __future__ import annotations

import numpy as np
import pytest

import cropcore
from cropcore import spec
from cropcore.errors import OutputTooLargeError

IMG = np.zeros((2, 4, 5, 3), np.float32)
BOX = [[0.0, 0.0, 1.0, 1.0]]
GRADS = np.zeros((1, 2, 2, 3), np.float32)


def forward(image=IMG, boxes=BOX, box_indices=(0,), crop_size=(2, 2), **kwargs):
    return spec.crop_and_resize_call(image, boxes, box_indices, crop_size, **kwargs)


def grad_image(grads=GRADS, boxes=BOX, box_indices=(0,), image_shape=(2, 4, 5, 3), **kwargs):
    return spec.grad_image_call(grads, boxes, box_indices, image_shape, **kwargs)


def grad_boxes(grads=GRADS, image=IMG, boxes=BOX, box_indices=(0,), **kwargs):
    return spec.grad_boxes_call(grads, image, boxes, box_indices, **kwargs)


FORWARD_BAD = [
    # (id, kwargs, exception, message fragment)
    (
        "image rank 3",
        {"image": np.zeros((4, 5, 3))},
        ValueError,
        r"image must be 4-D .*got shape \(4, 5, 3\)",
    ),
    ("image rank 5", {"image": np.zeros((1, 1, 4, 5, 3))}, ValueError, r"image must be 4-D"),
    (
        "image height 0",
        {"image": np.zeros((1, 0, 5, 3))},
        ValueError,
        r"image height and width must be positive, got height=0",
    ),
    ("image width 0", {"image": np.zeros((1, 4, 0, 3))}, ValueError, r"width=0"),
    (
        "image width 0 nchw",
        {"image": np.zeros((1, 3, 4, 0)), "data_format": "channels_first"},
        ValueError,
        r"width=0",
    ),
    (
        "image bool",
        {"image": np.zeros((1, 4, 5, 3), bool)},
        TypeError,
        r"image dtype must be one of .*got bool",
    ),
    ("image complex", {"image": np.zeros((1, 4, 5, 3), np.complex64)}, TypeError, r"got complex64"),
    ("image uint32", {"image": np.zeros((1, 4, 5, 3), np.uint32)}, TypeError, r"got uint32"),
    ("image None", {"image": None}, TypeError, r"image must be an array, got None"),
    (
        "image strings",
        {"image": np.full((1, 2, 2, 1), "a")},
        TypeError,
        r"image dtype must be one of .*got str32",
    ),
    (
        "boxes rank 1",
        {"boxes": [0.0, 0.0, 1.0, 1.0]},
        ValueError,
        r"boxes must have shape \(num_boxes, 4\), got shape \(4,\)",
    ),
    (
        "boxes rank 1 empty",
        {"boxes": np.zeros(0), "box_indices": np.zeros(0, int)},
        ValueError,
        r"boxes must have shape \(num_boxes, 4\), got shape \(0,\)",
    ),
    ("boxes 3 columns", {"boxes": [[0.0, 0.0, 1.0]]}, ValueError, r"got shape \(1, 3\)"),
    (
        "boxes 5 columns empty",
        {"boxes": np.zeros((0, 5)), "box_indices": np.zeros(0, int)},
        ValueError,
        r"got shape \(0, 5\)",
    ),
    (
        "boxes nan",
        {"boxes": [[0.0, np.nan, 1.0, 1.0]]},
        ValueError,
        r"boxes must be finite.*boxes\[0, 1\] = nan",
    ),
    ("boxes inf", {"boxes": [[0.0, 0.0, np.inf, 1.0]]}, ValueError, r"boxes\[0, 2\] = inf"),
    (
        "boxes overflow float32",
        {"boxes": [[1e40, 0.0, 0.0, 0.0]]},
        ValueError,
        r"boxes must be finite \(after the cast to float32\).*overflowed",
    ),
    (
        "boxes bool",
        {"boxes": np.ones((1, 4), bool)},
        TypeError,
        r"boxes must be a real numeric array.*bool",
    ),
    ("boxes complex", {"boxes": np.ones((1, 4), complex)}, TypeError, r"complex128"),
    (
        "box_indices rank 2",
        {"box_indices": np.zeros((1, 1), int)},
        ValueError,
        r"box_indices must be 1-D \(num_boxes,\), got shape \(1, 1\)",
    ),
    (
        "box_indices rank 2 empty",
        {"boxes": np.zeros((0, 4)), "box_indices": np.zeros((0, 1), int)},
        ValueError,
        r"box_indices must be 1-D",
    ),
    (
        "box_indices too many",
        {"box_indices": [0, 0]},
        ValueError,
        r"box_indices has 2 elements but boxes has 1 rows",
    ),
    (
        "box_indices float",
        {"box_indices": [0.0]},
        TypeError,
        r"box_indices must be an integer array, got float64",
    ),
    ("box_indices bool", {"box_indices": [True]}, TypeError, r"got bool"),
    (
        "box_indices == batch",
        {"box_indices": [2]},
        IndexError,
        r"box_indices must be in \[0, batch\) = \[0, 2\); got box_indices\[0\] = 2",
    ),
    ("box_indices negative", {"box_indices": [-1]}, IndexError, r"got box_indices\[0\] = -1"),
    ("box_indices huge", {"box_indices": [2**40]}, IndexError, r"= 1099511627776"),
    ("box_indices with empty batch", {"image": np.zeros((0, 4, 5, 3))}, IndexError, r"\[0, 0\)"),
    ("crop_size scalar", {"crop_size": 3}, TypeError, r"crop_size must be a pair of integers"),
    ("crop_size string", {"crop_size": "33"}, TypeError, r"crop_size must be a pair"),
    (
        "crop_size 3 elements",
        {"crop_size": (2, 2, 2)},
        ValueError,
        r"crop_size must have two elements .*\(2, 2, 2\)",
    ),
    (
        "crop_size 2-D array",
        {"crop_size": np.array([[2, 2]])},
        ValueError,
        r"crop_size must be 1-D",
    ),
    (
        "crop_size zero",
        {"crop_size": (0, 2)},
        ValueError,
        r"crop_size must be positive, got \(0, 2\)",
    ),
    ("crop_size negative", {"crop_size": (2, -1)}, ValueError, r"got \(2, -1\)"),
    (
        "crop_size float",
        {"crop_size": (2.0, 2)},
        TypeError,
        r"crop_size element must be an integer, got 2.0",
    ),
    (
        "crop_size bool",
        {"crop_size": (True, 2)},
        TypeError,
        r"crop_size element must be an integer, got True",
    ),
    (
        "method capitalised",
        {"method": "Bilinear"},
        ValueError,
        r"method must be 'bilinear' or 'nearest' .*got 'Bilinear'",
    ),
    ("method bicubic", {"method": "bicubic"}, ValueError, r"got 'bicubic'"),
    ("method None", {"method": None}, TypeError, r"method must be a string"),
    (
        "extrapolation string",
        {"extrapolation_value": "0"},
        TypeError,
        r"extrapolation_value must be a real number, got '0'",
    ),
    (
        "extrapolation None",
        {"extrapolation_value": None},
        TypeError,
        r"extrapolation_value must be a real number, got None",
    ),
    ("extrapolation complex", {"extrapolation_value": 1j}, TypeError, r"extrapolation_value"),
    (
        "data_format nhwc",
        {"data_format": "NHWC"},
        ValueError,
        r"data_format must be 'channels_last' or 'channels_first', got 'NHWC'",
    ),
    ("data_format int", {"data_format": 1}, TypeError, r"data_format must be"),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"), [c[1:] for c in FORWARD_BAD], ids=[c[0] for c in FORWARD_BAD]
)
def test_crop_and_resize_refuses(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        forward(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"), [c[1:] for c in FORWARD_BAD], ids=[c[0] for c in FORWARD_BAD]
)
def test_public_function_refuses_the_same_way(kwargs, exc, message):
    args = {"image": IMG, "boxes": BOX, "box_indices": (0,), "crop_size": (2, 2)} | kwargs
    with pytest.raises(exc, match=message):
        cropcore.crop_and_resize(**args)


GRAD_IMAGE_BAD = [
    (
        "grads rank 3",
        {"grads": np.zeros((2, 2, 3))},
        ValueError,
        r"grads must be 4-D .*got shape \(2, 2, 3\)",
    ),
    (
        "grads crop 0",
        {"grads": np.zeros((1, 0, 2, 3))},
        ValueError,
        r"grads crop_height and crop_width must be positive",
    ),
    (
        "grads int",
        {"grads": np.zeros((1, 2, 2, 3), int)},
        TypeError,
        r"grads must be a floating-point array",
    ),
    (
        "grads wrong count",
        {"grads": np.zeros((2, 2, 2, 3))},
        ValueError,
        r"grads has 2 crops but boxes has 1 rows",
    ),
    (
        "grads wrong depth",
        {"grads": np.zeros((1, 2, 2, 4))},
        ValueError,
        r"grads depth 4 differs from image_shape depth 3",
    ),
    (
        "image_shape 3 elements",
        {"image_shape": (2, 4, 5)},
        ValueError,
        r"image_shape must have 4 elements",
    ),
    (
        "image_shape height 0",
        {"image_shape": (2, 0, 5, 3)},
        ValueError,
        r"image_shape height and width must be positive",
    ),
    (
        "image_shape negative batch",
        {"image_shape": (-1, 4, 5, 3)},
        ValueError,
        r"image_shape must not be negative",
    ),
    (
        "image_shape float",
        {"image_shape": (2, 4.5, 5, 3)},
        TypeError,
        r"image_shape element must be an integer",
    ),
    (
        "dtype int",
        {"dtype": "int32"},
        TypeError,
        r"dtype must be one of float16, float32, float64, got 'int32'",
    ),
    ("boxes nan (TF crashes)", {"boxes": [[np.nan, 0, 1, 1]]}, ValueError, r"boxes must be finite"),
    (
        "boxes rank 1 empty (TF aborts)",
        {"grads": np.zeros((0, 1, 1, 3)), "boxes": np.zeros(0), "box_indices": np.zeros(0, int)},
        ValueError,
        r"boxes must have shape",
    ),
    ("box index out of range", {"box_indices": [5]}, IndexError, r"\[0, 2\)"),
    ("method", {"method": "area"}, ValueError, r"method must be"),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [c[1:] for c in GRAD_IMAGE_BAD],
    ids=[c[0] for c in GRAD_IMAGE_BAD],
)
def test_grad_image_refuses(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        grad_image(**kwargs)


GRAD_BOXES_BAD = [
    ("nearest", {"method": "nearest"}, ValueError, r"method must be 'bilinear'"),
    ("image rank 3", {"image": np.zeros((4, 5, 3))}, ValueError, r"image must be 4-D"),
    (
        "image depth differs",
        {"image": np.zeros((2, 4, 5, 4))},
        ValueError,
        r"grads depth 3 differs from image depth 4",
    ),
    (
        "grads count",
        {"grads": np.zeros((3, 2, 2, 3))},
        ValueError,
        r"grads has 3 crops but boxes has 1 rows",
    ),
    ("boxes nan (TF crashes)", {"boxes": [[0, 0, np.nan, 1]]}, ValueError, r"boxes must be finite"),
    ("image bool", {"image": np.zeros((2, 4, 5, 3), bool)}, TypeError, r"image dtype"),
]


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [c[1:] for c in GRAD_BOXES_BAD],
    ids=[c[0] for c in GRAD_BOXES_BAD],
)
def test_grad_boxes_refuses(kwargs, exc, message):
    with pytest.raises(exc, match=message):
        grad_boxes(**kwargs)


def test_output_too_large_is_refused_before_allocation():
    with pytest.raises(OutputTooLargeError, match=r"shape \(11, 2065374891, 1145309325, 1\)"):
        forward(
            image=np.ones((1, 1, 1, 1)),
            boxes=np.ones((11, 4)),
            box_indices=np.zeros(11, int),
            crop_size=[2065374891, 1145309325],
        )


def test_output_too_large_is_a_value_error_and_a_memory_error():
    assert issubclass(OutputTooLargeError, ValueError)
    assert issubclass(OutputTooLargeError, MemoryError)


def test_output_limit_is_configurable(cropcore_env):
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", "1000")
    forward(crop_size=(5, 16))  # 1*5*16*3*4 = 960 bytes
    with pytest.raises(OutputTooLargeError, match="1,008 bytes"):
        forward(crop_size=(6, 14))


def test_grad_image_output_guard(cropcore_env):
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", "100")
    with pytest.raises(OutputTooLargeError, match="crop_and_resize_grad_image"):
        grad_image()


# -- canonical forms ---------------------------------------------------------------------------------


def test_boxes_become_float32_rounded_to_nearest():
    call = forward(boxes=np.array([[0.1, 0.2, 0.7, 1.0]], np.float64))
    assert call.boxes.dtype == np.float32
    np.testing.assert_array_equal(call.boxes, np.float32([[0.1, 0.2, 0.7, 1.0]]))


def test_integer_boxes_and_lists_are_accepted():
    assert forward(boxes=[[0, 0, 1, 1]]).boxes.dtype == np.float32


def test_box_indices_become_int32():
    call = forward(box_indices=np.array([1], np.uint64))
    assert call.box_indices.dtype == np.int32
    assert call.box_indices[0] == 1


def test_empty_boxes_are_valid():
    call = forward(boxes=np.zeros((0, 4)), box_indices=np.zeros(0, int))
    assert call.output_shape == (0, 2, 2, 3)


def test_empty_box_indices_list_is_taken_as_int32_as_tensorflow_takes_it():
    # np.asarray([]) is float64; TensorFlow converts [] to an empty int32 tensor.
    call = forward(boxes=np.zeros((0, 4), np.float32), box_indices=[])
    assert call.box_indices.dtype == np.int32
    assert call.output_shape == (0, 2, 2, 3)


def test_empty_float_box_indices_array_is_still_refused():
    with pytest.raises(TypeError, match="box_indices must be an integer array"):
        forward(boxes=np.zeros((0, 4), np.float32), box_indices=np.zeros(0, np.float64))


def test_shape_only_mode_reads_no_box_values():
    boxes = np.array([[np.nan, 0, 1, 1]], np.float32)
    call = spec.crop_and_resize_call(
        np.zeros((1, 4, 5, 3), np.float32), boxes, [7], (2, 2), check_values=False
    )
    assert call.box_indices.dtype == np.int32
    assert call.output_shape == (1, 2, 2, 3)
    with pytest.raises(ValueError, match="boxes must be finite"):
        spec.crop_and_resize_call(np.zeros((1, 4, 5, 3), np.float32), boxes, [0], (2, 2))


def test_shape_only_mode_still_checks_shapes():
    with pytest.raises(ValueError, match="boxes must have shape"):
        spec.crop_and_resize_call(
            np.zeros((1, 4, 5, 3), np.float32), np.zeros((1, 3)), [0], (2, 2), check_values=False
        )


def test_empty_boxes_on_an_empty_batch_are_valid():
    call = forward(
        image=np.zeros((0, 4, 5, 3)), boxes=np.zeros((0, 4)), box_indices=np.zeros(0, int)
    )
    assert call.output_shape == (0, 2, 2, 3)


def test_depth_zero_is_valid():
    assert forward(image=np.zeros((1, 4, 5, 0))).output_shape == (1, 2, 2, 0)


def test_extrapolation_value_is_rounded_to_float32():
    assert forward(extrapolation_value=0.1).extrapolation_value == float(np.float32(0.1))
    assert np.isnan(forward(extrapolation_value=float("nan")).extrapolation_value)
    assert forward(extrapolation_value=np.float64(2)).extrapolation_value == 2.0
    assert forward(extrapolation_value=np.array(3.5)).extrapolation_value == 3.5


def test_crop_size_accepts_arrays_and_numpy_ints():
    assert forward(crop_size=np.array([3, 4], np.int32)).crop_size == (3, 4)
    assert forward(crop_size=[np.int64(3), 4]).crop_size == (3, 4)


def test_channels_first_shapes():
    call = forward(image=np.zeros((2, 3, 4, 5)), data_format="channels_first", crop_size=(6, 7))
    assert call.image_shape == spec.ImageShape(2, 4, 5, 3)
    assert call.output_shape == (1, 3, 6, 7)


def test_data_format_is_case_insensitive_like_keras():
    assert (
        forward(data_format="Channels_First", image=np.zeros((1, 3, 4, 5))).data_format
        == "channels_first"
    )


def test_non_native_byte_order_image_is_made_native():
    big = np.arange(60, dtype=">f4").reshape(1, 4, 5, 3)
    call = forward(image=big, box_indices=[0])
    assert call.image.dtype.isnative
    np.testing.assert_array_equal(call.image, big)


def test_grad_image_dtype_and_shape():
    call = grad_image(dtype=np.float16)
    assert call.output_dtype == "float16"
    assert call.output_shape == (2, 4, 5, 3)
    assert call.crop_size == (2, 2)


def test_grads_are_cast_to_float32():
    assert grad_image(grads=GRADS.astype(np.float64)).grads.dtype == np.float32


# -- crop2d (Keras Cropping2D's argument forms and messages) -------------------------------------------

X = np.zeros((3, 7, 9, 5))

CROPPING_FORMS = [
    (2, ((2, 2), (2, 2))),
    ((1, 2), ((1, 1), (2, 2))),
    (((1, 2), (3, 4)), ((1, 2), (3, 4))),
    ([[1, 2], [3, 4]], ((1, 2), (3, 4))),
    ((np.int64(1), 2), ((1, 1), (2, 2))),
    (np.int64(2), ((2, 2), (2, 2))),
]


@pytest.mark.parametrize(("cropping", "expected"), CROPPING_FORMS)
def test_cropping_forms(cropping, expected):
    assert spec.crop2d_call(X, cropping).cropping == expected


CROP2D_BAD = [
    # Messages as Keras 3's Cropping2D (keras/src/layers/reshaping/cropping2d.py).
    ("negative int", -1, ValueError, r"`cropping` cannot be negative. Received: cropping=-1."),
    (
        "one element",
        (1,),
        ValueError,
        r"`cropping` should have two elements. Received: cropping=\(1,\).",
    ),
    ("three elements", (1, 2, 3), ValueError, r"`cropping` should have two elements"),
    ("string", "1", ValueError, r"`cropping` should be either an int"),
    ("None", None, ValueError, r"`cropping` should be either an int"),
    ("float", 1.0, ValueError, r"`cropping` should be either an int"),
    ("bool", True, ValueError, r"`cropping` should be either an int"),
    (
        "bad pair length",
        ((1, 2), (3, 4, 5)),
        ValueError,
        r"The `2nd entry of cropping` argument must be a tuple of 2 integers. Received 2nd entry of cropping=\(3, 4, 5\)",
    ),
    (
        "negative in pair",
        ((1, 2), (3, -4)),
        ValueError,
        r"including values \{-4\} that do not satisfy `value >= 0`",
    ),
    ("string in pair", ((1, 2), "3"), ValueError, r"The `2nd entry of cropping` argument"),
    (
        "float in pair",
        ((1.5, 2), (0, 0)),
        TypeError,
        r"including element 1.5 of type <class 'float'>",
    ),
]


@pytest.mark.parametrize(
    ("cropping", "exc", "message"), [c[1:] for c in CROP2D_BAD], ids=[c[0] for c in CROP2D_BAD]
)
def test_crop2d_refuses_cropping(cropping, exc, message):
    with pytest.raises(exc, match=message):
        spec.crop2d_call(X, cropping)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize(
    "cropping", [((3, 6), (0, 0)), ((0, 0), (5, 4)), ((4, 5), (0, 0)), ((0, 0), (7, 3))]
)
def test_crop2d_refuses_cropping_everything(cropping, data_format):
    # keras cropping2d_test: test_cropping_2d_errors_if_cropping_more_than_available / excessive
    x = np.zeros((3, 8, 9, 5)) if data_format == "channels_last" else np.zeros((3, 5, 8, 9))
    with pytest.raises(
        ValueError,
        match=r"Values in `cropping` argument should be smaller than the corresponding spatial dimension of the input",
    ):
        spec.crop2d_call(x, cropping, data_format)


def test_crop2d_leaving_one_row_is_fine():
    assert spec.crop2d_call(X, ((3, 3), (0, 0))).output_shape == (3, 1, 9, 5)


def test_crop2d_refuses_rank_3():
    with pytest.raises(ValueError, match=r"x must be 4-D .*got shape \(7, 9, 5\) \(ndim=3\)"):
        spec.crop2d_call(np.zeros((7, 9, 5)), 1)


def test_crop2d_data_format_none_means_channels_last():
    assert spec.crop2d_call(X, 1, None).data_format == "channels_last"


def test_crop2d_data_format_echoed_in_message():
    with pytest.raises(ValueError, match=r"got 'nhwc'"):
        spec.crop2d_call(X, 1, "nhwc")
