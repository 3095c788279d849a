"""The torch backend as a PyTorch user meets it (issue 16): bfloat16 and autocast, layers under
``model.half()``, double backward w.r.t. the image, in-place use of results.

Expected values come from the float32 computation, which the rest of the suite ties to TensorFlow
bit for bit: a bfloat16 image is widened to float32 exactly, so its crops must equal the float32
image's, and its gradients the float32 gradients rounded once.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

import cropcore  # noqa: E402
import cropcore_torch  # noqa: E402
from cropcore.errors import BackendError  # noqa: E402
from cropcore_torch import CropAndResize  # noqa: E402

FORMATS = ["channels_last", "channels_first"]
METHODS = ["bilinear", "nearest"]
BOXES = [[0.1, 0.2, 0.9, 0.7], [-0.2, 0.1, 1.2, 0.95], [0.3, 0.31, 0.61, 0.9]]
INDICES = [0, 1, 1]


def _image(data_format: str, dtype=torch.float32, depth: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(16)
    shape = (2, 7, 9, depth) if data_format == "channels_last" else (2, depth, 7, 9)
    return torch.rand(shape, generator=generator).to(dtype)


# -- bfloat16 --------------------------------------------------------------------------------------


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("method", METHODS)
def test_bfloat16_image_is_computed_as_its_exact_float32_widening(data_format, method):
    image = _image(data_format, torch.bfloat16)
    got = cropcore.crop_and_resize(
        image, BOXES, INDICES, (4, 5), method, 0.5, data_format=data_format
    )
    expected = cropcore.crop_and_resize(
        image.float(), BOXES, INDICES, (4, 5), method, 0.5, data_format=data_format
    )
    assert got.dtype == torch.float32
    assert torch.equal(got, expected)


@pytest.mark.parametrize("data_format", FORMATS)
def test_bfloat16_gradients_are_the_float32_ones_rounded_once(data_format):
    def grads(dtype):
        image = _image(data_format, dtype).requires_grad_()
        boxes = torch.tensor(BOXES, requires_grad=True)
        out = cropcore_torch.crop_and_resize(
            image, boxes, torch.tensor(INDICES), (4, 5), data_format=data_format
        )
        (out * torch.linspace(-1, 2, out.numel()).reshape(out.shape)).sum().backward()
        return image.grad, boxes.grad

    image_grad, boxes_grad = grads(torch.bfloat16)
    image_grad32, boxes_grad32 = grads(torch.float32)
    assert image_grad.dtype == torch.bfloat16
    assert torch.equal(image_grad, image_grad32.to(torch.bfloat16))
    # the box gradient reads the image: the bfloat16 image's values, widened
    bf16_values = _image(data_format, torch.bfloat16).float()
    boxes = torch.tensor(BOXES, requires_grad=True)
    out = cropcore_torch.crop_and_resize(
        bf16_values, boxes, torch.tensor(INDICES), (4, 5), data_format=data_format
    )
    (out * torch.linspace(-1, 2, out.numel()).reshape(out.shape)).sum().backward()
    assert torch.equal(boxes_grad, boxes.grad)
    assert boxes_grad32 is not None


def test_bfloat16_goes_through_the_layer_scripted_too():
    layer = CropAndResize((3, 4), boxes=BOXES[:2])
    image = _image("channels_first", torch.bfloat16)
    expected = layer(image.float())
    assert torch.equal(layer(image), expected)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script is deprecated
        scripted = torch.jit.script(layer)
    assert torch.equal(scripted(image), expected)


def test_bfloat16_is_refused_by_backends_without_it_naming_the_dtype():
    image = _image("channels_last", torch.bfloat16)
    with pytest.raises(BackendError, match="does not support image dtype bfloat16"):
        cropcore.crop_and_resize(image, BOXES, INDICES, (3, 3), backend="numpy")


def test_other_dtypes_torch_has_are_still_refused_naming_the_argument():
    image = _image("channels_last").to(torch.uint32)
    with pytest.raises(TypeError, match=r"image dtype must be one of .* \(or bfloat16.*got uint32"):
        cropcore.crop_and_resize(image, BOXES, INDICES, (3, 3))


# -- autocast --------------------------------------------------------------------------------------


@pytest.mark.parametrize("data_format", FORMATS)
def test_under_cpu_autocast_a_conv_then_a_crop_runs_in_float32(data_format):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.rand(2, 3, 9, 11)
    boxes = torch.tensor(BOXES, requires_grad=True)
    with torch.autocast("cpu"):  # bfloat16 by default on CPU
        features = conv(x)
        if data_format == "channels_last":
            features = features.permute(0, 2, 3, 1)
        assert features.dtype == torch.bfloat16
        crops = cropcore.crop_and_resize(features, boxes, INDICES, (3, 3), data_format=data_format)
    expected = cropcore.crop_and_resize(
        features.detach().float(), BOXES, INDICES, (3, 3), data_format=data_format
    )
    assert crops.dtype == torch.float32
    assert torch.equal(crops.detach(), expected)
    crops.square().sum().backward()
    assert conv.weight.grad is not None
    assert torch.isfinite(conv.weight.grad).all()
    assert boxes.grad is not None
    assert boxes.grad.dtype == torch.float32


def test_autocast_casts_the_ops_inputs_to_float32():
    """Registered autocast rule: under autocast a float16 image's gradient is accumulated in float32
    (the float32 gradient rounded once), where outside autocast it follows TF's float16 sums."""
    image = _image("channels_last", torch.float16).requires_grad_()
    grads = torch.linspace(-3, 3, 3 * 4 * 4 * 3).reshape(3, 4, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = torch.ops.cropcore.crop_and_resize(
            image, torch.tensor(BOXES), torch.tensor(INDICES), 4, 4, "bilinear", 0.0, False
        )
    (out * grads).sum().backward()
    expected = cropcore.crop_and_resize_grad_image(
        grads, BOXES, INDICES, tuple(image.shape), dtype="float32"
    ).to(torch.float16)
    assert image.grad.dtype == torch.float16
    assert torch.equal(image.grad, expected)


# -- layers under model.half() / .bfloat16() -------------------------------------------------------


@pytest.mark.parametrize("cast", ["half", "bfloat16", "double"])
def test_dtype_moves_of_a_model_leave_the_fixed_boxes_float32(cast):
    boxes = [[0.1, 0.1, 0.9, 0.9], [0.05, 0.33, 0.77, 0.91]]
    layer = CropAndResize((5, 5), boxes=boxes)
    model = torch.nn.Sequential(layer)
    image = _image("channels_first", torch.float16)
    before = model(image)
    getattr(model, cast)()
    assert layer.boxes.dtype == torch.float32
    assert torch.equal(layer.boxes, torch.tensor(boxes, dtype=torch.float32))
    assert torch.equal(model(image), before)
    model.to(torch.float16)
    assert layer.boxes.dtype == torch.float32
    model.to("meta")  # a device move still moves them
    assert layer.boxes.device.type == "meta"


def test_a_layer_without_fixed_boxes_has_no_buffer():
    layer = CropAndResize(3)
    assert dict(layer.named_buffers()) == {}
    assert layer.state_dict() == {}
    assert "boxes" in dict(CropAndResize(3, boxes=[[0, 0, 1, 1]]).named_buffers())


def test_checkpoints_with_the_old_empty_buffer_still_load():
    model = torch.nn.Sequential(CropAndResize(3))
    assert (
        str(model.load_state_dict({"0.boxes": torch.zeros(0, 4)}))
        == "<All keys matched successfully>"
    )
    with pytest.raises(RuntimeError, match=r'Unexpected key\(s\) in state_dict: "0.boxes"'):
        model.load_state_dict({"0.boxes": torch.zeros(2, 4)})  # real boxes are not dropped
    fixed = torch.nn.Sequential(CropAndResize(3, boxes=[[0, 0, 1, 1]]))
    fixed.load_state_dict({"0.boxes": torch.tensor([[0.1, 0.2, 0.9, 0.8]])})
    assert fixed[0].boxes.dtype == torch.float32
    assert torch.equal(fixed[0].boxes, torch.tensor([[0.1, 0.2, 0.9, 0.8]]))


# -- double backward -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("data_format", FORMATS)
def test_gradgradcheck_image_float64(method, data_format):
    image = _image(data_format, torch.float64, depth=2).requires_grad_()
    boxes = torch.tensor(BOXES)  # coordinates away from the sample grid

    def crop(img):
        return cropcore_torch.crop_and_resize(
            img, boxes, torch.tensor(INDICES), (3, 2), method, 1.5, data_format=data_format
        )

    # The crops are float32 (as TF's); the crop is linear in the image, so a wide step costs no
    # accuracy. The grad_outputs are float32 like the crops (gradgradcheck warns about them).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        assert torch.autograd.gradgradcheck(crop, (image,), eps=1e-2, atol=1e-4, rtol=1e-3)


def test_r1_penalty_on_the_image_gradient_reaches_the_model():
    """R1-style: ``|| d loss / d features ||^2`` backpropagated into a conv's weights, for
    ``loss = crops.square().sum()``. By hand, with ``J`` the crop's matrix (built column by column
    from crops of unit images): ``d loss / d f = 2 J^T J f``, a plain-torch penalty to compare."""
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 2, 3)
    x = torch.rand(2, 3, 9, 9)

    def crop(image):
        return cropcore.crop_and_resize(image, BOXES, INDICES, (3, 3), data_format="channels_first")

    features = conv(x)
    (grad_features,) = torch.autograd.grad(
        crop(features).square().sum(), features, create_graph=True
    )
    penalty = grad_features.square().sum()
    penalty.backward()

    size = features[0].numel() * 2
    units = torch.eye(size).reshape(size, *features.shape)
    jacobian = torch.stack([crop(unit).flatten() for unit in units], dim=1)
    conv_ref = torch.nn.Conv2d(3, 2, 3)
    conv_ref.load_state_dict(conv.state_dict())
    f = conv_ref(x).flatten()
    expected_penalty = (2 * jacobian.T @ (jacobian @ f)).square().sum()
    expected_penalty.backward()
    torch.testing.assert_close(penalty, expected_penalty)
    torch.testing.assert_close(conv.weight.grad, conv_ref.weight.grad)


def test_double_backward_through_boxes_raises_a_clear_error():
    image = torch.rand(1, 4, 4, 1, requires_grad=True)
    boxes = torch.tensor([[0.1, 0.1, 0.8, 0.9]], requires_grad=True)
    out = cropcore.crop_and_resize(image, boxes, [0], (3, 3))
    (grad_image,) = torch.autograd.grad(out.square().sum(), image, create_graph=True)
    with pytest.raises(RuntimeError, match=r"w\.r\.t\. the image only, not the boxes"):
        grad_image.sum().backward()
    image.grad = None
    out = cropcore.crop_and_resize(image, boxes, [0], (3, 3))
    (grad_boxes,) = torch.autograd.grad(out.square().sum(), boxes, create_graph=True)
    with pytest.raises(RuntimeError, match="box gradient of crop_and_resize is not differentiable"):
        grad_boxes.sum().backward()


# -- crop_size and the channels default ------------------------------------------------------------


def test_the_functions_take_an_int_crop_size_as_the_layer_does():
    image = _image("channels_first")
    got = cropcore_torch.crop_and_resize(image, BOXES, INDICES, 5, data_format="channels_first")
    expected = cropcore_torch.crop_and_resize(
        image, BOXES, INDICES, (5, 5), data_format="channels_first"
    )
    assert torch.equal(got, expected)
    assert torch.equal(CropAndResize(5)(image, torch.tensor(BOXES), torch.tensor(INDICES)), got)
    unchecked = cropcore_torch.crop_and_resize(
        image,
        torch.tensor(BOXES),
        torch.tensor(INDICES),
        5,
        data_format="channels_first",
        validate=False,
    )
    assert torch.equal(unchecked, expected)
    with pytest.raises(TypeError, match="crop_size"):
        cropcore_torch.crop_and_resize(image, BOXES, INDICES, True, data_format="channels_first")


NCHW_IMAGES = [(2, 3, 64, 64), (1, 1, 16, 16), (4, 4, 32, 48)]


@pytest.mark.parametrize("shape", NCHW_IMAGES)
@pytest.mark.parametrize("function", ["cropcore", "cropcore_torch"])
def test_an_evidently_nchw_image_without_data_format_warns(shape, function):
    module = cropcore if function == "cropcore" else cropcore_torch
    image = torch.rand(shape)
    with pytest.warns(UserWarning, match=r"pass data_format='channels_first'") as record:
        out = module.crop_and_resize(image, [[0, 0, 1, 1]], [0], (7, 7))
    assert record[0].filename == __file__  # the warning points at the caller's line
    assert out.shape == (1, 7, 7, shape[3])  # still channels_last: a warning, not a new default
    with pytest.warns(UserWarning, match="channels_last"):
        module.crop_and_resize_grad_boxes(torch.ones(1, 7, 7, shape[3]), image, [[0, 0, 1, 1]], [0])


NHWC_IMAGES = [(2, 64, 64, 3), (1, 16, 16, 1), (2, 7, 9, 256), (1, 4, 4, 256), (1, 1, 4, 512)]


@pytest.mark.parametrize("shape", NHWC_IMAGES)
def test_nhwc_images_and_explicit_formats_do_not_warn(shape):
    image = torch.rand(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cropcore.crop_and_resize(image, [[0, 0, 1, 1]], [0], (7, 7))
        cropcore_torch.crop_and_resize(image, [[0, 0, 1, 1]], [0], (7, 7))
        nchw = torch.rand(NCHW_IMAGES[0])
        for data_format in FORMATS:
            cropcore.crop_and_resize(nchw, [[0, 0, 1, 1]], [0], (7, 7), data_format=data_format)
        CropAndResize(7)(nchw, torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0]))


# -- the quick check of a few boxes (torch CPU tensors read as lists) ------------------------------


@pytest.mark.parametrize("num_boxes", [1, 8, 9])  # up to 8 boxes: read with tolist()
def test_few_torch_boxes_are_still_checked(num_boxes):
    image = torch.rand(2, 5, 5, 1)
    boxes = torch.rand(num_boxes, 4)
    indices = torch.zeros(num_boxes, dtype=torch.int64)
    assert cropcore.crop_and_resize(image, boxes, indices, (2, 2)).shape == (num_boxes, 2, 2, 1)
    nan_boxes = boxes.clone()
    nan_boxes[-1, 2] = float("nan")
    with pytest.raises(ValueError, match=rf"boxes\[{num_boxes - 1}, 2\] = nan"):
        cropcore.crop_and_resize(image, nan_boxes, indices, (2, 2))
    for bad in (2, -1):
        bad_indices = indices.clone()
        bad_indices[-1] = bad
        with pytest.raises(IndexError, match=rf"box_indices\[{num_boxes - 1}\] = {bad}"):
            cropcore.crop_and_resize(image, boxes, bad_indices, (2, 2))
    huge = boxes.double()
    huge[0, 0] = 1e40  # finite in float64, inf in float32
    with pytest.raises(ValueError, match="finite"):
        cropcore.crop_and_resize(image, huge, indices, (2, 2))


# -- NCHW with many channels (the compiled transposes) ---------------------------------------------


@pytest.mark.parametrize("native", ["1", "0"])
def test_nchw_with_many_channels_equals_nhwc_bit_for_bit(native, cropcore_env):
    cropcore_env.set("CROPCORE_TORCH_NATIVE", native)
    generator = torch.Generator().manual_seed(5)
    nhwc = torch.randn(2, 9, 11, 40, generator=generator)
    nchw = nhwc.permute(0, 3, 1, 2).contiguous()  # how torch holds features
    boxes = torch.rand(30, 4, generator=generator) * 1.2 - 0.1  # some samples outside
    indices = torch.randint(0, 2, (30,), generator=generator)
    upstream = torch.randn(30, 5, 6, 40, generator=generator)

    def run(image, data_format, grads):
        image = image.clone().requires_grad_()
        b = boxes.clone().requires_grad_()
        out = cropcore_torch.crop_and_resize(image, b, indices, (5, 6), data_format=data_format)
        out.backward(grads)
        return out.detach(), image.grad, b.grad

    out, image_grad, boxes_grad = run(nhwc, "channels_last", upstream)
    out_cf, image_grad_cf, boxes_grad_cf = run(nchw, "channels_first", upstream.permute(0, 3, 1, 2))
    assert out_cf.is_contiguous()
    assert image_grad_cf.is_contiguous()
    assert torch.equal(out_cf, out.permute(0, 3, 1, 2))
    assert torch.equal(image_grad_cf, image_grad.permute(0, 3, 1, 2))
    assert torch.equal(boxes_grad_cf, boxes_grad)


def _native_or_skip():
    from cropcore_torch import _native

    if not _native.available():
        pytest.skip(_native.status())
    return _native


@pytest.mark.parametrize("shape", [(3, 13, 21), (2, 8, 8), (1, 17, 9), (2, 256, 49), (1, 5, 3)])
def test_the_compiled_transpose_equals_torchs(shape):
    # 8 x 8 register blocks and the scalar tails (rows and columns not multiples of 8)
    _native = _native_or_skip()
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(_native._transposed(x, shape[1], shape[2]), x.transpose(1, 2))


@pytest.mark.parametrize("depth", [37, 64])
def test_nchw_gradients_on_threads_equal_nhwc_bit_for_bit(depth, monkeypatch):
    # NCHW gradients transposed box by box in each thread's scratch (depth 37: the transposes'
    # scalar tails); every thread's share of the boxes and images must sum as the NHWC call does.
    _native = _native_or_skip()
    monkeypatch.setattr(_native, "_MIN_WORK_PER_THREAD", 1)
    generator = torch.Generator().manual_seed(7)
    nhwc = torch.randn(3, 10, 12, depth, generator=generator)
    boxes = torch.rand(25, 4, generator=generator) * 1.2 - 0.1
    indices = torch.randint(0, 3, (25,), generator=generator)
    upstream = torch.randn(25, 6, 5, depth, generator=generator)
    upstream_cf = upstream.permute(0, 3, 1, 2).contiguous()
    for method in METHODS:
        expected = cropcore_torch.crop_and_resize_grad_image(
            upstream, boxes, indices, nhwc.shape, method
        )
        got = cropcore_torch.crop_and_resize_grad_image(
            upstream_cf, boxes, indices, (3, depth, 10, 12), method, data_format="channels_first"
        )
        assert torch.equal(got, expected.permute(0, 3, 1, 2))
    expected = cropcore_torch.crop_and_resize_grad_boxes(
        upstream, nhwc, boxes, indices, data_format="channels_last"
    )
    got = cropcore_torch.crop_and_resize_grad_boxes(
        upstream_cf, nhwc.permute(0, 3, 1, 2).contiguous(), boxes, indices,
        data_format="channels_first",
    )  # fmt: skip
    assert torch.equal(got, expected)


@pytest.mark.parametrize("depth", [16, 37])
@pytest.mark.parametrize("crop_size", [(5, 6), (8, 8), (1, 3)])
@pytest.mark.parametrize("method", METHODS)
def test_nchw_crops_with_many_channels_equal_nhwc_bit_for_bit(
    depth, crop_size, method, monkeypatch
):
    # float32 NCHW crops are computed 8 samples x 8 channels at a time and transposed in
    # registers: groups of samples and channels with tails, extrapolated samples, both methods,
    # boxes split across threads.
    _native = _native_or_skip()
    monkeypatch.setattr(_native, "_MIN_WORK_PER_THREAD", 1)
    generator = torch.Generator().manual_seed(depth)
    nhwc = torch.randn(2, 9, 13, depth, generator=generator)
    nhwc[0, 2, 3] = 1e-40  # a subnormal pixel: flushed (denormals-are-zero) on both paths
    boxes = torch.rand(21, 4, generator=generator) * 1.4 - 0.2  # some samples outside
    indices = torch.randint(0, 2, (21,), generator=generator)
    expected = cropcore_torch.crop_and_resize(
        nhwc, boxes, indices, crop_size, method, 0.25, data_format="channels_last"
    )
    got = cropcore_torch.crop_and_resize(
        nhwc.permute(0, 3, 1, 2).contiguous(), boxes, indices, crop_size, method, 0.25,
        data_format="channels_first",
    )  # fmt: skip
    assert got.is_contiguous()
    assert torch.equal(got, expected.permute(0, 3, 1, 2))


def test_nchw_gradients_are_not_transposed_whole(monkeypatch):
    # The crop-sized gradient is transposed box by box in cache, not copied through memory.
    _native = _native_or_skip()
    transposed = []
    real = _native._transposed

    def record(x, rows, cols):
        transposed.append(x.numel())
        return real(x, rows, cols)

    monkeypatch.setattr(_native, "_transposed", record)
    image = torch.randn(2, 40, 9, 11)
    boxes, indices = torch.tensor(BOXES), torch.tensor(INDICES)
    grads = torch.randn(3, 40, 4, 5)
    cropcore_torch.crop_and_resize_grad_image(
        grads, boxes, indices, image.shape, data_format="channels_first"
    )
    cropcore_torch.crop_and_resize_grad_boxes(
        grads, image, boxes, indices, data_format="channels_first"
    )
    assert grads.numel() not in transposed


@pytest.mark.slow
@pytest.mark.parametrize("function", ["cropcore", "cropcore_torch", "unchecked"])
def test_the_channels_warning_does_not_break_a_fullgraph_compile(function):
    image = torch.rand(1, 3, 32, 32)  # evidently NCHW, data_format left out

    def crop(x):
        boxes, indices = torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.tensor([0])
        if function == "cropcore":
            return cropcore.crop_and_resize(x, boxes, indices, (7, 7))
        validate = function == "cropcore_torch"
        return cropcore_torch.crop_and_resize(x, boxes, indices, (7, 7), validate=validate)

    compiled = torch.compile(crop, fullgraph=True, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the eager call warns; the graph cannot
        expected = crop(image)
        got = compiled(image)
    assert torch.equal(got, expected)


# -- eager calls without autograd skip the dispatcher ----------------------------------------------


@pytest.mark.parametrize("data_format", FORMATS)
def test_direct_eager_calls_equal_the_op(data_format):
    image = _image(data_format, depth=6)
    boxes, indices = torch.tensor(BOXES), torch.tensor(INDICES)
    channels_first = data_format == "channels_first"
    for x in (image, image.contiguous(memory_format=torch.channels_last)):
        got = cropcore.crop_and_resize(x, boxes, indices, (4, 5), data_format=data_format)
        expected = torch.ops.cropcore.crop_and_resize(
            x, boxes, indices, 4, 5, "bilinear", 0.0, channels_first
        )
        assert torch.equal(got, expected)
        assert got.stride() == expected.stride()


def test_dispatch_modes_still_see_the_op():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    image = _image("channels_last")
    with Record() as record:
        cropcore_torch.crop_and_resize(
            image, torch.tensor(BOXES), torch.tensor(INDICES), 3, validate=False
        )
    assert "cropcore.crop_and_resize.default" in record.ops


def _record_gradient_ops(monkeypatch):
    """Count the calls through torch's dispatcher to the two gradient ops."""
    calls = []
    for name in ("crop_and_resize_grad_image", "crop_and_resize_grad_boxes"):
        op = getattr(torch.ops.cropcore, name)

        def counted(*args, _op=op, _name=name):
            calls.append(_name)
            return _op(*args)

        monkeypatch.setattr(torch.ops.cropcore, name, counted)
    return calls


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("method", METHODS)
def test_eager_backward_skips_the_dispatcher_and_equals_the_ops(data_format, method, monkeypatch):
    image = _image(data_format, depth=6)
    boxes, indices = torch.tensor(BOXES), torch.tensor(INDICES)
    channels_first = data_format == "channels_first"
    expected_image = torch.ops.cropcore.crop_and_resize_grad_image(
        torch.ones(3, 6, 4, 5) if channels_first else torch.ones(3, 4, 5, 6),
        boxes, indices, 2, 7, 9, 6, method, torch.float32, channels_first,
    )  # fmt: skip
    calls = _record_gradient_ops(monkeypatch)
    x = image.clone().requires_grad_()
    b = boxes.clone().requires_grad_()
    out = cropcore.crop_and_resize(x, b, indices, (4, 5), method, data_format=data_format)
    out.sum().backward()
    assert calls == []
    assert torch.equal(x.grad, expected_image)
    expected_boxes = torch.ops.cropcore.crop_and_resize_grad_boxes(
        torch.ones_like(out), image, boxes, indices, channels_first
    )
    assert torch.equal(b.grad, expected_boxes)


def test_backward_with_create_graph_still_goes_through_the_ops(monkeypatch):
    # A double backward needs the gradient ops' own autograd.
    calls = _record_gradient_ops(monkeypatch)
    image = _image("channels_last").requires_grad_()
    out = cropcore.crop_and_resize(image, torch.tensor(BOXES), torch.tensor(INDICES), (4, 5))
    (grad,) = torch.autograd.grad(out.square().sum(), image, create_graph=True)
    assert calls == ["crop_and_resize_grad_image"]
    grad.sum().backward()
    assert image.grad is not None


def test_dispatch_modes_see_the_gradient_ops():
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    image = _image("channels_last").requires_grad_()
    boxes = torch.tensor(BOXES, requires_grad=True)
    with Record() as record:
        out = cropcore_torch.crop_and_resize(image, boxes, torch.tensor(INDICES), 3)
        out.sum().backward()
    assert "cropcore.crop_and_resize.default" in record.ops
    assert "cropcore.crop_and_resize_grad_image.default" in record.ops
    assert "cropcore.crop_and_resize_grad_boxes.default" in record.ops


@pytest.mark.parametrize("data_format", FORMATS)
def test_eager_image_gradient_reuses_the_forward_sample_tables(data_format, monkeypatch):
    from cropcore_torch import _native, _small

    if not _native.available():
        pytest.skip(_native.status())
    computed = []
    real = _native._sample_tables

    def counted(*args, **kwargs):
        computed.append(kwargs.get("ratio_first", False))
        return real(*args, **kwargs)

    image = _image(data_format, depth=6)
    boxes, indices = torch.tensor(BOXES), torch.tensor(INDICES)
    x = image.clone().requires_grad_()
    out = cropcore.crop_and_resize(x, boxes, indices, (4, 5), data_format=data_format)
    upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    expected = torch.ops.cropcore.crop_and_resize_grad_image(
        upstream, boxes, indices, *(2, 7, 9, 6), "bilinear", torch.float32,
        data_format == "channels_first",
    )  # fmt: skip

    def counted_small(*args, **kwargs):
        result = real_small(*args, **kwargs)
        if result is not None:  # the one-pass small forward computed its tables in C
            computed.append(False)
        return result

    real_small = _small.crop_and_resize
    monkeypatch.setattr(_native, "_sample_tables", counted)
    monkeypatch.setattr(_small, "crop_and_resize", counted_small)
    x.grad = None
    cropcore.crop_and_resize(x, boxes, indices, (4, 5), data_format=data_format).backward(upstream)
    assert computed == [False]  # the forward's, once
    assert torch.equal(x.grad, expected)


def test_a_one_channel_result_is_not_copied_to_channels_first():
    from cropcore_torch import _native

    nhwc = torch.randn(2, 5, 6, 1)
    planes = _native.channels_first(nhwc)
    assert planes.shape == (2, 1, 5, 6)
    assert planes.is_contiguous()
    assert planes.data_ptr() == nhwc.data_ptr()
    assert torch.equal(planes, nhwc.permute(0, 3, 1, 2))


def test_boxes_changed_in_place_before_the_eager_backward_are_refused():
    # The image gradient reuses the forward's sample tables: boxes changed in between must not
    # silently give the old boxes' gradient (autograd's version check on the saved boxes).
    image = _image("channels_last").requires_grad_()
    boxes = torch.tensor(BOXES)
    out = cropcore.crop_and_resize(image, boxes, torch.tensor(INDICES), (4, 5))
    boxes.add_(0.01)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


def test_a_result_that_is_a_view_of_its_whole_base_is_returned_as_the_base():
    # An NHWC result (an identity permute of its memory) or an NCHW one (the permute of the
    # permute back): no new tensor over the same storage is needed, the base is that tensor.
    from cropcore_torch import ops

    memory = torch.empty(2, 3, 4, 5)
    assert ops._own(memory.permute(0, 1, 2, 3)) is memory
    assert ops._own(memory.permute(0, 2, 3, 1).permute(0, 3, 1, 2)) is memory
    sliced = ops._own(memory[1:])  # a part of its base: a tensor of its own over that storage
    assert sliced._base is None
    assert sliced.data_ptr() == memory[1:].data_ptr()
    assert sliced.shape == (1, 3, 4, 5)
