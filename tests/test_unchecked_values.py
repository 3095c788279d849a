"""Validation that never waits for a device: the static checks always, box values only where they
are on the host (cropcore.arguments.values_checked), unless CROPCORE_STRICT asks for a device read.

No GPU is needed: a torch CPU tensor is made to look device-resident by patching where the torch
array library says its values are, and meta tensors are traced ones (no values at all).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import cropcore
from cropcore import spec
from cropcore.arrays import library_for
from cropcore.errors import BackendError

torch = pytest.importorskip("torch")

NAN_BOX = [[0.0, 0.0, math.nan, 1.0]]


@pytest.fixture
def on_device(monkeypatch):
    """torch CPU tensors count as device-resident: readable only by a synchronisation."""
    torch_library = library_for("torch")
    monkeypatch.setattr(type(torch_library), "residence", lambda self, x: "device")


def image(batch=2):
    return torch.zeros(batch, 4, 5, 3)


def test_host_values_are_checked_as_tensorflow_does():
    with pytest.raises(ValueError, match="boxes must be finite"):
        spec.crop_and_resize_call(image(), torch.tensor(NAN_BOX), torch.tensor([0]), (2, 2))
    with pytest.raises(IndexError, match="box_indices must be in"):
        spec.crop_and_resize_call(image(), torch.ones(1, 4), torch.tensor([2]), (2, 2))
    call = spec.crop_and_resize_call(image(), torch.ones(1, 4), torch.tensor([1]), (2, 2))
    assert call.values_checked


def test_device_values_are_not_read_by_default(on_device):
    call = spec.crop_and_resize_call(image(), torch.tensor(NAN_BOX), torch.tensor([5]), (2, 2))
    assert not call.values_checked
    assert call.boxes.dtype == torch.float32
    assert call.box_indices.dtype == torch.int32


def test_strict_mode_reads_device_values(on_device, cropcore_env):
    cropcore_env.set("CROPCORE_STRICT", "1")
    with pytest.raises(ValueError, match="boxes must be finite"):
        spec.crop_and_resize_call(image(), torch.tensor(NAN_BOX), torch.tensor([0]), (2, 2))
    with pytest.raises(IndexError, match="box_indices must be in"):
        spec.grad_image_call(
            torch.zeros(1, 2, 2, 3), torch.ones(1, 4), torch.tensor([7]), (2, 4, 5, 3)
        )
    call = spec.grad_boxes_call(
        torch.zeros(1, 2, 2, 3), image(), torch.ones(1, 4), torch.tensor([1])
    )
    assert call.values_checked


def test_traced_values_are_never_read_even_in_strict_mode(cropcore_env):
    cropcore_env.set("CROPCORE_STRICT", "1")
    meta = torch.empty(1, 4, device="meta")
    call = spec.crop_and_resize_call(
        torch.empty(2, 4, 5, 3, device="meta"),
        meta,
        torch.empty(1, dtype=torch.int64, device="meta"),
        (2, 2),
    )
    assert not call.values_checked
    assert call.output_shape == (1, 2, 2, 3)


def test_static_checks_still_run_on_unread_values(on_device):
    with pytest.raises(ValueError, match=r"boxes must have shape \(num_boxes, 4\)"):
        spec.crop_and_resize_call(image(), torch.ones(1, 3), torch.tensor([0]), (2, 2))
    with pytest.raises(TypeError, match="box_indices must be an integer array"):
        spec.crop_and_resize_call(image(), torch.ones(1, 4), torch.tensor([0.0]), (2, 2))
    with pytest.raises(ValueError, match="crop_size"):
        spec.crop_and_resize_call(image(), torch.ones(1, 4), torch.tensor([0]), (0, 2))


@pytest.mark.parametrize(
    ("dtype", "values", "expected"),
    [
        # 2**32 cast to int32 is 0: a plausible crop of image 0. Clipped first, it stays out of range.
        ("int64", [2**32, 2**32 + 1, -(2**31) - 1, 1], [2, 2, -1, 1]),
        ("uint32", [2**32 - 1, 2**31, 3, 1], [2, 2, 2, 1]),
    ],
)
def test_a_wide_index_cannot_wrap_into_a_valid_one(on_device, dtype, values, expected):
    wide = torch.tensor(values, dtype=torch.int64).to(getattr(torch, dtype))
    call = spec.crop_and_resize_call(image(), torch.ones(4, 4), wide, (2, 2))
    assert call.box_indices.dtype == torch.int32
    assert call.box_indices.tolist() == expected


def test_a_backend_not_safe_on_unchecked_values_gets_them_checked(on_device, register_backend):
    register_backend("fakesafe", array_library="torch", unchecked_values=True)
    careful = register_backend("fakecareful", array_library="torch")
    with pytest.raises(IndexError, match="box_indices must be in"):
        cropcore.crop_and_resize(
            image(), torch.ones(1, 4), torch.tensor([9]), (2, 2), backend="fakecareful"
        )
    cropcore.crop_and_resize(
        image(), torch.ones(1, 4), torch.tensor([1]), (2, 2), backend="fakecareful"
    )
    assert careful.calls[-1].values_checked


def test_a_backend_safe_on_unchecked_values_gets_them_unread(on_device, register_backend):
    safe = register_backend("fakesafe", array_library="torch", unchecked_values=True)
    cropcore.crop_and_resize(
        image(), torch.tensor(NAN_BOX), torch.tensor([9]), (2, 2), backend="fakesafe"
    )
    assert not safe.calls[-1].values_checked


def test_traced_boxes_are_refused_by_a_backend_that_needs_checked_values(register_backend):
    register_backend("fakecareful", array_library="torch", devices=("meta",))
    with pytest.raises(
        BackendError, match="'fakecareful' cannot run crop_and_resize on traced boxes"
    ):
        cropcore.crop_and_resize(
            torch.empty(2, 4, 5, 3, device="meta"),
            torch.empty(1, 4, device="meta"),
            torch.empty(1, dtype=torch.int32, device="meta"),
            (2, 2),
            backend="fakecareful",
        )


def test_numpy_arrays_are_always_checked():
    with pytest.raises(ValueError, match="boxes must be finite"):
        cropcore.crop_and_resize(
            np.zeros((1, 4, 5, 3), np.float32), np.array(NAN_BOX, np.float32), [0], (2, 2)
        )


@pytest.fixture
def device_rule(monkeypatch, cropcore_env):
    """The torch kernels (CUDA's path), applying the device rule to CPU tensors."""
    from cropcore_torch import samples

    cropcore_env.set("CROPCORE_TORCH_NATIVE", "0")
    monkeypatch.setattr(samples, "_indices_on_host", lambda box_indices: False)


def _unchecked(make_call, *args, **kwargs):
    from cropcore import dispatch

    return dispatch.run(make_call(*args, **kwargs, check_values=False), "torch")


@pytest.mark.parametrize("bad_index", [2, -1, 2**31 - 1])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_torch_kernels_on_a_device_make_a_bad_box_loud_and_leave_the_others(
    device_rule, bad_index, data_format
):
    channels_first = data_format == "channels_first"
    image = torch.arange(2 * 4 * 5 * 3, dtype=torch.float32).reshape(2, 4, 5, 3) / 7
    if channels_first:
        image = image.permute(0, 3, 1, 2).contiguous()
    boxes = torch.tensor([[0.1, 0.2, 0.8, 0.9], [0.0, 0.0, 1.0, 1.0], [0.9, 0.1, 0.2, 0.7]])
    indices = torch.tensor([1, bad_index, 0], dtype=torch.int32)
    good = [0, 2]
    kwargs = {"data_format": data_format}
    crops = _unchecked(spec.crop_and_resize_call, image, boxes, indices, (3, 4), **kwargs)
    expected = cropcore.crop_and_resize(image, boxes[good], indices[good], (3, 4), **kwargs)
    assert torch.isnan(crops[1]).all()
    assert torch.equal(crops[good], expected)

    grads = torch.linspace(-1, 1, crops.numel()).reshape(crops.shape)
    grad_image = _unchecked(
        spec.grad_image_call, grads, boxes, indices, tuple(image.shape), **kwargs
    )
    expected = cropcore.crop_and_resize_grad_image(
        grads[good], boxes[good], indices[good], tuple(image.shape), **kwargs
    )
    assert torch.equal(grad_image, expected)  # the bad box adds nothing (signed zeros included)

    grad_boxes = _unchecked(spec.grad_boxes_call, grads, image, boxes, indices, **kwargs)
    expected = cropcore.crop_and_resize_grad_boxes(
        grads[good], image, boxes[good], indices[good], **kwargs
    )
    assert torch.isnan(grad_boxes[1]).all()
    assert torch.equal(grad_boxes[good], expected)


def test_the_conformance_scale_of_a_reordered_sum_covers_the_good_boxes_only():
    # On a GPU the atomic image gradient reorders sums ("reordered-sums"): the bound is taken over
    # the boxes that add something, and a bad box's NaN row has its own place in the scale.
    from cropcore.registry import registry
    from cropcore_conformance.cases import Context
    from cropcore_conformance.unchecked import unchecked_cases

    ctx = Context(backend=registry.get("torch"), tolerances={"*": "reordered-sums"})
    for op in ("grad_image", "grad_boxes"):
        case = next(
            c for c in unchecked_cases() if c.id == f"unchecked-values/{op}/box-index-negative-nhwc"
        )
        shape = (3, 4) if op == "grad_boxes" else case.kwargs["image_shape"]
        terms, total = case._scale(ctx, shape)
        assert terms > 0
        assert total.shape == tuple(shape)
        assert np.all(np.isfinite(total))
        if op == "grad_boxes":
            assert np.all(total[1] == 0)
            assert np.all(total[[0, 2]] > 0)
