"""The workloads timed: an image batch, boxes and a crop size each, and the byte model.

Requirements: NumPy only. Inputs are drawn reproducibly from a seed, so every implementation is
timed on the same arrays. A workload is of one op family: ``crop_and_resize`` (TensorFlow's op,
NHWC, normalised boxes; ops :data:`OPS`) or ``roi_align`` (torchvision's and ONNX's RoIAlign, NCHW,
pixel boxes; ops :data:`ROI_OPS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "BYTE_MODEL",
    "DEFAULT_WORKLOADS",
    "OPS",
    "ROI_OPS",
    "WORKLOADS",
    "Workload",
    "custom_workload",
    "maskrcnn_workload",
]

#: The ops timed: ``crop_and_resize``, ``crop_and_resize_grad_image``, ``crop_and_resize_grad_boxes``
#: (on a roi_align workload: ``roi_align`` and ``roi_align_grad_image``).
OPS = ("forward", "grad_image", "grad_boxes")
#: The ops of a roi_align workload (roi_align has no box gradient).
ROI_OPS = ("forward", "grad_image")

#: What "GB/s" counts (the JSON file and the report quote it).
BYTE_MODEL = (
    "bytes per call, a lower bound on the memory traffic: forward = crops written (float32) + "
    "image read, counted as min(image bytes, 4 corner reads per output sample) + boxes and box "
    "indices; grad_image = gradient read (float32, the crops' shape) + image gradient written "
    "(float32) + boxes and box indices; grad_boxes = gradient read + image read (as forward) + "
    "boxes and box indices + box gradient written; on roi_align workloads an output sample is "
    "sampling_ratio**2 samples (1 if adaptive) and box indices are int64"
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
            boxes covering 30% to 100% of each side, a quarter of them mirrored); for a roi_align
            workload, ``"proposals"``: Mask R-CNN's, 16 to 400 pixels a side, corners anywhere
            in the (unscaled) image.
        family: ``"crop_and_resize"`` or ``"roi_align"`` (its image is NCHW, ``image_shape``
            still names its sizes NHWC; its output size is ``crop_size``).
        spatial_scale, sampling_ratio, aligned: roi_align's arguments (roi_align only).
    """

    name: str
    description: str
    image_shape: tuple[int, int, int, int]
    dtype: str
    num_boxes: int
    crop_size: tuple[int, int]
    box_kind: str = "roi"
    family: str = "crop_and_resize"
    spatial_scale: float = 1.0
    sampling_ratio: int = -1
    aligned: bool = False

    @property
    def ops(self) -> tuple[str, ...]:
        """The ops this workload times (:data:`OPS` or :data:`ROI_OPS`)."""
        return ROI_OPS if self.family == "roi_align" else OPS

    def inputs(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The image, float32 ``(num_boxes, 4)`` boxes and int32 box indices, reproducibly.

        roi_align: the image NCHW, the boxes pixel ``x1, y1, x2, y2`` and int64 box indices.
        """
        rng = np.random.default_rng(seed)
        batch = self.image_shape[0]
        if self.family == "roi_align":
            return self._roi_inputs(rng)
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

    def _roi_inputs(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch, height, width, depth = self.image_shape
        image = rng.standard_normal((batch, depth, height, width), dtype=np.float32)
        n = self.num_boxes
        scale = self.spatial_scale
        corners = rng.uniform(0, 1, (n, 2)) * [width / scale, height / scale]
        boxes = np.concatenate([corners, corners + rng.uniform(16, 400, (n, 2))], axis=1)
        return image.astype(self.dtype), boxes.astype(np.float32), rng.integers(0, batch, n)

    def grads(self, seed: int = 1) -> np.ndarray:
        """A float32 ``(num_boxes, crop_height, crop_width, depth)`` incoming gradient (roi_align:
        ``(num_boxes, depth, crop_height, crop_width)``)."""
        rng = np.random.default_rng(seed)
        if self.family == "roi_align":
            shape = (self.num_boxes, self.image_shape[3], *self.crop_size)
        else:
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
        box_bytes = self.num_boxes * (16 + 4)  # float32 boxes, int32 box indices
        if self.family == "roi_align":
            samples *= max(1, self.sampling_ratio) ** 2
            box_bytes = self.num_boxes * (16 + 8)  # int64 box indices
        image_read = min(self.image_bytes, 4 * samples * itemsize)
        if op == "forward":
            return self.crop_bytes + image_read + box_bytes
        if op == "grad_image":
            return self.crop_bytes + math.prod(self.image_shape) * 4 + box_bytes
        if op == "grad_boxes" and op in self.ops:
            return self.crop_bytes + image_read + box_bytes + self.num_boxes * 16
        raise ValueError(f"op must be one of {', '.join(self.ops)}, got {op!r}")

    def as_dict(self) -> dict[str, Any]:
        """The workload's parameters, for the JSON file."""
        fields: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "family": self.family,
            "image_shape": list(self.image_shape),
            "dtype": self.dtype,
            "num_boxes": self.num_boxes,
            "crop_size": list(self.crop_size),
            "box_kind": self.box_kind,
            "bytes_per_call": {op: self.bytes_moved(op) for op in self.ops},
        }
        if self.family == "roi_align":
            fields["layout"] = "NCHW (image_shape gives N, H, W, C)"
            fields["spatial_scale"] = self.spatial_scale
            fields["sampling_ratio"] = self.sampling_ratio
            fields["aligned"] = self.aligned
        return fields


def maskrcnn_workload(
    output: int,
    image_shape: Sequence[int] = (2, 200, 272, 256),
    num_boxes: int = 1000,
    name: str | None = None,
) -> Workload:
    """Mask R-CNN's roi_align: NCHW float32 features, ``num_boxes`` proposals of 16 to 400
    pixels a side at ``spatial_scale=1/4``, ``sampling_ratio=2``, ``aligned=True``, to
    ``output x output`` (``image_shape`` N, H, W, C; default: 2 x 256 x 200 x 272 NCHW)."""
    n, h, w, c = (int(v) for v in image_shape)
    return Workload(
        name or f"maskrcnn-{output}",
        f"roi_align: {n}x{c}x{h}x{w} NCHW float32 features, {num_boxes} boxes, scale 1/4, "
        f"sampling_ratio 2, aligned -> {output}x{output}",
        (n, h, w, c),
        "float32",
        int(num_boxes),
        (int(output), int(output)),
        box_kind="proposals",
        family="roi_align",
        spatial_scale=0.25,
        sampling_ratio=2,
        aligned=True,
    )


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
        maskrcnn_workload(7),
        maskrcnn_workload(14),
    )
}

#: What ``cropcore bench`` runs without ``--workloads``: the crop_and_resize workloads (the
#: roi_align ones take minutes on the numpy backend; name them).
DEFAULT_WORKLOADS = ("roi", "augmentation", "tiny")


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
