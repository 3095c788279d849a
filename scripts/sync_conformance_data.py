"""Copy the recorded TensorFlow/Keras vectors into the conformance package.

``scripts/record_reference.py`` (run with TensorFlow) writes ``tests/data/tf_reference.npz`` for
cropcore's own tests; the conformance suite ships its own copy as package data, so that a third
party who installs cropcore can certify a backend without this repository::

    python scripts/sync_conformance_data.py          # copy (after re-recording)
    python scripts/sync_conformance_data.py --check  # exit 1 if the copies differ

The copy is byte-for-byte; cropcore's tests fail while the two differ.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "tests" / "data" / "tf_reference.npz"
TARGET = ROOT / "conformance" / "cropcore_conformance" / "data" / "tf_reference.npz"
FORMAT_VERSION = 1  # the layout cropcore_conformance.vectors reads


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_format(path: Path) -> dict:
    """The file's meta document, after checking that the suite can read this layout."""
    with np.load(path, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
        files = set(npz.files)
    if meta.get("format_version") != FORMAT_VERSION:
        raise SystemExit(
            f"{path}: format_version {meta.get('format_version')!r}, the conformance "
            f"suite reads {FORMAT_VERSION}; update cropcore_conformance/vectors.py"
        )
    for case in meta["cases"]:
        missing = [a for a in case["arrays"] if f"{case['id']}/{a}" not in files]
        if missing:
            raise SystemExit(f"{path}: case {case['id']} lacks arrays {missing}")
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--check", action="store_true", help="only check that the copies agree")
    args = parser.parse_args(argv)
    if not SOURCE.is_file():
        print(f"{SOURCE} not found: run scripts/record_reference.py first", file=sys.stderr)
        return 1
    if args.check:
        same = TARGET.is_file() and digest(SOURCE) == digest(TARGET)
        print(f"{TARGET.relative_to(ROOT)} is {'up to date' if same else 'OUT OF DATE'}")
        return 0 if same else 1
    meta = check_format(SOURCE)
    TARGET.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SOURCE, TARGET)
    print(
        f"copied {SOURCE.relative_to(ROOT)} -> {TARGET.relative_to(ROOT)} "
        f"({TARGET.stat().st_size:,} bytes, {len(meta['cases'])} cases, "
        f"sha256 {digest(TARGET)[:12]})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
