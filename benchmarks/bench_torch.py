"""The torch backend on CPU beside a grid_sample port, in one process, interleaved (issue 16).

Times, for each workload, layout and gradient combination, in rounds (one call of each
implementation per round, the order rotating, the garbage collector off; medians):

- ``cropcore``: ``cropcore.crop_and_resize`` (validation, dispatch, the torch backend);
- ``cropcore_torch``: ``cropcore_torch.crop_and_resize(..., validate=True)``;
- ``unchecked``: ``cropcore_torch.crop_and_resize(..., validate=False)``;
- ``op``: the bare custom op ``torch.ops.cropcore.crop_and_resize``;
- ``grid_sample``: a port of TF's op to ``F.grid_sample`` (``align_corners=True``, one call per
  image of the batch, the crops gathered back in box order): what a PyTorch user writes without
  cropcore. Its values differ from TF's at the image border (zero padding instead of clamped
  neighbours) and it is not flush-to-zero; it is a reference for speed only.

Layouts: ``nhwc`` (contiguous NHWC, ``data_format="channels_last"``), ``nchw`` (contiguous NCHW,
how torch holds features) and ``nchw-cl`` (NCHW stored ``torch.channels_last``; its crops are
channels-last too, and so is the gradient passed back to them, as a channels-last network's).
Gradients: ``fwd`` (forward only, no autograd), ``image`` (forward + backward to the image),
``boxes`` (to the boxes), ``both``. torchvision's ``roi_align`` (``aligned=True``, sampling ratio 2,
the same boxes in pixels) is timed too, forward and image gradient, where its C++ ops load: to load
them on a CPU-only torch from torchvision's CUDA wheel, run this through
``benchmarks/torchvision_cpu.py`` (``python benchmarks/torchvision_cpu.py benchmarks/bench_torch.py``).

Usage::

    python benchmarks/bench_torch.py [--workloads tiny,detection,roi] [--rounds 15]

docs/torch.md and docs/performance.md quote its output.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

import cropcore
import cropcore_torch
from cropcore.bench import WORKLOADS, custom_workload

GRADS = ("fwd", "image", "boxes", "both")
LAYOUTS = ("nhwc", "nchw", "nchw-cl")


def grid_sample_crop_and_resize(image, boxes, box_indices, crop_size, channels_first):
    """TF's ``crop_and_resize`` (bilinear) by ``F.grid_sample``: NCHW or NHWC in and out."""
    crop_height, crop_width = crop_size
    x = image if channels_first else image.permute(0, 3, 1, 2)
    steps_y = torch.linspace(0, 1, crop_height, device=x.device)
    steps_x = torch.linspace(0, 1, crop_width, device=x.device)
    y1, x1, y2, x2 = boxes.unbind(1)
    # align_corners=True: -1 and 1 are the centres of the first and last pixels, as TF's y * (H - 1)
    gy = 2 * (y1[:, None] + (y2 - y1)[:, None] * steps_y) - 1  # (K, crop_height)
    gx = 2 * (x1[:, None] + (x2 - x1)[:, None] * steps_x) - 1  # (K, crop_width)
    grid = torch.stack(
        torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1
    )  # (K, ch, cw, 2)
    crops = x.new_empty((boxes.shape[0], x.shape[1], crop_height, crop_width))
    pieces = []
    order = []
    for b in range(x.shape[0]):
        (where,) = (box_indices == b).nonzero(as_tuple=True)
        if where.numel() == 0:
            continue
        g = grid[where].reshape(1, -1, crop_width, 2)
        out = F.grid_sample(x[b : b + 1], g, mode="bilinear", align_corners=True)
        pieces.append(out.reshape(x.shape[1], where.numel(), crop_height, crop_width))
        order.append(where)
    crops = torch.cat(pieces, dim=1).transpose(0, 1)
    crops = crops[torch.argsort(torch.cat(order))]
    return crops if channels_first else crops.permute(0, 2, 3, 1)


def _workloads(names):
    extra = {
        # the tiny call: 1x1x16x16 (NCHW), 4 boxes, 7x7
        "tiny": WORKLOADS["tiny"],
        # detection: a C=256 feature map as torch holds it, 512 proposals -> 7x7
        "detection": custom_workload((2, 50, 68, 256), 512, (7, 7)),
    }
    return [extra[n] if n in extra else WORKLOADS[n] for n in names]


def _cases(workload, layout, grads):
    image_np, boxes_np, indices_np = workload.inputs()
    image = torch.from_numpy(image_np)
    if not image.is_floating_point():
        image = image.float()
    channels_first = layout != "nhwc"
    if layout == "nchw":
        image = image.permute(0, 3, 1, 2).contiguous()
    elif layout == "nchw-cl":
        image = image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    boxes = torch.from_numpy(boxes_np)
    indices = torch.from_numpy(indices_np)
    data_format = "channels_first" if channels_first else "channels_last"
    image.requires_grad_(grads in ("image", "both"))
    boxes.requires_grad_(grads in ("boxes", "both"))
    crop = workload.crop_size
    gen = torch.Generator().manual_seed(1)
    out_shape = (boxes.shape[0], image.shape[1], *crop) if channels_first else None
    if out_shape is None:
        out_shape = (boxes.shape[0], *crop, image.shape[3])
    upstream = torch.randn(out_shape, generator=gen)
    if layout == "nchw-cl":  # the crops are channels-last, and so is what the next layer returns
        upstream = upstream.contiguous(memory_format=torch.channels_last)

    def run(f):
        def call():
            if grads == "fwd":
                with torch.no_grad():
                    return f()
            out = f()
            out.backward(upstream)
            image.grad = None
            boxes.grad = None
            return out

        return call

    impls: dict[str, Callable] = {
        "cropcore": run(
            lambda: cropcore.crop_and_resize(image, boxes, indices, crop, data_format=data_format)
        ),
        "cropcore_torch": run(
            lambda: cropcore_torch.crop_and_resize(
                image, boxes, indices, crop, data_format=data_format
            )
        ),
        "unchecked": run(
            lambda: cropcore_torch.crop_and_resize(
                image, boxes, indices, crop, data_format=data_format, validate=False
            )
        ),
        "op": run(
            lambda: torch.ops.cropcore.crop_and_resize(
                image, boxes, indices, *crop, "bilinear", 0.0, channels_first
            )
        ),
        "grid_sample": run(
            lambda: grid_sample_crop_and_resize(image, boxes, indices, crop, channels_first)
        ),
    }
    if grads in ("boxes", "both"):  # roi_align has no gradient to its boxes
        return impls
    try:
        from torchvision.ops import roi_align

        height, width = (image.shape[2], image.shape[3]) if channels_first else image.shape[1:3]
        scale = torch.tensor([height - 1, width - 1, height - 1, width - 1], dtype=torch.float32)
        pix = boxes.detach() * scale
        rois = torch.cat([indices[:, None].float(), pix[:, [1, 0, 3, 2]]], dim=1)
        x = image if channels_first else image.permute(0, 3, 1, 2)
        roi_align(x.detach(), rois.detach(), crop, aligned=True)  # do its ops load?
        if channels_first:
            impls["roi_align"] = run(lambda: roi_align(x, rois, crop, 1.0, 2, True))
        else:  # NHWC crops, as a PyTorch user would get them from an NHWC tensor
            impls["roi_align"] = run(
                lambda: roi_align(x, rois, crop, 1.0, 2, True).permute(0, 2, 3, 1)
            )
    except Exception:  # not installed, or its C++ ops do not load against this torch
        pass
    return impls


def _time(impls, rounds, budget):
    names = list(impls)
    for f in impls.values():  # warm-up (and compilation)
        f()
        f()
    times = {n: [] for n in names}
    gc.disable()
    try:
        start = time.perf_counter()
        for r in range(rounds):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                inner = times[n]
                t0 = time.perf_counter()
                impls[n]()
                inner.append(time.perf_counter() - t0)
            if r >= 3 and time.perf_counter() - start > budget:
                break
    finally:
        gc.enable()
    return {n: statistics.median(t) for n, t in times.items()}


def _tiny_time(impls, repeat, rounds):
    """For sub-millisecond calls: the best over rounds of the mean of ``repeat`` calls."""
    names = list(impls)
    for f in impls.values():
        for _ in range(20):
            f()
    best = {n: float("inf") for n in names}
    gc.disable()
    try:
        for r in range(rounds):
            for n in names[r % len(names) :] + names[: r % len(names)]:
                f = impls[n]
                t0 = time.perf_counter()
                for _ in range(repeat):
                    f()
                best[n] = min(best[n], (time.perf_counter() - t0) / repeat)
    finally:
        gc.enable()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="tiny,detection")
    parser.add_argument("--layouts", default=",".join(LAYOUTS))
    parser.add_argument("--grads", default=",".join(GRADS))
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--seconds", type=float, default=6.0, help="budget per case")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    try:
        import torchvision

        print(f"torchvision {torchvision.__version__}")
    except Exception as exc:  # not installed, or does not import
        print(f"no torchvision: {type(exc).__name__}")
    for workload in _workloads(args.workloads.split(",")):
        print(f"\n{workload.description}")
        tiny = np.prod(workload.image_shape) * workload.num_boxes < 1e5
        for layout in args.layouts.split(","):
            for grads in args.grads.split(","):
                impls = _cases(workload, layout, grads)
                if tiny:
                    result = _tiny_time(impls, repeat=200, rounds=args.rounds)
                else:
                    result = _time(impls, args.rounds, args.seconds)
                cells = "  ".join(f"{n} {t * 1e6:9.1f}" for n, t in result.items())
                print(f"  {layout:8s} {grads:6s} us: {cells}", flush=True)


if __name__ == "__main__":
    main()
