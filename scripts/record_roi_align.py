"""Record roi_align reference vectors from ONNX Runtime's CPU ``RoiAlign`` (opset 16).

Run it with a Python that has onnx and onnxruntime (``make test`` installs both) and can import
cropcore (installed, or on ``PYTHONPATH``)::

    .venv/bin/python scripts/record_roi_align.py [--output PATH]

The default output is ``conformance/cropcore_conformance/data/roi_align_onnxruntime.npz``; the
tests (tests/test_roi_align.py) compare cropcore with it bit for bit, and with ONNX Runtime live
where it is installed.

What is recorded, and how ONNX Runtime is driven so that its results are torchvision's:

- ``aligned`` is ONNX's ``coordinate_transformation_mode``: ``half_pixel`` for ``True``,
  ``output_half_pixel`` for ``False``;
- ``sampling_ratio <= 0`` is ONNX's 0 (adaptive);
- ONNX's ``spatial_scale`` is a float32 attribute, so every recorded scale is a float32 value
  (ONNX Runtime multiplies float64 boxes by the float32-rounded scale; torchvision by the double);
- ONNX Runtime runs one intra-op thread (its results do not depend on it: each box is one task);
- inputs it refuses are not recorded (flipped ``aligned`` boxes with an adaptive grid: ONNX
  Runtime fails with "Integer overflow", see docs/differences.md); the tests check that it still does.

Deterministic: a fixed seed, byte-reproducible output (``reference.npz.write_npz``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from reference.npz import write_npz  # noqa: E402

SEED = 20261203
DEFAULT_OUTPUT = (
    ROOT / "conformance" / "cropcore_conformance" / "data" / "roi_align_onnxruntime.npz"
)


def onnxruntime_roi_align(
    image, boxes, box_indices, output_size, spatial_scale, sampling_ratio, aligned, mode
):
    """ONNX Runtime's CPU RoiAlign on NCHW ``image`` (float32 or float64)."""
    import onnx  # noqa: F401  (onnx.helper below)
    import onnxruntime
    from onnx import TensorProto, helper

    kind = TensorProto.DOUBLE if image.dtype == np.float64 else TensorProto.FLOAT
    node = helper.make_node(
        "RoiAlign",
        ["X", "rois", "batch_indices"],
        ["Y"],
        mode=mode,
        output_height=int(output_size[0]),
        output_width=int(output_size[1]),
        sampling_ratio=max(int(sampling_ratio), 0),
        spatial_scale=float(spatial_scale),
        coordinate_transformation_mode="half_pixel" if aligned else "output_half_pixel",
    )
    graph = helper.make_graph(
        [node],
        "roi_align",
        [
            helper.make_tensor_value_info("X", kind, None),
            helper.make_tensor_value_info("rois", kind, None),
            helper.make_tensor_value_info("batch_indices", TensorProto.INT64, None),
        ],
        [helper.make_tensor_value_info("Y", kind, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3  # its max-mode warning on every session
    session = onnxruntime.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    feeds = {
        "X": np.ascontiguousarray(image),
        "rois": np.ascontiguousarray(boxes, image.dtype),
        "batch_indices": np.asarray(box_indices, np.int64),
    }
    return session.run(None, feeds)[0]


def cases(rng: np.random.Generator):
    """(name, image, boxes, box_indices, output_size, spatial_scale, sampling_ratio, aligned,
    mode): edge cases first, then seeded random ones."""
    scales = [1.0, 0.5, 0.25, 0.0625, float(np.float32(0.3)), 2.0]
    image = (np.arange(2 * 3 * 9 * 11, dtype=np.float32).reshape(2, 3, 9, 11) / 7).astype(
        np.float32
    )
    edge = {
        "whole_image": [[0, 0, 10, 8]],
        "outside_left_top": [[-6, -5, -1.5, -1.2]],
        "straddling_edges": [[-2, -3, 12, 11]],
        "zero_size": [[4, 4, 4, 4]],
        "subpixel": [[3.2, 2.1, 3.7, 2.4]],
        "beyond_right_bottom": [[10.5, 8.5, 14, 12]],
        "exactly_minus_one": [[-1, -1, 2, 2]],
        "exactly_size": [[11, 9, 11, 9]],
        "flipped": [[8, 7, 2, 1]],
    }
    for name, boxes in edge.items():
        for aligned in (False, True):
            for sampling_ratio in (-1, 1, 2, 5):
                if name == "flipped" and aligned and sampling_ratio <= 0:
                    continue  # ONNX Runtime fails (see the module docstring)
                for mode in ("avg", "max"):
                    yield (
                        f"{name}-{'aligned' if aligned else 'legacy'}-sr{sampling_ratio}-{mode}",
                        image,
                        np.array(boxes, np.float32),
                        np.array([1]),
                        (3, 4),
                        1.0,
                        sampling_ratio,
                        aligned,
                        mode,
                    )
    for i in range(120):
        dtype = np.float64 if i % 4 == 0 else np.float32
        batch, depth = int(rng.integers(1, 3)), int(rng.integers(1, 4))
        height, width = int(rng.integers(1, 17)), int(rng.integers(1, 17))
        image = rng.standard_normal((batch, depth, height, width)).astype(dtype)
        k = int(rng.integers(0, 7))
        xy = rng.uniform(-6, max(height, width) + 6, (k, 4))
        if rng.random() < 0.5:
            xy = np.round(xy * 2) / 2  # on pixel and half-pixel lines
        aligned = bool(rng.random() < 0.5)
        sampling_ratio = int(rng.choice([-1, 0, 1, 2, 3]))
        if aligned and sampling_ratio <= 0:  # keep x1 <= x2, y1 <= y2 (see the docstring)
            xy = np.concatenate(
                [np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], axis=1
            )
        yield (
            f"random{i:03d}",
            image,
            xy.astype(dtype),
            rng.integers(0, batch, k),
            (int(rng.integers(1, 8)), int(rng.integers(1, 8))),
            float(rng.choice(scales)),
            sampling_ratio,
            aligned,
            str(rng.choice(["avg", "max"])),
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    import onnx
    import onnxruntime

    rng = np.random.default_rng(SEED)
    entries: dict[str, np.ndarray] = {}
    meta_cases = []
    shared: dict[int, str] = {}
    for name, image, boxes, indices, size, scale, ratio, aligned, mode in cases(rng):
        result = onnxruntime_roi_align(image, boxes, indices, size, scale, ratio, aligned, mode)
        arrays = {}
        for key, value in {
            "image": image,
            "boxes": boxes,
            "box_indices": np.asarray(indices, np.int64),
            "expected": result,
        }.items():
            # an input shared by several cases (the edge cases' image) is stored once
            stored = shared.get(id(value)) if key == "image" else None
            if stored is None:
                stored = f"{name}/{key}"
                entries[stored] = value
                if key == "image":
                    shared[id(value)] = stored
            arrays[key] = stored
        meta_cases.append(
            {
                "id": name,
                "arrays": arrays,
                "output_size": list(size),
                "spatial_scale": scale,
                "sampling_ratio": ratio,
                "aligned": aligned,
                "mode": mode,
            }
        )
    meta = {
        "seed": SEED,
        "versions": {
            "onnxruntime": onnxruntime.__version__,
            "onnx": onnx.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "opset": 16,
        "cases": meta_cases,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    write_npz(args.output, {"meta": np.array(json.dumps(meta)), **entries})
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes): {len(meta_cases)} cases")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
