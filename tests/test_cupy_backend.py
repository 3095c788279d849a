"""The CuPy backend (alias ``cuda``): what can be proven without a GPU, and what needs one.

Most machines that run this suite (CI included) have no GPU, so the backend is tested in layers:

1. **Always**: the plugin is discovered and listed without importing cupy; without cupy (or without
   a device) it is unavailable with the reason, ``backend="cuda"`` says why and how to install,
   and automatic selection never picks it for host arrays; its declines, its launch plans and its
   deterministic-mode switch are plain Python.
2. **nvcc**: the CUDA source compiles for every architecture the backend supports, with every
   kernel it can launch, and the compiled code does TensorFlow's rounding (no FMA, flush-to-zero).
3. **Host harness**: ``crop_and_resize.cuh`` and the op headers it includes, and
   ``roi_align.cuh`` -- the functions the kernels run -- compiled for the CPU
   (tests/cupy_host_harness.cpp), called with the very argument lists the backend builds for the
   GPU, on thousands of random cases, against the NumPy reference (itself bit-identical with
   TensorFlow's CPU kernel, and for roi_align with ONNX Runtime's): bit-identical for the forward
   op and both image-gradient kernels (the scatter kernel's additions run in TensorFlow's order
   here) and for roi_align and its gradient (IEEE: subnormals kept), within reordered sums for the
   box gradient.
4. **Device** (skipped here with the probe's reason): the kernels on a GPU against the reference
   and against the harness, gradients, deterministic repeatability, torch and CuPy interop,
   roi_align and its gradient.
"""

from __future__ import annotations

import ctypes
import fnmatch
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import cropcore
import cropcore.ops
import cropcore_cupy
from cropcore import BackendInfo, hookimpl, native
from cropcore.errors import BackendDeclinedError, BackendError, BackendUnavailableError
from cropcore.registry import registry
from cropcore.spec import (
    ImageShape,
    crop_and_resize_call,
    grad_boxes_call,
    grad_image_call,
    roi_align_call,
    roi_align_grad_image_call,
)
from cropcore_cupy import _plan

PACKAGE = Path(cropcore_cupy.__file__).parent
HARNESS = Path(__file__).parent / "cupy_host_harness.cpp"
DTYPES = ["uint8", "uint16", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]
FORMATS = ["channels_last", "channels_first"]
METHODS = ["bilinear", "nearest"]

# Conformance cases to leave out of the runs below (none since the suite's "reordered-sums" class
# scales property and round-trip comparisons too, and handles empty box lists).
KNOWN_SUITE_GAPS: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------------
# Helpers


def assert_bits_equal(got: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Identical bits (+0.0 and -0.0 differ), NaN equal to any NaN."""
    got, expected = np.asarray(got), np.asarray(expected)
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape), what
    if got.dtype.kind != "f":
        np.testing.assert_array_equal(got, expected, err_msg=what)
        return
    nan = np.isnan(expected)
    assert (np.isnan(got) == nan).all(), f"{what}: NaN positions differ"
    uint = np.dtype(f"uint{8 * got.itemsize}")
    g, e = np.ascontiguousarray(got).view(uint), np.ascontiguousarray(expected).view(uint)
    bad = (g != e) & ~nan
    if bad.any():
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.size} values differ; first at {i}: "
            f"got {got[i]!r}, expected {expected[i]!r}"
        )


def to_format(x: np.ndarray, data_format: str) -> np.ndarray:
    """An NHWC array as ``data_format`` (NCHW as a strided view: the kernels read views)."""
    return x.transpose(0, 3, 1, 2) if data_format == "channels_first" else x


def random_image(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype.startswith("float"):
        image = (rng.standard_normal(shape) * 100).astype(dtype)
        special = rng.random(shape)
        if rng.random() < 0.3:  # subnormals (flushed by TF), signed zeros, and a few inf/NaN
            tiny = np.float32(1e-39) if dtype != "float16" else np.float16(3e-6)
            image[special < 0.05] = tiny
            image[(special >= 0.05) & (special < 0.08)] = -0.0
        if rng.random() < 0.1:
            image[special > 0.995] = np.inf
            image[special < 0.003] = np.nan
        return image
    info = np.iinfo(dtype)
    low, high = max(info.min, -(2**40)), min(info.max, 2**40)
    return rng.integers(low, high, shape, endpoint=True).astype(dtype)


def random_boxes(
    rng: np.random.Generator, n: int, height: int, width: int
) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of every kind: inside, overhanging, flipped, degenerate, on the pixel grid, huge."""
    boxes = rng.uniform(-0.5, 1.5, (n, 4)).astype(np.float32)
    kind = rng.random(n)
    grid = (kind < 0.2) & (height > 1) & (width > 1)
    boxes[grid, 0::2] = rng.integers(0, height, (int(grid.sum()), 2)) / np.float32(height - 1)
    boxes[grid, 1::2] = rng.integers(0, width, (int(grid.sum()), 2)) / np.float32(width - 1)
    boxes[(kind >= 0.2) & (kind < 0.25), 2] = boxes[(kind >= 0.2) & (kind < 0.25), 0]  # zero height
    unit = (kind >= 0.25) & (kind < 0.35)
    boxes[unit] = np.array([0, 0, 1, 1], np.float32)  # TF's edge-overshoot cases
    huge = (kind >= 0.35) & (kind < 0.37)
    boxes[huge] = np.array([-3e38, 0, 3e38, 1], np.float32)  # span overflows float32
    tiny = (kind >= 0.37) & (kind < 0.39)
    boxes[tiny, 0] = -1e-40  # a subnormal edge counts as 0
    return boxes.astype(np.float32), rng.integers(0, 2**31 - 1, n).astype(np.int32)


def find_cxx() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def find_nvcc() -> str | None:
    candidates = [shutil.which("nvcc")]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates.append(str(Path(root) / "bin" / "nvcc"))
    return next((c for c in candidates if c and Path(c).is_file()), None)


# --------------------------------------------------------------------------------------------------
# The host harness: the kernels' arithmetic on the CPU, called like the GPU kernels


_CTYPES = {
    "ptr": ctypes.c_void_p,
    "i32": ctypes.c_int32,
    "i64": ctypes.c_int64,
    "u32": ctypes.c_uint32,
    "f32": ctypes.c_float,
    "f64": ctypes.c_double,
}


class Harness:
    """ctypes bindings of tests/cupy_host_harness.cpp, one function per CUDA kernel."""

    def __init__(self, path: Path) -> None:
        self.lib = ctypes.CDLL(str(path))

    def function(self, kernel: str) -> Any:
        fn = getattr(self.lib, kernel)
        argtypes = []
        for _, kind in _plan.PARAMS[_plan.family(kernel)]:
            if kind == "div":
                argtypes += [ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int32]
            else:
                argtypes.append(_CTYPES[kind])
        fn.argtypes, fn.restype = argtypes, None
        return fn

    def run(self, launches: list[_plan.Launch]) -> None:
        for launch in launches:
            args = []
            for value in launch.args:
                if value is None:
                    args.append(None)
                elif isinstance(value, np.ndarray):
                    args.append(value.ctypes.data)
                elif isinstance(value, np.floating):
                    args.append(float(value))
                else:
                    args.append(int(value))
            self.function(launch.kernel)(*args)

    # The launchers of cropcore_cupy.kernels, for NumPy arrays.

    @staticmethod
    def _strides(x: np.ndarray, data_format: str) -> tuple[int, int, int, int]:
        strides = _plan.element_strides(x.strides, x.itemsize)
        assert strides is not None
        return _plan.logical_strides(strides, data_format)

    def crop_and_resize(self, call) -> np.ndarray:
        crops = np.empty(call.output_shape, np.float32)
        if crops.size == 0:
            return crops
        image = call.image
        self.run(
            [
                _plan.forward(
                    image=image,
                    boxes=np.ascontiguousarray(call.boxes),
                    box_indices=np.ascontiguousarray(call.box_indices),
                    crops=crops,
                    image_shape=call.image_shape,
                    image_strides=self._strides(image, call.data_format),
                    image_pointer=image.ctypes.data,
                    dtype=image.dtype.name,
                    crop_size=call.crop_size,
                    method=call.method,
                    extrapolation_value=call.extrapolation_value,
                    data_format=call.data_format,
                )
            ]
        )
        return crops

    def grad_image(self, call, deterministic: bool, row_masks: bool = True) -> np.ndarray:
        """As the backend launches it; ``row_masks=False`` runs the gather without row masks."""
        shape, dtype = call.output_shape, np.dtype(call.dtype)
        if _plan.total(shape) == 0 or call.num_boxes == 0:
            return np.zeros(shape, dtype)
        n = call.num_boxes
        output = np.empty(shape, dtype) if deterministic else np.zeros(shape, dtype)
        height = call.image_shape.height
        words = _plan.row_mask_words(n, height, output.nbytes) if row_masks else 0
        masks = np.zeros((height, words), np.uint32) if words else None
        self.run(
            _plan.grad_image(
                grads=call.grads,
                boxes=np.ascontiguousarray(call.boxes),
                box_indices=np.ascontiguousarray(call.box_indices),
                output=output,
                box_axes=np.empty((n, 4), np.float32),
                box_spans=np.empty((n, 5), np.int32),
                row_masks=masks,
                grads_strides=self._strides(call.grads, call.data_format),
                image_shape=call.image_shape,
                crop_size=call.crop_size,
                dtype=dtype.name,
                method=call.method,
                data_format=call.data_format,
                deterministic=deterministic,
            )
        )
        return output

    def roi_align(self, call) -> np.ndarray:
        """As cropcore_cupy.kernels.roi_align launches it."""
        output = np.empty(call.output_shape, call.image.dtype)
        if output.size == 0:
            return output
        host = np.asarray(call.boxes) if _plan.roi_reads_boxes(call) else None
        error = _plan.roi_samples_error(call, host)
        if error is not None:
            raise error
        self.run(
            [
                _plan.roi_align(
                    call,
                    image=call.image,
                    boxes=np.ascontiguousarray(call.boxes),
                    box_indices=np.ascontiguousarray(call.box_indices),
                    output=output,
                    image_strides=self._strides(call.image, call.data_format),
                    dtype=call.image.dtype.name,
                )
            ]
        )
        return output

    def roi_align_grad_image(self, call, row_masks: bool = True) -> np.ndarray:
        """As cropcore_cupy.kernels.roi_align_grad_image launches it; ``row_masks=False`` runs the
        gather without row masks."""
        dtype = call.grads.dtype
        if _plan.total(call.output_shape) == 0 or call.num_boxes == 0:
            return np.zeros(call.output_shape, dtype)
        host = np.asarray(call.boxes) if _plan.roi_reads_boxes(call) else None
        error = _plan.roi_samples_error(call, host)
        if error is not None:
            raise error
        output = np.empty(call.output_shape, dtype)
        height = call.image_shape.height
        words = _plan.row_mask_words(call.num_boxes, height, output.nbytes) if row_masks else 0
        self.run(
            _plan.roi_align_grad_image(
                call,
                grads=call.grads,
                boxes=np.ascontiguousarray(call.boxes),
                box_indices=np.ascontiguousarray(call.box_indices),
                output=output,
                box_spans=np.empty((call.num_boxes, 5), np.int32),
                row_masks=np.zeros((height, words), np.uint32) if words else None,
                grads_strides=self._strides(call.grads, call.data_format),
                dtype=dtype.name,
            )
        )
        return output

    def grad_boxes(self, call) -> np.ndarray:
        n = call.num_boxes
        crop_height, crop_width = call.crop_size
        elements = crop_height * crop_width * call.image_shape.depth
        if n == 0 or elements == 0:
            return np.zeros((n, 4), np.float32)
        _, chunks = _plan.grad_boxes_chunking(elements)
        output = np.empty((n, 4), np.float32)
        self.run(
            _plan.grad_boxes(
                grads=call.grads,
                image=call.image,
                boxes=np.ascontiguousarray(call.boxes),
                box_indices=np.ascontiguousarray(call.box_indices),
                partial=np.empty((n, chunks, 4), np.float32) if chunks > 1 else None,
                output=output,
                grads_strides=self._strides(call.grads, call.data_format),
                image_shape=call.image_shape,
                image_strides=self._strides(call.image, call.data_format),
                crop_size=call.crop_size,
                dtype=call.image.dtype.name,
            )
        )
        return output


@pytest.fixture(scope="module")
def harness(tmp_path_factory) -> Harness:
    cxx = find_cxx()
    if cxx is None:
        pytest.skip("no C++ compiler (g++, c++ or clang++) to build the host harness")
    if platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        pytest.skip(
            f"the harness sets flush-to-zero on x86-64 and aarch64 only, not {platform.machine()}"
        )
    out = tmp_path_factory.mktemp("cupy_harness") / "harness.so"
    command = [
        cxx,
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-ffp-contract=off",  # as nvcc --fmad=false: no a * b + c contraction
        "-fno-fast-math",
        f"-I{PACKAGE}",
        f"-I{native.include_dir()}",
        "-o",
        str(out),
        str(HARNESS),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    return Harness(out)


# ==================================================================================================
# 1. Always: registration, availability, selection, declines, plans, the deterministic switch


def cupy_probe_reason() -> str | None:
    """None when the cupy backend can run here, else the reason it cannot."""
    backend = registry.get("cupy")
    backend.probe()
    return None if backend.status == "available" else backend.reason


def test_plugin_is_registered_with_alias_cuda():
    backend = registry.get("cuda")
    assert backend is not None
    assert backend.name == "cupy"
    assert backend.distribution == "cropcore"
    info = backend.info
    assert info.aliases == ("cuda",)
    assert info.array_library == "cupy"
    assert info.devices == ("cuda",)
    assert info.requires == ("cupy",)
    assert info.install_hint == 'pip install "cropcore[cupy]"'
    assert set(info.dtypes) == set(DTYPES)
    assert set(info.methods) == set(METHODS)
    assert not info.autograd
    # every op: the crop_and_resize family, crop2d, and roi_align with its image gradient
    assert set(backend.ops) == set(cropcore.ops.OPS)
    assert {"roi_align", "roi_align_grad_image"} <= set(backend.ops)
    assert "cupy" in [b.name for b in cropcore.backends()]


def test_listing_backends_imports_no_framework():
    code = (
        "import sys, cropcore\n"
        "names = [b.name for b in cropcore.backends()]\n"
        "import cropcore_cupy\n"
        "assert 'cupy' in names, names\n"
        "print(sorted(m for m in ('cupy', 'torch', 'numba') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_version_comes_from_the_distribution_without_importing_cupy():
    imported = "cupy" in sys.modules
    version = registry.get("cupy").version
    distributions = importlib.metadata.packages_distributions().get("cupy", [])
    if distributions:
        assert version == importlib.metadata.version(distributions[0])
    else:
        assert version == ""
    assert ("cupy" in sys.modules) == imported


def test_without_cupy_or_a_device_the_backend_is_unavailable_with_the_reason():
    reason = cupy_probe_reason()
    if reason is None:
        pytest.skip("the cupy backend can run here")
    entry = next(b for b in cropcore.backends(probe=True) if b.name == "cupy")
    assert entry.status == "unavailable"
    assert entry.reason == reason
    try:
        import cupy  # noqa: F401
    except Exception:
        assert "requires cupy" in reason
        assert 'pip install "cropcore[cupy]"' in reason
    else:
        assert reason.startswith(("no CUDA device", "cupy cannot be imported", "CuPy cannot"))


@pytest.mark.parametrize("name", ["cuda", "cupy", "CUDA"])
def test_naming_it_without_a_device_raises_with_the_reason_and_the_install_hint(name):
    reason = cupy_probe_reason()
    if reason is None:
        pytest.skip("the cupy backend can run here")
    image = np.zeros((1, 2, 2, 1), np.float32)
    with pytest.raises(BackendUnavailableError) as info:
        cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [0], (2, 2), backend=name)
    message = str(info.value)
    assert "'cupy'" in message
    assert reason in message
    assert 'pip install "cropcore[cupy]"' in message


def test_automatic_selection_never_picks_it_for_numpy_arrays():
    image = np.zeros((1, 4, 4, 2), np.float32)
    decision = cropcore.explain("crop_and_resize", image, [[0, 0, 1, 1]], [0], (2, 2))
    assert decision.backend != "cupy"
    cropcore.set_priority(["cupy", "numpy"])
    decision = cropcore.explain("crop_and_resize", image, [[0, 0, 1, 1]], [0], (2, 2))
    assert decision.backend == "numpy"
    cropcore.set_priority(["cupy"])  # even alone it is not picked: arrays never move implicitly
    with pytest.raises(BackendError, match="cupy"):
        cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [0], (2, 2))


def test_plugin_hooks_that_run_on_the_host():
    tolerances = cropcore_cupy.cropcore_conformance_tolerances()
    assert tolerances["*/grad_image/*"] == "reordered-sums"
    assert tolerances["*/grad_boxes/*"] == "reordered-sums"
    assert list(tolerances)[-1] == "*"


def test_it_takes_box_values_cropcore_did_not_read():
    """Declared because every kernel guards box indices (the bad-index harness tests below):
    CuPy and torch CUDA box tables reach it without a host read (a synchronisation) per call."""
    assert cropcore_cupy.cropcore_backend_info().unchecked_values is True


def test_conformance_declarations_name_classes_the_suite_defines():
    conformance = pytest.importorskip("cropcore_conformance")
    for pattern, tolerance in cropcore_cupy.cropcore_conformance_tolerances().items():
        assert tolerance in conformance.TOLERANCES, pattern
    ids = [case.id for case in conformance.all_cases()]
    for pattern in ("*/grad_image/*", "*/grad_boxes/*", "*/crop2d/*"):
        assert any(fnmatch.fnmatchcase(i, pattern) for i in ids), pattern


# -- declines


def _call(image_shape, crop_size, num_boxes=1, op="forward", data_format="channels_last"):
    """A validated call on a zero-strided image of any size (no memory)."""
    batch = image_shape[0]
    image = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), image_shape, (0, 0, 0, 0))
    boxes = np.zeros((num_boxes, 4), np.float32)
    indices = np.zeros(num_boxes, np.int32) % max(batch, 1)
    if op == "forward":
        return crop_and_resize_call(image, boxes, indices, crop_size, data_format=data_format)
    shape = ImageShape.from_format(image_shape, data_format)
    grads_shape = ImageShape(num_boxes, *crop_size, shape.depth).to_format(data_format)
    grads = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), grads_shape, (0, 0, 0, 0))
    if op == "grad_image":
        return grad_image_call(grads, boxes, indices, image_shape, data_format=data_format)
    return grad_boxes_call(grads, image, boxes, indices, data_format=data_format)


def test_ordinary_calls_are_not_declined():
    for op in ("forward", "grad_image", "grad_boxes"):
        for data_format in FORMATS:
            call = _call((8, 512, 512, 3), (224, 224), 16, op, data_format)
            assert cropcore_cupy.cropcore_backend_declines(call) is None


@pytest.mark.parametrize(
    ("image_shape", "crop_size", "num_boxes", "op", "words"),
    [
        ((1, 2**24 + 1, 4, 1), (2, 2), 1, "forward", "exceeds 2**24"),
        ((1, 4, 2**24 + 2, 1), (2, 2), 1, "grad_boxes", "exceeds 2**24"),
        ((1, 8, 8, 3), (2, 2**30), 1, "forward", "crop_width * depth"),
        ((1, 8, 8, 64), (2**16, 2), 2**10, "forward", "num_boxes * crop_height * depth"),
        ((1, 8, 8, 1), (2**16, 2**16), 1, "grad_boxes", "crop_height * crop_width * depth"),
        ((2**8, 2**16, 8, 2**8), (2, 2), 1, "grad_image", "batch * height * depth"),
    ],
)
def test_calls_beyond_32_bit_counts_or_2_24_pixels_are_declined(
    image_shape, crop_size, num_boxes, op, words, cropcore_env
):
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", str(2**62))
    call = _call(image_shape, crop_size, num_boxes, op)
    reason = cropcore_cupy.cropcore_backend_declines(call)
    assert reason is not None
    assert words in reason


def test_a_declined_call_named_explicitly_says_why(monkeypatch, register_backend):
    # The cupy backend cannot be made available here, so a stand-in with its declines hook shows
    # what the dispatcher does with the reason.
    register_backend(
        "declines_like_cupy",
        ops=("crop_and_resize",),
        declines=cropcore_cupy.cropcore_backend_declines,
    )
    image = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (1, 2**24 + 1, 2, 1), (0,) * 4)
    with pytest.raises(BackendDeclinedError, match="exceeds 2\\*\\*24"):
        cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [0], (2, 2), backend="declines_like_cupy")


# -- launch plans


@pytest.mark.parametrize("divisor", [1, 2, 3, 5, 7, 12, 255, 256, 257, 1000, 2**20 + 1, 2**31 - 1])
def test_fast_divider_matches_integer_division(divisor):
    _, magic, shift = _plan.fast_divider(divisor)
    rng = np.random.default_rng(divisor)
    n = np.concatenate(
        [np.arange(0, 4096), rng.integers(0, 2**31, 100_000), [2**31 - 1, 2**31 - 2]]
    ).astype(np.uint64)
    n = np.concatenate([n, (np.arange(1, 2000, dtype=np.uint64) * divisor) - 1]).astype(np.uint64)
    n = n[n < 2**31]
    quotient = (((n * np.uint64(magic)) >> np.uint64(32)) + n) >> np.uint64(shift)
    np.testing.assert_array_equal(quotient, n // np.uint64(divisor))


def test_fast_divider_refuses_what_it_cannot_divide_by():
    for bad in (0, -1, 2**31):
        with pytest.raises(ValueError, match="divisor must be"):
            _plan.fast_divider(bad)


@pytest.mark.parametrize(
    ("rows", "groups", "grid", "block"),
    [
        (2100, 448, (1, 2100, 1), (256, 1, 1)),
        (300 * 256 * 7, 7, (1, 16800, 1), (8, 32, 1)),
        (3_000_000, 7, (1, 65535, 1), (8, 32, 1)),
        (1, 1, (1, 1, 1), (1, 256, 1)),
        (1792, 672, (1, 1792, 1), (256, 1, 1)),
        (8192, 1536, (2, 8192, 1), (256, 1, 1)),
        (10, 32, (1, 2, 1), (32, 8, 1)),
    ],
)
def test_launch_shape_fills_blocks_and_respects_grid_limits(rows, groups, grid, block):
    assert _plan.launch_shape(rows, groups) == (grid, block)


@pytest.mark.parametrize(
    ("depth", "itemsize", "strides", "shape", "pointer", "vec"),
    [
        (4, 4, (64, 16, 4, 1), (1, 4, 4, 4), 256, 4),
        (8, 1, (512, 64, 8, 1), (2, 8, 8, 8), 1024, 4),
        (3, 4, (48, 12, 3, 1), (1, 4, 4, 3), 256, 1),
        (6, 2, (96, 24, 6, 1), (1, 4, 4, 6), 256, 2),
        (4, 8, (64, 16, 4, 1), (1, 4, 4, 4), 256, 2),  # float64: at most 16 bytes a vector
        (4, 4, (64, 16, 4, 1), (1, 4, 4, 4), 260, 1),  # misaligned pointer
        (4, 4, (16, 4, 1, 16), (1, 4, 4, 4), 256, 1),  # channels not contiguous (NCHW memory)
        (4, 4, (64, 18, 4, 1), (1, 4, 4, 4), 256, 2),  # padded rows
        (4, 4, (7, 16, 4, 1), (1, 4, 4, 4), 256, 4),  # batch of 1: its stride never matters
    ],
)
def test_vector_width_only_where_loads_are_aligned(depth, itemsize, strides, shape, pointer, vec):
    assert _plan.vector_width(depth, itemsize, strides, shape, pointer) == vec


def test_every_launch_names_a_kernel_the_source_defines():
    names = set(_plan.kernel_names())
    source = _plan.source()
    assert '#include "' not in source  # every header pasted in: NVRTC needs no include path
    assert len(names) == 9 * 3 + 3 * 3 + 9 * 2 + 3 + 3 * 2  # ... + roi_align's forward, gradient
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        for depth in (1, 2, 3, 4, 8):
            for data_format in FORMATS:
                image = to_format(random_image(rng, (1, 5, 5, depth), dtype), data_format)
                call = crop_and_resize_call(
                    image, [[0, 0, 1, 1]], [0], (3, 3), data_format=data_format
                )
                launch = _plan.forward(
                    image=image,
                    boxes=call.boxes,
                    box_indices=call.box_indices,
                    crops=None,
                    image_shape=call.image_shape,
                    image_strides=Harness._strides(image, data_format),
                    image_pointer=image.ctypes.data,
                    dtype=dtype,
                    crop_size=(3, 3),
                    method="bilinear",
                    extrapolation_value=0.0,
                    data_format=data_format,
                )
                assert launch.kernel in names
                assert len(launch.args) == len(_plan.PARAMS["forward"]) + 2 * 3


_HEADER_PARAMS = {
    "forward": ("forward.cuh", "CROPCORE_FORWARD_PARAMS"),
    "grad_image": ("grad_image.cuh", "CROPCORE_GRAD_IMAGE_PARAMS"),
    "grad_boxes": ("grad_boxes.cuh", "CROPCORE_GRAD_BOXES_PARAMS"),
    "roi_align": ("roi_align.cuh", "CROPCORE_ROI_ALIGN_PARAMS"),
    "roi_align_grad": ("roi_align.cuh", "CROPCORE_ROI_GRAD_PARAMS"),
}
_C_KINDS = {"int": "i32", "long long": "i64", "unsigned": "u32", "float": "f32", "double": "f64"}


@pytest.mark.parametrize("family", sorted(_HEADER_PARAMS))
def test_abi_params_are_the_headers_parameter_lists(family):
    """_abi.PARAMS (what the launches pass, in order, with their C types) against the kernel
    parameter macro each op header defines: a swapped or retyped parameter would pass the GPU
    garbage."""
    header, macro = _HEADER_PARAMS[family]
    text = (PACKAGE / header).read_text()
    match = re.search(rf"#define {macro}\([^)]*\)((?:[^\n]*\\\n)*[^\n]*)", text)
    assert match, macro
    body = match.group(1).replace("\\\n", " ")
    parsed = []
    for param in (p.strip() for p in body.split(",")):
        divider = re.fullmatch(r"CROPCORE_DIV_PARAMS\((\w+)\)", param)
        if divider:
            parsed.append((divider.group(1), "div"))
            continue
        declaration = param.replace("__restrict__", "").split()
        name, ctype = declaration[-1], " ".join(declaration[:-1])
        parsed.append((name, "ptr" if ctype.endswith("*") else _C_KINDS[ctype]))
    assert tuple(parsed) == _plan.PARAMS[family]


def test_roi_channels_per_thread_agree_between_plan_and_header():
    text = (PACKAGE / "roi_align.cuh").read_text()
    assert f"#define CROPCORE_ROI_CHANNELS {_plan.ROI_CHANNELS}\n" in text


def test_source_is_shipped_as_package_data():
    assert (PACKAGE / "kernels.cu").is_file()
    assert (PACKAGE / "crop_and_resize.cuh").is_file()
    assert (Path(native.include_dir()) / native.HEADER).is_file()
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert 'cropcore_cupy = ["py.typed", "*.cu", "*.cuh"]' in pyproject
    assert '"cropcore.native" = ["*.h"]' in pyproject


def test_the_source_holds_every_header_byte_for_byte():
    # CuPy's kernel cache is keyed by the source text: a header left out of it could go stale.
    source = _plan.source()
    headers = sorted(path.name for path in PACKAGE.glob("*.cuh"))
    assert headers == [
        "common.cuh",
        "crop_and_resize.cuh",
        "forward.cuh",
        "grad_boxes.cuh",
        "grad_image.cuh",
        "roi_align.cuh",
    ]
    for name in headers:
        text = (PACKAGE / name).read_text()
        assert source.count(text.splitlines()[0]) == 1, name  # pasted once, at its first include
        for line in text.splitlines():
            if not line.startswith('#include "'):
                assert line in source, (name, line)
    for line in (Path(native.include_dir()) / native.HEADER).read_text().splitlines():
        assert line in source


def test_the_per_sample_arithmetic_is_the_shared_header_not_a_copy():
    assert f'#include "{native.HEADER}"' in (PACKAGE / "common.cuh").read_text()
    cuda = "\n".join(path.read_text() for path in sorted(PACKAGE.glob("*.cuh")))
    for shared in ("cropcore_half_to_float", "cropcore_sample_at", "cropcore_bilinear"):
        assert shared in cuda  # used here ...
        assert not re.search(rf"CC_HD\s+\w+\s+{shared}\(", cuda)  # ... never defined here


def test_grad_boxes_chunking_depends_on_the_shape_only():
    assert _plan.grad_boxes_chunking(1) == (2048, 1)
    assert _plan.grad_boxes_chunking(2048) == (2048, 1)
    assert _plan.grad_boxes_chunking(224 * 224 * 3) == (2048, 74)
    chunk, chunks = _plan.grad_boxes_chunking(2**31 - 1)
    assert chunks <= 65535
    assert chunk * chunks >= 2**31 - 1


# -- the deterministic switch


@pytest.fixture
def clean_switch(cropcore_env):
    cropcore_env.delete(cropcore_cupy.DETERMINISTIC_ENV)
    cropcore_cupy.set_deterministic(None)
    yield cropcore_env
    cropcore_cupy.set_deterministic(None)


def test_deterministic_mode_is_off_by_default(clean_switch):
    torch = sys.modules.get("torch")
    if torch is not None and torch.are_deterministic_algorithms_enabled():
        pytest.skip("torch's deterministic algorithms are on in this process")
    assert cropcore_cupy.is_deterministic() is False


@pytest.mark.parametrize(
    ("value", "expected"), [("1", True), ("true", True), ("0", False), ("off", False)]
)
def test_environment_variable_sets_deterministic_mode(clean_switch, value, expected):
    clean_switch.set("CROPCORE_DETERMINISTIC", value)
    assert cropcore_cupy.is_deterministic() is expected


def test_bad_environment_value_is_an_error(clean_switch):
    clean_switch.set("CROPCORE_DETERMINISTIC", "maybe")
    with pytest.raises(ValueError, match="CROPCORE_DETERMINISTIC"):
        cropcore_cupy.is_deterministic()


def test_set_deterministic_overrides_the_environment_and_the_context_overrides_both(clean_switch):
    clean_switch.set("CROPCORE_DETERMINISTIC", "1")
    cropcore_cupy.set_deterministic(False)
    assert cropcore_cupy.is_deterministic() is False
    with cropcore_cupy.deterministic():
        assert cropcore_cupy.is_deterministic() is True
        with cropcore_cupy.deterministic(False):
            assert cropcore_cupy.is_deterministic() is False
    assert cropcore_cupy.is_deterministic() is False
    with pytest.raises(TypeError):
        cropcore_cupy.set_deterministic("yes")


def test_torch_deterministic_algorithms_switch_it_on(clean_switch):
    torch = pytest.importorskip("torch")
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert cropcore_cupy.is_deterministic() is True
        cropcore_cupy.set_deterministic(False)
        assert cropcore_cupy.is_deterministic() is False
    finally:
        torch.use_deterministic_algorithms(previous)


# ==================================================================================================
# 2. nvcc: the CUDA source compiles for every supported architecture, with TF's rounding


@pytest.fixture(scope="module")
def nvcc() -> str:
    path = find_nvcc()
    if path is None:
        pytest.skip("nvcc not found (on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin)")
    return path


def _nvcc(nvcc: str, out: Path, *flags: str) -> subprocess.CompletedProcess:
    command = [
        nvcc,
        *_plan.NVRTC_OPTIONS,  # the options CuPy's NVRTC gets; nvcc takes the same spelling
        f"-I{PACKAGE}",
        f"-I{native.include_dir()}",
        *flags,
        "-o",
        str(out),
        "-x",
        "cu",
        str(PACKAGE / "kernels.cu"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"{' '.join(command)}\n{result.stderr}"
    return result


@pytest.mark.parametrize("arch", _plan.ARCHITECTURES)
def test_cuda_source_compiles_for_each_architecture_with_every_kernel(nvcc, tmp_path, arch):
    cubin = tmp_path / f"kernels_{arch}.cubin"
    result = _nvcc(nvcc, cubin, "--cubin", f"-arch={arch}", "-DCROPCORE_ALL_KERNELS", "-Xptxas=-v")
    assert "warning" not in result.stderr.lower(), result.stderr
    spills = re.findall(r"[1-9]\d* bytes spill (?:stores|loads)", result.stderr)
    assert not spills, f"register spills for {arch}: {spills}"
    binary = cubin.read_bytes()
    missing = [k for k in _plan.kernel_names() if k.encode() + b"\0" not in binary]
    assert not missing, f"kernels missing from the {arch} cubin: {missing}"


OP_MODULES = ["forward", "grad_image", "grad_boxes", "roi_align", "roi_align_grad"]
CROP_AND_RESIZE_MODULES = ("forward", "grad_image", "grad_boxes")


@pytest.mark.parametrize("op", OP_MODULES)
def test_each_op_module_compiles_on_its_own_with_only_its_kernels(nvcc, tmp_path, op):
    ptx = tmp_path / f"{op}.ptx"
    _nvcc(nvcc, ptx, "--ptx", "-arch=compute_75", f"-DCROPCORE_OP_{op.upper()}")
    text = ptx.read_text()
    entries = {line.split()[-1].rstrip("(") for line in text.splitlines() if ".entry" in line}
    expected = {k for k in _plan.kernel_names() if _plan.family(k) == op}
    assert entries == expected


def test_compiled_code_rounds_like_tensorflows_cpu_kernel(nvcc, tmp_path):
    """No fused multiply-add anywhere, and every float32 operation flushes subnormals (the
    crop_and_resize family's modules; roi_align's rounds as torchvision's: the test below)."""
    ptx = tmp_path / "all.ptx"
    ops = [f"-DCROPCORE_OP_{op.upper()}" for op in CROP_AND_RESIZE_MODULES]
    _nvcc(nvcc, ptx, "--ptx", "-arch=compute_90", *ops)
    text = ptx.read_text()
    assert not re.search(r"(?<![\w.])fma\.", text), "a fused multiply-add"
    assert not re.search(r"(?<![\w.])mad\.[a-z.]*f(32|64)", text), "a fused multiply-add"
    # Instructions, not atomics (atom.global.add.f32 flushes subnormals by definition).
    ops = re.findall(r"(?<![\w.])(?:add|sub|mul|div)(?:\.\w+)*\.f32\b", text)
    assert len(ops) > 100, "no float32 arithmetic found in the PTX"
    assert all(".ftz" in op for op in ops), sorted({op for op in ops if ".ftz" not in op})
    assert all(op.startswith("div.rn") for op in ops if op.startswith("div")), "inexact division"
    assert "cvt.rn.f32.f64" not in text  # double -> float conversions flush (cvt.rn.ftz)
    assert "cvt.rn.ftz.f32.f64" in text


def test_roi_align_code_keeps_subnormals_even_under_cupys_ftz(nvcc, tmp_path):
    """roi_align rounds as torchvision and ONNX Runtime (IEEE, no flush). CuPy appends -ftz=true
    to every module's options, so the modules are compiled with it here too: no float32 addition,
    subtraction, product, quotient or comparison of the two roi_align modules flushes, and none is
    fused. (The one .ftz product left is float16 -> float32's mantissa * 2**-24, never subnormal;
    abs and the conversions to integers give the same result either way.)"""
    ptx = tmp_path / "roi.ptx"
    _nvcc(
        nvcc,
        ptx,
        "--ptx",
        "-arch=compute_90",
        "-DCROPCORE_OP_ROI_ALIGN",
        "-DCROPCORE_OP_ROI_ALIGN_GRAD",
        "-ftz=true",
    )
    text = ptx.read_text()
    assert not re.search(r"(?<![\w.])fma\.", text), "a fused multiply-add"
    assert not re.search(r"(?<![\w.])mad\.[a-z.]*f(32|64)", text), "a fused multiply-add"
    ops = re.findall(r"(?<![\w.])(?:add|sub|mul|div|setp\.\w+)(?:\.\w+)*\.f32\b", text)
    assert len(ops) > 100, "no float32 arithmetic found in the PTX"
    flushing = [op for op in ops if ".ftz" in op]
    # the float16 -> float32 conversion's product, and cropcore_is_finite's |v| <= FLT_MAX
    assert set(flushing) <= {"mul.rn.ftz.f32", "setp.gtu.ftz.f32"}, sorted(set(flushing))
    assert all(op.startswith("div.rn") for op in ops if op.startswith("div")), "inexact division"
    for kind in ("add.rn.f32", "sub.rn.f32", "mul.rn.f32", "div.rn.f32", "setp.lt.f32"):
        assert kind in ops, kind


@pytest.mark.parametrize("arch", ["75", "90"])
def test_nvrtc_compiles_every_op_module_as_cupy_does_without_a_device(arch):
    """NVRTC, through CuPy, with the options CuPy's RawModule adds (what runs on a GPU).

    CuPy's public compile functions ask the device for its architecture, so this drives CuPy's
    NVRTC program class directly with an explicit one; skipped where CuPy or NVRTC is missing.
    """
    pytest.importorskip("cupy")
    try:
        from cupy.cuda import compiler

        program_class = compiler._NVRTCProgram
        from cupy_backends.cuda.libs import nvrtc

        nvrtc.getVersion()
    except Exception as exc:
        pytest.skip(f"CuPy's NVRTC is not usable here: {type(exc).__name__}: {exc}")
    cupy_adds = ("-ftz=true", f"-arch=compute_{arch}", "--device-as-default-execution-space")
    for op in OP_MODULES:
        program = program_class(_plan.source(), f"cropcore_{op}.cu", (), (), method="ptx")
        ptx, _ = program.compile((*_plan.nvrtc_options(op), *cupy_adds))
        text = ptx.decode() if isinstance(ptx, bytes) else str(ptx)
        entries = set(re.findall(r"\.entry (\w+)", text))
        assert entries == {k for k in _plan.kernel_names() if _plan.family(k) == op}
        assert not re.search(r"(?<![\w.])fma\.", text)


# ==================================================================================================
# 3. The host harness: the kernels' arithmetic, against the NumPy reference


def test_harness_float16_conversions_match_numpy(harness):
    bits = np.arange(2**16, dtype=np.uint16)
    values = np.empty(2**16, np.float32)
    harness.lib.cropcore_test_half_to_float(
        bits.ctypes.data_as(ctypes.c_void_p),
        values.ctypes.data_as(ctypes.c_void_p),
        ctypes.c_int64(2**16),
    )
    assert_bits_equal(values, bits.view(np.float16).astype(np.float32), "half -> float")

    rng = np.random.default_rng(1)
    finite = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    ties = ((finite[:-1] + finite[1:]) / 2).astype(np.float32)  # exact halfway points
    ties = np.concatenate([ties, -ties, np.float32(65520.0)[None]])
    floats = np.concatenate(
        [
            rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32),
            bits.view(np.float16).astype(np.float32),  # every float16, exactly
            ties,
            np.array(
                [65504, 65519.996, 65520, 2**-25, 2**-24, 3 * 2**-26, 1e-40, -1e-45], np.float32
            ),
        ]
    ).astype(np.float32)
    floats = floats[~np.isnan(floats)]
    out = np.empty(floats.size, np.uint16)
    harness.lib.cropcore_test_float_to_half(
        floats.ctypes.data_as(ctypes.c_void_p),
        out.ctypes.data_as(ctypes.c_void_p),
        ctypes.c_int64(floats.size),
    )
    with np.errstate(over="ignore"):
        expected = floats.astype(np.float16).view(np.uint16)
    mismatch = out != expected
    assert not mismatch.any(), (floats[mismatch][:5], out[mismatch][:5], expected[mismatch][:5])


def test_harness_divider_matches_integer_division(harness):
    rng = np.random.default_rng(2)
    for divisor in (1, 3, 7, 224 * 3, 2**16 + 1, 2**31 - 1):
        d, magic, shift = _plan.fast_divider(divisor)
        n = rng.integers(0, 2**31, 50_000).astype(np.uint32)
        q = np.empty_like(n)
        harness.lib.cropcore_test_divide(
            ctypes.c_uint32(d),
            ctypes.c_uint32(magic),
            ctypes.c_int32(shift),
            n.ctypes.data_as(ctypes.c_void_p),
            q.ctypes.data_as(ctypes.c_void_p),
            ctypes.c_int64(n.size),
        )
        np.testing.assert_array_equal(q, n // divisor)


def test_harness_sample_ranges_are_exactly_the_samples_in_the_interval(harness):
    """samples_between's binary searches against a scan of every sample's coordinate."""
    rng = np.random.default_rng(3)
    first_last = np.empty(2, np.int32)
    checked = 0
    for _ in range(3000):
        size = int(rng.integers(1, 40))
        crop = int(rng.integers(1, 30))
        lo_box, hi_box = rng.uniform(-0.6, 1.6, 2).astype(np.float32)
        if rng.random() < 0.2:
            hi_box = lo_box
        if rng.random() < 0.05:
            lo_box, hi_box = np.float32(-3e38), np.float32(3e38)
        call = crop_and_resize_call(
            np.zeros((1, size, 1, 1), np.float32), [[lo_box, 0, hi_box, 0]], [0], (crop, 1)
        )
        from cropcore_numpy.kernels import _coordinates

        with np.errstate(all="ignore"):  # overflowing spans give inf and NaN coordinates
            coords = _coordinates(call.boxes[:, 0], call.boxes[:, 2], size, crop)[0]
        if crop == 1:
            start, scale = float(coords[0]), 0.0
        else:
            with np.errstate(all="ignore"):
                start = np.float32(call.boxes[0, 0]) * np.float32(size - 1)
                scale = (
                    (np.float32(call.boxes[0, 2]) - np.float32(call.boxes[0, 0]))
                    * np.float32(size - 1)
                ) / np.float32(crop - 1)
        got_coords = np.empty(crop, np.float32)
        harness.lib.cropcore_test_coords(
            ctypes.c_float(start),
            ctypes.c_float(scale),
            ctypes.c_int32(crop),
            got_coords.ctypes.data_as(ctypes.c_void_p),
        )
        assert_bits_equal(got_coords, coords, "coordinates")
        for pixel in [-1, *range(size)]:
            lo, hi = (pixel - 1.0, pixel + 1.0) if pixel >= 0 else (-1.0, float(size))
            harness.lib.cropcore_test_samples_between(
                ctypes.c_float(start),
                ctypes.c_float(scale),
                ctypes.c_int32(crop),
                ctypes.c_int32(size),
                ctypes.c_float(lo),
                ctypes.c_float(hi),
                first_last.ctypes.data_as(ctypes.c_void_p),
            )
            with np.errstate(invalid="ignore"):
                inside = (coords >= 0) & (coords <= size - 1) & (coords > lo) & (coords < hi)
            expected = np.flatnonzero(inside)
            got = np.arange(first_last[0], first_last[1] + 1)
            np.testing.assert_array_equal(got, expected)
            checked += 1
    assert checked > 10_000


def _forward_case(rng: np.random.Generator, dtype: str | None = None):
    dtype = dtype or str(rng.choice(DTYPES))
    depth = int(rng.choice([1, 2, 3, 4, 8]))
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 24)), int(rng.integers(1, 24)), depth)
    image = random_image(rng, shape, dtype)
    n = int(rng.integers(0, 6))
    boxes, indices = random_boxes(rng, n, shape[1], shape[2])
    indices %= shape[0]
    crop = (int(rng.integers(1, 18)), int(rng.integers(1, 18)))
    method = str(rng.choice(METHODS))
    data_format = str(rng.choice(FORMATS))
    extrapolation = float(np.float32(rng.choice([0.0, -1.0, 7.5, np.nan, -0.0])))
    if data_format == "channels_first" and rng.random() < 0.5:
        image = to_format(image, data_format)  # a strided view
    elif data_format == "channels_first":
        image = np.ascontiguousarray(to_format(image, data_format))
    elif rng.random() < 0.2:
        image = image[:, ::-1]  # negative strides
    return image, boxes, indices, crop, method, extrapolation, data_format


@pytest.mark.parametrize("seed", range(8))
def test_harness_forward_is_bit_identical_to_the_reference(harness, seed):
    rng = np.random.default_rng(100 + seed)
    for case in range(300):
        image, boxes, indices, crop, method, extrapolation, data_format = _forward_case(rng)
        call = crop_and_resize_call(
            image, boxes, indices, crop, method, extrapolation, data_format=data_format
        )
        expected = cropcore.crop_and_resize(
            image,
            boxes,
            indices,
            crop,
            method,
            extrapolation,
            data_format=data_format,
            backend="numpy",
        )
        assert_bits_equal(harness.crop_and_resize(call), expected, f"seed {seed} case {case}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("vec_depth", [4, 8, 6])
def test_harness_forward_vectorised_kernels_equal_the_reference(harness, dtype, vec_depth):
    rng = np.random.default_rng(vec_depth)
    image = random_image(rng, (2, 13, 9, vec_depth), dtype)
    boxes, indices = random_boxes(rng, 7, 13, 9)
    call = crop_and_resize_call(image, boxes, indices % 2, (6, 11))
    vec = _plan.vector_width(
        vec_depth,
        image.itemsize,
        Harness._strides(image, "channels_last"),
        image.shape,
        image.ctypes.data,
    )
    assert vec > 1
    for method in METHODS:
        call = crop_and_resize_call(image, boxes, indices % 2, (6, 11), method, -2.0)
        expected = cropcore.crop_and_resize(
            image, boxes, indices % 2, (6, 11), method, -2.0, backend="numpy"
        )
        assert_bits_equal(harness.crop_and_resize(call), expected, f"{dtype} vec {vec}")


def test_harness_forward_reproduces_tensorflows_quirks(harness):
    """Edge overshoot (H=58, crop 8), round half away from zero, -0.0 inside, crop-1 centres."""
    ones = np.ones((1, 58, 2, 1), np.float32)
    call = crop_and_resize_call(ones, [[0, 0, 1, 1]], [0], (8, 1), extrapolation_value=-1.0)
    assert harness.crop_and_resize(call).ravel().tolist() == [1] * 7 + [-1]
    row = np.arange(5, dtype=np.float32).reshape(1, 5, 1, 1)
    for y, expected in ((0.625, 3), (0.125, 1)):
        call = crop_and_resize_call(row, [[y, 0, y, 0]], [0], (1, 1), "nearest")
        assert harness.crop_and_resize(call).item() == expected
    img = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
    call = crop_and_resize_call(img, [[-0.0, -0.0, 1, 1]], [0], (2, 2), extrapolation_value=-1.0)
    assert harness.crop_and_resize(call).ravel().tolist() == [0, 1, 2, 3]
    call = crop_and_resize_call(img, [[-1e-7, 0, 1, 1]], [0], (2, 2), extrapolation_value=-1.0)
    assert harness.crop_and_resize(call).ravel().tolist() == [-1, -1, 2, 3]


def _grad_case(rng: np.random.Generator, out_dtype: str | None = None):
    depth = int(rng.choice([1, 2, 3, 5]))
    shape = (int(rng.integers(1, 4)), int(rng.integers(1, 16)), int(rng.integers(1, 16)), depth)
    n = int(rng.integers(0, 7))
    boxes, indices = random_boxes(rng, n, shape[1], shape[2])
    indices %= shape[0]
    if rng.random() < 0.3 and n > 1:
        boxes[1:] = boxes[0]  # overlapping boxes: many additions per pixel
    crop = (int(rng.integers(1, 12)), int(rng.integers(1, 12)))
    data_format = str(rng.choice(FORMATS))
    grads = random_image(rng, (n, *crop, depth), "float32")
    if rng.random() < 0.2:
        grads[rng.random(grads.shape) < 0.3] = np.float32(3e-39)  # subnormal gradients
    method = str(rng.choice(METHODS))
    dtype = out_dtype or str(rng.choice(["float16", "float32", "float64"]))
    image_shape = ImageShape(*shape).to_format(data_format)
    return to_format(grads, data_format), boxes, indices, image_shape, method, dtype, data_format


@pytest.mark.parametrize("deterministic", [True, False], ids=["gather", "scatter"])
@pytest.mark.parametrize("seed", range(6))
def test_harness_grad_image_is_bit_identical_to_the_reference(harness, seed, deterministic):
    """Gather in TF's order is exact by design; scatter is exact here because the harness adds in
    TF's order (on a GPU its atomics add in any order)."""
    rng = np.random.default_rng(200 + seed)
    for case in range(200):
        grads, boxes, indices, image_shape, method, dtype, data_format = _grad_case(rng)
        call = grad_image_call(grads, boxes, indices, image_shape, method, data_format, dtype)
        expected = cropcore.crop_and_resize_grad_image(
            grads,
            boxes,
            indices,
            image_shape,
            method,
            data_format=data_format,
            dtype=dtype,
            backend="numpy",
        )
        got = harness.grad_image(call, deterministic)
        assert_bits_equal(got, expected, f"seed {seed} case {case} {method} {dtype} {data_format}")


def test_harness_gather_skips_boxes_of_other_images_and_far_away(harness):
    """Many boxes on a larger image: only the right ones may reach each pixel."""
    rng = np.random.default_rng(5)
    boxes = rng.uniform(0, 1, (60, 4)).astype(np.float32)
    indices = rng.integers(0, 3, 60).astype(np.int32)
    grads = rng.standard_normal((60, 7, 7, 2)).astype(np.float32)
    for method in METHODS:
        call = grad_image_call(grads, boxes, indices, (3, 40, 33, 2), method)
        expected = cropcore.crop_and_resize_grad_image(
            grads, boxes, indices, (3, 40, 33, 2), method, backend="numpy"
        )
        assert_bits_equal(harness.grad_image(call, True), expected, method)


@pytest.mark.parametrize("method", METHODS)
def test_harness_gather_with_row_masks_visits_every_box_that_reaches_a_row(harness, method):
    """Over 32 boxes (several mask words, a partial last word), boxes flipped, outside the image,
    of one row, or with a bad index: the masked gather, the unmasked one and the reference agree
    bit for bit."""
    rng = np.random.default_rng(17)
    n = 150
    boxes = rng.uniform(-0.3, 1.3, (n, 4)).astype(np.float32)
    boxes[::7, 2] = boxes[::7, 0]  # a single row of samples
    boxes[::11] = boxes[::11, [2, 3, 0, 1]]  # flipped
    boxes[5] = [1.5, 1.5, 2.0, 2.0]  # wholly outside
    indices = rng.integers(0, 2, n).astype(np.int32)
    grads = rng.standard_normal((n, 5, 6, 3)).astype(np.float32)
    shape = (2, 37, 29, 3)
    expected = cropcore.crop_and_resize_grad_image(
        grads, boxes, indices, shape, method, backend="numpy"
    )
    call = grad_image_call(grads, boxes, indices, shape, method)
    assert _plan.row_mask_words(n, 37, 2 * 37 * 29 * 3 * 4) == 5
    assert_bits_equal(harness.grad_image(call, True), expected, "with row masks")
    assert_bits_equal(harness.grad_image(call, True, row_masks=False), expected, "without")


def test_harness_row_masks_hold_exactly_the_rows_of_each_box_span(harness):
    rng = np.random.default_rng(3)
    n, height = 70, 23
    boxes = rng.uniform(-0.5, 1.5, (n, 4)).astype(np.float32)
    indices = rng.integers(-1, 3, n).astype(np.int32)  # -1: a bad index, in no row
    grads = np.zeros((n, 4, 4, 1), np.float32)
    words = _plan.row_mask_words(n, height, 2 * height * 9 * 4)
    masks = np.zeros((height, words), np.uint32)
    spans = np.empty((n, 5), np.int32)
    setup = _plan.grad_image(
        grads=grads,
        boxes=boxes,
        box_indices=indices,
        output=np.empty((2, height, 9, 1), np.float32),
        box_axes=np.empty((n, 4), np.float32),
        box_spans=spans,
        row_masks=masks,
        grads_strides=harness._strides(grads, "channels_last"),
        image_shape=ImageShape(2, height, 9, 1),
        crop_size=(4, 4),
        dtype="float32",
        method="bilinear",
        data_format="channels_last",
        deterministic=True,
    )[0]
    harness.run([setup])
    bits = np.unpackbits(masks.view(np.uint8), axis=1, bitorder="little")[:, :n].astype(bool)
    rows = np.arange(height)[:, None]
    good = (indices >= 0) & (indices < 2)
    expected = good & (spans[:, 1] <= rows) & (rows <= spans[:, 2])
    assert expected.any()
    assert not expected.all()
    np.testing.assert_array_equal(bits, expected)


def test_row_masks_are_used_only_where_they_stay_small():
    assert _plan.row_mask_words(1, 10, 0) == 1
    assert _plan.row_mask_words(33, 10, 0) == 2
    assert _plan.row_mask_words(0, 10, 0) == 0
    # 100,000 boxes on 4,096 rows: 51 MB of masks for a 16 MB gradient: scan instead.
    assert _plan.row_mask_words(100_000, 4096, 16 << 20) == 0
    assert _plan.row_mask_words(100_000, 4096, 64 << 20) == 3125


def _reordered_sums_bound(grads: np.ndarray, image: np.ndarray, data_format: str) -> np.ndarray:
    """Per box: n * eps * (a bound of the sum of |terms|), the conformance suite's reordered-sums."""
    nhwc_grads = grads.transpose(0, 2, 3, 1) if data_format == "channels_first" else grads
    nhwc_image = image.transpose(0, 2, 3, 1) if data_format == "channels_first" else image
    pixels = np.abs(nhwc_image.astype(np.float32).astype(np.float64))
    largest = float(pixels[np.isfinite(pixels)].max()) if pixels.size else 0.0
    extent = max(nhwc_image.shape[1:3])
    per_box = np.abs(nhwc_grads.astype(np.float64)).sum(axis=(1, 2, 3))
    per_box = per_box * 2 * largest * max(extent - 1, 1)
    n = int(np.prod(nhwc_grads.shape[1:]))
    return (n * np.finfo(np.float32).eps * per_box)[:, None] + 1e-30


@pytest.mark.parametrize("seed", range(4))
def test_harness_grad_boxes_equals_the_reference_within_reordered_sums(harness, seed):
    rng = np.random.default_rng(300 + seed)
    for case in range(120):
        dtype = str(rng.choice(DTYPES))
        depth = int(rng.choice([1, 2, 3]))
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 14)), int(rng.integers(1, 14)), depth)
        image = random_image(rng, shape, dtype)
        if dtype.startswith("float"):
            image[~np.isfinite(image)] = 1.0  # a non-finite pixel makes every term NaN
        n = int(rng.integers(0, 5))
        boxes, indices = random_boxes(rng, n, shape[1], shape[2])
        boxes[np.abs(boxes) > 100] = 0.5
        indices %= shape[0]
        crop = (int(rng.integers(1, 10)), int(rng.integers(1, 10)))
        grads = rng.standard_normal((n, *crop, depth)).astype(np.float32)
        data_format = str(rng.choice(FORMATS))
        image_f, grads_f = to_format(image, data_format), to_format(grads, data_format)
        call = grad_boxes_call(grads_f, image_f, boxes, indices, data_format=data_format)
        expected = cropcore.crop_and_resize_grad_boxes(
            grads_f, image_f, boxes, indices, data_format=data_format, backend="numpy"
        )
        got = harness.grad_boxes(call)
        bound = _reordered_sums_bound(grads_f, image_f, data_format)
        diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
        assert (diff <= bound).all(), (seed, case, got, expected)


def test_harness_grad_boxes_with_many_chunks_equals_the_reference(harness):
    """A box of 224 x 224 x 3 samples: 74 chunks, combined by the second kernel."""
    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, (2, 300, 280, 3)).astype(np.uint8)
    boxes = np.array([[0.1, 0.2, 0.9, 0.7], [0.8, 0.9, 0.05, 0.0]], np.float32)
    grads = rng.standard_normal((2, 224, 224, 3)).astype(np.float32)
    call = grad_boxes_call(grads, image, boxes, [1, 0])
    assert _plan.grad_boxes_chunking(224 * 224 * 3)[1] == 74
    expected = cropcore.crop_and_resize_grad_boxes(grads, image, boxes, [1, 0], backend="numpy")
    got = harness.grad_boxes(call)
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_harness_tensorflow_gradient_vectors(harness):
    """notes/tf_semantics.md §2.4, recorded from TensorFlow 2.21."""
    ones = np.ones((1, 3, 3, 1), np.float32)
    box = [[0, 0, 1, 1]]
    for deterministic in (True, False):
        call = grad_image_call(ones, box, [0], (1, 2, 2, 1))
        assert harness.grad_image(call, deterministic).ravel().tolist() == [2.25] * 4
        call = grad_image_call(ones, box, [0], (1, 2, 2, 1), "nearest")
        assert harness.grad_image(call, deterministic).ravel().tolist() == [1, 2, 2, 4]
    img2 = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1)
    call = grad_boxes_call(ones, img2, box, [0])
    assert harness.grad_boxes(call).ravel().tolist() == [3.0, 1.5, 3.0, 1.5]
    img3 = np.arange(1, 10, dtype=np.float32).reshape(1, 3, 3, 1)
    grads = np.array([1, 2, 3, 4], np.float32).reshape(1, 2, 2, 1)
    call = grad_boxes_call(grads, img3, [[0.25, 0.25, 0.75, 0.75]], [0])
    assert harness.grad_boxes(call).ravel().tolist() == [18.0, 8.0, 42.0, 12.0]
    call = grad_boxes_call(np.ones((1, 1, 1, 1), np.float32), img2, box, [0])
    assert harness.grad_boxes(call).ravel().tolist() == [1.0, 0.5, 1.0, 0.5]


# Box values cropcore did not read (values_checked=False): docs/decisions.md, "What do unchecked bad
# values give?". A box index outside [0, batch) gives a NaN crop and box-gradient row and nothing in
# the image gradient; the other boxes are computed bit for bit as without the bad ones.

BAD_INDICES = {"equals-batch": 3, "negative": -1, "int32-max": 2**31 - 1, "int32-min": -(2**31)}
BATCH = 3
GOOD_INDICES = np.array([2, 0, 1, 2, 0], np.int32)
BAD_BOXES = (1, 3)  # the boxes given the bad index, among good ones


def _with_bad(bad_index: int) -> np.ndarray:
    indices = GOOD_INDICES.copy()
    indices[list(BAD_BOXES)] = bad_index
    return indices


def _good(x: np.ndarray) -> np.ndarray:
    return np.delete(x, BAD_BOXES, axis=0)


def _bad_index_boxes() -> np.ndarray:
    rng = np.random.default_rng(11)
    boxes = rng.uniform(-0.3, 1.3, (len(GOOD_INDICES), 4)).astype(np.float32)
    boxes[2] = [0, 0, 1, 1]
    return boxes


@pytest.mark.parametrize("bad_index", BAD_INDICES.values(), ids=BAD_INDICES.keys())
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("dtype", ["uint8", "int64", "float16", "float32", "float64"])
def test_harness_forward_bad_box_index_gives_a_nan_crop_and_leaves_the_others(
    harness, bad_index, data_format, dtype
):
    """Depth 4 in NHWC takes the vector kernels (v4, or v2 for float64); NCHW the scalar one."""
    rng = np.random.default_rng(12)
    image = to_format(random_image(rng, (BATCH, 9, 11, 4), dtype), data_format)
    boxes, indices = _bad_index_boxes(), _with_bad(bad_index)
    for method in METHODS:
        args = ((5, 7), method, -1.5)
        call = crop_and_resize_call(
            image, boxes, indices, *args, data_format=data_format, check_values=False
        )
        assert not call.values_checked
        got = harness.crop_and_resize(call)
        good = harness.crop_and_resize(
            crop_and_resize_call(
                image, _good(boxes), _good(GOOD_INDICES), *args, data_format=data_format
            )
        )
        expected = np.full(got.shape, np.nan, np.float32)
        expected[_good(np.arange(len(boxes)))] = good
        assert_bits_equal(got, expected, f"{method} {bad_index}")
        reference = cropcore.crop_and_resize(
            image,
            _good(boxes),
            _good(GOOD_INDICES),
            *args,
            data_format=data_format,
            backend="numpy",
        )
        assert_bits_equal(good, reference, method)


@pytest.mark.parametrize("bad_index", BAD_INDICES.values(), ids=BAD_INDICES.keys())
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("deterministic", [True, False], ids=["gather", "scatter"])
def test_harness_grad_image_bad_box_index_adds_nothing(
    harness, bad_index, data_format, dtype, deterministic
):
    rng = np.random.default_rng(13)
    boxes, indices = _bad_index_boxes(), _with_bad(bad_index)
    grads = to_format(rng.standard_normal((len(boxes), 5, 7, 3)).astype(np.float32), data_format)
    image_shape = ImageShape(BATCH, 9, 11, 3).to_format(data_format)
    for method in METHODS:
        call = grad_image_call(
            grads, boxes, indices, image_shape, method, data_format, dtype, check_values=False
        )
        got = harness.grad_image(call, deterministic)
        good_args = (_good(grads), _good(boxes), _good(GOOD_INDICES), image_shape, method)
        expected = cropcore.crop_and_resize_grad_image(
            *good_args, data_format=data_format, dtype=dtype, backend="numpy"
        )
        assert_bits_equal(got, expected, f"{method} {bad_index}")
        assert np.isfinite(got).all()


@pytest.mark.parametrize("bad_index", BAD_INDICES.values(), ids=BAD_INDICES.keys())
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("dtype", ["uint8", "int32", "float16", "float32", "float64"])
def test_harness_grad_boxes_bad_box_index_gives_a_nan_row_and_leaves_the_others(
    harness, bad_index, data_format, dtype
):
    rng = np.random.default_rng(14)
    image = to_format(random_image(rng, (BATCH, 9, 11, 3), dtype), data_format)
    if dtype.startswith("float"):
        image[~np.isfinite(image)] = 1.0
    boxes, indices = _bad_index_boxes(), _with_bad(bad_index)
    for crop in ((5, 7), (1, 1), (30, 40)):  # (30, 40) x 3: two chunks and the finishing kernel
        grads = rng.standard_normal((len(boxes), *crop, 3)).astype(np.float32)
        grads = to_format(grads, data_format)
        call = grad_boxes_call(
            grads, image, boxes, indices, data_format=data_format, check_values=False
        )
        got = harness.grad_boxes(call)
        good = harness.grad_boxes(
            grad_boxes_call(
                _good(grads), image, _good(boxes), _good(GOOD_INDICES), data_format=data_format
            )
        )
        expected = np.full(got.shape, np.nan, np.float32)
        expected[_good(np.arange(len(boxes)))] = good
        assert_bits_equal(got, expected, f"{crop} {bad_index}")
        assert np.isfinite(good).all()
    assert _plan.grad_boxes_chunking(30 * 40 * 3)[1] == 2


def test_harness_every_box_index_is_bad_when_the_batch_is_empty(harness):
    """batch == 0: no image to read at all (a clamped index would still be out of bounds)."""
    image = np.zeros((0, 4, 5, 2), np.float32)
    boxes = np.array([[0, 0, 1, 1], [0.2, 0.1, 0.7, 0.9]], np.float32)
    indices = np.array([0, -1], np.int32)
    call = crop_and_resize_call(image, boxes, indices, (3, 2), check_values=False)
    assert np.isnan(harness.crop_and_resize(call)).all()
    grads = np.ones((2, 3, 2, 2), np.float32)
    call = grad_boxes_call(grads, image, boxes, indices, check_values=False)
    assert np.isnan(harness.grad_boxes(call)).all()


_ASAN_SCRIPT = """
import sys
from pathlib import Path

import numpy as np

import test_cupy_backend as t
from cropcore.spec import (
    crop_and_resize_call,
    grad_boxes_call,
    grad_image_call,
    roi_align_call,
    roi_align_grad_image_call,
)

h = t.Harness(Path(sys.argv[1]))
for bad in t.BAD_INDICES.values():
    boxes, indices = t._bad_index_boxes(), t._with_bad(bad)
    for data_format in t.FORMATS:
        for dtype in ("uint8", "float32", "float64"):
            rng = np.random.default_rng(1)
            image = t.random_image(rng, (t.BATCH, 9, 11, 4), dtype)
            image = np.ascontiguousarray(t.to_format(image, data_format))
            grads = np.ones((len(boxes), 5, 7, 4), np.float32)
            grads = np.ascontiguousarray(t.to_format(grads, data_format))
            for method in t.METHODS:
                args = (boxes, indices, (5, 7), method, 0.0, data_format)
                h.crop_and_resize(crop_and_resize_call(image, *args, check_values=False))
                args = (boxes, indices, image.shape, method, data_format, "float16")
                for deterministic in (True, False):
                    h.grad_image(grad_image_call(grads, *args, check_values=False), deterministic)
            call = grad_boxes_call(
                grads, image, boxes, indices, data_format=data_format, check_values=False
            )
            h.grad_boxes(call)
    pixel_boxes = boxes * np.float32(10)
    for data_format in t.FORMATS:
        for dtype in ("float16", "float64"):
            image = t.random_image(np.random.default_rng(2), (t.BATCH, 9, 11, 3), dtype)
            image = np.ascontiguousarray(t.to_format(image, data_format))
            roi = {"box_indices": indices, "data_format": data_format, "check_values": False}
            for mode in ("avg", "max"):
                h.roi_align(roi_align_call(image, pixel_boxes.astype(dtype), (4, 3), mode=mode, **roi))
            grads = np.ones((len(boxes), 4, 3, 3), dtype)
            grads = np.ascontiguousarray(t.to_format(grads, data_format))
            h.roi_align_grad_image(
                roi_align_grad_image_call(grads, pixel_boxes.astype(dtype), image.shape, **roi)
            )
empty = np.zeros((0, 4, 5, 2), np.float32)
h.crop_and_resize(crop_and_resize_call(empty, [[0, 0, 1, 1]], [0], (3, 2), check_values=False))
grads = np.ones((1, 3, 2, 2), np.float32)
h.grad_boxes(grad_boxes_call(grads, empty, [[0, 0, 1, 1]], [0], check_values=False))
print("clean")
"""


def test_harness_bad_box_indices_read_and_write_nothing_outside_the_arrays(tmp_path):
    """The harness built with AddressSanitizer, on bad indices: no access outside any array (the
    unguarded kernels read past the image here, and far outside it for 2**31 - 1)."""
    cxx = find_cxx()
    if cxx is None or platform.machine().lower() not in ("x86_64", "amd64", "aarch64", "arm64"):
        pytest.skip("no C++ compiler, or no flush-to-zero for the harness on this machine")
    found = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True)
    libasan = found.stdout.strip()
    if found.returncode or not Path(libasan).is_absolute() or not Path(libasan).is_file():
        pytest.skip(f"{cxx} has no AddressSanitizer runtime to preload")
    out = tmp_path / "harness_asan.so"
    command = [
        cxx,
        *("-O1", "-g", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math"),
        "-fsanitize=address",
        f"-I{PACKAGE}",
        f"-I{native.include_dir()}",
        "-o",
        str(out),
        str(HARNESS),
    ]
    built = subprocess.run(command, capture_output=True, text=True, check=False)
    assert built.returncode == 0, f"{' '.join(command)}\n{built.stderr}"
    env = {
        **os.environ,
        "LD_PRELOAD": libasan,
        "ASAN_OPTIONS": "detect_leaks=0",
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path]),
    }
    ran = subprocess.run(
        [sys.executable, "-c", _ASAN_SCRIPT, str(out)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    assert ran.stdout.strip() == "clean", ran.stdout[-4000:]


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("deterministic", [True, False], ids=["gather", "scatter"])
def test_harness_non_finite_boxes_extrapolate_and_have_no_gradient(
    harness, data_format, deterministic
):
    """NaN or infinite boxes (and spans that overflow): every sample outside."""
    boxes = np.array(
        [
            [0.1, 0.2, np.nan, 0.9],
            [0.1, np.nan, 0.8, 0.9],
            [-np.inf, 0, np.inf, 1],
            [0, 0, np.inf, 1],
        ],
        np.float32,
    )
    indices = np.array([1, 0, 1, 0], np.int32)
    image = to_format(np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3), data_format)
    image_shape = ImageShape(2, 4, 5, 3).to_format(data_format)
    for method in METHODS:
        for crop in ((3, 4), (1, 1)):
            call = crop_and_resize_call(
                image, boxes, indices, crop, method, 0.5, data_format, check_values=False
            )
            got = harness.crop_and_resize(call)
            assert_bits_equal(got, np.full(got.shape, 0.5, np.float32), f"{method} {crop}")
            grads = to_format(np.ones((4, *crop, 3), np.float32), data_format)
            call = grad_image_call(
                grads, boxes, indices, image_shape, method, data_format, check_values=False
            )
            got = harness.grad_image(call, deterministic)
            assert_bits_equal(got, np.zeros(got.shape, np.float32), f"{method} {crop}")
            if method == "bilinear":
                call = grad_boxes_call(
                    grads, image, boxes, indices, data_format=data_format, check_values=False
                )
                got = harness.grad_boxes(call)
                assert_bits_equal(got, np.zeros(got.shape, np.float32), f"{crop}")


# -- roi_align (torchvision's and ONNX Runtime's arithmetic: IEEE, no flush; roi_align.cuh)

ROI_DTYPES = ["float16", "float32", "float64"]
ROI_MODES = ["avg", "max"]


def _roi_case(rng: np.random.Generator, dtype: str | None = None, data_format: str | None = None):
    """A random roi_align call: image (a strided view at times), pixel boxes of every kind, and
    the keyword arguments both ops share (``output_size`` apart)."""
    dtype = dtype or str(rng.choice(ROI_DTYPES))
    depth = int(rng.choice([1, 2, 3, 4, 5, 9]))  # 4 channels per thread, and a partial chunk
    batch, height, width = (
        int(rng.integers(1, 4)),
        int(rng.integers(1, 20)),
        int(rng.integers(1, 20)),
    )
    image = random_image(rng, (batch, height, width, depth), dtype)
    n = int(rng.integers(0, 7))
    scale = float(rng.choice([1.0, 0.5, 0.25, 1 / 16, 0.3]))  # 0.3: rounded to the compute dtype
    extent = np.array([width, height, width, height]) / scale
    boxes = (rng.uniform(-0.3, 1.3, (n, 4)) * extent).astype(dtype)
    kind = rng.random(n)
    boxes[kind < 0.15] = boxes[kind < 0.15][:, [2, 3, 0, 1]]  # flipped
    boxes[(kind >= 0.15) & (kind < 0.25), 2] = boxes[(kind >= 0.15) & (kind < 0.25), 0]  # no width
    far = (kind >= 0.25) & (kind < 0.3)
    boxes[far] = np.array([-50, -50, -20, -20], dtype) / scale  # every sample empty
    if rng.random() < 0.3 and n > 1:
        boxes[1:] = boxes[0]  # overlapping boxes: many additions per pixel
    indices = rng.integers(0, batch, n).astype(np.int32)
    data_format = data_format or str(rng.choice(FORMATS))
    view = to_format(image, data_format)
    if data_format == "channels_first" and rng.random() < 0.5:
        view = np.ascontiguousarray(view)
    elif data_format == "channels_last" and rng.random() < 0.2:
        view = view[:, ::-1]  # negative strides
    kwargs = {
        "spatial_scale": scale,
        "sampling_ratio": int(rng.choice([-1, 0, 1, 2, 3])),
        "aligned": bool(rng.random() < 0.5),
        "box_indices": indices,
        "data_format": data_format,
    }
    output_size = (int(rng.integers(1, 6)), int(rng.integers(1, 6)))
    return view, boxes, output_size, kwargs


@pytest.mark.parametrize("seed", range(4))
def test_harness_roi_align_is_bit_identical_to_the_reference(harness, seed):
    """Both modes, the three dtypes, both layouts, strided views, adaptive and fixed grids,
    aligned or not, boxes flipped, empty, outside and overlapping, NaN/inf/subnormal pixels."""
    rng = np.random.default_rng(400 + seed)
    for case in range(150):
        image, boxes, output_size, kwargs = _roi_case(rng)
        mode = str(rng.choice(ROI_MODES))
        call = roi_align_call(image, boxes, output_size, mode=mode, **kwargs)
        expected = cropcore.roi_align(
            image, boxes, output_size, mode=mode, backend="numpy", **kwargs
        )
        got = harness.roi_align(call)
        assert_bits_equal(got, expected, f"seed {seed} case {case} {mode} {image.dtype}")


@pytest.mark.parametrize("seed", range(4))
def test_harness_roi_align_grad_image_is_bit_identical_to_the_reference(harness, seed):
    """The gather adds in torchvision's order (boxes, bins, samples, corners): the reference's."""
    rng = np.random.default_rng(500 + seed)
    for case in range(120):
        image, boxes, output_size, kwargs = _roi_case(rng)
        shape = ImageShape(
            len(boxes),
            *output_size,
            image.shape[-1 if kwargs["data_format"] == "channels_last" else 1],
        )
        grads = random_image(rng, tuple(shape), image.dtype.name)
        grads = to_format(grads, kwargs["data_format"])
        if rng.random() < 0.2 and grads.dtype != np.float16:
            with np.errstate(invalid="ignore"):  # inf * 1e-38 stays inf; NaN stays NaN
                grads = grads * np.asarray(1e-38, grads.dtype)  # subnormal products
        call = roi_align_grad_image_call(grads, boxes, image.shape, **kwargs)
        expected = cropcore.roi_align_grad_image(
            grads, boxes, image.shape, backend="numpy", **kwargs
        )
        got = harness.roi_align_grad_image(call)
        assert_bits_equal(got, expected, f"seed {seed} case {case} {grads.dtype}")


@pytest.mark.parametrize("data_format", FORMATS)
def test_harness_roi_align_gather_with_row_masks_visits_every_box_that_reaches_a_row(
    harness, data_format
):
    """150 boxes (five mask words, a partial last one) on two images, flipped, outside the image,
    of one row, or with a bad index: the masked gather, the unmasked one and the reference agree
    bit for bit."""
    rng = np.random.default_rng(18)
    n, shape = 150, ImageShape(2, 37, 29, 3)
    boxes = (rng.uniform(-0.3, 1.3, (n, 4)) * np.array([29, 37, 29, 37])).astype(np.float32)
    boxes[::7, 3] = boxes[::7, 1]  # no height
    boxes[::11] = boxes[::11][:, [2, 3, 0, 1]]  # flipped
    boxes[5] = [60, 60, 80, 80]  # wholly outside
    indices = rng.integers(0, 2, n).astype(np.int32)
    grads = to_format(rng.standard_normal((n, 5, 6, 3)).astype(np.float32), data_format)
    image_shape = shape.to_format(data_format)
    args = {"box_indices": indices, "data_format": data_format, "aligned": True}
    expected = cropcore.roi_align_grad_image(grads, boxes, image_shape, backend="numpy", **args)
    call = roi_align_grad_image_call(grads, boxes, image_shape, **args)
    assert _plan.row_mask_words(n, 37, 2 * 37 * 29 * 3 * 4) == 5
    assert_bits_equal(harness.roi_align_grad_image(call), expected, "with row masks")
    unmasked = harness.roi_align_grad_image(call, row_masks=False)
    assert_bits_equal(unmasked, expected, "without")
    bad = indices.copy()
    bad[::3] = 2  # == batch: these boxes add nothing, masked or not
    call = roi_align_grad_image_call(
        grads, boxes, image_shape, **{**args, "box_indices": bad}, check_values=False
    )
    keep = np.arange(n) % 3 != 0
    expected = cropcore.roi_align_grad_image(
        grads[keep], boxes[keep], image_shape, backend="numpy", **{**args, "box_indices": bad[keep]}
    )
    assert_bits_equal(harness.roi_align_grad_image(call), expected, "bad indices, masks")
    assert_bits_equal(harness.roi_align_grad_image(call, row_masks=False), expected, "bad, none")


def test_harness_roi_align_keeps_subnormals_as_torchvision_does(harness):
    """By hand: a 2 x 2 image of 2**-140 (a float32 subnormal), one bin, one sample at the
    centre: the average of four equal pixels is 2**-140 (with flush-to-zero it would be 0). Its
    gradient spreads g = 2**-140 as four quarters, 2**-142 each."""
    tiny = np.float32(2.0**-140)
    image = np.full((1, 1, 2, 2), tiny, np.float32)
    box = np.array([[0, 0, 1, 1]], np.float32)
    args = {"spatial_scale": 1.0, "sampling_ratio": 1, "aligned": False, "box_indices": [0]}
    for mode, expected in (("avg", tiny), ("max", np.float32(2.0**-142))):
        got = harness.roi_align(roi_align_call(image, box, (1, 1), mode=mode, **args))
        assert_bits_equal(got, np.full((1, 1, 1, 1), expected, np.float32), mode)
    grads = np.full((1, 1, 1, 1), tiny, np.float32)
    got = harness.roi_align_grad_image(roi_align_grad_image_call(grads, box, (1, 1, 2, 2), **args))
    assert_bits_equal(got, np.full((1, 1, 2, 2), np.float32(2.0**-142), np.float32))


def test_harness_roi_align_onnxruntime_vector_by_hand(harness):
    """A 4 x 4 ramp (value = 4 * row + column), box [0.5, 0.5, 2.5, 2.5] (x1, y1, x2, y2),
    output 1 x 1, sampling_ratio 2, aligned=False: samples at 1.0 and 2.0 on each axis, the
    pixels (1, 1), (1, 2), (2, 1), (2, 2): mean 7.5, max 10.0 (the largest weighted corner,
    weight 1 at the pixel (2, 2))."""
    image = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    box = np.array([[0.5, 0.5, 2.5, 2.5]], np.float32)
    for mode, expected in (("avg", 7.5), ("max", 10.0)):
        call = roi_align_call(image, box, (1, 1), sampling_ratio=2, mode=mode, box_indices=[0])
        assert harness.roi_align(call).item() == expected, mode


@pytest.mark.parametrize("bad_index", BAD_INDICES.values(), ids=BAD_INDICES.keys())
@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("dtype", ROI_DTYPES)
def test_harness_roi_align_bad_box_index_gives_nan_and_no_gradient(
    harness, bad_index, data_format, dtype
):
    """docs/decisions.md's unchecked-values rule on roi_align: the bad boxes' bins are NaN and add
    nothing to the gradient; the good boxes are bit for bit as without them."""
    rng = np.random.default_rng(15)
    image = to_format(random_image(rng, (BATCH, 9, 11, 3), dtype), data_format)
    boxes = (_bad_index_boxes() * np.array([11, 9, 11, 9], np.float32)).astype(dtype)
    indices = _with_bad(bad_index)
    kwargs = {"sampling_ratio": -1, "aligned": True, "data_format": data_format}
    for mode in ROI_MODES:
        call = roi_align_call(
            image, boxes, (4, 3), box_indices=indices, mode=mode, check_values=False, **kwargs
        )
        got = harness.roi_align(call)
        reference = cropcore.roi_align(
            image,
            _good(boxes),
            (4, 3),
            box_indices=_good(GOOD_INDICES),
            mode=mode,
            backend="numpy",
            **kwargs,
        )
        expected = np.full(got.shape, np.nan, got.dtype)
        expected[_good(np.arange(len(boxes)))] = reference
        assert_bits_equal(got, expected, f"{mode} {bad_index}")
    grads = rng.standard_normal((len(boxes), 4, 3, 3)).astype(dtype)
    grads = to_format(grads, data_format)
    call = roi_align_grad_image_call(
        grads, boxes, image.shape, box_indices=indices, check_values=False, **kwargs
    )
    got = harness.roi_align_grad_image(call)
    expected = cropcore.roi_align_grad_image(
        _good(grads),
        _good(boxes),
        image.shape,
        box_indices=_good(GOOD_INDICES),
        backend="numpy",
        **kwargs,
    )
    assert_bits_equal(got, expected, f"gradient {bad_index}")
    assert np.isfinite(got).all()


def test_roi_align_refuses_more_than_2_31_samples_as_the_reference_does(harness):
    """Checked boxes: the reference's ValueError, before any launch. Unread device boxes: the
    kernels make a box of more than 2**31 samples bad (NaN, no gradient) instead of running for
    hours; a fixed sampling_ratio is checked from the shapes alone."""
    image = np.zeros((1, 1, 8, 8), np.float32)
    huge = np.array([[0, 0, 1e30, 1e30], [0, 0, 4, 4]], np.float32)
    with pytest.raises(ValueError, match="more than 2147483648") as numpy_error:
        cropcore.roi_align(image, huge, (7, 7), box_indices=[0, 0], backend="numpy")
    call = roi_align_call(image, huge, (7, 7), box_indices=[0, 0])
    with pytest.raises(ValueError, match="more than 2147483648") as harness_error:
        harness.roi_align(call)
    assert str(harness_error.value) == str(numpy_error.value)
    unread = roi_align_call(image, huge, (7, 7), box_indices=[0, 0], check_values=False)
    assert _plan.roi_samples_error(unread, None) is None
    got = harness.roi_align(
        roi_align_call(image, huge, (7, 7), box_indices=[0, 0], check_values=False)
    )
    assert np.isnan(got[0]).all()
    expected = cropcore.roi_align(image, huge[1:], (7, 7), box_indices=[0], backend="numpy")
    assert_bits_equal(got[1:], expected)
    grads = np.ones((2, 1, 7, 7), np.float32)
    unread = roi_align_grad_image_call(
        grads, huge, (1, 1, 8, 8), box_indices=[0, 0], check_values=False
    )
    expected = cropcore.roi_align_grad_image(
        grads[1:], huge[1:], (1, 1, 8, 8), box_indices=[0], backend="numpy"
    )
    assert_bits_equal(harness.roi_align_grad_image(unread), expected)
    fixed = roi_align_call(image, huge, (7, 7), sampling_ratio=10**4, box_indices=[0, 0])
    error = _plan.roi_samples_error(fixed, None)
    assert isinstance(error, ValueError)
    assert "9800000000 samples" in str(error)


def test_roi_align_calls_are_declined_only_beyond_the_kernels_counts(cropcore_env):
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", str(2**62))
    image = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (2, 256, 64, 64), (0,) * 4)
    boxes = np.zeros((300, 4), np.float32)
    indices = np.zeros(300, np.int32)
    call = roi_align_call(image, boxes, (7, 7), box_indices=indices)
    assert cropcore_cupy.cropcore_backend_declines(call) is None
    grads = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (300, 256, 7, 7), (0,) * 4)
    call = roi_align_grad_image_call(grads, boxes, image.shape, box_indices=indices)
    assert cropcore_cupy.cropcore_backend_declines(call) is None
    wide = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (1, 1, 4, 2**24 + 1), (0,) * 4)
    call = roi_align_call(wide, boxes[:1], (2, 2), box_indices=indices[:1])
    assert "exceeds 2**24" in cropcore_cupy.cropcore_backend_declines(call)
    deep = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), (1, 2**16, 4, 4), (0,) * 4)
    many = np.zeros((2**10, 4), np.float32)
    call = roi_align_call(
        deep, many, (2**6, 2), box_indices=np.zeros(2**10, np.int32), check_values=False
    )
    assert "num_boxes * pooled_height * depth" in cropcore_cupy.cropcore_backend_declines(call)


def test_harness_passes_the_roi_align_conformance_category(harness):
    """The roi-align category -- ONNX Runtime's recorded vectors in both layouts, float16, and the
    image gradient against the reference -- exactly, through cropcore's API."""
    conformance = pytest.importorskip("cropcore_conformance")
    name = "cupy_harness_roi"
    module = _harness_backend(harness, name, deterministic=True)
    registry.register(module, name=name)
    try:
        report = conformance.run(name, categories=["roi-align"])
    finally:
        registry.unregister(name)
    failures = "\n".join(f"  {r.id}: {r.message[:300]}" for r in report.failures[:20])
    assert report.exit_code == 0, failures
    passed = [r.id for r in report.results if r.status == "passed"]
    assert any("/roi_align_grad/" in i for i in passed)
    assert any(i.endswith("-float16") for i in passed)
    assert len(passed) >= 400


def _harness_backend(harness: Harness, name: str, deterministic: bool):
    """A plugin whose ops run the host harness: the kernels' arithmetic behind cropcore's API."""
    module = types.ModuleType(f"cupy_host_harness_{name}")
    info = BackendInfo(name=name, array_library="numpy", devices=("cpu",), version="harness")
    hooks = {
        "cropcore_backend_info": lambda: info,
        "cropcore_backend_declines": lambda call: _plan.decline_reason(call),
        "cropcore_crop_and_resize": lambda call: harness.crop_and_resize(call),
        "cropcore_crop_and_resize_grad_image": lambda call: harness.grad_image(call, deterministic),
        "cropcore_crop_and_resize_grad_boxes": lambda call: harness.grad_boxes(call),
        "cropcore_crop2d": lambda call: call.x[call.slices],
        "cropcore_roi_align": lambda call: harness.roi_align(call),
        "cropcore_roi_align_grad_image": lambda call: harness.roi_align_grad_image(call),
        # Exact everywhere the GPU kernels are designed to be (the harness adds the scatter's
        # contributions in TF's order); the box gradient's tree sums as the GPU's do.
        "cropcore_conformance_tolerances": lambda: {"*/grad_boxes/*": "reordered-sums"},
    }
    for hook, function in hooks.items():
        function.__name__ = hook
        setattr(module, hook, hookimpl(function))
    return module


@pytest.mark.slow
@pytest.mark.parametrize("deterministic", [True, False], ids=["gather", "scatter"])
def test_harness_passes_the_conformance_suite(harness, deterministic):
    """The whole suite -- TensorFlow's recorded vectors and unit tests, edge cases, properties,
    gradients, errors -- on the kernels' arithmetic (host-compiled), exact but for box gradients."""
    conformance = pytest.importorskip("cropcore_conformance")
    name = f"cupy_harness_{'gather' if deterministic else 'scatter'}"
    registry.register(_harness_backend(harness, name, deterministic), name=name)
    # KNOWN_SUITE_GAPS (top of the file) are left out.
    try:
        report = conformance.run(
            name,
            categories=[c for c in conformance.CATEGORIES if c != "round-trips"],
            exclude=list(KNOWN_SUITE_GAPS),
        )
    finally:
        registry.unregister(name)
    failures = "\n".join(f"  {r.id}: {r.message[:300]}" for r in report.failures[:20])
    assert report.exit_code == 0, failures
    assert sum(1 for r in report.results if r.status == "passed") > 1500


# ==================================================================================================
# 4. Device tests (a GPU with CuPy)


@pytest.fixture(scope="module")
def cupy():
    module = pytest.importorskip("cupy")
    reason = cupy_probe_reason()
    if reason is not None:
        pytest.skip(f"the cupy backend cannot run here: {reason}")
    return module


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_device_forward_is_bit_identical_to_the_reference(cupy, dtype, method, data_format):
    rng = np.random.default_rng(DTYPES.index(dtype))
    for depth in (1, 3, 4, 8):
        image = random_image(rng, (2, 17, 23, depth), dtype)
        boxes, indices = random_boxes(rng, 9, 17, 23)
        image = np.ascontiguousarray(to_format(image, data_format))
        expected = cropcore.crop_and_resize(
            image,
            boxes,
            indices % 2,
            (7, 12),
            method,
            -1.0,
            data_format=data_format,
            backend="numpy",
        )
        got = cropcore.crop_and_resize(
            cupy.asarray(image),
            boxes,
            indices % 2,
            (7, 12),
            method,
            -1.0,
            data_format=data_format,
            backend="cuda",
        )
        assert isinstance(got, cupy.ndarray)
        assert_bits_equal(
            cupy.asnumpy(got), expected, f"{dtype} {method} {data_format} depth {depth}"
        )


def test_device_forward_strided_and_channels_last_memory_views(cupy):
    rng = np.random.default_rng(11)
    image = cupy.asarray(random_image(rng, (2, 20, 30, 4), "float32"))
    boxes, indices = random_boxes(rng, 6, 20, 30)
    for view, data_format in (
        (image[:, ::2, 1::3], "channels_last"),
        (image.transpose(0, 3, 1, 2), "channels_first"),  # NCHW shape, NHWC memory
        (image[:, ::-1], "channels_last"),
    ):
        expected = cropcore.crop_and_resize(
            cupy.asnumpy(view), boxes, indices % 2, (5, 9), data_format=data_format, backend="numpy"
        )
        got = cropcore.crop_and_resize(view, boxes, indices % 2, (5, 9), data_format=data_format)
        assert_bits_equal(cupy.asnumpy(got), expected, data_format)


def test_device_results_equal_the_host_harness_bit_for_bit(cupy, harness):
    rng = np.random.default_rng(12)
    for _ in range(40):
        image, boxes, indices, crop, method, extrapolation, data_format = _forward_case(rng)
        image = np.ascontiguousarray(image)
        call = crop_and_resize_call(
            image, boxes, indices, crop, method, extrapolation, data_format=data_format
        )
        got = cropcore.crop_and_resize(
            cupy.asarray(image),
            boxes,
            indices,
            crop,
            method,
            extrapolation,
            data_format=data_format,
            backend="cuda",
        )
        assert_bits_equal(cupy.asnumpy(got), harness.crop_and_resize(call), "forward")
    for _ in range(40):
        grads, boxes, indices, image_shape, method, dtype, data_format = _grad_case(rng)
        grads = np.ascontiguousarray(grads)
        call = grad_image_call(grads, boxes, indices, image_shape, method, data_format, dtype)
        with cropcore_cupy.deterministic():
            got = cropcore.crop_and_resize_grad_image(
                cupy.asarray(grads),
                boxes,
                indices,
                image_shape,
                method,
                data_format=data_format,
                dtype=dtype,
                backend="cuda",
            )
        assert_bits_equal(cupy.asnumpy(got), harness.grad_image(call, True), "gather")
    image = rng.integers(0, 256, (2, 50, 60, 3)).astype(np.uint8)
    boxes, indices = random_boxes(rng, 5, 50, 60)
    boxes[np.abs(boxes) > 100] = 0.5
    grads = rng.standard_normal((5, 100, 90, 3)).astype(np.float32)
    call = grad_boxes_call(grads, image, boxes, indices % 2)
    got = cropcore.crop_and_resize_grad_boxes(
        cupy.asarray(grads), cupy.asarray(image), boxes, indices % 2, backend="cuda"
    )
    assert_bits_equal(cupy.asnumpy(got), harness.grad_boxes(call), "grad_boxes")


@pytest.mark.parametrize("deterministic", [True, False])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("method", METHODS)
def test_device_grad_image(cupy, deterministic, dtype, method):
    rng = np.random.default_rng(13)
    for data_format in FORMATS:
        grads = rng.standard_normal((40, 7, 7, 3)).astype(np.float32)
        boxes = rng.uniform(-0.1, 1.1, (40, 4)).astype(np.float32)
        indices = rng.integers(0, 2, 40).astype(np.int32)
        shape = ImageShape(2, 16, 16, 3).to_format(data_format)
        grads_f = np.ascontiguousarray(to_format(grads, data_format))
        expected = cropcore.crop_and_resize_grad_image(
            grads_f,
            boxes,
            indices,
            shape,
            method,
            data_format=data_format,
            dtype=dtype,
            backend="numpy",
        )
        with cropcore_cupy.deterministic(deterministic):
            runs = [
                cupy.asnumpy(
                    cropcore.crop_and_resize_grad_image(
                        cupy.asarray(grads_f),
                        boxes,
                        indices,
                        shape,
                        method,
                        data_format=data_format,
                        dtype=dtype,
                        backend="cuda",
                    )
                )
                for _ in range(3)
            ]
        if deterministic:
            for run in runs:
                assert_bits_equal(run, expected, f"deterministic {dtype} {method} {data_format}")
        else:  # atomics add in any order: the bound of a sum taken in any order
            magnitude = cropcore.crop_and_resize_grad_image(
                np.abs(grads_f).astype(np.float64),
                boxes,
                indices,
                shape,
                method,
                data_format=data_format,
                dtype="float64",
                backend="numpy",
            )
            bound = 4 * 40 * 49 * np.finfo(dtype).eps * magnitude
            for run in runs:
                diff = np.abs(run.astype(np.float64) - expected.astype(np.float64))
                assert (diff <= bound).all(), f"atomic {dtype} {method} {data_format}"


def test_device_grad_boxes_within_reordered_sums(cupy):
    rng = np.random.default_rng(14)
    for dtype in DTYPES:
        image = random_image(rng, (2, 30, 40, 3), dtype)
        if dtype.startswith("float"):
            image[~np.isfinite(image)] = 0
        boxes = rng.uniform(0, 1, (8, 4)).astype(np.float32)
        grads = rng.standard_normal((8, 9, 11, 3)).astype(np.float32)
        expected = cropcore.crop_and_resize_grad_boxes(
            grads, image, boxes, [0, 1] * 4, backend="numpy"
        )
        got = cropcore.crop_and_resize_grad_boxes(
            cupy.asarray(grads), cupy.asarray(image), boxes, [0, 1] * 4, backend="cuda"
        )
        bound = _reordered_sums_bound(grads, image, "channels_last")
        assert (np.abs(cupy.asnumpy(got) - expected) <= bound).all(), dtype


def test_device_deterministic_image_gradient_is_repeatable_under_contention(cupy):
    """Thousands of boxes on one small image: atomics would reorder; the gather must not."""
    rng = np.random.default_rng(15)
    boxes = rng.uniform(0, 1, (2000, 4)).astype(np.float32)
    grads = cupy.asarray(rng.standard_normal((2000, 14, 14, 4)).astype(np.float32))
    with cropcore_cupy.deterministic():
        first = cropcore.crop_and_resize_grad_image(
            grads, boxes, np.zeros(2000, np.int32), (1, 8, 8, 4)
        )
        for _ in range(5):
            again = cropcore.crop_and_resize_grad_image(
                grads, boxes, np.zeros(2000, np.int32), (1, 8, 8, 4)
            )
            assert_bits_equal(cupy.asnumpy(again), cupy.asnumpy(first), "repeat")


def test_device_results_come_back_in_the_callers_library_and_device(cupy):
    image = np.arange(2 * 5 * 5 * 3, dtype=np.float32).reshape(2, 5, 5, 3)
    got = cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [1], (3, 3), backend="cuda")
    assert isinstance(got, np.ndarray)
    expected = cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [1], (3, 3), backend="numpy")
    assert_bits_equal(got, expected)
    on_gpu = cupy.asarray(image)
    auto = cropcore.crop_and_resize(on_gpu, [[0, 0, 1, 1]], [1], (3, 3))
    assert isinstance(auto, cupy.ndarray)
    assert auto.device == on_gpu.device
    assert (
        cropcore.explain("crop_and_resize", on_gpu, [[0, 0, 1, 1]], [1], (3, 3)).backend == "cupy"
    )
    view = cropcore.crop2d(on_gpu, ((1, 1), (2, 0)), backend="cuda")
    assert isinstance(view, cupy.ndarray)
    assert view.data.ptr != 0
    assert_bits_equal(cupy.asnumpy(view), image[:, 1:4, 2:])
    if cupy.cuda.runtime.getDeviceCount() > 1:
        with cupy.cuda.Device(1):
            other = cupy.asarray(image)
        result = cropcore.crop_and_resize(other, [[0, 0, 1, 1]], [1], (3, 3))
        assert result.device.id == 1
        assert_bits_equal(cupy.asnumpy(result), expected)


def test_device_torch_cuda_tensors_in_and_out_without_copies(cupy):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA here")
    image = torch.arange(2 * 6 * 7 * 4, dtype=torch.float32, device="cuda").reshape(2, 6, 7, 4)
    boxes = torch.tensor([[0, 0, 1, 1], [0.2, 0.1, 0.9, 0.8]], device="cuda")
    indices = torch.tensor([1, 0], dtype=torch.int32, device="cuda")
    got = cropcore.crop_and_resize(image, boxes, indices, (4, 5), backend="cuda")
    assert isinstance(got, torch.Tensor)
    assert got.device == image.device
    expected = cropcore.crop_and_resize(
        image.cpu().numpy(), boxes.cpu().numpy(), indices.cpu().numpy(), (4, 5), backend="numpy"
    )
    assert_bits_equal(got.cpu().numpy(), expected)
    # Zero-copy in: the CuPy view of the tensor is the tensor's memory.
    assert cupy.from_dlpack(image.detach()).data.ptr == image.data_ptr()
    grads = torch.ones((2, 4, 5, 4), device="cuda")
    with cropcore_cupy.deterministic():
        grad_image = cropcore.crop_and_resize_grad_image(
            grads, boxes, indices, (2, 6, 7, 4), backend="cuda"
        )
    assert isinstance(grad_image, torch.Tensor)
    assert grad_image.device == image.device


class _CudaArrayInterfaceOnly:
    """A foreign CUDA array that exposes only ``__cuda_array_interface__`` (as Numba's do)."""

    def __init__(self, array) -> None:
        self._array = array
        self.shape = array.shape
        self.dtype = array.dtype

    @property
    def __cuda_array_interface__(self):
        return self._array.__cuda_array_interface__


def test_device_cuda_array_interface_objects_are_read_in_place(cupy):
    image = cupy.arange(2 * 5 * 5 * 3, dtype=cupy.float32).reshape(2, 5, 5, 3)
    got = cropcore.crop_and_resize(
        _CudaArrayInterfaceOnly(image), [[0, 0, 1, 1]], [1], (3, 3), backend="cuda"
    )
    expected = cropcore.crop_and_resize(
        cupy.asnumpy(image), [[0, 0, 1, 1]], [1], (3, 3), backend="numpy"
    )
    assert_bits_equal(cupy.asnumpy(cupy.asarray(got)), expected)


def test_device_empty_inputs(cupy):
    image = cupy.zeros((1, 4, 4, 0), cupy.uint8)
    assert cropcore.crop_and_resize(image, np.zeros((0, 4)), [], (3, 3)).shape == (0, 3, 3, 0)
    image = cupy.zeros((1, 4, 4, 2), cupy.float32)
    assert cropcore.crop_and_resize(image, np.zeros((0, 4)), [], (3, 3)).shape == (0, 3, 3, 2)
    grads = cupy.zeros((0, 3, 3, 2), cupy.float32)
    out = cropcore.crop_and_resize_grad_image(grads, np.zeros((0, 4)), [], (1, 4, 4, 2))
    assert out.shape == (1, 4, 4, 2)
    assert not out.any()
    out = cropcore.crop_and_resize_grad_boxes(grads, image, np.zeros((0, 4)), [])
    assert out.shape == (0, 4)


@pytest.mark.parametrize("deterministic", [True, False], ids=["deterministic", "atomic"])
def test_device_backend_passes_the_conformance_suite(cupy, deterministic):
    conformance = pytest.importorskip("cropcore_conformance")
    exclude = list(KNOWN_SUITE_GAPS)
    patterns = None
    if not deterministic:  # the atomic image gradient's cases, but those the gaps above affect
        patterns = ["*/grad_image/*"]
    with cropcore_cupy.deterministic(deterministic):
        report = conformance.run("cupy", patterns=patterns, exclude=exclude)
    failures = "\n".join(f"  {r.id}: {r.message[:300]}" for r in report.failures[:20])
    assert report.exit_code == 0, failures


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("mode", ROI_MODES)
@pytest.mark.parametrize("dtype", ROI_DTYPES)
def test_device_roi_align_is_bit_identical_to_the_reference(cupy, dtype, mode, data_format):
    """Designed to be exact (IEEE float32 and float64 in torchvision's order): the reference's
    bits, and the host harness's."""
    rng = np.random.default_rng(ROI_DTYPES.index(dtype))
    for _ in range(20):
        image, boxes, output_size, kwargs = _roi_case(rng, dtype, data_format)
        expected = cropcore.roi_align(
            image, boxes, output_size, mode=mode, backend="numpy", **kwargs
        )
        got = cropcore.roi_align(
            cupy.asarray(image), boxes, output_size, mode=mode, backend="cuda", **kwargs
        )
        assert isinstance(got, cupy.ndarray)
        assert_bits_equal(cupy.asnumpy(got), expected, f"{dtype} {mode} {data_format}")


@pytest.mark.parametrize("dtype", ROI_DTYPES)
def test_device_roi_align_grad_image_is_exact_and_repeatable(cupy, dtype):
    """The gather: no atomics, the reference's order; the same bits on every run."""
    rng = np.random.default_rng(40 + ROI_DTYPES.index(dtype))
    boxes = (rng.uniform(0, 1, (500, 4)) * np.array([40, 30, 40, 30])).astype(dtype)
    indices = rng.integers(0, 2, 500).astype(np.int32)
    for data_format in FORMATS:
        grads = rng.standard_normal((500, 7, 7, 8)).astype(dtype)
        grads = np.ascontiguousarray(to_format(grads, data_format))
        shape = ImageShape(2, 30, 40, 8).to_format(data_format)
        args = {"box_indices": indices, "data_format": data_format, "sampling_ratio": 2}
        expected = cropcore.roi_align_grad_image(grads, boxes, shape, backend="numpy", **args)
        on_device = cupy.asarray(grads)
        for _ in range(3):
            got = cropcore.roi_align_grad_image(on_device, boxes, shape, backend="cuda", **args)
            assert_bits_equal(cupy.asnumpy(got), expected, f"{dtype} {data_format}")


def test_device_roi_align_bad_box_index_gives_nan_without_a_host_read(cupy):
    """Device-resident box indices are not read: a bad one gives that box NaN bins."""
    image = cupy.asarray(np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8))
    boxes = cupy.asarray(np.array([[0, 0, 4, 4], [1, 1, 6, 7]], np.float32))
    indices = cupy.asarray(np.array([1, 5], np.int32))
    got = cupy.asnumpy(cropcore.roi_align(image, boxes, (2, 2), box_indices=indices))
    assert np.isnan(got[1]).all()
    expected = cropcore.roi_align(
        cupy.asnumpy(image), [[0, 0, 4, 4]], (2, 2), box_indices=[1], backend="numpy"
    )
    assert_bits_equal(got[:1], expected)
