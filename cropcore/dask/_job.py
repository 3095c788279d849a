"""What a :func:`~cropcore.dask.crop_files` job is: its rows (read and checked from the table),
its settings, its partitions and its fingerprint.

Requirements: NumPy; the table is read with :mod:`cropcore.cli.files`' public box-file reader and
checks (no Pillow). Everything here runs on the client.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import cropcore
from cropcore.cli.files import BOX_COLUMNS, check_header, coordinate, read_box_records

__all__ = [
    "Job",
    "Partition",
    "Rows",
    "choice",
    "partition",
    "positive",
    "read_table",
    "with_fingerprint",
]


@dataclass(frozen=True)
class Job:
    """Everything a partition task needs besides its rows (sent with every task: keep it small)."""

    out: str
    format: str
    crop_size: tuple[int, int]
    method: str
    extrapolation_value: float
    coords: str
    dtype: str
    channels: int | None
    backend: str | None
    partition_size: int
    digits: int
    fingerprint: str


@dataclass(frozen=True)
class Partition:
    """One partition: table rows ``[start, stop)``."""

    index: int
    start: int
    images: tuple[str, ...]  # per row: the image's absolute path
    coords: np.ndarray  # (rows, 4) float64, as in the table
    labels: tuple[str, ...]
    wheres: tuple[str, ...]  # per row, for messages: "boxes.csv: line 3"

    @property
    def stop(self) -> int:
        return self.start + len(self.images)


@dataclass(frozen=True)
class Rows:
    images: list[str]
    coords: np.ndarray  # (rows, 4) float64
    labels: list[str]
    wheres: list[str]
    has_labels: bool
    source: str


def read_table(table: Any, root: str | os.PathLike[str] | None) -> Rows:
    """Read and check the table on the client (the CLI's box-file reader and checks).

    Raises:
        ValueError: a bad table, naming the file (or ``<DataFrame>``, ``<table>``) and the row;
            :class:`~cropcore.cli.files.InputFileError` (a ``ValueError``) for a box file that
            cannot be read or parsed.
    """
    if isinstance(table, str | os.PathLike):
        source = Path(table)
        records = read_box_records(source)
        header = set().union(*(r.keys() for _, r in records))
        default_root = source.resolve().parent
    else:
        source, records, header = records_of(table)
        check_header(list(header), source, "columns")
        default_root = Path.cwd()
    base = Path(root) if root is not None else default_root
    images, coordinates, labels, wheres = [], [], [], []
    for where, record in records:
        place = f"{source}: {where}"
        image = record.get("image")
        if isinstance(image, os.PathLike):
            image = os.fspath(image)
        if not isinstance(image, str) or not image.strip():
            raise ValueError(f"{place}: image must be a file path, got {image!r}")
        box = [coordinate(record, key, source, where) for key in BOX_COLUMNS]
        with np.errstate(over="ignore"):
            finite = np.isfinite(np.float32(box))
        if not finite.all():
            key = BOX_COLUMNS[int(np.argmin(finite))]
            raise ValueError(f"{place}: {key} overflows float32 (it must be finite)")
        label = record.get("label")
        missing = label is None or (isinstance(label, float) and math.isnan(label))
        images.append(str((base / image.strip()).absolute()))
        coordinates.append(box)
        labels.append("" if missing else str(label).strip())
        wheres.append(place)
    if not images:
        raise ValueError(f"{source}: the table has no rows")
    return Rows(
        images=images,
        coords=np.asarray(coordinates, dtype=np.float64).reshape(-1, 4),
        labels=labels,
        wheres=wheres,
        has_labels="label" in header,
        source=str(source),
    )


def records_of(table: Any) -> tuple[Path, list[tuple[str, dict[str, Any]]], set[str]]:
    """A DataFrame's or a sequence of mappings' rows as the CLI's ``(where, record)`` pairs."""
    if hasattr(table, "to_dict") and hasattr(table, "columns"):  # a pandas DataFrame
        source, header = Path("<DataFrame>"), {str(c).strip().lower() for c in table.columns}
        items: Iterable[Any] = table.to_dict("records")
    elif isinstance(table, Sequence) and all(isinstance(r, Mapping) for r in table):
        source, items = Path("<table>"), table
        header = {str(k).strip().lower() for r in table for k in r}
    else:
        raise ValueError(
            "table must be a CSV or JSON file path, a pandas DataFrame or a sequence of mappings "
            f"with columns image, y1, x1, y2, x2 (label optional), got {type(table).__name__}"
        )
    records = [
        (f"row {i}", {str(k).strip().lower(): plain(v) for k, v in record.items()})
        for i, record in enumerate(items)
    ]
    return source, records, header


def plain(value: Any) -> Any:
    """NumPy scalars (from a DataFrame) as Python ones, which the CLI's checks expect."""
    return value.item() if isinstance(value, np.generic) else value


def partition(rows: Rows, index: int, size: int) -> Partition:
    start, stop = index * size, min(len(rows.images), (index + 1) * size)
    return Partition(
        index=index,
        start=start,
        images=tuple(rows.images[start:stop]),
        coords=rows.coords[start:stop],
        labels=tuple(rows.labels[start:stop]),
        wheres=tuple(rows.wheres[start:stop]),
    )


def with_fingerprint(job: Job, rows: Rows) -> Job:
    """``job`` with the hash of everything that decides the output's bytes (and where they go)."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in job.__dict__.items() if k not in ("fingerprint", "out")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(cropcore.__version__.encode())
    for image, box, label in zip(rows.images, rows.coords.tolist(), rows.labels, strict=True):
        digest.update(f"{image}\t{box!r}\t{label}\n".encode())
    return Job(**{**job.__dict__, "fingerprint": digest.hexdigest()})


def choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)
