"""Recorded Keras ``Cropping2D`` cases: values for every form of ``cropping``, dtype and data
format (op ``crop2d``), and Keras's refusals of bad ``cropping`` and inputs (op ``crop2d_error``)."""

from __future__ import annotations

import ast
from typing import Any

import keras
import numpy as np

from reference.npz import Recorder
from reference.tf_calls import clean_message


def keras_crop(x: np.ndarray, cropping: Any, data_format: Any) -> np.ndarray:
    layer = keras.layers.Cropping2D(cropping=cropping, data_format=data_format)
    return keras.ops.convert_to_numpy(layer(x))


def record_crop2d(rec: Recorder, rng: np.random.Generator) -> None:
    channels_last = rng.standard_normal((2, 7, 9, 3)).astype(np.float32)
    channels_first = np.ascontiguousarray(channels_last.transpose(0, 3, 1, 2))
    inputs = {"channels_last": channels_last, "channels_first": channels_first}

    # `cropping` is stored as its Python source text (tuples and lists stay distinct).
    forms = [
        ("int", "2"),
        ("int-zero", "0"),
        ("pair", "(1, 2)"),
        ("pair-list", "[1, 2]"),
        ("pair-of-pairs", "((1, 2), (3, 4))"),
        ("list-of-lists", "[[1, 2], [3, 4]]"),
        ("list-of-tuples", "[(1, 0), (0, 3)]"),
        ("pair-int-and-pair", "(1, (2, 3))"),
        ("zero-pairs", "((0, 0), (0, 0))"),
        ("keras-test-top-bottom-only-left", "((1, 0), (3, 0))"),
        ("keras-test-no-bottom", "((1, 0), (3, 4))"),
        ("keras-test-no-right", "((1, 2), (3, 0))"),
        ("keras-test-zero-top-left", "((0, 2), (0, 4))"),
        ("leaves-one-row-one-column", "((3, 3), (4, 4))"),
    ]
    for data_format, x in inputs.items():
        for label, text in forms:
            add_crop2d(rec, f"{label}-{data_format}", x, text, data_format)
        add_crop2d(rec, f"default-{data_format}", x, None, data_format)

    dtypes = ("float64", "float16", "int32", "uint8", "int8", "int64", "uint16", "bool")
    for data_format, x in inputs.items():
        for dtype in dtypes:
            if dtype == "bool":
                values = x > 0
            elif np.dtype(dtype).kind == "u":
                values = (np.abs(x) * 50).astype(dtype)
            else:
                values = (x * 50).astype(dtype)
            add_crop2d(rec, f"dtype-{dtype}-{data_format}", values, "((1, 2), (3, 4))", data_format)
    add_crop2d(rec, "data-format-mixed-case", channels_first, "((1, 2), (3, 4))", "Channels_First")
    add_crop2d(rec, "data-format-none-is-channels-last", channels_last, "((1, 2), (3, 4))", None)
    add_crop2d(rec, "single-pixel-image", channels_last[:, :1, :1], "0", "channels_last")


def add_crop2d(rec, name, x, cropping_text, data_format) -> None:

    cropping = ((0, 0), (0, 0)) if cropping_text is None else ast.literal_eval(cropping_text)
    if cropping_text is None:
        layer = keras.layers.Cropping2D(data_format=data_format)
        output = keras.ops.convert_to_numpy(layer(x))
    else:
        output = keras_crop(x, cropping, data_format)
    rec.add(
        "crop2d",
        name,
        {"x": x, "output": output},
        cropping=cropping_text,
        data_format=data_format,
        keras_dtype=str(output.dtype),
    )


def record_crop2d_errors(rec: Recorder) -> None:
    x = np.zeros((2, 7, 9, 3), np.float32)
    x_first = np.zeros((2, 3, 7, 9), np.float32)
    bad_cropping = [
        ("negative-int", "-1"),
        ("one-element", "(1,)"),
        ("three-elements", "(1, 2, 3)"),
        ("string", "'1'"),
        ("string-two-chars", "'12'"),
        ("none", "None"),
        ("float", "1.0"),
        ("second-entry-three-elements", "((1, 2), (3, 4, 5))"),
        ("second-entry-negative", "((1, 2), (3, -4))"),
        ("pair-negative", "(-1, 2)"),
        ("second-entry-string", "((1, 2), '3')"),
        ("second-entry-strings", "((1, 2), ('3', '4'))"),
        ("fractional-entry", "((1.5, 2), (0, 0))"),
        ("first-entry-none", "(None, (0, 0))"),
    ]
    for label, text in bad_cropping:
        add_crop2d_error(rec, label, x, text, "channels_last")
    add_crop2d_error(rec, "numpy-int64-scalar", x, "2", "channels_last", numpy_int=True)
    # Over-cropping (nothing left, or more than there is), both formats (Keras's own test cases).
    over = [
        ("height-exactly-0-left", "((3, 4), (0, 0))"),
        ("width-exactly-0-left", "((0, 0), (5, 4))"),
        ("height-more-than-all", "((6, 3), (0, 0))"),
        ("width-more-than-all", "((0, 0), (7, 3))"),
        ("int-too-large", "4"),
    ]
    for label, text in over:
        add_crop2d_error(rec, f"over-cropping-{label}-channels_last", x, text, "channels_last")
        add_crop2d_error(
            rec, f"over-cropping-{label}-channels_first", x_first, text, "channels_first"
        )
    add_crop2d_error(rec, "input-rank-3", x[0], "1", "channels_last", argument="x")
    add_crop2d_error(rec, "input-rank-5", x[None], "1", "channels_last", argument="x")
    add_crop2d_error(rec, "data-format-nhwc", x, "1", "nhwc", argument="data_format")


def add_crop2d_error(
    rec, name, x, cropping_text, data_format, numpy_int=False, argument="cropping"
) -> None:
    """``argument`` is the crop2d argument a refusal's message must name."""
    cropping = ast.literal_eval(cropping_text)
    if numpy_int:
        cropping = np.int64(cropping)
    stage = "init"
    try:
        layer = keras.layers.Cropping2D(cropping=cropping, data_format=data_format)
        stage = "call"
        layer(x)
    except Exception as exc:
        keras_error = exc
    else:
        raise AssertionError(f"Keras accepted error case {name}")
    rec.add(
        "crop2d_error",
        name,
        {"x": x},
        cropping=cropping_text,
        cropping_numpy_int=numpy_int,
        data_format=data_format,
        argument=argument,
        keras_error=type(keras_error).__name__,
        keras_stage=stage,
        keras_message=clean_message(str(keras_error)),
    )


# --------------------------------------------------------------------------------------------------
