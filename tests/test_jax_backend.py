"""The JAX backend: dispatch of jax.Array, and crop_and_resize under jit, grad, vmap and a jitted step.

Expected values come from the NumPy backend, the reference that the conformance suite certifies
bit for bit against TensorFlow's recorded results; ``cropcore conformance jax`` (run by
test_conformance_backends.py) certifies the backend itself over the whole suite.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the jax backend needs jax (pip install 'cropcore[jax]')")
jnp = pytest.importorskip("jax.numpy")

import cropcore  # noqa: E402

F32 = np.float32


@pytest.fixture(autouse=True)
def _jax_backend_available():
    from cropcore.registry import registry

    backend = registry.get("jax")
    if backend is None:
        pytest.skip(
            "the jax backend is not registered (cropcore is not installed with its entry points)"
        )
    backend.probe()
    if backend.status != "available":
        pytest.skip(f"the jax backend is {backend.status}: {backend.reason}")


def _inputs(seed: int = 0, channels_first: bool = False, dtype=F32):
    rng = np.random.default_rng(seed)
    image = (rng.random((2, 7, 9, 3)) * 200 - 50).astype(dtype)
    if channels_first:
        image = np.ascontiguousarray(image.transpose(0, 3, 1, 2))
    boxes = np.array(
        [
            [0.1, 0.2, 0.8, 0.9],
            [0.9, 0.1, 0.2, 0.7],  # flipped
            [0.5, 0.45, 0.5, 0.45],  # crop size 1 centre arithmetic in the 1x1 cases
            [-0.3, 0.1, 1.2, 1.1],  # partly outside: extrapolation
        ],
        F32,
    )
    box_indices = np.array([1, 0, 1, 0], np.int32)
    return image, boxes, box_indices


def _grads(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _same_bits(actual, expected) -> None:
    actual = np.asarray(actual)
    assert actual.dtype == expected.dtype
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(
        actual.view(f"u{actual.itemsize}"), expected.view(f"u{expected.itemsize}")
    )


# --------------------------------------------------------------------------------------------------
# Dispatch


def test_listing_backends_does_not_import_jax():
    code = (
        "import sys, cropcore\n"
        "names = [b.name for b in cropcore.backends()]\n"
        "assert 'jax' in names, names\n"
        "print('jax' in sys.modules, 'jaxlib' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False False"


def test_a_jax_array_runs_on_the_jax_backend_by_default():
    image, boxes, box_indices = _inputs()
    decision = cropcore.explain("crop_and_resize", jnp.asarray(image), boxes, box_indices, (3, 4))
    assert decision.backend == "jax"


def test_the_result_is_a_jax_array_on_the_image_s_device():
    image, boxes, box_indices = _inputs()
    device = jax.devices()[-1]
    crops = cropcore.crop_and_resize(jax.device_put(image, device), boxes, box_indices, (3, 4))
    assert isinstance(crops, jax.Array)
    assert crops.devices() == {device}


def test_numpy_input_still_runs_on_a_numpy_backend():
    image, boxes, box_indices = _inputs()
    assert cropcore.explain("crop_and_resize", image, boxes, box_indices, (3, 4)).backend != "jax"
    assert isinstance(cropcore.crop_and_resize(image, boxes, box_indices, (3, 4)), np.ndarray)


def test_traced_boxes_of_a_numpy_image_are_refused_saying_to_pass_the_image_as_a_jax_array():
    """The result follows the image; a NumPy image cannot give jax.jit a traced result."""
    from cropcore.errors import BackendError

    image, boxes, box_indices = _inputs()
    with pytest.raises(BackendError, match=r"pass the image as a jax array too"):
        jax.jit(lambda b: cropcore.crop_and_resize(image, b, box_indices, (3, 4)))(boxes)
    # what the message asks for works, and gives the reference's result
    got = jax.jit(lambda b: cropcore.crop_and_resize(jnp.asarray(image), b, box_indices, (3, 4)))(
        boxes
    )
    expected = cropcore.crop_and_resize(image, boxes, box_indices, (3, 4), backend="numpy")
    assert np.asarray(got).tobytes() == expected.tobytes()


# --------------------------------------------------------------------------------------------------
# The ops, eagerly and under jit


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("channels_first", [False, True], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("crop_size", [(4, 5), (1, 1)])
def test_forward_is_bit_identical_to_the_reference_eagerly_and_under_jit(
    method, channels_first, crop_size
):
    image, boxes, box_indices = _inputs(channels_first=channels_first)
    kwargs = {
        "method": method,
        "extrapolation_value": 0.25,
        "data_format": "channels_first" if channels_first else "channels_last",
    }
    expected = cropcore.crop_and_resize(
        image, boxes, box_indices, crop_size, backend="numpy", **kwargs
    )
    eager = cropcore.crop_and_resize(jnp.asarray(image), boxes, box_indices, crop_size, **kwargs)
    jitted = jax.jit(lambda i, b, x: cropcore.crop_and_resize(i, b, x, crop_size, **kwargs))(
        jnp.asarray(image), jnp.asarray(boxes), jnp.asarray(box_indices)
    )
    _same_bits(eager, expected)
    _same_bits(jitted, expected)


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32", "float16"])
def test_forward_takes_every_image_dtype_jax_has_without_x64(dtype):
    image, boxes, box_indices = _inputs(dtype=np.dtype(dtype))
    expected = cropcore.crop_and_resize(image, boxes, box_indices, (3, 4), backend="numpy")
    _same_bits(cropcore.crop_and_resize(jnp.asarray(image), boxes, box_indices, (3, 4)), expected)


def test_a_float64_image_stays_float64_and_gives_the_reference_result():
    image, boxes, box_indices = _inputs(dtype=np.float64)
    expected = cropcore.crop_and_resize(image, boxes, box_indices, (3, 4), backend="numpy")
    # Without x64 a float64 NumPy image handed to backend="jax" is converted with its dtype kept.
    _same_bits(cropcore.crop_and_resize(image, boxes, box_indices, (3, 4), backend="jax"), expected)


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_the_image_gradient_op_is_bit_identical_to_the_reference(method, dtype):
    _, boxes, box_indices = _inputs()
    grads = _grads((4, 3, 4, 3))
    shape = (2, 7, 9, 3)
    expected = cropcore.crop_and_resize_grad_image(
        grads, boxes, box_indices, shape, method=method, dtype=dtype, backend="numpy"
    )
    actual = cropcore.crop_and_resize_grad_image(
        jnp.asarray(grads), boxes, box_indices, shape, method=method, dtype=dtype
    )
    assert isinstance(actual, jax.Array)
    _same_bits(actual, expected)


def test_the_box_gradient_op_is_bit_identical_to_the_reference():
    image, boxes, box_indices = _inputs()
    for crop in ((3, 4), (1, 4), (3, 1)):
        grads = _grads((4, *crop, 3))
        expected = cropcore.crop_and_resize_grad_boxes(
            grads, image, boxes, box_indices, backend="numpy"
        )
        actual = cropcore.crop_and_resize_grad_boxes(
            jnp.asarray(grads), jnp.asarray(image), boxes, box_indices
        )
        _same_bits(actual, expected)


def test_static_checks_raise_at_trace_time_naming_the_argument():
    image, boxes, box_indices = _inputs()
    f = jax.jit(lambda i, b, x: cropcore.crop_and_resize(i, b, x, (3, 4)))
    with pytest.raises(ValueError, match="boxes"):
        f(jnp.asarray(image), jnp.asarray(boxes[:, :3]), jnp.asarray(box_indices))
    with pytest.raises(TypeError, match="box_indices"):
        f(jnp.asarray(image), jnp.asarray(boxes), jnp.asarray(box_indices, jnp.float32))


def test_a_bad_box_index_under_jit_gives_a_nan_crop_and_eagerly_an_index_error():
    image, boxes, box_indices = _inputs()
    bad = box_indices.copy()
    bad[1] = 5
    crops = jax.jit(lambda i, b, x: cropcore.crop_and_resize(i, b, x, (3, 4)))(
        jnp.asarray(image), jnp.asarray(boxes), jnp.asarray(bad)
    )
    crops = np.asarray(crops)
    assert np.isnan(crops[1]).all()
    expected = cropcore.crop_and_resize(image, boxes, box_indices, (3, 4), backend="numpy")
    _same_bits(crops[[0, 2, 3]], expected[[0, 2, 3]])
    with pytest.raises(IndexError, match="box_indices"):
        cropcore.crop_and_resize(jnp.asarray(image), boxes, bad, (3, 4))


def test_crop2d_slices_a_jax_array_under_jit():
    x = jnp.arange(2 * 6 * 7 * 3, dtype=jnp.float32).reshape(2, 6, 7, 3)
    out = jax.jit(lambda x: cropcore.crop2d(x, ((1, 2), (3, 0))))(x)
    assert isinstance(out, jax.Array)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x)[:, 1:-2, 3:, :])


# --------------------------------------------------------------------------------------------------
# Transformations


def _vjp_expected(image, boxes, box_indices, crop_size, cotangent, method, data_format):
    dtype = image.dtype.name if image.dtype.kind == "f" else None
    grad_image = None
    if dtype is not None:
        grad_image = cropcore.crop_and_resize_grad_image(
            cotangent, boxes, box_indices, image.shape, method=method, dtype=dtype,
            data_format=data_format, backend="numpy",
        )  # fmt: skip
    grad_boxes = cropcore.crop_and_resize_grad_boxes(
        cotangent, image, boxes, box_indices, data_format=data_format, backend="numpy"
    )
    return grad_image, grad_boxes


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("channels_first", [False, True], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
def test_vjp_gives_the_gradient_ops_for_image_and_boxes(method, channels_first, jit):
    image, boxes, box_indices = _inputs(channels_first=channels_first)
    data_format = "channels_first" if channels_first else "channels_last"
    crop_size = (3, 4)

    def f(image, boxes):
        return cropcore.crop_and_resize(
            image,
            boxes,
            jnp.asarray(box_indices),
            crop_size,
            method=method,
            data_format=data_format,
        )

    crops, pullback = jax.vjp(f, jnp.asarray(image), jnp.asarray(boxes))
    cotangent = _grads(crops.shape)
    pull = jax.jit(pullback) if jit else pullback
    grad_image, grad_boxes = pull(jnp.asarray(cotangent))
    expected_image, expected_boxes = _vjp_expected(
        image, boxes, box_indices, crop_size, cotangent, method, data_format
    )
    _same_bits(grad_image, expected_image)
    _same_bits(grad_boxes, expected_boxes)


def test_grad_of_a_loss_under_jit_equals_the_gradient_ops():
    image, boxes, box_indices = _inputs()

    def loss(image, boxes):
        return jnp.sum(cropcore.crop_and_resize(image, boxes, jnp.asarray(box_indices), (5, 5)))

    grad_image, grad_boxes = jax.jit(jax.grad(loss, argnums=(0, 1)))(
        jnp.asarray(image), jnp.asarray(boxes)
    )
    ones = np.ones((4, 5, 5, 3), F32)
    expected_image, expected_boxes = _vjp_expected(
        image, boxes, box_indices, (5, 5), ones, "bilinear", "channels_last"
    )
    _same_bits(grad_image, expected_image)
    _same_bits(grad_boxes, expected_boxes)


def test_an_integer_image_has_a_box_gradient_and_no_image_gradient():
    image, boxes, box_indices = _inputs(dtype=np.uint8)

    def loss(boxes):
        return jnp.sum(
            cropcore.crop_and_resize(jnp.asarray(image), boxes, jnp.asarray(box_indices), (3, 4))
        )

    grad_boxes = jax.grad(loss)(jnp.asarray(boxes))
    expected = cropcore.crop_and_resize_grad_boxes(
        np.ones((4, 3, 4, 3), F32), image, boxes, box_indices, backend="numpy"
    )
    _same_bits(grad_boxes, expected)


def test_vmap_batches_the_op_and_equals_one_call_per_item():
    images = np.stack([_inputs(seed)[0] for seed in range(3)])
    boxes = np.stack([_inputs()[1] + 0.01 * k for k in range(3)]).astype(F32)
    _, _, box_indices = _inputs()
    batched = jax.vmap(
        lambda i, b: cropcore.crop_and_resize(i, b, jnp.asarray(box_indices), (3, 4))
    )(jnp.asarray(images), jnp.asarray(boxes))
    assert batched.shape == (3, 4, 3, 4, 3)
    for k in range(3):
        expected = cropcore.crop_and_resize(
            images[k], boxes[k], box_indices, (3, 4), backend="numpy"
        )
        _same_bits(batched[k], expected)


def test_vmap_of_grad_gives_each_item_s_gradient():
    image, boxes, box_indices = _inputs()
    many_boxes = np.stack([boxes, boxes * F32(0.5)])

    def loss(boxes):
        return jnp.sum(
            cropcore.crop_and_resize(jnp.asarray(image), boxes, jnp.asarray(box_indices), (3, 4))
        )

    grads = jax.vmap(jax.grad(loss))(jnp.asarray(many_boxes))
    ones = np.ones((4, 3, 4, 3), F32)
    for k in range(2):
        expected = cropcore.crop_and_resize_grad_boxes(
            ones, image, many_boxes[k], box_indices, backend="numpy"
        )
        _same_bits(grads[k], expected)


def test_a_jitted_training_step_learns_and_matches_the_eager_step():
    """Hand-written SGD on a per-channel gain applied before crop_and_resize: the jitted step gives
    the eager step's parameters bit for bit, and the loss falls."""
    image, boxes, box_indices = _inputs()
    target = cropcore.crop_and_resize(image * F32(1.5), boxes, box_indices, (4, 4), backend="numpy")

    def loss(params, image, boxes):
        crops = cropcore.crop_and_resize(
            image * params["gain"], boxes + params["shift"], jnp.asarray(box_indices), (4, 4)
        )
        return jnp.mean((crops - target) ** 2)

    def step(params, image, boxes):
        value, grads = jax.value_and_grad(loss)(params, image, boxes)
        # The box gradient is in pixels times (size - 1): a smaller step for the shift.
        rates = {"gain": F32(1e-5), "shift": F32(1e-9)}
        return {k: params[k] - rates[k] * grads[k] for k in params}, value

    params = {"gain": jnp.ones(3, jnp.float32), "shift": jnp.zeros(4, jnp.float32)}
    jitted = jax.jit(step)
    eager_params, _ = step(params, jnp.asarray(image), jnp.asarray(boxes))
    losses = []
    for _ in range(5):
        params, value = jitted(params, jnp.asarray(image), jnp.asarray(boxes))
        losses.append(float(value))
    first, _ = jitted(
        {"gain": jnp.ones(3, jnp.float32), "shift": jnp.zeros(4, jnp.float32)},
        jnp.asarray(image),
        jnp.asarray(boxes),
    )
    for name in ("gain", "shift"):
        _same_bits(first[name], np.asarray(eager_params[name]))
    assert losses[-1] < losses[0]


def test_a_negative_zero_extrapolation_value_is_not_taken_for_a_positive_one():
    # jit compares static arguments by equality, and -0.0 == 0.0: the value must not be static.
    image, boxes, box_indices = _inputs()
    for value in (0.0, -0.0):
        expected = cropcore.crop_and_resize(
            image, boxes, box_indices, (3, 4), extrapolation_value=value, backend="numpy"
        )
        actual = cropcore.crop_and_resize(
            jnp.asarray(image), boxes, box_indices, (3, 4), extrapolation_value=value
        )
        _same_bits(actual, expected)


def test_a_torch_tensor_that_needs_grad_named_to_jax_comes_back_detached_with_a_warning():
    torch = pytest.importorskip("torch")
    image, boxes, box_indices = _inputs()
    tensor = torch.from_numpy(image).requires_grad_()
    with pytest.warns(RuntimeWarning, match="detached"):
        crops = cropcore.crop_and_resize(tensor, boxes, box_indices, (3, 4), backend="jax")
    assert not crops.requires_grad


@pytest.mark.parametrize("op", ["forward", "grad_image", "grad_boxes"])
def test_calls_larger_than_a_mebibyte_run_under_jit(op):
    # Above 1 MiB cropcore asks the backend for its peak memory, with the call's tracers.
    image = np.linspace(0, 1, 2 * 64 * 64 * 64, dtype=F32).reshape(2, 64, 64, 64)
    boxes = np.array([[0.1, 0.2, 0.8, 0.9], [0.0, 0.0, 1.0, 1.0]], F32)
    box_indices = np.array([1, 0], np.int32)
    grads = _grads((2, 14, 14, 64))
    if op == "forward":
        f = jax.jit(lambda i, b, x: cropcore.crop_and_resize(i, b, x, (14, 14)))
        actual, expected = (
            f(image, boxes, box_indices),
            cropcore.crop_and_resize(image, boxes, box_indices, (14, 14), backend="numpy"),
        )
    elif op == "grad_image":
        f = jax.jit(lambda g, b, x: cropcore.crop_and_resize_grad_image(g, b, x, image.shape))
        actual, expected = (
            f(grads, boxes, box_indices),
            cropcore.crop_and_resize_grad_image(
                grads, boxes, box_indices, image.shape, backend="numpy"
            ),
        )
    else:
        f = jax.jit(lambda g, i, b, x: cropcore.crop_and_resize_grad_boxes(g, i, b, x))
        actual, expected = (
            f(grads, image, boxes, box_indices),
            cropcore.crop_and_resize_grad_boxes(grads, image, boxes, box_indices, backend="numpy"),
        )
    _same_bits(actual, expected)
