"""roi_align on Mask R-CNN's workload: cropcore's numba backend beside ONNX Runtime's RoiAlign.

    python benchmarks/bench_roi_align.py

NCHW float32 features 2 x 256 x 200 x 272, 1000 boxes, spatial_scale 1/4, sampling_ratio 2,
aligned; 7 x 7 and 14 x 14. Checks that the results are bit-identical, then prints the best of
five interleaved runs (ms) of each. Needs onnx and onnxruntime (the test extra) and numba.

``cropcore bench --workloads maskrcnn-7 maskrcnn-14`` times the same workload with every backend
that implements roi_align, torchvision where it loads, medians and bit checks (docs/cli.md); this
script adds ONNX Runtime on one thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime

import cropcore
from cropcore.bench.implementations import roi_align_onnx_model

SCALE, RATIO, ROUNDS = 0.25, 2, 5


def onnxruntime_session(size: int, threads: int) -> onnxruntime.InferenceSession:
    """A one-node RoiAlign graph (opset 16, half_pixel); ``threads`` 0: ONNX Runtime's default."""
    model = roi_align_onnx_model(onnx, (size, size), RATIO, SCALE, True)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def best_of(functions: dict[str, Callable[[], object]]) -> dict[str, float]:
    """Milliseconds, best of ``ROUNDS`` interleaved runs of each function."""
    best: dict[str, float] = {}
    for _ in range(ROUNDS):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            best[name] = min(best.get(name, float("inf")), (time.perf_counter() - start) * 1e3)
    return best


def main() -> None:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 256, 200, 272)).astype(np.float32)
    corners = rng.uniform(0, 800, (1000, 2))
    boxes = np.concatenate([corners, corners + rng.uniform(16, 400, (1000, 2))], 1)
    boxes = boxes.astype(np.float32)
    indices = rng.integers(0, 2, 1000)
    feeds = {"X": image, "rois": boxes, "batch_indices": indices.astype(np.int64)}
    for size in (7, 14):
        sessions = {threads: onnxruntime_session(size, threads) for threads in (0, 1)}

        def forward(size: int = size) -> np.ndarray:
            return cropcore.roi_align(
                image, boxes, size, SCALE, RATIO, True, box_indices=indices, backend="numba"
            )

        result = forward()
        assert np.array_equal(result, sessions[0].run(None, feeds)[0]), "results differ"
        grads = rng.standard_normal(result.shape).astype(np.float32)

        def backward(grads: np.ndarray = grads) -> np.ndarray:
            return cropcore.roi_align_grad_image(
                grads, boxes, image.shape, SCALE, RATIO, True, box_indices=indices, backend="numba"
            )

        times = best_of(
            {
                "cropcore numba": forward,
                "onnxruntime (default threads)": lambda s=sessions[0]: s.run(None, feeds),
                "onnxruntime (1 thread)": lambda s=sessions[1]: s.run(None, feeds),
                "cropcore numba, image gradient": backward,
            }
        )
        print(f"{size} x {size}: " + ", ".join(f"{k} {v:.0f} ms" for k, v in times.items()))


if __name__ == "__main__":
    main()
