"""The memory guard: a call that cannot fit in memory is refused before anything is allocated.

Each test makes the kernel that would allocate raise a sentinel, so a guard that lets the call
through fails the test instead of exhausting the machine's memory; the memory available is fixed
by monkeypatching, so the verdicts do not depend on the machine's load.
"""

from __future__ import annotations

import numpy as np
import pytest

import cropcore
from cropcore import memory
from cropcore.errors import OutputTooLargeError

GiB = 1 << 30


class KernelRan(Exception):
    """The kernel was called: the guard let the call through."""


@pytest.fixture
def machine(monkeypatch, cropcore_env):
    """A machine of 24 GiB with 20 GiB available, whatever this one has."""
    cropcore_env.delete("CROPCORE_MAX_OUTPUT_BYTES")
    monkeypatch.setattr(memory, "_physical_memory", lambda: 24 * GiB)
    monkeypatch.setattr(memory, "available_memory", lambda: 20 * GiB)


@pytest.fixture
def numpy_kernels(monkeypatch):
    from cropcore_numpy import kernels

    def refuse(*args, **kwargs):
        raise KernelRan

    for name in ("crop_and_resize", "crop_and_resize_grad_image", "crop_and_resize_grad_boxes"):
        monkeypatch.setattr(kernels, name, refuse)
    return kernels


IMAGE = np.zeros((1, 4, 4, 1), np.float32)
ONE_BOX = np.array([[0, 0, 1, 1]], np.float32)


def test_a_result_that_fits_but_whose_temporaries_do_not_is_refused(machine, numpy_kernels):
    # 16 GiB of result fits in 24 GiB, but the numpy backend peaks near 4x the result.
    with pytest.raises(OutputTooLargeError, match="backend 'numpy' would need"):
        cropcore.crop_and_resize(IMAGE, ONE_BOX, [0], (2**31, 2), backend="numpy")


def test_the_torch_backend_counts_its_peak_too(machine, monkeypatch):
    torch = pytest.importorskip("torch")
    from cropcore.registry import registry

    def refuse(*args, **kwargs):
        raise KernelRan

    backend = registry.get("torch")
    monkeypatch.setitem(backend._hooks, "cropcore_crop_and_resize", refuse)
    with pytest.raises(OutputTooLargeError, match="backend 'torch' would need"):
        cropcore.crop_and_resize(torch.from_numpy(IMAGE), ONE_BOX, [0], (2**31, 2))


def test_box_gradient_is_guarded(machine, numpy_kernels):
    # A zero-strided view stands for 2**31 gradients without allocating them.
    grads = np.broadcast_to(np.float32(1), (1, 2**16, 2**15, 1))
    with pytest.raises(OutputTooLargeError, match="crop_and_resize_grad_boxes"):
        cropcore.crop_and_resize_grad_boxes(grads, IMAGE, ONE_BOX, [0], backend="numpy")


def test_sizes_are_checked_before_the_boxes_are_read(machine):
    # 10**9 boxes as a zero-strided view; the first is not finite. Reading the boxes would take
    # seconds and raise "boxes must be finite": the size is refused first, without reading them.
    boxes = np.broadcast_to(np.float32([np.nan, 0, 1, 1]), (10**9, 4))
    box_indices = np.broadcast_to(np.int32(0), (10**9,))
    with pytest.raises(OutputTooLargeError, match="crop_and_resize's result"):
        cropcore.crop_and_resize(IMAGE, boxes, box_indices, (1000, 1000))


def test_an_ordinary_call_reads_no_available_memory(monkeypatch):
    def unexpected():
        raise AssertionError("available memory read for a small call")

    monkeypatch.setattr(memory, "available_memory", unexpected)
    crops = cropcore.crop_and_resize(IMAGE, ONE_BOX, [0], (3, 3), backend="numpy")
    assert crops.shape == (1, 3, 3, 1)


def test_configured_limit_applies_to_the_peak(cropcore_env, numpy_kernels):
    # The result (41 MB) is within the limit (100 MB), the numpy backend's peak (4x) is not.
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", str(100 * 10**6))
    with pytest.raises(OutputTooLargeError, match="CROPCORE_MAX_OUTPUT_BYTES"):
        cropcore.crop_and_resize(IMAGE, ONE_BOX, [0], (3200, 3200), backend="numpy")


def test_a_small_peak_is_not_checked(cropcore_env):
    # Below memory.SMALL_BYTES the peak is not held to the limit (the result still is).
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", "2000")
    crops = cropcore.crop_and_resize(IMAGE, ONE_BOX, [0], (16, 16), backend="numpy")
    assert crops.shape == (1, 16, 16, 1)
    with pytest.raises(OutputTooLargeError, match="crop_and_resize's result"):
        cropcore.crop_and_resize(IMAGE, ONE_BOX, [0], (32, 32), backend="numpy")


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_no_boxes_with_a_huge_crop_allocates_only_the_empty_result(machine, numpy_kernels, backend):
    if backend == "numba":
        pytest.importorskip("numba")
    crops = cropcore.crop_and_resize(
        IMAGE, np.zeros((0, 4), np.float32), np.zeros(0, np.int32), (2**31, 2), backend=backend
    )
    assert crops.shape == (0, 2**31, 2, 1)
    assert crops.dtype == np.float32


def test_depth_zero_with_a_huge_crop_allocates_only_the_empty_result(machine, numpy_kernels):
    image = np.zeros((1, 4, 4, 0), np.uint8)
    crops = cropcore.crop_and_resize(image, ONE_BOX, [0], (2**20, 2**10), backend="numpy")
    assert crops.shape == (1, 2**20, 2**10, 0)


def test_image_gradient_of_no_boxes_is_zeros_without_running_the_kernel(numpy_kernels):
    out = cropcore.crop_and_resize_grad_image(
        np.zeros((0, 2**20, 2**10, 1), np.float32),
        np.zeros((0, 4), np.float32),
        np.zeros(0, np.int32),
        (2, 5, 6, 1),
        backend="numpy",
    )
    assert out.shape == (2, 5, 6, 1)
    assert out.dtype == np.float32
    assert not out.any()


def test_box_gradient_of_depth_zero_is_zeros_without_running_the_kernel(numpy_kernels):
    out = cropcore.crop_and_resize_grad_boxes(
        np.zeros((1, 2**20, 2**10, 0), np.float32),
        np.zeros((1, 4, 4, 0), np.float32),
        ONE_BOX,
        [0],
        backend="numpy",
    )
    assert out.shape == (1, 4)
    assert not out.any()
