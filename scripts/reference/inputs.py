"""Random inputs for the recorded cases: each draws from the generator it is given, in a fixed
order (the recorded bytes depend on it)."""

from __future__ import annotations

from typing import Any

import numpy as np

NAN = float("nan")
INF = float("inf")


def random_image(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """Values that exercise each dtype: full integer ranges, int64 beyond float32's exact integers,
    float64 detail that float32 cannot hold."""
    dt = np.dtype(dtype)
    if dt == np.int64:
        big = rng.integers(-(2**62), 2**62, size=shape, dtype=np.int64)
        small = rng.integers(-1000, 1000, size=shape, dtype=np.int64)
        return np.where(rng.random(shape) < 0.5, big, small)
    if dt.kind in "iu":
        info = np.iinfo(dt)
        return rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
    values = rng.standard_normal(shape) * 100
    if dt == np.float64:
        values = values + rng.standard_normal(shape) * 1e-9
    return values.astype(dt)


def random_boxes(rng: np.random.Generator, n: int, height: int, width: int) -> np.ndarray:
    """Boxes in [-0.4, 1.4], flipped about half the time, with a quarter of the coordinates on
    pixel-grid anchors (integer sample positions: floor == ceil) and some exactly 0 or 1."""
    boxes = rng.uniform(-0.4, 1.4, size=(n, 4))
    for index in np.ndindex(n, 4):
        size = height if index[1] % 2 == 0 else width
        u = rng.random()
        if u < 0.25 and size > 1:
            boxes[index] = rng.integers(0, size) / (size - 1)
        elif u < 0.35:
            boxes[index] = float(rng.integers(0, 2))
    return boxes.astype(np.float32)


def random_shape(rng: np.random.Generator) -> dict[str, Any]:
    return {
        "batch": int(rng.integers(1, 4)),
        "height": int(rng.integers(1, 10)),
        "width": int(rng.integers(1, 10)),
        "depth": int(rng.integers(1, 4)),
        "num_boxes": int(rng.integers(1, 5)),
        "crop": (int(rng.integers(1, 7)), int(rng.integers(1, 7))),
    }


def random_grads(rng: np.random.Generator, num_boxes: int, crop, depth: int) -> np.ndarray:
    return (rng.standard_normal((num_boxes, *crop, depth)) * 3).astype(np.float32)


def pixels_2x2(values: Any, dtype: str) -> np.ndarray:
    """A (1, 2, 2, 1) image."""
    return np.array(values, dtype).reshape(1, 2, 2, 1)
