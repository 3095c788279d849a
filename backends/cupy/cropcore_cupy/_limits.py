"""What the CUDA kernels decline: the index widths and image sizes they cannot address.

Requirements:

- **No CuPy here, and no device**: plain Python on a validated call's shapes, so that the declines
  are tested where there is no GPU.
- **Index widths are checked here.** The kernels use 32-bit counts (rows, groups, elements per
  box) and 64-bit offsets; :func:`decline_reason` refuses calls whose counts do not fit, and images
  taller or wider than 2**24 pixels (where float32 stops representing pixel indices exactly).
"""

from __future__ import annotations

from typing import Any

__all__ = ["MAX_AXIS", "MAX_COUNT", "decline_reason"]

#: Largest count a kernel indexes with 32 bits (rows, groups, elements of one box).
MAX_COUNT = 2**31 - 1
#: Largest image height or width: float32 represents every pixel index up to 2**24 exactly.
MAX_AXIS = 2**24


def _first_over(checks: list[tuple[str, int]]) -> str | None:
    """The first ``(name, count)`` over :data:`MAX_COUNT`, said as a reason; else ``None``."""
    for name, value in checks:
        if value > MAX_COUNT:
            return f"{name} = {value} exceeds 2**31 - 1, the largest count these kernels index"
    return None


def decline_reason(call: Any) -> str | None:
    """Why the CUDA kernels cannot run ``call`` (a validated cropcore call), or ``None``."""
    if call.op == "crop2d":
        return None
    shape = call.image_shape
    if shape.height > MAX_AXIS or shape.width > MAX_AXIS:
        return (
            f"image height {shape.height} or width {shape.width} exceeds 2**24, beyond which "
            "float32 sample coordinates cannot address every pixel"
        )
    if call.op in ("roi_align", "roi_align_grad_image"):
        return _roi_decline_reason(call)
    crop_height, crop_width = call.crop_size
    num_boxes, depth = call.num_boxes, shape.depth
    checks = [
        ("num_boxes * crop_height * depth", num_boxes * crop_height * max(depth, 1)),
        ("crop_width * depth", crop_width * depth),
    ]
    if call.op == "crop_and_resize_grad_boxes":
        checks.append(("crop_height * crop_width * depth", crop_height * crop_width * depth))
    if call.op == "crop_and_resize_grad_image":
        checks += [
            ("batch * height * depth", shape.batch * shape.height * max(depth, 1)),
            ("width * depth", shape.width * depth),
        ]
    return _first_over(checks)


def _roi_decline_reason(call: Any) -> str | None:
    """roi_align's counts: the forward's rows and groups, and the gradient's (as the crop ops')."""
    shape = call.image_shape
    pooled_height, pooled_width = call.output_size
    num_boxes, depth = call.num_boxes, shape.depth
    checks = [
        ("num_boxes * pooled_height * depth", num_boxes * pooled_height * max(depth, 1)),
        ("pooled_width * depth", pooled_width * depth),
        ("num_boxes", num_boxes),
    ]
    if call.op == "roi_align_grad_image":
        checks += [
            ("batch * height * depth", shape.batch * shape.height * max(depth, 1)),
            ("width * depth", shape.width * depth),
        ]
    return _first_over(checks)
