"""Category ``unchecked-values``: what a backend gives for box values cropcore did not read.

cropcore reads box values only where they are on the host and the call is eager; traced and
device-resident boxes reach a backend unread (``call.values_checked`` is ``False``), and only a
backend that declares ``BackendInfo.unchecked_values`` receives them. Such a backend promises
docs/decisions.md's "What do unchecked bad values give?", which these cases certify:

- **non-finite boxes** (NaN, infinite, or a span that overflows float32): every sample is outside
  the image, so the crop is ``extrapolation_value`` throughout, the image gradient zero and the box
  gradient zero;
- **a box index outside ``[0, batch)``**: ``IndexError`` where the inputs are on the host (they are
  there when the kernel runs); on a device, that box's crop is all NaN, it adds nothing to the
  image gradient, and its box-gradient row is NaN, while the other boxes are computed as usual.

These cases are the one place the suite builds calls itself (``spec.*_call(..., check_values=False)``
then ``cropcore.dispatch.run``) instead of calling the public functions, since those read host
values. A backend without ``unchecked_values`` skips them. Ids: ``unchecked-values/<op>/<name>``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from cropcore import dispatch
from cropcore.errors import BackendDeclinedError
from cropcore.ops import op_for
from cropcore_conformance.cases import (
    OPS,
    Case,
    Context,
    Declined,
    FailCase,
    Outcome,
    SkipCase,
    anchor_name,
    check_result,
    sum_scale,
)
from cropcore_conformance.compare import compare_arrays
from cropcore_conformance.inputs import device_of, materialize

__all__ = ["UncheckedCase", "unchecked_cases"]

F32 = np.float32
EXTRAPOLATION = 0.5


@dataclass(eq=False)
class UncheckedCase(Case):
    """A call with bad box values that cropcore hands over unread.

    ``bad`` lists the boxes whose values are bad: for ``expect="outside"`` (non-finite boxes) the
    result is computed from the rule alone; for ``expect="bad-index"`` the good boxes' part of the
    result is the reference backend's on the good boxes alone.
    """

    kwargs: dict[str, Any] = field(default_factory=dict)
    expect: str = "outside"
    bad: tuple[int, ...] = ()

    kind: ClassVar[str] = "unchecked"

    def _run(self, ctx: Context) -> Outcome:
        info = ctx.backend.info
        if info is None or not info.unchecked_values:
            raise SkipCase(
                "the backend does not declare unchecked_values: cropcore checks box values "
                "before it sees them"
            )
        inputs = ctx.prepare(materialize(self.kwargs))
        call = op_for(OPS[self.op]).make_call(**inputs, check_values=False)
        on_host = device_of(inputs[anchor_name(self.op)]) == "cpu"
        try:
            result = dispatch.run(call, ctx.name)
        except BackendDeclinedError as exc:
            raise Declined(f"declined: {exc}", ctx.claims(self.op, inputs)) from None
        except IndexError:
            if self.expect == "bad-index" and on_host:
                return Outcome.passed()
            raise
        if self.expect == "bad-index" and on_host:
            raise FailCase(
                "returned a result for a box index outside [0, batch) on the host; the host "
                "has the indices, so the backend must raise IndexError"
            )
        actual = check_result(self.op, result, inputs)
        expected = self._expected(ctx, actual.shape)
        # The backend's declared tolerance (a GPU's atomic image gradient reorders sums); the
        # scale of a reordered sum is taken over the good boxes, the only ones that add anything.
        tolerance = ctx.tolerance_for(self.id)
        scale = None
        if tolerance.name == "reordered-sums" and self.op != "forward":
            scale = self._scale(ctx, expected.shape)
        outcome = Outcome.passed(tolerance.name)
        outcome.add(compare_arrays(actual, expected, tolerance, scale))
        return outcome

    def _good(self, kwargs: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        """The indices of the good boxes, and the arguments with only them."""
        good = [i for i in range(len(kwargs["boxes"])) if i not in self.bad]
        trimmed = {
            **kwargs,
            "boxes": kwargs["boxes"][good],
            "box_indices": kwargs["box_indices"][good],
        }
        if self.op != "forward":
            trimmed["grads"] = kwargs["grads"][good]
        return good, trimmed

    def _scale(self, ctx: Context, shape: tuple[int, ...]) -> tuple[int, Any] | None:
        good, trimmed = self._good(materialize(self.kwargs))
        if not good:
            return None
        found = sum_scale(self.op, trimmed, ctx)
        if found is None or self.op != "grad_boxes":
            return found
        terms, per_box = found
        full = np.zeros(shape, np.float64)  # the bad boxes' rows are NaN on both sides
        full[good] = per_box
        return terms, full

    def _expected(self, ctx: Context, shape: tuple[int, ...]) -> np.ndarray:
        kwargs = materialize(self.kwargs)
        if self.expect == "outside":
            fill = EXTRAPOLATION if self.op == "forward" else 0.0
            dtype = kwargs.get("dtype", "float32") if self.op == "grad_image" else "float32"
            return np.full(shape, fill, dtype)
        good, trimmed = self._good(kwargs)
        if self.op == "grad_image":  # the good boxes' contributions alone
            return ctx.reference_result(self.op, trimmed)
        expected = np.full(shape, np.nan, F32)  # the bad boxes' crops or box-gradient rows
        expected[good] = ctx.reference_result(self.op, trimmed)
        return expected


def _image(channels_first: bool) -> np.ndarray:
    image = np.arange(2 * 4 * 5 * 3, dtype=F32).reshape(2, 4, 5, 3) / 7
    return image.transpose(0, 3, 1, 2).copy() if channels_first else image


NON_FINITE = {
    "nan-y2": [0.1, 0.2, np.nan, 0.9],
    "nan-x1": [0.1, np.nan, 0.8, 0.9],
    "infinite-span": [-np.inf, 0.0, np.inf, 1.0],
    "plus-inf-y2": [0.0, 0.0, np.inf, 1.0],
}
BAD_INDICES = {"equals-batch": 2, "negative": -1, "int32-max": 2**31 - 1}


def unchecked_cases() -> list[Case]:
    cases: list[Case] = []
    for layout, channels_first in (("nhwc", False), ("nchw", True)):
        data_format = "channels_first" if channels_first else "channels_last"
        image = _image(channels_first)
        for name, box in NON_FINITE.items():
            common = {
                "boxes": np.array([box], F32),
                "box_indices": np.array([1], np.int32),
                "data_format": data_format,
            }
            for method in ("bilinear", "nearest"):
                for crop in ((3, 4), (1, 1)):
                    cases.append(
                        UncheckedCase(
                            f"unchecked-values/forward/{name}-{method}-{crop[0]}x{crop[1]}-{layout}",
                            "forward",
                            description="a non-finite box extrapolates everywhere",
                            kwargs={
                                "image": image,
                                "crop_size": crop,
                                "method": method,
                                "extrapolation_value": EXTRAPOLATION,
                                **common,
                            },
                        )
                    )
            grads = np.ones((1, 3, 3, 4) if channels_first else (1, 3, 4, 3), F32)
            cases += [
                UncheckedCase(
                    f"unchecked-values/grad_image/{name}-{layout}",
                    "grad_image",
                    description="a non-finite box adds nothing to the image gradient",
                    kwargs={"grads": grads, "image_shape": image.shape, **common},
                ),
                UncheckedCase(
                    f"unchecked-values/grad_boxes/{name}-{layout}",
                    "grad_boxes",
                    description="a non-finite box has a zero box gradient",
                    kwargs={"grads": grads, "image": image, **common},
                ),
            ]
        boxes = np.array([[0.1, 0.2, 0.8, 0.9], [0.0, 0.0, 1.0, 1.0], [0.9, 0.1, 0.2, 0.7]], F32)
        grads = np.linspace(-1, 1, 3 * 3 * 4 * 3, dtype=F32).reshape(3, 3, 4, 3)
        if channels_first:
            grads = grads.transpose(0, 3, 1, 2).copy()
        for name, bad_index in BAD_INDICES.items():
            indices = np.array([1, bad_index, 0], np.int32)
            common = {"boxes": boxes, "box_indices": indices, "data_format": data_format}
            for method in ("bilinear", "nearest"):
                cases.append(
                    UncheckedCase(
                        f"unchecked-values/forward/box-index-{name}-{method}-{layout}",
                        "forward",
                        description="a bad box index: IndexError on the host, a NaN crop on a device",
                        kwargs={"image": image, "crop_size": (3, 4), "method": method, **common},
                        expect="bad-index",
                        bad=(1,),
                    )
                )
            cases.append(
                UncheckedCase(
                    f"unchecked-values/grad_image/box-index-{name}-{layout}",
                    "grad_image",
                    description="a bad box index: IndexError on the host, no contribution on a device",
                    kwargs={"grads": grads, "image_shape": image.shape, **common},
                    expect="bad-index",
                    bad=(1,),
                )
            )
            cases.append(
                UncheckedCase(
                    f"unchecked-values/grad_boxes/box-index-{name}-{layout}",
                    "grad_boxes",
                    description="a bad box index: IndexError on the host, a NaN row on a device",
                    kwargs={"grads": grads, "image": image, **common},
                    expect="bad-index",
                    bad=(1,),
                )
            )
    return cases
