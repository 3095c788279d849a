"""cropcore's conformance suite: prove any backend, cropcore's own or a third party's, against the
reference.

Run it from the command line (``cropcore conformance NAME``, or ``python -m cropcore_conformance
NAME``), from pytest (``pytest -p cropcore_conformance.pytest_plugin --cropcore-backend NAME``), or
from Python::

    >>> import cropcore_conformance
    >>> report = cropcore_conformance.run("numpy")
    >>> report.exit_code
    0

The cases are organised in categories (:data:`CATEGORIES`) and have stable ids,
``<category>/<op>/<name>``, which are public API: a backend declares the cases it is known to fail
(hook ``cropcore_conformance_expected_failures``) and the tolerance classes it needs (hook
``cropcore_conformance_tolerances``; classes in :data:`TOLERANCES`) by id pattern. See
docs/conformance.md.
"""

from cropcore_conformance.cases import CATEGORIES, OPS, Case, Context, Outcome
from cropcore_conformance.compare import TOLERANCES, Tolerance, compare_arrays
from cropcore_conformance.suite import (
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_SEED,
    DeclarationError,
    Report,
    Result,
    all_cases,
    declarations,
    run,
    select,
)

__all__ = [
    "CATEGORIES",
    "DEFAULT_MAX_EXAMPLES",
    "DEFAULT_SEED",
    "OPS",
    "TOLERANCES",
    "Case",
    "Context",
    "DeclarationError",
    "Outcome",
    "Report",
    "Result",
    "Tolerance",
    "all_cases",
    "compare_arrays",
    "declarations",
    "run",
    "select",
]
