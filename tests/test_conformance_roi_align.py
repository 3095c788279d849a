"""The roi-align category catches the mistakes RoIAlign ports make, planted in copies of the
reference (as tests/test_conformance_catches_bugs.py plants them), and no other category does."""

from __future__ import annotations

import pytest
from test_conformance_catches_bugs import Mutation, mutant, run_suite  # noqa: F401

R = "roi_align.py"

ROI_BUGS = [
    Mutation(
        "max-mode-as-the-max-of-interpolated-values",
        (
            (
                R,
                "val = _std_max(_std_max(_std_max(terms[0], terms[1]), terms[2]), terms[3])",
                "val = ((terms[0] + terms[1]) + terms[2]) + terms[3]",
            ),
        ),
        frozenset({"roi-align"}),
    ),
    Mutation(
        "average-as-a-multiplication-by-the-reciprocal",
        (
            (
                R,
                "out = out / count[:, None, None, None]",
                "out = out * (1 / count[:, None, None, None])",
            ),
        ),
        frozenset({"roi-align"}),
    ),
    Mutation(
        "gradient-weight-divided-before-the-product",
        (
            (
                R,
                "v = (g[n][:, :, :, None, None, :] * w[..., None]) / count[n][",
                "v = g[n][:, :, :, None, None, :] * (w[..., None] / count[n][",
            ),
            (
                R,
                ":, None, None, None, None, None\n                    ]",
                ":, None, None, None, None, None\n                    ])",
            ),
        ),
        frozenset({"roi-align"}),
    ),
]


@pytest.mark.parametrize("bug", ROI_BUGS, ids=[m.name for m in ROI_BUGS])
def test_only_the_roi_align_category_catches_a_roi_align_bug(mutant, bug):  # noqa: F811
    report = run_suite(mutant(bug, bug.name))
    caught = {r.category for r in report.failures}
    assert report.exit_code == 1, f"the suite passed a backend with bug {bug.name!r}"
    assert caught == {"roi-align"}, f"bug {bug.name!r} was caught by {sorted(caught)}"
