"""Category ``properties``: differential property tests against the reference, with hypothesis.

Each case draws random valid calls (every dtype and data format, boxes anywhere from far outside
to on the pixel grid and on exact rounding ties, crop sizes from 1, empty box lists, depth 0,
NaN and infinite extrapolation values and pixels) and requires the backend's result to equal the
reference's under the case's tolerance, or the backend to raise what the reference raises.

Reproducible: hypothesis runs with a fixed seed (``--seed``, reported), no example database, no
deadline, and without the numeric literals it otherwise harvests from the local modules a process
has imported, so the same seed and ``max_examples`` give the same examples in every process
(:func:`examples_digest`); ``max_examples`` bounds the work. A failure reports hypothesis's (shrunk) falsifying
example. hypothesis is imported only when a property case runs; without it the cases are skipped.
Ids: ``properties/<op>/<method or any>``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from cropcore.spec import IMAGE_DTYPES
from cropcore_conformance.cases import (
    Case,
    Context,
    Declined,
    FailCase,
    FunctionCase,
    Outcome,
    SkipCase,
    _describe_exception,
    check_result,
    sum_scale,
)
from cropcore_conformance.compare import compare_arrays
from cropcore_conformance.inputs import changed_inputs, materialize, snapshot

__all__ = ["PROPERTIES", "examples_digest", "property_cases"]

C = "properties"
F32 = np.float32


class _Mismatch(AssertionError):
    """The backend disagreed with the reference on one example."""


def _strategies() -> Any:
    """The hypothesis strategies, built on first use (hypothesis is imported here only)."""
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    def pixels(dtype: str, shape: tuple[int, ...]) -> Any:
        dt = np.dtype(dtype)
        if dt.kind == "f":
            width = dt.itemsize * 8
            elements = st.one_of(
                st.floats(-1e4, 1e4, width=width),
                st.floats(width=width),  # anything, NaN and infinities included
            )
            return hnp.arrays(dt, shape, elements=elements)
        return hnp.arrays(dt, shape, elements=hnp.from_dtype(dt))

    def coordinate(size: int) -> Any:
        span = max(size - 1, 1)
        return st.one_of(
            st.floats(-0.75, 1.75, width=32),
            st.integers(0, span).map(lambda k: k / span),  # on the pixel grid: floor == ceil
            st.integers(-2, 2 * span + 2).map(lambda k: (k + 0.5) / span),  # nearest's ties
            st.sampled_from(
                [
                    0.0,
                    -0.0,
                    1.0,
                    0.5,
                    float(np.nextafter(F32(1), F32(2))),
                    float(np.nextafter(F32(0), F32(-1))),
                ]
            ),
            st.floats(-1e6, 1e6, width=32),
        )

    @st.composite
    def boxes(draw: Any, num_boxes: int, height: int, width: int) -> np.ndarray:
        rows = [
            [
                draw(coordinate(height)),
                draw(coordinate(width)),
                draw(coordinate(height)),
                draw(coordinate(width)),
            ]
            for _ in range(num_boxes)
        ]
        return np.asarray(rows, F32).reshape(num_boxes, 4)

    @st.composite
    def image_and_boxes(draw: Any, dtypes: tuple[str, ...] = IMAGE_DTYPES) -> dict[str, Any]:
        dtype = draw(st.sampled_from(dtypes))
        batch, height, width = (
            draw(st.integers(1, 3)),
            draw(st.integers(1, 8)),
            draw(st.integers(1, 8)),
        )
        depth = draw(st.integers(0, 3))
        num_boxes = draw(st.integers(0, 4))
        return {
            "image": draw(pixels(dtype, (batch, height, width, depth))),
            "boxes": draw(boxes(num_boxes, height, width)),
            "box_indices": np.asarray(
                [draw(st.integers(0, batch - 1)) for _ in range(num_boxes)], np.int32
            ),
            "crop_size": (draw(st.integers(1, 6)), draw(st.integers(1, 6))),
            "data_format": draw(st.sampled_from(["channels_last", "channels_first"])),
        }

    def forward(method: str) -> Any:
        @st.composite
        def draw_forward(draw: Any) -> dict[str, Any]:
            kwargs = draw(image_and_boxes())
            kwargs["method"] = method
            kwargs["extrapolation_value"] = draw(
                st.one_of(st.just(0.0), st.floats(-10, 10, width=32), st.floats(width=32))
            )
            return _layout(kwargs)

        return draw_forward()

    def grad_image(method: str) -> Any:
        @st.composite
        def draw_grad_image(draw: Any) -> dict[str, Any]:
            base = draw(image_and_boxes(("float32",)))
            batch, height, width, depth = base.pop("image").shape
            crop_height, crop_width = base.pop("crop_size")
            grads = draw(
                hnp.arrays(
                    F32,
                    (len(base["boxes"]), crop_height, crop_width, depth),
                    elements=st.floats(-100, 100, width=32),
                )
            )
            base.update(
                grads=grads,
                image_shape=(batch, height, width, depth),
                method=method,
                dtype=draw(st.sampled_from(["float16", "float32", "float64"])),
            )
            return _layout(base)

        return draw_grad_image()

    @st.composite
    def grad_boxes(draw: Any) -> dict[str, Any]:
        base = draw(image_and_boxes())
        _, _, _, depth = base["image"].shape
        crop_height, crop_width = base.pop("crop_size")
        base["grads"] = draw(
            hnp.arrays(
                F32,
                (len(base["boxes"]), crop_height, crop_width, depth),
                elements=st.floats(-100, 100, width=32),
            )
        )
        return _layout(base)

    @st.composite
    def crop2d(draw: Any) -> dict[str, Any]:
        dtype = draw(st.sampled_from((*IMAGE_DTYPES, "bool")))
        shape = (
            draw(st.integers(0, 2)),
            draw(st.integers(1, 7)),
            draw(st.integers(1, 7)),
            draw(st.integers(0, 3)),
        )
        x = draw(pixels(dtype, shape)) if dtype != "bool" else draw(hnp.arrays(bool, shape))
        top = draw(st.integers(0, shape[1] - 1))
        bottom = draw(st.integers(0, shape[1] - 1 - top))
        left = draw(st.integers(0, shape[2] - 1))
        right = draw(st.integers(0, shape[2] - 1 - left))
        form = draw(st.sampled_from(["pairs", "symmetric", "int"]))
        if form == "symmetric":
            cropping: Any = (min(top, bottom), min(left, right))
        elif form == "int":
            cropping = min(top, bottom, left, right)
        else:
            cropping = ((top, bottom), (left, right))
        data_format = draw(st.sampled_from(["channels_last", "channels_first"]))
        if data_format == "channels_first":
            x = np.ascontiguousarray(np.moveaxis(x, 3, 1))
        return {"x": x, "cropping": cropping, "data_format": data_format}

    return {
        "forward/bilinear": forward("bilinear"),
        "forward/nearest": forward("nearest"),
        "grad_image/bilinear": grad_image("bilinear"),
        "grad_image/nearest": grad_image("nearest"),
        "grad_boxes/bilinear": grad_boxes(),
        "crop2d/any": crop2d(),
    }


def _layout(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Move NHWC arrays to NCHW when the drawn data format says so."""
    if kwargs.get("data_format") == "channels_first":
        for key in ("image", "grads"):
            if key in kwargs:
                kwargs[key] = np.ascontiguousarray(np.moveaxis(kwargs[key], 3, 1))
        if "image_shape" in kwargs:
            batch, height, width, depth = kwargs["image_shape"]
            kwargs["image_shape"] = (batch, depth, height, width)
    return kwargs


def _summary(kwargs: dict[str, Any]) -> str:
    parts = []
    for key, value in kwargs.items():
        if isinstance(value, np.ndarray):
            text = f"{value.dtype}{list(value.shape)}"
            if key in ("boxes", "box_indices") and value.size <= 16:
                text += f"={value.tolist()}"
            parts.append(f"{key}={text}")
        else:
            parts.append(f"{key}={value!r}")
    return ", ".join(parts)


_constants_lock = threading.Lock()
_constants_users = 0  # property runs in progress (threads), and hypothesis's harvester they hid
_harvester: Any = None


@contextlib.contextmanager
def _without_local_constants() -> Iterator[None]:
    """Hypothesis (6.x) mixes numeric literals harvested from the *local* modules imported so far
    into its draws, so the examples of a seed would depend on what the process imported (a small
    module changed 253 compared elements to 1,093). Inside this block it draws from its global
    constants only: the examples are a function of the seed, the strategy and ``max_examples``.
    """
    global _constants_users, _harvester
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:  # another hypothesis layout: nothing harvested that we know how to stop
        yield
        return
    if not hasattr(providers, "_get_local_constants") or not hasattr(providers, "CONSTANTS_CACHE"):
        yield
        return
    with _constants_lock:
        _constants_users += 1
        if _constants_users == 1:
            _harvester = providers._get_local_constants
            providers._get_local_constants = Constants
            providers.CONSTANTS_CACHE.cache.clear()  # it caches the harvested ones by choice type
    try:
        yield
    finally:
        with _constants_lock:
            _constants_users -= 1
            if _constants_users == 0:
                providers._get_local_constants = _harvester
                providers.CONSTANTS_CACHE.cache.clear()


def _examples(
    key: str, test: Callable[[dict[str, Any]], None], seed: int, max_examples: int, shrink: bool
) -> None:
    """Run ``test`` on the examples of property ``key`` for ``seed``: always the same ones."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    run = hypothesis_seed(seed)(
        settings(
            max_examples=max_examples,
            database=None,
            deadline=None,
            phases=phases,
            suppress_health_check=list(HealthCheck),
            report_multiple_bugs=False,
            print_blob=False,
            derandomize=False,
        )(given(_strategies()[key])(test))
    )
    with _without_local_constants():
        run()


def examples_digest(key: str, seed: int, max_examples: int) -> str:
    """A SHA-256 of the inputs property ``key`` (``"forward/bilinear"``, ...) draws for ``seed``:
    equal in every process, whatever it imported (cropcore's tests compare two processes)."""
    digest = hashlib.sha256()
    _examples(key, lambda kwargs: _digest(digest, kwargs), seed, max_examples, shrink=False)
    return digest.hexdigest()


def _digest(digest: Any, kwargs: dict[str, Any]) -> None:
    """Fold one example's inputs into ``digest``."""
    for name, value in sorted(kwargs.items()):
        digest.update(name.encode())
        if isinstance(value, np.ndarray):
            digest.update(f"{value.dtype.str}{value.shape}".encode())
            digest.update(np.ascontiguousarray(value).tobytes())
        else:
            digest.update(repr(value).encode())


def _property(key: str) -> FunctionCase:
    op, _, _variant = key.partition("/")
    case_id = f"{C}/{key}"

    def check(ctx: Context) -> Outcome:
        if importlib.util.find_spec("hypothesis") is None:
            raise SkipCase('hypothesis is not installed (pip install "cropcore[conformance]")')
        tolerance = ctx.tolerance_for(case_id)
        outcome = Outcome.passed(tolerance.name)
        examples = [0]  # drawn
        drawn = hashlib.sha256()  # what was drawn: the same for a seed in every process

        def one(kwargs: dict[str, Any]) -> None:
            examples[0] += 1
            _digest(drawn, kwargs)
            try:
                expected: Any = ctx.reference_result(op, kwargs)
            except Exception as exc:
                expected = exc
            inputs = materialize(kwargs)
            before = snapshot(inputs)
            inputs = ctx.prepare(inputs)
            try:
                result = ctx.run_backend(op, inputs)
            except Declined as exc:
                outcome.declined += 1
                outcome.claimed += int(exc.claimed)
                return
            except Exception as exc:
                if isinstance(expected, Exception) and type(exc) is type(expected):
                    return
                raise _Mismatch(
                    f"raised {_describe_exception(exc)} on {_summary(kwargs)}"
                ) from None
            if isinstance(expected, Exception):
                raise _Mismatch(
                    f"returned a result where the reference raises "
                    f"{_describe_exception(expected)}, on {_summary(kwargs)}"
                )
            try:
                actual = check_result(op, result, inputs)
            except FailCase as exc:
                raise _Mismatch(f"{exc}, on {_summary(kwargs)}") from None
            if ctx.device is None and changed_inputs(before, inputs):
                raise _Mismatch(f"modified its inputs {changed_inputs(before, inputs)} in place")
            scale = sum_scale(op, kwargs, ctx) if tolerance.name == "reordered-sums" else None
            comparison = compare_arrays(actual, expected, tolerance, scale)
            outcome.elements += comparison.elements
            outcome.identical += comparison.identical
            outcome.max_abs = max(outcome.max_abs, comparison.max_abs)
            outcome.max_ulp = max(outcome.max_ulp, comparison.max_ulp)
            if not comparison.passed:
                raise _Mismatch(f"{comparison.message}, on {_summary(kwargs)}")

        try:
            _examples(key, one, ctx.seed, ctx.max_examples, ctx.shrink)
        except _Mismatch as exc:
            notes = "\n".join(
                n for n in getattr(exc, "__notes__", []) if n.startswith(("Falsifying", "Failing"))
            )
            message = f"{exc} (hypothesis seed {ctx.seed}"
            message += f"; {notes.strip()[:1500]})" if notes else ")"
            outcome.status, outcome.message = "failed", message
            return outcome
        if examples[0] and outcome.declined == examples[0]:
            outcome.status, outcome.message = "skipped", "the backend declined every example"
        else:
            outcome.message = f"{examples[0]} examples (sha256 {drawn.hexdigest()[:16]})"
            if outcome.declined:
                outcome.message += f"; the backend declined {outcome.declined} of them"
        return outcome

    return FunctionCase(
        case_id,
        op,
        check=check,
        description=f"random valid {op} calls ({_variant}) equal the reference's",
    )


#: The property keys: ``properties/<key>`` is the case id.
PROPERTIES = (
    "forward/bilinear",
    "forward/nearest",
    "grad_image/bilinear",
    "grad_image/nearest",
    "grad_boxes/bilinear",
    "crop2d/any",
)


def property_cases() -> list[Case]:
    """Every case of the ``properties`` category."""
    return [_property(key) for key in PROPERTIES]
