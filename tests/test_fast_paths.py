"""The quick routes through validation and dispatch give exactly the general routes' answers.

Small calls spend most of their time in cropcore's Python code, so :mod:`cropcore.spec` checks
canonical NumPy arguments first without conversions, and :mod:`cropcore.dispatch` caches what it found about each
backend for a kind of call. Each quick route must return what the general one returns, raise what
it raises, and notice every change the general one would notice.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import cropcore
from cropcore import spec
from cropcore.registry import registry


class _Slow(np.ndarray):
    """A NumPy subclass: same values, but ``type(x) is np.ndarray`` is false, so every argument
    check takes the general route."""


def slow(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).view(_Slow)


def same_call(quick, general) -> None:
    """Two call objects are equal field by field (arrays: shape, dtype and bits)."""
    assert type(quick) is type(general)
    for name in quick.__dataclass_fields__:
        a, b = getattr(quick, name), getattr(general, name)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype, name
            assert a.shape == b.shape, name
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), name
        else:
            assert a == b, name
            assert type(a) is type(b), name


def outcome(function, *args):
    """``("ok", result)`` or ``("error", exception type, message)``."""
    try:
        return ("ok", function(*args))
    except (TypeError, ValueError, IndexError) as exc:
        return ("error", type(exc), str(exc))


box_values = st.one_of(
    st.floats(-2, 3, width=32),
    st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 3e38, -3e38]),
)


@settings(max_examples=300, deadline=None)
@given(
    num_boxes=st.integers(0, 12),  # both sides of the few-boxes route
    values=st.lists(box_values, min_size=48, max_size=48),
    indices=st.lists(st.integers(-3, 4), min_size=12, max_size=12),
    index_dtype=st.sampled_from(["int32", "int64", "uint8", ">i4"]),
    box_dtype=st.sampled_from(["float32", "float64", ">f4"]),
    batch=st.integers(0, 3),
)
def test_boxes_quick_route_matches_the_general_route(
    num_boxes, values, indices, index_dtype, box_dtype, batch
):
    boxes = np.array(values[: 4 * num_boxes], np.float64).reshape(num_boxes, 4).astype(box_dtype)
    box_indices = np.array(indices[:num_boxes]).astype(index_dtype, casting="unsafe")
    quick = outcome(spec.boxes_arg, boxes, box_indices, batch)
    general = outcome(spec.boxes_arg, slow(boxes), slow(box_indices), batch)
    assert quick[0] == general[0]
    if quick[0] == "error":
        assert quick[1:] == general[1:]
    else:
        for a, b in zip(quick[1], general[1], strict=True):
            assert a.dtype == b.dtype
            assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("num_boxes", [3, 30])  # the few-boxes route and the NumPy one
def test_refusals_name_the_argument_on_both_routes(num_boxes):
    boxes = np.tile(np.float32([0, 0, 1, 1]), (num_boxes, 1))
    indices = np.zeros(num_boxes, np.int32)
    nan_boxes = boxes.copy()
    nan_boxes[-1, 2] = np.nan
    with pytest.raises(ValueError, match=rf"boxes\[{num_boxes - 1}, 2\] = nan"):
        spec.boxes_arg(nan_boxes, indices, 2)
    for bad in (-1, 2, np.iinfo(np.int32).min):
        wrong = indices.copy()
        wrong[1] = bad
        with pytest.raises(IndexError, match=rf"box_indices\[1\] = {bad}"):
            spec.boxes_arg(boxes, wrong, 2)
        with pytest.raises(IndexError, match=rf"box_indices\[1\] = {bad}"):
            spec.boxes_arg(boxes, wrong.astype(np.int64), 2)


@settings(max_examples=200, deadline=None)
@given(
    shape=st.tuples(*[st.integers(0, 4)] * 4),
    crop=st.tuples(st.integers(-1, 3), st.integers(-1, 3)),
    data_format=st.sampled_from(["channels_last", "channels_first", "NHWC", None]),
    dtype=st.sampled_from(["float32", "uint8", "float64", "bool", ">f4"]),
    method=st.sampled_from(["bilinear", "nearest", "area"]),
    extrapolation=st.sampled_from([0.0, -0.0, 0, 1.5, 1e40]),
)
def test_crop_and_resize_call_quick_route_matches(
    shape, crop, data_format, dtype, method, extrapolation
):
    image = np.zeros(shape, dtype)
    boxes = np.float32([[0, 0, 1, 1], [0.5, 0.5, 0.1, 0.2]])
    indices = np.zeros(2, np.int32)
    args = (crop, method, extrapolation, data_format)
    quick = outcome(spec.crop_and_resize_call, image, boxes, indices, *args)
    general = outcome(spec.crop_and_resize_call, slow(image), slow(boxes), slow(indices), *args)
    assert quick[0] == general[0]
    if quick[0] == "error":
        assert quick[1:] == general[1:]
    else:
        quick_call, general_call = quick[1], general[1]
        assert quick_call.crop_size == general_call.crop_size
        assert quick_call.image_shape == general_call.image_shape
        assert math.copysign(1, quick_call.extrapolation_value) == math.copysign(
            1, general_call.extrapolation_value
        )
        assert np.asarray(quick_call.image).dtype == np.asarray(general_call.image).dtype


@settings(max_examples=200, deadline=None)
@given(
    grads_shape=st.tuples(
        st.integers(0, 3), st.integers(0, 3), st.integers(0, 3), st.integers(1, 2)
    ),
    image_shape=st.tuples(
        st.integers(-1, 2), st.integers(-1, 3), st.integers(0, 3), st.integers(1, 2)
    ),
    grads_dtype=st.sampled_from(["float32", "float64", "int32"]),
    dtype=st.sampled_from(["float32", "float16", np.float64, "int8"]),
)
def test_grad_image_call_quick_route_matches(grads_shape, image_shape, grads_dtype, dtype):
    grads = np.ones(grads_shape, grads_dtype)
    boxes = np.tile(np.float32([0, 0, 1, 1]), (grads_shape[0], 1))
    indices = np.zeros(grads_shape[0], np.int32)
    args = ("bilinear", "channels_last", dtype)
    quick = outcome(spec.grad_image_call, grads, boxes, indices, image_shape, *args)
    general = outcome(
        spec.grad_image_call, slow(grads), slow(boxes), slow(indices), list(image_shape), *args
    )
    assert quick[0] == general[0]
    if quick[0] == "error":
        assert quick[1:] == general[1:]
    else:
        assert quick[1].image_shape == general[1].image_shape
        assert quick[1].dtype == general[1].dtype
        assert quick[1].crop_size == general[1].crop_size


def test_quick_route_returns_canonical_arrays_unchanged():
    image = np.ones((1, 3, 3, 2), np.float32)
    boxes = np.float32([[0, 0, 1, 1]])
    indices = np.zeros(1, np.int32)
    call = spec.crop_and_resize_call(image, boxes, indices, (2, 2))
    assert call.image is image
    assert call.boxes is boxes
    assert call.box_indices is indices
    same_call(call, spec.crop_and_resize_call(slow(image), slow(boxes), slow(indices), [2, 2]))


def test_negative_zero_extrapolation_keeps_its_sign():
    assert math.copysign(1, spec.extrapolation_value_arg(-0.0)) == -1
    assert math.copysign(1, spec.extrapolation_value_arg(0.0)) == 1
    assert spec.extrapolation_value_arg(0) == 0.0
    assert type(spec.extrapolation_value_arg(0)) is float


def test_check_output_size_is_exact_for_numpy_integer_dimensions(monkeypatch):
    # 2**32 * 2**32 overflows int64; a product in NumPy integers would wrap around and pass.
    with pytest.raises(cropcore.errors.OutputTooLargeError):
        spec.check_output_size((np.int64(2**32), np.int64(2**32), 1, 1), "float32", "x")


# --------------------------------------------------------------------------------------------------
# Environment variables


def test_environment_backend_is_read_at_every_call(register_backend, image, cropcore_env):
    fake = register_backend("fakeenv")
    boxes, indices = [[0, 0, 1, 1]], [0]
    cropcore.crop_and_resize(image, boxes, indices, (2, 2))
    assert fake.calls == []
    cropcore_env.set("CROPCORE_BACKEND", "fakeenv")
    cropcore.crop_and_resize(image, boxes, indices, (2, 2))
    assert len(fake.calls) == 1
    cropcore_env.delete("CROPCORE_BACKEND")
    cropcore.crop_and_resize(image, boxes, indices, (2, 2))
    assert len(fake.calls) == 1


# --------------------------------------------------------------------------------------------------
# The dispatcher's cache


def test_a_backend_registered_later_is_seen(register_backend, image):
    cropcore.set_priority(["fakelate", "numpy"])
    boxes, indices = [[0, 0, 1, 1]], [0]
    assert cropcore.explain("crop_and_resize", image, boxes, indices, (2, 2)).backend == "numpy"
    cropcore.crop_and_resize(image, boxes, indices, (2, 2))  # cached: fakelate not installed
    fake = register_backend("fakelate")
    cropcore.crop_and_resize(image, boxes, indices, (2, 2))
    assert len(fake.calls) == 1
    registry.unregister("fakelate")
    cropcore.crop_and_resize(image, boxes, indices, (2, 2))
    assert len(fake.calls) == 1


def test_declines_is_asked_for_every_call(register_backend, image):
    fake = register_backend(
        "fakepicky", declines=lambda call: "too small" if call.crop_size == (1, 1) else None
    )
    cropcore.set_priority(["fakepicky", "numpy"])
    boxes, indices = [[0, 0, 1, 1]], [0]
    for size in [(2, 2), (1, 1), (2, 2), (1, 1)]:
        cropcore.crop_and_resize(image, boxes, indices, size)
    assert [c.crop_size for c in fake.calls] == [(2, 2), (2, 2)]


def test_priority_changes_are_seen(register_backend, image):
    fake = register_backend("fakeprio")
    boxes, indices = [[0, 0, 1, 1]], [0]
    cropcore.set_priority(["numpy", "fakeprio"])
    cropcore.crop_and_resize(image, boxes, indices, (2, 2))
    assert fake.calls == []
    cropcore.set_priority(["fakeprio", "numpy"])
    cropcore.crop_and_resize(image, boxes, indices, (2, 2))
    assert len(fake.calls) == 1


def test_dtype_and_method_are_part_of_what_is_cached(register_backend, image):
    fake = register_backend("fakefloat", dtypes=("float32",))
    cropcore.set_priority(["fakefloat", "numpy"])
    boxes, indices = [[0, 0, 1, 1]], [0]
    cropcore.crop_and_resize(image, boxes, indices, (2, 2))
    cropcore.crop_and_resize(image.astype(np.uint8), boxes, indices, (2, 2))
    cropcore.crop_and_resize(image, boxes, indices, (2, 2))
    assert len(fake.calls) == 2
    assert all(np.asarray(c.image).dtype == np.float32 for c in fake.calls)


# --------------------------------------------------------------------------------------------------
# The torch quick route of crop_and_resize_call (issue 16)


def _general_torch_call(*args, **kwargs):
    """crop_and_resize_call with its torch quick route switched off."""
    quick = spec._quick_torch_call
    spec._quick_torch_call = lambda *a, **k: None
    try:
        return spec.crop_and_resize_call(*args, **kwargs)
    finally:
        spec._quick_torch_call = quick


def _call_outcome(function, *args):
    try:
        return ("ok", function(*args))
    except (TypeError, ValueError, IndexError, cropcore.errors.OutputTooLargeError) as exc:
        return ("error", type(exc), str(exc))


# Mostly valid calls (the quick route's), each argument sometimes wrong in one way.
@settings(max_examples=300, deadline=None)
@given(
    num_boxes=st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8] * 2 + [0, 9, 10]),  # both sides of 8
    values=st.lists(st.floats(-2, 3, width=32), min_size=40, max_size=40),
    bad_value=st.sampled_from([None] * 16 + [np.nan, np.inf, -np.inf, 3e38]),
    bad_position=st.integers(0, 39),
    indices=st.lists(st.integers(0, 1), min_size=10, max_size=10),
    bad_index=st.sampled_from([None] * 12 + [-1, 2, 3]),
    index_dtype=st.sampled_from(["int32", "int64"] * 6 + ["int16", "float32"]),
    box_dtype=st.sampled_from(["float32"] * 10 + ["float64", "bfloat16"]),
    shape=st.tuples(
        st.sampled_from([2] * 9 + [0]),
        st.sampled_from([4] * 8 + [1, 0]),
        st.sampled_from([5] * 8 + [1, 0]),
        st.integers(1, 2),
    ),
    image_dtype=st.sampled_from(["float32"] * 8 + ["uint8", "bfloat16", "bool", "complex64"]),
    crop=st.sampled_from([(2, 3)] * 10 + [(1, 1), (0, 2), 3, (2.0, 1)]),
    data_format=st.sampled_from(["channels_last", "channels_first"]),
    extrapolation=st.sampled_from([0.0] * 8 + [-0.0, 1.5, 1e40, "x"]),
    boxes_2d=st.sampled_from([True] * 15 + [False]),
)
def test_torch_quick_route_matches_the_general_route(
    num_boxes, values, bad_value, bad_position, indices, bad_index, index_dtype, box_dtype,
    shape, image_dtype, crop, data_format, extrapolation, boxes_2d,
):  # fmt: skip
    torch = pytest.importorskip("torch")
    if data_format == "channels_first":
        shape = (shape[0], shape[3], shape[1], shape[2])
    image = torch.zeros(shape, dtype=getattr(torch, image_dtype))
    if bad_value is not None:
        values = [*values[:bad_position], bad_value, *values[bad_position + 1 :]]
    if bad_index is not None:
        indices = [*indices[:-1], bad_index]
    boxes = torch.tensor(values[: 4 * num_boxes], dtype=torch.float64).reshape(num_boxes, 4)
    boxes = boxes.to(getattr(torch, box_dtype))
    if not boxes_2d:
        boxes = boxes.reshape(-1)
    box_indices = torch.tensor(indices[-num_boxes:] if num_boxes else [])
    box_indices = box_indices.to(getattr(torch, index_dtype))
    args = (image, boxes, box_indices, crop, "bilinear", extrapolation, data_format)
    quick = _call_outcome(spec.crop_and_resize_call, *args)
    general = _call_outcome(_general_torch_call, *args)
    assert quick[0] == general[0]
    if quick[0] == "error":
        assert quick[1:] == general[1:]
        return
    quick_call, general_call = quick[1], general[1]
    for name in quick_call.__dataclass_fields__:
        a, b = getattr(quick_call, name), getattr(general_call, name)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype, name
            assert a.shape == b.shape, name
            assert torch.equal(a, b), name
        else:
            assert a == b, name
            assert type(a) is type(b), name
        if name == "extrapolation_value":
            assert math.copysign(1, a) == math.copysign(1, b)


def test_torch_quick_route_takes_the_common_case(monkeypatch):
    torch = pytest.importorskip("torch")
    taken = []
    real = spec._quick_torch_call

    def spy(*args):
        result = real(*args)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(spec, "_quick_torch_call", spy)
    image, boxes = torch.rand(1, 16, 16, 1), torch.tensor([[0.1, 0.1, 0.6, 0.6]] * 4)
    call = spec.crop_and_resize_call(image, boxes, torch.zeros(4, dtype=torch.int64), (7, 7))
    assert taken == [True]
    assert call.box_indices.dtype == torch.int32
    assert call.values_checked
