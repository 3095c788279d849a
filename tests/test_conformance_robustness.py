"""The conformance run is robust: it reproduces from its seed in any process, and it counts what
a backend declined (issue 20)."""

from __future__ import annotations

import importlib
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import cropcore_conformance
import cropcore_numpy
from cropcore import BackendInfo, hookimpl
from cropcore.registry import registry
from cropcore_conformance.isolation import IsolationError
from cropcore_conformance.runner import main, render_text

ROOT = Path(__file__).resolve().parents[1]


def _module_with_literals(directory: Path) -> None:
    literals = [
        0.49999997,
        12345,
        3e38,
        -7,
        0.3333,
        1e-40,
        65535,
        2**53 + 1,
        255,
        4.5,
        0.125,
        3,
        5,
        6,
    ]
    (directory / "module_with_literals.py").write_text(
        "".join(f"VALUE_{i} = {value!r}\n" for i, value in enumerate(literals * 3))
    )


def _digests(tmp_path: Path, extra_import: str | None) -> str:
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        {"import " + extra_import if extra_import else ""}
        from cropcore_conformance.properties import PROPERTIES, examples_digest
        print(" ".join(examples_digest(key, 20240229, 20) for key in PROPERTIES))
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONHASHSEED": "random"},
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_the_same_seed_draws_the_same_property_examples_in_processes_with_different_imports(
    tmp_path,
):
    pytest.importorskip("hypothesis")
    # hypothesis harvests numeric literals from the local modules a process imported; a module
    # full of them must not change what a seed draws.
    _module_with_literals(tmp_path)
    plain = _digests(tmp_path, None)
    with_literals = _digests(tmp_path, "module_with_literals")
    assert len(plain.split()) == 6
    assert plain == with_literals


# --------------------------------------------------------------------------------------------------
# A backend that crashes, aborts or hangs on a few inputs fails exactly those cases (--isolate)

PLANTED = '''
"""A backend that delegates to the reference, and crashes on a few inputs (PLANTED_MODE=crash)
or raises there instead (any other mode: what the test runs in its own process)."""
import ctypes
import os
import time

import numpy as np

import cropcore_numpy
from cropcore import BackendInfo, hookimpl


def trouble(kind):
    if os.environ.get("PLANTED_MODE") != "crash":
        raise RuntimeError(f"planted {kind}")
    if kind == "segfault":
        ctypes.string_at(0)
    elif kind == "abort":
        os.abort()
    time.sleep(3600)


@hookimpl
def cropcore_backend_info():
    return BackendInfo(name="planted-crasher", version="1.0")


@hookimpl
def cropcore_crop_and_resize(call):
    if call.image.dtype == np.uint16 and call.method == "nearest" and call.channels_first:
        trouble("segfault")
    return cropcore_numpy.cropcore_crop_and_resize(call=call)


@hookimpl
def cropcore_crop_and_resize_grad_image(call):
    if call.method == "nearest" and call.dtype == "float16" and call.channels_first:
        trouble("abort")
    return cropcore_numpy.cropcore_crop_and_resize_grad_image(call=call)


@hookimpl
def cropcore_crop_and_resize_grad_boxes(call):
    if call.image.dtype == np.int8 and call.channels_first:
        trouble("hang")
    return cropcore_numpy.cropcore_crop_and_resize_grad_boxes(call=call)
'''
SELECTION = {"categories": ["edge-cases", "gradients"], "patterns": ["*-nchw"]}
SIGNALS = {"segfault": "signal 11 (SIGSEGV)", "abort": "signal 6 (SIGABRT)", "hang": "hung: no"}


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """The planted backend as an importable module; the cases it crashes on, by kind."""
    (tmp_path / "planted_crasher.py").write_text(PLANTED)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PLANTED_MODE", "raise")
    yield tmp_path, _planted_cases()
    if registry.get("planted-crasher") is not None:
        registry.unregister("planted-crasher")
    sys.modules.pop("planted_crasher", None)


def _planted_cases() -> dict[str, str]:
    # In this process the plant raises where it would crash: the failures name its cases.
    report = cropcore_conformance.run("planted-crasher", plugins=["planted_crasher"], **SELECTION)
    cases = {r.id: r.message.removeprefix("raised RuntimeError: planted ") for r in report.failures}
    assert set(cases.values()) == {"segfault", "abort", "hang"}
    assert len(cases) < 10  # a few cases, not whole categories
    return cases


def _check_failures(failures: dict[str, str], planted_cases: dict[str, str]) -> None:
    assert set(failures) == set(planted_cases)
    for case_id, kind in planted_cases.items():
        assert SIGNALS[kind] in failures[case_id], (case_id, failures[case_id])


def test_an_isolated_run_fails_exactly_the_cases_that_crash_abort_or_hang(planted, monkeypatch):
    _, planted_cases = planted
    monkeypatch.setenv("PLANTED_MODE", "crash")  # for the workers: this process never calls it
    # Registered by the fixture's run, at run time: the worker imports the module by itself.
    report = cropcore_conformance.run("planted-crasher", isolate=True, timeout=5, **SELECTION)
    _check_failures({r.id: r.message for r in report.failures}, planted_cases)
    assert report.total().cases == len(
        cropcore_conformance.select(
            cropcore_conformance.all_cases(), SELECTION["categories"], SELECTION["patterns"]
        )
    )
    assert report.total().passed == report.total().cases - len(planted_cases)
    assert report.exit_code == 1
    text = render_text(report)
    assert "isolation: each case in a worker process, 5 s per case" in text
    assert "Fatal Python error: Segmentation fault" in text  # the worker's faulthandler report


def test_the_cli_reports_crashing_cases_and_finishes(planted):
    directory, planted_cases = planted
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cropcore_conformance",
            "planted-crasher",
            "--plugin",
            "planted_crasher",
            "--isolate",
            "--timeout",
            "5",
            "--json",
            "-c",
            "edge-cases",
            "-c",
            "gradients",
            "-k",
            "*-nchw",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PLANTED_MODE": "crash", "PYTHONPATH": _path(directory)},
    )
    assert result.returncode == 1, result.stderr[-2000:]
    data = json.loads(result.stdout)
    _check_failures(
        {r["id"]: r["message"] for r in data["results"] if r["status"] == "failed"}, planted_cases
    )
    assert data["verdict"] == "FAILED"
    assert data["total"]["passed"] == data["total"]["cases"] - len(planted_cases)


def test_the_pytest_plugin_reports_crashing_cases_and_finishes(planted):
    directory, planted_cases = planted
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "-q",
            "-p",
            "cropcore_conformance.pytest_plugin",
            "--cropcore-backend",
            "planted-crasher",
            "--cropcore-plugin",
            "planted_crasher",
            "--cropcore-isolate",
            "--cropcore-timeout",
            "5",
            "--cropcore-category",
            "edge-cases",
            "--cropcore-category",
            "gradients",
            "-k",
            "nchw",
            "-rf",
        ],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PLANTED_MODE": "crash", "PYTHONPATH": _path(directory)},
    )
    assert result.returncode == 1, result.stdout[-3000:]
    failed = re.findall(
        r"^FAILED cropcore-conformance\[planted-crasher\]::(\S+)", result.stdout, re.M
    )
    assert set(failed) == set(planted_cases)
    assert f"{len(planted_cases)} failed" in result.stdout
    assert "signal 11 (SIGSEGV)" in result.stdout
    assert "cropcore conformance: planted-crasher" in result.stdout  # the summary came


def _path(directory: Path) -> str:
    return os.pathsep.join([str(directory), *(p for p in sys.path if p)])


def test_isolation_refuses_a_backend_a_worker_cannot_import(backend_module):
    name = backend_module("conformance-unimportable")
    with pytest.raises(IsolationError, match="pass --plugin MODULE"):
        cropcore_conformance.run(name, isolate=True, patterns=["errors/forward/image-rank-3"])


def test_a_timeout_without_isolation_is_refused():
    with pytest.raises(ValueError, match="isolate=True"):
        cropcore_conformance.run("numpy", timeout=5, patterns=["errors/forward/image-rank-3"])


# --------------------------------------------------------------------------------------------------
# Coverage: declined calls are counted, and --strict / --min-coverage hold a backend to its claims


@pytest.fixture
def backend_module():
    """Register a plugin module, made here, that delegates to the reference and declines what
    ``declines(call)`` says."""
    names = []

    def register(name, declines=None, **info):
        module = types.ModuleType(f"conformance_robustness_{name.replace('-', '_')}")
        backend_info = BackendInfo(name=name, version="1.0", **info)
        hooks = {
            "cropcore_backend_info": lambda: backend_info,
            "cropcore_crop_and_resize": lambda call: cropcore_numpy.cropcore_crop_and_resize(
                call=call
            ),
        }
        if declines is not None:
            hooks["cropcore_backend_declines"] = declines
        for hook, function in hooks.items():
            function.__name__ = hook
            setattr(module, hook, hookimpl(function))
        registry.register(module, name=name)
        names.append(name)
        return name

    yield register
    for name in names:
        if registry.get(name) is not None:
            registry.unregister(name)


def _no_nearest(call):
    return "no nearest here" if getattr(call, "method", None) == "nearest" else None


def test_declined_cases_are_counted_and_not_passes(backend_module):
    name = backend_module("conformance-declines-nearest", declines=_no_nearest)
    report = cropcore_conformance.run(name, categories=["edge-cases"], patterns=["*/forward/*"])
    edge = report.by_category()[0]
    nearest = [r for r in report.results if r.id.endswith(("-nearest", "-nearest-nchw"))]
    assert nearest
    assert all(r.status == "skipped" and r.declined == 1 for r in nearest)
    assert edge.declined >= len(nearest)
    assert edge.run == edge.passed
    assert edge.run + edge.declined_skips <= edge.cases
    text = render_text(report)
    assert re.search(rf"^  edge-cases\s+{edge.run} run\s+{edge.declined} declined", text, re.M)
    assert report.to_dict()["categories"]["edge-cases"]["declined"] == edge.declined


def test_strict_fails_a_backend_that_declines_what_its_info_claims(backend_module, capsys):
    claims = backend_module("conformance-claims-nearest", declines=_no_nearest)
    honest = backend_module(
        "conformance-bilinear-only", declines=_no_nearest, methods=("bilinear",)
    )
    args = ["-c", "edge-cases", "-k", "*/forward/*", "--plain"]
    assert main([claims, *args]) == 0  # declines are skips without --strict ...
    assert "would fail the run with --strict" in capsys.readouterr().out
    assert main([claims, *args, "--strict"]) == 1  # ... and failures with it
    out = capsys.readouterr().out
    assert "declined although its BackendInfo claims to support them" in out
    assert "DECLINED edge-cases/forward/" in out
    assert out.rstrip().splitlines()[-1].startswith("FAILED")
    # A backend that does not claim nearest declines it (cropcore does) without failing.
    assert main([honest, *args, "--strict"]) == 0
    capsys.readouterr()


def test_min_coverage_fails_a_backend_that_declines_too_much(backend_module, capsys):
    name = backend_module("conformance-coverage", declines=_no_nearest)
    args = [name, "-c", "edge-cases", "-k", "*/forward/*", "--plain"]
    assert main([*args, "--min-coverage", "10"]) == 0
    assert main([*args, "--min-coverage", "100"]) == 1
    assert "COVERAGE: the backend ran" in capsys.readouterr().out
    assert main([*args, "--min-coverage", "101"]) == 2


def test_a_property_case_counts_the_examples_its_backend_declined(backend_module):
    name = backend_module("conformance-declines-some", declines=_no_nearest_for_batch_of_two)
    report = cropcore_conformance.run(name, patterns=["properties/forward/bilinear"])
    (result,) = report.results
    assert result.status == "passed"
    assert 0 < result.declined < 40
    assert result.claimed == result.declined
    assert f"the backend declined {result.declined} of them" in result.message


def _no_nearest_for_batch_of_two(call):
    return "no batches of two" if call.image.shape[0] == 2 else None


# --------------------------------------------------------------------------------------------------
# Progress on a terminal, the slowest cases at the end


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_shown_on_a_terminal_and_the_slowest_cases_at_the_end(monkeypatch, capsys):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["numpy", "-c", "tf-tests", "--plain"]) == 0
    n = len([c for c in cropcore_conformance.all_cases() if c.category == "tf-tests"])
    assert f"] {n}/{n}  tf-tests/" in terminal.getvalue()
    assert terminal.getvalue().endswith("\r")  # the bar is cleared before the report
    out = capsys.readouterr().out
    assert "slowest cases:" in out
    assert len(re.findall(r"^ +\d+\.\d\d s  tf-tests/", out, re.M)) == 5
    monkeypatch.setattr(sys, "stderr", terminal := _Terminal())
    assert main(["numpy", "-c", "tf-tests", "--plain", "--no-progress", "--slowest", "0"]) == 0
    assert terminal.getvalue() == ""
    assert "slowest cases:" not in capsys.readouterr().out


def test_property_cases_compare_the_same_examples_in_a_worker_process(tmp_path, monkeypatch):
    # The symptom: with one seed, a property case compared 253 elements in one process
    # and 1,093 in another. This process imports a module full of literals; the worker of
    # --isolate does not.
    pytest.importorskip("hypothesis")
    _module_with_literals(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("module_with_literals")
    try:
        here = cropcore_conformance.run("numpy", categories=["properties"], max_examples=20)
    finally:
        del sys.modules["module_with_literals"]
    there = cropcore_conformance.run(
        "numpy", categories=["properties"], max_examples=20, isolate=True
    )
    # The message names how many examples were drawn and a digest of them.
    assert [(r.id, r.elements, r.message) for r in here.results] == [
        (r.id, r.elements, r.message) for r in there.results
    ]
    assert all(r.elements > 0 for r in here.results)
    digest = re.compile(r"20 examples \(sha256 [0-9a-f]{16}\)")
    assert all(digest.fullmatch(r.message) for r in here.results)


def test_the_pytest_plugin_fails_claimed_declines_with_cropcore_strict(tmp_path):
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_conformance import reference_like
        from cropcore import hookimpl
        from cropcore.registry import registry

        pytest_plugins = ["cropcore_conformance.pytest_plugin"]
        module = reference_like("strict-backend")
        def cropcore_backend_declines(call):
            return "no nearest" if getattr(call, "method", None) == "nearest" else None
        module.cropcore_backend_declines = hookimpl(cropcore_backend_declines)
        registry.register(module, name="strict-backend")
    """)
    )

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-p",
                "no:cacheprovider",
                "-p",
                "no:randomly",
                "-q",
                "-rfs",
                "--cropcore-backend",
                "strict-backend",
                "--cropcore-category",
                "edge-cases",
                "-k",
                "identity",
                *args,
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    lenient = run()
    assert lenient.returncode == 0, lenient.stdout[-2000:]
    assert "2 passed, 2 skipped" in lenient.stdout
    strict = run("--cropcore-strict")
    assert strict.returncode == 1, strict.stdout[-2000:]
    assert "2 failed, 2 passed" in strict.stdout
    assert "declined a call its BackendInfo claims to support" in strict.stdout


def test_cli_usage_errors_of_the_isolation_options(capsys):
    assert main(["numpy", "-c", "errors", "--timeout", "5"]) == 2  # --timeout needs --isolate
    assert "--timeout takes a positive number of seconds, with --isolate" in capsys.readouterr().err
    assert main(["numpy", "-c", "errors", "--isolate", "--timeout", "0"]) == 2
    capsys.readouterr()
    assert main(["numpy", "-c", "errors", "--plugin", "no_such_plugin_module"]) == 2
    assert "No module named 'no_such_plugin_module'" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Behaviour across calls: a declared tolerance class bounds the differences between calls


def test_a_declared_reordered_sums_tolerance_admits_an_unordered_image_gradient(tmp_path):
    from test_conformance_catches_bugs import INFO_HOOK, MUTATIONS, Mutation, make_mutant

    (random_order,) = [m for m in MUTATIONS if m.name == "image-gradient-summed-in-a-random-order"]
    declared = Mutation(
        "declared-random-order",
        (
            *random_order.edits,
            (
                "__init__.py",
                INFO_HOOK,
                "@hookimpl\ndef cropcore_conformance_tolerances():\n"
                '    return {"*/grad_image/*": "reordered-sums"}\n\n\n' + INFO_HOOK,
            ),
        ),
        frozenset(),
    )
    names = []
    try:
        for mutation, name in ((random_order, "undeclared-order"), (declared, "declared-order")):
            registry.register(make_mutant(tmp_path, mutation, name), name=f"mutant-{name}")
            names.append(f"mutant-{name}")
        patterns = ["behaviour/grad_image/*"]
        undeclared = cropcore_conformance.run("mutant-undeclared-order", patterns=patterns)
        assert "behaviour/grad_image/repeatable" in {r.id for r in undeclared.failures}
        report = cropcore_conformance.run("mutant-declared-order", patterns=patterns)
        assert report.exit_code == 0, [(r.id, r.message) for r in report.failures]
        repeatable = next(r for r in report.results if r.id.endswith("/repeatable"))
        assert repeatable.tolerance == "reordered-sums"
        assert repeatable.identical < repeatable.elements  # the sums did differ, within bounds
    finally:
        for name in names:
            registry.unregister(name)
        for key in [k for k in sys.modules if k.startswith("cropcore_mutant_")]:
            del sys.modules[key]
