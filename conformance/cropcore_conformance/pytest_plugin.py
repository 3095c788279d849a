"""A pytest plugin that runs cropcore's conformance suite against a backend, one test per case.

Opt-in (it is not auto-loaded for everyone): enable it and name the backend, with one line in
``pyproject.toml``::

    [tool.pytest.ini_options]
    addopts = "-p cropcore_conformance.pytest_plugin --cropcore-backend=mybackend"

or on the command line, ``pytest -p cropcore_conformance.pytest_plugin --cropcore-backend
mybackend``, or in a root ``conftest.py`` with ``pytest_plugins = ["cropcore_conformance.pytest_plugin"]``
and the ini option ``cropcore_backend = mybackend``. Without a backend the plugin adds nothing.

Each case becomes a test whose node id is ``cropcore-conformance[<backend>]::<case id>``; select with
``-k`` as usual, or with ``--cropcore-category``. A case the backend declares as an expected failure
is marked ``xfail`` with the backend's reason (strict or not as the project's ``xfail_strict``
says); a case it cannot run (an op it lacks, a call it declines, a library missing here) is
skipped. At the end the plugin prints the same per-category summary as ``cropcore conformance``,
and lists stale declarations.

``--cropcore-isolate`` (ini ``cropcore_isolate = true``) runs each case in a worker process, so
that a backend that crashes, aborts or hangs (``--cropcore-timeout``) fails those cases and the
session goes on; ``--cropcore-plugin MODULE`` (ini ``cropcore_plugins``) registers a plugin module
without an entry point, here and in the worker. ``--cropcore-strict`` fails a case whose calls
the backend declined although its ``BackendInfo`` claims to support them.
"""

from __future__ import annotations

import fnmatch
import json
import time
from pathlib import Path
from typing import Any

import pytest

from cropcore_conformance.cases import CATEGORIES, Case, Context, Outcome
from cropcore_conformance.suite import (
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_SEED,
    Report,
    Result,
    all_cases,
    declarations,
    resolve_backend,
    select,
)

__all__ = ["ConformanceFailure", "ConformanceItem", "ConformanceSuite"]

_PROPERTY = "cropcore_conformance"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cropcore-conformance", "cropcore conformance suite")
    group.addoption(
        "--cropcore-backend",
        metavar="NAME",
        help="run cropcore's conformance suite against this backend",
    )
    group.addoption(
        "--cropcore-category",
        action="append",
        metavar="CATEGORY",
        choices=list(CATEGORIES),
        help="only this category of the suite (repeatable)",
    )
    group.addoption(
        "--cropcore-seed",
        type=int,
        metavar="N",
        help=f"hypothesis seed for the property cases (default {DEFAULT_SEED})",
    )
    group.addoption(
        "--cropcore-max-examples",
        type=int,
        metavar="N",
        help=f"examples per property case (default {DEFAULT_MAX_EXAMPLES})",
    )
    group.addoption(
        "--cropcore-device",
        metavar="DEVICE",
        help="move every input to the backend's array library on this device",
    )
    group.addoption(
        "--cropcore-isolate",
        action="store_true",
        default=None,
        help="run each case in a worker process: a crash, abort or hang fails that case only",
    )
    group.addoption(
        "--cropcore-timeout",
        type=float,
        metavar="SECONDS",
        help="with --cropcore-isolate: a case with no result in this time fails as hung",
    )
    group.addoption(
        "--cropcore-plugin",
        action="append",
        metavar="MODULE",
        help="import MODULE and register it as a backend plugin first (repeatable)",
    )
    group.addoption(
        "--cropcore-strict",
        action="store_true",
        default=None,
        help="a declined call that the backend's BackendInfo claims to support fails its case",
    )
    parser.addini("cropcore_isolate", "run each case in a worker process", type="bool")
    parser.addini("cropcore_timeout", "seconds an isolated case may take", default="")
    parser.addini("cropcore_plugins", "plugin modules to register first", type="args", default=[])
    parser.addini(
        "cropcore_strict", "fail a declined call the backend claims to support", type="bool"
    )
    parser.addini("cropcore_backend", "backend the conformance suite certifies", default="")
    parser.addini(
        "cropcore_categories",
        "conformance categories to run (default: all)",
        type="args",
        default=[],
    )
    parser.addini("cropcore_seed", "hypothesis seed for the property cases", default="")
    parser.addini("cropcore_max_examples", "examples per property case", default="")


def _setting(config: pytest.Config, option: str, ini: str) -> Any:
    value = config.getoption(option)
    if value is None or value == []:
        value = config.getini(ini)
    return value or None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{_PROPERTY}: a case of cropcore's conformance suite")
    name = _setting(config, "cropcore_backend", "cropcore_backend")
    if name:
        config.pluginmanager.register(_Session(config, name), "cropcore-conformance-session")


class ConformanceFailure(Exception):
    """A conformance case failed (the message says how)."""


class _Session:
    """The suite's state in one pytest run: the backend, its declarations, the results."""

    def __init__(self, config: pytest.Config, name: str) -> None:
        self.config = config
        self.name = name
        self.results: list[Result] = []
        self._ctx: Context | None = None
        self.expected: dict[str, str] = {}
        seed = _setting(config, "cropcore_seed", "cropcore_seed")
        examples = _setting(config, "cropcore_max_examples", "cropcore_max_examples")
        self.seed = int(seed) if seed is not None else DEFAULT_SEED
        self.max_examples = int(examples) if examples is not None else DEFAULT_MAX_EXAMPLES
        self.device = config.getoption("cropcore_device")
        self.isolate = bool(_setting(config, "cropcore_isolate", "cropcore_isolate"))
        self.strict = bool(_setting(config, "cropcore_strict", "cropcore_strict"))
        timeout = _setting(config, "cropcore_timeout", "cropcore_timeout")
        self.timeout = float(timeout) if timeout is not None else None
        self.plugins = list(_setting(config, "cropcore_plugin", "cropcore_plugins") or ())
        self._isolated: Any = None

    def context(self) -> Context:
        if self._ctx is None:
            try:
                if self.plugins:
                    from cropcore_conformance.isolation import register

                    for module in self.plugins:
                        register(module)
                backend = resolve_backend(self.name)
                self.expected, tolerances = declarations(backend)
            except (ValueError, RuntimeError, ImportError) as exc:  # unknown, malformed, ...
                raise pytest.UsageError(f"cropcore conformance: {exc}") from None
            self._ctx = Context(
                backend, "numpy", tolerances, self.seed, self.max_examples, self.device
            )
        return self._ctx

    def run_case(self, case: Case) -> Outcome:
        """Run ``case`` here, or in the worker process with ``--cropcore-isolate``."""
        ctx = self.context()
        if not self.isolate:
            return case.run(ctx)
        if self._isolated is None:
            from cropcore_conformance.isolation import (
                DEFAULT_TIMEOUT,
                IsolatedRunner,
                plugin_modules,
            )

            self._isolated = IsolatedRunner(
                ctx.name,
                reference=ctx.reference,
                tolerances=ctx.tolerances,
                seed=ctx.seed,
                max_examples=ctx.max_examples,
                device=ctx.device,
                plugins=[*self.plugins, *plugin_modules(ctx.backend)],
                timeout=DEFAULT_TIMEOUT if self.timeout is None else self.timeout,
            )
        return self._isolated.run_case(case)

    def pytest_sessionfinish(self) -> None:
        if self._isolated is not None:
            self._isolated.close()
            self._isolated = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        self.context()
        suite = ConformanceSuite.from_parent(
            session,
            name=f"cropcore-conformance[{self.name}]",
            nodeid=f"cropcore-conformance[{self.name}]",
            path=session.path,
        )
        suite.conformance = self
        items.extend(suite.collect())

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when != "call":
            return
        for key, value in report.user_properties:
            if key == _PROPERTY:
                self.results.append(Result(**json.loads(value)))

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.results:
            return
        from cropcore_conformance.runner import render_text
        from cropcore_conformance.vectors import provenance

        ctx = self.context()
        categories = self.config.getoption("cropcore_category") or self.config.getini(
            "cropcore_categories"
        )
        report = Report(
            ctx.name,
            ctx.backend.version,
            ctx.backend.distribution,
            "numpy",
            sorted(self.results, key=lambda r: list(CATEGORIES).index(r.category)),
            self.expected,
            ctx.tolerances,
            ctx.seed,
            ctx.max_examples,
            ctx.device,
            sum(r.seconds for r in self.results),
            bool(categories) or len(self.results) < len(all_cases()),
            provenance(),
            strict=self.strict,
            isolation="each case in a worker process" if self.isolate else "",
        )
        terminalreporter.write_sep("=", f"cropcore conformance: {ctx.name}")
        # The failures themselves are in pytest's own report above: count them only.
        text = render_text(report, max_failures=0, exit_status=False, slowest=0)  # see --durations
        for line in text.splitlines():
            terminalreporter.write_line(line)


class ConformanceSuite(pytest.Collector):
    """The suite's cases for one backend (a collector with no file of its own)."""

    conformance: _Session

    def collect(self) -> list[pytest.Item]:
        session = self.conformance
        categories = self.config.getoption("cropcore_category") or self.config.getini(
            "cropcore_categories"
        )
        items = []
        for case in select(all_cases(), categories or None):
            item = ConformanceItem.from_parent(self, name=case.id, case=case)
            item.add_marker(getattr(pytest.mark, _PROPERTY))
            reason = next(
                (r for p, r in session.expected.items() if fnmatch.fnmatchcase(case.id, p)), None
            )
            if reason is not None:
                item.add_marker(pytest.mark.xfail(reason=reason, raises=ConformanceFailure))
            items.append(item)
        return items

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.name


class ConformanceItem(pytest.Item):
    """One conformance case run as a test."""

    def __init__(self, *, case: Case, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        session: _Session = self.parent.conformance  # type: ignore[attr-defined]
        started = time.perf_counter()
        outcome: Outcome = session.run_case(self.case)
        declared = next(
            (r for p, r in session.expected.items() if fnmatch.fnmatchcase(self.case.id, p)), ""
        )
        result = Result.of(self.case, outcome, declared, time.perf_counter() - started)
        self.user_properties.append((_PROPERTY, json.dumps(result.__dict__)))
        if outcome.claimed and session.strict:
            raise ConformanceFailure(
                f"declined a call its BackendInfo claims to support ({outcome.message})"
            )
        if outcome.status == "skipped":
            pytest.skip(outcome.message)
        if outcome.status == "failed":
            raise ConformanceFailure(outcome.message)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ConformanceFailure):
            lines = [
                f"conformance case {self.case.id} failed on backend "
                f"{self.parent.conformance.name!r}:",  # type: ignore[attr-defined]
                f"  {excinfo.value}",
            ]
            if self.case.description:
                lines.append(f"  (case: {self.case.description})")
            return "\n".join(lines)
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, None, self.case.id
