"""The conformance suite itself: its cases, its report, its exit codes, its declarations, its
command line and its pytest plugin. (That it catches wrong backends: test_conformance_catches_bugs.py.)"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

import cropcore_conformance
import cropcore_numpy
from cropcore import BackendInfo, hookimpl
from cropcore.ops import OPS as core_ops
from cropcore.registry import registry
from cropcore_conformance import CATEGORIES, OPS, TOLERANCES, DeclarationError
from cropcore_conformance.runner import main, render_rich, render_text

ROOT = Path(__file__).resolve().parents[1]
ID = re.compile(r"^(?P<category>[a-z-]+)/(?P<op>[a-z_0-9]+)/(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)$")


# --------------------------------------------------------------------------------------------------
# Backends made for these tests: the reference with one thing changed


def reference_like(name: str, *, declarations=None, tolerances=None, change=None, **info):
    """A plugin module that delegates every op to cropcore_numpy, with ``change`` applied.

    ``change(op, call, result)`` returns the (possibly altered) result.
    """
    module = types.ModuleType(f"conformance_test_backend_{name.replace('-', '_')}")
    ops = info.pop("ops", None) or tuple(OPS.values())
    backend_info = BackendInfo(name=name, version="1.0", **info)
    module.cropcore_backend_info = hookimpl(lambda: backend_info)
    module.cropcore_backend_info.__name__ = "cropcore_backend_info"
    for op in ops:
        # crop2d has no hook in the reference: the core slices (cropcore.ops.OPS[op].in_core).
        reference = getattr(cropcore_numpy, f"cropcore_{op}", None) or core_ops[op].in_core

        def impl(call, _reference=reference, _op=op):
            result = _reference(call=call)
            return change(_op, call, result) if change else result

        impl.__name__ = f"cropcore_{op}"
        setattr(module, impl.__name__, hookimpl(impl))
    if declarations is not None:
        module.cropcore_conformance_expected_failures = hookimpl(lambda: declarations)
        module.cropcore_conformance_expected_failures.__name__ = (
            "cropcore_conformance_expected_failures"
        )
    if tolerances is not None:
        module.cropcore_conformance_tolerances = hookimpl(lambda: tolerances)
        module.cropcore_conformance_tolerances.__name__ = "cropcore_conformance_tolerances"
    return module


@pytest.fixture
def backend():
    """Register :func:`reference_like` backends for one test."""
    names = []

    def register(name: str, **kwargs) -> str:
        registry.register(reference_like(name, **kwargs), name=name)
        names.append(name)
        return name

    yield register
    for name in names:
        if registry.get(name) is not None:
            registry.unregister(name)


def wrong_crop2d(op, call, result):
    if op == "crop2d" and result.size:
        result = np.array(result, copy=True)
        result.reshape(-1)[0] = result.reshape(-1)[-1] if result.dtype == bool else 7
    return result


def one_ulp_off(op, call, result):
    if op == "crop_and_resize":
        return np.nextafter(result, np.float32(np.inf))
    return result


# --------------------------------------------------------------------------------------------------
# The cases


def test_case_ids_are_unique_and_well_formed():
    cases = cropcore_conformance.all_cases()
    ids = [c.id for c in cases]
    assert len(ids) == len(set(ids))
    for case in cases:
        match = ID.match(case.id)
        assert match, case.id
        assert match["category"] in CATEGORIES, case.id
        assert match["op"] in OPS, case.id
        assert case.category == match["category"]
        assert case.op == match["op"]


def test_every_category_has_cases_and_every_op_is_covered():
    cases = cropcore_conformance.all_cases()
    for category in CATEGORIES:
        ops = {c.op for c in cases if c.category == category}
        assert ops, f"no case in {category}"
    # TensorFlow's and Keras's ops in every category built on them; roi_align's in its own
    roi_ops = {"roi_align", "roi_align_grad"}
    for category in ("tf-vectors", "tf-tests", "properties", "errors", "round-trips"):
        assert {c.op for c in cases if c.category == category} == set(OPS) - roi_ops, category
    assert {c.op for c in cases if c.category == "roi-align"} == roi_ops


def test_published_case_ids_are_never_removed():
    """Case ids are public API (expected-failure declarations name them)."""
    published = (ROOT / "tests" / "data" / "conformance_case_ids.txt").read_text().split()
    current = {c.id for c in cropcore_conformance.all_cases()}
    removed = [i for i in published if i not in current]
    assert not removed, (
        f"{len(removed)} published case ids disappeared (e.g. {removed[:5]}); case ids are public "
        "API: restore them, or give changed cases new ids"
    )


def test_recorded_vectors_expect_tensorflows_values():
    cases = [c for c in cropcore_conformance.all_cases() if c.category == "tf-vectors"]
    assert len(cases) > 300
    assert all(c.source in ("tensorflow", "keras") and c.expected is not None for c in cases)


def test_selecting_cases():
    cases = cropcore_conformance.all_cases()
    edge = cropcore_conformance.select(cases, ["edge-cases"])
    assert edge
    assert {c.category for c in edge} == {"edge-cases"}
    nearest = cropcore_conformance.select(cases, patterns=["*/forward/*-nearest"])
    assert nearest
    assert all(c.id.endswith("-nearest") for c in nearest)
    fewer = cropcore_conformance.select(cases, ["edge-cases"], exclude=["nearest"])
    assert len(fewer) < len(edge)
    assert not any("nearest" in c.id for c in fewer)
    with pytest.raises(ValueError, match="unknown category"):
        cropcore_conformance.select(cases, ["edge"])


# --------------------------------------------------------------------------------------------------
# The reference passes, and the report says so readably


@pytest.fixture(scope="module")
def numpy_report():
    return cropcore_conformance.run("numpy")


def test_the_reference_passes_the_whole_suite(numpy_report):
    assert numpy_report.exit_code == 0, [(r.id, r.message) for r in numpy_report.failures[:5]]
    total = numpy_report.total()
    assert total.failed == 0
    assert total.xfailed == 0
    assert total.passed > 1500
    assert total.identical == total.elements > 100_000  # bit-identical everywhere


def test_the_report_counts_every_category(numpy_report):
    text = render_text(numpy_report)
    for category in CATEGORIES:
        if category == "unchecked-values":  # the numpy backend never receives unread values
            assert re.search(rf"^{category}\s+(\d+)\s+0\s+0\s+0\s+\1\s+0\s+-\s+-$", text, re.M)
            continue
        assert re.search(
            rf"^{category}\s+\d+\s+\d+\s+0\s+0\s+\d+\s+0\s+100%\s+exact$", text, re.M
        ), category
    for column in (
        "passed",
        "failed",
        "xfail",
        "skipped",
        "worst error",
        "bit-identical",
        "tolerance",
    ):
        assert column in text
    assert "hypothesis: seed 20240229, 40 examples per property case" in text
    assert "TensorFlow 2.21.0" in text
    assert "reference backend 'numpy'" in text
    assert TOLERANCES["exact"].description in text
    assert text.rstrip().splitlines()[-1].startswith("PASSED: backend 'numpy': ")


@pytest.mark.parametrize("native", ["1", "0"])
def test_the_torch_backend_gives_the_documented_results_for_unchecked_values(native, cropcore_env):
    pytest.importorskip("torch")
    cropcore_env.set("CROPCORE_TORCH_NATIVE", native)
    report = cropcore_conformance.run("torch", categories=["unchecked-values"])
    total = report.total()
    assert report.exit_code == 0, [(r.id, r.message) for r in report.failures[:5]]
    assert total.skipped == 0
    assert total.passed == len(
        [c for c in cropcore_conformance.all_cases() if c.category == "unchecked-values"]
    )


def test_the_report_on_a_terminal(numpy_report):
    out = io.StringIO()
    render_rich(numpy_report, out)
    text = out.getvalue()
    assert "tf-vectors" in text
    assert "round-trips" in text
    assert "bit-identical" in text
    assert "bit-identical" in text
    assert "PASSED: backend 'numpy'" in text


def test_the_report_as_json(numpy_report):
    data = numpy_report.to_dict()
    json.dumps(data, allow_nan=True)
    assert data["verdict"] == "PASSED"
    assert data["exit_code"] == 0
    assert set(data["categories"]) == set(CATEGORIES)
    assert data["total"]["bit_identical"] == 1.0
    assert len(data["results"]) == numpy_report.total().cases


# --------------------------------------------------------------------------------------------------
# Failures, expected failures, stale declarations, tolerances, skips


def test_a_wrong_backend_fails_with_readable_messages(backend):
    name = backend("conformance-wrong-crop2d", change=wrong_crop2d)
    report = cropcore_conformance.run(name, categories=["edge-cases"])
    assert report.exit_code == 1
    failures = report.failures
    assert failures
    assert all(r.op == "crop2d" for r in failures)
    text = render_text(report, max_failures=3)
    assert f"FAILED {failures[0].id}" in text
    assert "elements differ under tolerance 'exact'" in text
    assert (
        f"... and {len(failures) - 3} more (edge-cases: {len(failures) - 3}); -v shows all" in text
    )
    assert text.rstrip().splitlines()[-1].startswith("FAILED: backend")


def test_declared_failures_are_expected_and_reported_with_their_reason(backend):
    reason = "crop2d is wrong here on purpose"
    name = backend(
        "conformance-declared", change=wrong_crop2d, declarations={"edge-cases/crop2d/*": reason}
    )
    report = cropcore_conformance.run(name, categories=["edge-cases"])
    assert report.exit_code == 0
    xfailed = [r for r in report.results if r.status == "xfailed"]
    assert xfailed
    assert all(r.declared == reason for r in xfailed)
    assert report.declaration_status() == {"edge-cases/crop2d/*": "matched"}
    text = render_text(report)
    assert f"edge-cases/crop2d/*: {reason}  [{len(xfailed)} cases failed as declared]" in text
    assert "declared but passed" in text  # cases with zero elements pass even here


def test_a_declaration_that_matches_no_failure_is_flagged_stale(backend):
    name = backend(
        "conformance-stale", declarations={"edge-cases/forward/identity-*": "fixed long ago"}
    )
    report = cropcore_conformance.run(name, categories=["edge-cases"])
    assert report.stale == ["edge-cases/forward/identity-*"]
    assert report.exit_code == 0
    assert "STALE: no longer matches any failure" in render_text(report)
    report.strict = True
    assert report.exit_code == 1


def test_a_declaration_for_cases_not_run_is_not_called_stale(backend):
    name = backend("conformance-not-run", declarations={"gradients/*": "slow"})
    report = cropcore_conformance.run(name, categories=["errors"])
    assert report.declaration_status() == {"gradients/*": "not run"}
    assert not report.stale


def test_malformed_declarations_are_refused(backend):
    name = backend("conformance-bad-tolerance", tolerances={"*": "roughly"})
    with pytest.raises(DeclarationError, match="tolerance classes are exact, fma, reordered-sums"):
        cropcore_conformance.run(name)
    name = backend("conformance-no-reason", declarations={"*": " "})
    with pytest.raises(DeclarationError, match="without a reason"):
        cropcore_conformance.run(name)


def test_a_declared_tolerance_class_applies_and_is_stated(backend):
    strict = backend("conformance-ulp-exact", change=one_ulp_off)
    assert (
        cropcore_conformance.run(strict, patterns=["edge-cases/forward/identity-*"]).exit_code == 1
    )
    loose = backend("conformance-ulp-fma", change=one_ulp_off, tolerances={"*/forward/*": "fma"})
    report = cropcore_conformance.run(loose, patterns=["edge-cases/forward/identity-*"])
    assert report.exit_code == 0
    summary = report.by_category()[0]
    assert summary.tolerances == {"fma": summary.passed}
    assert summary.max_abs > 0
    assert summary.bit_identical < 1
    text = render_text(report)
    assert TOLERANCES["fma"].description in text
    assert "declared by the backend: */forward/* -> fma" in text


def test_reordered_sums_accepts_a_different_summation_order(backend):
    def reversed_boxes(op, call, result):
        if op != "crop_and_resize_grad_image":
            return result
        # Sum the boxes' contributions in reverse order: the same terms, another rounding.
        flipped = call.replace(
            boxes=call.boxes[::-1], box_indices=call.box_indices[::-1], grads=call.grads[::-1]
        )
        return cropcore_numpy.cropcore_crop_and_resize_grad_image(call=flipped)

    pattern = "gradients/grad_image/overlapping-boxes-*"
    exact = backend("conformance-reordered-exact", change=reversed_boxes)
    assert cropcore_conformance.run(exact, patterns=[pattern]).exit_code == 1
    tolerant = backend(
        "conformance-reordered",
        change=reversed_boxes,
        tolerances={"*/grad_image/*": "reordered-sums"},
    )
    assert cropcore_conformance.run(tolerant, patterns=[pattern]).exit_code == 0


def test_what_a_backend_does_not_do_is_skipped_with_the_reason(backend):
    name = backend("conformance-float32-forward", dtypes=("float32",), ops=("crop_and_resize",))
    report = cropcore_conformance.run(name, categories=["edge-cases", "gradients"])
    assert report.exit_code == 0
    reasons = {r.message for r in report.results if r.status == "skipped"}
    assert "backend does not implement crop_and_resize_grad_image" in reasons
    assert any(
        r.startswith("declined: ") and "does not support image dtype uint8" in r for r in reasons
    )


def test_a_backend_that_raises_fails_the_case(backend):
    def boom(op, call, result):
        raise RuntimeError("kernel exploded")

    name = backend("conformance-raises", change=boom)
    report = cropcore_conformance.run(name, patterns=["edge-cases/forward/identity-bilinear"])
    assert report.failures[0].message == "raised RuntimeError: kernel exploded"


def test_a_property_failure_reports_the_seed_and_a_falsifying_example(backend):
    def off_by_one(op, call, result):
        return result + 1 if op == "crop_and_resize" and call.method == "nearest" else result

    name = backend("conformance-property", change=off_by_one)
    report = cropcore_conformance.run(
        name, patterns=["properties/forward/nearest"], max_examples=10, seed=7
    )
    (failure,) = report.failures
    assert "hypothesis seed 7" in failure.message
    assert "Failing test case" in failure.message or "Falsifying example" in failure.message


def test_property_cases_are_skipped_without_hypothesis(monkeypatch):
    import cropcore_conformance.properties as properties

    real = properties.importlib.util.find_spec
    monkeypatch.setattr(
        properties.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "hypothesis" else real(name, *a),
    )
    report = cropcore_conformance.run("numpy", categories=["properties"])
    assert {r.status for r in report.results} == {"skipped"}
    assert "hypothesis is not installed" in report.results[0].message


# --------------------------------------------------------------------------------------------------
# The command line


def test_cli_exit_status_0_for_a_conforming_backend(capsys):
    assert main(["numpy", "--category", "errors", "--plain"]) == 0
    out = capsys.readouterr().out
    assert "PASSED: backend 'numpy'" in out
    assert "errors" in out


def test_cli_exit_status_1_on_an_unexpected_failure(backend, capsys):
    name = backend("conformance-cli-wrong", change=wrong_crop2d)
    assert main([name, "-c", "edge-cases", "-k", "crop2d", "--plain"]) == 1
    assert "FAILED: backend 'conformance-cli-wrong'" in capsys.readouterr().out


def test_cli_exit_status_2_on_usage_errors(capsys):
    assert main(["no-such-backend"]) == 2
    err = capsys.readouterr().err
    assert "no-such-backend" in err
    assert "is not an installed cropcore backend" in err
    assert main([]) == 2
    assert "name the backend" in capsys.readouterr().err
    assert main(["numpy", "--category", "nonsense"]) == 2
    assert main(["numpy", "--max-examples", "0"]) == 2


def test_cli_strict_fails_on_a_stale_declaration(backend, capsys):
    name = backend("conformance-cli-stale", declarations={"errors/forward/image-rank-3": "old"})
    assert main([name, "-c", "errors", "--plain"]) == 0
    assert main([name, "-c", "errors", "--plain", "--strict"]) == 1
    assert "STALE" in capsys.readouterr().out


def test_cli_lists_cases_without_a_backend(capsys):
    assert main(["--list", "--category", "tf-tests"]) == 0
    ids = capsys.readouterr().out.split()
    assert "tf-tests/forward/test-crop-and-resize2x2-to3x3" in ids
    assert all(i.startswith("tf-tests/") for i in ids)


def test_cli_json_report(capsys):
    assert main(["numpy", "-c", "tf-tests", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["backend"] == "numpy"
    assert data["verdict"] == "PASSED"
    assert data["categories"]["tf-tests"]["failed"] == 0


def test_cropcore_conformance_is_a_subcommand_of_cropcore(capsys):
    from cropcore import cli

    assert cli.main(["conformance", "numpy", "-c", "errors", "--plain"]) == 0
    assert "PASSED: backend 'numpy'" in capsys.readouterr().out
    assert cli.main(["conformance", "no-such-backend"]) == 2
    assert cli.main(["--help"]) == 0
    assert "certify a backend against the conformance suite" in capsys.readouterr().out


def test_python_dash_m_runs_the_suite():
    result = subprocess.run(
        [sys.executable, "-m", "cropcore_conformance", "numpy", "-c", "errors", "--plain"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "PASSED: backend 'numpy'" in result.stdout


# --------------------------------------------------------------------------------------------------
# The pytest plugin (run in a separate pytest process, as a third party's CI would)


def run_pytest(directory: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", *args],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_pytest_plugin_from_the_command_line(tmp_path):
    result = run_pytest(
        tmp_path,
        "-q",
        "-p",
        "cropcore_conformance.pytest_plugin",
        "--cropcore-backend",
        "numpy",
        "--cropcore-category",
        "tf-tests",
        "-k",
        "docstring or test-with-sharding",
    )
    assert result.returncode == 0, result.stdout[-2000:]
    assert "3 passed" in result.stdout
    assert "cropcore conformance: numpy" in result.stdout


def test_pytest_plugin_from_conftest_and_ini_with_declarations(tmp_path):
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\ncropcore_backend = conftest-backend\ncropcore_categories = edge-cases\n"
    )
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_conformance import reference_like, wrong_crop2d
        from cropcore.registry import registry

        pytest_plugins = ["cropcore_conformance.pytest_plugin"]
        registry.register(reference_like(
            "conftest-backend", change=wrong_crop2d,
            declarations={{"edge-cases/crop2d/dtype-*": "wrong on purpose",
                          "edge-cases/forward/identity-*": "stale"}}), name="conftest-backend")
    """)
    )
    result = run_pytest(tmp_path, "-rfxX", "-k", "crop2d or identity")
    assert result.returncode == 1, result.stdout[-3000:]  # the undeclared crop2d cases fail
    assert "xfailed" in result.stdout
    assert "wrong on purpose" in result.stdout
    assert "cropcore-conformance[conftest-backend]::edge-cases/crop2d/cropping-int" in result.stdout
    assert "elements differ under tolerance 'exact'" in result.stdout
    assert "edge-cases/forward/identity-*: stale  [STALE" in result.stdout


def test_pytest_plugin_does_nothing_without_a_backend(tmp_path):
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    result = run_pytest(tmp_path, "-q", "-p", "cropcore_conformance.pytest_plugin")
    assert result.returncode == 0
    assert "1 passed" in result.stdout


def test_pytest_plugin_refuses_an_unknown_backend(tmp_path):
    result = run_pytest(
        tmp_path,
        "-p",
        "cropcore_conformance.pytest_plugin",
        "--cropcore-backend",
        "no-such-backend",
    )
    assert result.returncode == 4  # pytest's usage error
    assert "is not an installed cropcore backend" in result.stderr


@pytest.mark.parametrize("name", ["numpy", "numba"])
def test_crop2d_cases_run_on_a_backend_that_leaves_crop2d_to_the_core(name):
    # The built-in backends have no crop2d hook: the core slices. Their crop2d cases must run.
    if name == "numba":
        pytest.importorskip("numba")
    report = cropcore_conformance.run(name, patterns=["*/crop2d/*"])
    total = report.total()
    assert total.passed > 100
    assert total.failed == 0
    skipped = [r for r in report.results if r.status == "skipped"]
    assert all("no CUDA device" in r.message or "not installed" in r.message for r in skipped)


# --------------------------------------------------------------------------------------------------
# Declarations are checked against the suite's ids; the CLI's output survives a closed pipe


@pytest.mark.parametrize(
    "declared",
    [
        {"declarations": {"edge-cases/forward/identiy-*": "a typo"}},
        {"tolerances": {"*/grad_imgae/*": "fma"}},
    ],
    ids=["expected-failure", "tolerance"],
)
def test_a_declared_pattern_that_matches_no_case_is_an_error_in_any_run(backend, declared, capsys):
    name = backend(f"conformance-typo-{next(iter(declared))}", **declared)
    with pytest.raises(DeclarationError, match="matches no case id of the suite"):
        cropcore_conformance.run(name, categories=["errors"])  # a partial run, not --strict
    assert main([name, "-c", "errors", "--plain"]) == 2
    assert "matches no case id of the suite (a typo?" in capsys.readouterr().err


def test_cli_list_into_a_closed_pipe_stops_quietly():
    with subprocess.Popen(
        [sys.executable, "-m", "cropcore_conformance", "--list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        process.stdout.readline()  # as `| head -1` does: read a line, then close the pipe
        process.stdout.close()
        stderr = process.stderr.read().decode()
        process.wait(timeout=120)
    assert "Traceback" not in stderr, stderr
    assert "BrokenPipeError" not in stderr
