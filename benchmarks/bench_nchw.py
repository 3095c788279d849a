"""NCHW against NHWC at the torch ops on the detection workload (issue 16's 1.3x target).

Times the three bare custom ops (forward, image gradient, box gradient) for NHWC, contiguous NCHW
and NCHW in channels_last memory, interleaved in one process. Two clocks: wall time with torch's
threads, and single-thread CPU time (``time.process_time`` under ``torch.set_num_threads(1)``),
which a shared machine disturbs less. Best and median of ``--rounds`` rounds of ``--calls`` calls.

    python benchmarks/bench_nchw.py [--rounds 7] [--calls 5] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import cropcore_torch.ops  # noqa: F401  (registers the ops)
from cropcore.bench import custom_workload

OPS = ("fwd", "image", "boxes")
LAYOUTS = ("nhwc", "nchw", "nchw-cl")


def _calls(layout: str):
    image_np, boxes_np, indices_np = custom_workload((2, 50, 68, 256), 512, (7, 7)).inputs()
    image = torch.from_numpy(image_np).float()
    first = layout != "nhwc"
    if layout == "nchw":
        image = image.permute(0, 3, 1, 2).contiguous()
    elif layout == "nchw-cl":
        image = image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    boxes, indices = torch.from_numpy(boxes_np), torch.from_numpy(indices_np)
    ops = torch.ops.cropcore
    out = ops.crop_and_resize(image, boxes, indices, 7, 7, "bilinear", 0.0, first)
    grads = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    if layout == "nchw-cl":
        grads = grads.contiguous(memory_format=torch.channels_last)
    b, h, w, d = (image.shape[0], *image.shape[2:], image.shape[1]) if first else image.shape
    return {
        "fwd": lambda: ops.crop_and_resize(image, boxes, indices, 7, 7, "bilinear", 0.0, first),
        "image": lambda: ops.crop_and_resize_grad_image(
            grads, boxes, indices, b, h, w, d, "bilinear", torch.float32, first
        ),
        "boxes": lambda: ops.crop_and_resize_grad_boxes(grads, image, boxes, indices, first),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--ops", default=",".join(OPS))
    args = parser.parse_args()
    cases = {layout: _calls(layout) for layout in LAYOUTS}
    ops = args.ops.split(",")
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        clock = time.process_time if threads == 1 else time.perf_counter
        times: dict = {(lay, op): [] for lay in LAYOUTS for op in ops}
        for _ in range(args.rounds):
            for op in ops:
                for layout in LAYOUTS:
                    call = cases[layout][op]
                    call()
                    start = clock()
                    for _ in range(args.calls):
                        call()
                    times[layout, op].append((clock() - start) / args.calls * 1e6)
        kind = "cpu time, 1 thread" if threads == 1 else f"wall time, {threads} threads"
        print(f"# {kind}: best / median us, ratio to nhwc (best)")
        for op in ops:
            base = min(times["nhwc", op])
            row = [
                f"{lay} {min(t):7.0f} / {statistics.median(t):7.0f} ({min(t) / base:4.2f}x)"
                for lay in LAYOUTS
                for t in [times[lay, op]]
            ]
            print(f"{op:5s}  " + "   ".join(row))


if __name__ == "__main__":
    main()
