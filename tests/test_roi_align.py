"""roi_align and its image gradient: torchvision's and ONNX Runtime's RoIAlign, exactly.

- the numpy backend's vectorised kernels equal the oracle (torchvision's loop nests in Python,
  ``cropcore_numpy.roi_align_reference``) bit for bit, forward (avg, max) and gradient;
- both equal ONNX Runtime's CPU RoiAlign, bit for bit: the recorded vectors
  (scripts/record_roi_align.py) always, and live, fuzzed, where onnxruntime is installed;
- the gradient is the forward op's adjoint (checked in float64, independently of the oracle);
- torchvision's three box forms, both data formats, float16, and every refusal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import cropcore
from cropcore_numpy import roi_align_reference as oracle

DATA = (
    Path(__file__).resolve().parents[1]
    / "conformance"
    / "cropcore_conformance"
    / "data"
    / "roi_align_onnxruntime.npz"
)


def bits_equal(got: np.ndarray, expected: np.ndarray) -> bool:
    got, expected = np.asarray(got), np.asarray(expected)
    if got.dtype != expected.dtype or got.shape != expected.shape:
        return False
    view = {2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    return np.array_equal(got.view(view), expected.view(view))


def random_call(rng: np.random.Generator, dtype=np.float32, adaptive_flips: bool = True):
    batch, depth = int(rng.integers(1, 3)), int(rng.integers(1, 4))
    height, width = int(rng.integers(1, 15)), int(rng.integers(1, 15))
    image = rng.standard_normal((batch, depth, height, width)).astype(dtype)
    k = int(rng.integers(0, 6))
    xy = rng.uniform(-5, max(height, width) + 5, (k, 4))
    if rng.random() < 0.5:
        xy = np.round(xy * 2) / 2
    aligned = bool(rng.random() < 0.5)
    sampling_ratio = int(rng.choice([-1, 0, 1, 2, 3]))
    if not adaptive_flips and aligned and sampling_ratio <= 0:
        xy = np.concatenate([np.minimum(xy[:, :2], xy[:, 2:]), np.maximum(xy[:, :2], xy[:, 2:])], 1)
    return {
        "image": image,
        "boxes": xy.astype(dtype),
        "box_indices": rng.integers(0, batch, k),
        "output_size": (int(rng.integers(1, 6)), int(rng.integers(1, 6))),
        "spatial_scale": float(rng.choice([1.0, 0.5, 0.25, 0.0625, 0.3, 2.0])),
        "sampling_ratio": sampling_ratio,
        "aligned": aligned,
        "mode": str(rng.choice(["avg", "max"])),
    }


def run(c: dict, **changes) -> np.ndarray:
    c = {**c, **changes}
    return cropcore.roi_align(
        c["image"],
        c["boxes"],
        c["output_size"],
        c["spatial_scale"],
        c["sampling_ratio"],
        c["aligned"],
        box_indices=c["box_indices"],
        mode=c["mode"],
        backend="numpy",
    )


def run_oracle(c: dict) -> np.ndarray:
    return oracle.roi_align(
        c["image"],
        c["boxes"],
        c["box_indices"],
        c["output_size"],
        c["spatial_scale"],
        c["sampling_ratio"],
        c["aligned"],
        c["mode"],
    )


# -- exactness


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("seed", range(3))
def test_forward_is_bit_identical_to_torchvisions_loop_nests(seed, dtype):
    rng = np.random.default_rng(seed)
    for case in range(60):
        c = random_call(rng, dtype)
        assert bits_equal(run(c), run_oracle(c)), f"seed {seed} case {case}: {c}"


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("seed", range(3))
def test_gradient_is_bit_identical_to_torchvisions_loop_nests(seed, dtype):
    rng = np.random.default_rng(100 + seed)
    for case in range(40):
        c = random_call(rng)
        k = len(c["boxes"])
        grads = rng.standard_normal((k, c["image"].shape[1], *c["output_size"])).astype(dtype)
        if rng.random() < 0.3:  # several boxes on the same pixels: the order of the sums shows
            c["boxes"][:] = c["boxes"][:1]
        args = (c["spatial_scale"], c["sampling_ratio"], c["aligned"])
        got = cropcore.roi_align_grad_image(
            grads, c["boxes"], c["image"].shape, *args, box_indices=c["box_indices"]
        )
        expected = oracle.roi_align_grad_image(
            grads, c["boxes"], c["box_indices"], c["image"].shape, *args
        )
        assert bits_equal(got, expected), f"seed {seed} case {case}: {c}"


def test_gradient_is_the_adjoint_of_the_forward_op():
    """<roi_align(x), g> == <x, grad(g)>, in float64: the gradient, derived by hand from the
    forward op, checked without the oracle."""
    rng = np.random.default_rng(7)
    for case in range(40):
        c = random_call(rng, np.float64)
        c["mode"] = "avg"
        k = len(c["boxes"])
        g = rng.standard_normal((k, c["image"].shape[1], *c["output_size"]))
        forward = run(c)
        grad = cropcore.roi_align_grad_image(
            g,
            c["boxes"],
            c["image"].shape,
            c["spatial_scale"],
            c["sampling_ratio"],
            c["aligned"],
            box_indices=c["box_indices"],
        )
        left, right = float((forward * g).sum()), float((c["image"] * grad).sum())
        scale = float(np.abs(forward * g).sum() + np.abs(c["image"] * grad).sum()) + 1e-300
        assert abs(left - right) <= 1e-12 * scale, f"case {case}: {left} != {right}"


def _recorded():
    if not DATA.exists():
        return []
    with np.load(DATA) as data:
        meta = json.loads(str(data["meta"]))
        return [
            pytest.param(case, {k: data[v] for k, v in case["arrays"].items()}, id=case["id"])
            for case in meta["cases"]
        ]


RECORDED = _recorded()


def test_the_recorded_vectors_exist_and_cover_both_modes_and_alignments():
    cases = [p.values[0] for p in RECORDED]
    assert len(cases) >= 200
    assert {c["mode"] for c in cases} == {"avg", "max"}
    assert {c["aligned"] for c in cases} == {True, False}
    assert {c["sampling_ratio"] <= 0 for c in cases} == {True, False}


@pytest.mark.parametrize(("case", "arrays"), RECORDED)
def test_recorded_onnxruntime_vectors(case, arrays):
    got = cropcore.roi_align(
        arrays["image"],
        arrays["boxes"],
        tuple(case["output_size"]),
        case["spatial_scale"],
        case["sampling_ratio"],
        case["aligned"],
        box_indices=arrays["box_indices"],
        mode=case["mode"],
    )
    assert bits_equal(got, arrays["expected"])


@pytest.mark.onnxruntime
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_live_onnxruntime_fuzz(dtype):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from record_roi_align import onnxruntime_roi_align

    rng = np.random.default_rng(11 if dtype == np.float32 else 12)
    for case in range(150):
        c = random_call(rng, dtype, adaptive_flips=False)
        # ONNX's spatial_scale is a float32 attribute (see docs/differences.md)
        c["spatial_scale"] = float(np.float32(c["spatial_scale"]))
        expected = onnxruntime_roi_align(
            c["image"],
            c["boxes"],
            c["box_indices"],
            c["output_size"],
            c["spatial_scale"],
            c["sampling_ratio"],
            c["aligned"],
            c["mode"],
        )
        assert bits_equal(run(c), expected), f"case {case}: {c}"


@pytest.mark.onnxruntime
def test_onnxruntime_still_fails_where_cropcore_documents_zeros():
    """docs/differences.md: a box flipped by a bin or more with aligned=True and an adaptive grid
    has a negative sampling grid; ONNX Runtime (and torchvision's CPU kernel) fail on it,
    cropcore gives zeros, as torchvision's CUDA kernel does."""
    pytest.importorskip("onnxruntime")
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from record_roi_align import onnxruntime_roi_align

    image = np.ones((1, 1, 8, 8), np.float32)
    boxes = np.array([[6, 1, 1, 6]], np.float32)  # x flipped by 5 pixels, y in order
    with pytest.raises(Exception, match="overflow"):
        onnxruntime_roi_align(image, boxes, [0], (2, 2), 1.0, 0, True, "avg")
    got = cropcore.roi_align(image, boxes, 2, aligned=True, box_indices=[0])
    np.testing.assert_array_equal(got, np.zeros((1, 1, 2, 2), np.float32))


def test_hand_computed_values():
    """One bin, one sample at the box centre: plain bilinear interpolation, by hand."""
    image = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # pixel (y, x) = 4y + x
    # aligned=False: box [0.5, 0.5, 2.5, 1.5] (x1, y1, x2, y2): centre x = 1.5, y = 1.0
    out = cropcore.roi_align(image, [[0, 0.5, 0.5, 2.5, 1.5]], 1, sampling_ratio=1)
    assert out.item() == 4 * 1.0 + 1.5
    # aligned=True shifts by -0.5: centre x = 1.0, y = 0.5
    out = cropcore.roi_align(image, [[0, 0.5, 0.5, 2.5, 1.5]], 1, sampling_ratio=1, aligned=True)
    assert out.item() == 4 * 0.5 + 1.0
    # 2 x 2 samples of one bin over [0, 2] x [0, 2] at 0.5 and 1.5: their mean is at (1, 1)
    out = cropcore.roi_align(image, [[0, 0, 0, 2, 2]], 1, sampling_ratio=2)
    assert out.item() == 5.0
    # max mode (ONNX Runtime's): the largest weighted corner of any sample; one sample at
    # (y, x) = (1.5, 1.5): corners 5, 6, 9, 10 weighted 0.25 each: 2.5
    out = cropcore.roi_align(image, [[0, 1, 1, 2, 2]], 1, sampling_ratio=1, mode="max")
    assert out.item() == 2.5
    # a sample beyond -1 is empty: weight 0 at pixel 0 (a NaN there still shows)
    image[0, 0, 0, 0] = np.nan
    out = cropcore.roi_align(image, [[0, -9, -9, -8, -8]], 1, sampling_ratio=1)
    assert np.isnan(out.item())


# -- forms, layouts, dtypes


def test_the_three_box_forms_agree():
    rng = np.random.default_rng(3)
    image = rng.standard_normal((3, 2, 12, 10)).astype(np.float32)
    per_image = [rng.uniform(0, 10, (n, 4)).astype(np.float32) for n in (2, 0, 3)]
    indices = np.repeat([0, 1, 2], [2, 0, 3])
    flat = np.concatenate(per_image)
    five = np.concatenate([indices[:, None].astype(np.float32), flat], axis=1)
    a = cropcore.roi_align(image, per_image, (3, 2), 0.5, 2)
    b = cropcore.roi_align(image, five, (3, 2), 0.5, 2)
    c = cropcore.roi_align(image, flat, (3, 2), 0.5, 2, box_indices=indices)
    assert a.shape == (5, 2, 3, 2)
    assert bits_equal(a, b)
    assert bits_equal(a, c)


def test_channels_last_is_the_transposed_channels_first():
    rng = np.random.default_rng(4)
    for _ in range(10):
        c = random_call(rng)
        nchw = run(c)
        nhwc = cropcore.roi_align(
            np.ascontiguousarray(c["image"].transpose(0, 2, 3, 1)),
            c["boxes"],
            c["output_size"],
            c["spatial_scale"],
            c["sampling_ratio"],
            c["aligned"],
            box_indices=c["box_indices"],
            mode=c["mode"],
            data_format="channels_last",
        )
        assert bits_equal(nhwc, nchw.transpose(0, 2, 3, 1))
        k = len(c["boxes"])
        g = rng.standard_normal((k, c["image"].shape[1], *c["output_size"])).astype(np.float32)
        args = (c["spatial_scale"], c["sampling_ratio"], c["aligned"])
        first = cropcore.roi_align_grad_image(
            g, c["boxes"], c["image"].shape, *args, box_indices=c["box_indices"]
        )
        last = cropcore.roi_align_grad_image(
            np.ascontiguousarray(g.transpose(0, 2, 3, 1)),
            c["boxes"],
            c["image"].transpose(0, 2, 3, 1).shape,
            *args,
            box_indices=c["box_indices"],
            data_format="channels_last",
        )
        assert bits_equal(last, first.transpose(0, 2, 3, 1))


def test_float16_is_computed_in_float32_and_rounded_once():
    rng = np.random.default_rng(5)
    for _ in range(10):
        c = random_call(rng)
        half = c["image"].astype(np.float16)
        got = run(c, image=half)
        assert got.dtype == np.float16
        assert bits_equal(got, run(c, image=half.astype(np.float32)).astype(np.float16))


def test_torch_tensors_come_back_as_torch_tensors():  # (and run on the torch backend)
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    c = random_call(rng)
    got = cropcore.roi_align(
        torch.from_numpy(c["image"]),
        torch.from_numpy(c["boxes"]),
        c["output_size"],
        c["spatial_scale"],
        c["sampling_ratio"],
        c["aligned"],
        box_indices=torch.from_numpy(c["box_indices"]),
        mode=c["mode"],
    )
    assert isinstance(got, torch.Tensor)
    assert bits_equal(got.numpy(), run(c))


def test_no_boxes_gives_an_empty_result():
    image = np.ones((1, 2, 5, 5), np.float32)
    out = cropcore.roi_align(image, np.zeros((0, 5), np.float32), (3, 3))
    assert out.shape == (0, 2, 3, 3)
    grad = cropcore.roi_align_grad_image(
        np.zeros((0, 2, 3, 3), np.float32), np.zeros((0, 5), np.float32), (1, 2, 5, 5)
    )
    np.testing.assert_array_equal(grad, np.zeros((1, 2, 5, 5), np.float32))


# -- refusals


IMAGE = np.ones((2, 1, 6, 6), np.float32)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"image": IMAGE.astype(np.uint8)}, TypeError, "image must be float16, float32 or float64"),
        ({"image": IMAGE[0]}, ValueError, "image must be 4-D"),
        ({"boxes": [[0, 1, 1, 3, 3]], "box_indices": [0]}, ValueError, "box_indices must be None"),
        ({"boxes": [[1, 1, 3, 3]]}, ValueError, r"\(num_boxes, 4\) need box_indices"),
        ({"boxes": [[1, 1, 3]]}, ValueError, "boxes must have shape"),
        ({"boxes": [[0.5, 1, 1, 3, 3]]}, ValueError, "must be a whole number"),
        ({"boxes": [[2, 1, 1, 3, 3]]}, IndexError, r"in \[0, batch\) = \[0, 2\)"),
        ({"boxes": [[0, 1, np.nan, 3, 3]]}, ValueError, "boxes must be finite"),
        ({"boxes": [[0, 1, 1e39, 3, 3]]}, ValueError, "boxes must be finite"),
        ({"boxes": [[1, 1, 3, 3]], "box_indices": [0.0]}, TypeError, "box_indices must be an int"),
        ({"boxes": [[1, 1, 3, 3]], "box_indices": [0, 1]}, ValueError, "box_indices must have"),
        ({"boxes": [np.zeros((1, 3), np.float32)]}, ValueError, r"boxes\[0\] must have shape"),
        ({"output_size": 0}, ValueError, "output_size must be positive"),
        ({"output_size": (2, 2, 2)}, ValueError, "output_size must have 2 elements"),
        ({"output_size": "7"}, TypeError, "output_size must be an int"),
        ({"spatial_scale": float("inf")}, ValueError, "spatial_scale must be finite"),
        ({"spatial_scale": "1"}, TypeError, "spatial_scale must be a real number"),
        ({"sampling_ratio": 1.5}, TypeError, "sampling_ratio must be an integer"),
        ({"aligned": 1}, TypeError, "aligned must be True or False"),
        ({"mode": "mean"}, ValueError, "mode must be 'avg' or 'max'"),
        ({"data_format": "nchw"}, ValueError, "data_format must be"),
    ],
)
def test_bad_arguments_are_refused_with_the_argument_named(kwargs, error, match):
    call = {"image": IMAGE, "boxes": [[0, 1, 1, 3, 3]], "output_size": 2, **kwargs}
    with pytest.raises(error, match=match):
        cropcore.roi_align(call.pop("image"), call.pop("boxes"), call.pop("output_size"), **call)


def test_gradient_arguments_are_refused():
    grads = np.ones((1, 1, 2, 2), np.float32)
    with pytest.raises(TypeError, match="grads must be float16, float32 or float64"):
        cropcore.roi_align_grad_image(grads.astype(np.int32), [[0, 1, 1, 3, 3]], (1, 1, 6, 6))
    with pytest.raises(ValueError, match="grads has 1 crops but boxes has 2 rows"):
        cropcore.roi_align_grad_image(grads, [[0, 1, 1, 3, 3]] * 2, (1, 1, 6, 6))
    with pytest.raises(ValueError, match="grads depth 1 differs from image_shape depth 3"):
        cropcore.roi_align_grad_image(grads, [[0, 1, 1, 3, 3]], (1, 3, 6, 6))


def test_a_huge_adaptive_grid_is_refused_instead_of_running_for_hours():
    image = np.ones((1, 1, 8, 8), np.float32)
    with pytest.raises(ValueError, match="pass a positive sampling_ratio"):
        cropcore.roi_align(image, [[0, 0, 0, 1e6, 1e6]], 7)
    # the same box with a fixed grid runs (its samples are outside the image: zeros)
    out = cropcore.roi_align(image, [[0, 0, 0, 1e6, 1e6]], 7, sampling_ratio=2)
    assert out.shape == (1, 1, 7, 7)


def test_explain_knows_the_new_ops():
    """NumPy arrays go to numba where it is available (it implements roi_align), else numpy."""
    numba = next(b for b in cropcore.backends(probe=True) if b.name == "numba")
    expected = "numba" if numba.status == "available" else "numpy"
    for op, args in (
        ("roi_align", (IMAGE, [[0, 1, 1, 3, 3]], 2)),
        (
            "roi_align_grad_image",
            (np.ones((1, 1, 2, 2), np.float32), [[0, 1, 1, 3, 3]], (2, 1, 6, 6)),
        ),
    ):
        assert cropcore.explain(op, *args).backend == expected


# -- the other CPU backends


def _backend_or_skip(name: str) -> None:
    found = {b.name: b for b in cropcore.backends(probe=True)}
    if name not in found or found[name].status != "available":
        reason = found[name].reason if name in found else "not installed"
        pytest.skip(f"backend {name!r} is not available: {reason}")


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_backend_is_bit_identical_to_the_reference(backend, data_format, dtype):
    _backend_or_skip(backend)
    rng = np.random.default_rng(21)
    first = data_format == "channels_first"
    for case in range(40):
        c = random_call(rng)
        image = c["image"].astype(dtype)
        image = image if first else np.ascontiguousarray(image.transpose(0, 2, 3, 1))
        args = (c["output_size"], c["spatial_scale"], c["sampling_ratio"], c["aligned"])
        kwargs = {"box_indices": c["box_indices"], "data_format": data_format}
        results = [
            cropcore.roi_align(image, c["boxes"], *args, mode=c["mode"], backend=b, **kwargs)
            for b in (backend, "numpy")
        ]
        assert bits_equal(*results), f"forward case {case}: {c}"
        k, depth = len(c["boxes"]), c["image"].shape[1]
        grads = rng.standard_normal((k, depth, *c["output_size"])).astype(dtype)
        grads = grads if first else np.ascontiguousarray(grads.transpose(0, 2, 3, 1))
        results = [
            cropcore.roi_align_grad_image(
                grads, c["boxes"], image.shape, *args[1:], backend=b, **kwargs
            )
            for b in (backend, "numpy")
        ]
        assert bits_equal(*results), f"gradient case {case}: {c}"


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sampling_ratio", [3, -1])
def test_parallel_gradient_divides_where_the_count_is_no_power_of_two(
    backend, data_format, dtype, sampling_ratio
):
    """The parallel kernels with 9 samples per bin (or an adaptive grid: 1 to 16), 37 channels
    (vector loops with remainders) and boxes over the borders (corners that are one pixel)."""
    _backend_or_skip(backend)
    rng = np.random.default_rng(23)
    image = rng.standard_normal((2, 37, 24, 20)).astype(dtype)
    if data_format == "channels_last":
        image = np.ascontiguousarray(image.transpose(0, 2, 3, 1))
    xy = rng.uniform(-6, 26, (200, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 16, (200, 2))], 1).astype(dtype)
    kwargs = {"box_indices": rng.integers(0, 2, 200), "data_format": data_format}
    args = (boxes, 5, 1.0, sampling_ratio, True)
    results = [cropcore.roi_align(image, *args, backend=b, **kwargs) for b in (backend, "numpy")]
    assert bits_equal(*results)
    grads = rng.standard_normal(results[0].shape).astype(dtype)
    results = [
        cropcore.roi_align_grad_image(grads, boxes, image.shape, *args[2:], backend=b, **kwargs)
        for b in (backend, "numpy")
    ]
    assert bits_equal(*results)


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_backend_parallel_kernels_are_bit_identical_to_the_reference(backend, data_format):
    """Calls large enough for the parallel kernels, with many boxes on the same pixels (the order
    of the gradient's sums shows)."""
    _backend_or_skip(backend)
    rng = np.random.default_rng(22)
    image = rng.standard_normal((2, 40, 30, 34)).astype(np.float32)
    if data_format == "channels_last":
        image = np.ascontiguousarray(image.transpose(0, 2, 3, 1))
    xy = rng.uniform(-4, 30, (300, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 12, (300, 2))], 1).astype(np.float32)
    indices = rng.integers(0, 2, 300)
    kwargs = {"box_indices": indices, "data_format": data_format}
    for mode in ("avg", "max"):
        results = [
            cropcore.roi_align(image, boxes, 7, 0.5, 2, True, mode=mode, backend=b, **kwargs)
            for b in (backend, "numpy")
        ]
        assert bits_equal(*results), mode
    grads = rng.standard_normal(results[0].shape).astype(np.float32)
    results = [
        cropcore.roi_align_grad_image(grads, boxes, image.shape, 0.5, 2, True, backend=b, **kwargs)
        for b in (backend, "numpy")
    ]
    assert bits_equal(*results)


def test_torch_tensors_get_autograd_through_the_torch_backend():
    """gradcheck and gradgradcheck in float64; the gradient is roi_align_grad_image's, bit for
    bit; the boxes get none (as torchvision's); max mode has none and says so."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    image = torch.rand(2, 3, 9, 11, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 1.0, 1, 6, 7], [1, 2, 0.5, 9, 8], [0, -2, -1, 3, 2]], dtype=torch.float64
    )

    def pooled(x):
        return cropcore.roi_align(x, rois, (3, 2), 1.0, 2, True)

    assert torch.autograd.gradcheck(pooled, (image,))
    assert torch.autograd.gradgradcheck(pooled, (image,))
    out = pooled(image)
    grads = torch.rand_like(out)
    out.backward(grads)
    expected = cropcore.roi_align_grad_image(
        grads.numpy(), rois.numpy(), image.shape, 1.0, 2, True, backend="numpy"
    )
    assert bits_equal(image.grad.numpy(), expected)
    boxes = rois.clone().requires_grad_()
    cropcore.roi_align(image, boxes, 2, aligned=True).sum().backward()
    assert boxes.grad is None
    with pytest.raises(RuntimeError, match="mode='max' has no gradient"):
        cropcore.roi_align(image, rois, 2, mode="max").sum().backward()


def test_torch_compile_fullgraph_forward_and_backward():
    torch = pytest.importorskip("torch")
    rois = torch.tensor([[0, 1.0, 1, 6, 7], [1, 2, 0.5, 9, 8]])
    image = torch.rand(2, 3, 9, 11)

    def loss(x):
        return (cropcore.roi_align(x, rois, 3, 0.5, 2, True) ** 2).sum()

    eager = image.clone().requires_grad_()
    loss(eager).backward()
    compiled = image.clone().requires_grad_()
    value = torch.compile(loss, fullgraph=True, backend="aot_eager")(compiled)
    value.backward()
    assert value.item() == loss(image).item()
    assert torch.equal(compiled.grad, eager.grad)


def test_torch_roialign_module_matches_the_function():
    torch = pytest.importorskip("torch")
    import cropcore_torch

    layer = cropcore_torch.RoIAlign((2, 3), spatial_scale=0.5, sampling_ratio=2, aligned=True)
    image = torch.rand(2, 4, 10, 12)
    per_image = [torch.tensor([[1.0, 1, 9, 7]]), torch.tensor([[0.0, 2, 20, 18], [3, 3, 5, 5]])]
    got = layer(image, per_image)
    expected = cropcore.roi_align(image, per_image, (2, 3), 0.5, 2, True)
    assert got.shape == (3, 4, 2, 3)
    assert torch.equal(got, expected)
    assert "sampling_ratio=2" in repr(layer)


def test_torch_ops_are_safe_on_unchecked_box_values():
    """What a CUDA call gets when cropcore did not read the boxes (run here on CPU through the
    ops themselves): a bad image index gives a NaN result and no gradient, non-finite boxes
    sample nothing; no index is formed from either."""
    torch = pytest.importorskip("torch")
    import cropcore_torch.roi_align  # noqa: F401 (registers the ops)

    image = torch.rand(2, 3, 8, 8)
    boxes = torch.tensor([[1.0, 1, 5, 5], [1, 1, 5, 5], [float("nan"), 1, 5, 5], [1, 1, 5, 5]])
    indices = torch.tensor([0, 7, 1, -1])
    out = torch.ops.cropcore.roi_align(image, boxes, indices, 2, 2, 1.0, 2, True, False, True)
    assert torch.isnan(out[1]).all()
    assert torch.isnan(out[3]).all()
    good = cropcore.roi_align(image, boxes[:1], 2, 1.0, 2, True, box_indices=[0])
    assert torch.equal(out[0], good[0])
    assert torch.isfinite(out[2]).all()
    grads = torch.ones_like(out)
    grad = torch.ops.cropcore.roi_align_grad_image(
        grads, boxes, indices, 2, 8, 8, 1.0, 2, True, True
    )
    only_good = cropcore.roi_align_grad_image(
        grads[:1], boxes[:1], image.shape, 1.0, 2, True, box_indices=[0]
    )
    assert torch.equal(grad, only_good)
