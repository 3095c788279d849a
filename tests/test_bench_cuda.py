"""benchmarks/bench_cuda.py and bench_cuda_roi.py, as far as they run without a GPU.

The GPU benchmark (run by step 5 of scripts/gpu_check.sh) times roi_align on the device; here
run its workload list, byte model, box conversion, references, command line, its exit without
a GPU, and its roi_align loop with NumPy standing in for CuPy and torch on the CPU for torch on
CUDA. Expected values are derived by hand (in the comments) or from ONNX Runtime.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import cropcore
from cropcore.bench import WORKLOADS as CPU_WORKLOADS
from cropcore.bench import maskrcnn_workload

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_cuda  # noqa: E402
import bench_cuda_roi  # noqa: E402
from bench_cuda_roi import RoiWorkload  # noqa: E402

ROI_NAMES = ["maskrcnn-7", "maskrcnn-7-grad-image", "maskrcnn-14", "maskrcnn-14-grad-image"]


def small(op: str, num_boxes: int = 12) -> RoiWorkload:
    """Mask R-CNN's arguments on a 2 x 8 x 30 x 40 NCHW map, 12 boxes, 7 x 7."""
    return RoiWorkload(f"small-{op}", maskrcnn_workload(7, (2, 30, 40, 8), num_boxes), op)


# --------------------------------------------------------------------------------------------------
# Workloads


def test_the_roi_workloads_are_cropcore_benchs_maskrcnn_ones_each_op():
    assert list(bench_cuda_roi.ROI_WORKLOADS) == ROI_NAMES
    for name, workload in bench_cuda_roi.ROI_WORKLOADS.items():
        base = name.removesuffix("-grad-image")
        assert workload.workload is CPU_WORKLOADS[base]
        assert workload.op == ("grad_image" if name.endswith("-grad-image") else "forward")
        assert workload.arguments == (0.25, 2, True)


def test_a_roi_workload_has_mask_rcnns_shapes_and_dtypes():
    image, boxes, box_indices, grads = bench_cuda_roi.ROI_WORKLOADS["maskrcnn-14"].inputs()
    assert image.shape == (2, 256, 200, 272)
    assert image.dtype == np.float32
    assert boxes.shape == (1000, 4)
    assert boxes.dtype == np.float32
    assert box_indices.shape == (1000,)
    assert box_indices.dtype == np.int64
    assert set(np.unique(box_indices)) == {0, 1}
    assert grads.shape == (1000, 256, 14, 14)
    assert grads.dtype == np.float32
    sides = boxes[:, 2:] - boxes[:, :2]  # proposals of 16 to 400 pixels a side
    assert sides.min() >= 16
    assert sides.max() <= 400


def test_the_roi_arrays_are_cropcore_benchs():
    image, boxes, box_indices = CPU_WORKLOADS["maskrcnn-7"].inputs()
    ours = bench_cuda_roi.ROI_WORKLOADS["maskrcnn-7-grad-image"].inputs()
    assert np.array_equal(ours[0], image)
    assert np.array_equal(ours[1], boxes)
    assert np.array_equal(ours[2], box_indices)
    assert np.array_equal(ours[3], CPU_WORKLOADS["maskrcnn-7"].grads())


def test_a_roi_workload_must_be_a_roi_align_op():
    with pytest.raises(ValueError, match="not a roi_align op"):
        RoiWorkload("x", CPU_WORKLOADS["roi"], "forward")
    with pytest.raises(ValueError, match="not a roi_align op"):
        RoiWorkload("x", CPU_WORKLOADS["maskrcnn-7"], "grad_boxes")


def test_a_run_without_workloads_times_roi_align_first_then_every_crop_workload():
    assert list(bench_cuda.ALL_WORKLOADS) == ROI_NAMES + list(bench_cuda.WORKLOADS)


# --------------------------------------------------------------------------------------------------
# Byte model

# A 1 x 2 x 10 x 10 map (N, C, H, W), output 2 x 2, spatial_scale 1/4, sampling_ratio 2, aligned.
HAND_BOXES = np.array(
    [
        # x 16/4 - 0.5 = 3.5 .. 48/4 - 0.5 = 11.5: columns 3 .. min(11 + 1, 9) = 7 columns;
        # y 1.5 .. 5.5: rows 1 .. 6 = 6 rows; 42 pixels (cap: 4 corners x 4 bins x 4 samples = 64)
        [16, 8, 48, 24],
        # -0.5 .. 9.5: every one of the 100 pixels, capped at 64
        [0, 0, 40, 40],
        # 49.5 .. 59.5: past the image (beyond H), no sample reads anything
        [200, 200, 240, 240],
    ],
    np.float32,
)


def test_touched_pixels_by_hand():
    touched = bench_cuda_roi.touched_pixels(HAND_BOXES, (10, 10), (2, 2), 0.25, 2, True)
    assert touched.tolist() == [42, 64, 0]


def test_the_forward_byte_model_by_hand():
    workload = RoiWorkload("hand", maskrcnn_workload(2, (1, 10, 10, 2), 3), "forward")
    # image read (42 + 64 + 0) pixels x 2 channels x 4 bytes = 848; result 3 x 2 x 2 x 2 x 4 = 96;
    # boxes 3 x 16 and int64 indices 3 x 8 = 72
    assert bench_cuda_roi.bytes_moved(workload, HAND_BOXES) == 848 + 96 + 72


def test_the_image_gradient_byte_model_by_hand():
    workload = RoiWorkload("hand", maskrcnn_workload(2, (1, 10, 10, 2), 3), "grad_image")
    # grads read 3 x 2 x 2 x 2 x 4 = 96; image gradient written 1 x 2 x 10 x 10 x 4 = 800; 72
    assert bench_cuda_roi.bytes_moved(workload, HAND_BOXES) == 96 + 800 + 72


def test_touched_pixels_unaligned_boxes_are_at_least_one_pixel():
    # aligned=False: a point box at x = y = 16/4 = 4 spans 4 .. 5, rows and columns 4 .. 6: 3 x 3
    point = np.array([[16, 16, 16, 16]], np.float32)
    assert bench_cuda_roi.touched_pixels(point, (10, 10), (2, 2), 0.25, 2, False).tolist() == [9]


def test_touched_pixels_adaptive_sampling_caps_at_four_corners_per_sample():
    # sampling_ratio -1, output 1 x 1, box 0 .. 1: ceil(1 / 1) = 1 sample per bin, at most 4
    # corners, though the rectangle 0 .. 2 holds 3 x 3 pixels
    box = np.array([[0, 0, 1, 1]], np.float32)
    assert bench_cuda_roi.touched_pixels(box, (10, 10), (1, 1), 1.0, -1, False).tolist() == [4]


def test_the_image_gradient_bytes_agree_with_cropcore_bench():
    # the same compulsory traffic (grads + image gradient + boxes and int64 indices) both ways
    for name in ("maskrcnn-7", "maskrcnn-14"):
        ours = bench_cuda_roi.ROI_WORKLOADS[f"{name}-grad-image"]
        boxes = ours.inputs()[1]
        assert bench_cuda_roi.bytes_moved(ours, boxes) == CPU_WORKLOADS[name].bytes_moved(
            "grad_image"
        )


# --------------------------------------------------------------------------------------------------
# torchvision's boxes, the references


def test_torchvision_rois_by_hand():
    boxes = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.float32)
    rois = bench_cuda_roi.torchvision_rois(boxes, np.array([1, 0], np.int64))
    assert rois.dtype == np.float32
    assert rois.tolist() == [[1, 1, 2, 3, 4], [0, 5, 6, 7, 8]]


@pytest.mark.parametrize(
    ("boxes", "indices", "argument"),
    [(np.zeros((2, 5)), np.zeros(2), "boxes"), (np.zeros((2, 4)), np.zeros(3), "box_indices")],
)
def test_torchvision_rois_refuses_bad_shapes_naming_the_argument(boxes, indices, argument):
    with pytest.raises(ValueError, match=f"^{argument} must be"):
        bench_cuda_roi.torchvision_rois(boxes, indices)


def test_torchvision_rois_select_the_same_boxes_as_box_indices():
    # cropcore.roi_align takes torchvision's (K, 5) form: the same result, or the columns are wrong
    workload = small("forward")
    image, boxes, box_indices, _ = workload.inputs()
    assert set(box_indices) == {0, 1}
    args = (7, *workload.arguments)
    rois = bench_cuda_roi.torchvision_rois(boxes, box_indices)
    ours = cropcore.roi_align(image, rois, *args, backend="numpy")
    theirs = cropcore.roi_align(image, boxes, *args, box_indices=box_indices, backend="numpy")
    assert np.array_equal(ours, theirs)


def test_the_onnxruntime_graph_on_the_cpu_equals_the_reference_bit_for_bit():
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    workload = small("forward", num_boxes=40)
    image, boxes, box_indices, grads = workload.inputs()
    session = bench_cuda_roi.onnxruntime_session(workload, ["CPUExecutionProvider"])
    feeds = {"X": image, "rois": boxes, "batch_indices": box_indices.astype(np.int64)}
    (got,) = session.run(None, feeds)
    expected = bench_cuda_roi.reference(workload, image, boxes, box_indices, grads)
    assert expected.shape == (40, 8, 7, 7)
    assert np.array_equal(got, expected)


def test_the_gradient_reference_is_the_forwards_adjoint():
    # <roi_align(x), g> == <x, roi_align_grad_image(g)>: the gradient call has the forward's
    # boxes, shape and arguments
    forward, backward = small("forward"), small("grad_image")
    image, boxes, box_indices, grads = backward.inputs()
    pooled = bench_cuda_roi.reference(forward, image, boxes, box_indices, grads)
    gradient = bench_cuda_roi.reference(backward, image, boxes, box_indices, grads)
    assert gradient.shape == image.shape
    assert gradient.dtype == np.float32
    left = np.vdot(pooled.astype(np.float64), grads.astype(np.float64))
    right = np.vdot(image.astype(np.float64), gradient.astype(np.float64))
    assert abs(left) > 1
    assert left == pytest.approx(right, rel=1e-5)


def test_compare_reports_bit_identical_or_the_count_and_largest_difference():
    expected = np.array([1.0, 2.0, np.nan, 4.0], np.float32)
    assert bench_cuda._compare(expected.copy(), expected) == "bit-identical"
    got = np.array([1.0, 2.5, np.nan, 4.0], np.float32)
    assert bench_cuda._compare(got, expected).startswith("1 of 4 differ, largest difference 0.5 ")
    assert "!=" in bench_cuda._compare(expected.astype(np.float64), expected)


# --------------------------------------------------------------------------------------------------
# The command


def test_the_parser_takes_the_roi_workloads():
    parser = bench_cuda.build_parser()
    (workloads,) = [a for a in parser._actions if a.dest == "workloads"]
    assert set(ROI_NAMES) <= set(workloads.choices)
    assert set(bench_cuda.WORKLOADS) <= set(workloads.choices)
    args = parser.parse_args(["--workloads", "maskrcnn-14-grad-image", "large-f32"])
    assert args.workloads == ["maskrcnn-14-grad-image", "large-f32"]
    with pytest.raises(SystemExit):
        parser.parse_args(["--workloads", "maskrcnn-28"])


def test_the_gpu_checks_bench_step_times_the_roi_workloads(tmp_path):
    # scripts/gpu_check.sh step 5: its arguments parse, and they leave the roi_align workloads in
    text = (ROOT / "scripts" / "gpu_check.sh").read_text()
    step = re.search(
        r"^run_step bench_cuda (\d+) \S+ \$PY benchmarks/bench_cuda\.py((?:.*\\\n)*.*)$", text, re.M
    )
    assert step is not None, "gpu_check.sh no longer runs benchmarks/bench_cuda.py in a run_step"
    command = step.group(2).replace("\\\n", " ").replace("$OUT", str(tmp_path))
    args = bench_cuda.build_parser().parse_args(shlex.split(command))
    workloads = args.workloads or list(bench_cuda.ALL_WORKLOADS)
    assert set(ROI_NAMES) <= set(workloads)
    assert workloads[: len(ROI_NAMES)] == ROI_NAMES  # first: a step cut short keeps them
    budget = int(re.search(r"^BUDGET=\$\{BUDGET:-(\d+)\}$", text, re.M).group(1))
    assert 0 < int(step.group(1)) < budget


def test_without_a_gpu_it_exits_with_status_2_and_says_why():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # no device, even on a machine with one
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT), *(str(p) for p in (ROOT / "backends").iterdir()), str(ROOT / "conformance")]
    )
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_cuda.py"), "--workloads", "maskrcnn-7"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("bench_cuda: needs an NVIDIA GPU with CuPy (")
    assert run.stdout == ""


# --------------------------------------------------------------------------------------------------
# The roi_align loop, with NumPy for CuPy and torch on the CPU for torch on CUDA


class _HostArray(np.ndarray):
    def get(self) -> np.ndarray:
        return np.asarray(self)


class _Event:
    def record(self) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        pass


def _stand_in_cupy() -> SimpleNamespace:
    device = SimpleNamespace(synchronize=lambda: None, id=0)
    properties = {"name": b"stand-in", "major": 0, "minor": 0}
    cuda = SimpleNamespace(
        Device=lambda: device,
        Event=_Event,
        get_elapsed_time=lambda start, end: (end.at - start.at) * 1e3,
        runtime=SimpleNamespace(getDeviceCount=lambda: 1, getDeviceProperties=lambda i: properties),
    )
    return SimpleNamespace(
        asarray=lambda a: np.asarray(a).view(_HostArray),
        cuda=cuda,
        float32=np.float32,
        ones=np.ones,
        empty_like=np.empty_like,
        copyto=np.copyto,
    )


@pytest.mark.parametrize("op", ["forward", "grad_image"])
def test_the_roi_loop_checks_times_and_reports_every_implementation(monkeypatch, op):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(bench_cuda, "_torch", lambda: torch)
    workload = small(op)
    args = argparse.Namespace(repeat=2, rounds=3)
    results = bench_cuda.run_roi_workload(
        workload, ["cupy", "torch"], _stand_in_cupy(), 100.0, args
    )
    rows = {r.implementation: r for r in results}
    labels = ["cupy", "torch (cuda)", "torchvision (cuda)"]
    assert list(rows) == labels + (["onnxruntime (cuda)"] if op == "forward" else [])
    # the cupy backend cannot take NumPy arrays: an error row, and the run goes on
    assert rows["cupy"].error
    assert not rows["cupy"].times_ms
    torch_row = rows["torch (cuda)"]
    assert torch_row.error == ""
    assert torch_row.check == "bit-identical"  # the torch backend is exact on the CPU
    assert len(torch_row.times_ms) == 3
    assert torch_row.median_ms > 0
    assert torch_row.bytes == bench_cuda_roi.bytes_moved(workload, workload.inputs()[1])
    if importlib.util.find_spec("torchvision") is None:
        assert rows["torchvision (cuda)"].skipped.startswith("torchvision: ")
    for row in results:
        line = bench_cuda.render_row(row, 100.0)
        assert line.startswith(f"{workload.name:<22} {row.implementation:<22} ")


def test_main_prints_each_workloads_rows_and_rewrites_the_json(monkeypatch, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(bench_cuda, "_torch", lambda: torch)
    monkeypatch.setitem(sys.modules, "cupy", _stand_in_cupy())
    monkeypatch.setitem(bench_cuda.ALL_WORKLOADS, "small-forward", small("forward"))
    monkeypatch.setitem(bench_cuda.ALL_WORKLOADS, "small-grad_image", small("grad_image"))
    path = tmp_path / "bench.json"
    argv = ["--workloads", "small-forward", "small-grad_image", "--backends", "torch"]
    argv += ["--repeat", "1", "--rounds", "2", "--copy-mib", "1", "--json", str(path)]
    assert bench_cuda.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "device: stand-in (compute capability 0.0)"
    assert out[3] == bench_cuda.HEADER
    rows = [line.split()[:3] for line in out[5:]]
    assert rows[0] == ["small-forward", "torch", "(cuda)"]
    assert ["small-grad_image", "torch", "(cuda)"] in rows
    assert sum(line.endswith("bit-identical") for line in out) == 2
    saved = json.loads(path.read_text())
    assert saved["device"] == "stand-in (compute capability 0.0)"
    torch_rows = [r for r in saved["results"] if r["implementation"] == "torch (cuda)"]
    assert [r["workload"] for r in torch_rows] == ["small-forward", "small-grad_image"]
    assert all(len(r["times_ms"]) == 2 and r["check"] == "bit-identical" for r in torch_rows)
