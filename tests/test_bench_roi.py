"""``cropcore bench``'s roi_align workloads: Mask R-CNN's roi_align beside ONNX Runtime and
torchvision, on small inputs (nothing here asserts a timing).

The full workloads (``maskrcnn-7``, ``maskrcnn-14``: 2 x 256 x 200 x 272 NCHW, 1,000 boxes) take
seconds per call; these tests run :func:`cropcore.bench.maskrcnn_workload` at a small size.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import cropcore
from cropcore import bench
from cropcore.bench import implementations

pytest.importorskip("rich")

SMALL = bench.maskrcnn_workload(7, image_shape=(2, 24, 32, 8), num_boxes=30, name="maskrcnn-small")


def roi_backends() -> list[str]:
    found = {b.name: b for b in cropcore.backends()}
    return [
        name
        for name in bench.available_backends()
        if "roi_align" in found[name].ops and name in ("numpy", "numba", "torch")
    ]


def small_config(**changes) -> bench.BenchConfig:
    settings = {
        "workloads": [SMALL],
        "backends": roi_backends(),
        "repeat": 2,
        "warmup": 1,
        "copy_bytes": 1 << 20,
    }
    return bench.BenchConfig(**{**settings, **changes})


def fake_torchvision():
    """torchvision's roi_align and ``_roi_align_backward`` as cropcore's torch backend computes
    them (the same semantics, bit for bit), for a machine where torchvision's ops do not load."""
    torch = pytest.importorskip("torch")

    def roi_align(x, rois, size, spatial_scale, sampling_ratio, aligned):
        return cropcore.roi_align(
            x, rois, size, spatial_scale, sampling_ratio, aligned, backend="torch"
        )

    def backward(grad, rois, scale, pooled_h, pooled_w, n, c, h, w, ratio, aligned):
        return cropcore.roi_align_grad_image(
            grad, rois, (n, c, h, w), scale, ratio, aligned, backend="torch"
        )

    return torch, roi_align, backward


def test_the_maskrcnn_workloads_are_the_issues():
    for output in (7, 14):
        w = bench.WORKLOADS[f"maskrcnn-{output}"]
        assert w.family == "roi_align"
        assert w.ops == bench.ROI_OPS == ("forward", "grad_image")
        assert w.crop_size == (output, output)
        assert (w.num_boxes, w.spatial_scale, w.sampling_ratio, w.aligned) == (1000, 0.25, 2, True)
        image, boxes, box_indices = w.inputs()
        assert image.shape == (2, 256, 200, 272)  # NCHW
        assert image.dtype == np.float32
        assert boxes.shape == (1000, 4)
        sizes = boxes[:, 2:] - boxes[:, :2]
        assert sizes.min() >= 16
        assert sizes.max() <= 400
        assert box_indices.min() == 0
        assert box_indices.max() == 1
        assert w.grads().shape == (1000, 256, output, output)
        with pytest.raises(ValueError, match="op must be one of forward, grad_image"):
            w.bytes_moved("grad_boxes")


def test_the_byte_model_counts_roi_aligns_samples():
    crops = 4 * 30 * 8 * 7 * 7
    image = 4 * 2 * 24 * 32 * 8
    boxes = 30 * (16 + 8)
    assert SMALL.bytes_moved("forward") == crops + min(image, 4 * crops * 4) + boxes
    assert SMALL.bytes_moved("grad_image") == crops + image + boxes


def test_the_default_run_leaves_the_roi_align_workloads_out():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    config = bench.config_from_args(parser.parse_args([]))
    assert [w.name for w in config.workloads] == list(bench.DEFAULT_WORKLOADS)
    config = bench.config_from_args(parser.parse_args(["--workloads", "maskrcnn-7", "tiny"]))
    assert [w.name for w in config.workloads] == ["maskrcnn-7", "tiny"]


def test_every_roi_backend_equals_onnxruntime_bit_for_bit():
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    impls = [bench.onnxruntime_implementation(ort, onnx)]
    impls += [bench.cropcore_implementation(name) for name in roi_backends()]
    results = bench.time_case(SMALL, "forward", impls, repeat=2, warmup=1)
    assert [r.implementation for r in results] == ["onnxruntime", *roi_backends()]
    assert results[0].checked_against is None  # the reference
    for r in results[1:]:
        assert not r.error
        assert (r.checked_against, r.identical, r.max_abs_difference) == ("onnxruntime", True, 0.0)
        assert len(r.times) == 2


def test_a_backend_that_differs_from_onnxruntime_is_caught():
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    numpy_backend = bench.cropcore_implementation("numpy")

    def off_by_one_ulp(workload, op):
        call = numpy_backend.prepare(workload, op)
        return lambda: np.nextafter(call(), np.float32(np.inf))

    wrong = bench.Implementation("wrong", "cropcore", off_by_one_ulp, roi_ops=bench.ROI_OPS)
    impls = [bench.onnxruntime_implementation(ort, onnx), wrong]
    _, result = bench.time_case(SMALL, "forward", impls, repeat=1, warmup=1)
    assert result.identical is False
    assert 0 < result.max_abs_difference < 1e-5


def test_gradients_are_checked_against_the_numpy_backend():
    impls = [bench.cropcore_implementation(name) for name in roi_backends() if name != "numpy"]
    if not impls:
        pytest.skip("no roi_align backend but numpy")
    for r in bench.time_case(SMALL, "grad_image", impls, repeat=1, warmup=1):
        assert (r.checked_against, r.identical) == ("numpy", True)


def test_a_backend_without_roi_align_has_no_roi_rows():
    jax_like = bench.Implementation("crop-only", "cropcore", lambda w, op: lambda: None)
    assert not jax_like.runs(SMALL, "forward")
    assert jax_like.runs(bench.WORKLOADS["tiny"], "forward")
    numba = bench.cropcore_implementation("numpy")
    assert numba.runs(SMALL, "grad_image")
    assert not numba.runs(SMALL, "grad_boxes")


def test_a_run_times_the_roi_workload_with_onnxruntime_and_says_why_torchvision_is_absent(
    monkeypatch, tmp_path
):
    pytest.importorskip("onnxruntime")
    reason = "torchvision does not import: ModuleNotFoundError: No module named 'torchvision'"
    monkeypatch.setattr(implementations, "_import_roi_align", lambda: reason)
    config = small_config()
    report = bench.run_benchmark(config)
    rows = {(r.op, r.implementation): r for r in report.results}
    assert set(rows) == {
        *(
            (op, name)
            for op in bench.ROI_OPS
            for name in [*roi_backends(), "torchvision.roi_align"]
        ),
        ("forward", "onnxruntime"),
    }  # no grad_boxes; ONNX has no gradient
    for op in bench.ROI_OPS:
        absent = rows[op, "torchvision.roi_align"]
        assert absent.error == f"absent: {reason}"
        assert not absent.times
    assert report.ok
    ort_median = rows["forward", "onnxruntime"].median
    assert report.baseline("maskrcnn-small", "forward") == ("onnxruntime", ort_median)
    # no reference gradient: the image gradient is compared with the faster reference's forward
    assert report.baseline("maskrcnn-small", "grad_image") == ("onnxruntime forward", ort_median)
    path = bench.write_json(report, tmp_path / "bench.json")
    data = json.loads(path.read_text())
    for r in data["results"]:
        if r["times_s"]:
            assert r["baseline"]["against"] == (
                "onnxruntime" if r["op"] == "forward" else "onnxruntime forward"
            )
            assert r["baseline"]["ratio"] == pytest.approx(ort_median / r["median_s"])
    assert data["workloads"][0]["family"] == "roi_align"
    assert data["workloads"][0]["sampling_ratio"] == 2


def test_the_table_shows_the_absent_reference_and_the_ratio_basis(monkeypatch, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    monkeypatch.setattr(implementations, "_import_roi_align", lambda: "its ops do not load")
    from rich.console import Console

    report = bench.run_benchmark(small_config(backends=["numpy"]))
    bench.print_report(report, Console(width=250))
    out = capsys.readouterr().out
    assert "absent: its ops do not load" in out
    assert "vs TF/ref" in out
    assert "maskrcnn-small grad_image: ratios to onnxruntime forward" in out


def test_torchvision_where_it_loads_is_timed_and_compared_forward_and_backward(monkeypatch):
    torchvision = fake_torchvision()
    monkeypatch.setattr(implementations, "_import_roi_align", lambda: torchvision)
    monkeypatch.setattr(implementations, "_import_onnxruntime", lambda: "not installed")
    report = bench.run_benchmark(small_config(backends=["numpy"]))
    rows = {(r.op, r.implementation): r for r in report.results}
    for op in bench.ROI_OPS:
        r = rows[op, "torchvision.roi_align"]
        assert not r.error
        assert len(r.times) == 2
        assert (r.checked_against, r.identical) == ("numpy", True)
        assert report.baseline("maskrcnn-small", op) == ("torchvision.roi_align", r.median)
    assert rows["forward", "onnxruntime"].error == "absent: not installed"


def test_without_torchvision_the_import_says_why():
    result = implementations._import_roi_align()
    if not isinstance(result, str):
        pytest.skip("torchvision's ops load here")
    assert "torchvision" in result


def test_the_jax_backend_has_roi_rows_equal_to_the_numpy_backend():
    pytest.importorskip("jax")
    notes: list[str] = []
    jax_rows = implementations.jax_implementation(notes)
    numpy_rows = implementations.cropcore_implementation("numpy")
    for op in ("forward", "grad_image"):
        assert jax_rows.runs(SMALL, op)
        ours = np.asarray(jax_rows.prepare(SMALL, op)())
        reference = np.asarray(numpy_rows.prepare(SMALL, op)())
        assert ours.dtype == reference.dtype
        assert ours.shape == reference.shape
        assert np.array_equal(ours, reference)
    assert any("grad_image on maskrcnn-small" in note for note in notes)
