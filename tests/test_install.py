"""A wheel built from the repository builds without warnings, installs into a fresh environment
and runs there: ``cropcore --help`` and ``cropcore demo`` (issue 18: README and docs/install.md
said ``pip install cropcore``, and the distribution is not on the package index)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("build") is None or importlib.util.find_spec("setuptools") is None,
        reason='building the wheel needs the test extra (pip install -e ".[test]")',
    ),
]

# What a copy of the repository leaves out: environments, build outputs, caches.
_NOT_SOURCES = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "site",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "cropcore-demo",
    "*.so",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, str]:
    """The wheel built from a copy of the repository, and the build's output."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES)
    # Byte-compiling on (PYTHONDONTWRITEBYTECODE would make setuptools warn that it is off).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    done = subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work)],
        cwd=source,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (wheel,) = work.glob("cropcore-*.whl")
    return wheel, done.stdout + done.stderr


def test_the_wheel_builds_without_deprecation_warnings(built):
    _, output = built
    assert "Deprecat" not in output, output[-3000:]
    assert "warning" not in output.lower(), output[-3000:]


def test_the_wheel_installs_into_a_fresh_environment_and_runs(built, tmp_path):
    wheel, _ = built
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / ("Scripts" if os.name == "nt" else "bin") / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    # The dependencies (NumPy, pluggy, rich, Pillow, numba...) come from this environment, behind
    # the new one's own site-packages, where the wheel goes; nothing of the checkout is on the path.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--disable-pip-version-check",
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CROPCORE_BACKEND")}
    command = python.parent / "cropcore"

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(command), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )

    where = run("--version")
    assert where.returncode == 0, where.stderr
    located = subprocess.run(
        [str(python), "-c", "import cropcore, cropcore_numpy; print(cropcore.__file__)"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert Path(located.stdout.strip()).is_relative_to(site)
    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    assert "crop" in helped.stdout
    demo = run("demo", "--out", str(tmp_path / "demo"))
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    assert (tmp_path / "demo").is_dir()
    assert (tmp_path / "demo" / "contact_sheet.png").is_file()
