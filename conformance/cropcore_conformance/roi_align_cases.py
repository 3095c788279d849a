"""Category ``roi-align``: roi_align against ONNX Runtime's recorded vectors, and its image
gradient against the reference.

What they pin down: torchvision's and ONNX Runtime's arithmetic (pixel boxes scaled by
``spatial_scale``, the legacy 1-pixel floor without ``aligned``, the half-pixel shift with it,
adaptive and fixed sampling grids, samples within one pixel of the image clamped to its border and
further ones empty, ``mode="max"`` as ONNX Runtime computes it), bit for bit in float32 and
float64; both data formats; float16 computed in float32 and rounded once; and the image gradient
in torchvision's order of additions.

Ids: ``roi-align/roi_align/onnxruntime-<recorded id>[-nhwc]``,
``roi-align/roi_align/<recorded id>-float16``, ``roi-align/roi_align_grad/<recorded id>[-nhwc]``.
The recorded file is ``data/roi_align_onnxruntime.npz`` (``scripts/record_roi_align.py``).
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import numpy as np

from cropcore_conformance.cases import Case, ValueCase

__all__ = ["RECORDED_FILE", "recorded", "roi_align_cases"]

C = "roi-align"
RECORDED_FILE = "roi_align_onnxruntime.npz"


@functools.lru_cache(maxsize=1)
def recorded() -> tuple[dict[str, Any], ...]:
    """The recorded cases: each a dict of its parameters and its arrays (``image``, ``boxes``,
    ``box_indices``, ``expected``)."""
    path = resources.files("cropcore_conformance") / "data" / RECORDED_FILE
    with resources.as_file(path) as file, np.load(file) as data:
        meta = json.loads(str(data["meta"]))
        return tuple(
            {**case, **{key: data[name] for key, name in case["arrays"].items()}}
            for case in meta["cases"]
        )


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _kwargs(case: dict[str, Any], image: np.ndarray, data_format: str) -> dict[str, Any]:
    return {
        "image": image,
        "boxes": case["boxes"],
        "output_size": tuple(case["output_size"]),
        "spatial_scale": case["spatial_scale"],
        "sampling_ratio": case["sampling_ratio"],
        "aligned": case["aligned"],
        "box_indices": case["box_indices"],
        "mode": case["mode"],
        "data_format": data_format,
    }


def roi_align_cases() -> list[Case]:
    cases: list[Case] = []
    rng = np.random.default_rng(20261203)
    for i, case in enumerate(recorded()):
        name, image, expected = case["id"], case["image"], case["expected"]
        cases.append(
            ValueCase(
                id=f"{C}/roi_align/onnxruntime-{name}",
                op="roi_align",
                source="onnxruntime",
                description=f"ONNX Runtime's RoiAlign, recorded ({case['mode']}, "
                f"aligned={case['aligned']}, sampling_ratio={case['sampling_ratio']})",
                kwargs=_kwargs(case, image, "channels_first"),
                expected=expected,
            )
        )
        if i % 4:
            continue  # every fourth case again in NHWC, in float16 and through the gradient
        cases.append(
            ValueCase(
                id=f"{C}/roi_align/onnxruntime-{name}-nhwc",
                op="roi_align",
                source="onnxruntime",
                description="the recorded case with NHWC input and output",
                kwargs=_kwargs(case, _nhwc(image), "channels_last"),
                expected=_nhwc(expected),
            )
        )
        cases.append(
            ValueCase(
                id=f"{C}/roi_align/{name}-float16",
                op="roi_align",
                description="float16: computed in float32, rounded once",
                kwargs=_kwargs(case, image.astype(np.float16), "channels_first"),
            )
        )
        if case["mode"] != "avg":
            continue
        grads = rng.standard_normal(expected.shape).astype(expected.dtype)
        for data_format, suffix in (("channels_first", ""), ("channels_last", "-nhwc")):
            first = data_format == "channels_first"
            kwargs = _kwargs(case, image, data_format)
            del kwargs["image"], kwargs["mode"], kwargs["output_size"]
            kwargs["grads"] = grads if first else _nhwc(grads)
            kwargs["image_shape"] = image.shape if first else _nhwc(image).shape
            cases.append(
                ValueCase(
                    id=f"{C}/roi_align_grad/{name}{suffix}",
                    op="roi_align_grad",
                    description="the image gradient in torchvision's order of additions",
                    kwargs=kwargs,
                )
            )
    return cases
