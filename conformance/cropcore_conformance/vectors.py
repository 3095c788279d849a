"""Category ``tf-vectors``: inputs and outputs recorded from TensorFlow and Keras 3.

The vectors are recorded by ``scripts/record_reference.py`` (TensorFlow 2.21 CPU, one thread, so
that gradient sums are in TensorFlow's sequential order) straight into this package's
``data/tf_reference.npz`` (:data:`DATA_PATH`), the one copy: cropcore's own tests read it from
here too. File layout (:data:`FORMAT_VERSION`): key ``meta`` is a JSON document whose ``cases`` list has, per case, its ``id`` (``"<op>/<name>"``), ``op``, scalar
parameters and the names of its arrays; each array is stored under ``"<id>/<array name>"``.

Recorded ops become cases as follows (TensorFlow has only NHWC; each NHWC vector is also run in
NCHW, transposed, since the layout must not change a single bit):

=================  ==================================================  ============
recorded op        case ids                                             expected
=================  ==================================================  ============
crop_and_resize    ``tf-vectors/forward/<name>[-nchw]``                TF's output
grad_image         ``tf-vectors/grad_image/<name>[-nchw]``             TF's output
grad_boxes         ``tf-vectors/grad_boxes/<name>[-nchw]``             TF's output
crop2d             ``tf-vectors/crop2d/<name>``                        Keras's output
error              ``errors/<op>/tf-<name>``                           reference's exception
crop2d_error       ``errors/crop2d/keras-<name>``                      reference's exception
=================  ==================================================  ============
"""

from __future__ import annotations

import ast
import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from cropcore_conformance.cases import Case, ErrorCase, ValueCase

__all__ = ["DATA_FILE", "DATA_PATH", "FORMAT_VERSION", "load", "provenance", "recorded_cases"]

#: The recorded vectors shipped with the package.
DATA_FILE = "tf_reference.npz"
#: Where they are installed (the recorder writes here; cropcore's tests read from here).
DATA_PATH = Path(str(resources.files("cropcore_conformance") / "data" / DATA_FILE))
#: The file layout this module reads (``meta["format_version"]``); the recorder writes it.
FORMAT_VERSION = 1

_OP_NAMES = {"crop_and_resize": "forward", "grad_image": "grad_image", "grad_boxes": "grad_boxes"}


@functools.lru_cache(maxsize=2)
def load(path: str | None = None) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(meta, arrays)`` of the recorded vectors; ``({}, {})`` when none are installed."""
    file = Path(path) if path else DATA_PATH
    if not file.is_file():
        return {}, {}
    with np.load(file, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    meta = json.loads(str(arrays.pop("meta")))
    return meta, arrays


def provenance() -> str:
    """Where the recorded vectors come from, in a line (for the report)."""
    meta, _ = load()
    if not meta:
        return "no recorded vectors installed (cropcore_conformance/data/tf_reference.npz)"
    versions = meta.get("versions", {})
    return (
        f"TensorFlow {versions.get('tensorflow', '?')} (CPU, 1 thread) and Keras "
        f"{versions.get('keras', '?')}, recorded by scripts/record_reference.py "
        f"(seed {meta.get('seed', '?')})"
    )


def _nchw(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(a, 3, 1))


def _shape_nchw(shape: list[int]) -> list[int]:
    batch, height, width, depth = shape
    return [batch, depth, height, width]


def recorded_cases(path: str | None = None) -> list[Case]:
    """The cases of the recorded file: ``tf-vectors`` values and recorded ``errors``."""
    meta, arrays = load(path)
    cases: list[Case] = []
    for entry in meta.get("cases", []):
        case_arrays = {name: arrays[f"{entry['id']}/{name}"] for name in entry["arrays"]}
        builder = _BUILDERS.get(entry["op"])
        if builder is not None:
            cases.extend(builder(entry, case_arrays))
    return cases


def _forward(entry: dict[str, Any], a: dict[str, np.ndarray]) -> list[Case]:
    common = {
        "boxes": a["boxes"],
        "box_indices": a["box_indices"],
        "crop_size": tuple(entry["crop_size"]),
        "method": entry["method"],
        "extrapolation_value": entry["extrapolation_value"],
    }
    name = f"tf-vectors/forward/{entry['name']}"
    return [
        ValueCase(
            name,
            "forward",
            "tensorflow",
            kwargs={"image": a["image"], **common},
            expected=a["crops"],
        ),
        ValueCase(
            f"{name}-nchw",
            "forward",
            "tensorflow",
            kwargs={"image": _nchw(a["image"]), **common, "data_format": "channels_first"},
            expected=_nchw(a["crops"]),
        ),
    ]


def _grad_image(entry: dict[str, Any], a: dict[str, np.ndarray]) -> list[Case]:
    common = {
        "boxes": a["boxes"],
        "box_indices": a["box_indices"],
        "method": entry["method"],
        "dtype": entry["dtype"],
    }
    name = f"tf-vectors/grad_image/{entry['name']}"
    return [
        ValueCase(
            name,
            "grad_image",
            "tensorflow",
            kwargs={"grads": a["grads"], "image_shape": tuple(entry["image_shape"]), **common},
            expected=a["grads_image"],
        ),
        ValueCase(
            f"{name}-nchw",
            "grad_image",
            "tensorflow",
            kwargs={
                "grads": _nchw(a["grads"]),
                "image_shape": tuple(_shape_nchw(entry["image_shape"])),
                **common,
                "data_format": "channels_first",
            },
            expected=_nchw(a["grads_image"]),
        ),
    ]


def _grad_boxes(entry: dict[str, Any], a: dict[str, np.ndarray]) -> list[Case]:
    common = {"boxes": a["boxes"], "box_indices": a["box_indices"]}
    name = f"tf-vectors/grad_boxes/{entry['name']}"
    return [
        ValueCase(
            name,
            "grad_boxes",
            "tensorflow",
            kwargs={"grads": a["grads"], "image": a["image"], **common},
            expected=a["grads_boxes"],
        ),
        ValueCase(
            f"{name}-nchw",
            "grad_boxes",
            "tensorflow",
            kwargs={
                "grads": _nchw(a["grads"]),
                "image": _nchw(a["image"]),
                **common,
                "data_format": "channels_first",
            },
            expected=a["grads_boxes"],
        ),
    ]


def _cropping(entry: dict[str, Any]) -> dict[str, Any]:
    text = entry.get("cropping")
    if text is None:
        return {}
    value = ast.literal_eval(text)
    if entry.get("cropping_numpy_int"):
        value = np.int64(value)
    return {"cropping": value}


def _crop2d(entry: dict[str, Any], a: dict[str, np.ndarray]) -> list[Case]:
    x, output = a["x"], a["output"]
    kwargs = {"x": x, **_cropping(entry), "data_format": entry.get("data_format")}
    if output.dtype != x.dtype:
        # Keras autocasts float inputs to its float32 policy; cropcore keeps the input dtype
        # (design.md). The values are still Keras's: compare them cast the same way.
        return [
            ValueCase(
                f"tf-vectors/crop2d/{entry['name']}",
                "crop2d",
                "keras",
                kwargs=kwargs,
                expected=output,
                compare_dtype=str(x.dtype),
            )
        ]
    return [
        ValueCase(
            f"tf-vectors/crop2d/{entry['name']}", "crop2d", "keras", kwargs=kwargs, expected=output
        )
    ]


def _error(entry: dict[str, Any], a: dict[str, np.ndarray]) -> list[Case]:
    target = entry.get("target", "crop_and_resize")
    op = _OP_NAMES[target]
    name = entry["name"].removeprefix(f"{target}-")
    kwargs: dict[str, Any] = dict(a)
    if op == "forward":
        kwargs.setdefault("crop_size", entry.get("crop_size"))
        kwargs["method"] = entry.get("method", "bilinear")
        kwargs["extrapolation_value"] = entry.get("extrapolation_value", 0.0)
    elif op == "grad_image":
        kwargs["method"] = entry.get("method", "bilinear")
        kwargs["dtype"] = entry.get("dtype", "float32")
    else:
        kwargs["method"] = entry.get("method", "bilinear")
    return [
        ErrorCase(
            f"errors/{op}/tf-{name}",
            op,
            "tensorflow",
            kwargs=kwargs,
            description=f"TensorFlow raises {entry.get('tf_error', '?')}: "
            f"{entry.get('tf_message', '')}",
        )
    ]


#: Refusals of Keras that cropcore, by a documented choice, does not copy: these inputs must be
#: computed as the reference computes them.
KERAS_DEVIATIONS = {
    "numpy-int64-scalar": "Keras refuses NumPy integer scalars; cropcore takes any integer "
    "(cropcore.spec.cropping_arg)",
}


def _crop2d_error(entry: dict[str, Any], a: dict[str, np.ndarray]) -> list[Case]:
    kwargs = {"x": a["x"], **_cropping(entry), "data_format": entry.get("data_format")}
    if entry["name"] in KERAS_DEVIATIONS:
        return [
            ValueCase(
                f"errors/crop2d/keras-{entry['name']}",
                "crop2d",
                "reference",
                kwargs=kwargs,
                description=KERAS_DEVIATIONS[entry["name"]],
            )
        ]
    return [
        ErrorCase(
            f"errors/crop2d/keras-{entry['name']}",
            "crop2d",
            "keras",
            kwargs=kwargs,
            description=f"Keras raises {entry.get('keras_error', '?')}: "
            f"{entry.get('keras_message', '')}",
        )
    ]


_BUILDERS = {
    "crop_and_resize": _forward,
    "grad_image": _grad_image,
    "grad_boxes": _grad_boxes,
    "crop2d": _crop2d,
    "error": _error,
    "crop2d_error": _crop2d_error,
}
