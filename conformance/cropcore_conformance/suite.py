"""The whole suite: collecting the cases, reading a backend's declarations, running, reporting.

Requirements:

- One entry point, :func:`run`, serves the command line (:mod:`.runner`), the pytest plugin
  (:mod:`.pytest_plugin`) and cropcore's own tests; all three count the same cases the same way.
- A backend's declarations come from its optional hooks: ``cropcore_conformance_expected_failures``
  (``{case id pattern: reason}``) and ``cropcore_conformance_tolerances`` (``{case id pattern:
  tolerance class}``). A declared case that fails is an *expected failure*; a declaration that no
  longer matches any failure is reported as *stale*.
- The report says, per category: cases passed, failed, expected failures and skipped, the worst
  error, the share of bit-identical elements, and the tolerances applied.
"""

from __future__ import annotations

import fnmatch
import functools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cropcore.registry import Backend
from cropcore_conformance.cases import CATEGORIES, Case, Context, Outcome
from cropcore_conformance.compare import TOLERANCES

__all__ = [
    "DEFAULT_MAX_EXAMPLES",
    "DEFAULT_SEED",
    "DeclarationError",
    "Report",
    "Result",
    "all_cases",
    "declarations",
    "run",
    "select",
]

DEFAULT_SEED = 20240229
DEFAULT_MAX_EXAMPLES = 40


class DeclarationError(ValueError):
    """A backend's conformance declarations are malformed."""


@functools.lru_cache(maxsize=1)
def _cases() -> tuple[Case, ...]:
    from cropcore_conformance.behaviour import behaviour_cases
    from cropcore_conformance.edge_cases import edge_cases
    from cropcore_conformance.errors import error_cases
    from cropcore_conformance.gradients import gradient_cases
    from cropcore_conformance.properties import property_cases
    from cropcore_conformance.roi_align_cases import roi_align_cases
    from cropcore_conformance.roundtrips import round_trip_cases
    from cropcore_conformance.sizes import size_cases
    from cropcore_conformance.tf_unit_tests import tf_test_cases
    from cropcore_conformance.unchecked import unchecked_cases
    from cropcore_conformance.vectors import recorded_cases

    found = [
        *recorded_cases(),
        *tf_test_cases(),
        *edge_cases(),
        *property_cases(),
        *gradient_cases(),
        *error_cases(),
        *round_trip_cases(),
        *unchecked_cases(),
        *behaviour_cases(),
        *size_cases(),
        *roi_align_cases(),
    ]
    order = {name: i for i, name in enumerate(CATEGORIES)}
    found.sort(key=lambda case: order[case.category])  # stable: keeps each category's own order
    seen: set[str] = set()
    for case in found:
        if case.id in seen:
            raise RuntimeError(f"duplicate conformance case id {case.id!r}")
        if case.category not in CATEGORIES:
            raise RuntimeError(f"case {case.id!r} is in no known category")
        seen.add(case.id)
    return tuple(found)


def all_cases() -> list[Case]:
    """Every case of the suite, in report order (built once per process)."""
    return list(_cases())


def select(
    cases: Iterable[Case],
    categories: Iterable[str] | None = None,
    patterns: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
) -> list[Case]:
    """The cases in ``categories`` whose id matches one of ``patterns`` and none of ``exclude``
    (each an fnmatch pattern, or a substring of the id)."""
    categories = set(categories or ())
    unknown = categories - set(CATEGORIES)
    if unknown:
        raise ValueError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(sorted(unknown))}; "
            f"the categories are {', '.join(CATEGORIES)}"
        )
    patterns, exclude = list(patterns or ()), list(exclude or ())

    def matches(case_id: str, pattern: str) -> bool:
        return fnmatch.fnmatchcase(case_id, pattern) or pattern in case_id

    def wanted(case: Case) -> bool:
        if categories and case.category not in categories:
            return False
        if any(matches(case.id, p) for p in exclude):
            return False
        return not patterns or any(matches(case.id, p) for p in patterns)

    return [case for case in cases if wanted(case)]


def _hook_dict(backend: Backend, hook: str) -> dict[str, str]:
    impl = backend.hook(hook)
    if impl is None:
        return {}
    value = impl()
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise DeclarationError(
            f"backend {backend.name!r}: cropcore_{hook}() must return a dict of str to str, "
            f"got {value!r:.200}"
        )
    return dict(value)


def declarations(backend: Backend) -> tuple[dict[str, str], dict[str, str]]:
    """``(expected failures, tolerances)`` the backend declares, checked."""
    expected = _hook_dict(backend, "conformance_expected_failures")
    tolerances = _hook_dict(backend, "conformance_tolerances")
    for pattern, name in tolerances.items():
        if name not in TOLERANCES:
            raise DeclarationError(
                f"backend {backend.name!r} declares tolerance {name!r} for {pattern!r}; the "
                f"tolerance classes are {', '.join(TOLERANCES)}"
            )
    for pattern, reason in expected.items():
        if not reason.strip():
            raise DeclarationError(
                f"backend {backend.name!r} declares an expected failure {pattern!r} without a reason"
            )
    # A typo in a pattern would otherwise show only as "stale", and only on a full --strict run.
    ids = [case.id for case in all_cases()]
    for kind, patterns in (("an expected failure", expected), ("a tolerance", tolerances)):
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(case_id, pattern) for case_id in ids):
                raise DeclarationError(
                    f"backend {backend.name!r} declares {kind} for {pattern!r}, which matches no "
                    "case id of the suite (a typo? `cropcore conformance --list` prints the ids)"
                )
    return expected, tolerances


@dataclass
class Result:
    """A case's outcome in a run: ``status`` is passed, failed, xfailed or skipped."""

    id: str
    category: str
    op: str
    source: str
    status: str
    message: str = ""
    elements: int = 0
    identical: int = 0
    max_abs: float = 0.0
    max_ulp: int = 0
    tolerance: str = "exact"
    declared: str = ""  # the expected-failure reason, when a declaration matches
    seconds: float = 0.0
    declined: int = 0  # calls the backend declined
    claimed: int = 0  # of those, calls its BackendInfo claims to support

    @property
    def ran(self) -> bool:
        """Whether the backend ran the case (it may still have declined some of its calls)."""
        return self.status in ("passed", "failed", "xfailed")

    @classmethod
    def of(cls, case: Case, outcome: Outcome, declared: str = "", seconds: float = 0.0) -> Result:
        status = outcome.status
        if status == "failed" and declared:
            status = "xfailed"
        return cls(
            case.id,
            case.category,
            case.op,
            case.source,
            status,
            outcome.message,
            outcome.elements,
            outcome.identical,
            outcome.max_abs,
            outcome.max_ulp,
            outcome.tolerance,
            declared,
            seconds,
            outcome.declined,
            outcome.claimed,
        )


@dataclass
class CategorySummary:
    name: str
    cases: int = 0
    passed: int = 0
    failed: int = 0
    xfailed: int = 0
    skipped: int = 0
    elements: int = 0
    identical: int = 0
    max_abs: float = 0.0
    max_ulp: int = 0
    tolerances: dict[str, int] = field(default_factory=dict)
    run: int = 0  # cases the backend ran
    declined: int = 0  # cases with calls the backend declined
    claimed: int = 0  # cases with declined calls its BackendInfo claims to support
    declined_skips: int = 0  # cases skipped because the backend declined every call

    @property
    def coverage(self) -> float | None:
        """Cases run over cases run or declined (``None`` when there are neither)."""
        declined_only = self.declined_skips
        return self.run / (self.run + declined_only) if self.run + declined_only else None

    @property
    def bit_identical(self) -> float | None:
        return self.identical / self.elements if self.elements else None


@dataclass
class Report:
    """Everything a run found, and what the report prints."""

    backend: str
    backend_version: str
    distribution: str
    reference: str
    results: list[Result]
    expected_failures: dict[str, str]
    tolerances: dict[str, str]
    seed: int
    max_examples: int
    device: str | None
    seconds: float
    selected: bool  # only part of the suite was run
    provenance: str
    strict: bool = False
    isolation: str = ""  # how cases were isolated from the run ("" for in-process)
    min_coverage: float | None = None  # the share of cases run that the run must reach

    def by_category(self) -> list[CategorySummary]:
        summaries = {name: CategorySummary(name) for name in CATEGORIES}
        for r in self.results:
            s = summaries[r.category]
            s.cases += 1
            setattr(s, r.status, getattr(s, r.status) + 1)
            s.elements += r.elements
            s.identical += r.identical
            s.max_abs = max(s.max_abs, r.max_abs)
            s.max_ulp = max(s.max_ulp, r.max_ulp)
            if r.status != "skipped":
                s.tolerances[r.tolerance] = s.tolerances.get(r.tolerance, 0) + 1
            s.run += r.ran
            s.declined += bool(r.declined)
            s.declined_skips += bool(r.declined) and not r.ran
            s.claimed += bool(r.claimed)
        return [s for s in summaries.values() if s.cases]

    def total(self) -> CategorySummary:
        total = CategorySummary("total")
        for s in self.by_category():
            for attr in (
                "cases",
                "passed",
                "failed",
                "xfailed",
                "skipped",
                "elements",
                "identical",
                "run",
                "declined",
                "declined_skips",
                "claimed",
            ):
                setattr(total, attr, getattr(total, attr) + getattr(s, attr))
            total.max_abs = max(total.max_abs, s.max_abs)
            total.max_ulp = max(total.max_ulp, s.max_ulp)
            for k, v in s.tolerances.items():
                total.tolerances[k] = total.tolerances.get(k, 0) + v
        return total

    @property
    def failures(self) -> list[Result]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def unexpected_passes(self) -> list[Result]:
        """Cases a declaration covers that passed anyway."""
        return [r for r in self.results if r.declared and r.status == "passed"]

    def declaration_status(self) -> dict[str, str]:
        """For each expected-failure pattern: ``"matched"``, ``"stale"`` or ``"not run"``."""
        status = {}
        for pattern in self.expected_failures:
            matching = [r for r in self.results if fnmatch.fnmatchcase(r.id, pattern)]
            if any(r.status == "xfailed" for r in matching):
                status[pattern] = "matched"
            elif matching or not self.selected:
                status[pattern] = "stale"
            else:
                status[pattern] = "not run"
        return status

    @property
    def stale(self) -> list[str]:
        return [p for p, s in self.declaration_status().items() if s == "stale"]

    @property
    def claimed_declines(self) -> list[Result]:
        """Cases with calls the backend declined although its ``BackendInfo`` claims them."""
        return [r for r in self.results if r.claimed]

    @property
    def coverage_shortfall(self) -> str:
        """Why the run misses ``min_coverage`` (``""`` if it does not, or none was asked)."""
        coverage = self.total().coverage
        if self.min_coverage is None or coverage is None or coverage >= self.min_coverage:
            return ""
        return (
            f"the backend ran {100 * coverage:.1f}% of the cases it did not decline or skip "
            f"for another reason; --min-coverage asks for {100 * self.min_coverage:g}%"
        )

    @property
    def exit_code(self) -> int:
        """0: conforms; 1: an unexpected failure (or, with ``strict``, a stale declaration or a
        declined call the backend claims to support; or coverage below ``min_coverage``), or
        nothing ran at all."""
        if self.failures or self.coverage_shortfall:
            return 1
        if self.strict and (self.stale or self.claimed_declines):
            return 1
        return 0 if any(r.status in ("passed", "xfailed") for r in self.results) else 1

    @property
    def verdict(self) -> str:
        if self.exit_code == 0:
            return "PASSED"
        problems = self.failures or self.stale or self.claimed_declines or self.coverage_shortfall
        return "FAILED" if problems else "NOTHING RAN"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form (``cropcore conformance --json``)."""

        def summary(s: CategorySummary) -> dict[str, Any]:
            return {
                "cases": s.cases,
                "passed": s.passed,
                "failed": s.failed,
                "expected_failures": s.xfailed,
                "skipped": s.skipped,
                "worst_abs_error": s.max_abs,
                "worst_ulp": s.max_ulp,
                "bit_identical": s.bit_identical,
                "elements": s.elements,
                "tolerances": s.tolerances,
                "run": s.run,
                "declined": s.declined,
                "declined_claimed": s.claimed,
                "coverage": s.coverage,
            }

        return {
            "backend": self.backend,
            "version": self.backend_version,
            "distribution": self.distribution,
            "reference": self.reference,
            "verdict": self.verdict,
            "exit_code": self.exit_code,
            "seed": self.seed,
            "max_examples": self.max_examples,
            "device": self.device,
            "seconds": round(self.seconds, 3),
            "partial": self.selected,
            "isolation": self.isolation or None,
            "recorded_vectors": self.provenance,
            "tolerance_classes": {k: v.description for k, v in TOLERANCES.items()},
            "declared_tolerances": self.tolerances,
            "expected_failures": {
                p: {"reason": r, "status": self.declaration_status()[p]}
                for p, r in self.expected_failures.items()
            },
            "categories": {s.name: summary(s) for s in self.by_category()},
            "total": summary(self.total()),
            "results": [r.__dict__ for r in self.results],
        }


def resolve_backend(name: str) -> Backend:
    """The backend to certify; raises cropcore's own errors if unknown or unavailable.

    The same look-up as ``backend=NAME`` (names and aliases, the same messages).
    """
    from cropcore.dispatch import named_backend

    return named_backend(name, "the conformance suite")


def run(
    backend: str,
    *,
    categories: Iterable[str] | None = None,
    patterns: Iterable[str] | None = None,
    exclude: Iterable[str] | None = None,
    seed: int = DEFAULT_SEED,
    max_examples: int = DEFAULT_MAX_EXAMPLES,
    device: str | None = None,
    shrink: bool = True,
    reference: str = "numpy",
    strict: bool = False,
    min_coverage: float | None = None,
    on_result: Callable[[Result], None] | None = None,
    isolate: bool = False,
    timeout: float | None = None,
    plugins: Sequence[str] = (),
    on_start: Callable[[list[Case]], None] | None = None,
) -> Report:
    """Run the suite (or the selected part of it) against ``backend`` and return the report.

    ``strict``: a stale declaration, or a declined call that the backend's ``BackendInfo``
    claims to support, fails the run. ``min_coverage`` (0 to 1): the run fails if the backend ran
    a smaller share of the cases than this, the cases it declined counting as not run.
    ``isolate``: run the cases in a worker process (:mod:`.isolation`), so that a case on which
    the backend crashes, aborts or hangs (no result within ``timeout`` seconds) fails by name and
    the run goes on. ``plugins``: modules to import and register as backend plugins first (the
    worker imports them too). ``on_start`` receives the selected cases before the first runs,
    ``on_result`` each result as it comes.

    Raises ``cropcore.errors.UnknownBackendError`` / ``BackendUnavailableError`` when the backend
    (or the reference) cannot be used, :class:`DeclarationError` for malformed declarations, and
    ``isolation.IsolationError`` when a worker process cannot start.
    """
    if min_coverage is not None and not 0 <= min_coverage <= 1:
        raise ValueError(f"min_coverage must be between 0 and 1, got {min_coverage!r}")
    if timeout is not None and not isolate:
        raise ValueError("timeout applies to isolated runs only: pass isolate=True")
    if plugins:
        from cropcore_conformance.isolation import register

        for module in plugins:
            register(module)
    chosen = resolve_backend(backend)
    resolve_backend(reference)
    expected, tolerances = declarations(chosen)
    ctx = Context(chosen, reference, tolerances, seed, max_examples, device, shrink)
    cases = select(all_cases(), categories, patterns, exclude)
    isolated = None
    if isolate:
        from cropcore_conformance.isolation import DEFAULT_TIMEOUT, IsolatedRunner, plugin_modules

        isolated = IsolatedRunner(
            chosen.name,
            reference=reference,
            tolerances=tolerances,
            seed=seed,
            max_examples=max_examples,
            device=device,
            shrink=shrink,
            plugins=[*plugins, *plugin_modules(chosen)],
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        )
    if on_start is not None:
        on_start(cases)
    results = []
    started = time.perf_counter()
    try:
        for case in cases:
            declared = next(
                (reason for p, reason in expected.items() if fnmatch.fnmatchcase(case.id, p)), ""
            )
            t0 = time.perf_counter()
            outcome = isolated.run_case(case) if isolated is not None else case.run(ctx)
            result = Result.of(case, outcome, declared, time.perf_counter() - t0)
            results.append(result)
            if on_result is not None:
                on_result(result)
    finally:
        if isolated is not None:
            isolated.close()
    from cropcore_conformance.vectors import provenance

    return Report(
        backend=chosen.name,
        backend_version=chosen.version,
        distribution=chosen.distribution or chosen.entry_point,
        reference=reference,
        results=results,
        expected_failures=expected,
        tolerances=tolerances,
        seed=seed,
        max_examples=max_examples,
        device=device,
        seconds=time.perf_counter() - started,
        selected=bool(categories or patterns or exclude),
        provenance=provenance(),
        strict=strict,
        min_coverage=min_coverage,
        isolation=(
            f"each case in a worker process, {isolated.timeout:g} s per case"
            if isolated is not None
            else ""
        ),
    )
