"""How fast can an exact ROI image gradient be on this machine? A bound, measured beside TensorFlow.

The ROI workload's image gradient (``cropcore bench``: 512 boxes, 14x14, depth 256) streams a
103 MB incoming gradient once and adds every element, with TF's weights, into four image pixels.
To be bit-identical to TensorFlow each element costs six float32 multiplies and four adds, in
TF's order and without fused multiply-adds. This script times, in one process and on every thread
numba has, interleaved:

- ``tensorflow``: ``tf.raw_ops.CropAndResizeGradImage`` (when TensorFlow is installed);
- ``numba``: cropcore's numba backend, through the public API;
- ``ideal``: the same arithmetic on the same gradient, streamed in order, with every target pixel
  in L1 (a 40-pixel scratch row per thread): what an exact kernel that scatters, as TF's and
  cropcore's do, would cost if the image were free. Its result is meaningless; its time is a bound;
- ``read``: streaming the gradient once (one add per element into a 1 KB row).

Usage::

    python benchmarks/grad_image_floor.py [--repeat 21]

docs/performance.md quotes its output.
"""

from __future__ import annotations

import argparse
import time

import numba
import numpy as np
from numba import njit, prange

import cropcore
from cropcore.bench import WORKLOADS

_at = np.uint64  # unsigned flat indices: no wraparound checks, contiguous vector loops


@njit(nogil=True, parallel=True)
def _ideal(grads, scratch, crop_width, depth, y_lerp, x_lerp):  # pragma: no cover - compiled
    """TF's per-element arithmetic, as the numba kernel orders it, into an L1-resident scratch.

    Each crop row: a pass for the top image row (``dtop = (1 - y_lerp) * g``, then
    ``(1 - x_lerp) * dtop`` into the left pixel and ``x_lerp * dtop`` into the right one) and a pass
    for the bottom row (``dbottom = y_lerp * g``): six multiplies and four adds per element.
    """
    one = np.float32(1)
    workers = scratch.shape[0]
    crop_rows = grads.size // (crop_width * depth)
    bottom = (crop_width + 2) * depth  # the bottom image row of the scratch
    for t in prange(workers):
        out = scratch[t]
        for row in range(crop_rows * t // workers, crop_rows * (t + 1) // workers):
            base = row * crop_width * depth
            for row_pass in range(2):
                target = bottom if row_pass else 0
                y_weight = y_lerp if row_pass else one - y_lerp
                for x in range(crop_width):
                    source = base + x * depth
                    left = target + x * depth
                    right = left + depth
                    for d in range(depth):
                        weighted = y_weight * grads[_at(source + d)]
                        out[_at(left + d)] += (one - x_lerp) * weighted
                        out[_at(right + d)] += x_lerp * weighted


@njit(nogil=True, parallel=True)
def _read(grads, scratch, depth):  # pragma: no cover - compiled
    """Stream ``grads`` once: one add per element into a 1 KB row per thread."""
    workers = scratch.shape[0]
    rows = grads.size // depth
    for t in prange(workers):
        out = scratch[t]
        for row in range(rows * t // workers, rows * (t + 1) // workers):
            for d in range(depth):
                out[d] += grads[_at(row * depth + d)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=21, help="rounds (default 21)")
    args = parser.parse_args()

    workload = WORKLOADS["roi"]
    image, boxes, box_indices = workload.inputs()
    grads = workload.grads()
    shape = image.shape
    crop_width, depth = grads.shape[2], grads.shape[3]
    workers = numba.get_num_threads()
    scratch = np.zeros((workers, 2 * (crop_width + 2) * depth), np.float32)
    flat = grads.reshape(-1)
    y_lerp, x_lerp = np.float32(0.3), np.float32(0.6)

    def numba_call() -> None:
        cropcore.crop_and_resize_grad_image(grads, boxes, box_indices, shape, backend="numba")

    candidates = {
        "numba": numba_call,
        "ideal": lambda: _ideal(flat, scratch, crop_width, depth, y_lerp, x_lerp),
        "read": lambda: _read(flat, scratch, depth),
    }
    try:
        import tensorflow as tf
    except ImportError:
        print("TensorFlow is not installed: no reference")
    else:
        tensors = [tf.constant(a) for a in (grads, boxes, box_indices, np.array(shape, np.int32))]

        def tensorflow_call() -> None:
            tf.raw_ops.CropAndResizeGradImage(
                grads=tensors[0], boxes=tensors[1], box_ind=tensors[2], image_size=tensors[3],
                T=tf.float32,
            ).numpy()  # fmt: skip

        candidates = {"tensorflow": tensorflow_call, **candidates}

    times: dict[str, list[float]] = {name: [] for name in candidates}
    for call in candidates.values():  # compile and warm up
        call()
    names = list(candidates)
    for round_ in range(args.repeat):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            candidates[name]()
            times[name].append(time.perf_counter() - start)

    print(f"ROI image gradient, {workers} numba threads, {args.repeat} interleaved rounds")
    reference = np.median(times["tensorflow"]) if "tensorflow" in times else None
    for name, values in times.items():
        median, best = 1e3 * np.median(values), 1e3 * min(values)
        ratio = f"  TF / this: {reference / np.median(values):.2f}x" if reference else ""
        print(f"  {name:10s} median {median:6.2f} ms  min {best:6.2f} ms{ratio}")


if __name__ == "__main__":
    main()
