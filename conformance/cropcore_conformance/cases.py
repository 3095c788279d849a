"""The case model: what one conformance case is, and how it runs against a backend.

Requirements:

- **A case id is public API.** ``<category>/<op>/<name>``, e.g.
  ``edge-cases/forward/flipped-vertical-nearest``: backends name cases in their expected-failure
  and tolerance declarations, and third parties select them in CI. Ids never change meaning; a
  case whose meaning changes gets a new id.
- **Every case goes through cropcore's public functions** with ``backend=`` naming the backend
  under test, exactly as a user calls it; so the core's validation, conversion and result checks
  are part of what is certified, and a backend that breaks them is caught.
- **The expected value is TensorFlow's where it was recorded** (categories ``tf-vectors`` and
  ``tf-tests``) **and the reference backend's otherwise**; the reference (``numpy``) is itself
  held to TensorFlow, bit for bit, by the ``tf-vectors`` category and by cropcore's own tests.
- A case never fails for what the backend declares it does not do: an op it does not implement,
  or a call it declines (``BackendDeclinedError``), is *skipped*, with the reason.
"""

from __future__ import annotations

import builtins
import fnmatch
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

import cropcore
from cropcore.arrays import dtype_name
from cropcore.errors import BackendDeclinedError
from cropcore.ops import op_for
from cropcore.registry import Backend
from cropcore_conformance.compare import TOLERANCES, Comparison, Tolerance, compare_arrays
from cropcore_conformance.inputs import (
    changed_inputs,
    device_of,
    library_available,
    library_of,
    materialize,
    snapshot,
    to_library,
    to_numpy,
)

__all__ = [
    "CATEGORIES",
    "OPS",
    "Case",
    "Context",
    "Declined",
    "ErrorCase",
    "FunctionCase",
    "Outcome",
    "RoundTripCase",
    "ValueCase",
]

#: The categories of the suite, in report order, with what each one holds.
CATEGORIES: dict[str, str] = {
    "tf-vectors": "vectors recorded from TensorFlow (crop_and_resize and its gradients) and Keras 3 "
    "(Cropping2D)",
    "tf-tests": "TensorFlow's and Keras's own unit tests for these ops, carried over as data",
    "edge-cases": "hand-written edge cases: geometry, rounding ties, extrapolation, every dtype, "
    "both data formats, memory layouts",
    "properties": "property-based differential tests against the reference (hypothesis)",
    "gradients": "gradient cases, including samples outside the image",
    "errors": "bad inputs refused with the reference's exception type; edge inputs accepted",
    "round-trips": "results come back in the image's array library and on its device",
    "unchecked-values": "box values cropcore did not read (traced or on a device): non-finite "
    "boxes extrapolate, a bad box index is refused on the host and NaN on a device",
    "behaviour": "across calls: concurrent calls give the single-thread results, results are "
    "not recycled or aliased, inputs (read-only too) are untouched, repeated calls repeat",
    "sizes": "sizes and values where fast kernels change strategy: box counts across 128, 256 "
    "and 1024, depths off multiples of 4, 8, 16, crops beyond 64 and 256, images beyond 32767 "
    "and 65535 pixels, int64 beyond 2**53, nearest-rounding traps in every op",
    "roi-align": "roi_align against vectors recorded from ONNX Runtime's RoiAlign, and its image "
    "gradient against the reference",
}

#: Case op names, and the cropcore function each one calls.
OPS: dict[str, str] = {
    "forward": "crop_and_resize",
    "grad_image": "crop_and_resize_grad_image",
    "grad_boxes": "crop_and_resize_grad_boxes",
    "crop2d": "crop2d",
    "roi_align": "roi_align",
    "roi_align_grad": "roi_align_grad_image",
}


def anchor_name(op: str) -> str:
    """The argument of case op ``op`` whose library and device the result must follow."""
    return op_for(OPS[op]).call_type.anchor_name


def call_op(op: str, kwargs: dict[str, Any], backend: str) -> Any:
    """Call cropcore's public function for ``op`` with ``kwargs`` on ``backend``."""
    return getattr(cropcore, OPS[op])(**kwargs, backend=backend)


@dataclass
class Outcome:
    """What running one case produced.

    ``status`` is ``"passed"``, ``"failed"`` or ``"skipped"`` (the runner turns a declared failure
    into ``"xfailed"``). The statistics cover the numeric comparisons the case made.
    """

    status: str
    message: str = ""
    elements: int = 0
    identical: int = 0
    max_abs: float = 0.0
    max_ulp: int = 0
    tolerance: str = "exact"
    declined: int = 0  # calls the backend declined (a property case makes many)
    claimed: int = 0  # of those, calls within what its BackendInfo claims to support

    @classmethod
    def passed(cls, tolerance: str = "exact") -> Outcome:
        return cls("passed", tolerance=tolerance)

    @classmethod
    def failed(cls, message: str, tolerance: str = "exact") -> Outcome:
        return cls("failed", message, tolerance=tolerance)

    @classmethod
    def skipped(cls, reason: str) -> Outcome:
        return cls("skipped", reason)

    def add(self, comparison: Comparison) -> None:
        """Fold one array comparison into this outcome."""
        self.elements += comparison.elements
        self.identical += comparison.identical
        self.max_abs = max(self.max_abs, comparison.max_abs)
        self.max_ulp = max(self.max_ulp, comparison.max_ulp)
        if not comparison.passed:
            self.status = "failed"
            self.message = self.message or comparison.message


class SkipCase(Exception):
    """Raised inside a case to skip it (the message is the reason)."""


class FailCase(Exception):
    """Raised inside a case to fail it (the message says why)."""


class Declined(SkipCase):
    """The backend declined the call (``BackendDeclinedError``); ``claimed``: the call is within
    the ops, image dtypes, methods and devices its ``BackendInfo`` claims to support."""

    def __init__(self, message: str, claimed: bool) -> None:
        super().__init__(message)
        self.claimed = claimed


def _skipped(exc: SkipCase) -> Outcome:
    outcome = Outcome.skipped(str(exc))
    if isinstance(exc, Declined):
        outcome.declined, outcome.claimed = 1, int(exc.claimed)
    return outcome


@dataclass
class Context:
    """One run of the suite: the backend under test and the settings that apply to it.

    Attributes:
        backend: the backend under test (from :mod:`cropcore.registry`).
        reference: the backend that computes expected values where none were recorded.
        tolerances: the backend's declared ``{case id pattern: tolerance class}``.
        seed: hypothesis's seed for the property cases.
        max_examples: examples per property case.
        device: if set, every input is moved to the backend's array library on this device
            (``"cuda"``, ``"cuda:1"``) before the call, to certify a device path.
        shrink: whether hypothesis shrinks a failing example to a minimal one.
    """

    backend: Backend
    reference: str = "numpy"
    tolerances: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    max_examples: int = 40
    device: str | None = None
    shrink: bool = True

    @property
    def name(self) -> str:
        return self.backend.name

    def implements(self, op: str) -> bool:
        # Backend.ops: the ops with a hook, and those the core runs itself (crop2d's slice).
        return OPS[op] in self.backend.ops

    def tolerance_for(self, case_id: str) -> Tolerance:
        for pattern, tolerance in self.tolerances.items():
            if fnmatch.fnmatchcase(case_id, pattern):
                return TOLERANCES[tolerance]
        return TOLERANCES["exact"]

    def prepare(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Inputs for the backend under test: NumPy, or moved to ``device`` if one was given."""
        if self.device is None:
            return kwargs
        library = self.backend.info.array_library if self.backend.info else "numpy"
        return {k: to_library(v, library, self.device) for k, v in kwargs.items()}

    def run_backend(self, op: str, kwargs: dict[str, Any]) -> Any:
        """The backend's result; raises :class:`Declined` if it declines the call."""
        try:
            return call_op(op, kwargs, self.name)
        except BackendDeclinedError as exc:
            raise Declined(f"declined: {exc}", self.claims(op, kwargs)) from None

    def claims(self, op: str, kwargs: dict[str, Any]) -> bool:
        """Whether the backend's ``BackendInfo`` claims to support this call: the op, the image's
        dtype, the method and the inputs' device type (what its ``declines`` hook must not
        refuse; ``--strict`` fails a backend that does)."""
        info = self.backend.info
        if info is None or not self.implements(op):
            return False
        image = kwargs.get("image")
        if image is not None and dtype_name(image) not in info.dtypes:
            return False
        if op != "crop2d" and kwargs.get("method", "bilinear") not in info.methods:
            return False
        anchor = kwargs.get(anchor_name(op))
        device = device_of(anchor).partition(":")[0] if anchor is not None else "cpu"
        return device in info.devices

    def reference_result(self, op: str, kwargs: dict[str, Any]) -> np.ndarray:
        """The reference backend's result, as a NumPy array (raises what the reference raises)."""
        return to_numpy(call_op(op, materialize(kwargs), self.reference))


_NOT_RUN = object()


@dataclass(eq=False)
class Case:
    """One conformance case. Subclasses say what running it means.

    Attributes:
        id: ``<category>/<op>/<name>``, stable (public API).
        op: ``"forward"``, ``"grad_image"``, ``"grad_boxes"`` or ``"crop2d"``.
        source: where the expected value comes from: ``"tensorflow"``, ``"keras"`` (recorded),
            ``"tensorflow-test"``, ``"keras-test"`` (their unit tests) or ``"reference"``.
        description: one line for humans (shown with ``--list`` and on failure).
    """

    id: str
    op: str
    source: str = "reference"
    description: str = ""

    kind: ClassVar[str] = "case"

    @property
    def category(self) -> str:
        return self.id.partition("/")[0]

    @property
    def name(self) -> str:
        return self.id.split("/", 2)[-1]

    def run(self, ctx: Context) -> Outcome:
        """Run against ``ctx.backend``; never raises for a backend's misbehaviour."""
        if not ctx.implements(self.op):
            return Outcome.skipped(f"backend does not implement {OPS[self.op]}")
        try:
            return self._run(ctx)
        except SkipCase as exc:
            return _skipped(exc)
        except FailCase as exc:
            return Outcome.failed(str(exc))
        except Exception as exc:  # whatever a misbehaving backend makes happen, the run goes on
            return Outcome.failed(f"raised {_describe_exception(exc)}")

    def _run(self, ctx: Context) -> Outcome:
        raise NotImplementedError


def _describe_exception(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


def check_result(
    op: str, result: Any, inputs: dict[str, Any], what: str = "the result"
) -> np.ndarray:
    """Check that ``result`` is an array of the anchor input's library and device; return it in NumPy."""
    anchor_arg = anchor_name(op)
    anchor = inputs[anchor_arg]
    if not (hasattr(result, "shape") and hasattr(result, "dtype")):
        raise FailCase(f"{what} is a {type(result).__name__}, not an array")
    want, got = library_of(anchor), library_of(result)
    if got != want:
        raise FailCase(f"{what} is a {got} array; the {anchor_arg} was a {want} array")
    if want == "numpy" and not isinstance(result, np.ndarray):
        raise FailCase(f"{what} is a {type(result).__name__}, not a numpy.ndarray")
    if device_of(result) != device_of(anchor):
        raise FailCase(
            f"{what} is on {device_of(result)}; the {anchor_arg} was on {device_of(anchor)}"
        )
    return to_numpy(result)


@dataclass(eq=False)
class ValueCase(Case):
    """Call the op on fixed inputs and compare the result with the expected array.

    ``expected`` is a recorded array, or ``None`` for the reference backend's result.
    ``expected_shape`` alone (with ``expected=None`` and ``shape_only=True``) checks the shape.
    ``compare_dtype``: the dtype the result must have when it differs from the recorded one's
    (Keras autocasts float64 to float32, cropcore keeps float64); the result is then cast to the
    recorded dtype for the comparison.
    """

    kwargs: dict[str, Any] = field(default_factory=dict)
    expected: np.ndarray | None = None
    shape_only: bool = False
    expected_shape: tuple[int, ...] | None = None
    compare_dtype: str | None = None

    kind: ClassVar[str] = "value"

    def __post_init__(self) -> None:
        self._expected_lock = threading.Lock()
        self._reference: dict[str, Any] = {}

    def expected_for(self, ctx: Context) -> np.ndarray:
        if self.expected is not None:
            return self.expected
        with self._expected_lock:
            cached = self._reference.get(ctx.reference, _NOT_RUN)
            if cached is _NOT_RUN:
                try:
                    cached = ctx.reference_result(self.op, self.kwargs)
                except Exception as exc:  # the case itself is wrong: say so loudly
                    cached = FailCase(
                        f"the reference backend {ctx.reference!r} raised "
                        f"{_describe_exception(exc)} (a bug in the suite or the reference)"
                    )
                self._reference[ctx.reference] = cached
        if isinstance(cached, FailCase):
            raise cached
        return cached

    def _run(self, ctx: Context) -> Outcome:
        tolerance = ctx.tolerance_for(self.id)
        expected = None if self.shape_only else self.expected_for(ctx)
        inputs = materialize(self.kwargs)
        before = snapshot(inputs)
        inputs = ctx.prepare(inputs)
        try:
            result = ctx.run_backend(self.op, inputs)
        except SkipCase:
            raise
        except Exception as exc:
            return Outcome.failed(f"raised {_describe_exception(exc)}", tolerance.name)
        actual = check_result(self.op, result, inputs)
        changed = changed_inputs(before, inputs) if ctx.device is None else []
        if changed:
            return Outcome.failed(
                f"modified its input(s) {', '.join(changed)} in place", tolerance.name
            )
        if self.shape_only:
            shape = tuple(actual.shape)
            if shape != tuple(self.expected_shape or ()):
                return Outcome.failed(f"shape {shape}, expected {self.expected_shape}")
            return Outcome.passed()
        assert expected is not None
        if self.compare_dtype is not None:
            if actual.dtype != np.dtype(self.compare_dtype):
                return Outcome.failed(f"dtype {actual.dtype}, expected {self.compare_dtype}")
            actual = actual.astype(expected.dtype)
        scale = sum_scale(self.op, self.kwargs, ctx) if tolerance.name == "reordered-sums" else None
        outcome = Outcome.passed(tolerance.name)
        outcome.add(compare_arrays(actual, expected, tolerance, scale))
        return outcome


def sum_scale(op: str, kwargs: dict[str, Any], ctx: Context) -> tuple[int, Any] | None:
    """For tolerance ``reordered-sums``: (number of terms, sum of |terms|) per result element."""
    if op == "grad_image":
        grads = np.abs(np.asarray(materialize(kwargs)["grads"], np.float64))
        args = {**kwargs, "grads": grads, "dtype": "float64"}
        total = ctx.reference_result(op, args)  # bilinear weights are >= 0: sum of |contributions|
        data_format = kwargs.get("data_format", "channels_last")
        n = int(np.prod(grads.shape[1:3] if data_format != "channels_first" else grads.shape[2:]))
        return 4 * max(1, grads.shape[0]) * max(1, n), total
    if op == "grad_boxes":
        inputs = materialize(kwargs)
        grads = np.abs(np.asarray(inputs["grads"], np.float32).astype(np.float64))
        with np.errstate(over="ignore"):  # float64 pixels beyond float32 become inf, as in the op
            image = np.asarray(inputs["image"]).astype(np.float32).astype(np.float64)
        finite = np.abs(image[np.isfinite(image)])
        largest = float(finite.max()) if finite.size else 0.0
        extent = max(
            image.shape[1:3] if kwargs.get("data_format") != "channels_first" else image.shape[2:]
        )
        per_box = grads.sum(axis=(1, 2, 3)) * 2 * largest * max(extent - 1, 1)
        n = int(np.prod(grads.shape[1:]))
        return max(n, 1), np.repeat(per_box[:, None], 4, axis=1)
    return None


@dataclass(eq=False)
class ErrorCase(Case):
    """A bad input: the backend must refuse it with the reference's exception type.

    ``expected_error`` names the type (``"ValueError"``); ``None`` means "what the reference
    raises", and then the backend must raise exactly that type. A named built-in type (the
    expectation of a TensorFlow or Keras unit test) accepts its subclasses too, as
    ``assertRaises`` does. The inputs are tried as NumPy arrays and, if the backend computes in another array
    library that is available here, as arrays of that library too.
    """

    kwargs: dict[str, Any] = field(default_factory=dict)
    expected_error: str | None = None

    kind: ClassVar[str] = "error"

    def _reference_error(self, ctx: Context) -> str:
        if self.expected_error is not None:
            return self.expected_error
        try:
            ctx.reference_result(self.op, self.kwargs)
        except Exception as exc:
            return type(exc).__name__
        raise FailCase(
            f"the reference backend {ctx.reference!r} accepts this input (a bug in the suite)"
        )

    def _run(self, ctx: Context) -> Outcome:
        expected = self._reference_error(ctx)
        libraries = ["numpy"]
        library = ctx.backend.info.array_library if ctx.backend.info else "numpy"
        if library != "numpy" and library_available(library) is None:
            libraries.append(library)
        for lib in libraries:
            try:
                inputs = {k: to_library(v, lib) for k, v in materialize(self.kwargs).items()}
            except Exception:  # the bad input has no equivalent in that library
                continue
            try:
                result = ctx.run_backend(self.op, inputs)
            except SkipCase:
                raise
            except Exception as exc:
                if not _raised(exc, expected, exact=self.expected_error is None):
                    return Outcome.failed(
                        f"with {lib} inputs: raised {_describe_exception(exc)}; the reference "
                        f"raises {expected}"
                    )
                continue
            shape = getattr(result, "shape", None)
            return Outcome.failed(
                f"with {lib} inputs: returned a result (shape {shape}) instead of raising "
                f"{expected}"
            )
        return Outcome.passed()


def _raised(exc: BaseException, expected: str, exact: bool) -> bool:
    """Whether ``exc`` is what ``expected`` names (``"A|B"``: either)."""
    if exact:
        return type(exc).__name__ == expected
    for name in expected.split("|"):
        cls = getattr(builtins, name, None)
        if isinstance(cls, type) and issubclass(cls, BaseException):
            if isinstance(exc, cls):
                return True
        elif any(t.__name__ == name for t in type(exc).__mro__):
            return True
    return False


@dataclass(eq=False)
class RoundTripCase(Case):
    """Inputs of one array library and device in, the result in the same library and device out.

    The values are compared with the reference's (computed on NumPy inputs). ``arrays`` names the
    inputs moved to ``library``/``device``; the others stay NumPy.
    """

    kwargs: dict[str, Any] = field(default_factory=dict)
    library: str = "numpy"
    device: str = "cpu"
    arrays: tuple[str, ...] | None = None

    kind: ClassVar[str] = "round-trip"

    def __post_init__(self) -> None:
        self._value = ValueCase(self.id, self.op, kwargs=self.kwargs)

    def _run(self, ctx: Context) -> Outcome:
        why = library_available(self.library, self.device)
        if why:
            raise SkipCase(why)
        expected = self._value.expected_for(ctx)
        inputs = materialize(self.kwargs)
        moved = self.arrays if self.arrays is not None else tuple(inputs)
        inputs = {
            k: to_library(v, self.library, self.device) if k in moved else v
            for k, v in inputs.items()
        }
        try:
            result = ctx.run_backend(self.op, inputs)
        except SkipCase:
            raise
        except Exception as exc:
            return Outcome.failed(f"raised {_describe_exception(exc)}")
        actual = check_result(self.op, result, inputs)
        tolerance = ctx.tolerance_for(self.id)
        scale = sum_scale(self.op, self.kwargs, ctx) if tolerance.name == "reordered-sums" else None
        outcome = Outcome.passed(tolerance.name)
        outcome.add(compare_arrays(actual, expected, tolerance, scale))
        return outcome


@dataclass(eq=False)
class FunctionCase(Case):
    """A case whose check is a function of the context (Jacobian checks, reproducibility, ...).

    ``check(ctx)`` returns an :class:`Outcome` or raises :class:`SkipCase` / :class:`FailCase`;
    any other exception is a failure of the backend.
    """

    check: Callable[[Context], Outcome] | None = None
    ops: tuple[str, ...] = ()

    kind: ClassVar[str] = "function"

    def run(self, ctx: Context) -> Outcome:
        for op in self.ops or (self.op,):
            if not ctx.implements(op):
                return Outcome.skipped(f"backend does not implement {OPS[op]}")
        try:
            assert self.check is not None
            return self.check(ctx)
        except SkipCase as exc:
            return _skipped(exc)
        except FailCase as exc:
            return Outcome.failed(str(exc))
        except Exception as exc:
            return Outcome.failed(f"raised {_describe_exception(exc)}")
