"""The ``sizes`` category catches what fast kernels get wrong at their seams, and nothing else does.

Bugs planted in copies of the reference (as tests/test_conformance_catches_bugs.py plants them):
each only shows beyond a size the other categories never reach, so the whole suite must fail on
it in category ``sizes`` and in no other.
"""

from __future__ import annotations

import pytest
from test_conformance_catches_bugs import E, Mutation, mutant, run_suite  # noqa: F401 (fixture)

import cropcore_conformance

FORWARD = "return _from_nhwc(crops, call.channels_first)"
GRAD_IMAGE = "return _from_nhwc(grads_image, call.channels_first)"
GRAD_BOXES = "return kernels.crop_and_resize_grad_boxes(*_arguments(call, call.grads, call.image))"
GATHER = "return image[batch, y, x].astype(_F32, copy=False)"

SIZE_BUGS = [
    Mutation(
        "forward-drops-the-last-partial-chunk-of-128-boxes",
        (
            (
                E,
                FORWARD,
                "if len(crops) > 128:\n        crops[len(crops) // 128 * 128 :] = 0\n    "
                + FORWARD,
            ),
        ),
        frozenset({"sizes"}),
    ),
    Mutation(
        "grad-image-forgets-the-depth-mod-4-tail-channels",
        (
            (
                E,
                GRAD_IMAGE,
                "if grads_image.shape[3] > 4:\n"
                "        grads_image[..., grads_image.shape[3] // 4 * 4 :] = 0\n    " + GRAD_IMAGE,
            ),
        ),
        frozenset({"sizes"}),
    ),
    Mutation(
        "grad-boxes-drops-boxes-beyond-1024",
        (
            (
                E,
                GRAD_BOXES,
                "result = kernels.crop_and_resize_grad_boxes("
                "*_arguments(call, call.grads, call.image))\n"
                "    result[1024:] = 0\n    return result",
            ),
        ),
        frozenset({"sizes"}),
    ),
    Mutation(
        "forward-tiles-crop-rows-by-256-and-drops-the-rest",
        ((E, FORWARD, "crops[:, 256:] = 0\n    " + FORWARD),),
        frozenset({"sizes", "tf-tests"}),  # and TensorFlow's test-with-sharding (crops of 500 rows)
    ),
    Mutation(
        "column-indices-in-16-bits",
        (
            (
                "samples.py",
                GATHER,
                "x = x.astype(np.int16).astype(np.intp) % image.shape[2]\n    " + GATHER,
            ),
        ),
        frozenset({"sizes"}),
    ),
]


@pytest.mark.parametrize("bug", SIZE_BUGS, ids=[m.name for m in SIZE_BUGS])
def test_only_the_sizes_category_catches_a_bug_at_a_kernel_seam(mutant, bug):  # noqa: F811
    """Exactly the categories named catch it: ``sizes`` alone for all but one."""
    report = run_suite(mutant(bug, bug.name))
    caught = {r.category for r in report.failures}
    assert report.exit_code == 1, f"the suite passed a backend with bug {bug.name!r}"
    assert caught == bug.caught_by, f"bug {bug.name!r} was caught by {sorted(caught)}"


def test_the_category_is_small_and_quick():
    cases = [c for c in cropcore_conformance.all_cases() if c.category == "sizes"]
    assert 200 < len(cases) < 400
    report = cropcore_conformance.run("numpy", categories=["sizes"])
    assert report.exit_code == 0
    assert report.total().passed == len(cases)
