"""The pictures in docs/img/ are what scripts/make_doc_figures.py computes now, pixel for pixel.

The script crops the bundled photo with cropcore's NumPy reference backend; if a change to cropcore
(or to the script) changes a picture, this test fails until the pictures are regenerated with
``python scripts/make_doc_figures.py`` and committed. Pixels are compared, not bytes, so a different
zlib or Pillow version that encodes the same pixels differently does not matter.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

Image = pytest.importorskip("PIL.Image", reason="the figures are written with Pillow (cli extra)")

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "img"
MAX_BYTES = 150_000  # per picture: the site stays light
MAX_TOTAL_BYTES = 600_000


def _load_script():
    spec = importlib.util.spec_from_file_location(
        "make_doc_figures", ROOT / "scripts" / "make_doc_figures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("doc-figures")
    _load_script().render(out)
    return out


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_the_script_writes_exactly_the_committed_pictures(regenerated):
    assert sorted(p.name for p in regenerated.glob("*.png")) == sorted(
        p.name for p in COMMITTED.glob("*.png")
    )


@pytest.mark.parametrize("name", sorted(_load_script().FIGURES))
def test_committed_picture_matches_the_code(regenerated, name):
    committed, fresh = _pixels(COMMITTED / name), _pixels(regenerated / name)
    assert committed.shape == fresh.shape, (
        f"docs/img/{name} is {committed.shape}, the script now makes {fresh.shape}: "
        "run python scripts/make_doc_figures.py"
    )
    differing = int(np.any(committed != fresh, axis=-1).sum())
    assert differing == 0, (
        f"docs/img/{name}: {differing} pixels differ from what the script computes now: "
        "run python scripts/make_doc_figures.py"
    )


def test_every_picture_is_referenced_from_the_docs():
    pages = "".join(p.read_text(encoding="utf-8") for p in (ROOT / "docs").glob("*.md"))
    unused = [p.name for p in COMMITTED.glob("*.png") if f"img/{p.name}" not in pages]
    assert not unused, f"pictures no page shows: {unused}"


def test_pictures_are_small():
    sizes = {p.name: p.stat().st_size for p in COMMITTED.glob("*.png")}
    assert all(size <= MAX_BYTES for size in sizes.values()), sizes
    assert sum(sizes.values()) <= MAX_TOTAL_BYTES, sizes
