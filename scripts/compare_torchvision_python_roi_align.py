"""Compare cropcore.roi_align with torchvision's pure-Python ``_roi_align``, from a wheel's source.

torchvision's ``roi_align`` runs a pure-Python implementation (``_roi_align`` in
``torchvision/ops/roi_align.py``) instead of its compiled kernel where the compiled ops do not load,
and on CUDA, MPS and XPU whenever ``torch.use_deterministic_algorithms(True)`` is on. On this
project's CPU torch the compiled ops of the only torchvision wheel for torch 2.13 do not load, so
this script takes the Python implementation out of the wheel (no import of torchvision itself),
runs it eagerly on random cases, and prints how far cropcore's result is from it:

    pip download --no-deps torchvision==0.28.0 -d /tmp/tv
    python scripts/compare_torchvision_python_roi_align.py /tmp/tv/torchvision-0.28.0-*.whl

Two families of cases: every sample inside the image (where the Python implementation should
agree with the compiled kernel, ONNX Runtime and cropcore up to rounding), and boxes reaching
outside the image (where the compiled kernel gives samples more than one pixel outside the image
zero weight, and the Python implementation, which only clamps, does not).
"""

from __future__ import annotations

import argparse
import ast
import functools
import sys
import zipfile

import numpy as np
import torch

import cropcore

SOURCE = "torchvision/ops/roi_align.py"
FUNCTIONS = ("_bilinear_interpolate", "maybe_cast", "_roi_align")


def load_python_roi_align(wheel: str):
    """``_roi_align`` (undecorated) and its helpers, compiled from the wheel's source."""
    with zipfile.ZipFile(wheel) as z:
        source = z.read(SOURCE).decode()
    tree = ast.parse(source)
    keep = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in FUNCTIONS]
    for node in keep:
        node.decorator_list = []  # lazy_compile: run eagerly
    namespace = {"torch": torch, "functools": functools}
    exec(compile(ast.Module(body=keep, type_ignores=[]), SOURCE, "exec"), namespace)
    return namespace["_roi_align"]


def random_case(rng: np.random.Generator, outside: bool):
    n, c = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    h, w = int(rng.integers(2, 14)), int(rng.integers(2, 14))
    k = int(rng.integers(1, 6))
    image = rng.random((n, c, h, w))
    if outside:
        x1 = rng.uniform(-0.6 * w, w)
        y1 = rng.uniform(-0.6 * h, h)
        corners = [x1, y1, x1 + rng.uniform(0.5, 1.2 * w), y1 + rng.uniform(0.5, 1.2 * h)]
        boxes = np.array([corners for _ in range(k)]) + rng.uniform(-1, 1, (k, 4))
    else:  # every sample inside [0, size - 1] (aligned=True shifts by -0.5)
        x1 = rng.uniform(0.5, (w - 1) / 2 + 0.5, k)
        y1 = rng.uniform(0.5, (h - 1) / 2 + 0.5, k)
        x2 = x1 + rng.uniform(0.1, (w - 1) / 2, k)
        y2 = y1 + rng.uniform(0.1, (h - 1) / 2, k)
        boxes = np.stack([x1, y1, x2, y2], 1)
    rois = np.concatenate([rng.integers(0, n, (k, 1)).astype(np.float64), boxes], 1)
    output_size = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
    sampling_ratio = int(rng.choice([1, 2, 3]))
    return image, rois, output_size, sampling_ratio


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("wheel", help="a torchvision wheel (pip download --no-deps torchvision)")
    parser.add_argument("--cases", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    python_roi_align = load_python_roi_align(args.wheel)
    rng = np.random.default_rng(args.seed)
    for outside in (False, True):
        for dtype in (torch.float64, torch.float32):
            worst, differing = 0.0, 0
            for _ in range(args.cases):
                image, rois, size, ratio = random_case(rng, outside)
                x, r = torch.from_numpy(image).to(dtype), torch.from_numpy(rois).to(dtype)
                theirs = python_roi_align(x, r, 1.0, size[0], size[1], ratio, True)
                ours = cropcore.roi_align(x, r, size, 1.0, ratio, True, backend="torch")
                diff = float((theirs - ours).abs().max())
                worst = max(worst, diff)
                differing += diff > (1e-12 if dtype == torch.float64 else 1e-5)
            where = "boxes reaching outside the image" if outside else "every sample inside"
            print(
                f"{where:34s} {dtype!s:14s} {args.cases} cases: largest |difference| "
                f"{worst:.3g}; cases beyond rounding: {differing}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
