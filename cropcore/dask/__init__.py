"""Scale out with Dask: ``crop_and_resize`` and ``crop2d`` on dask arrays, and a file pipeline.

Requirements:

- Imported only when used: ``import cropcore`` never imports this module, nor dask, distributed or
  zarr. ``import cropcore.dask`` imports dask (``pip install "cropcore[dask]"``); distributed,
  zarr and Pillow are imported by the functions that use them.
- Dask does the scheduling; cropcore only builds graphs and tasks. Each chunk runs through
  cropcore's normal validation and dispatch, so a result is bit-identical to
  ``cropcore.crop_and_resize`` on the whole NumPy array with the same backend.
- Bad calls are refused up front, on the client, with the messages ``cropcore.crop_and_resize``
  gives. What that needs computed is small and named in each docstring.
- :func:`crop_files` can be killed and rerun: a partition is marked done only after all its crops
  are written, every write goes to the same place with the same bytes, and a rerun skips the
  partitions marked done.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.array.utils import meta_from_array
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"cropcore.dask needs dask, which is not installed ({exc}); install it with: "
        'pip install "cropcore[dask]"'
    ) from exc

import cropcore
from cropcore import dispatch, spec
from cropcore._arrays import library_for, library_name

__all__ = [
    "CropFilesError",
    "CropFilesReport",
    "crop2d",
    "crop_and_resize",
    "crop_files",
    "finished_partitions",
]

logger = logging.getLogger("cropcore.dask")

_INSTALL = 'pip install "cropcore[dask]"'


# --------------------------------------------------------------------------------------------------
# Dask arrays


def crop_and_resize(
    image: Any,
    boxes: Any,
    box_indices: Any,
    crop_size: Any,
    method: str = "bilinear",
    extrapolation_value: float = 0.0,
    *,
    data_format: str = "channels_last",
    backend: str | None = None,
    rechunk: bool = True,
) -> da.Array:
    """:func:`cropcore.crop_and_resize` on a dask array of images; returns a lazy dask array.

    Each box is routed to the chunk that holds its image, and each chunk's boxes are cropped by
    one task that calls :func:`cropcore.crop_and_resize` on that chunk, so the chunk's array type
    picks the backend as usual (the best CPU backend for NumPy chunks, the CUDA backend for CuPy
    chunks). Chunks no box points into are never computed. The crops come back in the order of
    ``boxes``, bit-identical to ``cropcore.crop_and_resize`` on the whole array with the same
    backend.

    Args:
        image: a dask array ``(batch, height, width, depth)`` (channels_last) or
            ``(batch, depth, height, width)`` (channels_first), any dtype
            :func:`cropcore.crop_and_resize` takes, chunked along the batch axis. Chunks that split
            height, width or depth are merged by a rechunk (see ``rechunk``). A NumPy (or other)
            array is wrapped as a dask array first.
        boxes: float ``(num_boxes, 4)``, normalised ``[y1, x1, y2, x2]``: a NumPy (or torch, CuPy)
            array, a list, or a dask array.
        box_indices: integer ``(num_boxes,)`` in ``[0, batch)``: an array or a dask array.
        crop_size, method, extrapolation_value, data_format: as for
            :func:`cropcore.crop_and_resize`.
        backend: a backend name or alias for every chunk; ``None`` lets each chunk's task choose
            as :func:`cropcore.crop_and_resize` does, on the worker. A :func:`cropcore.use_backend`
            block around this call applies to its chunks (it is read here, when the graph is
            built); ``CROPCORE_BACKEND`` and the priority list are read on the worker.
        rechunk: when ``image`` is chunked along height, width or depth, merge those chunks
            (``image.rechunk({0: "auto", 1: -1, 2: -1, 3: -1})``: each image is gathered into one
            chunk, a copy of the image data made when the result is computed, across the network
            on a cluster). ``False`` refuses such an image with a ``ValueError`` instead.

    Returns:
        A float32 dask array ``(num_boxes, crop_height, crop_width, depth)`` (channels_last) or
        ``(num_boxes, depth, crop_height, crop_width)``, whose chunks have the array type of
        ``image``'s chunks. Its chunk sizes are known. When the boxes are grouped by image chunk
        (sorted by box index, say), there is one chunk per image chunk that has boxes, of its
        number of boxes. Otherwise the crops are put back in the boxes' order by a dask shuffle,
        in chunks of about dask's ``array.chunk-size`` (128 MiB by default).

    What is computed now:
        ``box_indices`` always, since which chunk a box goes to decides the graph; ``boxes`` too
        when it is a dask array (both in one ``dask.compute``), so that every box is checked here
        exactly as :func:`cropcore.crop_and_resize` checks it. That is 20 bytes per box held by the
        client (80 MB for 4 million boxes) and whatever computing them costs. The image is not
        touched.

    Raises:
        ValueError, TypeError, IndexError: as :func:`cropcore.crop_and_resize`, with its messages,
            raised here; also ``ValueError`` for an image with unknown chunk sizes, or one chunked
            along height, width or depth with ``rechunk=False``.
        cropcore.errors.BackendError: when the result is computed, if a worker cannot run the
            backend.
    """
    data_format = spec.data_format_arg(data_format)
    method = spec.method_arg(method)
    image = _dask_image(image, data_format)
    _, dims = spec.image_arg(_stand_in(image), data_format)
    crop = spec.crop_size_arg(crop_size)
    extrapolation_value = spec.extrapolation_value_arg(extrapolation_value)
    boxes, box_indices = _computed(boxes, box_indices)
    boxes, box_indices = spec.boxes_arg(boxes, box_indices, dims.batch)
    host_boxes = library_for(boxes).to_numpy(boxes)
    host_indices = library_for(box_indices).to_numpy(box_indices)
    image = _whole_images(image, data_format, rechunk)
    if backend is None:
        backend = (
            dispatch.current_override()
        )  # the caller's use_backend(), which workers cannot see

    out_shape = spec.ImageShape(0, *crop, dims.depth).to_format(data_format)
    meta = meta_from_array(image._meta, ndim=4, dtype=np.float32)
    if host_boxes.shape[0] == 0:
        return da.from_array(meta.reshape(out_shape), chunks=-1, meta=meta)

    starts = np.concatenate([[0], np.cumsum(image.chunks[0])])
    chunk_of_box = np.searchsorted(starts, host_indices, side="right") - 1
    order = np.argsort(chunk_of_box, kind="stable")
    counts = np.bincount(chunk_of_box, minlength=len(image.chunks[0]))
    blocks = image.to_delayed().ravel()
    crop_block = dask.delayed(_crop_block, pure=True)
    pieces, first = [], 0
    for chunk in np.flatnonzero(counts):
        mine = order[first : first + counts[chunk]]
        first += counts[chunk]
        task = crop_block(
            blocks[chunk],
            host_boxes[mine],
            (host_indices[mine] - starts[chunk]).astype(np.int32),
            crop,
            method,
            extrapolation_value,
            data_format,
            backend,
        )
        shape = (len(mine), *out_shape[1:])
        pieces.append(da.from_delayed(task, shape=shape, dtype=np.float32, meta=meta))
    result = pieces[0] if len(pieces) == 1 else da.concatenate(pieces, axis=0)
    if np.any(np.diff(chunk_of_box) < 0):
        # Boxes not grouped by image chunk: put the crops back in the boxes' order. That is a
        # shuffle, whose graph grows with the square of the number of chunks; merging the crops
        # into chunks of dask's array.chunk-size first keeps it small.
        result = result.rechunk({0: "auto"})[np.argsort(order)]
    return result


def _crop_block(
    block: Any,
    boxes: np.ndarray,
    box_indices: np.ndarray,
    crop_size: tuple[int, int],
    method: str,
    extrapolation_value: float,
    data_format: str,
    backend: str | None,
) -> Any:
    """One task: the crops of ``boxes`` (indices local to ``block``) out of one image chunk."""
    return cropcore.crop_and_resize(
        block,
        boxes,
        box_indices,
        crop_size,
        method,
        extrapolation_value,
        data_format=data_format,
        backend=backend,
    )


def _stand_in(x: Any) -> Any:
    """A zero-strided NumPy array with ``x``'s shape and dtype, for :mod:`cropcore.spec`'s checks.

    spec refuses dask arrays (which have no data to hand a backend); their shape and dtype are
    checked through this stand-in, which costs no memory.
    """
    if not isinstance(x, da.Array):
        return x
    return np.broadcast_to(np.empty((), dtype=x.dtype), tuple(int(d) for d in x.shape))


def _dask_image(image: Any, data_format: str) -> da.Array:
    """``image`` as a dask array with known chunk sizes (other arrays are wrapped, whole images per chunk)."""
    if not isinstance(image, da.Array):
        image = spec.as_array(image, "image")
        if len(image.shape) != 4:
            return image  # spec.image_arg refuses it with cropcore's message
        return da.from_array(image, chunks={0: "auto", 1: -1, 2: -1, 3: -1})
    if any(math.isnan(size) for sizes in image.chunks for size in sizes):
        raise ValueError(
            f"image has unknown chunk sizes (shape {image.shape}); cropcore.dask needs to know "
            "which images each chunk holds: call image.compute_chunk_sizes() first"
        )
    return image


def _whole_images(image: da.Array, data_format: str, rechunk: bool) -> da.Array:
    """``image`` with each chunk holding whole images (one chunk along every axis but the batch)."""
    names = (
        ("depth", "height", "width")
        if data_format == "channels_first"
        else ("height", "width", "depth")
    )
    split = [name for name, sizes in zip(names, image.chunks[1:], strict=True) if len(sizes) > 1]
    if not split:
        return image
    if not rechunk:
        raise ValueError(
            f"image is chunked along {' and '.join(split)} (chunks {image.chunks}); "
            "cropcore.dask.crop_and_resize needs whole images in each chunk: pass rechunk=True, "
            "or rechunk it yourself with image.rechunk({1: -1, 2: -1, 3: -1})"
        )
    logger.debug("rechunking image along %s to whole images", ", ".join(split))
    return image.rechunk({0: "auto", 1: -1, 2: -1, 3: -1})


_ARRAY_LIBRARIES = ("numpy", "cupy", "torch")


def _computed(boxes: Any, box_indices: Any) -> tuple[Any, Any]:
    """``boxes`` and ``box_indices`` with any dask collection among them computed (in one go)."""
    lazy = [i for i, x in enumerate((boxes, box_indices)) if dask.is_dask_collection(x)]
    if not lazy:
        return boxes, box_indices
    values = [boxes, box_indices]
    for i, value in zip(lazy, dask.compute(*(values[i] for i in lazy)), strict=True):
        # A dask dataframe column computes to a pandas object: take its NumPy values.
        values[i] = value if library_name(value) in _ARRAY_LIBRARIES else np.asarray(value)
    return values[0], values[1]


def crop2d(
    x: Any, cropping: Any = ((0, 0), (0, 0)), data_format: str | None = "channels_last"
) -> da.Array:
    """:func:`cropcore.crop2d` (Keras's ``Cropping2D``) on a dask array; lazy and chunk-aligned.

    The result is ``x[:, top:height - bottom, left:width - right, :]`` (or the channels_first
    equivalent) as a dask slice: chunks inside the kept region are passed through untouched, edge
    chunks are sliced, chunks wholly cropped away are dropped, and nothing is copied or moved but
    what the slice keeps. Slicing is exact whatever the array type, so no backend runs.

    Args:
        x: a 4-D dask array (another array is wrapped as one), any dtype. Its height and width
            must be known; the batch size may be unknown.
        cropping: ``n``, ``(h, w)`` or ``((top, bottom), (left, right))``, as for
            :func:`cropcore.crop2d`.
        data_format: ``"channels_last"`` or ``"channels_first"`` (``None`` means channels_last).

    Returns:
        A dask array of ``x``'s dtype and chunk type, shape ``(batch, height - top - bottom,
        width - left - right, channels)`` (or channels_first).

    Raises:
        ValueError, TypeError: as :func:`cropcore.crop2d` (checked now, from the shape alone).
    """
    if not isinstance(x, da.Array):
        x = da.asarray(spec.as_array(x, "x"))
    shape = tuple(x.shape)
    if len(shape) == 4:
        # The batch size does not matter to the crop: an unknown one is checked as 1.
        shape = (1 if math.isnan(shape[0]) else shape[0], *shape[1:])
        if any(math.isnan(d) for d in shape):
            raise ValueError(
                f"x has unknown height or width (shape {x.shape}); call x.compute_chunk_sizes() first"
            )
    stand_in = np.broadcast_to(np.empty((), dtype=x.dtype), tuple(int(d) for d in shape))
    call = spec.crop2d_call(stand_in, cropping, data_format)  # checked as x would be
    return x[call.slices]


# --------------------------------------------------------------------------------------------------
# The file pipeline

#: Output formats of :func:`crop_files`: ``"zarr"``, or an image-file extension.
FILE_FORMATS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
#: Target size of one Zarr chunk of crops, in bytes (chunks never straddle two partitions).
ZARR_CHUNK_BYTES = 8 * 2**20
_MARKERS = ".cropcore"


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


@dataclass(frozen=True)
class _Job:
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
class _Partition:
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
        A :class:`CropFilesReport`.

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
    """
    started = time.perf_counter()
    crop = spec.crop_size_arg(crop_size)
    method = spec.method_arg(method)
    extrapolation_value = spec.extrapolation_value_arg(extrapolation_value)
    format = _choice(str(format).lower(), ("zarr", *FILE_FORMATS), "format")
    coords = _choice(coords, ("normalized", "pixels"), "coords")
    dtype = _choice(str(np.dtype(dtype)), ("uint8", "float32"), "dtype")
    if format != "zarr" and dtype != "uint8":
        raise ValueError(f"dtype={dtype!r}: image files are uint8; float32 needs format='zarr'")
    if channels is not None and channels not in (1, 3, 4):
        raise ValueError(f"channels must be 1, 3, 4 or None, got {channels!r}")
    partition_size = _positive(partition_size, "partition_size")
    if backend is None:
        backend = dispatch.current_override()

    rows = _read_table(table, root)
    if format == "zarr" and channels is None:
        channels = _load_image(rows.images[0], None, rows.wheres[0]).shape[2]
    count = len(rows.images)
    out = os.path.abspath(os.fspath(out))
    job = _Job(
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
    job = _with_fingerprint(job, rows)
    partitions = math.ceil(count / partition_size)
    _prepare_output(job, rows, partitions, overwrite)
    done_before = finished_partitions(out)
    todo = [p for p in range(partitions) if p not in done_before]
    logger.info(
        "crop_files %s: %d rows in %d partitions, %d already done",
        out,
        count,
        partitions,
        len(done_before),
    )

    parts = [_partition(rows, p, partition_size) for p in todo]
    client = _default_client(client)
    reporter = _Progress(progress, len(todo), f"cropping into {os.path.basename(out)}")
    with reporter:
        if client is not None:
            results, workers = _run_distributed(client, job, parts, reporter, timeout)
        else:
            results, workers = _run_local(job, parts, reporter), 1

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
    meta = _job_meta(out)
    if meta is None:
        return set()
    if meta["format"] == "zarr":
        import zarr

        done = zarr.open_array(store=os.path.join(out, "done"), mode="r")[:]
        return {int(p) for p in np.flatnonzero(done)}
    names = os.listdir(os.path.join(out, _MARKERS, "done"))
    return {int(n[5:-5]) for n in names if n.startswith("part-") and n.endswith(".json")}


# -- the table ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    images: list[str]
    coords: np.ndarray  # (rows, 4) float64
    labels: list[str]
    wheres: list[str]
    has_labels: bool
    source: str


def _read_table(table: Any, root: str | os.PathLike[str] | None) -> _Rows:
    """Read and check the table on the client (the CLI's box-file reader and checks)."""
    from cropcore.cli.files import (
        BOX_COLUMNS,
        InputFileError,
        check_header,
        coordinate,
        read_box_records,
    )

    try:
        if isinstance(table, str | os.PathLike):
            source = Path(table)
            records = read_box_records(source)
            header = set().union(*(r.keys() for _, r in records))
            default_root = source.resolve().parent
        else:
            source, records, header = _records_of(table)
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
                raise InputFileError(f"{place}: image must be a file path, got {image!r}")
            box = [coordinate(record, key, source, where) for key in BOX_COLUMNS]
            with np.errstate(over="ignore"):
                finite = np.isfinite(np.float32(box))
            if not finite.all():
                key = BOX_COLUMNS[int(np.argmin(finite))]
                raise InputFileError(f"{place}: {key} overflows float32 (it must be finite)")
            label = record.get("label")
            missing = label is None or (isinstance(label, float) and math.isnan(label))
            images.append(str((base / image.strip()).absolute()))
            coordinates.append(box)
            labels.append("" if missing else str(label).strip())
            wheres.append(place)
    except InputFileError as exc:
        raise ValueError(str(exc)) from None
    if not images:
        raise ValueError(f"{source}: the table has no rows")
    return _Rows(
        images=images,
        coords=np.asarray(coordinates, dtype=np.float64).reshape(-1, 4),
        labels=labels,
        wheres=wheres,
        has_labels="label" in header,
        source=str(source),
    )


def _records_of(table: Any) -> tuple[Path, list[tuple[str, dict[str, Any]]], set[str]]:
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
        (f"row {i}", {str(k).strip().lower(): _plain(v) for k, v in record.items()})
        for i, record in enumerate(items)
    ]
    return source, records, header


def _plain(value: Any) -> Any:
    """NumPy scalars (from a DataFrame) as Python ones, which the CLI's checks expect."""
    return value.item() if isinstance(value, np.generic) else value


def _partition(rows: _Rows, index: int, size: int) -> _Partition:
    start, stop = index * size, min(len(rows.images), (index + 1) * size)
    return _Partition(
        index=index,
        start=start,
        images=tuple(rows.images[start:stop]),
        coords=rows.coords[start:stop],
        labels=tuple(rows.labels[start:stop]),
        wheres=tuple(rows.wheres[start:stop]),
    )


def _with_fingerprint(job: _Job, rows: _Rows) -> _Job:
    """``job`` with the hash of everything that decides the output's bytes (and where they go)."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in job.__dict__.items() if k not in ("fingerprint", "out")}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    digest.update(cropcore.__version__.encode())
    for image, box, label in zip(rows.images, rows.coords.tolist(), rows.labels, strict=True):
        digest.update(f"{image}\t{box!r}\t{label}\n".encode())
    return _Job(**{**job.__dict__, "fingerprint": digest.hexdigest()})


def _choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# -- the output -----------------------------------------------------------------------------------


def _job_meta(out: str) -> dict[str, Any] | None:
    """The job record of the crop_files output ``out``, or ``None`` if it is not one."""
    marker_job = os.path.join(out, _MARKERS, "job.json")
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


def _prepare_output(job: _Job, rows: _Rows, partitions: int, overwrite: bool) -> None:
    """Create ``job.out`` for the job, or check that it holds this very job (a rerun)."""
    out = job.out
    if os.path.exists(out):
        meta = _job_meta(out)
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
        _create_zarr(job, rows, partitions, meta)
    else:
        os.makedirs(os.path.join(out, _MARKERS, "done"))
        _write_atomically(os.path.join(out, _MARKERS, "job.json"), json.dumps(meta, indent=1))


def _create_zarr(job: _Job, rows: _Rows, partitions: int, meta: dict[str, Any]) -> None:
    import zarr

    count, (height, width) = len(rows.images), job.crop_size
    assert job.channels is not None
    crop_bytes = height * width * job.channels * np.dtype(job.dtype).itemsize
    per_chunk = _largest_divisor(job.partition_size, max(1, ZARR_CHUNK_BYTES // crop_bytes))
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


def _largest_divisor(n: int, at_most: int) -> int:
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


def _write_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see all of it or nothing (rename is atomic)."""
    temporary = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)


# -- the tasks ------------------------------------------------------------------------------------


def _run_partition(job: _Job, part: _Partition) -> dict[str, Any]:
    """One task: crop and write one partition, then mark it done. Never raises for bad input.

    Returns ``{"partition", "rows", "seconds", "status"}`` with status ``"written"`` or
    ``"already done"`` (a retry after the partition was marked done), or ``"error"`` and
    ``"error"``: the message (a bad image file, a box that overflows float32, ...).
    """
    started = time.perf_counter()
    result: dict[str, Any] = {"partition": part.index, "rows": len(part.images)}
    try:
        if _is_done(job, part.index):
            return {**result, "status": "already done", "seconds": 0.0}
        crops = _crop_partition(job, part)
        _write_partition(job, part, crops)
        _mark_done(job, part)
    except Exception as exc:
        logger.warning("crop_files partition %d failed: %s", part.index, exc)
        return {**result, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    return {**result, "status": "written", "seconds": time.perf_counter() - started}


def _crop_partition(job: _Job, part: _Partition) -> list[np.ndarray]:
    """The partition's crops, in row order: ``(H, W, C)`` arrays of ``job.dtype``."""
    from cropcore.cli.files import BOX_COLUMNS, BOXES_PER_CALL, pixel_to_normalized, to_uint8

    by_image: dict[str, list[int]] = {}
    for position, image in enumerate(part.images):
        by_image.setdefault(image, []).append(position)
    crops: list[Any] = [None] * len(part.images)
    for image, positions in by_image.items():
        pixels = _load_image(image, job.channels, part.wheres[positions[0]])
        height, width = pixels.shape[:2]
        boxes = part.coords[positions]
        if job.coords == "pixels":
            boxes = np.array([pixel_to_normalized(b, height, width) for b in boxes])
        with np.errstate(over="ignore"):
            finite = np.isfinite(boxes.astype(np.float32))
        if not finite.all():
            row, column = np.argwhere(~finite)[0]
            raise ValueError(
                f"{part.wheres[positions[row]]}: {BOX_COLUMNS[column]} overflows float32 once "
                f"converted from pixels (it must be finite)"
            )
        for first in range(0, len(positions), BOXES_PER_CALL):
            chunk = positions[first : first + BOXES_PER_CALL]
            result = cropcore.crop_and_resize(
                pixels[None],
                boxes[first : first + len(chunk)],
                np.zeros(len(chunk), np.int32),
                job.crop_size,
                job.method,
                job.extrapolation_value,
                backend=job.backend,
            )
            if job.dtype == "uint8":
                result = to_uint8(result)
            for position, crop in zip(chunk, result, strict=True):
                crops[position] = crop
    return crops


_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def _load_image(path: str, channels: int | None, where: str) -> np.ndarray:
    """uint8 ``(height, width, channels)`` pixels of an image file, read as ``cropcore crop`` reads them."""
    from cropcore.cli.files import InputFileError, load_pixels

    try:
        pixels = load_pixels(path)
    except InputFileError as exc:
        raise ValueError(f"{exc} (named at {where})") from None
    if channels is not None and pixels.shape[2] != channels:
        from PIL import Image

        source = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
        pixels = np.asarray(Image.fromarray(source).convert(_MODES[channels]))
        pixels = np.ascontiguousarray(pixels.reshape(*pixels.shape[:2], channels))
    return pixels


def _write_partition(job: _Job, part: _Partition, crops: list[np.ndarray]) -> None:
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
    from cropcore.cli.files import label_slug, save_image

    for offset, crop in enumerate(crops):
        label = label_slug(part.labels[offset])
        suffix = f"_{label}" if label else ""
        stem = Path(part.images[offset]).stem
        name = f"{stem}_{part.start + offset:0{job.digits}d}{suffix}.{job.format}"
        # Written under a temporary name and renamed: a killed task leaves no half-written file.
        temporary = os.path.join(job.out, f".{name}.{uuid.uuid4().hex}.tmp")
        save_image(crop, Path(temporary), job.format)
        os.replace(temporary, os.path.join(job.out, name))


def _is_done(job: _Job, partition: int) -> bool:
    if job.format == "zarr":
        import zarr

        return bool(zarr.open_array(store=os.path.join(job.out, "done"), mode="r")[partition])
    return os.path.exists(_marker_path(job.out, partition))


def _mark_done(job: _Job, part: _Partition) -> None:
    """Mark the partition done, atomically, after all its crops are written."""
    if job.format == "zarr":
        import zarr

        # One chunk per partition, and Zarr writes a chunk atomically (a temporary file renamed).
        zarr.open_array(store=os.path.join(job.out, "done"), mode="r+")[part.index] = 1
        return
    record = {"partition": part.index, "start": part.start, "stop": part.stop}
    _write_atomically(_marker_path(job.out, part.index), json.dumps(record))


def _marker_path(out: str, partition: int) -> str:
    return os.path.join(out, _MARKERS, "done", f"part-{partition:06d}.json")


# -- running --------------------------------------------------------------------------------------


def _default_client(client: Any) -> Any:
    if client is not None:
        return client
    if "distributed" not in sys.modules:
        return None  # no Client can exist
    from distributed import default_client

    try:
        return default_client()
    except ValueError:
        return None


def _run_distributed(
    client: Any, job: _Job, parts: list[_Partition], reporter: _Progress, timeout: float | None
) -> tuple[list[dict[str, Any]], int]:
    from distributed import as_completed

    keys = [f"cropcore-crop-files-{job.fingerprint[:12]}-{part.index}" for part in parts]
    futures = [
        client.submit(_run_partition, job, part, key=key, pure=False)
        for part, key in zip(parts, keys, strict=True)
    ]
    partition_of = {key: part.index for part, key in zip(parts, keys, strict=True)}
    results = []
    try:
        for future in as_completed(futures, timeout=timeout):
            if future.status == "finished":
                results.append(future.result())
            else:  # the task itself failed: KilledWorker after it took down workers, ...
                if future.status == "error":
                    exc = future.exception()
                    message = f"{type(exc).__name__}: {exc}"
                else:
                    message = f"the task was {future.status}"
                partition = partition_of[future.key]
                results.append({"partition": partition, "status": "error", "error": message})
            future.release()  # a worker lost later need not recompute a partition already done
            reporter.advance()
    except BaseException:
        client.cancel(futures)
        raise
    return results, len(client.nthreads()) or 1


def _run_local(job: _Job, parts: list[_Partition], reporter: _Progress) -> list[dict[str, Any]]:
    from dask.callbacks import Callback

    tasks = [
        dask.delayed(_run_partition, pure=False)(job, part, dask_key_name=f"part-{part.index}")
        for part in parts
    ]

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(key, str) and key.startswith("part-"):
            reporter.advance()

    with Callback(posttask=posttask):
        return list(dask.compute(*tasks))


class _Progress:
    """Progress of a job in partitions: rich's bar, plain lines, a callback, or nothing."""

    def __init__(self, progress: bool | Callable[[int, int], None], total: int, title: str):
        self.total, self.done, self.title = total, 0, title
        self.callback = progress if callable(progress) else None
        self.show = progress is True and total > 0
        self._bar: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> _Progress:
        if self.show:
            try:
                from rich.progress import Progress
            except ImportError:
                Progress = None
            if Progress is not None and sys.stderr.isatty():
                from rich.console import Console

                bar = Progress(console=Console(stderr=True))
                self._stack.enter_context(bar)
                self._bar = (bar, bar.add_task(self.title, total=self.total))
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()

    def advance(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)
        if not self.show:
            return
        if self._bar is not None:
            bar, task = self._bar
            bar.advance(task)
        elif self.done == self.total or self.done % max(1, self.total // 10) == 0:
            print(f"{self.title}: {self.done}/{self.total} partitions", file=sys.stderr)
