"""The import layers of docs/architecture.md, enforced by import-linter's contracts in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
#: The application subpackages: everything in cropcore/ that the core must not import.
APPLICATIONS = {"cropcore.bench", "cropcore.cli", "cropcore.dask", "cropcore.__main__"}


def _core_contract() -> dict:
    return next(c for c in CONTRACTS["contracts"] if c["name"].startswith("The core imports"))


def test_the_import_contracts_are_kept():
    lint_imports = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if lint_imports is None:
        pytest.skip("import-linter is not installed (it comes with the test extra)")
    result = subprocess.run(
        [lint_imports, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_every_core_module_is_held_by_the_core_contract():
    """A new module in cropcore/ is either an application or listed as core (and so checked)."""
    found = set()
    for path in (ROOT / "cropcore").glob("*.py"):
        name = "cropcore" if path.stem == "__init__" else f"cropcore.{path.stem}"
        found.add(name)
    for path in (ROOT / "cropcore").iterdir():
        if path.is_dir() and (path / "__init__.py").exists():
            found.add(f"cropcore.{path.name}")
    core = found - APPLICATIONS
    assert core == set(_core_contract()["source_modules"])


def test_the_core_contract_forbids_every_application_and_backend():
    forbidden = set(_core_contract()["forbidden_modules"])
    assert APPLICATIONS - {"cropcore.__main__"} <= forbidden
    backends = {p.name for p in (ROOT / "backends").glob("*/cropcore_*")}
    assert backends <= forbidden
    assert {"cropcore_conformance", "torch", "numba", "dask"} <= forbidden
