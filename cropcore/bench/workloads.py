"""The workloads timed: an image batch, boxes and a crop size each, and the byte model.

Requirements: NumPy only. Inputs are drawn reproducibly from a seed, so every implementation is
timed on the same arrays.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["BYTE_MODEL", "OPS", "WORKLOADS", "Workload", "custom_workload"]

#: The ops timed: ``crop_and_resize``, ``crop_and_resize_grad_image``, ``crop_and_resize_grad_boxes``.
OPS = ("forward", "grad_image", "grad_boxes")

#: What "GB/s" counts (the JSON file and the report quote it).
BYTE_MODEL = (
    "bytes per call, a lower bound on the memory traffic: forward = crops written (float32) + "
    "image read, counted as min(image bytes, 4 corner reads per output sample) + boxes and box "
    "indices; grad_image = gradient read (float32, the crops' shape) + image gradient written "
    "(float32) + boxes and box indices; grad_boxes = gradient read + image read (as forward) + "
    "boxes and box indices + box gradient written"
)


@dataclass(frozen=True)
class Workload:
    """One benchmark case: an image batch, boxes and a crop size.

    Attributes:
        name: the name ``--workloads`` takes (``"custom"`` for ``--shape``).
        description: one line for the report.
        image_shape: NHWC.
        dtype: the image dtype (a NumPy name).
        num_boxes: how many boxes are cropped.
        crop_size: ``(crop_height, crop_width)``.
        box_kind: how boxes are drawn: ``"roi"`` (detection proposals: small to medium boxes
            anywhere, a few reaching outside the image) or ``"augmentation"`` (random-resized-crop
            boxes covering 30% to 100% of each side, a quarter of them mirrored).
    """

    name: str
    description: str
    image_shape: tuple[int, int, int, int]
    dtype: str
    num_boxes: int
    crop_size: tuple[int, int]
    box_kind: str = "roi"

    def inputs(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The image, float32 ``(num_boxes, 4)`` boxes and int32 box indices, reproducibly."""
        rng = np.random.default_rng(seed)
        batch = self.image_shape[0]
        if np.dtype(self.dtype).kind == "f":
            image = rng.standard_normal(self.image_shape, dtype=np.float32).astype(self.dtype)
        else:
            info = np.iinfo(self.dtype)
            high = min(int(info.max), 255) + 1
            image = rng.integers(max(int(info.min), 0), high, self.image_shape).astype(self.dtype)
        n = self.num_boxes
        if self.box_kind == "augmentation":
            size = rng.uniform(0.3, 1.0, (n, 2))
            start = rng.uniform(0.0, 1.0, (n, 2)) * (1.0 - size)
            end = start + size
            mirror = rng.random(n) < 0.25
            start[mirror, 1], end[mirror, 1] = end[mirror, 1], start[mirror, 1].copy()
        else:
            size = rng.uniform(0.05, 0.6, (n, 2))
            start = rng.uniform(-0.05, 1.0, (n, 2)) * (1.0 - size)
            end = start + size
        boxes = np.stack([start[:, 0], start[:, 1], end[:, 0], end[:, 1]], axis=1)
        box_indices = rng.integers(0, batch, n).astype(np.int32)
        return image, boxes.astype(np.float32), box_indices

    def grads(self, seed: int = 1) -> np.ndarray:
        """A float32 ``(num_boxes, crop_height, crop_width, depth)`` incoming gradient."""
        rng = np.random.default_rng(seed)
        shape = (self.num_boxes, *self.crop_size, self.image_shape[3])
        return rng.standard_normal(shape, dtype=np.float32)

    @property
    def crop_bytes(self) -> int:
        """Bytes of the float32 crops (and of the incoming gradient)."""
        return 4 * self.num_boxes * self.crop_size[0] * self.crop_size[1] * self.image_shape[3]

    @property
    def image_bytes(self) -> int:
        """Bytes of the image."""
        return math.prod(self.image_shape) * np.dtype(self.dtype).itemsize

    def bytes_moved(self, op: str) -> int:
        """Bytes read plus written by one call of ``op``, by the byte model (:data:`BYTE_MODEL`)."""
        itemsize = np.dtype(self.dtype).itemsize
        samples = self.crop_bytes // 4
        image_read = min(self.image_bytes, 4 * samples * itemsize)
        box_bytes = self.num_boxes * (16 + 4)  # float32 boxes, int32 box indices
        if op == "forward":
            return self.crop_bytes + image_read + box_bytes
        if op == "grad_image":
            return self.crop_bytes + math.prod(self.image_shape) * 4 + box_bytes
        if op == "grad_boxes":
            return self.crop_bytes + image_read + box_bytes + self.num_boxes * 16
        raise ValueError(f"op must be one of {', '.join(OPS)}, got {op!r}")

    def as_dict(self) -> dict[str, Any]:
        """The workload's parameters, for the JSON file."""
        return {
            "name": self.name,
            "description": self.description,
            "image_shape": list(self.image_shape),
            "dtype": self.dtype,
            "num_boxes": self.num_boxes,
            "crop_size": list(self.crop_size),
            "box_kind": self.box_kind,
            "bytes_per_call": {op: self.bytes_moved(op) for op in OPS},
        }


#: The workloads of the performance targets (design.md, "Performance").
WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload(
            "roi",
            "ROI crops: 2x64x64x256 float32 feature map, 512 boxes -> 14x14",
            (2, 64, 64, 256),
            "float32",
            512,
            (14, 14),
        ),
        Workload(
            "augmentation",
            "augmentation crops: 8x512x512x3 uint8 photos, 64 boxes (a quarter mirrored) -> 224x224",
            (8, 512, 512, 3),
            "uint8",
            64,
            (224, 224),
            box_kind="augmentation",
        ),
        Workload(
            "tiny",
            "tiny call (overhead): 1x16x16x1 float32, 4 boxes -> 7x7",
            (1, 16, 16, 1),
            "float32",
            4,
            (7, 7),
        ),
    )
}


def custom_workload(
    shape: Sequence[int],
    num_boxes: int,
    crop_size: Sequence[int],
    dtype: str = "float32",
    box_kind: str = "roi",
) -> Workload:
    """The ``custom`` workload of ``--shape N,H,W,C --boxes K --crop H,W --dtype D``."""
    n, h, w, c = (int(v) for v in shape)
    ch, cw = (int(v) for v in crop_size)
    return Workload(
        "custom",
        f"custom: {n}x{h}x{w}x{c} {dtype}, {num_boxes} {box_kind} boxes -> {ch}x{cw}",
        (n, h, w, c),
        dtype,
        int(num_boxes),
        (ch, cw),
        box_kind=box_kind,
    )
