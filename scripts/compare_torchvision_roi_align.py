"""Compare cropcore.roi_align with torchvision's compiled CPU ``roi_align`` kernel, bit for bit.

Runs ``torchvision.ops.roi_align`` (the C++ kernel: forward, and its backward through
``torch.autograd``) and cropcore's ``roi_align`` / ``roi_align_grad_image`` on random cases, each
backend in turn, and prints for each family of cases how many results are bit-identical and the
largest difference. Needs a torchvision whose compiled ops load; on a CPU-only torch with
torchvision's CUDA wheel, run it through the loader::

    pip install --no-deps torchvision==0.28.0
    python benchmarks/torchvision_cpu.py scripts/compare_torchvision_roi_align.py --backends numpy torch

Cases (``random_case`` from compare_torchvision_python_roi_align.py): every sample inside the image,
and boxes reaching outside it; float32 and float64; aligned and not; sampling ratios 1-3 and
adaptive (0). docs/differences.md quotes its output.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch
from compare_torchvision_python_roi_align import random_case

import cropcore


def _compare(theirs: torch.Tensor, ours) -> tuple[bool, float]:
    ours = torch.as_tensor(np.asarray(ours) if not isinstance(ours, torch.Tensor) else ours)
    same = theirs.dtype == ours.dtype and theirs.shape == ours.shape
    same = same and bool(
        torch.equal(theirs.view(-1).view(torch.int8), ours.view(-1).view(torch.int8))
    )
    return same, float((theirs.double() - ours.double()).abs().max()) if theirs.numel() else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", nargs="+", default=["numpy"])
    args = parser.parse_args(argv)
    from torchvision.ops import roi_align as tv_roi_align

    rng = np.random.default_rng(args.seed)
    differing = 0
    for outside in (False, True):
        for dtype in (torch.float32, torch.float64):
            for aligned in (True, False):
                counts = {(b, part): [0, 0.0] for b in args.backends for part in ("fwd", "grad")}
                for _ in range(args.cases):
                    image, rois, size, ratio = random_case(rng, outside)
                    ratio = int(rng.choice([0, ratio]))
                    x = torch.from_numpy(image).to(dtype).requires_grad_(True)
                    r = torch.from_numpy(rois).to(dtype)
                    out = tv_roi_align(x, r, size, 1.0, ratio, aligned)
                    upstream = torch.from_numpy(rng.standard_normal(out.shape)).to(dtype)
                    (grad,) = torch.autograd.grad(out, x, upstream)
                    np_dtype = np.float64 if dtype == torch.float64 else np.float32
                    arrays = image.astype(np_dtype), rois.astype(np_dtype)
                    for backend in args.backends:
                        wrap = torch.from_numpy if backend == "torch" else np.asarray
                        img, boxes = (wrap(a) for a in arrays)
                        fwd = cropcore.roi_align(
                            img, boxes, size, 1.0, ratio, aligned, backend=backend
                        )
                        gimg = cropcore.roi_align_grad_image(
                            wrap(upstream.numpy()), boxes, image.shape, 1.0, ratio, aligned,
                            backend=backend,
                        )  # fmt: skip
                        for part, theirs, ours in (("fwd", out, fwd), ("grad", grad, gimg)):
                            same, diff = _compare(theirs.detach(), ours)
                            cell = counts[(backend, part)]
                            cell[0] += same
                            cell[1] = max(cell[1], diff)
                            differing += not same
                where = "boxes reaching outside" if outside else "every sample inside"
                for (backend, part), (same, worst) in counts.items():
                    print(
                        f"{where:22s} {str(dtype)[6:]:8s} aligned={aligned!s:5s} {backend:6s} "
                        f"{part:4s}: {same}/{args.cases} bit-identical, largest |difference| "
                        f"{worst:.3g}"
                    )
    print(f"results that differ: {differing}")
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main())
