"""docs/plugins.md's complete example is a plugin that installs and runs as printed, beside the
worked example of docs/example_plugin (issue 18: the two shared a backend name and a module, so
installing both silently replaced one with the other)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "plugins.md"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("setuptools") is None, reason="building the plugins needs setuptools"
)


def _complete_example(tmp_path: Path) -> Path:
    """The project of the page's "A complete example", written out as its tree shows."""
    text = PAGE.read_text()
    section = text[text.index("## A complete example") :]
    toml = re.search(r"`pyproject.toml`:\n\n```toml\n(.*?)```", section, re.S).group(1)
    module_path, code = re.search(
        r"`(src/[\w/]+\.py)`:\n\n```python\n(.*?)```", section, re.S
    ).groups()
    project = tmp_path / "complete-example"
    (project / module_path).parent.mkdir(parents=True)
    (project / "pyproject.toml").write_text(toml)
    (project / module_path).write_text(code)
    return project


def _install(site: Path, project: Path) -> None:
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
            str(site),
            str(project),
        ],
        check=True,
        capture_output=True,
        cwd=project.parent,
    )


@pytest.mark.slow
def test_both_documented_plugins_install_side_by_side(tmp_path):
    site = tmp_path / "site"
    complete = _complete_example(tmp_path)
    worked = tmp_path / "example_plugin"
    import shutil

    shutil.copytree(ROOT / "docs" / "example_plugin", worked)
    _install(site, complete)
    _install(site, worked)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), *sys.path])}
    listed = subprocess.run(
        [sys.executable, "-m", "cropcore", "backends", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    backends = {b["name"]: b for b in json.loads(listed.stdout)["backends"]}
    mine = {
        name: b["distribution"]
        for name, b in backends.items()
        if b["distribution"].startswith("cropcore-") and b["distribution"] != "cropcore"
    }
    assert len(mine) == 2, backends
    assert {b["status"] for n, b in backends.items() if n in mine} == {"available"}
    modules = [
        p.name
        for p in site.iterdir()
        if p.name.startswith("cropcore_") and p.suffix != ".dist-info"
    ]
    assert len(modules) == 2, modules


@pytest.mark.parametrize("page", ["cli.md", "plugins.md"])
def test_the_install_hints_in_the_documented_backends_tables_are_the_real_ones(page):
    # Issue 18: plugins.md's sample showed `pip install "cropcore"` for cupy, folded by the table.
    from cropcore.registry import registry

    text = (ROOT / "docs" / page).read_text()
    sample = text[text.index("$ cropcore backends\n") :]
    sample = sample[: sample.index("```")]
    shown = dict(re.findall(r"^install (\w+): (.*)$", sample, re.M))
    assert "cupy" in shown
    for name, hint in shown.items():
        backend = registry.get(name)
        if backend is not None and backend.distribution == "cropcore":
            assert hint == backend.install_hint, name
