"""The worked third-party plugin (docs/example_plugin) is discovered, dispatched to and certified.

It is installed the way a user installs any plugin, with pip, into a directory of its own that the
tests put on the path (so the project's environment is left as it was): cropcore must find it
through its entry point alone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import cropcore
from cropcore.registry import registry

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "example_plugin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example installed into a directory of its own (returned), as pip installs it."""
    work = tmp_path_factory.mktemp("example-plugin")
    source = work / "source"  # build from a copy: setuptools writes build/ and *.egg-info
    shutil.copytree(
        EXAMPLE, source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    target = work / "site"
    if importlib.util.find_spec("setuptools") is not None:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--quiet",
                "--no-deps",
                "--no-build-isolation",
                "--disable-pip-version-check",
                "--no-index",
                "--target",
                str(target),
                str(source),
            ],
            check=True,
            capture_output=True,
        )
    else:  # no build backend offline: lay out what pip would install (the package and its dist-info)
        shutil.copytree(source / "cropcore_example", target / "cropcore_example")
        info = target / "cropcore_example_backend-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(
            "Metadata-Version: 2.1\nName: cropcore-example-backend\nVersion: 0.1.0\n"
        )
        (info / "entry_points.txt").write_text("[cropcore.backends]\nexample = cropcore_example\n")
    assert (target / "cropcore_example" / "__init__.py").is_file()
    assert list(target.glob("cropcore_example_backend-*.dist-info/entry_points.txt"))
    return target


def _env(site: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("CROPCORE_BACKEND", None)
    return env


def _cli(site: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        env=_env(site),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture
def on_path(installed):
    """The installed plugin importable and discovered in this process, for one test."""
    sys.path.insert(0, str(installed))
    registry.refresh()
    yield installed
    sys.path.remove(str(installed))
    for name in [
        m for m in sys.modules if m == "cropcore_example" or m.startswith("cropcore_example.")
    ]:
        del sys.modules[name]
    registry.refresh()


def test_the_example_is_not_installed_by_default():
    assert registry.get("example") is None


def test_cropcore_backends_lists_the_example(installed):
    result = _cli(installed, "-m", "cropcore", "backends", "--json")
    assert result.returncode == 0, result.stderr
    listed = {b["name"]: b for b in json.loads(result.stdout)["backends"]}
    assert "example" in listed
    assert listed["example"]["distribution"] == "cropcore-example-backend"
    assert listed["example"]["status"] == "available"


def test_backend_example_runs_the_example(on_path):
    backend = registry.get("example")
    assert backend is not None
    assert backend.entry_point == "cropcore_example"
    image = np.arange(2 * 5 * 6 * 3, dtype=np.float32).reshape(2, 5, 6, 3)
    boxes = np.array([[0.1, 0.2, 0.9, 0.7], [1, 1, -0.2, 0]], np.float32)
    indices = np.array([1, 0], np.int32)
    for method in ("bilinear", "nearest"):
        got = cropcore.crop_and_resize(
            image, boxes, indices, (4, 3), method, -1.0, backend="example"
        )
        want = cropcore.crop_and_resize(
            image, boxes, indices, (4, 3), method, -1.0, backend="numpy"
        )
        assert got.tobytes() == want.tobytes()
    explained = cropcore.explain(
        "crop_and_resize", image, boxes, indices, (4, 3), backend="example"
    )
    assert explained.backend == "example"


@pytest.mark.slow
def test_the_conformance_suite_passes_on_the_example(installed):
    result = _cli(installed, "-m", "cropcore_conformance", "example", "--plain")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "PASSED: backend 'example'" in result.stdout
    assert " 0 failed" in result.stdout


def test_the_one_line_pytest_configuration_certifies_the_example(installed, tmp_path):
    """docs/example_plugin/pyproject.toml's addopts line runs the suite under plain ``pytest``."""
    project = tmp_path / "project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    result = _cli(
        installed,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-k",
        "tf-tests and docstring",
        cwd=project,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "2 passed" in result.stdout
    assert "cropcore conformance: example" in result.stdout
