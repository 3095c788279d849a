"""The torch backend's small CPU calls (issue 16): the one-pass forward of
:mod:`cropcore_torch._small` returns exactly what the general path (:func:`_native.fill_crops`)
returns, in the same layout, and refuses what it refuses."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from cropcore_torch import _native, _small, kernels, ops  # noqa: E402

pytestmark = pytest.mark.skipif(not _native.available(), reason="no compiled CPU loops")

DTYPES = (torch.float32, torch.float64, torch.float16, torch.uint8, torch.int16, torch.int64)
LAYOUTS = ("nhwc", "nchw", "nchw-cl", "nhwc-strided")


def _image(layout: str, depth: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(depth)
    image = (torch.rand(2, 9, 13, depth, generator=generator) * 200).to(dtype)
    if layout == "nchw":
        return image.permute(0, 3, 1, 2).contiguous()
    if layout == "nchw-cl":
        return image.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
    if layout == "nhwc-strided":
        return image[:, ::2]
    return image


def _boxes() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    boxes = torch.rand(5, 4, generator=generator) * 1.4 - 0.2
    boxes[0] = torch.tensor([0.0, 0.0, 1.0, 1.0])
    boxes[1] = torch.tensor([0.9, 0.8, 0.1, 0.2])  # flipped
    return boxes, torch.tensor([0, 1, 1, 0, 1])


def _general(*args) -> torch.Tensor:
    """The op's implementation with the one-pass path switched off."""
    real = _small.crop_and_resize
    try:
        _small.crop_and_resize = lambda *a, **k: None
        return ops._crop_and_resize_impl(*args)
    finally:
        _small.crop_and_resize = real


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("depth", [1, 3, 8])
@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_small_forward_is_the_general_paths_bit_for_bit(dtype, layout, depth, method):
    image = _image(layout, depth, dtype)
    boxes, indices = _boxes()
    channels_first = layout.startswith("nchw")
    for crop_height, crop_width in ((7, 7), (1, 5), (3, 1)):
        args = (image, boxes, indices, crop_height, crop_width, method, 0.5, channels_first)
        expected = _general(*args)
        small = _small.crop_and_resize(*args)
        if layout == "nchw" and depth > _native._FEW_CHANNELS:
            assert small is None  # written plane by plane: the general path's
            continue
        assert small is not None
        assert small.shape == expected.shape
        assert small.stride() == expected.stride()
        assert torch.equal(_bits(small), _bits(expected))


def test_the_op_takes_the_small_path_for_a_tiny_call(monkeypatch):
    taken = []
    real = _small.crop_and_resize

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(_small, "crop_and_resize", spy)
    image, (boxes, indices) = torch.rand(1, 1, 16, 16), _boxes()
    with torch.no_grad():
        torch.ops.cropcore.crop_and_resize(image, boxes, indices * 0, 7, 7, "bilinear", 0.0, True)
    assert taken == [True]


def test_large_calls_take_the_general_path():
    image = torch.rand(1, 64, 64, 4)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 40)
    indices = torch.zeros(40, dtype=torch.int32)
    assert _small.crop_and_resize(image, boxes, indices, 32, 32, "bilinear", 0.0, False) is None


def test_small_forward_refuses_an_index_outside_the_batch():
    image = torch.rand(1, 4, 4, 1)
    boxes = torch.rand(2, 4)
    with pytest.raises(IndexError, match=r"box_indices\[1\] = 3"):
        _small.crop_and_resize(image, boxes, torch.tensor([0, 3]), 2, 2, "bilinear", 0.0, False)


@pytest.mark.parametrize(
    ("boxes", "indices"),
    [
        (torch.rand(2, 3), torch.zeros(2, dtype=torch.int32)),
        (torch.rand(2, 4), torch.zeros(3, dtype=torch.int32)),
        (torch.rand(2, 4), torch.zeros(2, 1, dtype=torch.int32)),
    ],
)
def test_small_forward_leaves_bad_shapes_to_the_general_paths_refusal(boxes, indices):
    image = torch.rand(1, 4, 4, 1)
    assert _small.crop_and_resize(image, boxes, indices, 2, 2, "bilinear", 0.0, False) is None
    with pytest.raises(ValueError, match="boxes must be"):
        ops._crop_and_resize_impl(image, boxes, indices, 2, 2, "bilinear", 0.0, False)


def test_kept_tables_give_the_image_gradient_of_fresh_ones():
    image, (boxes, indices) = _image("nhwc", 3, torch.float32), _boxes()
    keep: list = []
    out = _small.crop_and_resize(image, boxes, indices, 4, 5, "bilinear", 0.0, False, keep)
    assert out is not None
    assert len(keep) == 1
    grads = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    args = (grads, boxes, indices, 2, 9, 13, 3, "bilinear", torch.float32, False)
    reused = ops._grad_image_impl(*args, loops=keep[0])
    assert torch.equal(_bits(reused), _bits(ops._grad_image_impl(*args)))


def _general_grad_image(*args, **kwargs) -> torch.Tensor:
    """The image gradient's implementation with the one-pass path switched off."""
    real = _small.grad_image
    try:
        _small.grad_image = lambda *a, **k: None
        return ops._grad_image_impl(*args, **kwargs)
    finally:
        _small.grad_image = real


def _layout(x: torch.Tensor) -> list[tuple[int, int]]:
    """Size and stride of each axis longer than 1 (a size-1 axis's stride means nothing)."""
    return [(size, stride) for size, stride in zip(x.shape, x.stride(), strict=True) if size > 1]


def _bits64(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int64 if x.dtype == torch.float64 else torch.int32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("grads_dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("layout", ["nhwc", "nchw", "nchw-cl"])
@pytest.mark.parametrize("depth", [1, 3, 8])
@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("tables", ["kept", "fresh"])
def test_small_image_gradient_is_the_general_paths_bit_for_bit(
    dtype, grads_dtype, layout, depth, method, tables
):
    boxes, indices = _boxes()
    channels_first = layout.startswith("nchw")
    generator = torch.Generator().manual_seed(depth)
    for crop_height, crop_width in ((7, 7), (1, 5), (3, 1)):
        grads = torch.randn(5, crop_height, crop_width, depth, generator=generator)
        grads = grads.to(grads_dtype)
        if layout == "nchw":
            grads = grads.permute(0, 3, 1, 2).contiguous()
        elif layout == "nchw-cl":
            grads = grads.permute(0, 3, 1, 2)
        loops = None
        if tables == "kept":
            keep: list = []
            image = torch.zeros((2, depth, 9, 13) if channels_first else (2, 9, 13, depth))
            args = (image, boxes, indices, crop_height, crop_width, method, 0.0, channels_first)
            ops._crop_and_resize_impl(*args, keep=keep)
            loops = keep[0]
        shape = (2, 9, 13, depth)
        args = (grads, boxes, indices, *shape, method, dtype, channels_first)
        expected = _general_grad_image(*args)
        small = _small.grad_image(
            grads, boxes, indices, shape, method, dtype, channels_first, loops
        )
        if kernels.output_is_channels_last(grads, channels_first):
            # the general path's result is channels-last too (docs/decisions.md): not small's
            assert small is None
            assert expected.permute(0, 2, 3, 1).is_contiguous()
            continue
        assert small is not None
        assert small.dtype == expected.dtype
        assert small.shape == expected.shape
        assert _layout(small) == _layout(expected)
        assert torch.equal(_bits64(small), _bits64(expected))


def test_the_image_gradient_takes_the_small_path_for_a_tiny_call(monkeypatch):
    taken = []
    real = _small.grad_image

    def spy(*args, **kwargs):
        result = real(*args, **kwargs)
        taken.append(result is not None)
        return result

    monkeypatch.setattr(_small, "grad_image", spy)
    image = torch.rand(1, 1, 16, 16, requires_grad=True)
    boxes, indices = _boxes()
    out = torch.ops.cropcore.crop_and_resize(image, boxes, indices * 0, 7, 7, "bilinear", 0.0, True)
    out.sum().backward()
    assert taken == [True]


def test_small_image_gradient_refuses_an_index_outside_the_batch():
    grads = torch.rand(2, 2, 2, 1)
    boxes = torch.rand(2, 4)
    with pytest.raises(IndexError, match=r"box_indices\[1\] = 3"):
        _small.grad_image(
            grads, boxes, torch.tensor([0, 3]), (1, 4, 4, 1), "bilinear", torch.float32, False
        )


def test_large_image_gradients_take_the_general_path():
    grads = torch.rand(40, 32, 32, 4)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 40)
    indices = torch.zeros(40, dtype=torch.int32)
    shape = (1, 64, 64, 4)
    assert _small.grad_image(grads, boxes, indices, shape, "bilinear", torch.float32, False) is None


def _small_and_general(**context):
    """Both small paths' results (under ``context``: a default dtype or device) and the general
    paths' (outside it)."""
    image, (boxes, indices) = _image("nhwc", 3, torch.float32), _boxes()
    args = (image, boxes, indices, 4, 5, "bilinear", 0.0, False)
    expected = _general(*args)
    grads = torch.randn(expected.shape, generator=torch.Generator().manual_seed(5))
    shape = (2, 9, 13, 3)
    expected_grad = _general_grad_image(
        grads, boxes, indices, *shape, "bilinear", torch.float32, False
    )
    previous = torch.get_default_dtype()
    torch.set_default_dtype(context.get("dtype", previous))
    try:
        with torch.device(context.get("device", "cpu")):
            small = _small.crop_and_resize(*args)
            small_grad = _small.grad_image(
                grads, boxes, indices, shape, "bilinear", torch.float32, False
            )
    finally:
        torch.set_default_dtype(previous)
    return (small, expected), (small_grad, expected_grad)


@pytest.mark.parametrize("context", [{"dtype": torch.float64}, {"device": "meta"}], ids=str)
def test_small_results_ignore_torchs_defaults(context):
    for small, expected in _small_and_general(**context):
        assert small.dtype == torch.float32
        assert small.device.type == "cpu"
        assert torch.equal(_bits(small), _bits(expected))
