"""The output of a :func:`~cropcore.dask.crop_files` job: a Zarr group or a directory of image
files, with the markers of the partitions done.

Requirements: zarr (for ``format="zarr"``) and Pillow (for image files), imported by the
functions that use them; :func:`~cropcore.dask.crop_files` checks both before it starts.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

import cropcore
from cropcore.cli.files import label_slug, save_image
from cropcore.dask._job import Job, Partition, Rows

__all__ = [
    "MARKERS",
    "ZARR_CHUNK_BYTES",
    "is_done",
    "job_meta",
    "mark_done",
    "prepare_output",
    "write_partition",
]

#: Target size of one Zarr chunk of crops, in bytes (chunks never straddle two partitions).
ZARR_CHUNK_BYTES = 8 * 2**20
MARKERS = ".cropcore"


def job_meta(out: str) -> dict[str, Any] | None:
    """The job record of the crop_files output ``out``, or ``None`` if it is not one."""
    marker_job = os.path.join(out, MARKERS, "job.json")
    if os.path.isfile(marker_job):
        with open(marker_job, encoding="utf-8") as f:
            return json.load(f)
    if os.path.isfile(os.path.join(out, "zarr.json")) or os.path.isfile(
        os.path.join(out, ".zgroup")
    ):
        import zarr

        meta = zarr.open_group(out, mode="r").attrs.get("cropcore")
        return dict(meta) if meta else None
    return None


def prepare_output(job: Job, rows: Rows, partitions: int, overwrite: bool) -> None:
    """Create ``job.out`` for the job, or check that it holds this very job (a rerun)."""
    out = job.out
    if os.path.exists(out):
        meta = job_meta(out)
        if meta is not None and meta.get("fingerprint") == job.fingerprint:
            return  # a rerun: keep what is done
        if not overwrite:
            what = (
                "the output of a different crop_files job (another table or other parameters)"
                if meta is not None
                else "something that is not a crop_files output"
            )
            raise FileExistsError(
                f"{out} holds {what}; pass overwrite=True to replace it, or choose another out"
            )
        if os.path.isdir(out) and not os.path.islink(out):
            shutil.rmtree(out)
        else:
            os.remove(out)
    meta = {
        "fingerprint": job.fingerprint,
        "format": job.format,
        "rows": len(rows.images),
        "partitions": partitions,
        "partition_size": job.partition_size,
        "crop_size": list(job.crop_size),
        "method": job.method,
        "extrapolation_value": job.extrapolation_value,
        "coords": job.coords,
        "dtype": job.dtype,
        "channels": job.channels,
        "backend": job.backend,
        "table": rows.source,
        "cropcore": cropcore.__version__,
    }
    if job.format == "zarr":
        create_zarr(job, rows, partitions, meta)
    else:
        os.makedirs(os.path.join(out, MARKERS, "done"))
        write_atomically(os.path.join(out, MARKERS, "job.json"), json.dumps(meta, indent=1))


def create_zarr(job: Job, rows: Rows, partitions: int, meta: dict[str, Any]) -> None:
    import zarr

    count, (height, width) = len(rows.images), job.crop_size
    assert job.channels is not None
    crop_bytes = height * width * job.channels * np.dtype(job.dtype).itemsize
    per_chunk = largest_divisor(job.partition_size, max(1, ZARR_CHUNK_BYTES // crop_bytes))
    group = zarr.open_group(job.out, mode="w")
    zarr.open_array(
        store=os.path.join(job.out, "crops"),
        mode="w",
        shape=(count, height, width, job.channels),
        chunks=(per_chunk, height, width, job.channels),
        dtype=job.dtype,
        fill_value=0,
    )
    zarr.open_array(
        store=os.path.join(job.out, "done"),
        mode="w",
        shape=(partitions,),
        chunks=(1,),
        dtype="uint8",
        fill_value=0,
    )
    if rows.has_labels:
        classes = sorted({label for label in rows.labels if label})
        code = {label: i for i, label in enumerate(classes)}
        labels = zarr.open_array(
            store=os.path.join(job.out, "labels"),
            mode="w",
            shape=(count,),
            chunks=(min(count, 2**20),),
            dtype="int32",
            fill_value=-1,
        )
        labels[:] = np.array([code.get(label, -1) for label in rows.labels], dtype=np.int32)
        group.attrs["labels"] = classes
    group.attrs["cropcore"] = meta  # last: the group is a crop_files output only once complete


def largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see all of it or nothing (rename is atomic)."""
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


def write_partition(job: Job, part: Partition, crops: list[np.ndarray]) -> None:
    if job.format == "zarr":
        import zarr

        array = zarr.open_array(store=os.path.join(job.out, "crops"), mode="r+")
        if any(c.shape != array.shape[1:] for c in crops):
            bad = next(i for i, c in enumerate(crops) if c.shape != array.shape[1:])
            raise ValueError(
                f"{part.images[bad]} (named at {part.wheres[bad]}) has {crops[bad].shape[2]} "
                f"channel(s), the output {array.shape[3]}: pass channels= to convert every image"
            )
        array[part.start : part.stop] = np.stack(crops)  # whole Zarr chunks: no other task's
        return
    for offset, crop in enumerate(crops):
        label = label_slug(part.labels[offset])
        suffix = f"_{label}" if label else ""
        stem = Path(part.images[offset]).stem
        name = f"{stem}_{part.start + offset:0{job.digits}d}{suffix}.{job.format}"
        # Written under a temporary name and renamed: a killed task leaves no half-written file.
        temporary = os.path.join(job.out, f".{name}.{uuid.uuid4().hex}.tmp")
        save_image(crop, Path(temporary), job.format)
        os.replace(temporary, os.path.join(job.out, name))


def is_done(job: Job, partition: int) -> bool:
    if job.format == "zarr":
        import zarr

        return bool(zarr.open_array(store=os.path.join(job.out, "done"), mode="r")[partition])
    return os.path.exists(marker_path(job.out, partition))


def mark_done(job: Job, part: Partition) -> None:
    """Mark the partition done, atomically, after all its crops are written."""
    if job.format == "zarr":
        import zarr

        # One chunk per partition, and Zarr writes a chunk atomically (a temporary file renamed).
        zarr.open_array(store=os.path.join(job.out, "done"), mode="r+")[part.index] = 1
        return
    record = {"partition": part.index, "start": part.start, "stop": part.stop}
    write_atomically(marker_path(job.out, part.index), json.dumps(record))


def marker_path(out: str, partition: int) -> str:
    return os.path.join(out, MARKERS, "done", f"part-{partition:06d}.json")
