"""The recorded file: cases collected by :class:`Recorder`, written by :func:`write_npz`.

Layout (``cropcore_conformance.vectors`` reads it): key ``meta`` is a JSON document (versions,
seed, and one entry per case: ``id``, ``op``, ``name``, the scalar parameters, the names of the
case's arrays); each array of a case is stored under ``"<id>/<array name>"``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from cropcore_conformance.vectors import FORMAT_VERSION

SEED = 20240229


class Recorder:
    """Collects cases; writes them as one compressed npz."""

    def __init__(self) -> None:
        self.cases: list[dict[str, Any]] = []
        self.arrays: dict[str, np.ndarray] = {}

    def add(self, op: str, name: str, arrays: dict[str, Any], **params: Any) -> None:
        case_id = f"{op}/{name}"
        if any(case["id"] == case_id for case in self.cases):
            raise ValueError(f"duplicate case id {case_id}")
        for key, value in arrays.items():
            self.arrays[f"{case_id}/{key}"] = np.asarray(value)
        self.cases.append(
            {"id": case_id, "op": op, "name": name, **params, "arrays": sorted(arrays)}
        )

    def save(self, path: Path, versions: dict[str, str]) -> None:
        """``versions``: tensorflow, keras, numpy, python, machine (in that order)."""
        counts: dict[str, int] = {}
        for case in self.cases:
            counts[case["op"]] = counts.get(case["op"], 0) + 1
        meta = {
            "format_version": FORMAT_VERSION,
            "seed": SEED,
            "versions": versions,
            "tf_threads": {"intra_op": 1, "inter_op": 1},
            "counts": counts,
            "cases": self.cases,
        }
        entries = {
            "meta": np.array(json.dumps(meta)),
            "tensorflow_version": np.array(versions["tensorflow"]),
            "keras_version": np.array(versions["keras"]),
            "numpy_version": np.array(versions["numpy"]),
            "seed": np.array(SEED),
            **self.arrays,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_npz(path, entries)
        print(f"wrote {path} ({path.stat().st_size:,} bytes): {counts}")


def write_npz(path: Path, entries: dict[str, np.ndarray]) -> None:
    """What ``np.savez_compressed`` writes, but byte-reproducible: fixed member timestamps, so
    re-recording with the same libraries gives the same file (and the same sha256)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for key, value in entries.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, buffer.getvalue(), compresslevel=9)
