"""Category ``round-trips``: the result comes back in the image's array library and on its device.

Whichever library the backend computes in, ``numpy`` in gives ``numpy`` out, a torch CPU tensor
gives a torch CPU tensor, a torch CUDA tensor a tensor on the same CUDA device, a CuPy array a CuPy
array; the values must still be the reference's. Cases for a library or device missing here are
skipped. Also: two results never share memory (a backend must not hand out a reused buffer), and a
backend that declares autograd gives TensorFlow's gradients through torch's autograd. Ids:
``round-trips/<op>/<library>-<device>[-<variant>]``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cropcore_conformance.builders import boxes, image, random_grads
from cropcore_conformance.cases import (
    Case,
    Context,
    FailCase,
    FunctionCase,
    Outcome,
    RoundTripCase,
    SkipCase,
    check_result,
    sum_scale,
)
from cropcore_conformance.compare import compare_arrays
from cropcore_conformance.inputs import library_available, materialize, to_library, to_numpy

__all__ = ["round_trip_cases"]

C = "round-trips"
PLACES = (("numpy", "cpu"), ("torch", "cpu"), ("torch", "cuda"), ("cupy", "cuda"))


def _kwargs() -> dict[str, dict[str, Any]]:
    img = image("float32", (2, 5, 6, 3), "rt")
    b = boxes(4, 5, 6, "rt")
    indices = np.array([1, 0, 1, 0], np.int32)
    grads = random_grads(4, (3, 4), 3, "rt")
    return {
        "forward": {
            "image": img,
            "boxes": b,
            "box_indices": indices,
            "crop_size": (3, 4),
            "extrapolation_value": -1.0,
        },
        "grad_image": {
            "grads": grads,
            "boxes": b,
            "box_indices": indices,
            "image_shape": (2, 5, 6, 3),
        },
        "grad_boxes": {"grads": grads, "image": img, "boxes": b, "box_indices": indices},
        "crop2d": {"x": img, "cropping": ((1, 2), (2, 1))},
    }


def _place(library: str, device: str) -> str:
    return library if library == "numpy" else f"{library}-{device}"


def _independent_results(op: str, kwargs: dict[str, Any], other: dict[str, Any]) -> FunctionCase:
    def check(ctx: Context) -> Outcome:
        inputs = ctx.prepare(materialize(kwargs))
        first = ctx.run_backend(op, inputs)
        kept = to_numpy(first).copy()
        second = ctx.run_backend(op, ctx.prepare(materialize(other)))
        if to_numpy(first).tobytes() != kept.tobytes():
            raise FailCase("a second call changed the result of the first (a reused output buffer)")
        if isinstance(first, np.ndarray) and isinstance(second, np.ndarray):
            if np.shares_memory(first, second):
                raise FailCase("two calls returned arrays that share memory")
            for name, value in inputs.items():
                if isinstance(value, np.ndarray) and np.shares_memory(first, value):
                    raise FailCase(f"the result shares memory with the input {name!r}")
        return Outcome.passed()

    return FunctionCase(
        f"{C}/{op}/results-are-independent",
        op,
        check=check,
        description="results of two calls do not share memory with each other or with the inputs",
    )


def _autograd(device: str) -> FunctionCase:
    """Gradients through torch's autograd equal the reference's gradient ops."""
    kwargs = _kwargs()["forward"]

    def check(ctx: Context) -> Outcome:
        info = ctx.backend.info
        if info is None or not info.autograd:
            raise SkipCase("the backend does not declare autograd support")
        why = library_available("torch", device)
        if why:
            raise SkipCase(why)
        import torch

        inputs = materialize(kwargs)
        image_t = to_library(inputs["image"], "torch", device).requires_grad_(True)
        boxes_t = to_library(inputs["boxes"], "torch", device).requires_grad_(True)
        weights = random_grads(4, (3, 4), 3, "rt-autograd")
        crops = ctx.run_backend("forward", {**inputs, "image": image_t, "boxes": boxes_t})
        check_result("forward", crops, {"image": image_t})
        (crops * torch.from_numpy(weights).to(crops.device)).sum().backward()
        if image_t.grad is None or boxes_t.grad is None:
            raise FailCase("autograd gave no gradient for the image or the boxes")
        image_args = {
            "grads": weights,
            "boxes": inputs["boxes"],
            "box_indices": inputs["box_indices"],
            "image_shape": inputs["image"].shape,
        }
        boxes_args = {
            "grads": weights,
            "image": inputs["image"],
            "boxes": inputs["boxes"],
            "box_indices": inputs["box_indices"],
        }
        expected_image = ctx.reference_result("grad_image", image_args)
        expected_boxes = ctx.reference_result("grad_boxes", boxes_args)
        outcome = Outcome.passed()
        tolerance = ctx.tolerance_for(f"{C}/forward/torch-{device}-autograd")
        outcome.tolerance = tolerance.name
        sums = tolerance.name == "reordered-sums"
        image_scale = sum_scale("grad_image", image_args, ctx) if sums else None
        boxes_scale = sum_scale("grad_boxes", boxes_args, ctx) if sums else None
        outcome.add(compare_arrays(to_numpy(image_t.grad), expected_image, tolerance, image_scale))
        outcome.add(compare_arrays(to_numpy(boxes_t.grad), expected_boxes, tolerance, boxes_scale))
        return outcome

    return FunctionCase(
        f"{C}/forward/torch-{device}-autograd",
        "forward",
        check=check,
        ops=("forward",),
        description="torch autograd gradients equal CropAndResizeGrad{Image,Boxes}",
    )


def round_trip_cases() -> list[Case]:
    """Every case of the ``round-trips`` category."""
    cases: list[Case] = []
    base = _kwargs()
    for op, kwargs in base.items():
        for library, device in PLACES:
            cases.append(
                RoundTripCase(
                    f"{C}/{op}/{_place(library, device)}",
                    op,
                    kwargs=kwargs,
                    library=library,
                    device=device,
                )
            )
    for library, device in PLACES[1:]:
        place = _place(library, device)
        forward = base["forward"]
        cases.append(
            RoundTripCase(
                f"{C}/forward/{place}-image-only",
                "forward",
                kwargs=forward,
                library=library,
                device=device,
                arrays=("image",),
            )
        )
        cases.append(
            RoundTripCase(
                f"{C}/forward/{place}-boxes-only",
                "forward",
                kwargs=forward,
                library=library,
                device=device,
                arrays=("boxes", "box_indices"),
            )
        )
        cases.append(
            RoundTripCase(
                f"{C}/grad_boxes/{place}-image-only",
                "grad_boxes",
                kwargs=base["grad_boxes"],
                library=library,
                device=device,
                arrays=("image",),
            )
        )
        for dtype in ("uint8", "int64", "float16", "float64"):
            cases.append(
                RoundTripCase(
                    f"{C}/forward/{place}-{dtype}",
                    "forward",
                    kwargs={**forward, "image": image(dtype, (2, 5, 6, 3), "rt")},
                    library=library,
                    device=device,
                )
            )
        for dtype in ("float16", "float64"):
            cases.append(
                RoundTripCase(
                    f"{C}/grad_image/{place}-{dtype}",
                    "grad_image",
                    kwargs={**base["grad_image"], "dtype": dtype},
                    library=library,
                    device=device,
                )
            )
        cases.append(
            RoundTripCase(
                f"{C}/crop2d/{place}-bool",
                "crop2d",
                kwargs={**base["crop2d"], "x": base["crop2d"]["x"] > 0},
                library=library,
                device=device,
            )
        )
        cases.append(
            RoundTripCase(
                f"{C}/forward/{place}-nchw",
                "forward",
                kwargs={
                    **forward,
                    "image": np.ascontiguousarray(np.moveaxis(forward["image"], 3, 1)),
                    "data_format": "channels_first",
                },
                library=library,
                device=device,
            )
        )
    other = {
        "forward": {**base["forward"], "boxes": boxes(4, 5, 6, "rt-other")},
        "grad_image": {**base["grad_image"], "grads": random_grads(4, (3, 4), 3, "rt-other")},
        "grad_boxes": {**base["grad_boxes"], "grads": random_grads(4, (3, 4), 3, "rt-other")},
    }
    for op, kwargs in other.items():
        cases.append(_independent_results(op, base[op], kwargs))
    cases += [_autograd("cpu"), _autograd("cuda")]
    return cases
