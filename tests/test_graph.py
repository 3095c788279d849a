"""cropcore in the graph: torch.compile(fullgraph=True), torch.export, meta and fake tensors, with the
default public functions and layers (no ``validate=False``), forward and backward, equal to eager.

Also what a compiled CPU graph does with bad box values, which no check read at trace time: a bad
box index raises IndexError when the graph runs (the indices are on the host then), a non-finite
box extrapolates (docs/decisions.md, "What do unchecked bad values give?").
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

import cropcore  # noqa: E402
from cropcore_torch import CropAndResize, Cropping2D  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"
)

FORMATS = ["channels_last", "channels_first"]


@pytest.fixture(params=["native", "torch-ops"])
def path(request, cropcore_env):
    """Each test on the torch backend's compiled CPU loops, then on its torch ops (CUDA's path)."""
    cropcore_env.set("CROPCORE_TORCH_NATIVE", "1" if request.param == "native" else "0")
    torch._dynamo.reset()
    return request.param


def inputs(data_format, requires_grad=True):
    generator = torch.Generator().manual_seed(0)
    shape = (2, 6, 7, 3) if data_format == "channels_last" else (2, 3, 6, 7)
    image = torch.rand(shape, generator=generator).requires_grad_(requires_grad)
    boxes = torch.tensor(
        [[0.1, 0.2, 0.8, 0.9], [0.9, 0.0, 0.2, 1.1], [-0.1, 0.3, 0.4, 0.6]]
    ).requires_grad_(requires_grad)
    box_indices = torch.tensor([1, 0, 1])
    return image, boxes, box_indices


def crops(image, boxes, box_indices, data_format, method="bilinear"):
    out = cropcore.crop_and_resize(
        image, boxes, box_indices, (4, 5), method, 0.5, data_format=data_format
    )
    return (out * 2).square()


def gradients_of(function, image, boxes, *rest):
    image.grad = boxes.grad = None
    out = function(image, boxes, *rest)
    out.sum().backward()
    return out.detach(), image.grad, boxes.grad


@pytest.mark.parametrize("data_format", FORMATS)
@pytest.mark.parametrize("method", ["bilinear", "nearest"])
def test_the_public_function_compiles_with_fullgraph_forward_and_backward(
    path, data_format, method
):
    image, boxes, box_indices = inputs(data_format)
    compiled = torch.compile(crops, fullgraph=True, backend="aot_eager")
    expected = gradients_of(crops, image, boxes, box_indices, data_format, method)
    got = gradients_of(compiled, image, boxes, box_indices, data_format, method)
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


@pytest.mark.slow
def test_the_public_function_compiles_with_inductor_without_a_graph_break(path):
    image, boxes, box_indices = inputs("channels_first")
    explanation = torch._dynamo.explain(crops)(image, boxes, box_indices, "channels_first")
    assert explanation.graph_break_count == 0
    compiled = torch.compile(crops, fullgraph=True)
    expected = gradients_of(crops, image, boxes, box_indices, "channels_first")
    got = gradients_of(compiled, image, boxes, box_indices, "channels_first")
    for g, e in zip(got, expected, strict=True):
        assert torch.equal(g, e)


@pytest.mark.parametrize("data_format", FORMATS)
def test_the_gradient_ops_compile_with_fullgraph(path, data_format):
    image, boxes, box_indices = inputs(data_format, requires_grad=False)
    grads = cropcore.crop_and_resize(image, boxes, box_indices, (4, 5), data_format=data_format)

    def both(grads, image, boxes, box_indices):
        grad_image = cropcore.crop_and_resize_grad_image(
            grads, boxes, box_indices, tuple(image.shape), data_format=data_format
        )
        grad_boxes = cropcore.crop_and_resize_grad_boxes(
            grads, image, boxes, box_indices, data_format=data_format
        )
        return grad_image, grad_boxes

    compiled = torch.compile(both, fullgraph=True, backend="aot_eager")
    for g, e in zip(
        compiled(grads, image, boxes, box_indices),
        both(grads, image, boxes, box_indices),
        strict=True,
    ):
        assert torch.equal(g, e)


def test_crop2d_compiles_with_fullgraph():
    x = torch.arange(2 * 5 * 6 * 3, dtype=torch.float32).reshape(2, 5, 6, 3)

    def cropped(x):
        return cropcore.crop2d(x, ((1, 2), (0, 3))) + 1

    compiled = torch.compile(cropped, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(x), cropped(x))


@pytest.mark.parametrize("fixed_boxes", [False, True])
def test_the_layers_compile_with_fullgraph_in_their_default_configuration(path, fixed_boxes):
    image, boxes, box_indices = inputs("channels_first")
    if fixed_boxes:
        layer = CropAndResize((4, 5), boxes=boxes.detach())  # every box of every image
        model = torch.nn.Sequential(Cropping2D(1), layer)
        args = (image,)
    else:
        model = CropAndResize((4, 5))
        args = (image, boxes, box_indices)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    image.grad = None
    out = compiled(*args)
    out.square().sum().backward()
    got = out.detach(), image.grad.clone()
    image.grad = None
    out = model(*args)
    out.square().sum().backward()
    assert torch.equal(got[0], out.detach())
    assert torch.equal(got[1], image.grad)


class _Crops(torch.nn.Module):
    def forward(self, image, boxes, box_indices):
        return crops(image, boxes, box_indices, "channels_last")


@pytest.mark.parametrize(
    "make",
    [
        lambda: (_Crops(), 3),
        lambda: (CropAndResize((4, 5), data_format="channels_last"), 3),
        lambda: (Cropping2D(((1, 0), (2, 1)), data_format="channels_last"), 1),
    ],
    ids=["public-function", "CropAndResize", "Cropping2D"],
)
def test_export_of_the_default_functions_and_layers_runs_as_eager_forward_and_backward(path, make):
    model, arity = make()
    image, boxes, box_indices = inputs("channels_last")
    args = (image.detach(), boxes.detach(), box_indices)[:arity]
    program = torch.export.export(model, args)
    exported = program.module()
    eager_args = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    export_args = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    expected, got = model(*eager_args), exported(*export_args)
    assert torch.equal(got, expected)
    expected.square().sum().backward()
    got.square().sum().backward()
    for e, g in zip(eager_args, export_args, strict=True):
        if e.is_floating_point():
            assert torch.equal(g.grad, e.grad)


def test_meta_tensors_give_the_result_s_shape_without_data():
    image = torch.empty(2, 3, 6, 7, device="meta")
    boxes = torch.empty(5, 4, device="meta")
    box_indices = torch.empty(5, dtype=torch.int64, device="meta")
    out = cropcore.crop_and_resize(image, boxes, box_indices, (4, 5), data_format="channels_first")
    assert out.device.type == "meta"
    assert tuple(out.shape) == (5, 3, 4, 5)
    assert out.dtype == torch.float32
    grads = torch.empty(5, 3, 4, 5, device="meta")
    grad_image = cropcore.crop_and_resize_grad_image(
        grads, boxes, box_indices, (2, 3, 6, 7), data_format="channels_first", dtype="float64"
    )
    assert (grad_image.device.type, tuple(grad_image.shape), grad_image.dtype) == (
        "meta",
        (2, 3, 6, 7),
        torch.float64,
    )
    grad_boxes = cropcore.crop_and_resize_grad_boxes(
        grads, image, boxes, box_indices, data_format="channels_first"
    )
    assert (grad_boxes.device.type, tuple(grad_boxes.shape)) == ("meta", (5, 4))


def test_fake_tensors_give_the_result_s_shape_without_data():
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    with FakeTensorMode():
        image = torch.empty(2, 6, 7, 3, dtype=torch.uint8)
        out = cropcore.crop_and_resize(
            image, torch.empty(4, 4), torch.zeros(4, dtype=torch.int64), (3, 2)
        )
    assert isinstance(out, FakeTensor)
    assert tuple(out.shape) == (4, 3, 2, 3)


def test_static_checks_run_at_trace_time(path):
    image, boxes, box_indices = inputs("channels_last", requires_grad=False)
    compiled = torch.compile(
        lambda image, boxes, box_indices: cropcore.crop_and_resize(
            image, boxes, box_indices, (0, 3)
        ),
        fullgraph=True,
        backend="aot_eager",
    )
    with pytest.raises(Exception, match="crop_size must be positive"):
        compiled(image, boxes, box_indices)


def test_a_bad_box_index_in_a_compiled_cpu_graph_raises_when_the_graph_runs(path):
    image, boxes, box_indices = inputs("channels_last", requires_grad=False)
    compiled = torch.compile(crops, fullgraph=True, backend="aot_eager")
    compiled(image, boxes, box_indices, "channels_last")  # traced with good values
    for bad in (2, -1):
        with pytest.raises(IndexError, match=r"box_indices must be in \[0, batch\) = \[0, 2\)"):
            compiled(image, boxes, torch.tensor([1, bad, 0]), "channels_last")


def test_a_non_finite_box_in_a_compiled_graph_extrapolates(path):
    image, boxes, box_indices = inputs("channels_last", requires_grad=False)
    compiled = torch.compile(
        lambda image, boxes, box_indices: cropcore.crop_and_resize(
            image, boxes, box_indices, (4, 5), extrapolation_value=0.5
        ),
        fullgraph=True,
        backend="aot_eager",
    )
    bad = boxes.clone()
    bad[0, 2] = math.nan
    bad[1] = torch.tensor([-math.inf, 0.0, math.inf, 1.0])
    bad[2] = torch.tensor([-3e38, 0.0, 3e38, 1.0])
    out = compiled(image, bad, box_indices)
    assert torch.equal(out, torch.full_like(out, 0.5))


def test_a_compiled_call_can_be_the_first_call_of_a_process():
    # Nothing cached by an eager call before: every lookup cropcore makes once is made in a trace.
    import subprocess
    import sys

    code = (
        "import torch, cropcore\n"
        "f = torch.compile(lambda i, b, x: cropcore.crop_and_resize(i, b, x, (3, 3)),"
        " fullgraph=True, backend='aot_eager')\n"
        "print(tuple(f(torch.rand(1, 5, 5, 2), torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0])).shape))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("(1, 3, 3, 2)")


def test_a_compiled_call_reads_a_set_output_limit_without_dynamo_warnings(cropcore_env, recwarn):
    cropcore_env.set("CROPCORE_MAX_OUTPUT_BYTES", str(10**9))
    torch._dynamo.reset()
    image, boxes, box_indices = inputs("channels_last", requires_grad=False)
    compiled = torch.compile(crops, fullgraph=True, backend="aot_eager")
    assert torch.equal(
        compiled(image, boxes, box_indices, "channels_last"),
        crops(image, boxes, box_indices, "channels_last"),
    )
    assert not [w for w in recwarn if "lru_cache" in str(w.message)]
