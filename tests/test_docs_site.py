"""The documentation site read offline, checked in headless Chromium (issue 18): ./site opened over
file:// navigates (page links are files, not directories) and searches; identifiers in tables are
never broken mid-word; the semantics page's formula blocks fit a 1280-pixel screen; the copy button
covers no code.

Needs mkdocs (the ``docs`` extra) and Chromium (Debian's ``chromium`` package); without them the
tests are skipped, unless ``CROPCORE_REQUIRE_BROWSER=1`` (``make docs-check``) makes that a failure.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).with_name("docs_probe.js")
CHROMIUM = next(
    (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
    None,
)
_MISSING = (
    "Chromium is not installed (apt-get install chromium)"
    if CHROMIUM is None
    else "mkdocs is not installed (the docs extra)"
    if importlib.util.find_spec("mkdocs") is None
    else None
)
if _MISSING and os.environ.get("CROPCORE_REQUIRE_BROWSER") == "1":
    raise RuntimeError(_MISSING)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_MISSING is not None, reason=_MISSING or "")]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site, built as ``make docs`` builds it, with the probe written into every page."""
    site = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    shutil.copy(PROBE, site / "cropcore-probe.js")
    for page in site.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        tag = '<script src="cropcore-probe.js"></script>'
        page.write_text(text.replace("</body>", tag + "</body>"), encoding="utf-8")
    return site


def probe(page: Path, width: int = 900) -> dict:
    """What the probe found on ``page``, opened over file:// in a window ``width`` pixels wide."""
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # root in containers
            "--disable-gpu",
            f"--window-size={width},1000",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="cropcore-probe">(.*?)</pre>', done.stdout, re.S)
    assert found, f"{page.name}: the probe did not report\n{done.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


PAGES = ["index.html", "install.html", "semantics.html", "cli.html", "plugins.html", "api.html"]


@pytest.mark.parametrize("name", PAGES)
def test_a_page_read_offline_links_files_and_breaks_no_identifier(site, name):
    found = probe(site / name)
    targets = {Path(link.removeprefix("file://")) for link in found["links"]}
    assert targets, "no links found"
    assert sorted(str(t) for t in targets if not t.is_file()) == []
    assert found["brokenCode"] == []
    assert found["covered"] == []


def test_the_search_works_offline(site):
    assert probe(site / "index.html")["search"] > 0


def test_the_formula_blocks_of_the_semantics_page_fit_a_1280_pixel_screen(site):
    assert probe(site / "semantics.html", width=1280)["overflowingFormulas"] == []
