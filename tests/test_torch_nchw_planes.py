"""The torch backend's plane-block loops (issue 16's NCHW target): an NCHW float32 image with
many channels is cropped, and an NCHW gradient summed, by blocks of channel planes, without
transposing the image or the result whole. Every case is held bit-identical to the NumPy
reference (TensorFlow's arithmetic): ragged channel blocks, one channel, boxes and samples outside
the image, extrapolation, nearest, float64 and bfloat16, channels-last and strided tensors, and
any number of threads."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import cropcore  # noqa: E402
import cropcore_torch  # noqa: E402
from cropcore_torch import _native, _native_planes, _small  # noqa: E402

pytestmark = pytest.mark.skipif(not _native.available(), reason=_native.status())

METHODS = ["bilinear", "nearest"]


def assert_bits_equal(got, expected) -> None:
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    expected = np.asarray(expected)
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
    uint = np.dtype(f"uint{8 * got.itemsize}")
    mismatch = got.view(uint) != expected.view(uint)
    assert not mismatch.any(), f"{mismatch.sum()} of {mismatch.size} values differ"


def make_case(depth: int, seed: int = 0, num_boxes: int = 23, batch: int = 2):
    """An NHWC float32 image (a subnormal pixel included), boxes reaching outside the image and
    onto its edges, and box indices."""
    rng = np.random.default_rng(seed + depth)
    image = (rng.normal(size=(batch, 9, 13, depth)) * 50).astype(np.float32)
    image[0, 2, 3] = 1e-40  # flushed by TF's denormals-are-zero
    boxes = rng.uniform(-0.4, 1.4, (num_boxes, 4)).astype(np.float32)
    boxes[::4] = rng.choice([0.0, 1.0, 0.5], (len(boxes[::4]), 4))
    boxes[1::5, 2] = boxes[1::5, 0]  # zero height
    indices = rng.integers(0, batch, num_boxes).astype(np.int32)
    return image, boxes, indices


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


@pytest.fixture
def threads(request, monkeypatch):
    """One thread, or every block its own chunk on several threads."""
    count = request.param
    if count > 1:
        monkeypatch.setattr(_native, "_MIN_WORK_PER_THREAD", 1)
    saved = torch.get_num_threads()
    torch.set_num_threads(count)
    yield count
    torch.set_num_threads(saved)


@pytest.fixture
def spied(monkeypatch):
    """Which of the loops ran, by name, and the whole-tensor transposes that were made."""
    ran: list[str] = []
    real_split = _native_planes._run_split

    def split(function, *args, **kwargs):
        ran.append(function.__name__)
        return real_split(function, *args, **kwargs)

    real_transposed = _native._transposed

    def transposed(x, rows, cols):
        ran.append(f"transposed {tuple(x.shape)}")
        return real_transposed(x, rows, cols)

    monkeypatch.setattr(_native_planes, "_run_split", split)
    monkeypatch.setattr(_native, "_transposed", transposed)
    # These cases are small enough for the one-call small path (tests/test_torch_small_calls.py),
    # which runs first: switched off here, so that the plane loops are what runs.
    monkeypatch.setattr(_small, "crop_and_resize", lambda *args, **kwargs: None)
    monkeypatch.setattr(_small, "grad_image", lambda *args, **kwargs: None)
    return ran


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("crop_size", [(7, 7), (5, 6), (1, 3), (4, 1)])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("depth", [5, 32, 37, 70])  # one ragged block; one whole; ragged; three
def test_forward_equals_the_reference(depth, method, crop_size, threads, spied):
    image, boxes, indices = make_case(depth)
    expected = cropcore.crop_and_resize(
        image, boxes, indices, crop_size, method, -2.5, backend="numpy"
    )
    got = cropcore_torch.crop_and_resize(
        nchw(image), torch.from_numpy(boxes), torch.from_numpy(indices), crop_size, method, -2.5,
        data_format="channels_first",
    )  # fmt: skip
    assert got.is_contiguous()
    assert_bits_equal(got.permute(0, 2, 3, 1), expected)
    assert spied == ["crop_planes_f32"]  # the image was not transposed whole


@pytest.mark.parametrize("threads", [1, 3], indirect=True)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("crop_size", [(7, 7), (5, 6), (1, 3)])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("depth", [5, 32, 37, 70])
def test_image_gradient_equals_the_reference(depth, method, crop_size, dtype, threads, spied):
    image, boxes, indices = make_case(depth, seed=1)
    rng = np.random.default_rng(depth)
    grads = rng.normal(size=(len(boxes), *crop_size, depth)).astype(np.float32)
    grads[0, 0, 0, :2] = 1e-39  # subnormal gradients count as zero
    expected = cropcore.crop_and_resize_grad_image(
        grads, boxes, indices, image.shape, method, dtype=dtype, backend="numpy"
    )
    got = cropcore_torch.crop_and_resize_grad_image(
        nchw(grads), torch.from_numpy(boxes), torch.from_numpy(indices),
        (2, depth, 9, 13), method, data_format="channels_first", dtype=getattr(torch, dtype),
    )  # fmt: skip
    assert got.is_contiguous()
    assert_bits_equal(got.permute(0, 2, 3, 1), expected)
    assert spied == [f"grad_image_planes_{dtype[0]}{dtype[-2:]}"]  # no transpose of the result


@pytest.mark.parametrize("method", METHODS)
def test_autograd_through_the_plane_loops_equals_the_reference(method, spied):
    image, boxes, indices = make_case(40, seed=2)
    upstream = np.random.default_rng(3).normal(size=(len(boxes), 40, 7, 7)).astype(np.float32)
    x = nchw(image).requires_grad_()
    out = cropcore.crop_and_resize(
        x, torch.from_numpy(boxes), torch.from_numpy(indices), (7, 7), method,
        data_format="channels_first",
    )  # fmt: skip
    out.backward(torch.from_numpy(upstream))
    nhwc_upstream = upstream.transpose(0, 2, 3, 1)
    expected = cropcore.crop_and_resize_grad_image(
        nhwc_upstream, boxes, indices, image.shape, method, backend="numpy"
    )
    assert_bits_equal(x.grad.permute(0, 2, 3, 1), expected)
    assert x.grad.is_contiguous()
    assert "crop_planes_f32" in spied
    assert "grad_image_planes_f32" in spied


def test_bfloat16_nchw_image_takes_the_plane_loops_as_its_float32_widening(spied):
    image, boxes, indices = make_case(33, seed=4)
    bf16 = nchw(image).to(torch.bfloat16)
    widened = bf16.to(torch.float32).permute(0, 2, 3, 1).numpy()
    expected = cropcore.crop_and_resize(widened, boxes, indices, (7, 7), backend="numpy")
    got = cropcore_torch.crop_and_resize(
        bf16, torch.from_numpy(boxes), torch.from_numpy(indices), (7, 7),
        data_format="channels_first",
    )  # fmt: skip
    assert_bits_equal(got.float().permute(0, 2, 3, 1), expected)
    assert "crop_planes_f32" in spied


@pytest.mark.parametrize("method", METHODS)
def test_strided_and_sliced_nchw_tensors(method, spied):
    # a channel slice of a larger NCHW tensor (planes not adjacent to the block's), a column-
    # strided view, and a gradient that is a slice: the loops' general copies
    image, boxes, indices = make_case(48, seed=5)
    big = nchw(np.concatenate([image, image[..., :7] * 3], axis=3))
    x = big[:, 3:40, :, ::2]  # 37 channels, every other column
    reference_image = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())
    expected = cropcore.crop_and_resize(
        reference_image, boxes, indices, (6, 7), method, 0.5, backend="numpy"
    )
    got = cropcore_torch.crop_and_resize(
        x, torch.from_numpy(boxes), torch.from_numpy(indices), (6, 7), method, 0.5,
        data_format="channels_first",
    )  # fmt: skip
    assert_bits_equal(got.permute(0, 2, 3, 1), expected)
    grads = torch.randn(len(boxes), 45, 6, 7, generator=torch.Generator().manual_seed(1))[:, 4:41]
    expected = cropcore.crop_and_resize_grad_image(
        np.ascontiguousarray(grads.permute(0, 2, 3, 1).numpy()), boxes, indices,
        reference_image.shape, method, backend="numpy",
    )  # fmt: skip
    got = cropcore_torch.crop_and_resize_grad_image(
        grads, torch.from_numpy(boxes), torch.from_numpy(indices), (2, 37, 9, 7), method,
        data_format="channels_first",
    )  # fmt: skip
    assert_bits_equal(got.permute(0, 2, 3, 1), expected)
    assert spied == ["crop_planes_f32", "grad_image_planes_f32"]


def test_one_channel_and_channels_last_images_keep_their_paths(spied):
    # one channel (planes are channels innermost) and channels_last memory (channels innermost):
    # not the plane loops, still the reference's bits
    for depth, memory_format in [(1, torch.contiguous_format), (40, torch.channels_last)]:
        image, boxes, indices = make_case(depth, seed=6)
        x = nchw(image).contiguous(memory_format=memory_format)
        expected = cropcore.crop_and_resize(image, boxes, indices, (7, 7), backend="numpy")
        got = cropcore_torch.crop_and_resize(
            x, torch.from_numpy(boxes), torch.from_numpy(indices), (7, 7),
            data_format="channels_first",
        )  # fmt: skip
        assert_bits_equal(got.permute(0, 2, 3, 1), expected)
    assert "crop_planes_f32" not in spied


def test_a_block_buffer_over_the_limit_takes_the_general_loops(monkeypatch, spied):
    monkeypatch.setattr(_native_planes, "_PLANE_BUFFER_BYTES", 1024)
    image, boxes, indices = make_case(40, seed=7)
    expected = cropcore.crop_and_resize(image, boxes, indices, (7, 7), backend="numpy")
    got = cropcore_torch.crop_and_resize(
        nchw(image), torch.from_numpy(boxes), torch.from_numpy(indices), (7, 7),
        data_format="channels_first",
    )  # fmt: skip
    assert_bits_equal(got.permute(0, 2, 3, 1), expected)
    grads = np.ones((len(boxes), 7, 7, 40), np.float32)
    expected = cropcore.crop_and_resize_grad_image(
        grads, boxes, indices, image.shape, backend="numpy"
    )
    got = cropcore_torch.crop_and_resize_grad_image(
        nchw(grads), torch.from_numpy(boxes), torch.from_numpy(indices), (2, 40, 9, 13),
        data_format="channels_first",
    )  # fmt: skip
    assert_bits_equal(got.permute(0, 2, 3, 1), expected)
    assert not {"crop_planes_f32", "grad_image_planes_f32"} & set(spied)


@pytest.mark.parametrize("bad", [-1, 2])
def test_a_bad_box_index_is_refused_by_the_plane_loops(bad):
    # the unvalidated entry point: the loops report the box before reading anything of it
    image, boxes, indices = make_case(40, seed=8)
    indices[5] = bad
    ops = torch.ops.cropcore
    with pytest.raises(IndexError, match=r"box_indices\[5\]"):
        ops.crop_and_resize(
            nchw(image), torch.from_numpy(boxes), torch.from_numpy(indices), 7, 7, "bilinear",
            0.0, True,
        )  # fmt: skip
    with pytest.raises(IndexError, match=r"box_indices\[5\]"):
        ops.crop_and_resize_grad_image(
            torch.ones(len(boxes), 40, 7, 7), torch.from_numpy(boxes), torch.from_numpy(indices),
            2, 9, 13, 40, "bilinear", torch.float32, True,
        )  # fmt: skip


def test_no_boxes_and_an_all_zero_gradient():
    image, _, _ = make_case(40, seed=9)
    got = cropcore_torch.crop_and_resize(
        nchw(image), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int32), (7, 7),
        data_format="channels_first",
    )  # fmt: skip
    assert got.shape == (0, 40, 7, 7)
    got = cropcore_torch.crop_and_resize_grad_image(
        torch.zeros(0, 40, 7, 7), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int32),
        (2, 40, 9, 13), data_format="channels_first",
    )  # fmt: skip
    assert got.shape == (2, 40, 9, 13)
    assert not got.any()


@pytest.mark.parametrize("method", METHODS)
def test_a_channels_last_gradient_gives_a_channels_last_image_gradient(method, monkeypatch):
    # NCHW grads stored channels_last (a channels_last image's crops): the image gradient is
    # channels_last too, the NHWC sums as they are, not transposed (docs/decisions.md)
    transposes = []
    real = _native.channels_first
    monkeypatch.setattr(_native, "channels_first", lambda x: transposes.append(x.shape) or real(x))
    image, boxes, indices = make_case(40, seed=10)
    grads = np.random.default_rng(11).normal(size=(len(boxes), 7, 7, 40)).astype(np.float32)
    expected = cropcore.crop_and_resize_grad_image(
        grads, boxes, indices, image.shape, method, backend="numpy"
    )
    cl = torch.from_numpy(grads).permute(0, 3, 1, 2)  # channels_last memory
    for native in (True, False):
        monkeypatch.setattr(_native, "available", lambda native=native: native)
        got = cropcore_torch.crop_and_resize_grad_image(
            cl, torch.from_numpy(boxes), torch.from_numpy(indices), (2, 40, 9, 13), method,
            data_format="channels_first",
        )  # fmt: skip
        assert got.is_contiguous(memory_format=torch.channels_last)
        assert_bits_equal(got.permute(0, 2, 3, 1), expected)
    assert transposes == []
    # autograd keeps it for a channels_last image (no copy to another layout)
    x = nchw(image).contiguous(memory_format=torch.channels_last).requires_grad_()
    out = cropcore_torch.crop_and_resize(
        x, torch.from_numpy(boxes), torch.from_numpy(indices), (7, 7), method,
        data_format="channels_first",
    )  # fmt: skip
    assert out.is_contiguous(memory_format=torch.channels_last)
    out.backward(cl)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)
    assert_bits_equal(x.grad.permute(0, 2, 3, 1), expected)


def test_the_gradient_op_with_channels_last_grads_passes_opcheck():
    # the fake (meta) implementation gives the same strides as the real one
    _, boxes, indices = make_case(8, seed=12)
    grads = torch.randn(len(boxes), 7, 7, 8).permute(0, 3, 1, 2)
    for dtype in (torch.float32, torch.float64):
        torch.library.opcheck(
            torch.ops.cropcore.crop_and_resize_grad_image.default,
            (grads, torch.from_numpy(boxes), torch.from_numpy(indices), 2, 9, 13, 8,
             "bilinear", dtype, True),
        )  # fmt: skip
