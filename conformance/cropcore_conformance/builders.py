"""Small helpers that the hand-written categories share: deterministic inputs and case expansion.

Inputs are made from fixed seeds, so a case id always means the same arrays; the expected values
of hand-written cases come from the reference backend at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from cropcore.spec import METHODS
from cropcore_conformance.cases import Case, ErrorCase, ValueCase
from cropcore_conformance.inputs import Laid

__all__ = [
    "boxes",
    "error",
    "forward",
    "grad_boxes",
    "grad_image",
    "image",
    "nchw",
]


def rng(*key: int | str) -> np.random.Generator:
    """A generator seeded by a readable key, so each case's inputs are fixed."""
    seed = [ord(c) for c in "".join(str(k) for k in key)]
    return np.random.default_rng([2024, *seed])


def image(dtype: str, shape: tuple[int, ...], *key: Any, full_range: bool = True) -> np.ndarray:
    """Deterministic pixel values exercising ``dtype``: full integer ranges (int64 beyond 2**24),
    float64 detail that float32 cannot hold."""
    r = rng("image", dtype, *shape, *key)
    dt = np.dtype(dtype)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        if not full_range:
            return r.integers(max(info.min, -100), min(info.max, 100), size=shape, dtype=dt)
        if dt == np.int64:
            big = r.integers(-(2**62), 2**62, size=shape, dtype=np.int64)
            return np.where(r.random(shape) < 0.5, big, r.integers(-1000, 1000, size=shape))
        return r.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    values = r.standard_normal(shape) * 100
    if dt == np.float64:
        values = values + r.standard_normal(shape) * 1e-9
    return values.astype(dt)


def boxes(
    n: int, height: int, width: int, *key: Any, low: float = -0.4, high: float = 1.4
) -> np.ndarray:
    """``n`` float32 boxes in ``[low, high]``, about half flipped, a quarter of the coordinates on
    pixel-grid anchors (floor == ceil) and some exactly 0 or 1."""
    r = rng("boxes", n, height, width, *key)
    out = r.uniform(low, high, size=(n, 4))
    for index in np.ndindex(n, 4):
        size = height if index[1] % 2 == 0 else width
        u = r.random()
        if u < 0.25 and size > 1:
            out[index] = r.integers(0, size) / (size - 1)
        elif u < 0.35:
            out[index] = float(r.integers(0, 2))
    return out.astype(np.float32)


def as_boxes(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).reshape(-1, 4)


def nchw(a: Any) -> Any:
    """An NHWC array (or :class:`Laid` array) as NCHW (contiguous)."""
    if isinstance(a, Laid):
        return Laid(nchw(a.values), a.layout)
    return np.ascontiguousarray(np.moveaxis(np.asarray(a), 3, 1))


def _suffix(method: str | None, data_format: str) -> str:
    parts = [method] if method else []
    if data_format == "channels_first":
        parts.append("nchw")
    return "".join(f"-{p}" for p in parts)


def forward(
    category: str,
    name: str,
    image_values: Any,
    box_values: Any,
    box_indices: Any = None,
    crop_size: Any = (3, 3),
    *,
    methods: Iterable[str] = METHODS,
    formats: Iterable[str] = ("channels_last",),
    extrapolation_value: Any = 0.0,
    description: str = "",
    keep_boxes: bool = False,
    **extra: Any,
) -> list[Case]:
    """crop_and_resize cases, one per method and data format (ids ``<name>-<method>[-nchw]``).

    ``box_values`` become a float32 ``(n, 4)`` array unless ``keep_boxes`` (to pass them as given).
    """
    if box_indices is None:
        n = (
            len(as_boxes(box_values))
            if not isinstance(box_values, Laid)
            else len(box_values.values)
        )
        box_indices = np.zeros(n, np.int32)
    b = box_values if keep_boxes or isinstance(box_values, Laid) else as_boxes(box_values)
    out: list[Case] = []
    for data_format in formats:
        for method in methods:
            img = nchw(image_values) if data_format == "channels_first" else image_values
            kwargs = {
                "image": img,
                "boxes": b,
                "box_indices": box_indices,
                "crop_size": crop_size,
                "method": method,
                "extrapolation_value": extrapolation_value,
                "data_format": data_format,
                **extra,
            }
            out.append(
                ValueCase(
                    f"{category}/forward/{name}{_suffix(method, data_format)}",
                    "forward",
                    kwargs=kwargs,
                    description=description,
                )
            )
    return out


def grad_image(
    category: str,
    name: str,
    grads: Any,
    box_values: Any,
    box_indices: Any,
    image_shape: tuple[int, int, int, int],
    *,
    methods: Iterable[str] = METHODS,
    dtypes: Iterable[str] = ("float32",),
    formats: Iterable[str] = ("channels_last",),
    description: str = "",
) -> list[Case]:
    """crop_and_resize_grad_image cases (ids ``<name>-<method>[-<dtype>][-nchw]``).

    ``image_shape`` is NHWC; the dtype joins the id when more than one is given.
    """
    dtypes = tuple(dtypes)
    out: list[Case] = []
    b = box_values if isinstance(box_values, Laid) else as_boxes(box_values)
    for data_format in formats:
        for method in methods:
            for dtype in dtypes:
                batch, height, width, depth = image_shape
                shape = (
                    (batch, depth, height, width)
                    if data_format == "channels_first"
                    else image_shape
                )
                tag = f"-{dtype}" if len(dtypes) > 1 else ""
                kwargs = {
                    "grads": nchw(grads) if data_format == "channels_first" else grads,
                    "boxes": b,
                    "box_indices": np.asarray(box_indices, np.int32),
                    "image_shape": tuple(int(v) for v in shape),
                    "method": method,
                    "data_format": data_format,
                    "dtype": dtype,
                }
                out.append(
                    ValueCase(
                        f"{category}/grad_image/{name}-{method}{tag}{_suffix(None, data_format)}",
                        "grad_image",
                        kwargs=kwargs,
                        description=description,
                    )
                )
    return out


def grad_boxes(
    category: str,
    name: str,
    grads: Any,
    image_values: Any,
    box_values: Any,
    box_indices: Any,
    *,
    formats: Iterable[str] = ("channels_last",),
    description: str = "",
) -> list[Case]:
    """crop_and_resize_grad_boxes cases (ids ``<name>[-nchw]``)."""
    out: list[Case] = []
    b = box_values if isinstance(box_values, Laid) else as_boxes(box_values)
    for data_format in formats:
        first = data_format == "channels_first"
        kwargs = {
            "grads": nchw(grads) if first else grads,
            "image": nchw(image_values) if first else image_values,
            "boxes": b,
            "box_indices": np.asarray(box_indices, np.int32)
            if not isinstance(box_indices, Laid)
            else box_indices,
            "data_format": data_format,
        }
        out.append(
            ValueCase(
                f"{category}/grad_boxes/{name}{_suffix(None, data_format)}",
                "grad_boxes",
                kwargs=kwargs,
                description=description,
            )
        )
    return out


def error(op: str, name: str, description: str = "", **kwargs: Any) -> ErrorCase:
    """An ``errors/<op>/<name>`` case: the reference's exception type is expected."""
    return ErrorCase(f"errors/{op}/{name}", op, kwargs=kwargs, description=description)


def random_grads(n: int, crop: tuple[int, int], depth: int, *key: Any) -> np.ndarray:
    return (rng("grads", n, *crop, depth, *key).standard_normal((n, *crop, depth)) * 3).astype(
        np.float32
    )
