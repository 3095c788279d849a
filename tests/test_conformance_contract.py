"""The behaviour category's plugin-contract cases catch what only they can: a plugin that imports
its framework when it is imported, and a crop2d that copies where NumPy makes a view. Bugs are
planted in copies of the reference, as in tests/test_conformance_catches_bugs.py."""

from __future__ import annotations

import pytest
from test_conformance_catches_bugs import INIT, Mutation, mutant, run_suite  # noqa: F401

HOOK = "@hookimpl\ndef cropcore_backend_info"

CONTRACT_BUGS = [
    Mutation(
        "plugin-imports-its-framework-at-import",
        (
            (
                INIT,
                "from cropcore import memory",
                "import numba  # noqa: F401\nfrom cropcore import memory",
            ),
        ),
        frozenset({"behaviour"}),
    ),
    Mutation(
        "crop2d-returns-a-copy",
        (
            (
                INIT,
                "from cropcore import memory",
                "import numpy as np\nfrom cropcore import memory",
            ),
            (
                INIT,
                HOOK,
                "@hookimpl\ndef cropcore_crop2d(call):\n"
                "    return np.ascontiguousarray(call.x[call.slices])\n\n\n" + HOOK,
            ),
        ),
        frozenset({"behaviour"}),
    ),
]


@pytest.mark.parametrize("bug", CONTRACT_BUGS, ids=[m.name for m in CONTRACT_BUGS])
def test_only_the_contract_cases_catch_a_contract_bug(mutant, bug):  # noqa: F811
    pytest.importorskip("numba")  # the framework the first plant imports
    report = run_suite(mutant(bug, bug.name))
    failed = sorted(r.id for r in report.failures)
    assert report.exit_code == 1, f"the suite passed a backend with bug {bug.name!r}"
    expected = {
        "plugin-imports-its-framework-at-import": ["behaviour/forward/imports-no-framework"],
        "crop2d-returns-a-copy": ["behaviour/crop2d/result-is-a-view"],
    }[bug.name]
    assert failed == expected
