"""A small typed program using every public name of cropcore_torch and cropcore's functions.

tests/test_torch_typing.py runs mypy on it (it must be clean) and on copies with mistakes (mypy
must report them): the public names have real signatures, not ``Any``.
"""

from __future__ import annotations

import torch

import cropcore
import cropcore_torch

image = torch.rand(2, 3, 16, 16)
boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.1, 0.2, 0.8, 0.9]])
box_indices = torch.tensor([0, 1])

crops = cropcore_torch.crop_and_resize(
    image, boxes, box_indices, 7, data_format="channels_first", validate=False
)
grad_image = cropcore_torch.crop_and_resize_grad_image(
    crops, boxes, box_indices, (2, 3, 16, 16), data_format="channels_first", dtype="float32"
)
grad_boxes = cropcore_torch.crop_and_resize_grad_boxes(
    crops, image, boxes, box_indices, data_format="channels_first"
)
trimmed = cropcore_torch.crop2d(image, ((1, 1), (2, 2)), "channels_first")
layer = cropcore_torch.CropAndResize((7, 7), boxes=boxes, data_format="channels_first")
cropping = cropcore_torch.Cropping2D(1, data_format="channels_first")
model = torch.nn.Sequential(cropping, layer)
same = cropcore.crop_and_resize(image, boxes, box_indices, (7, 7), data_format="channels_first")
