"""roi_align and its image gradient on the JAX backend: eagerly, under jit, grad and vmap.

Expected values come from the NumPy backend, the reference held bit for bit to torchvision's loop
nests and to ONNX Runtime's recorded vectors (tests/test_roi_align.py); ``cropcore conformance jax
-c roi-align`` certifies the backend on those vectors too.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="the jax backend needs jax (pip install 'cropcore[jax]')")
jnp = pytest.importorskip("jax.numpy")

from test_roi_align import bits_equal, random_call  # noqa: E402

import cropcore  # noqa: E402
from cropcore.roi_samples import _geometry  # noqa: E402

F32 = np.float32


@pytest.fixture(autouse=True)
def _jax_backend_available():
    from cropcore.registry import registry

    backend = registry.get("jax")
    if backend is None:
        pytest.skip("the jax backend is not registered")
    backend.probe()
    if backend.status != "available":
        pytest.skip(f"the jax backend is {backend.status}: {backend.reason}")


def _args(c: dict) -> tuple:
    return (c["output_size"], c["spatial_scale"], c["sampling_ratio"], c["aligned"])


def _layout(x: np.ndarray, data_format: str) -> np.ndarray:
    return x if data_format == "channels_first" else np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _grids(c: dict, dtype=F32) -> tuple[np.ndarray, np.ndarray]:
    """Each box's sampling grid (grid_h, grid_w), as the reference computes it."""
    (_, _, grid_h), (_, _, grid_w) = _geometry(
        np.asarray(c["boxes"], dtype),
        c["spatial_scale"],
        c["aligned"],
        c["output_size"],
        c["sampling_ratio"],
        dtype,
    )
    return grid_h, grid_w


def _fits(c: dict, height: int, width: int) -> np.ndarray:
    """Which boxes' grids fit in the bound a traced call walks."""
    from cropcore_jax.roi_align import traced_grid_bound

    bound = traced_grid_bound((height, width), c["output_size"], c["sampling_ratio"])
    grid_h, grid_w = _grids(c)
    return (grid_h <= bound[0]) & (grid_w <= bound[1])


# --------------------------------------------------------------------------------------------------
# Dispatch


def test_the_jax_backend_implements_every_op_roi_align_included():
    from cropcore.registry import registry

    backend = registry.get("jax")
    assert {"roi_align", "roi_align_grad_image"} <= set(backend.ops)
    assert set(backend.ops) == set(cropcore.ops.OPS)


def test_a_jax_image_runs_roi_align_on_the_jax_backend_by_default():
    image = jnp.ones((1, 2, 6, 6), jnp.float32)
    boxes = [[0, 1.0, 1.0, 4.0, 4.0]]
    assert cropcore.explain("roi_align", image, boxes, 2).backend == "jax"
    grads = jnp.ones((1, 2, 2, 2), jnp.float32)
    assert cropcore.explain("roi_align_grad_image", grads, boxes, image.shape).backend == "jax"
    out = cropcore.roi_align(image, boxes, 2)
    assert isinstance(out, jax.Array)
    assert out.shape == (1, 2, 2, 2)


# --------------------------------------------------------------------------------------------------
# Exactness: eagerly (the grid sized from the boxes) and under jit (a static bound)


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_eager_calls_are_bit_identical_to_the_reference(data_format, dtype):
    rng = np.random.default_rng(0 if dtype == np.float32 else 1)
    for case in range(14):
        c = random_call(rng)
        image = _layout(c["image"].astype(dtype), data_format)
        kwargs = {"box_indices": c["box_indices"], "data_format": data_format}
        expected = cropcore.roi_align(
            image, c["boxes"], *_args(c), mode=c["mode"], backend="numpy", **kwargs
        )
        got = cropcore.roi_align(
            jnp.asarray(image), c["boxes"], *_args(c), mode=c["mode"], **kwargs
        )
        assert bits_equal(np.asarray(got), expected), f"forward case {case}: {c}"
        grads = rng.standard_normal(expected.shape).astype(dtype)
        expected = cropcore.roi_align_grad_image(
            grads, c["boxes"], image.shape, *_args(c)[1:], backend="numpy", **kwargs
        )
        got = cropcore.roi_align_grad_image(
            jnp.asarray(grads), c["boxes"], image.shape, *_args(c)[1:], **kwargs
        )
        assert bits_equal(np.asarray(got), expected), f"gradient case {case}: {c}"


def test_a_float64_image_is_computed_in_float64():
    rng = np.random.default_rng(2)
    for case in range(6):
        c = random_call(rng, np.float64)
        image = c["image"]  # float64: put on the device as float64 by the core (scoped x64)
        kwargs = {"box_indices": c["box_indices"], "mode": c["mode"]}
        expected = cropcore.roi_align(image, c["boxes"], *_args(c), backend="numpy", **kwargs)
        got = cropcore.roi_align(image, c["boxes"], *_args(c), backend="jax", **kwargs)
        assert isinstance(got, np.ndarray)  # NumPy in, NumPy out, whichever backend ran
        assert bits_equal(got, expected), f"case {case}: {c}"


def test_an_empty_bin_is_positive_zero_as_in_the_reference():
    """Every sample of the last bins is empty (beyond the image): each adds ``0 * image[0, 0]``,
    a -0.0 for a negative pixel, to a sum that starts at +0.0 (XLA folds ``0 + x`` into ``x``)."""
    image = -np.ones((1, 1, 4, 4), F32)
    boxes = np.array([[0, 0.0, 0.0, 12.0, 3.0]], F32)
    expected = cropcore.roi_align(image, boxes, (1, 3), 1.0, 1, True, backend="numpy")
    got = np.asarray(cropcore.roi_align(jnp.asarray(image), boxes, (1, 3), 1.0, 1, True))
    assert np.signbit(expected[0, 0, 0, 2]) == np.False_  # the case this test is about
    assert bits_equal(got, expected)


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_jitted_calls_with_traced_boxes_are_bit_identical_where_the_grid_fits(data_format):
    """Under jit the adaptive grid is walked up to a bound from the image's size: every box whose
    grid fits is exact, every other one is NaN (never a sum over part of its samples)."""
    rng = np.random.default_rng(3)
    for case in range(14):
        c = random_call(rng)
        image = _layout(c["image"], data_format)
        first = data_format == "channels_first"
        height, width = image.shape[2:] if first else image.shape[1:3]
        kwargs = {"data_format": data_format, "mode": c["mode"]}
        indices = jnp.asarray(c["box_indices"], jnp.int32)

        @jax.jit
        def forward(image, boxes, indices, c=c, kwargs=kwargs):
            return cropcore.roi_align(image, boxes, *_args(c), box_indices=indices, **kwargs)

        expected = cropcore.roi_align(
            image, c["boxes"], *_args(c), box_indices=c["box_indices"], backend="numpy", **kwargs
        )
        got = np.asarray(forward(jnp.asarray(image), jnp.asarray(c["boxes"]), indices))
        fits = _fits(c, height, width)
        assert bits_equal(got[fits], expected[fits]), f"case {case}: {c}"
        assert np.isnan(got[~fits]).all(), f"case {case}: {c}"


def test_jax_grad_equals_the_reference_image_gradient_under_jit():
    rng = np.random.default_rng(4)
    for case in range(10):
        c = {**random_call(rng), "mode": "avg"}
        image, boxes = c["image"], c["boxes"]
        weights = rng.standard_normal((len(boxes), image.shape[1], *c["output_size"])).astype(F32)
        indices = jnp.asarray(c["box_indices"], jnp.int32)

        @jax.jit
        def loss(image, boxes, c=c, weights=weights, indices=indices):
            out = cropcore.roi_align(image, boxes, *_args(c), box_indices=indices)
            return jnp.sum(out * weights)

        grad_image, grad_boxes = jax.grad(loss, argnums=(0, 1))(
            jnp.asarray(image), jnp.asarray(boxes)
        )
        expected = cropcore.roi_align_grad_image(
            weights,
            boxes,
            image.shape,
            *_args(c)[1:],
            box_indices=c["box_indices"],
            backend="numpy",
        )
        fits = _fits(c, *image.shape[2:])
        touched = np.zeros(image.shape[0], bool)
        touched[c["box_indices"][~fits]] = True
        got = np.asarray(grad_image)
        assert bits_equal(got[~touched], expected[~touched]), f"case {case}: {c}"
        assert np.isnan(got[touched]).all(), f"case {case}: {c}"
        assert not np.asarray(grad_boxes).any()  # torchvision's roi_align has no box gradient


def test_eager_vjp_equals_the_gradient_op_bit_for_bit():
    rng = np.random.default_rng(5)
    image = rng.standard_normal((2, 12, 10, 5)).astype(F32)
    boxes = np.array([[0, 1.5, 2.0, 9.0, 11.0], [1, -2.0, 0.5, 14.0, 6.0]], F32)
    kwargs = {"sampling_ratio": -1, "aligned": True, "data_format": "channels_last"}
    out, vjp = jax.vjp(lambda x: cropcore.roi_align(x, boxes, (3, 4), 0.5, **kwargs), image)
    grads = rng.standard_normal(out.shape).astype(F32)
    (got,) = vjp(jnp.asarray(grads))
    expected = cropcore.roi_align_grad_image(
        grads, boxes, image.shape, 0.5, backend="numpy", **kwargs
    )
    assert bits_equal(np.asarray(got), expected)


def test_vmap_over_box_sets_equals_one_call_per_set():
    rng = np.random.default_rng(6)
    image = jnp.asarray(rng.standard_normal((2, 3, 9, 11)).astype(F32))
    xy = rng.uniform(0, 8, (4, 5, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.5, 3, (4, 5, 2))], -1).astype(F32)
    indices = jnp.asarray(rng.integers(0, 2, (4, 5)), jnp.int32)

    def one(b, i):
        return cropcore.roi_align(image, b, 3, 1.0, 2, True, box_indices=i)

    batched = np.asarray(jax.vmap(one)(jnp.asarray(boxes), indices))
    for n in range(4):
        assert bits_equal(batched[n], np.asarray(one(boxes[n], indices[n])))


# --------------------------------------------------------------------------------------------------
# The traced grid's bound, bad values and refusals


def test_a_traced_box_larger_than_the_bound_gives_nan_and_a_fitting_one_the_reference():
    image = np.arange(2 * 16 * 16, dtype=F32).reshape(2, 1, 16, 16)
    boxes = np.array([[0, 0.0, 0.0, 15.0, 15.0], [1, -40.0, -40.0, 60.0, 60.0]], F32)
    forward = jax.jit(lambda x, b: cropcore.roi_align(x, b, 4))  # adaptive grid
    got = np.asarray(forward(jnp.asarray(image), jnp.asarray(boxes)))
    expected = cropcore.roi_align(image, boxes, 4, backend="numpy")
    assert bits_equal(got[0], expected[0])  # grid 4 x 4 fits the bound 5 x 5
    assert np.isnan(got[1]).all()  # grid 25 x 25 does not
    # eagerly the grid is sized from the boxes: both exact
    assert bits_equal(np.asarray(cropcore.roi_align(jnp.asarray(image), boxes, 4)), expected)
    # a fixed sampling ratio has no bound to exceed, under jit too
    fixed = jax.jit(lambda x, b: cropcore.roi_align(x, b, 4, sampling_ratio=3))
    expected = cropcore.roi_align(image, boxes, 4, sampling_ratio=3, backend="numpy")
    assert bits_equal(np.asarray(fixed(jnp.asarray(image), jnp.asarray(boxes))), expected)


def test_static_checks_raise_at_trace_time_naming_the_argument():
    image = jnp.ones((1, 1, 6, 6), jnp.float32)
    boxes = jnp.asarray([[0, 1.0, 1.0, 4.0, 4.0]], jnp.float32)
    with pytest.raises(ValueError, match="output_size must be positive"):
        jax.jit(lambda x, b: cropcore.roi_align(x, b, (0, 2)))(image, boxes)
    with pytest.raises(ValueError, match="boxes must have shape"):
        jax.jit(lambda x, b: cropcore.roi_align(x, b[:, :3], 2))(image, boxes)
    with pytest.raises(TypeError, match="image must be float16, float32 or float64"):
        jax.jit(lambda x, b: cropcore.roi_align(x.astype(jnp.int32), b, 2))(image, boxes)
    with pytest.raises(ValueError, match="mode must be 'avg' or 'max'"):
        jax.jit(lambda x, b: cropcore.roi_align(x, b, 2, mode="mean"))(image, boxes)


def test_a_bad_box_index_under_jit_gives_nan_and_eagerly_an_index_error():
    image = jnp.ones((2, 1, 6, 6), jnp.float32)
    boxes = jnp.asarray([[1.0, 1.0, 4.0, 4.0], [0.0, 0.0, 5.0, 5.0]], jnp.float32)
    indices = jnp.asarray([1, 7], jnp.int32)
    forward = jax.jit(lambda b, i: cropcore.roi_align(image, b, 2, box_indices=i))
    out = np.asarray(forward(boxes, indices))
    assert (out[0] == 1).all()
    assert np.isnan(out[1]).all()
    grads = jnp.ones((2, 1, 2, 2), jnp.float32)
    backward = jax.jit(
        lambda b, i: cropcore.roi_align_grad_image(grads, b, image.shape, box_indices=i)
    )
    gradient = np.asarray(backward(boxes, indices))
    alone = cropcore.roi_align_grad_image(grads[:1], boxes[:1], image.shape, box_indices=[1])
    assert bits_equal(gradient, np.asarray(alone))  # the bad box adds nothing
    with pytest.raises(IndexError, match="box indices must be in"):
        cropcore.roi_align(image, boxes, 2, box_indices=indices)


def test_the_max_mode_has_no_gradient():
    image = jnp.ones((1, 1, 6, 6), jnp.float32)
    boxes = [[0, 1.0, 1.0, 4.0, 4.0]]
    with pytest.raises(ValueError, match="mode='max' has no gradient"):
        jax.grad(lambda x: jnp.sum(cropcore.roi_align(x, boxes, 2, mode="max")))(image)
    # the forward op itself runs under jit
    out = jax.jit(lambda x: cropcore.roi_align(x, boxes, 2, mode="max"))(image)
    assert out.shape == (1, 1, 2, 2)


def test_subnormal_values_are_flushed_on_xla_cpu_unlike_the_reference():
    """The documented difference (docs/jax.md, "roi_align"): XLA:CPU computes with flush-to-zero
    and denormals-are-zero, torchvision and ONNX Runtime with gradual underflow. A whole box on an
    image of one subnormal value: the reference averages it back to that value, XLA reads 0."""
    if jax.default_backend() != "cpu":
        pytest.skip("flush-to-zero is XLA:CPU's")
    tiny = np.float32(1e-39)  # below float32's smallest normal, 2**-126
    image = np.full((1, 1, 4, 4), tiny, F32)
    boxes = np.array([[0, 0.0, 0.0, 3.0, 3.0]], F32)
    expected = cropcore.roi_align(image, boxes, 2, backend="numpy")
    got = np.asarray(cropcore.roi_align(jnp.asarray(image), boxes, 2))
    assert (expected == tiny).all()
    assert (got == 0).all()


def test_jax_grad_of_a_float16_nhwc_image_is_the_float16_gradient_op():
    """float16 is computed in float32 and rounded once, forward and backward."""
    rng = np.random.default_rng(7)
    image = rng.standard_normal((2, 9, 8, 3)).astype(np.float16)
    boxes = np.array([[0, 0.5, 1.0, 6.0, 7.5], [1, 2.0, -1.0, 9.0, 5.0]], F32)
    weights = rng.standard_normal((2, 3, 2, 3)).astype(np.float16)
    kwargs = {"sampling_ratio": 2, "aligned": False, "data_format": "channels_last"}

    @jax.jit
    def loss(image, boxes):
        out = cropcore.roi_align(image, boxes, (3, 2), 0.5, **kwargs)
        assert out.dtype == jnp.float16
        return jnp.sum(out.astype(jnp.float32) * weights.astype(F32))

    got = jax.grad(loss)(jnp.asarray(image), jnp.asarray(boxes))
    # d loss / d out = float32 weights, rounded to the output's float16 by the cast's transpose
    expected = cropcore.roi_align_grad_image(
        weights, boxes, image.shape, 0.5, backend="numpy", **kwargs
    )
    assert got.dtype == jnp.float16
    assert bits_equal(np.asarray(got), expected)


def test_vmap_of_grad_gives_each_box_set_its_own_image_gradient():
    rng = np.random.default_rng(8)
    image = jnp.asarray(rng.standard_normal((1, 2, 10, 10)).astype(F32))
    xy = rng.uniform(0, 6, (3, 4, 2))
    boxes = np.concatenate([np.zeros((3, 4, 1)), xy, xy + 3], -1).astype(F32)

    def grad_of(b):
        return jax.grad(lambda x: jnp.sum(cropcore.roi_align(x, b, 2, 1.0, 2) ** 2))(image)

    batched = np.asarray(jax.vmap(grad_of)(jnp.asarray(boxes)))
    for n in range(3):
        assert bits_equal(batched[n], np.asarray(grad_of(boxes[n])))


def test_non_finite_traced_boxes_give_the_reference_kernels_result():
    """Box values nobody checked (under jit): the reference kernel's arithmetic, which makes a
    non-finite sample empty and a non-finite adaptive grid empty."""
    from cropcore_numpy.roi_align import roi_align as reference_kernel

    rng = np.random.default_rng(9)
    image = rng.standard_normal((1, 6, 7, 2)).astype(F32)  # NHWC
    boxes = np.array([[np.nan, 1, 4, 5], [1, 1, np.inf, 5], [-np.inf, 0, 3, 3], [1, 1, 4, 5]], F32)
    indices = np.zeros(4, np.int32)
    for ratio in (-1, 2):
        forward = jax.jit(
            lambda b, ratio=ratio: cropcore.roi_align(
                jnp.asarray(image),
                b,
                2,
                1.0,
                ratio,
                True,
                box_indices=indices,
                data_format="channels_last",
            )
        )
        expected = reference_kernel(image, boxes, indices, (2, 2), 1.0, ratio, True, "avg")
        assert bits_equal(np.asarray(forward(jnp.asarray(boxes))), expected), ratio
