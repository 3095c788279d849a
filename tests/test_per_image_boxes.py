"""Boxes given as a list of per-image arrays (torchvision's form): the image index of each box is
its array's position, for every op of the crop_and_resize family, on every library."""

from __future__ import annotations

import numpy as np
import pytest

import cropcore


def _case():
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, 7, 8, 2)).astype(np.float32)
    per_image = [rng.uniform(-0.2, 1.2, (n, 4)).astype(np.float32) for n in (2, 0, 3)]
    return image, per_image, np.concatenate(per_image), np.array([0, 0, 2, 2, 2], np.int32)


def test_every_op_takes_a_list_of_per_image_boxes():
    image, per_image, flat, indices = _case()
    forward = cropcore.crop_and_resize(image, per_image, None, (3, 4))
    np.testing.assert_array_equal(forward, cropcore.crop_and_resize(image, flat, indices, (3, 4)))
    grads = np.random.default_rng(1).standard_normal(forward.shape).astype(np.float32)
    np.testing.assert_array_equal(
        cropcore.crop_and_resize_grad_image(grads, per_image, None, image.shape),
        cropcore.crop_and_resize_grad_image(grads, flat, indices, image.shape),
    )
    np.testing.assert_array_equal(
        cropcore.crop_and_resize_grad_boxes(grads, image, per_image, None),
        cropcore.crop_and_resize_grad_boxes(grads, image, flat, indices),
    )


def test_a_list_of_torch_tensors():
    torch = pytest.importorskip("torch")
    image, per_image, flat, indices = _case()
    got = cropcore.crop_and_resize(
        torch.from_numpy(image), [torch.from_numpy(b) for b in per_image], None, (3, 4)
    )
    assert isinstance(got, torch.Tensor)
    np.testing.assert_array_equal(
        got.numpy(), cropcore.crop_and_resize(image, flat, indices, (3, 4))
    )


def test_bad_lists_are_refused():
    image, per_image, _, _ = _case()
    with pytest.raises(ValueError, match="box_indices must be None when boxes is a list"):
        cropcore.crop_and_resize(image, per_image, [0, 0, 2, 2, 2], (3, 4))
    with pytest.raises(ValueError, match=r"boxes\[1\] must have shape \(L, 4\)"):
        cropcore.crop_and_resize(image, [per_image[0], np.zeros((2, 3))], None, (3, 4))
    with pytest.raises(TypeError, match="box_indices must be an array of image indices, got None"):
        cropcore.crop_and_resize(image, np.concatenate(per_image), None, (3, 4))
    with pytest.raises(IndexError, match="box_indices must be in"):  # four lists, three images
        cropcore.crop_and_resize(image, [*per_image, per_image[0]], None, (3, 4))
