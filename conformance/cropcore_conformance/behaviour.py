"""Category ``behaviour``: what a backend does across calls, not in one call alone.

Requirements:

- **Concurrency**: users call backends from DataLoader threads and Dask workers. The same call
  from several threads at once, and different calls interleaved across threads, give each
  call's single-thread result (a backend that stages data in a module-level buffer fails).
  The threads start together and yield to each other at every line of the backend's own Python
  code, so that a race in it shows within a few calls; native code that releases the GIL runs
  truly in parallel.
- **No aliasing**: a result is not changed by later calls (a backend that recycles its output
  buffers must not hand out memory still referenced), and two results never share memory;
  crop2d's result may share memory with its input only, as the library's own slicing does
  (docs/decisions.md, "Copy or view?").
- **Inputs untouched**: image, boxes, box indices and grads are bit-for-bit unchanged after
  every op, NaN and infinite values included; read-only inputs are accepted and give the same
  result.
- **Determinism**: repeated calls give the same bits, the image gradient included, unless the
  backend declares a tolerance class for the case (``reordered-sums``: a GPU's atomics), which
  then bounds the differences between calls.
- **The plugin contract**: the ``declines`` hook answers a valid call of every op (crop2d's
  call has no ``image`` and no ``method``) without raising, the same way every time, in well
  under 10 ms; every image dtype and method the ``BackendInfo`` claims is run, not declined;
  importing the plugin and listing backends in a fresh process imports no framework
  (``forward/imports-no-framework``); crop2d of a NumPy array is a view
  (``crop2d/result-is-a-view``).

The inputs are drawn from a NumPy generator seeded with the run's ``--seed`` and kept small, so
the category takes a fraction of a second on the reference backend. The results are compared
with the backend's own single-thread result, not with the reference: the other categories
check the values. Every op has the checks, roi_align and its gradient included. Ids:
``behaviour/<op>/<check>``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from cropcore.calls import ROI_ALIGN_DTYPES
from cropcore.spec import IMAGE_DTYPES, METHODS
from cropcore_conformance.cases import (
    OPS,
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
from cropcore_conformance.inputs import changed_inputs, snapshot

__all__ = ["behaviour_cases"]

C = "behaviour"
F32 = np.float32
THREADS = 4
CALLS_PER_THREAD = 3
REPEATS = 4
IMAGE_SHAPE = (2, 9, 11, 3)  # batch, height, width, depth (NHWC)
NUM_BOXES = 6
CROP_SIZE = (5, 7)
OPS_ORDER = ("forward", "grad_image", "grad_boxes", "crop2d", "roi_align", "roi_align_grad")
ROI_OPS = ("roi_align", "roi_align_grad")
DECLINES_CALLS = 8
DECLINES_SECONDS = 0.01  # generous: the hook runs before every call


def _inputs(op: str, seed: int, variant: int, special: bool = False) -> dict[str, Any]:
    """Inputs of ``op`` (NHWC), a function of ``seed`` and ``variant`` only. Every variant has the
    same shapes, so calls that share a buffer by shape collide. ``special``: NaN and infinite
    pixels and grads (what an in-place clean-up would change)."""
    rng = np.random.default_rng([seed, variant, OPS_ORDER.index(op)])
    batch, depth = IMAGE_SHAPE[0], IMAGE_SHAPE[3]
    # Values of mixed magnitudes: a sum taken in another order differs in its last bits.
    image = (rng.standard_normal(IMAGE_SHAPE) * 10.0 ** rng.uniform(-2, 2, IMAGE_SHAPE)).astype(F32)
    if op == "crop2d":
        return {"x": image, "cropping": ((1, 2), (3, 1))}
    if op in ROI_OPS:
        return _roi_inputs(op, rng, image, special)
    # Overlapping boxes, some flipped, some reaching outside the image.
    starts = rng.uniform(-0.2, 0.5, (NUM_BOXES, 2))
    ends = starts + rng.uniform(0.3, 0.8, (NUM_BOXES, 2))
    boxes = np.concatenate([starts, ends], axis=1).astype(F32)  # [y1, x1, y2, x2]
    boxes[::3] = boxes[::3][:, [2, 1, 0, 3]]  # flip every third vertically
    box_indices = rng.integers(0, batch, NUM_BOXES).astype(np.int32)
    grads_shape = (NUM_BOXES, *CROP_SIZE, depth)
    grads = (rng.standard_normal(grads_shape) * 10.0 ** rng.uniform(-3, 3, grads_shape)).astype(F32)
    if special:
        image.reshape(-1)[::7] = np.nan
        image.reshape(-1)[3::11] = np.inf
        grads.reshape(-1)[::5] = np.nan
        grads.reshape(-1)[2::9] = -np.inf
    if op == "forward":
        return {
            "image": image,
            "boxes": boxes,
            "box_indices": box_indices,
            "crop_size": CROP_SIZE,
            "method": "bilinear",
            "extrapolation_value": 0.5,
        }
    if op == "grad_image":
        return {
            "grads": grads,
            "boxes": boxes,
            "box_indices": box_indices,
            "image_shape": IMAGE_SHAPE,
            "method": "bilinear",
        }
    return {"grads": grads, "image": image, "boxes": boxes, "box_indices": box_indices}


def _roi_inputs(op: str, rng: np.random.Generator, image: np.ndarray, special: bool) -> dict:
    """roi_align's inputs: overlapping pixel boxes ``[x1, y1, x2, y2]``, some reaching outside
    the image, NHWC, two samples per bin along each axis."""
    batch, height, width, depth = IMAGE_SHAPE
    starts = rng.uniform(-1.5, [width - 3, height - 3], (NUM_BOXES, 2))
    boxes = np.concatenate([starts, starts + rng.uniform(1, 6, (NUM_BOXES, 2))], axis=1)
    shared = {
        "boxes": boxes.astype(F32),
        "box_indices": rng.integers(0, batch, NUM_BOXES).astype(np.int32),
        "spatial_scale": 1.0,
        "sampling_ratio": 2,
        "aligned": True,
        "data_format": "channels_last",
    }
    grads_shape = (NUM_BOXES, *CROP_SIZE, depth)
    grads = (rng.standard_normal(grads_shape) * 10.0 ** rng.uniform(-3, 3, grads_shape)).astype(F32)
    if special:
        image.reshape(-1)[::7] = np.nan
        image.reshape(-1)[3::11] = np.inf
        grads.reshape(-1)[::5] = np.nan
    if op == "roi_align":
        return {"image": image, "output_size": CROP_SIZE, "mode": "avg", **shared}
    return {"grads": grads, "image_shape": IMAGE_SHAPE, **shared}


def _copies(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}


def _call(ctx: Context, op: str, kwargs: dict[str, Any]) -> tuple[Any, np.ndarray]:
    """The backend's result for ``kwargs`` (prepared for ``--device``), and it as NumPy."""
    inputs = ctx.prepare(kwargs)
    result = ctx.run_backend(op, inputs)
    return result, check_result(op, result, inputs)


class _Checker:
    """Compares results under the case's tolerance and folds the statistics into one outcome."""

    def __init__(self, ctx: Context, case_id: str) -> None:
        self.ctx = ctx
        self.tolerance = ctx.tolerance_for(case_id)
        self.outcome = Outcome.passed(self.tolerance.name)
        self._scales: dict[int, Any] = {}

    def same(
        self,
        actual: np.ndarray,
        expected: np.ndarray,
        what: str,
        call: tuple[str, dict[str, Any]] | None = None,
    ) -> None:
        """``call``: the ``(op, kwargs)`` both results are of, for a declared ``reordered-sums``
        tolerance (without it, the comparison is exact)."""
        scale = None
        if call is not None and self.tolerance.name == "reordered-sums":
            key = id(call[1])
            if key not in self._scales:
                self._scales[key] = sum_scale(call[0], call[1], self.ctx)
            scale = self._scales[key]
        comparison = compare_arrays(actual, expected, self.tolerance, scale)
        self.outcome.add(comparison)
        if not comparison.passed:
            raise FailCase(f"{what}: {comparison.message}")


def _yielding_in(package: str) -> Callable[..., Any]:
    """A trace function that yields the interpreter to other threads at every line of
    ``package``'s Python code, so that a race in it shows within a few calls (preemption alone
    lands in a short critical section about once in two hundred calls)."""

    def line(frame: Any, event: str, arg: Any) -> Any:
        if event == "line":
            time.sleep(0)  # releases the GIL: another thread runs here
        return line

    def call(frame: Any, event: str, arg: Any) -> Any:
        name = frame.f_globals.get("__name__", "")
        if event == "call" and (name == package or name.startswith(package + ".")):
            return line
        return None

    return call


def _in_threads(work: list[Callable[[], None]], package: str) -> None:
    """Run each function of ``work`` in its own thread, all started together, yielding to each
    other at every line of ``package``; re-raise the first exception one of them raised."""
    barrier = threading.Barrier(len(work))
    errors: list[BaseException] = []
    tracer = _yielding_in(package) if package else None

    def run(function: Callable[[], None]) -> None:
        try:
            if tracer is not None:
                sys.settrace(tracer)
            barrier.wait()
            function()
        except BaseException as exc:  # reported by the calling thread
            errors.append(exc)
        finally:
            sys.settrace(None)

    threads = [threading.Thread(target=run, args=(function,)) for function in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for exc in errors:
        if isinstance(exc, (SkipCase, FailCase)):
            raise exc
    if errors:
        raise FailCase(f"raised {_describe_exception(errors[0])} in one of {len(work)} threads")


def _threads(op: str, different: bool) -> Callable[[Context], Outcome]:
    def check(ctx: Context) -> Outcome:
        checker = _Checker(ctx, case_id)
        variants = range(THREADS) if different else [0] * THREADS
        calls = {v: _inputs(op, ctx.seed, v) for v in set(variants)}
        alone = {v: _call(ctx, op, _copies(kwargs))[1].copy() for v, kwargs in calls.items()}
        results: list[tuple[int, np.ndarray]] = []
        lock = threading.Lock()

        def worker(variant: int) -> Callable[[], None]:
            def run() -> None:
                for _ in range(CALLS_PER_THREAD):
                    _, actual = _call(ctx, op, _copies(calls[variant]))
                    with lock:
                        results.append((variant, actual.copy()))

            return run

        module = getattr(ctx.backend.module, "__name__", "")
        _in_threads([worker(v) for v in variants], module.partition(".")[0])
        for variant, actual in results:
            checker.same(
                actual,
                alone[variant],
                f"a call made in one of {THREADS} threads at once differs from the same call "
                "made alone",
                (op, calls[variant]),
            )
        return checker.outcome

    case_id = f"{C}/{op}/threads-{'different' if different else 'same'}-calls"
    return check


def _not_recycled(op: str) -> Callable[[Context], Outcome]:
    def check(ctx: Context) -> Outcome:
        checker = _Checker(ctx, case_id)
        first_inputs = _inputs(op, ctx.seed, 0)
        first, first_np = _call(ctx, op, first_inputs)
        kept = np.array(first_np, copy=True)
        later = [_call(ctx, op, _inputs(op, ctx.seed, v)) for v in (1, 2)]
        checker.same(
            first_np, kept, "a result changed when later calls ran (its memory was reused)"
        )
        for _, second_np in later:
            if np.shares_memory(first_np, second_np):
                raise FailCase("two results of different calls share memory")
            if op != "crop2d" and any(
                isinstance(v, np.ndarray) and np.shares_memory(second_np, v)
                for v in first_inputs.values()
            ):
                raise FailCase("a result shares memory with an earlier call's input")
        del first
        return checker.outcome

    case_id = f"{C}/{op}/results-not-recycled"
    return check


def _untouched(op: str, read_only: bool) -> Callable[[Context], Outcome]:
    def check(ctx: Context) -> Outcome:
        checker = _Checker(ctx, case_id)
        kwargs = _inputs(op, ctx.seed, 0, special=not read_only)
        if read_only:
            if ctx.device is not None:
                raise SkipCase("read-only inputs are NumPy arrays; --device moves them")
            _, expected = _call(ctx, op, _copies(kwargs))
            for value in kwargs.values():
                if isinstance(value, np.ndarray):
                    value.flags.writeable = False
            try:
                _, actual = _call(ctx, op, kwargs)
            except (SkipCase, FailCase):
                raise
            except Exception as exc:
                raise FailCase(f"raised {_describe_exception(exc)} on read-only inputs") from None
            checker.same(
                actual, expected, "read-only inputs give another result", (op, _copies(kwargs))
            )
            return checker.outcome
        before = snapshot(kwargs)
        _call(ctx, op, kwargs)
        changed = changed_inputs(before, kwargs) if ctx.device is None else []
        if changed:
            raise FailCase(
                f"modified its input(s) {', '.join(changed)} in place (inputs with NaN and "
                "infinite values)"
            )
        return checker.outcome

    case_id = f"{C}/{op}/inputs-{'read-only' if read_only else 'untouched'}"
    return check


def _repeatable(op: str) -> Callable[[Context], Outcome]:
    def check(ctx: Context) -> Outcome:
        checker = _Checker(ctx, case_id)
        kwargs = _inputs(op, ctx.seed, 0)
        _, first = _call(ctx, op, _copies(kwargs))
        first = first.copy()
        for _ in range(REPEATS):
            _, again = _call(ctx, op, _copies(kwargs))
            checker.same(again, first, "a repeated call gives other bits", (op, kwargs))
        return checker.outcome

    case_id = f"{C}/{op}/repeatable"
    return check


def _declines_consistently(op: str) -> Callable[[Context], Outcome]:
    def check(ctx: Context) -> Outcome:
        from cropcore.ops import op_for

        calls = [op_for(OPS[op]).make_call(**ctx.prepare(_inputs(op, ctx.seed, v))) for v in (0, 1)]
        for call in calls:
            answers = []
            started = time.perf_counter()
            for _ in range(DECLINES_CALLS):
                try:
                    answers.append(ctx.backend.declines(call))
                except Exception as exc:
                    raise FailCase(
                        f"the backend's cropcore_backend_declines hook raised "
                        f"{_describe_exception(exc)} on a valid {call.op} call"
                    ) from None
            seconds = (time.perf_counter() - started) / DECLINES_CALLS
            if any(not (a is None or isinstance(a, str)) for a in answers):
                raise FailCase(
                    f"cropcore_backend_declines returned {answers[0]!r}, not None or str"
                )
            if len(set(answers)) > 1:
                raise FailCase(
                    f"cropcore_backend_declines answered the same call differently: "
                    f"{sorted(set(map(repr, answers)))}"
                )
            if seconds > DECLINES_SECONDS:
                raise FailCase(
                    f"cropcore_backend_declines took {1e3 * seconds:.1f} ms per call; it runs "
                    f"before every call and must be fast (under {1e3 * DECLINES_SECONDS:g} ms)"
                )
        return Outcome.passed()

    return check


def _info_honest(op: str) -> Callable[[Context], Outcome]:
    def check(ctx: Context) -> Outcome:
        info = ctx.backend.info
        if info is None:
            raise SkipCase("the backend has no BackendInfo")
        device = ctx.device.partition(":")[0] if ctx.device else "cpu"
        if device not in info.devices:
            raise SkipCase(f"the backend does not claim the {device} device")
        dtypes = (
            [d for d in info.dtypes if d in IMAGE_DTYPES]
            if op in ("forward", "grad_boxes")
            else [d for d in info.dtypes if d in ROI_ALIGN_DTYPES]
            if op == "roi_align"
            else [None]
        )
        methods = (
            [m for m in info.methods if m in METHODS] if op not in ("crop2d", *ROI_OPS) else [None]
        )
        if op == "grad_boxes":
            methods = ["bilinear"]  # the box gradient has only the bilinear method
        for dtype in dtypes:
            for method in methods:
                kwargs = _inputs(op, ctx.seed, 0)
                if dtype is not None:
                    kwargs["image"] = _as_dtype(kwargs["image"], dtype)
                if method is not None and op != "grad_boxes":
                    kwargs["method"] = method
                what = ", ".join(
                    f"{k} {v}" for k, v in (("image dtype", dtype), ("method", method)) if v
                )
                try:
                    _call(ctx, op, kwargs)
                except Declined as exc:
                    raise FailCase(
                        f"its BackendInfo claims {what or op}, but it declines it ({exc})"
                    ) from None
                except (SkipCase, FailCase):
                    raise
                except Exception as exc:
                    raise FailCase(
                        f"its BackendInfo claims {what or op}, but it raised "
                        f"{_describe_exception(exc)}"
                    ) from None
        return Outcome.passed()

    return check


def _as_dtype(image: np.ndarray, dtype: str) -> np.ndarray:
    """``image``'s values in ``dtype`` (integers: rounded and clipped to the dtype's range)."""
    target = np.dtype(dtype)
    finite = np.nan_to_num(image, nan=0.0, posinf=0.0, neginf=0.0)
    if target.kind in "iu":
        bounds = np.iinfo(target)
        return np.clip(np.rint(finite), bounds.min, bounds.max).astype(target)
    return finite.astype(target)


CHECKS: dict[str, tuple[Callable[[str], Callable[[Context], Outcome]], str]] = {
    "threads-same-calls": (
        lambda op: _threads(op, different=False),
        "the same call from {threads} threads at once gives the single-thread result",
    ),
    "threads-different-calls": (
        lambda op: _threads(op, different=True),
        "different calls interleaved across {threads} threads give their single-thread results",
    ),
    "results-not-recycled": (
        _not_recycled,
        "a result is not changed by later calls and shares no memory with another result",
    ),
    "inputs-untouched": (
        lambda op: _untouched(op, read_only=False),
        "inputs with NaN and infinite values are bit-for-bit unchanged",
    ),
    "inputs-read-only": (
        lambda op: _untouched(op, read_only=True),
        "read-only inputs are accepted and give the same result",
    ),
    "repeatable": (_repeatable, "repeated calls give the same bits"),
    "declines-consistently": (
        _declines_consistently,
        "the declines hook answers a valid call quickly, the same way every time, and never raises",
    ),
    "info-honest": (
        _info_honest,
        "every image dtype and method the BackendInfo claims is run, not declined",
    ),
}


#: Frameworks a plugin module must not import when it is imported or listed (besides those its
#: ``BackendInfo.requires`` names): a framework loads only when its backend first runs.
FRAMEWORKS = ("torch", "numba", "cupy", "jax", "tensorflow", "dask", "tvm", "mlx", "paddle")


def _imports_no_framework(ctx: Context) -> Outcome:
    """Importing the plugin's module and listing backends, in a fresh process, loads none of the
    frameworks it requires (docs/plugins.md: "Importing it must be cheap")."""
    backend = ctx.backend
    module = backend.module
    if module is None or getattr(module, "__file__", None) is None:
        raise SkipCase("the backend's module has no file a fresh process could import")
    requires = backend.info.requires if backend.info else ()
    watched = sorted({*FRAMEWORKS, *(r.partition(".")[0] for r in requires)} - {"numpy"})
    depth = module.__name__.count(".") + (1 if hasattr(module, "__path__") else 0)
    root = str(Path(module.__file__).parents[depth])
    code = (
        "import importlib, json, sys\n"
        f"sys.path.insert(0, {root!r})\n"
        "import cropcore\n"
        "before = {m.partition('.')[0] for m in sys.modules}\n"
        f"importlib.import_module({module.__name__!r})\n"
        "cropcore.backends()\n"
        "after = {m.partition('.')[0] for m in sys.modules}\n"
        f"print(json.dumps(sorted((after - before) & set({watched!r}))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        tail = " ".join(done.stderr.split()[-40:])
        raise FailCase(f"importing {module.__name__} in a fresh process failed: {tail}")
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    if loaded:
        raise FailCase(
            f"importing {module.__name__} and listing backends imported {', '.join(loaded)}: a "
            "plugin must import its framework lazily, when its backend first runs"
        )
    return Outcome.passed()


def _crop2d_is_a_view(ctx: Context) -> Outcome:
    """crop2d of a NumPy array is a view of it, as NumPy's slicing is (docs/decisions.md,
    "Copy or view?"); a backend that cannot make one declares the case an expected failure."""
    rng = np.random.default_rng([ctx.seed, 7])
    x = rng.standard_normal(IMAGE_SHAPE).astype(F32)
    result = ctx.run_backend("crop2d", {"x": x, "cropping": ((1, 2), (3, 1))})
    actual = check_result("crop2d", result, {"x": x})
    if not np.shares_memory(actual, x):
        raise FailCase("crop2d's result is a copy; NumPy's slicing (and the core's) makes a view")
    return Outcome.passed()


def behaviour_cases() -> list[Case]:
    """Every case of the ``behaviour`` category."""
    cases: list[Case] = [
        FunctionCase(
            f"{C}/forward/imports-no-framework",
            "forward",
            check=_imports_no_framework,
            description="importing the plugin and listing backends in a fresh process loads "
            "none of its frameworks",
        ),
        FunctionCase(
            f"{C}/crop2d/result-is-a-view",
            "crop2d",
            check=_crop2d_is_a_view,
            description="crop2d of a NumPy array shares its memory, as NumPy's slicing does",
        ),
    ]
    for op in OPS_ORDER:
        for name, (make, description) in CHECKS.items():
            cases.append(
                FunctionCase(
                    f"{C}/{op}/{name}",
                    op,
                    check=make(op),
                    description=description.format(threads=THREADS),
                )
            )
    return cases
