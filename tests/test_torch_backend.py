"""The torch backend: TensorFlow's results (through the NumPy reference) on torch tensors, with autograd.

The NumPy backend is bit-identical with TensorFlow's CPU kernel (tests/test_tensorflow_vectors.py and
the live comparisons), so here the torch backend is compared with it bit for bit, on both of its CPU
paths: the compiled loops (``native``) and the torch ops (``torch-ops``, what runs on CUDA).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cropcore  # noqa: E402
import cropcore_torch  # noqa: E402
from cropcore import hostmem, native  # noqa: E402
from cropcore.errors import OutputTooLargeError  # noqa: E402
from cropcore.registry import registry  # noqa: E402
from cropcore_torch import CropAndResize, Cropping2D, _build, _native, kernels, samples  # noqa: E402

DTYPES = ["uint8", "uint16", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]
FORMATS = ["channels_last", "channels_first"]
METHODS = ["bilinear", "nearest"]


@pytest.fixture(params=["native", "torch-ops"])
def path(request, cropcore_env):
    """Run the test on the compiled CPU loops, then on the torch ops."""
    if request.param == "native":
        cropcore_env.set("CROPCORE_TORCH_NATIVE", "1")
        if not _native.available():
            pytest.skip(f"no compiled CPU kernels here: {_native.status()}")
    else:
        cropcore_env.set("CROPCORE_TORCH_NATIVE", "0")
    # Whatever the arrays, automatic selection can only pick torch (conftest restores the list).
    cropcore.set_priority(["torch"])
    return request.param


# -- helpers ---------------------------------------------------------------------------------------


def assert_bits_equal(got, expected):
    """Bit-identical (+0.0 and -0.0 differ), with NaN equal to NaN."""
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    expected = np.asarray(expected)
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
    if got.dtype.kind == "f":
        nan = np.isnan(expected)
        np.testing.assert_array_equal(np.isnan(got), nan)
        uint = np.dtype(f"uint{8 * got.itemsize}")
        mismatch = got[~nan].view(uint) != expected[~nan].view(uint)
        assert not mismatch.any(), (
            f"{mismatch.sum()} of {mismatch.size} values differ; first: "
            f"{got[~nan][mismatch][:5]} != {expected[~nan][mismatch][:5]}"
        )
    else:
        np.testing.assert_array_equal(got, expected)


def to_format(x: np.ndarray, data_format: str) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if data_format == "channels_first" else x


def from_format(x, data_format: str):
    if isinstance(x, torch.Tensor):
        return x.permute(0, 2, 3, 1) if data_format == "channels_first" else x
    return x.transpose(0, 2, 3, 1) if data_format == "channels_first" else x


def random_image(rng, shape, dtype: str) -> np.ndarray:
    if dtype.startswith("float"):
        return (rng.normal(size=shape) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -(2**40)), min(info.max, 2**40), shape, endpoint=True).astype(
        dtype
    )


def random_boxes(rng, n: int) -> np.ndarray:
    """Flipped, extrapolated, exactly on the edges, zero-height: TF's quirks in one batch."""
    boxes = rng.uniform(-0.5, 1.5, (n, 4))
    boxes[::3] = rng.choice([0.0, 1.0, 0.5, 0.25, -0.0], (len(boxes[::3]), 4))
    boxes[1::4, 2] = boxes[1::4, 0]
    return boxes.astype(np.float32)


def make_case(seed: int, dtype: str = "float32", depth: int = 3):
    rng = np.random.default_rng(seed)
    image = random_image(rng, (2, 7, 9, depth), dtype)
    boxes = random_boxes(rng, 12)
    box_indices = rng.integers(0, 2, 12).astype(np.int32)
    return image, boxes, box_indices


def reference(op: str, *args, **kwargs):
    return getattr(cropcore, op)(*args, **kwargs, backend="numpy")


# -- the plugin ------------------------------------------------------------------------------------


def test_torch_backend_is_registered_with_autograd():
    backend = registry.get("torch")
    assert backend is not None
    assert backend.distribution == "cropcore"
    assert backend.info.array_library == "torch"
    assert backend.info.autograd is True
    assert backend.info.devices == ("cpu", "cuda", "meta")
    assert backend.info.unchecked_values is True
    assert set(backend.info.dtypes) == {*DTYPES, "bfloat16"}  # bfloat16: issue 16
    assert backend.ops == (
        "crop_and_resize",
        "crop_and_resize_grad_image",
        "crop_and_resize_grad_boxes",
        "crop2d",
        "roi_align",
        "roi_align_grad_image",
    )
    assert backend.probe().status == "available"


def test_importing_the_plugin_does_not_import_torch():
    code = (
        "import sys, cropcore, cropcore_torch; cropcore.backends(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_native_status_says_what_runs():
    assert "compiled CPU kernels" in _native.status()


@pytest.mark.parametrize("ratio_first", [False, True])
def test_compiled_sample_tables_equal_the_torch_ones(ratio_first):
    lib = _native.library()
    if lib is None:
        pytest.skip(_native.status())
    rng = np.random.default_rng(16)
    boxes = np.concatenate(
        [
            random_boxes(rng, 40),
            rng.choice([-1e-40, 1e-39, -0.0, 1e-45, 3e38, -3e38], (8, 4)),
            rng.uniform(-1e4, 1e4, (8, 4)),
        ]
    ).astype(np.float32)
    boxes = torch.from_numpy(boxes)
    for height, width, crop_size in [
        (7, 9, (5, 4)),
        (1, 58, (1, 8)),
        (58, 2, (8, 1)),
        (3, 3, (1, 1)),
    ]:
        native = _native._box_samples(lib, boxes, height, width, crop_size, ratio_first=ratio_first)
        expected = kernels.box_samples(boxes, height, width, crop_size, ratio_first=ratio_first)
        for got_axis, expected_axis in zip(native, expected, strict=True):
            for got, want in zip(got_axis, expected_axis, strict=True):
                assert_bits_equal(got, want.numpy())


def test_native_loops_are_built_from_their_c_file_and_the_shared_arithmetic_header():
    sources = _build._sources()  # what the build cache is keyed on
    assert set(sources) == {"_native.c", "_native_planes.c", "_native_small.c", native.HEADER}
    assert f'#include "{native.HEADER}"' in sources["_native.c"]
    assert '#include "_native_planes.c"' in sources["_native.c"]  # one translation unit
    assert '#include "_native_small.c"' in sources["_native.c"]
    assert "cropcore_bilinear(" in sources["_native.c"]


def test_sizes_beyond_the_shared_arithmetic_run_the_torch_ops(monkeypatch):
    if not _native.available():
        pytest.skip(_native.status())
    assert _native._in_range(1 << 24, 1, (1, (1 << 31) - 1))
    assert not _native._in_range((1 << 24) + 1, 1, (1, 1))
    monkeypatch.setattr(_native, "_MAX_IMAGE_SIDE", 4)  # this image is then "too large"
    calls = []
    monkeypatch.setattr(_native, "_sample_tables", lambda *a, **k: calls.append(a))
    image, boxes, box_indices = make_case(21)
    got = cropcore.crop_and_resize(
        torch.from_numpy(image), boxes, box_indices, (3, 3), backend="torch"
    )
    assert not calls
    assert_bits_equal(got, reference("crop_and_resize", image, boxes, box_indices, (3, 3)))


def test_without_a_c_compiler_the_torch_ops_run_instead(monkeypatch, caplog, cropcore_env):
    monkeypatch.setattr(_build, "_state", {})  # forget the library loaded in this process
    monkeypatch.setenv("CC", "")
    monkeypatch.setenv("PATH", "")
    cropcore_env.set("CROPCORE_TORCH_NATIVE", "1")
    image, boxes, box_indices = make_case(13)
    with caplog.at_level("WARNING", logger="cropcore.torch"):
        got = cropcore.crop_and_resize(torch.from_numpy(image), boxes, box_indices, (3, 3))
    assert not _native.available()
    assert "no C compiler found" in _native.status()
    assert "runs without its compiled CPU kernels" in caplog.text
    assert_bits_equal(got, reference("crop_and_resize", image, boxes, box_indices, (3, 3)))


def _crop_in_child(seed):
    image, boxes, box_indices = make_case(seed)
    return cropcore.crop_and_resize(torch.from_numpy(image), boxes, box_indices, (9, 9)).numpy()


def test_forked_workers_do_not_inherit_a_dead_thread_pool(path, monkeypatch):
    # A DataLoader worker is a fork of a process whose pool threads do not exist in the child.
    monkeypatch.setattr(_native, "_MIN_WORK_PER_THREAD", 1)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        expected = _crop_in_child(14)  # starts the pool in this process
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(1) as pool:
            got = pool.apply_async(_crop_in_child, (14,)).get(timeout=120)
    finally:
        torch.set_num_threads(threads)
    assert_bits_equal(got, expected)


# -- forward: bit-identical with the reference -----------------------------------------------------


@pytest.mark.parametrize("depth", [3, 6])  # NCHW: read in place / transposed (_FEW_CHANNELS)
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_equals_reference(path, dtype, method, data_format, depth):
    image, boxes, box_indices = make_case(1, dtype, depth)
    for crop_size in [(5, 4), (1, 3), (3, 1), (1, 1)]:
        expected = reference("crop_and_resize", image, boxes, box_indices, crop_size, method, -1.5)
        got = cropcore.crop_and_resize(
            torch.from_numpy(to_format(image, data_format)),
            torch.from_numpy(boxes),
            torch.from_numpy(box_indices),
            crop_size,
            method,
            -1.5,
            data_format=data_format,
        )
        assert isinstance(got, torch.Tensor)
        assert got.dtype == torch.float32
        assert_bits_equal(from_format(got, data_format), expected)


@pytest.mark.parametrize("data_format", FORMATS)
def test_non_contiguous_and_channels_last_memory_inputs(path, data_format):
    image, boxes, box_indices = make_case(2, "float32", depth=4)
    expected = reference("crop_and_resize", image[:, 1:, ::2], boxes, box_indices, (6, 5))
    base = torch.from_numpy(to_format(image, data_format))
    views = {
        "sliced": base[:, :, 1:, ::2] if data_format == "channels_first" else base[:, 1:, ::2],
    }
    if data_format == "channels_first":
        views["channels_last"] = views["sliced"].contiguous(memory_format=torch.channels_last)
    for name, view in views.items():
        got = cropcore.crop_and_resize(view, boxes, box_indices, (6, 5), data_format=data_format)
        assert_bits_equal(from_format(got, data_format), expected)
        if name == "channels_last":
            assert got.is_contiguous(memory_format=torch.channels_last)
        else:
            assert got.is_contiguous()


def test_flipped_numpy_view_is_accepted(path):
    image, boxes, box_indices = make_case(3)
    flipped = image[:, ::-1, ::-1]  # negative strides
    expected = reference("crop_and_resize", flipped, boxes, box_indices, (4, 4))
    got = cropcore.crop_and_resize(flipped, boxes, box_indices, (4, 4), backend="torch")
    assert isinstance(got, np.ndarray)
    assert_bits_equal(got, expected)


@pytest.mark.parametrize(
    "boxes",
    [
        [[-3e4, -2e4, 5e4, 1e5]],  # huge, finite
        [[1e30, 0, -1e30, 1]],  # the span overflows float32 in TF's scale: NaN coordinates
        [[-3e38, -3e38, 3e38, 3e38]],  # TF segfaults here; cropcore extrapolates
        [[0, 0, 1, 1]],  # the edge overshoot of H=58, crop 8
    ],
)
def test_extreme_coordinates_equal_reference_without_crashing(path, boxes):
    image = np.arange(58 * 3, dtype=np.float32).reshape(1, 58, 3, 1)
    boxes = np.array(boxes, np.float32)
    for method in METHODS:
        for crop_size in [(8, 2), (1, 1), (3, 5)]:
            expected = reference("crop_and_resize", image, boxes, [0], crop_size, method, -7.0)
            got = cropcore.crop_and_resize(
                torch.from_numpy(image), boxes, [0], crop_size, method, -7.0
            )
            assert_bits_equal(got, expected)


def test_edge_overshoot_extrapolates_the_last_row(path):
    got = cropcore.crop_and_resize(
        torch.ones(1, 58, 2, 1), [[0, 0, 1, 1]], [0], (8, 1), "bilinear", -1
    )
    assert got.flatten().tolist() == [1, 1, 1, 1, 1, 1, 1, -1]


def test_nearest_rounds_half_away_from_zero(path):
    image = torch.arange(5, dtype=torch.float32).reshape(1, 5, 1, 1)
    got = cropcore.crop_and_resize(
        image, [[0.625, 0, 0.625, 0], [0.125, 0, 0.125, 0]], [0, 0], (1, 1), "nearest"
    )
    assert got.flatten().tolist() == [3.0, 1.0]


@pytest.mark.parametrize("data_format", FORMATS)
def test_empty_boxes_and_depth_zero(path, data_format):
    for image_shape, n in [((2, 5, 6, 3), 0), ((2, 5, 6, 0), 3), ((0, 5, 6, 3), 0)]:
        image = np.zeros(image_shape, np.float32)
        boxes = np.full((n, 4), 0.5, np.float32)
        indices = np.zeros(n, np.int32)
        t = torch.from_numpy(to_format(image, data_format))
        got = cropcore.crop_and_resize(t, boxes, indices, (3, 4), data_format=data_format)
        expected_shape = (n, 3, 4, image_shape[3])
        assert tuple(from_format(got, data_format).shape) == expected_shape
        grads = torch.zeros(got.shape)
        gi = cropcore.crop_and_resize_grad_image(
            grads, boxes, indices, tuple(t.shape), data_format=data_format
        )
        assert gi.shape == t.shape
        assert not gi.any()
        gb = cropcore.crop_and_resize_grad_boxes(grads, t, boxes, indices, data_format=data_format)
        assert gb.shape == (n, 4)
        assert not gb.any()


def test_non_finite_pixels_propagate_as_in_tensorflow(path):
    image = np.array([[np.inf, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    got = cropcore.crop_and_resize(torch.from_numpy(image), [[0, 0, 1, 1]], [0], (2, 2))
    assert_bits_equal(got, reference("crop_and_resize", image, [[0, 0, 1, 1]], [0], (2, 2)))
    assert np.isnan(got[0, 0, 0, 0].item())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_subnormal_values_are_flushed_as_tensorflow_flushes_them(path, dtype):
    # TF runs with flush-to-zero and denormals-are-zero: tiny pixels, boxes and gradients.
    rng = np.random.default_rng(15)
    image = (rng.normal(size=(2, 6, 7, 3)) * 3e-38).astype(dtype)
    boxes = random_boxes(rng, 10)
    boxes[::4, 0] = -1e-40  # a subnormal coordinate counts as 0: inside the image
    box_indices = rng.integers(0, 2, 10).astype(np.int32)
    grads = (rng.normal(size=(10, 4, 5, 3)) * 1e-37).astype(np.float32)
    for method in METHODS:
        got = cropcore.crop_and_resize(torch.from_numpy(image), boxes, box_indices, (4, 5), method)
        expected = reference("crop_and_resize", image, boxes, box_indices, (4, 5), method)
        assert_bits_equal(got, expected)
        got = cropcore.crop_and_resize_grad_image(
            torch.from_numpy(grads), boxes, box_indices, image.shape, method, dtype=dtype
        )
        expected = reference(
            "crop_and_resize_grad_image",
            grads,
            boxes,
            box_indices,
            image.shape,
            method,
            dtype=dtype,
        )
        assert_bits_equal(got, expected)
    for crop_size in [(4, 5), (1, 5)]:
        g = grads[:, : crop_size[0]]
        got = cropcore.crop_and_resize_grad_boxes(
            torch.from_numpy(g), torch.from_numpy(image), boxes, box_indices
        )
        expected = reference("crop_and_resize_grad_boxes", g, image, boxes, box_indices)
        assert_bits_equal(got, expected)


def test_large_calls_split_over_threads_and_stream_equal_reference(path, monkeypatch):
    # Thresholds lowered so that a small call takes the multi-threaded, non-temporal-store path
    # (compiled loops) or is worked through box by box (torch kernels on CPU).
    monkeypatch.setattr(_native, "_MIN_WORK_PER_THREAD", 1)
    monkeypatch.setattr(_native, "_STREAM_BYTES", 0)
    monkeypatch.setattr(samples, "_CPU_CHUNK_ELEMENTS", 1)  # the chunking of every torch kernel
    image, boxes, box_indices = make_case(4, "uint8", depth=5)
    grads = np.random.default_rng(4).normal(size=(12, 6, 7, 5)).astype(np.float32)
    expected = reference("crop_and_resize", image, boxes, box_indices, (6, 7))
    for data_format in FORMATS:
        got = cropcore.crop_and_resize(
            torch.from_numpy(to_format(image, data_format)),
            boxes,
            box_indices,
            (6, 7),
            data_format=data_format,
        )
        assert_bits_equal(from_format(got, data_format), expected)
    image = image.astype(np.float32)
    got = cropcore.crop_and_resize_grad_image(
        torch.from_numpy(grads), boxes, box_indices, image.shape
    )
    expected = reference("crop_and_resize_grad_image", grads, boxes, box_indices, image.shape)
    assert_bits_equal(got, expected)
    got = cropcore.crop_and_resize_grad_boxes(
        torch.from_numpy(grads), torch.from_numpy(image), boxes, box_indices
    )
    expected = reference("crop_and_resize_grad_boxes", grads, image, boxes, box_indices)
    assert_bits_equal(got, expected)


def test_recycled_result_memory_never_overwrites_a_live_result(path, monkeypatch):
    monkeypatch.setattr(hostmem.pool(), "min_bytes", 0)
    image = torch.rand(1, 20, 20, 3)
    first = cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [0], (30, 30))
    kept = first.clone()
    for _ in range(3):
        other = cropcore.crop_and_resize(image * 2, [[0, 0, 1, 1]], [0], (30, 30))
        del other  # its memory is recycled...
    assert torch.equal(first, kept)  # ...but never the memory of a result still in use


# -- gradient ops ----------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [3, 6])
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_grad_image_equals_reference(path, dtype, method, data_format, depth):
    _, boxes, box_indices = make_case(5)
    image_shape = (2, 7, 9, depth)
    grads = np.random.default_rng(5).normal(size=(12, 4, 6, depth)).astype(np.float32)
    expected = reference(
        "crop_and_resize_grad_image", grads, boxes, box_indices, image_shape, method, dtype=dtype
    )
    got = cropcore.crop_and_resize_grad_image(
        torch.from_numpy(to_format(grads, data_format)),
        boxes,
        box_indices,
        to_format(np.empty(image_shape), data_format).shape,
        method,
        data_format=data_format,
        dtype=getattr(torch, dtype),
    )
    assert_bits_equal(from_format(got, data_format), expected)


@pytest.mark.parametrize("depth", [3, 6])
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_grad_boxes_equals_reference(path, dtype, data_format, depth):
    image, boxes, box_indices = make_case(6, dtype, depth)
    for crop_size in [(4, 5), (1, 3), (3, 1), (1, 1)]:
        grads = np.random.default_rng(6).normal(size=(12, *crop_size, depth)).astype(np.float32)
        expected = reference("crop_and_resize_grad_boxes", grads, image, boxes, box_indices)
        got = cropcore.crop_and_resize_grad_boxes(
            torch.from_numpy(to_format(grads, data_format)),
            torch.from_numpy(to_format(image, data_format)),
            boxes,
            box_indices,
            data_format=data_format,
        )
        assert_bits_equal(got, expected)


# -- autograd --------------------------------------------------------------------------------------


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_autograd_gives_tensorflows_image_and_box_gradients(path, dtype, method, data_format):
    image, boxes, box_indices = make_case(7, dtype)
    upstream = np.random.default_rng(7).normal(size=(12, 5, 4, 3)).astype(np.float32)
    t_image = torch.from_numpy(to_format(image, data_format)).requires_grad_()
    t_boxes = torch.from_numpy(boxes).requires_grad_()
    out = cropcore.crop_and_resize(
        t_image, t_boxes, box_indices, (5, 4), method, data_format=data_format
    )
    out.backward(torch.from_numpy(to_format(upstream, data_format)))
    assert t_image.grad.dtype == t_image.dtype
    expected_image = reference(
        "crop_and_resize_grad_image", upstream, boxes, box_indices, image.shape, method, dtype=dtype
    )
    # TF: the box gradient of a nearest crop is the bilinear one.
    expected_boxes = reference("crop_and_resize_grad_boxes", upstream, image, boxes, box_indices)
    assert_bits_equal(from_format(t_image.grad, data_format), expected_image)
    assert_bits_equal(t_boxes.grad, expected_boxes)


def test_integer_image_gets_no_gradient_but_boxes_do(path):
    image = torch.tensor([[1, 2], [3, 4]], dtype=torch.uint8).reshape(1, 2, 2, 1)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    out = cropcore.crop_and_resize(image, boxes, [0], (3, 3))
    out.sum().backward()
    assert image.grad is None
    assert boxes.grad.tolist() == [[3.0, 1.5, 3.0, 1.5]]  # TF 2.21's value (notes §2.4)


def test_nearest_forward_gives_bilinear_box_gradient(path):
    image = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 2, 1)
    grads = {}
    for method in METHODS:
        boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
        cropcore.crop_and_resize(image, boxes, [0], (3, 3), method).sum().backward()
        grads[method] = boxes.grad
    assert grads["nearest"].tolist() == grads["bilinear"].tolist() == [[3.0, 1.5, 3.0, 1.5]]


def test_box_gradient_flows_back_through_the_cast_to_float32(path):
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9]], dtype=torch.float64, requires_grad=True)
    image = torch.arange(2 * 6 * 5 * 2, dtype=torch.float32).reshape(2, 6, 5, 2)
    cropcore.crop_and_resize(image, boxes, [1], (3, 4)).sum().backward()
    assert boxes.grad.dtype == torch.float64
    expected = reference(
        "crop_and_resize_grad_boxes",
        np.ones((1, 3, 4, 2), np.float32),
        image.numpy(),
        boxes.detach().numpy(),
        [1],
    )
    np.testing.assert_array_equal(boxes.grad.numpy(), expected.astype(np.float64))


def _away_from_grid(rng, n: int, height: int, width: int) -> np.ndarray:
    """TF's testGradRandomBoxes selection: coordinates in [-0.5, 1.5], 2e-3 away from grid anchors."""
    boxes = np.empty((n, 4))
    for k, size in enumerate([height, width, height, width]):
        anchors = np.linspace(0, 1, size)
        for i in range(n):
            while True:
                v = rng.uniform(-0.5, 1.5)
                if np.min(np.abs(anchors - v)) > 2e-3:
                    boxes[i, k] = v
                    break
    return boxes


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("data_format", FORMATS)
def test_gradcheck_image_float64(path, method, data_format):
    rng = np.random.default_rng(8)
    boxes = torch.from_numpy(_away_from_grid(rng, 3, 4, 5)).float()
    image = torch.rand(2, 4, 5, 2, dtype=torch.float64)
    image = to_format(image.numpy(), data_format)
    image = torch.from_numpy(image).requires_grad_()

    def crop(img):
        return cropcore_torch.crop_and_resize(
            img, boxes, torch.tensor([0, 1, 1]), (3, 2), method, data_format=data_format
        )

    # The crops are float32 (as TF's), so the finite differences need a wide step; the crop is
    # linear in the image, so the step costs no accuracy.
    assert torch.autograd.gradcheck(crop, (image,), eps=1e-2, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("crop_size", [(1, 2), (2, 3), (3, 3)])
def test_gradcheck_boxes_float64_away_from_grid_points(path, crop_size):
    rng = np.random.default_rng(9)
    image = torch.arange(2 * 4 * 2 * 2, dtype=torch.float32).reshape(2, 4, 2, 2)
    boxes = torch.from_numpy(_away_from_grid(rng, 2, 4, 2)).requires_grad_()

    def crop(b):
        return cropcore_torch.crop_and_resize(image, b, torch.tensor([0, 1]), crop_size)

    # TF's own test: delta 1e-3, boxes 2e-3 from grid points, Jacobians within 2e-3.
    assert torch.autograd.gradcheck(crop, (boxes,), eps=1e-3, atol=2e-3, rtol=1e-3)


def test_double_backward_through_the_boxes_raises_a_clear_error(path):
    # (w.r.t. the image it works since issue 16: tests/test_torch_pytorch_users.py)
    image = torch.rand(1, 4, 4, 1, requires_grad=True)
    boxes = torch.tensor([[0.1, 0.1, 0.8, 0.9]], requires_grad=True)
    out = cropcore.crop_and_resize(image, boxes, [0], (3, 3))
    (grad_image,) = torch.autograd.grad(out.square().sum(), image, create_graph=True)
    with pytest.raises(RuntimeError, match=r"w\.r\.t\. the image only, not the boxes"):
        grad_image.sum().backward()


def test_no_grad_and_inference_mode(path):
    image = torch.rand(2, 5, 6, 3, requires_grad=True)
    expected = cropcore.crop_and_resize(image.detach(), [[0, 0, 1, 1]], [1], (4, 4))
    with torch.no_grad():
        got = cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [1], (4, 4))
    assert not got.requires_grad
    assert torch.equal(got, expected)
    with torch.inference_mode():
        got = cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [1], (4, 4))
        assert got.is_inference()
        assert torch.equal(got, expected)
        modules = torch.nn.Sequential(
            Cropping2D(1, "channels_last"),
            CropAndResize(2, data_format="channels_last", boxes=[[0, 0, 1, 1]]),
        )
        assert modules(image).shape == (2, 2, 2, 3)


def test_grads_are_deterministic(path):
    rng = np.random.default_rng(10)
    image = torch.from_numpy(rng.normal(size=(2, 16, 16, 3)).astype(np.float32))
    boxes = torch.from_numpy(rng.uniform(0, 1, (64, 4)).astype(np.float32))
    indices = torch.from_numpy(rng.integers(0, 2, 64))
    results = []
    for _ in range(3):
        img = image.clone().requires_grad_()
        bx = boxes.clone().requires_grad_()
        cropcore.crop_and_resize(img, bx, indices, (9, 9)).square().sum().backward()
        results.append((img.grad, bx.grad))
    for img_grad, box_grad in results[1:]:
        assert torch.equal(img_grad, results[0][0])
        assert torch.equal(box_grad, results[0][1])


# -- the custom ops --------------------------------------------------------------------------------


def test_custom_ops_pass_torch_library_opcheck(path):
    image = torch.rand(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    boxes = torch.tensor([[0.1, 0.2, 0.9, 0.7], [0.5, -0.2, 0.3, 1.1]], requires_grad=True)
    indices = torch.tensor([1, 0], dtype=torch.int32)
    for channels_first, img in [
        (True, image),
        (False, image.detach().permute(0, 2, 3, 1).contiguous()),
    ]:
        args = (img, boxes, indices, 4, 3, "bilinear", 0.0, channels_first)
        torch.library.opcheck(torch.ops.cropcore.crop_and_resize.default, args)
    grads = torch.rand(2, 3, 4, 3)
    torch.library.opcheck(
        torch.ops.cropcore.crop_and_resize_grad_image.default,
        (grads, boxes.detach(), indices, 2, 6, 5, 3, "nearest", torch.float32, True),
    )
    torch.library.opcheck(
        torch.ops.cropcore.crop_and_resize_grad_boxes.default,
        (grads, image.detach(), boxes.detach(), indices, True),
    )


def test_custom_ops_refuse_inconsistent_shapes_without_crashing(path):
    image = torch.rand(1, 4, 4, 2)
    with pytest.raises((ValueError, IndexError, RuntimeError)):
        torch.ops.cropcore.crop_and_resize(
            image, torch.rand(3, 4), torch.zeros(2, dtype=torch.int32), 2, 2, "bilinear", 0.0, False
        )
    with pytest.raises((ValueError, RuntimeError)):
        torch.ops.cropcore.crop_and_resize_grad_boxes(
            torch.rand(1, 2, 2, 5),
            image,
            torch.rand(1, 4),
            torch.zeros(1, dtype=torch.int32),
            False,
        )
    with pytest.raises(TypeError, match="image dtype"):
        torch.ops.cropcore.crop_and_resize(
            image.bool(),
            torch.rand(1, 4),
            torch.zeros(1, dtype=torch.int32),
            2,
            2,
            "bilinear",
            0.0,
            False,
        )


# -- validation: refused the reference's way, never a crash ----------------------------------------


BAD_CALLS = {
    "nan box": (dict(boxes=[[0, 0, float("nan"), 1]]), ValueError, "finite"),
    "inf box": (dict(boxes=[[0, float("-inf"), 1, 1]]), ValueError, "finite"),
    "1e40 overflows float32": (
        dict(boxes=torch.tensor([[0, 0, 1e40, 1]], dtype=torch.float64)),
        ValueError,
        "finite",
    ),
    "box index too large": (dict(box_indices=[2]), IndexError, r"\[0, 2\)"),
    "negative box index": (dict(box_indices=[-1]), IndexError, r"\[0, 2\)"),
    "boxes not (n, 4)": (dict(boxes=[[0, 0, 1]]), ValueError, "num_boxes, 4"),
    "rank-1 empty boxes": (
        dict(boxes=torch.zeros(0), box_indices=torch.zeros(0)),
        ValueError,
        "num_boxes, 4",
    ),
    "indices not 1-D": (dict(box_indices=[[0]]), ValueError, "1-D"),
    "indices and boxes differ": (dict(box_indices=[0, 1]), ValueError, "must match"),
    "float indices": (dict(box_indices=torch.tensor([0.0])), TypeError, "integer"),
    "complex boxes": (dict(boxes=torch.zeros(1, 4, dtype=torch.complex64)), TypeError, "real"),
    "bool image": (dict(image=torch.zeros(2, 4, 4, 1, dtype=torch.bool)), TypeError, "dtype"),
    # (bfloat16 images are accepted since issue 16: tests/test_torch_pytorch_users.py)
    "uint32 image": (dict(image=torch.zeros(2, 4, 4, 1, dtype=torch.uint32)), TypeError, "dtype"),
    "3-D image": (dict(image=torch.zeros(4, 4, 1)), ValueError, "4-D"),
    "zero-height image": (dict(image=torch.zeros(2, 0, 4, 1)), ValueError, "positive"),
    "zero crop": (dict(crop_size=(0, 3)), ValueError, "positive"),
    "crop with 3 elements": (dict(crop_size=(2, 2, 2)), ValueError, "two elements"),
    "unknown method": (dict(method="Bilinear"), ValueError, "case-sensitive"),
    "unknown data format": (dict(data_format="nhwc"), ValueError, "data_format"),
    "huge crop": (dict(crop_size=(2**31 - 1, 2**31 - 1)), OutputTooLargeError, "bytes"),
}


@pytest.mark.parametrize("name", list(BAD_CALLS))
def test_bad_inputs_are_refused_like_the_reference(path, name):
    changes, error, match = BAD_CALLS[name]
    call = dict(
        image=torch.rand(2, 4, 4, 1),
        boxes=[[0.0, 0.0, 1.0, 1.0]],
        box_indices=[0],
        crop_size=(2, 2),
        method="bilinear",
        data_format="channels_last",
    )
    call.update(changes)
    with pytest.raises(error, match=match):
        cropcore.crop_and_resize(**call, backend="torch")
    numpy_call = {
        k: (v.numpy() if isinstance(v, torch.Tensor) and v.dtype != torch.bfloat16 else v)
        for k, v in call.items()
    }
    if numpy_call["image"] is not call["image"]:
        with pytest.raises(error):
            cropcore.crop_and_resize(**numpy_call, backend="numpy")


def test_gradient_ops_refuse_nan_boxes_where_tensorflow_crashes(path):
    grads = torch.ones(1, 2, 2, 1)
    with pytest.raises(ValueError, match="finite"):
        cropcore.crop_and_resize_grad_image(grads, [[float("nan"), 1, 1, 1]], [0], (1, 3, 3, 1))
    with pytest.raises(ValueError, match="finite"):
        cropcore.crop_and_resize_grad_boxes(
            grads, torch.ones(1, 3, 3, 1), [[float("nan"), 1, 1, 1]], [0]
        )


# -- the unvalidated entry point -------------------------------------------------------------------


@pytest.mark.parametrize("data_format", FORMATS)
def test_validate_false_gives_the_same_results_and_gradients(path, data_format):
    image, boxes, box_indices = make_case(11, "float32")
    results = []
    for validate in (True, False):
        img = torch.from_numpy(to_format(image, data_format)).requires_grad_()
        bx = torch.from_numpy(boxes).requires_grad_()
        out = cropcore_torch.crop_and_resize(
            img,
            bx,
            torch.from_numpy(box_indices),
            (3, 4),
            data_format=data_format,
            validate=validate,
        )
        out.square().sum().backward()
        results.append((out.detach(), img.grad, bx.grad))
    for got, expected in zip(results[1], results[0], strict=True):
        assert torch.equal(got, expected)
    grads = torch.rand(results[0][0].shape)
    img = torch.from_numpy(to_format(image, data_format))
    for validate in (True, False):
        gi = cropcore_torch.crop_and_resize_grad_image(
            grads,
            boxes=torch.from_numpy(boxes),
            box_indices=torch.from_numpy(box_indices),
            image_shape=tuple(img.shape),
            data_format=data_format,
            validate=validate,
        )
        gb = cropcore_torch.crop_and_resize_grad_boxes(
            grads,
            img,
            torch.from_numpy(boxes),
            torch.from_numpy(box_indices),
            data_format=data_format,
            validate=validate,
        )
        results.append((gi, gb))
    assert torch.equal(results[2][0], results[3][0])
    assert torch.equal(results[2][1], results[3][1])


def test_validate_false_contract_bad_index_raises_and_nan_boxes_extrapolate(path):
    image = torch.rand(2, 4, 4, 1)
    with pytest.raises(IndexError):
        cropcore_torch.crop_and_resize(
            image, torch.rand(1, 4), torch.tensor([2]), (2, 2), validate=False
        )
    out = cropcore_torch.crop_and_resize(
        image,
        torch.tensor([[float("nan"), 0, 1, 1]]),
        torch.tensor([0]),
        (2, 2),
        "bilinear",
        -3.0,
        validate=False,
    )
    assert out.flatten().tolist() == [-3.0] * 4
    with pytest.raises(ValueError, match="num_boxes, 4"):
        cropcore_torch.crop_and_resize(
            image, torch.rand(1, 3), torch.tensor([0]), (2, 2), validate=False
        )
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        cropcore_torch.crop_and_resize(image, [[0, 0, 1, 1]], [0], (2, 2), validate=False)


# -- dispatch --------------------------------------------------------------------------------------


def test_torch_tensors_go_to_the_torch_backend_automatically():
    image = torch.rand(1, 4, 4, 3)
    for tensor in (image, image.requires_grad_()):
        decision = cropcore.explain("crop_and_resize", tensor, [[0, 0, 1, 1]], [0], (2, 2))
        assert decision.backend == "torch"
        assert "image: torch (cpu) -> numpy" not in decision.conversions


def test_numpy_arrays_stay_on_numpy_backends():
    image = np.zeros((1, 4, 4, 3), np.float32)
    decision = cropcore.explain("crop_and_resize", image, [[0, 0, 1, 1]], [0], (2, 2))
    assert decision.backend in ("numba", "numpy")


def test_boxes_that_require_grad_with_a_numpy_image_warn_that_the_result_is_detached():
    """The result follows the image, a NumPy array: no graph can reach it. The call warns and runs
    where NumPy arrays run (it used to run on torch and drop the graph silently)."""
    image = np.arange(48, dtype=np.float32).reshape(1, 4, 4, 3)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]], requires_grad=True)
    with pytest.warns(RuntimeWarning, match="detached"):
        decision = cropcore.explain("crop_and_resize", image, boxes, [0], (2, 2))
    assert decision.backend != "torch"
    with pytest.warns(RuntimeWarning, match="Pass the image as a torch tensor"):
        got = cropcore.crop_and_resize(image, boxes, [0], (2, 2))
    assert isinstance(got, np.ndarray)
    assert_bits_equal(got, reference("crop_and_resize", image, boxes.detach().numpy(), [0], (2, 2)))
    # With the image as a tensor, the graph reaches the boxes.
    cropcore.crop_and_resize(torch.from_numpy(image), boxes, [0], (2, 2)).sum().backward()
    assert boxes.grad is not None


def test_numpy_arrays_on_the_torch_backend_come_back_as_numpy(path):
    image, boxes, box_indices = make_case(12, "uint16")
    got = cropcore.crop_and_resize(image, boxes, box_indices, (3, 3), backend="torch")
    assert isinstance(got, np.ndarray)
    assert_bits_equal(got, reference("crop_and_resize", image, boxes, box_indices, (3, 3)))


def test_crop2d_is_a_view_with_gradients():
    x = torch.rand(2, 3, 8, 9, requires_grad=True)
    y = cropcore.crop2d(x, ((1, 2), (3, 4)), "channels_first")
    assert y.shape == (2, 3, 5, 2)
    assert y._base is x
    y.sum().backward()
    assert x.grad.sum().item() == 2 * 3 * 5 * 2


# -- threads ---------------------------------------------------------------------------------------


def test_threads_agree_with_serial_calls(path):
    def job(seed):
        image, boxes, box_indices = make_case(seed, "float32")
        img = torch.from_numpy(image).requires_grad_()
        bx = torch.from_numpy(boxes).requires_grad_()
        out = cropcore.crop_and_resize(
            img, bx, box_indices, (6, 5), ("bilinear", "nearest")[seed % 2]
        )
        out.square().sum().backward()
        return out.detach(), img.grad, bx.grad

    serial = {seed: job(seed) for seed in range(8)}
    barrier = threading.Barrier(4)

    def concurrent_job(seed):
        if seed < 4:
            barrier.wait()
        return job(seed)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(concurrent_job, list(range(8)) * 3))
    for seed, result in zip(list(range(8)) * 3, results, strict=True):
        for got, expected in zip(result, serial[seed], strict=True):
            assert torch.equal(got, expected)


# -- modules ---------------------------------------------------------------------------------------


def test_modules_in_sequential_with_fixed_boxes():
    image = torch.rand(2, 3, 10, 12)
    model = torch.nn.Sequential(
        Cropping2D(((1, 2), (3, 4))),
        CropAndResize((4, 5), boxes=[[0, 0, 1, 1], [0.2, 0.1, 0.9, 0.8]]),
    )
    out = model(image)
    assert out.shape == (4, 3, 4, 5)
    cropped = image[:, :, 1:8, 3:8]
    expected = cropcore.crop_and_resize(
        cropped,
        [[0, 0, 1, 1], [0.2, 0.1, 0.9, 0.8]] * 2,
        [0, 0, 1, 1],
        (4, 5),
        data_format="channels_first",
    )
    assert torch.equal(out, expected)
    assert "crop_size=(4, 5)" in repr(model)
    assert "cropping=((1, 2), (3, 4))" in repr(model)
    assert set(model.state_dict()) == {"1.boxes"}


def test_crop_and_resize_module_with_boxes_per_call():
    layer = CropAndResize(3, method="nearest", extrapolation_value=-1, data_format="channels_last")
    image = torch.rand(2, 5, 5, 4)
    out = layer(image, torch.tensor([[-0.5, 0, 1, 1]]), torch.tensor([1]))
    expected = cropcore.crop_and_resize(image, [[-0.5, 0, 1, 1]], [1], (3, 3), "nearest", -1)
    assert torch.equal(out, expected)
    with pytest.raises(ValueError, match="needs boxes"):
        layer(image)
    with pytest.raises(ValueError, match="together"):
        layer(image, torch.rand(1, 4))


def test_module_arguments_are_checked_at_construction():
    with pytest.raises(ValueError, match="case-sensitive"):
        CropAndResize(3, method="Nearest")
    with pytest.raises(ValueError, match="positive"):
        CropAndResize((0, 3))
    with pytest.raises(ValueError, match="finite"):
        CropAndResize(3, boxes=[[0, 0, float("inf"), 1]])
    with pytest.raises(ValueError, match="cannot be negative"):
        Cropping2D(-1)
    with pytest.raises(ValueError, match="1st entry of cropping"):
        Cropping2D(((1, 2, 3), (0, 0)))
    with pytest.raises(ValueError, match="smaller than the corresponding spatial dimension"):
        Cropping2D(((3, 4), (0, 0)))(torch.rand(1, 1, 7, 7))


@pytest.mark.parametrize("cropping", [2, (1, 2), ((1, 2), (3, 0)), [[0, 1], [2, 2]]])
@pytest.mark.parametrize("data_format", FORMATS)
def test_cropping2d_accepts_keras_forms(cropping, data_format):
    x = torch.rand(2, 9, 8, 3) if data_format == "channels_last" else torch.rand(2, 3, 9, 8)
    got = Cropping2D(cropping, data_format)(x)
    assert torch.equal(got, cropcore.crop2d(x, cropping, data_format))


def test_modules_are_scriptable():
    model = torch.nn.Sequential(Cropping2D(1), CropAndResize((3, 4), boxes=[[0, 0, 1, 1]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(model)
        layer = torch.jit.script(CropAndResize((3, 4)))
    image = torch.rand(2, 3, 8, 8)
    assert torch.equal(scripted(image), model(image))
    # The scripted layer checks box values itself; TorchScript reports a ValueError this way:
    with pytest.raises(torch.jit.Error, match="ValueError: boxes must be finite"):
        layer(image, torch.tensor([[0, 0, float("nan"), 1]]), torch.tensor([0]))
    with pytest.raises(torch.jit.Error, match=r"IndexError: box_indices must be in \[0, batch\)"):
        layer(image, torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([5]))


# -- torch.compile ---------------------------------------------------------------------------------

# Inductor imports torch.utils.mkldnn, which still uses torch.jit.script_method.
_INDUCTOR_WARNING = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"


@pytest.mark.slow
@pytest.mark.filterwarnings(_INDUCTOR_WARNING)
def test_compile_fullgraph_without_validation_matches_eager():
    torch._dynamo.reset()
    image = torch.rand(2, 3, 8, 9, requires_grad=True)
    boxes = torch.tensor([[0.1, 0.2, 0.7, 0.9], [0.0, 0.5, 1.0, -0.2]], requires_grad=True)
    indices = torch.tensor([1, 0])

    def loss(img, bx):
        crops = cropcore_torch.crop_and_resize(
            img, bx, indices, (5, 4), data_format="channels_first", validate=False
        )
        return (crops * crops).sum()

    compiled = torch.compile(loss, fullgraph=True)  # fullgraph: no graph break is allowed
    compiled(image, boxes).backward()
    compiled_grads = image.grad.clone(), boxes.grad.clone()
    image.grad = boxes.grad = None
    loss(image, boxes).backward()
    assert torch.equal(compiled_grads[0], image.grad)
    assert torch.equal(compiled_grads[1], boxes.grad)


@pytest.mark.slow
@pytest.mark.filterwarnings(_INDUCTOR_WARNING)
def test_compile_with_validation_has_no_graph_break_and_matches_eager():
    torch._dynamo.reset()
    model = torch.nn.Sequential(Cropping2D(1), CropAndResize((3, 4), boxes=[[0, 0, 1, 1]]))
    image = torch.rand(2, 3, 8, 9)
    explanation = torch._dynamo.explain(model)(image)
    assert explanation.graph_break_count == 0
    assert torch.equal(torch.compile(model)(image), model(image))


@pytest.mark.slow
@pytest.mark.filterwarnings(_INDUCTOR_WARNING)
def test_compile_through_the_cropcore_api_has_no_graph_break_and_matches_eager():
    torch._dynamo.reset()
    image = torch.rand(1, 5, 5, 2, requires_grad=True)
    boxes = torch.tensor([[0.1, 0.1, 0.9, 0.9]], requires_grad=True)

    def crops(img, bx):
        return cropcore.crop_and_resize(img, bx, torch.tensor([0]), (3, 3)) * 2

    assert torch._dynamo.explain(crops)(image, boxes).graph_break_count == 0
    out = torch.compile(crops, fullgraph=True)(image, boxes)
    assert torch.equal(out, crops(image, boxes))
    out.square().sum().backward()
    compiled_grads = image.grad.clone(), boxes.grad.clone()
    image.grad = boxes.grad = None
    crops(image, boxes).square().sum().backward()
    assert torch.equal(compiled_grads[0], image.grad)
    assert torch.equal(compiled_grads[1], boxes.grad)


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("size", [(3, 3), (200, 100)])  # the second result is a recycled host block
def test_results_can_be_changed_in_place_with_gradients(path, data_format, size):
    # A custom op that returns a view refuses in-place changes under autograd (issue 16's
    # "crops.sub_(mean)", nn.ReLU(inplace=True) after the layer); the results own their memory.
    shape = (2, 8, 9, 3) if data_format == "channels_last" else (2, 3, 8, 9)
    image = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[0.1, 0.2, 0.8, 0.9], [0.9, 0.0, 0.2, 1.0]])
    indices = torch.tensor([1, 0])

    def loss(in_place):
        img, bx = image.clone().requires_grad_(), boxes.clone().requires_grad_()
        out = cropcore.crop_and_resize(img, bx, indices, size, data_format=data_format)
        out = out.sub_(0.5).relu_() if in_place else (out - 0.5).relu()
        out.square().sum().backward()
        return out.detach(), img.grad, bx.grad

    for got, expected in zip(loss(True), loss(False), strict=True):
        assert torch.equal(got, expected)
    model = torch.nn.Sequential(CropAndResize((3, 4), boxes=boxes), torch.nn.ReLU(inplace=True))
    image_nchw = torch.rand(2, 3, 8, 9, requires_grad=True)
    model(image_nchw).sum().backward()
    assert image_nchw.grad is not None
