"""The conformance suite catches wrong backends: bugs planted, one at a time, in a copy of the reference.

Each mutant is a copy of the ``cropcore_numpy`` package with one textual change (a few lines at
most), registered as a backend of its own; the whole suite runs against it and must fail, in the
categories named. An unchanged copy must pass, so the failures are the mutation's doing.

A mutation whose text no longer occurs in the reference fails loudly: update it together with the
reference's code, never delete it silently.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

import cropcore_conformance
from cropcore.registry import registry

REFERENCE = Path(__file__).resolve().parents[1] / "backends" / "numpy" / "cropcore_numpy"
# Enough hypothesis examples to exercise the property cases, few enough to keep this file quick.
MAX_EXAMPLES = 15
# TensorFlow's determinism tests recompute large gradients: no mutation here is about determinism.
EXCLUDE = ("tf-tests/*/test-reproducible-backprop-*",)


@dataclass(frozen=True)
class Mutation:
    """``edits``: (file, old text, new text); ``caught_by``: categories that must report failures."""

    name: str
    edits: tuple[tuple[str, str, str], ...]
    caught_by: frozenset[str]


def mutation(name: str, caught_by: str, *edits: tuple[str, str, str]) -> Mutation:
    return Mutation(name, edits, frozenset(caught_by.split()))


K, INIT, E = "kernels.py", "__init__.py", "entry.py"  # E: the entry points taking the call
S, G = "samples.py", "gradients.py"  # the kernels' sample coordinates; the gradient ops
NEAREST = "nearest = np.minimum(low + (lerp >= 0.5), last)"
GATHER = "return image[batch, y, x].astype(_F32, copy=False)"
FORWARD_RESULT = "return _from_nhwc(crops, call.channels_first)"
INFO_HOOK = "@hookimpl\ndef cropcore_backend_info"
DECLINES_HOOK = "@hookimpl\ndef cropcore_backend_declines(call):\n    "
NEAREST_CALL = 'getattr(call, "method", None) == "nearest"'
RANDOM = '__import__("random").random'
END = "\n\n\n" + INFO_HOOK
GRAD_BOXES_RESULT = (
    "return kernels.crop_and_resize_grad_boxes(*_arguments(call, call.grads, call.image))"
)
EXTRAPOLATE = "crops[~_valid_samples(rows, cols)] = _F32(extrapolation_value)\n    return crops"
RANGE_TEST = "valid = (coord >= 0) & (coord <= _F32(size - 1))"

MUTATIONS = [
    # The bugs the issue names.
    mutation(
        "half-to-even-rounding",
        "tf-vectors tf-tests edge-cases",
        (S, NEAREST, "nearest = np.minimum(np.rint(inside).astype(np.intp), last)"),
    ),
    mutation(
        "scale-off-by-one-pixel",
        "tf-vectors tf-tests edge-cases properties gradients",
        (
            S,
            "scale = _divide_ftz(_multiply_ftz(span, size_minus_one), _F32(crop - 1))",
            "scale = _divide_ftz(_multiply_ftz(span, _F32(size)), _F32(crop - 1))",
        ),
    ),
    mutation(
        "crop-size-1-samples-the-start-not-the-centre",
        "tf-vectors tf-tests edge-cases gradients",
        (
            S,
            "centre = 0.5 * total.astype(np.float64) * np.float64(size - 1)",
            "centre = start.astype(np.float64) * np.float64(size - 1)",
        ),
    ),
    mutation(
        "missed-extrapolation-row",
        "tf-vectors tf-tests edge-cases properties gradients",
        (
            S,
            "return rows.valid[:, :, None] & cols.valid[:, None, :]",
            "return np.ones_like(rows.valid)[:, :, None] & cols.valid[:, None, :]",
        ),
    ),
    mutation(
        "flip-ignored",
        "tf-vectors tf-tests edge-cases properties gradients",
        (
            S,
            "rows = _samples(boxes[:, 0], boxes[:, 2], image_height, crop_height, **kwargs)",
            "rows = _samples(np.minimum(boxes[:, 0], boxes[:, 2]), "
            "np.maximum(boxes[:, 0], boxes[:, 2]), image_height, crop_height, **kwargs)",
        ),
        (
            S,
            "cols = _samples(boxes[:, 1], boxes[:, 3], image_width, crop_width, **kwargs)",
            "cols = _samples(np.minimum(boxes[:, 1], boxes[:, 3]), "
            "np.maximum(boxes[:, 1], boxes[:, 3]), image_width, crop_width, **kwargs)",
        ),
    ),
    mutation(
        "gradient-accumulated-into-the-wrong-pixel",
        "tf-vectors tf-tests gradients",
        (G, "pixel(rows.low, cols.high),  # top right", "pixel(rows.high, cols.low),  # top right"),
    ),
    mutation(
        "dtype-cast-too-early",
        "tf-vectors gradients",
        (G, "grads[valid]", "grads[valid].astype(dtype)"),
    ),
    mutation(
        "box-indices-ignored",
        "tf-vectors edge-cases gradients properties",
        (
            K,
            "batch = box_indices.astype(np.intp)[:, None, None]",
            "batch = np.zeros_like(box_indices, dtype=np.intp)[:, None, None]",
        ),
        (
            G,
            "row_base = box_indices.astype(np.intp)[:, None] * image_height",
            "row_base = np.zeros_like(box_indices, dtype=np.intp)[:, None] * image_height",
        ),
    ),
    # The further bugs the brief names.
    mutation(
        "nearest-uses-floor",
        "tf-vectors tf-tests edge-cases properties",
        (S, NEAREST, "nearest = low"),
    ),
    mutation(
        "extrapolation-replaced-by-clamping",
        "tf-vectors tf-tests edge-cases properties gradients",
        (S, RANGE_TEST, "valid = np.ones(coord.shape, bool)"),
        (
            S,
            "inside = np.where(valid, coord, _ZERO)",
            "inside = np.clip(np.nan_to_num(coord), _ZERO, _F32(size - 1))",
        ),
    ),
    mutation(
        "grad-boxes-sign-flip",
        "tf-vectors tf-tests gradients properties",
        (
            G,
            "factors = (_F32(size - 1) - position, position)",
            "factors = (position - _F32(size - 1), position)",
        ),
    ),
    mutation(
        "output-dtype-float64",
        "tf-vectors tf-tests edge-cases properties round-trips",
        (S, GATHER, "return image[batch, y, x].astype(np.float64, copy=False)"),
    ),
    mutation(
        "nchw-treated-as-nhwc",
        "tf-vectors edge-cases properties gradients",
        (E, "return np.moveaxis(x, 1, 3) if channels_first else x", "return x"),
        (
            E,
            "return np.ascontiguousarray(np.moveaxis(x, 3, 1)) if channels_first else x",
            "return x",
        ),
    ),
    # More ways to be wrong.
    mutation(
        "extrapolation-value-ignored",
        "tf-vectors tf-tests edge-cases",
        (K, EXTRAPOLATE, "crops[~_valid_samples(rows, cols)] = _ZERO\n    return crops"),
    ),
    mutation(
        "nearest-as-floorf-x-plus-half",
        "tf-vectors edge-cases",
        (S, NEAREST, "nearest = np.minimum(np.floor(inside + _F32(0.5)).astype(np.intp), last)"),
    ),
    mutation(
        "edge-overshoot-not-extrapolated",
        "tf-vectors edge-cases",
        (
            S,
            RANGE_TEST,
            "valid = (coord >= 0) & (coord <= np.nextafter(_F32(size - 1), _F32(size)))",
        ),
    ),
    mutation(
        "bilinear-in-float64",
        "tf-vectors edge-cases properties",
        (S, GATHER, "return image[batch, y, x].astype(np.float64, copy=False)"),
        (
            K,
            "return _lerp(top, bottom, rows.lerp[:, :, None, None], flush)",
            "return _lerp(top, bottom, rows.lerp[:, :, None, None], flush).astype(_F32)",
        ),
    ),
    mutation(
        "samples-outside-the-image-contribute-to-the-gradient",
        "tf-vectors gradients properties",
        (
            G,
            "valid = _valid_samples(rows, cols)\n        # Only in-range samples",
            "valid = np.ones_like(_valid_samples(rows, cols))\n        # Only in-range samples",
        ),
    ),
    mutation(
        "float16-gradient-accumulated-in-float32",
        "tf-vectors gradients",
        (
            E,
            "call.method, call.dtype\n    )",
            'call.method, "float32"\n    ).astype(call.dtype)',
        ),
    ),
    mutation(
        "only-the-first-channel",
        "tf-vectors tf-tests edge-cases properties gradients",
        (
            S,
            GATHER,
            "return np.broadcast_to(image[batch, y, x][..., :1], "
            "image[batch, y, x].shape).astype(_F32)",
        ),
    ),
    mutation(
        "writes-into-the-callers-boxes",
        "tf-vectors edge-cases errors",
        (E, FORWARD_RESULT, "call.boxes[...] = 0\n    " + FORWARD_RESULT),
    ),
    mutation(
        "reuses-an-output-buffer",
        "round-trips behaviour",
        (
            E,
            FORWARD_RESULT,
            "buffer = _BUFFERS.setdefault((crops.shape, call.data_format), crops)\n"
            "    buffer[...] = crops\n    crops = buffer\n    " + FORWARD_RESULT,
        ),
        (
            E,
            "def crop_and_resize(call",
            "_BUFFERS = {}\n\n\ndef crop_and_resize(call",
        ),
    ),
    # Behaviour across calls: category behaviour must catch each (the staging race, it alone).
    mutation(
        "stages-crops-in-a-module-level-buffer",  # a data race between threads
        "behaviour",
        (
            E,
            FORWARD_RESULT,
            "stage = _STAGE.setdefault(crops.shape, np.empty_like(crops))\n"
            "    for box in range(len(crops)):  # row by row, as a kernel's staging would\n"
            "        stage[box] = crops[box]\n    crops = stage.copy()\n    " + FORWARD_RESULT,
        ),
        (E, "def crop_and_resize(call", "_STAGE = {}\n\n\ndef crop_and_resize(call"),
    ),
    mutation(
        "box-gradient-recycles-its-result",  # hands out memory a later call overwrites
        "behaviour",
        (
            E,
            GRAD_BOXES_RESULT,
            "result = kernels.crop_and_resize_grad_boxes(*_arguments(call, call.grads, "
            "call.image))\n    buffer = _RESULTS.setdefault(result.shape, result)\n"
            "    buffer[...] = result\n    return buffer",
        ),
        (E, "def crop_and_resize(call", "_RESULTS = {}\n\n\ndef crop_and_resize(call"),
    ),
    mutation(
        "image-gradient-cleans-nan-grads-in-place",  # writes into the caller's grads
        "behaviour",
        (
            E,
            "    grads_image = kernels.crop_and_resize_grad_image(",
            "    np.nan_to_num(call.grads, copy=False)\n"
            "    grads_image = kernels.crop_and_resize_grad_image(",
        ),
    ),
    mutation(
        "image-gradient-summed-in-a-random-order",  # as unordered atomics would
        "behaviour",
        (
            G,
            "        else:\n            _scatter_add(grads_image, targets, contributions)",
            "        else:\n            order = np.random.permutation(targets.size)\n"
            "            _scatter_add(grads_image, targets[order], contributions[:, order])",
        ),
    ),
    # The plugin contract: a declines hook that lies, raises or wavers.
    mutation(
        "declines-nearest-though-its-info-claims-it",  # certified before: declines were skips
        "behaviour",
        (INIT, INFO_HOOK, DECLINES_HOOK + f'return "no nearest" if {NEAREST_CALL} else None' + END),
    ),
    mutation(
        "declines-hook-reads-the-method-of-crop2d-calls",  # crop2d calls have no method
        "behaviour tf-vectors",
        (
            INIT,
            INFO_HOOK,
            DECLINES_HOOK + 'return None if call.method in ("bilinear", "nearest") else "?"' + END,
        ),
    ),
    mutation(
        "declines-hook-answers-at-random",
        "behaviour",
        (INIT, INFO_HOOK, DECLINES_HOOK + f'return "busy" if {RANDOM}() < 0.5 else None' + END),
    ),
    mutation(
        "crop2d-shifted-by-one-row",
        "tf-vectors tf-tests edge-cases properties round-trips",
        (INIT, "from cropcore import memory", "import numpy as np\nfrom cropcore import memory"),
        (  # the reference has no crop2d hook (the core slices): the mutant brings a wrong one
            INIT,
            "@hookimpl\ndef cropcore_backend_info",
            "@hookimpl\ndef cropcore_crop2d(call):\n    return np.roll(call.x, 1, axis=1)[call.slices]"
            "\n\n\n@hookimpl\ndef cropcore_backend_info",
        ),
    ),
]


def make_mutant(directory: Path, mutation: Mutation | None, name: str):
    """A copy of cropcore_numpy named ``cropcore_mutant_<name>``, with ``mutation`` applied, imported."""
    module_name = "cropcore_mutant_" + name.replace("-", "_")
    target = directory / module_name
    shutil.copytree(REFERENCE, target, ignore=shutil.ignore_patterns("__pycache__"))
    for path in target.glob("*.py"):
        path.write_text(path.read_text().replace("cropcore_numpy", module_name))
    init = target / "__init__.py"
    text = init.read_text()
    assert 'name="numpy",' in text, (
        "cropcore_numpy's BackendInfo(name=...) moved: update make_mutant"
    )
    init.write_text(text.replace('name="numpy",', f'name="mutant-{name}",', 1))
    for file, old, new in mutation.edits if mutation else ():
        path = target / file
        text = path.read_text()
        assert old in text, (
            f"mutation {mutation.name!r} no longer applies: {old!r} is not in cropcore_numpy/{file}; "
            "update the mutation to the reference's new code"
        )
        path.write_text(text.replace(old, new))
    sys.path.insert(0, str(directory))
    try:
        module = importlib.import_module(module_name)
    finally:
        sys.path.remove(str(directory))
    return module


@pytest.fixture
def mutant(tmp_path):
    """Register a mutant backend for one test (removed afterwards)."""
    registered = []

    def register(mutation: Mutation | None, name: str) -> str:
        module = make_mutant(tmp_path, mutation, name)
        registry.register(module, name=f"mutant-{name}")
        registered.append((f"mutant-{name}", module.__name__))
        return f"mutant-{name}"

    yield register
    for backend, module_name in registered:
        if registry.get(backend) is not None:
            registry.unregister(backend)
        for key in [k for k in sys.modules if k == module_name or k.startswith(module_name + ".")]:
            del sys.modules[key]


def run_suite(backend: str) -> cropcore_conformance.Report:
    return cropcore_conformance.run(
        backend, exclude=EXCLUDE, max_examples=MAX_EXAMPLES, shrink=False
    )


def test_an_unchanged_copy_of_the_reference_passes(mutant):
    report = run_suite(mutant(None, "unchanged"))
    assert report.exit_code == 0, "\n".join(f"{r.id}: {r.message}" for r in report.failures[:10])
    assert report.total().failed == 0


@pytest.mark.parametrize("bug", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_the_suite_catches_a_planted_bug(mutant, bug):
    report = run_suite(mutant(bug, bug.name))
    caught = {r.category for r in report.failures}
    assert report.exit_code == 1, f"the suite passed a backend with bug {bug.name!r}"
    assert bug.caught_by <= caught, (
        f"bug {bug.name!r} was caught by {sorted(caught)}, expected at least {sorted(bug.caught_by)}"
    )
