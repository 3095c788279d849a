"""scripts/gpu_check.sh, the one run to make on a lent GPU, stays runnable as the code changes.

Without a GPU its embedded checks (checks.py) run in their dry-run mode: NumPy stands in for CuPy
and torch runs on the CPU, so every name the script uses must still exist and every comparison
must still pass. Only the CuPy backend's own availability fails here, where CuPy is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

pytest.importorskip("torch")


def test_the_script_parses():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)


@pytest.mark.slow
def test_the_checks_pass_in_their_dry_run(tmp_path):
    text = SCRIPT.read_text()
    checks = re.search(r"<<'CHECKS_PY'\n(.*?)\nCHECKS_PY\n", text, re.S)
    assert checks is not None, "checks.py is no longer embedded as a CHECKS_PY here-document"
    path = tmp_path / "checks.py"
    path.write_text(checks.group(1))
    packages = [ROOT, *(ROOT / "backends").iterdir(), ROOT / "conformance"]
    env = {
        **os.environ,
        "CHECKS_DRYRUN": "1",
        "OUT": str(tmp_path),
        "PYTHONPATH": os.pathsep.join(str(p) for p in packages),
    }
    run = subprocess.run(
        [sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=900
    )
    output = run.stdout + run.stderr
    failures = [line for line in output.splitlines() if line.startswith("[FAIL]")]
    if importlib.util.find_spec("cupy") is None:
        failures = [f for f in failures if not f.startswith("[FAIL] backend cupy: unavailable")]
    assert not failures, output[-4000:]
    assert re.search(r"^checks: PASS [1-9]\d*,", output, re.M), output[-4000:]
    assert "Traceback" not in output, output[-4000:]
