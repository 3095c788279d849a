"""The tasks of a :func:`~cropcore.dask.crop_files` job, and running them on Dask with progress.

Requirements: dask; distributed only with a ``distributed`` client (it is imported only when
``distributed`` is already loaded or a client is given); Pillow in the tasks, and rich for a
progress bar if it is installed.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import dask
import numpy as np

import cropcore
from cropcore.cli.files import (
    BOX_COLUMNS,
    BOXES_PER_CALL,
    InputFileError,
    MissingDependencyError,
    load_pixels,
    pixel_to_normalized,
    to_uint8,
)
from cropcore.cli.files import require as import_module
from cropcore.dask._job import Job, Partition
from cropcore.dask._output import is_done, mark_done, write_partition

__all__ = [
    "INSTALL",
    "Progress",
    "default_client",
    "load_image",
    "require",
    "run_distributed",
    "run_local",
    "run_partition",
]

logger = logging.getLogger("cropcore.dask")

#: How to install what cropcore.dask needs.
INSTALL = 'pip install "cropcore[dask]"'


def require(module: str, what: str) -> Any:
    """Import ``module`` (``"PIL.Image"``, ``"zarr"``), or raise ``ImportError`` naming the
    ``dask`` extra and ``what`` needs it."""
    try:
        return import_module(module)
    except MissingDependencyError as exc:
        raise _missing(exc, what) from None


def _missing(exc: MissingDependencyError, what: str) -> ImportError:
    return ImportError(
        f"{what} needs {exc.package}, which is not installed ({exc.reason}); install it with: "
        f"{INSTALL}"
    )


def run_partition(job: Job, part: Partition) -> dict[str, Any]:
    """One task: crop and write one partition, then mark it done. Never raises for bad input.

    Returns ``{"partition", "rows", "seconds", "status"}`` with status ``"written"`` or
    ``"already done"`` (a retry after the partition was marked done), or ``"error"`` and
    ``"error"``: the message (a bad image file, a box that overflows float32, ...).
    """
    started = time.perf_counter()
    result: dict[str, Any] = {"partition": part.index, "rows": len(part.images)}
    try:
        if is_done(job, part.index):
            return {**result, "status": "already done", "seconds": 0.0}
        crops = crop_partition(job, part)
        write_partition(job, part, crops)
        mark_done(job, part)
    except Exception as exc:
        if isinstance(exc, MissingDependencyError):  # a worker without Pillow or zarr
            exc = _missing(exc, "crop_files (on every worker)")
        logger.warning("crop_files partition %d failed: %s", part.index, exc)
        return {**result, "status": "error", "error": f"{type(exc).__name__}: {exc}"}
    return {**result, "status": "written", "seconds": time.perf_counter() - started}


def crop_partition(job: Job, part: Partition) -> list[np.ndarray]:
    """The partition's crops, in row order: ``(H, W, C)`` arrays of ``job.dtype``."""
    by_image: dict[str, list[int]] = {}
    for position, image in enumerate(part.images):
        by_image.setdefault(image, []).append(position)
    crops: list[Any] = [None] * len(part.images)
    for image, positions in by_image.items():
        pixels = load_image(image, job.channels, part.wheres[positions[0]])
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


MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def load_image(path: str, channels: int | None, where: str) -> np.ndarray:
    """uint8 ``(height, width, channels)`` pixels of an image file, read as ``cropcore crop`` reads them."""
    try:
        pixels = load_pixels(path)
    except InputFileError as exc:
        raise ValueError(f"{exc} (named at {where})") from None
    if channels is not None and pixels.shape[2] != channels:
        from PIL import Image

        source = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
        pixels = np.asarray(Image.fromarray(source).convert(MODES[channels]))
        pixels = np.ascontiguousarray(pixels.reshape(*pixels.shape[:2], channels))
    return pixels


def default_client(client: Any) -> Any:
    """``client``, else distributed's default client if there is one, else ``None``."""
    if client is not None:
        return client
    if "distributed" not in sys.modules:
        return None  # no Client can exist
    from distributed import default_client as distributed_default

    try:
        return distributed_default()
    except ValueError:
        return None


def run_distributed(
    client: Any, job: Job, parts: list[Partition], reporter: Progress, timeout: float | None
) -> tuple[list[dict[str, Any]], int]:
    from distributed import as_completed

    keys = [f"cropcore-crop-files-{job.fingerprint[:12]}-{part.index}" for part in parts]
    futures = [
        client.submit(run_partition, job, part, key=key, pure=False)
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


def run_local(job: Job, parts: list[Partition], reporter: Progress) -> list[dict[str, Any]]:
    from dask.callbacks import Callback

    tasks = [
        dask.delayed(run_partition, pure=False)(job, part, dask_key_name=f"part-{part.index}")
        for part in parts
    ]

    def posttask(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if isinstance(key, str) and key.startswith("part-"):
            reporter.advance()

    with Callback(posttask=posttask):
        return list(dask.compute(*tasks))


class Progress:
    """Progress of a job in partitions: rich's bar, plain lines, a callback, or nothing."""

    def __init__(self, progress: bool | Callable[[int, int], None], total: int, title: str):
        self.total, self.done, self.title = total, 0, title
        self.callback = progress if callable(progress) else None
        self.show = progress is True and total > 0
        self._bar: Any = None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Progress:
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
