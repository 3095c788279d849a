"""The file pipeline: :func:`crop_files` crops a table of (image file, box, label) rows on Dask.

Requirements: dask, zarr (for ``format="zarr"``) and Pillow, checked when :func:`crop_files` is
called, before anything is written or submitted (``pip install "cropcore[dask]"``); distributed
only with a ``distributed`` client.

:func:`crop_files` can be killed and rerun: a partition is marked done only after all its crops
are written, every write goes to the same place with the same bytes, and a rerun skips the
partitions marked done. The job is read on the client (:mod:`cropcore.dask._job`), the output
created there (:mod:`cropcore.dask._output`), and the partitions cropped and written by the tasks
(:mod:`cropcore.dask._tasks`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cropcore import dispatch, spec
from cropcore.dask._job import Job, choice, partition, positive, read_table, with_fingerprint
from cropcore.dask._output import MARKERS, job_meta, prepare_output
from cropcore.dask._tasks import (
    Progress,
    default_client,
    load_image,
    require,
    run_distributed,
    run_local,
)

__all__ = [
    "FILE_FORMATS",
    "CropFilesError",
    "CropFilesReport",
    "crop_files",
    "finished_partitions",
]

logger = logging.getLogger("cropcore.dask")

#: Output formats of :func:`crop_files`: ``"zarr"``, or an image-file extension.
FILE_FORMATS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")


class CropFilesError(RuntimeError):
    """Some partitions of a :func:`crop_files` job failed; the others are written and marked done.

    ``report`` is the job's :class:`CropFilesReport`; ``failures`` maps each failed partition to
    its error message. Fix the input and call :func:`crop_files` again: it does only what is left.
    """

    def __init__(self, message: str, report: CropFilesReport, failures: dict[int, str]) -> None:
        super().__init__(message)
        self.report = report
        self.failures = failures


@dataclass(frozen=True)
class CropFilesReport:
    """What a :func:`crop_files` call did.

    Attributes:
        out: the output (a Zarr group, or a directory of image files).
        rows: crops in the job (rows of the table).
        partitions: partitions in the job.
        written: partitions cropped and marked done by this call.
        skipped: partitions already marked done when this call started (a rerun).
        seconds: wall time of this call.
        crop_bytes: bytes of crops written by this call (uncompressed: rows x H x W x C x itemsize).
        rows_written: crops written by this call.
        workers: workers of the cluster (``1`` for dask's local schedulers).
        failures: the partitions that failed, with their error messages (see
            :class:`CropFilesError`).
    """

    out: str
    rows: int
    partitions: int
    written: int
    skipped: int
    seconds: float
    crop_bytes: int
    rows_written: int
    workers: int = 1
    failures: dict[int, str] = field(default_factory=dict)

    @property
    def crops_per_second(self) -> float:
        return self.rows_written / self.seconds if self.seconds > 0 else 0.0

    @property
    def megabytes_per_second(self) -> float:
        """Crops written per second, in MB (10**6 bytes) of uncompressed crop data."""
        return self.crop_bytes / 1e6 / self.seconds if self.seconds > 0 else 0.0


def crop_files(
    table: Any,
    out: str | os.PathLike[str],
    crop_size: Any = (224, 224),
    method: str = "bilinear",
    extrapolation_value: float = 0.0,
    *,
    coords: str = "normalized",
    dtype: str = "uint8",
    channels: int | None = 3,
    format: str = "zarr",
    partition_size: int = 256,
    root: str | os.PathLike[str] | None = None,
    backend: str | None = None,
    client: Any = None,
    progress: bool | Callable[[int, int], None] = True,
    overwrite: bool = False,
    timeout: float | None = None,
) -> CropFilesReport:
    """Crop the boxes of a table of (image file, box, label) rows into a Zarr array, on Dask.

    The table's rows are cut into partitions of ``partition_size`` consecutive rows; one task per
    partition reads the images its rows name (each image once per partition), crops them with
    :func:`cropcore.crop_and_resize` and writes the partition's rows of the output, then marks the
    partition done. Crop ``i`` is row ``i`` of the table. A rerun with the same table and
    parameters skips the partitions marked done, so a job that was interrupted, or lost a worker,
    or failed on a bad file, is finished by calling it again; a partition that was cut short is
    redone, rewriting the same rows with the same bytes.

    Images are read with Pillow exactly as ``cropcore crop`` reads them (8-bit grey, RGB or RGBA;
    16-bit grey scaled to 8 bits; first frame; EXIF orientation ignored), then converted to
    ``channels`` with Pillow (grey to RGB repeats the grey, RGBA to RGB drops alpha, RGB to grey is
    Pillow's ``convert("L")``). The uint8 pixels go to :func:`cropcore.crop_and_resize`, and
    ``dtype="uint8"`` output is rounded and clipped as ``cropcore crop`` writes files.

    Args:
        table: the rows: a CSV or JSON box file path (the format ``cropcore crop --boxes`` reads),
            a pandas DataFrame, or a sequence of mappings, with columns ``image``, ``y1``, ``x1``,
            ``y2``, ``x2`` and optionally ``label``. ``image`` is a file path, relative to
            ``root``.
        out: the output path. ``format="zarr"``: a Zarr group holding ``crops`` (uint8 or float32
            ``(rows, crop_height, crop_width, channels)``), ``labels`` (int32 ``(rows,)``, an
            index into the group attribute ``labels``, -1 for none; only if the table has a
            ``label`` column) and ``done`` (uint8 ``(partitions,)``, 1 once a partition is
            written). An image format: a directory of files named as ``cropcore crop`` names them,
            ``<image-stem>_<row>[_<label>].<format>``, with the markers in ``<out>/.cropcore/``.
            Every worker must be able to write there (a shared filesystem on a cluster).
        crop_size: ``(crop_height, crop_width)``.
        method, extrapolation_value: as for :func:`cropcore.crop_and_resize` (on the 0-255 scale).
        coords: ``"normalized"`` (0 to 1, TensorFlow's) or ``"pixels"`` (0 to H-1, converted per
            image as ``cropcore crop --coords pixels`` converts them).
        dtype: ``"uint8"`` (rounded and clipped) or ``"float32"`` (``crop_and_resize``'s output
            as is); Zarr only, image files are uint8.
        channels: 1 (grey), 3 (RGB) or 4 (RGBA). ``None`` keeps each image's own (image files;
            for Zarr every image must then have the first image's).
        format: ``"zarr"``, or an image format ``cropcore crop`` writes (``"png"``, ``"jpg"``, ...).
        partition_size: rows per partition (per task). Zarr chunks hold a divisor of it, so two
            tasks never write the same chunk.
        root: the directory relative image paths start from; default: the table file's
            directory, or the current directory for a DataFrame or a sequence.
        backend: the backend every task uses; ``None`` lets each worker choose.
        client: a ``distributed.Client``; ``None`` uses the default client if there is one, and
            otherwise dask's default scheduler (threads) in this process.
        progress: ``True`` shows a progress bar on stderr (rich's if it is installed); ``False``
            shows nothing; a callable is called as ``progress(done, total)`` after each partition.
        overwrite: replace ``out`` if it holds another job's output (or is not a crop_files
            output). Without it such an ``out`` is refused.
        timeout: seconds to wait for the job with a ``distributed`` client (``TimeoutError``
            after it); ``None`` waits for ever.

    Returns:
        The report, a :class:`CropFilesReport`.

    What runs where:
        The table is read and checked on the client (the image files are not opened there, except
        the first one when ``channels=None`` and ``format="zarr"``), and the output and its
        ``labels`` are created there. Everything else runs in the tasks.

    Raises:
        ValueError: a bad table (naming the file and line) or argument.
        FileExistsError: ``out`` holds something else and ``overwrite`` is false.
        CropFilesError: some partitions failed (bad image files, ...): the others are written
            and marked done; the exception lists the failures and carries the report.
        TimeoutError: the job did not finish within ``timeout``.
        ImportError: Pillow (or zarr, for ``format="zarr"``) is not installed; checked first,
            before anything is written or submitted. The message says
            ``pip install "cropcore[dask]"``.
    """
    started = time.perf_counter()
    crop = spec.crop_size_arg(crop_size)
    method = spec.method_arg(method)
    extrapolation_value = spec.extrapolation_value_arg(extrapolation_value)
    format = choice(str(format).lower(), ("zarr", *FILE_FORMATS), "format")
    coords = choice(coords, ("normalized", "pixels"), "coords")
    dtype = choice(str(np.dtype(dtype)), ("uint8", "float32"), "dtype")
    if format != "zarr" and dtype != "uint8":
        raise ValueError(f"dtype={dtype!r}: image files are uint8; float32 needs format='zarr'")
    if channels is not None and channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3, 4 or None, got {channels!r}")
    partition_size = positive(partition_size, "partition_size")
    if backend is None:
        backend = dispatch.current_override()
    # Here, not in the tasks: a missing package is one clear error before any work starts.
    require("PIL.Image", "cropcore.dask.crop_files")
    if format == "zarr":
        require("zarr", 'cropcore.dask.crop_files(format="zarr")')

    rows = read_table(table, root)
    if format == "zarr" and channels is None:
        channels = load_image(rows.images[0], None, rows.wheres[0]).shape[2]
    count = len(rows.images)
    out = os.path.abspath(os.fspath(out))
    job = Job(
        out=out,
        format=format,
        crop_size=crop,
        method=method,
        extrapolation_value=extrapolation_value,
        coords=coords,
        dtype=dtype,
        channels=channels,
        backend=backend,
        partition_size=partition_size,
        digits=len(str(count - 1)),
        fingerprint="",
    )
    job = with_fingerprint(job, rows)
    partitions = math.ceil(count / partition_size)
    prepare_output(job, rows, partitions, overwrite)
    done_before = finished_partitions(out)
    todo = [p for p in range(partitions) if p not in done_before]
    logger.info(
        "crop_files %s: %d rows in %d partitions, %d already done",
        out,
        count,
        partitions,
        len(done_before),
    )

    parts = [partition(rows, p, partition_size) for p in todo]
    client = default_client(client)
    reporter = Progress(progress, len(todo), f"cropping into {os.path.basename(out)}")
    with reporter:
        if client is not None:
            results, workers = run_distributed(client, job, parts, reporter, timeout)
        else:
            results, workers = run_local(job, parts, reporter), 1

    done_after = finished_partitions(out)
    written = sorted(done_after - done_before)
    rows_written = sum(min(count, (p + 1) * partition_size) - p * partition_size for p in written)
    itemsize = np.dtype(dtype).itemsize
    # Image files with channels=None may mix grey and colour: counted as RGB.
    crop_bytes = rows_written * crop[0] * crop[1] * itemsize * (channels or 3)
    failures = {r["partition"]: r["error"] for r in results if r.get("error")}
    report = CropFilesReport(
        out=out,
        rows=count,
        partitions=partitions,
        written=len(written),
        skipped=len(done_before),
        seconds=time.perf_counter() - started,
        crop_bytes=crop_bytes,
        rows_written=rows_written,
        workers=workers,
        failures=failures,
    )
    if failures:
        listed = "; ".join(f"partition {p}: {m}" for p, m in sorted(failures.items())[:5])
        more = f" (and {len(failures) - 5} more)" if len(failures) > 5 else ""
        raise CropFilesError(
            f"{len(failures)} of {partitions} partitions failed: {listed}{more}. The other "
            "partitions are written and marked done; fix the input and call crop_files again "
            "to do the rest.",
            report,
            failures,
        )
    missing = sorted(set(range(partitions)) - done_after)
    if missing:  # every task returned, so this is a bug, not bad input
        raise RuntimeError(
            f"crop_files: partitions {missing[:10]} finished but are not marked done"
        )
    return report


def finished_partitions(out: str | os.PathLike[str]) -> set[int]:
    """The partitions of the :func:`crop_files` output ``out`` that are written and marked done."""
    out = os.path.abspath(os.fspath(out))
    meta = job_meta(out)
    if meta is None:
        return set()
    if meta["format"] == "zarr":
        import zarr

        done = zarr.open_array(store=os.path.join(out, "done"), mode="r")[:]
        return {int(p) for p in np.flatnonzero(done)}
    names = os.listdir(os.path.join(out, MARKERS, "done"))
    return {int(n[5:-5]) for n in names if n.startswith("part-") and n.endswith(".json")}
