"""Category ``tf-tests``, the gradients: TensorFlow's gradient unit tests carried over as checks
that run the backend (see :mod:`cropcore_conformance.tf_unit_tests` for the category).

- ``image_grad_test_base.py`` ``testGradRandomBoxes``: the analytic Jacobians of both gradient
  ops against numeric ones of the forward op, within TensorFlow's bound;
- ``image_grad_d9m_test.py``: recomputing a gradient gives the same bits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cropcore_conformance.cases import Case, Context, FailCase, FunctionCase, Outcome, check_result
from cropcore_conformance.inputs import materialize

__all__ = ["d9m_cases", "grad_random_boxes_cases"]

C = "tf-tests"


def _random_boxes(
    rng: np.random.RandomState,
    num_boxes: int,
    height: int,
    width: int,
    crop: tuple[int, int],
    radius: float,
) -> np.ndarray:
    """TF's testGradRandomBoxes boxes: uniform in [-0.5, 1.5], away from the grid anchors.

    TF keeps the box edges ``radius`` away from ``linspace(0, 1, size)``; here every sample
    coordinate is (a stricter rule, so that no finite difference crosses a pixel or the image edge).
    """

    def samples(a: float, b: float, size: int, n: int) -> np.ndarray:
        return np.array([0.5 * (a + b)]) if n == 1 else np.linspace(a, b, n)

    out = []
    while len(out) < num_boxes:
        y1, x1, y2, x2 = rng.uniform(-0.5, 1.5, size=4)
        ok = True
        for a, b, size, n in ((y1, y2, height, crop[0]), (x1, x2, width, crop[1])):
            anchors = np.linspace(0, 1, size)
            for s in samples(a, b, size, n):
                if np.min(np.abs(anchors - s)) < radius * 2:
                    ok = False
        if ok:
            out.append([y1, x1, y2, x2])
    return np.asarray(out, np.float32)


def grad_random_boxes_cases() -> list[Case]:
    """image_grad_test_base.py testGradRandomBoxes: analytic against numeric Jacobians."""
    cases: list[Case] = []
    delta, radius, height = 1e-3, 2e-3, 4
    for width in (1, 2):
        for crop_height in (1, 2):
            for crop_width in (2, 3):
                for depth in (1, 2):
                    for num_boxes in (1, 2):
                        config = (width, crop_height, crop_width, depth, num_boxes)
                        name = "test-grad-random-boxes-w{}-ch{}-cw{}-d{}-n{}".format(*config)
                        cases.append(
                            FunctionCase(
                                f"{C}/grad_image/{name}",
                                "grad_image",
                                check=_jacobian_check(height, *config, delta, radius),
                                ops=("forward", "grad_image", "grad_boxes"),
                                source="tensorflow-test",
                                description="image_grad_test_base.py testGradRandomBoxes: "
                                "max |analytic - numeric Jacobian| < 2e-3",
                            )
                        )
    return cases


def _jacobian_check(height, width, crop_height, crop_width, depth, num_boxes, delta, radius):
    def check(ctx: Context) -> Outcome:
        rng = np.random.RandomState(1)
        batch = num_boxes
        shape = (batch, height, width, depth)
        image = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
        boxes = _random_boxes(rng, num_boxes, height, width, (crop_height, crop_width), radius)
        box_indices = np.arange(batch, dtype=np.int32)
        crop = (crop_height, crop_width)

        def forward(img: np.ndarray, bxs: np.ndarray) -> np.ndarray:
            args = {"image": img, "boxes": bxs, "box_indices": box_indices, "crop_size": crop}
            inputs = ctx.prepare(args)
            return check_result("forward", ctx.run_backend("forward", inputs), inputs).ravel()

        out_size = num_boxes * crop_height * crop_width * depth
        analytic_image = np.zeros((out_size, image.size))
        analytic_boxes = np.zeros((out_size, boxes.size))
        for k in range(out_size):
            grads = np.zeros(out_size, np.float32)
            grads[k] = 1
            grads = grads.reshape(num_boxes, crop_height, crop_width, depth)
            args = {
                "grads": grads,
                "boxes": boxes,
                "box_indices": box_indices,
                "image_shape": shape,
            }
            inputs = ctx.prepare(args)
            analytic_image[k] = check_result(
                "grad_image", ctx.run_backend("grad_image", inputs), inputs
            ).ravel()
            args = {"grads": grads, "image": image, "boxes": boxes, "box_indices": box_indices}
            inputs = ctx.prepare(args)
            analytic_boxes[k] = check_result(
                "grad_boxes", ctx.run_backend("grad_boxes", inputs), inputs
            ).ravel()
        numeric_image = np.zeros_like(analytic_image)
        for i in range(image.size):
            plus, minus = image.copy(), image.copy()
            plus.reshape(-1)[i] += delta
            minus.reshape(-1)[i] -= delta
            numeric_image[:, i] = (forward(plus, boxes) - forward(minus, boxes)) / (2 * delta)
        numeric_boxes = np.zeros_like(analytic_boxes)
        for i in range(boxes.size):
            plus, minus = boxes.copy(), boxes.copy()
            plus.reshape(-1)[i] += np.float32(delta)
            minus.reshape(-1)[i] -= np.float32(delta)
            numeric_boxes[:, i] = (forward(image, plus) - forward(image, minus)) / (2 * delta)
        error = max(
            np.max(np.abs(analytic_image - numeric_image), initial=0),
            np.max(np.abs(analytic_boxes - numeric_boxes), initial=0),
        )
        if not error < 2e-3:
            raise FailCase(
                f"max |analytic - numeric Jacobian| = {error:.3g}, TensorFlow's bound is 2e-3"
            )
        return Outcome.passed()

    return check


def d9m_cases() -> list[Case]:
    """image_grad_d9m_test.py: recomputing a gradient gives the same bits (force_cpu)."""
    rng = np.random.RandomState(456)
    image = rng.uniform(-1, 1, size=(16, 64, 64, 1))
    boxes = rng.uniform(0, 1.01, size=(64, 4)).astype(np.float32)
    box_indices = rng.randint(0, 16, size=64).astype(np.int32)
    grads = rng.uniform(-0.001, 0.001, size=(64, 128, 128, 1)).astype(np.float32)
    cases: list[Case] = []
    for dtype in ("float16", "float32", "float64"):
        grad_image = {
            "grads": grads,
            "boxes": boxes,
            "box_indices": box_indices,
            "image_shape": image.shape,
            "dtype": dtype,
        }
        grad_boxes = {
            "grads": grads,
            "image": image.astype(dtype),
            "boxes": boxes,
            "box_indices": box_indices,
        }
        for op, test, kwargs in (
            ("grad_image", "test-reproducible-backprop-to-image", grad_image),
            ("grad_boxes", "test-reproducible-backprop-to-boxes", grad_boxes),
        ):
            cases.append(
                FunctionCase(
                    f"{C}/{op}/{test}-{dtype}",
                    op,
                    check=_repeat(op, kwargs),
                    source="tensorflow-test",
                    description=f"image_grad_d9m_test.py {test} ({dtype})",
                )
            )
    return cases


def _repeat(op: str, kwargs: dict[str, Any], times: int = 2):
    def check(ctx: Context) -> Outcome:
        results = []
        for _ in range(times):
            inputs = ctx.prepare(materialize(kwargs))
            results.append(check_result(op, ctx.run_backend(op, inputs), inputs).tobytes())
        if len(set(results)) != 1:
            raise FailCase(f"{times} identical calls gave {len(set(results))} different results")
        return Outcome.passed()

    return check
