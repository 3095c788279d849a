"""The conformance run is robust: it reproduces from its seed in any process, and it counts what
a backend declined (issue 20)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

ROOT = Path(__file__).resolve().parents[1]


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
    # hypothesis harvests numeric literals from the local modules a process imported; a module
    # full of them must not change what a seed draws.
    literals = [0.49999997, 12345, 3e38, -7, 0.3333, 1e-40, 65535, 2**53 + 1, 255, 4.5, 0.125]
    (tmp_path / "module_with_literals.py").write_text(
        "".join(f"VALUE_{i} = {value!r}\n" for i, value in enumerate(literals * 3))
    )
    plain = _digests(tmp_path, None)
    with_literals = _digests(tmp_path, "module_with_literals")
    assert len(plain.split()) == 6
    assert plain == with_literals
