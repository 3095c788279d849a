"""Every CPU path flushes a result that x86 finds tiny after rounding, as TensorFlow does.

TF's CPU kernels run under flush-to-zero, and x86 decides that a result underflows after rounding
it to 24 bits with an unbounded exponent. So an exact product 2**-126 * (1 - 2**-24) is 0 under
TF, though rounding it to the subnormal grid (NumPy's and torch's gradual underflow) gives
2**-126, a normal number. Values observed in TF 2.21 (issue 13). Each path runs the same inputs:
the NumPy kernels, the oracle, the numba kernels, the torch backend's compiled loops and its
pure-torch kernels (``CROPCORE_TORCH_NATIVE=0``).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import cropcore
from cropcore.registry import registry
from cropcore_numpy import reference

FLT_MIN = np.float32(2.0**-126)
JUST_BELOW_ONE = np.float32(1 - 2.0**-24)
CENTRE = [JUST_BELOW_ONE, 0, JUST_BELOW_ONE, 0]  # crop 1 on 2 rows: in_y = 1 - 2**-24

PATHS = [
    pytest.param(("numpy", None), id="numpy"),
    pytest.param(("numpy-reference", None), id="oracle"),
    pytest.param(
        ("numba", None),
        id="numba",
        marks=pytest.mark.skipif(not importlib.util.find_spec("numba"), reason="no numba"),
    ),
    pytest.param(
        ("torch", "1"),
        id="torch-compiled",
        marks=pytest.mark.skipif(not importlib.util.find_spec("torch"), reason="no torch"),
    ),
    pytest.param(
        ("torch", "0"),
        id="torch-pure",
        marks=pytest.mark.skipif(not importlib.util.find_spec("torch"), reason="no torch"),
    ),
]


@pytest.fixture(params=PATHS)
def backend(request, cropcore_env):
    name, native = request.param
    if native is not None:
        cropcore_env.set("CROPCORE_TORCH_NATIVE", native)
        if native == "1":
            from cropcore_torch import _native

            if not _native.available():
                pytest.skip(f"no compiled CPU kernels here: {_native.status()}")
    if name == "numpy-reference":
        registry.register(reference, name=name)
        yield name
        registry.unregister(name)
    else:
        yield name


def _bits(a) -> list[int]:
    a = np.asarray(a)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize]).ravel().tolist()


def _crop(backend, image, boxes, crop_size, method="bilinear"):
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    crops = cropcore.crop_and_resize(
        image, boxes, np.zeros(len(boxes), np.int32), crop_size, method, backend=backend
    )
    return np.asarray(crops)


def test_a_product_just_below_the_smallest_normal_is_zero(backend):
    image = np.array([0, FLT_MIN], np.float32).reshape(1, 2, 1, 1)
    assert _bits(_crop(backend, image, CENTRE, (1, 1))) == _bits(np.float32([0]))


def test_a_product_that_rounds_up_to_the_smallest_normal_is_kept(backend):
    y = np.float32(1 - 2.0**-23)
    image = np.array([0, FLT_MIN * np.float32(1 + 2.0**-23)], np.float32).reshape(1, 2, 1, 1)
    assert _bits(_crop(backend, image, [y, 0, y, 0], (1, 1))) == _bits(np.float32([FLT_MIN]))


def test_a_gradient_just_below_the_smallest_normal_is_zero(backend):
    grads = cropcore.crop_and_resize_grad_image(
        np.full((1, 1, 1, 1), FLT_MIN), np.float32([CENTRE]), np.int32([0]), (1, 2, 1, 1),
        backend=backend,
    )  # fmt: skip
    assert _bits(np.asarray(grads)) == _bits(np.float32([0, 0]))


@pytest.mark.parametrize(("box", "crop_size"), [((0, 0, 1, 0), (3, 1)), ((1, 0, 0, 0), (1, 1))])
def test_a_sample_coordinate_just_below_the_smallest_normal_is_zero(backend, box, crop_size):
    # height_scale = span / 2 (crop 3) and the centre 0.5 * span (crop 1) are tiny: all samples
    # are at row 0, 0 (observed in TF 2.21); a coordinate of 2**-126 would give 2**-26.
    span = np.float32(2.0**-125 * (1 - 2.0**-24))
    image = np.array([0, 2.0**100], np.float32).reshape(1, 2, 1, 1)
    crops = _crop(backend, image, [v * span for v in box], crop_size)
    assert _bits(crops) == _bits(np.zeros(crop_size, np.float32))


@pytest.mark.parametrize("method", ["nearest", "bilinear"])
def test_a_float64_pixel_tiny_in_float32_converts_to_zero(backend, method):
    # static_cast<float>(double): 2**-126 * (1 - 2**-24) -> 0; 2**-126 * (1 - 2**-26) -> 2**-126.
    image = np.array([2.0**-126 * (1 - 2.0**-24), 2.0**-126 * (1 - 2.0**-26)]).reshape(1, 2, 1, 1)
    crops = _crop(backend, image, [0, 0, 1, 0], (2, 1), method)
    assert _bits(crops) == _bits(np.float32([0, FLT_MIN]))
