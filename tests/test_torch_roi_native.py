"""The torch backend's compiled roi_align loops (``cropcore_torch._native_roi.roi_align*``).

On CPU, ``torch.ops.cropcore.roi_align`` and ``roi_align_grad_image`` run the compiled loops when
they are available, else the torch ops (``CROPCORE_TORCH_NATIVE=0``, no compiler; what runs on
CUDA). These tests check that the loops are the path taken, that they give the torch ops' bits
(the torch ops are held to the reference and ONNX Runtime by tests/test_roi_align.py and the
conformance suite) on the cases where the rules differ (empty samples, samples beyond a box's grid,
boxes outside the image, unchecked box indices, non-finite values, float16, both layouts, both
modes, calls split over threads), the NumPy reference's bits through the public API, and a value
derived by hand that lies in float32's subnormal range (no flush-to-zero in roi_align).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cropcore  # noqa: E402
from cropcore_torch import _native, _native_roi  # noqa: E402
from cropcore_torch import roi_align as roi  # noqa: E402


@pytest.fixture
def native(cropcore_env):
    cropcore_env.set("CROPCORE_TORCH_NATIVE", "1")
    if not _native.available():
        pytest.skip(f"no compiled CPU kernels here: {_native.status()}")


def bits(x) -> np.ndarray:
    x = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def assert_same_bits(got, expected) -> None:
    got_bits, expected_bits = bits(got), bits(expected)
    assert got_bits.dtype == expected_bits.dtype
    assert got_bits.shape == expected_bits.shape
    np.testing.assert_array_equal(got_bits, expected_bits)


def hard_case(dtype: torch.dtype, channels_first: bool, boxes: int = 40, depth: int = 5):
    """An image with NaN and inf, and boxes of every kind: inside, partly and wholly outside the
    image, tiny (fewer samples than the largest grid), inverted, and with bad (unchecked) indices."""
    gen = torch.Generator().manual_seed(7)
    batch, height, width = 3, 17, 23
    image = torch.randn((batch, height, width, depth), generator=gen, dtype=torch.float64)
    image[1, 4, 5, :] = float("nan")
    image[2, 9, 10, 0] = float("inf")
    image[0, 0, 0, :] = -float("inf")
    image = image.to(dtype)
    if channels_first:
        image = image.permute(0, 3, 1, 2).contiguous()
    xy = torch.rand((boxes, 4), generator=gen, dtype=torch.float64) * 34 - 5
    xy[0] = torch.tensor([-30.0, -30.0, -25.0, -20.0])  # wholly outside: empty samples
    xy[1] = torch.tensor([3.0, 4.0, 3.1, 4.05])  # tiny: one sample per bin
    xy[2] = torch.tensor([20.0, 15.0, 2.0, 1.0])  # inverted
    xy[3] = torch.tensor([0.0, 0.0, 0.0, 0.0])  # zero size
    indices = torch.randint(0, batch, (boxes,), generator=gen)
    indices[4], indices[5] = -1, batch  # unchecked values: NaN results, no gradient
    return image, xy.to(torch.float64 if dtype == torch.float64 else torch.float32), indices


CASES = [
    (dtype, first, mode, ratio, aligned)
    for dtype in (torch.float32, torch.float64, torch.float16)
    for first in (False, True)
    for mode in (False, True)
    for ratio, aligned in ((0, False), (2, True), (-1, True))
]


@pytest.mark.parametrize(("dtype", "channels_first", "max_mode", "ratio", "aligned"), CASES)
def test_forward_gives_the_torch_ops_bits(native, dtype, channels_first, max_mode, ratio, aligned):
    image, boxes, indices = hard_case(dtype, channels_first)
    args = (image, boxes, indices, 7, 6, 0.5, ratio, aligned, max_mode, channels_first)
    got = _native_roi.roi_align(*args)
    assert_same_bits(got, roi._forward_ops(*args))
    assert torch.isnan(got[4]).all()
    assert torch.isnan(got[5]).all()


@pytest.mark.parametrize(("dtype", "channels_first", "ratio", "aligned"), [
    (dtype, first, ratio, aligned)
    for dtype, first, mode, ratio, aligned in CASES
    if not mode
])  # fmt: skip
def test_image_gradient_gives_the_torch_ops_bits(native, dtype, channels_first, ratio, aligned):
    _, boxes, indices = hard_case(dtype, channels_first)
    gen = torch.Generator().manual_seed(3)
    shape = (40, 5, 7, 6) if channels_first else (40, 7, 6, 5)
    grads = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    dims = (3, 17, 23)
    args = (grads, boxes, indices, *dims, 0.5, ratio, aligned, channels_first)
    assert_same_bits(_native_roi.roi_align_grad_image(*args), roi._grad_ops(*args))


@pytest.mark.parametrize("channels_first", [False, True])
def test_calls_split_over_threads_give_the_same_bits(native, monkeypatch, channels_first):
    monkeypatch.setattr(_native, "_MIN_WORK_PER_THREAD", 1)  # every call split into chunks
    image, boxes, indices = hard_case(torch.float32, channels_first, boxes=50, depth=9)
    indices = indices.clamp(0, 2)
    args = (image, boxes, indices, 7, 7, 0.25, 2, False, False, channels_first)
    out = _native_roi.roi_align(*args)
    assert_same_bits(out, roi._forward_ops(*args))
    grad_args = (torch.ones_like(out), boxes, indices, 3, 17, 23, 0.25, 0, False, channels_first)
    assert_same_bits(_native_roi.roi_align_grad_image(*grad_args), roi._grad_ops(*grad_args))


def test_the_compiled_loops_are_the_cpu_path(native, monkeypatch):
    calls = []
    for name in ("roi_align", "roi_align_grad_image"):
        original = getattr(_native_roi, name)

        def spy(*args, _original=original, _name=name):
            calls.append(_name)
            return _original(*args)

        monkeypatch.setattr(_native_roi, name, spy)
    image = torch.rand(1, 2, 8, 8, requires_grad=True)
    out = cropcore.roi_align(image, torch.tensor([[0.0, 1.0, 1.0, 6.0, 5.0]]), 3, backend="torch")
    out.sum().backward()
    assert calls == ["roi_align", "roi_align_grad_image"]


def test_without_the_compiled_loops_the_torch_ops_run(cropcore_env, monkeypatch):
    cropcore_env.set("CROPCORE_TORCH_NATIVE", "0")
    monkeypatch.setattr(_native_roi, "roi_align", None)  # would raise if it were called
    monkeypatch.setattr(_native_roi, "roi_align_grad_image", None)
    check_against_the_numpy_reference("avg")


def check_against_the_numpy_reference(mode: str) -> None:
    """The public API on the torch backend (forward, and for avg the image gradient) gives the
    NumPy reference backend's bits on :func:`hard_case`'s image and valid boxes."""
    image, boxes, indices = hard_case(torch.float32, True)
    boxes, indices = boxes[6:], indices[6:]
    kwargs = {"box_indices": indices, "mode": mode}
    got = cropcore.roi_align(image, boxes, (7, 7), 0.25, 0, True, **kwargs, backend="torch")
    numpy_kwargs = {"box_indices": indices.numpy(), "mode": mode}
    expected = cropcore.roi_align(
        image.numpy(), boxes.numpy(), (7, 7), 0.25, 0, True, **numpy_kwargs, backend="numpy"
    )
    assert_same_bits(got, expected)
    if mode == "avg":
        grads = torch.randn(got.shape, generator=torch.Generator().manual_seed(1))
        got = cropcore.roi_align_grad_image(
            grads, boxes, image.shape, 0.25, 0, True, box_indices=indices, backend="torch"
        )
        expected = cropcore.roi_align_grad_image(
            grads.numpy(), boxes.numpy(), image.shape, 0.25, 0, True,
            box_indices=indices.numpy(), backend="numpy",
        )  # fmt: skip
        assert_same_bits(got, expected)


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_public_api_equals_the_numpy_reference(native, mode):
    check_against_the_numpy_reference(mode)


def test_subnormal_results_are_not_flushed(native):
    # By hand: box [0, 0, 1, 1] on the 2 x 2 image [[0, 1], [2, 3]] * 2**-140, one bin, one sample
    # at (0.5, 0.5): every weight 1/4, so the value is (0 + 1 + 2 + 3) / 4 * 2**-140 = 1.5 * 2**-140,
    # a float32 subnormal (below 2**-126), every step exact. Its gradient for g = 2**-130 puts
    # 2**-132 on each pixel, subnormal as well.
    tiny = 2.0**-140
    image = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]]) * tiny
    boxes, indices = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0])
    out = _native_roi.roi_align(image, boxes, indices, 1, 1, 1.0, 1, False, False, True)
    assert out.item() == np.float32(1.5 * tiny) != 0
    grads = torch.full((1, 1, 1, 1), 2.0**-130)
    grad = _native_roi.roi_align_grad_image(grads, boxes, indices, 1, 2, 2, 1.0, 1, False, True)
    np.testing.assert_array_equal(grad.numpy(), np.full((1, 1, 2, 2), 2.0**-132, np.float32))


def test_box_indices_of_the_wrong_shape_are_refused(native):
    image, boxes = torch.rand(1, 2, 8, 8), torch.tensor([[0.0, 0.0, 4.0, 4.0]])
    with pytest.raises(ValueError, match="box_indices"):
        _native_roi.roi_align(image, boxes, torch.tensor([0, 0]), 2, 2, 1.0, 1, False, False, True)


class _DirtyPool:
    """A host pool whose memory is all NaN: recycled blocks hold old results."""

    def empty(self, shape, dtype):
        return np.full(shape, np.nan, dtype)


@pytest.mark.parametrize("channels_first", [False, True])
def test_recycled_memory_is_written_everywhere(native, monkeypatch, channels_first):
    image, boxes, indices = hard_case(torch.float32, channels_first)
    indices = indices.clamp(0, 2)
    boxes[7] = torch.tensor([2.0, 2.0, 3.0, 3.0])  # a few pixels only: most of the gradient is 0
    args = (image, boxes, indices, 4, 3, 0.5, 0, True, False, channels_first)
    grad_args = (boxes, indices, 3, 17, 23, 0.5, 0, True, channels_first)
    expected = roi._forward_ops(*args)
    expected_grad = roi._grad_ops(expected, *grad_args)
    monkeypatch.setattr(_native_roi.hostmem, "pool", _DirtyPool)
    assert_same_bits(_native_roi.roi_align(*args), expected)
    assert_same_bits(_native_roi.roi_align_grad_image(expected, *grad_args), expected_grad)


@pytest.mark.parametrize("shape", [(1, 2, 0, 5), (1, 2, 5, 0)])
def test_an_image_without_pixels_is_refused(native, shape):
    # the op called directly (cropcore's validation bypassed): nothing to sample, nothing read
    boxes, indices = torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([0])
    with pytest.raises(ValueError, match="image"):
        _native_roi.roi_align(torch.rand(shape), boxes, indices, 2, 2, 1.0, 2, False, False, True)


def test_boxes_that_do_not_match_the_gradient_are_refused(native):
    boxes, indices = torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([0, 0])
    grads = torch.rand(2, 2, 3, 3)  # two boxes' gradient, one box
    with pytest.raises(ValueError, match="boxes"):
        _native_roi.roi_align_grad_image(grads, boxes, indices, 1, 8, 8, 1.0, 2, False, True)
