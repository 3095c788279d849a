"""The conversion recipes in docs/differences.md, run as written, against cropcore's own ops.

docs/differences.md shows how to get TensorFlow's ``crop_and_resize`` numbers out of an RoIAlign
(``tf_boxes_to_rois``). torchvision's compiled operators do not load on this project's CPU torch,
but ``cropcore.roi_align`` computes what they compute (held bit-exact to ONNX Runtime's RoiAlign by
the roi-align conformance category), so the recipe is checked here through it: the function is
taken from the page itself, so the page and the test cannot drift apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

import cropcore

torch = pytest.importorskip("torch")

PAGE = Path(__file__).parents[1] / "docs" / "differences.md"


def recipe_function(name: str):
    """The function ``name`` defined in a python block of docs/differences.md, compiled alone."""
    text = PAGE.read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    for block in blocks:
        tree = ast.parse(block)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                namespace = {"torch": torch}
                exec(compile(ast.Module([node], []), str(PAGE), "exec"), namespace)
                return namespace[name]
    raise AssertionError(f"docs/differences.md defines no function {name}")


def test_tf_boxes_to_rois_gives_tensorflows_crops_through_roi_align():
    tf_boxes_to_rois = recipe_function("tf_boxes_to_rois")
    rng = np.random.default_rng(20261203)
    worst = 0.0
    for _ in range(200):
        n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        h, w = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        k = int(rng.integers(1, 5))
        crop = (int(rng.integers(1, 9)), int(rng.integers(1, 9)))
        images = torch.from_numpy(rng.random((n, c, h, w)))
        boxes = torch.from_numpy(rng.random((k, 4)))  # inside [0, 1], flipped ones too
        box_indices = torch.from_numpy(rng.integers(0, n, k))
        rois = tf_boxes_to_rois(boxes, box_indices, (h, w), crop)
        got = cropcore.roi_align(images, rois, crop, 1.0, 1, True, backend="torch")
        expected = cropcore.crop_and_resize(
            images, boxes, box_indices, crop, data_format="channels_first", backend="numpy"
        )
        assert got.shape == expected.shape == (k, c, *crop)
        worst = max(worst, float((got - expected.double()).abs().max()))
    # crop_and_resize's result is float32 (TensorFlow's), roi_align's float64: values in [0, 1)
    # differ by float32 rounding only (the page says 6.3e-7 for torchvision's implementations)
    assert worst < 1e-6


def test_without_the_recipe_roi_align_is_not_crop_and_resize():
    """The recipe is needed: roi_align's defaults on TensorFlow's pixel box give other numbers."""
    rng = np.random.default_rng(7)
    images = torch.from_numpy(rng.random((1, 1, 10, 12)) * 255)
    boxes = torch.tensor([[0.1, 0.2, 0.8, 0.9]], dtype=torch.float64)
    pixel_box = boxes[0] * torch.tensor([9.0, 11.0, 9.0, 11.0], dtype=torch.float64)
    rois = torch.cat([torch.zeros(1), pixel_box[[1, 0, 3, 2]]])[None]
    got = cropcore.roi_align(images, rois, (7, 7), backend="torch")  # aligned=False, adaptive
    expected = cropcore.crop_and_resize(
        images, boxes, [0], (7, 7), data_format="channels_first", backend="numpy"
    )
    assert float((got - expected.double()).abs().max()) > 1.0
