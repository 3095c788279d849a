"""The vectorised NumPy kernels equal the oracle, bit for bit.

The oracle (``cropcore_numpy.reference``) is TensorFlow's CPU loop nest in Python, to be read line
by line against ``crop_and_resize_op.cc``. Registered as the backend ``numpy-reference``, it must
pass the whole conformance suite with the vectorised kernels (``numpy``) as the reference: every
value case identical in every bit. Then, directly, oracle and kernels must give the same bits on
every case recorded from TensorFlow.

Left out of the suite run, with the reason: TensorFlow's determinism tests
(``tf-tests/*/test-reproducible-backprop-*``, from ``image_grad_d9m_test.py``) call each gradient
twice on 64 boxes of 128 x 128 samples and check that the two results are the same bits. The
oracle is deterministic by construction, and those six cases take about six minutes in Python
loops. Their values are checked here instead, oracle against kernels, on two of their boxes.
"""

from __future__ import annotations

import numpy as np
import pytest

import cropcore_conformance
from cropcore.registry import registry
from cropcore_conformance.cases import ValueCase
from cropcore_conformance.vectors import recorded_cases
from cropcore_numpy import kernels, reference

ORACLE = "numpy-reference"
SLOW = ("tf-tests/*/test-reproducible-backprop-*",)
# Skipped by the suite for reasons unrelated to the oracle: devices and libraries not here, and
# autograd, which only torch backends declare.
# Round trips need other array libraries; unchecked values never reach a NumPy backend; this
# oracle is TensorFlow's crop_and_resize, not roi_align (whose own oracle, torchvision's loops in
# cropcore_numpy.roi_align_reference, is held to the kernels by tests/test_roi_align.py).
ALLOWED_SKIPS = (
    "round-trips/",
    "unchecked-values/",
    "roi-align/",
    "behaviour/roi_align/",
    "behaviour/roi_align_grad/",
)


@pytest.fixture(scope="module")
def oracle():
    registry.register(reference, name=ORACLE)
    yield ORACLE
    registry.unregister(ORACLE)


def test_the_oracle_passes_the_whole_conformance_suite_exactly(oracle):
    report = cropcore_conformance.run(oracle, exclude=SLOW)
    failures = [f"{r.id}: {r.message}" for r in report.failures]
    assert not failures, "\n".join(failures[:20])
    assert report.exit_code == 0
    total = report.total()
    assert total.xfailed == 0
    assert total.identical == total.elements > 600_000
    assert set(total.tolerances) == {"exact"}
    skipped = [r.id for r in report.results if r.status == "skipped"]
    assert all(case.startswith(ALLOWED_SKIPS) for case in skipped), skipped


def _recorded() -> list[ValueCase]:
    """The NHWC value cases recorded from TensorFlow (their NCHW twins are the same numbers)."""
    ops = ("forward", "grad_image", "grad_boxes")
    return [
        case
        for case in recorded_cases()
        if isinstance(case, ValueCase) and case.op in ops and not case.id.endswith("-nchw")
    ]


RECORDED = _recorded()


def _call(module, op: str, kwargs: dict) -> np.ndarray:
    boxes = np.asarray(kwargs["boxes"], np.float32).reshape(-1, 4)
    box_indices = np.asarray(kwargs["box_indices"], np.int32)
    if op == "forward":
        return module.crop_and_resize(
            np.asarray(kwargs["image"]),
            boxes,
            box_indices,
            tuple(int(v) for v in kwargs["crop_size"]),
            kwargs["method"],
            float(np.float32(kwargs["extrapolation_value"])),
        )
    grads = np.asarray(kwargs["grads"], np.float32)
    if op == "grad_image":
        return module.crop_and_resize_grad_image(
            grads, boxes, box_indices, tuple(kwargs["image_shape"]), kwargs["method"],
            kwargs["dtype"],
        )  # fmt: skip
    return module.crop_and_resize_grad_boxes(grads, np.asarray(kwargs["image"]), boxes, box_indices)


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a).view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def test_every_recorded_case_is_covered():
    assert len(RECORDED) >= 330
    assert {case.op for case in RECORDED} == {"forward", "grad_image", "grad_boxes"}


@pytest.mark.parametrize("case", RECORDED, ids=[case.id for case in RECORDED])
def test_kernels_equal_the_oracle_bit_for_bit_on_recorded_cases(case):
    with np.errstate(all="ignore"):
        vectorised = _call(kernels, case.op, case.kwargs)
    oracle = _call(reference, case.op, case.kwargs)
    assert vectorised.dtype == oracle.dtype
    assert vectorised.shape == oracle.shape
    nan = np.isnan(oracle)
    assert np.array_equal(nan, np.isnan(vectorised))  # NaN payloads: TF specifies none
    assert np.array_equal(_bits(vectorised)[~nan], _bits(oracle)[~nan])


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_kernels_equal_the_oracle_on_two_boxes_of_tensorflows_determinism_test(dtype):
    # image_grad_d9m_test.py's inputs (conformance tf_unit_tests._d9m), boxes 0 and 1 only.
    rng = np.random.RandomState(456)
    image = rng.uniform(-1, 1, size=(16, 64, 64, 1))
    boxes = rng.uniform(0, 1.01, size=(64, 4)).astype(np.float32)[:2]
    box_indices = rng.randint(0, 16, size=64).astype(np.int32)[:2]
    grads = rng.uniform(-0.001, 0.001, size=(64, 128, 128, 1)).astype(np.float32)[:2]
    for op, kwargs in (
        ("grad_image", {"grads": grads, "image_shape": image.shape, "dtype": dtype}),
        ("grad_boxes", {"grads": grads, "image": image.astype(dtype)}),
    ):
        kwargs |= {"boxes": boxes, "box_indices": box_indices, "method": "bilinear"}
        vectorised, oracle = _call(kernels, op, kwargs), _call(reference, op, kwargs)
        assert np.array_equal(_bits(vectorised), _bits(oracle)), op


# --------------------------------------------------------------------------------------------------
# The oracle's arithmetic: x86's flush-to-zero, tininess after rounding (observed in TF 2.21)

FLT_MIN = 2.0**-126


def test_a_product_just_below_the_smallest_normal_is_tiny():
    assert reference.mul(FLT_MIN, 1 - 2.0**-24) == 0.0
    assert str(reference.mul(-FLT_MIN, 1 - 2.0**-24)) == "-0.0"


def test_a_product_that_rounds_up_to_the_smallest_normal_is_kept():
    assert reference.mul(FLT_MIN * (1 + 2.0**-23), 1 - 2.0**-23) == FLT_MIN


def test_a_double_converts_to_zero_when_tiny_after_rounding():
    assert reference.to_float(FLT_MIN * (1 - 2.0**-24)) == 0.0
    assert reference.to_float(FLT_MIN * (1 - 2.0**-26)) == FLT_MIN


def test_a_subnormal_operand_counts_as_a_zero_of_its_sign():
    assert str(reference.daz(-1e-40)) == "-0.0"
    assert reference.add(reference.daz(1e-40), 0.0) == 0.0


def test_a_quotient_is_rounded_once():
    assert reference.div(1.0, 3.0) == float(np.float32(1) / np.float32(3))
    assert reference.div(FLT_MIN * (1 - 2.0**-24) * 3, 3.0) == 0.0
