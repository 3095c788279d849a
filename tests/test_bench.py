"""``cropcore bench``: the command end to end on the tiny workload, its files, and its pieces.

The runs use ``--quick`` (3 rounds, 1 warm-up) on small inputs; nothing here asserts a timing.
One module-scoped run in-process on every CPU backend feeds most tests; one runs
``python -m cropcore bench`` in a subprocess, as a user would.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import cropcore
from cropcore import bench
from cropcore.bench import implementations, report
from cropcore.cli import main

Image = pytest.importorskip("PIL.Image")
pytest.importorskip("rich")

ROOT = Path(__file__).resolve().parents[1]
QUICK_TINY = ("bench", "--workloads", "tiny", "--quick", "--no-reference")


def cpu_backends() -> list[str]:
    return [name for name in ("numpy", "numba", "torch") if name in bench.available_backends()]


def run_python(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )


def assert_png(path: Path) -> None:
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width > 100
        assert im.height > 100


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> types.SimpleNamespace:
    """``cropcore bench`` on the tiny workload, every op, every CPU backend, in-process."""
    out = tmp_path_factory.mktemp("bench")
    backends = cpu_backends()
    capture = pytest.MonkeyPatch()
    stdout = out / "stdout.txt"
    with open(stdout, "w") as f:
        capture.setattr(sys, "stdout", f)
        try:
            status = main([*QUICK_TINY, "--backends", *backends, "--out", str(out)])
        finally:
            capture.undo()
    return types.SimpleNamespace(
        status=status,
        out=out,
        backends=backends,
        text=stdout.read_text(),
        data=json.loads((out / "bench.json").read_text()),
    )


# --------------------------------------------------------------------------------------------------
# The command, in-process


def test_the_tiny_run_succeeds(tiny_run):
    assert tiny_run.status == 0, tiny_run.text


def test_the_table_has_a_row_per_backend_and_op_and_its_columns(tiny_run):
    text = tiny_run.text
    for column in ("median", "IQR", "min", "vs TF", "GB/s", "of copy", "bit check"):
        assert column in text
    rows = [line for line in text.splitlines() if line.startswith("│ tiny")]
    assert len(rows) == len(bench.OPS) * len(tiny_run.backends)
    for op in bench.OPS:
        for backend in tiny_run.backends:
            assert any(f" {op} " in row and f" {backend} " in row for row in rows), (op, backend)
    assert "copy bandwidth:" in text
    assert "byte model:" in text
    assert f"wrote {tiny_run.out / 'bench.json'}" in text


def test_the_json_file_holds_every_requested_backend_and_op(tiny_run):
    data = tiny_run.data
    assert data["schema"] == bench.JSON_SCHEMA
    assert data["ok"] is True
    seen = {(r["implementation"], r["op"]) for r in data["results"]}
    assert seen == {(b, op) for b in tiny_run.backends for op in bench.OPS}
    assert [w["name"] for w in data["workloads"]] == ["tiny"]
    assert data["settings"]["repeat"] == 3
    assert data["settings"]["warmup"] == 1
    assert "--workloads tiny" in data["command"]
    assert "--no-reference" in data["command"]


def test_the_json_numbers_are_positive_and_consistent(tiny_run):
    data = tiny_run.data
    copy = data["copy_bandwidth"]
    assert copy["gbps"] > 0
    assert copy["bytes"] == 32 * 2**20
    assert copy["best_s"] == min(copy["times_s"]) > 0
    for r in data["results"]:
        assert r["error"] is None
        assert r["rounds"] == len(r["times_s"]) == 3
        assert all(t > 0 for t in r["times_s"])
        assert r["median_s"] == sorted(r["times_s"])[1]
        assert r["min_s"] <= r["q1_s"] <= r["median_s"] <= r["q3_s"] <= r["max_s"]
        assert r["iqr_s"] == pytest.approx(r["q3_s"] - r["q1_s"])
        assert r["bytes_per_call"] == bench.WORKLOADS["tiny"].bytes_moved(r["op"]) > 0
        assert r["gbps"] == pytest.approx(r["bytes_per_call"] / r["median_s"] / 1e9)
        assert r["fraction_of_copy_bandwidth"] == pytest.approx(r["gbps"] / copy["gbps"])
        assert r["ratio_to_tensorflow"] is None  # --no-reference


def test_every_backend_matches_the_numpy_reference_bit_for_bit(tiny_run):
    for r in tiny_run.data["results"]:
        if r["implementation"] == "numpy":
            assert r["check"]["against"] is None  # it is the reference
        else:
            assert r["check"] == {
                "against": "numpy",
                "bit_identical": True,
                "max_abs_difference": 0.0,
            }


def test_the_json_describes_the_machine(tiny_run):
    machine = tiny_run.data["machine"]
    assert machine["cores"] >= 1
    assert machine["cpu"]
    assert machine["versions"]["numpy"] == np.__version__
    assert machine["versions"]["cropcore"] == cropcore.__version__
    assert len(machine["load_average"]) == len(machine["load_average_start"]) == 3
    if "numba" in tiny_run.backends:
        assert machine["numba_threading_layer"] in {"tbb", "omp", "workqueue"}
        assert machine["numba_threads"] >= 1


def test_the_chart_is_a_png(tiny_run):
    assert_png(tiny_run.out / "bench.png")


def test_without_matplotlib_write_chart_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setattr(report, "_import_matplotlib", lambda: None)  # as if not installed
    result = bench.run_benchmark(
        bench.BenchConfig([bench.WORKLOADS["tiny"]], ["forward"], ["numpy"], repeat=2, warmup=1,
                          references=False, copy_bytes=2**20),
    )  # fmt: skip
    with pytest.raises(bench.MissingDependencyError, match=r'pip install "cropcore\[bench\]"'):
        bench.write_chart(result, tmp_path / "chart.png")
    assert not (tmp_path / "chart.png").exists()


def test_without_matplotlib_the_command_writes_the_table_and_json_and_says_so_once(
    tmp_path, capsys, monkeypatch
):
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)  # makes importing it fail
    status = main([*QUICK_TINY, "--ops", "forward", "--backends", "numpy", "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert status == 0, captured
    assert "│ tiny     │ forward │ numpy" in captured.out
    assert json.loads((tmp_path / "bench.json").read_text())["ok"] is True
    assert not (tmp_path / "bench.png").exists()
    notes = [line for line in captured.out.splitlines() if line.startswith("note: no chart")]
    assert notes == [
        "note: no chart: the chart needs matplotlib, which is not installed: pip install "
        '"cropcore[bench]" (or pass --no-chart)'
    ]
    assert (captured.out + captured.err).count("cropcore[bench]") == 1
    assert "Traceback" not in captured.err


def test_a_custom_shape_is_benchmarked_as_the_custom_workload(tmp_path, capsys):
    status = main(
        [
            "bench", "--shape", "2,20,24,3", "--boxes", "5", "--crop", "4,6", "--dtype", "uint8",
            "--box-kind", "augmentation", "--ops", "forward", "grad_image", "--backends", "numpy",
            "--quick", "--no-reference", "--no-chart", "--json", str(tmp_path / "custom.json"),
        ]
    )  # fmt: skip
    assert status == 0, capsys.readouterr()
    data = json.loads((tmp_path / "custom.json").read_text())
    (workload,) = data["workloads"]
    assert workload["name"] == "custom"
    assert workload["image_shape"] == [2, 20, 24, 3]
    assert workload["dtype"] == "uint8"
    assert workload["num_boxes"] == 5
    assert workload["crop_size"] == [4, 6]
    assert {(r["workload"], r["op"]) for r in data["results"]} == {
        ("custom", "forward"),
        ("custom", "grad_image"),
    }
    assert "--shape 2,20,24,3" in data["command"]
    assert not (tmp_path / "cropcore-bench").exists()  # --json given, --no-chart: no --out dir
    assert "custom: 2x20x24x3 uint8, 5 augmentation boxes -> 4x6" in capsys.readouterr().out


def test_a_backend_that_differs_fails_the_run(register_backend, tmp_path, capsys):
    register_backend("zeros")  # returns zeros: wrong
    status = main([*QUICK_TINY, "--ops", "forward", "--backends", "numpy", "zeros",
                   "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1
    assert "DIFFERS from numpy" in out
    assert "FAILED: zeros (tiny forward: differs from numpy)" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    (zeros,) = [r for r in data["results"] if r["implementation"] == "zeros"]
    assert zeros["check"]["bit_identical"] is False
    assert data["ok"] is False


# --------------------------------------------------------------------------------------------------
# Usage errors: exit status 2, one line naming the argument


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--shape", "1,2,3"], "argument --shape: must be 4 positive integers"),
        (["--shape", "1,0,3,4"], "argument --shape"),
        (["--crop", "7", "--shape", "1,8,8,1"], "argument --crop: must be 2 positive integers"),
        (["--boxes", "-1", "--shape", "1,8,8,1"], "argument --boxes: must be a positive integer"),
        (["--repeat", "0"], "argument --repeat: must be a positive integer, got '0'"),
        (["--repeat", "x"], "argument --repeat: must be a positive integer, got 'x'"),
        (["--max-seconds", "nan"], "argument --max-seconds: must be a positive number"),
        (["--workloads", "huge"], "argument --workloads: invalid choice: 'huge'"),
        (["--ops", "backward"], "argument --ops: invalid choice: 'backward'"),
        (["--dtype", "complex64", "--shape", "1,8,8,1"], "argument --dtype: invalid choice"),
        (["--backends", "nosuch"], "argument --backends: unknown backend 'nosuch'; installed:"),
        (["--boxes", "5"], "argument --boxes: describes the custom workload; give --shape too"),
        (["--shape", "1000,10000,10000,3"], "argument --shape: the custom workload needs about"),
    ],
)
def test_bad_arguments_are_refused_naming_the_argument(args, named, tmp_path, capsys):
    status = main(["bench", *args, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("cropcore bench: error: ")
    assert named in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_unavailable_backend_is_refused_with_the_reason(register_backend, capsys):
    register_backend("broken", check=lambda: "needs a quantum computer")
    assert main(["bench", "--backends", "broken"]) == 2
    assert "argument --backends: backend 'broken' cannot run here: needs a quantum computer" in (
        capsys.readouterr().err
    )


# --------------------------------------------------------------------------------------------------
# As a user runs it


def test_python_m_cropcore_bench_in_a_subprocess(tmp_path):
    result = run_python("-m", "cropcore", *QUICK_TINY, "--ops", "forward", "--backends", "numpy",
                        cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "│ tiny     │ forward │ numpy" in result.stdout
    out = tmp_path / "cropcore-bench"  # the default --out
    assert f"wrote {out / 'bench.json'}" in result.stdout
    assert json.loads((out / "bench.json").read_text())["ok"] is True
    assert_png(out / "bench.png")
    assert "Traceback" not in result.stderr


def test_one_op_with_the_no_tensorflow_alias_and_only_a_json_file(tmp_path, capsys):
    status = main(
        [
            "bench", "--workloads", "tiny", "--ops", "grad_boxes", "--quick", "--no-tensorflow",
            "--backends", "numpy", "--json", str(tmp_path / "b.json"), "--no-chart",
        ]
    )  # fmt: skip
    assert status == 0, capsys.readouterr()
    data = json.loads((tmp_path / "b.json").read_text())
    assert [(r["implementation"], r["op"]) for r in data["results"]] == [("numpy", "grad_boxes")]
    assert sorted(os.listdir(tmp_path)) == ["b.json"]


def test_the_grad_image_floor_script_runs(tmp_path):
    pytest.importorskip("numba")
    result = run_python(
        str(ROOT / "benchmarks" / "grad_image_floor.py"), "--repeat", "1", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    for name in ("numba", "ideal", "read"):
        assert re.search(rf"^  {name} +median +[0-9.]+ ms +min +[0-9.]+ ms", result.stdout, re.M)


def test_the_grad_image_floor_bound_does_tfs_arithmetic():
    """The ``ideal`` kernel of benchmarks/grad_image_floor.py, whose time docs/performance.md calls
    a bound, does TF's float32 arithmetic: checked against the same sums written out in NumPy."""
    pytest.importorskip("numba")
    spec = importlib.util.spec_from_file_location(
        "floor", ROOT / "benchmarks" / "grad_image_floor.py"
    )
    floor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(floor)
    crop_width, depth = 3, 5
    rng = np.random.default_rng(0)
    grads = rng.standard_normal(crop_width * depth, dtype=np.float32)
    y_lerp, x_lerp = np.float32(0.3), np.float32(0.6)
    scratch = np.zeros((1, 2 * (crop_width + 2) * depth), np.float32)
    floor._ideal(grads, scratch, crop_width, depth, y_lerp, x_lerp)
    one = np.float32(1)
    expected = np.zeros_like(scratch[0])
    for target, y_weight in ((0, one - y_lerp), ((crop_width + 2) * depth, y_lerp)):
        for x in range(crop_width):
            for d in range(depth):
                weighted = np.float32(y_weight * grads[x * depth + d])
                left = target + x * depth + d
                expected[left] = np.float32(expected[left] + np.float32((one - x_lerp) * weighted))
                expected[left + depth] = np.float32(expected[left + depth] + x_lerp * weighted)
    np.testing.assert_array_equal(scratch[0], expected)


def test_importing_the_bench_module_loads_no_framework_nor_rich():
    code = (
        "import sys, cropcore.bench, cropcore.cli\n"
        "cropcore.cli.build_parser()\n"
        "heavy = ('torch', 'numba', 'tensorflow', 'torchvision', 'cupy', 'rich', 'matplotlib', 'PIL')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# The pieces


def test_the_byte_model():
    roi = bench.WORKLOADS["roi"]
    crops = 512 * 14 * 14 * 256 * 4
    image = 2 * 64 * 64 * 256 * 4  # fewer than 4 reads per sample: each pixel counted once
    boxes = 512 * 20
    assert roi.bytes_moved("forward") == crops + image + boxes
    assert roi.bytes_moved("grad_image") == crops + image + boxes
    assert roi.bytes_moved("grad_boxes") == crops + image + boxes + 512 * 16
    tiny = bench.custom_workload((1, 100, 100, 1), 1, (2, 2))  # 4 samples of a large image
    assert tiny.bytes_moved("forward") == 16 + 4 * 4 * 4 + 20


def test_statistics_of_a_result():
    result = bench.Result("w", "forward", "x", "cropcore", times=[4.0, 1.0, 3.0, 2.0], bytes=10)
    assert result.median == 2.5
    assert result.quartiles == (1.75, 3.25)
    assert result.iqr == 1.5
    assert result.gbps == 10 / 2.5 / 1e9
    assert math.isnan(bench.Result("w", "forward", "x", "cropcore").median)


def test_forward_results_are_compared_with_tensorflow_and_gradients_with_numpy():
    assert bench.reference_for("forward", ["tensorflow", "numba"]) == "tensorflow"
    assert bench.reference_for("forward", ["numba"]) == "numpy"
    assert bench.reference_for("grad_image", ["tensorflow", "numba"]) == "numpy"
    assert bench.reference_for("grad_boxes", ["tensorflow", "numba"]) == "numpy"


def test_max_seconds_stops_the_rounds_after_the_minimum():
    slow = bench.Implementation("slow", "cropcore", lambda w, op: lambda: np.zeros(1))
    steps = []
    (result,) = bench.time_case(
        bench.WORKLOADS["tiny"], "forward", [slow], repeat=50, warmup=1, max_seconds=1e-9,
        on_step=lambda description, n: steps.append(n),
    )  # fmt: skip
    assert len(result.times) == bench.MIN_ROUNDS
    assert sum(steps) == 1 + 50  # the warm-up and every round, skipped ones included


def test_an_implementation_that_raises_is_reported_and_the_others_still_run():
    def prepare(workload, op):
        raise RuntimeError("out of cheese")

    broken = bench.Implementation("broken", "cropcore", prepare)
    numpy_backend = bench.cropcore_implementation("numpy")
    broken_result, numpy_result = bench.time_case(
        bench.WORKLOADS["tiny"], "forward", [broken, numpy_backend], repeat=2, warmup=1
    )
    assert broken_result.error == "RuntimeError: out of cheese"
    assert not broken_result.times
    assert len(numpy_result.times) == 2
    assert not numpy_result.error


def fake_roi_align(input, boxes, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """torchvision's roi_align for ``sampling_ratio=1, aligned=True``, inside the image only."""
    import torch

    assert (spatial_scale, sampling_ratio, aligned) == (1.0, 1, True)
    image = input.numpy().astype(np.float64)
    height, width = image.shape[2:]
    out = np.zeros((len(boxes), image.shape[1], *output_size))
    for k, (index, x1, y1, x2, y2) in enumerate(boxes.numpy().astype(np.float64)):
        ys = y1 - 0.5 + (np.arange(output_size[0]) + 0.5) * (y2 - y1) / output_size[0]
        xs = x1 - 0.5 + (np.arange(output_size[1]) + 0.5) * (x2 - x1) / output_size[1]
        y0 = np.clip(np.floor(ys).astype(int), 0, height - 1)
        x0 = np.clip(np.floor(xs).astype(int), 0, width - 1)
        y1_, x1_ = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
        ly, lx = (ys - y0)[:, None], (xs - x0)[None, :]
        im = image[int(index)]
        top = im[:, y0][:, :, x0] * (1 - lx) + im[:, y0][:, :, x1_] * lx
        bottom = im[:, y1_][:, :, x0] * (1 - lx) + im[:, y1_][:, :, x1_] * lx
        out[k] = top * (1 - ly) + bottom * ly
    return torch.from_numpy(out.astype(np.float32))


def test_roi_align_rois_put_torchvisions_samples_on_tensorflows():
    pytest.importorskip("torch")
    import torch

    workload = bench.custom_workload((2, 30, 40, 3), 6, (5, 7), box_kind="augmentation")
    reference = bench.torchvision_implementation(torch, fake_roi_align)
    numpy_backend = bench.cropcore_implementation("numpy")
    roi_align, numpy_result = bench.time_case(
        workload, "forward", [reference, numpy_backend], repeat=2, warmup=1
    )
    assert roi_align.implementation == "torchvision.roi_align"
    assert roi_align.kind == "reference"
    assert roi_align.checked_against is None
    assert roi_align.identical is None
    assert roi_align.max_abs_difference < 1e-4  # but its samples fall on TF's positions
    assert len(roi_align.times) == len(numpy_result.times) == 2


def test_torchvision_is_a_reference_row_where_it_is_installed(monkeypatch, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(implementations, "_import_roi_align", lambda: (torch, fake_roi_align))
    monkeypatch.setattr(implementations, "_import_tensorflow", lambda: None)
    status = main(["bench", "--workloads", "tiny", "--quick", "--backends", "numpy",
                   "--out", str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert "torchvision.roi_align" in out
    assert "not compared" in out
    data = json.loads((tmp_path / "bench.json").read_text())
    roi_align = [r for r in data["results"] if r["implementation"] == "torchvision.roi_align"]
    assert [r["op"] for r in roi_align] == ["forward"]  # no gradients: forward only
    assert roi_align[0]["kind"] == "reference"
    assert roi_align[0]["check"]["bit_identical"] is None


@pytest.mark.tensorflow
def test_tensorflow_is_the_forward_reference_where_it_is_installed():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    tf = pytest.importorskip("tensorflow")
    implementations = [bench.tensorflow_implementation(tf), bench.cropcore_implementation("numpy")]
    for op in bench.OPS:
        tf_result, numpy_result = bench.time_case(
            bench.WORKLOADS["tiny"], op, implementations, repeat=2, warmup=1
        )
        assert not tf_result.error
        assert len(tf_result.times) == 2
        if op == "forward":
            assert tf_result.checked_against is None  # the reference
            assert numpy_result.checked_against == "tensorflow"
            assert numpy_result.identical
        else:
            assert tf_result.checked_against == "numpy"
