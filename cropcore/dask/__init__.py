"""Scale out with Dask: ``crop_and_resize`` and ``crop2d`` on dask arrays, and a file pipeline.

Requirements:

- Imported only when used: ``import cropcore`` never imports this package, nor dask, distributed or
  zarr. ``import cropcore.dask`` imports dask (``pip install "cropcore[dask]"``); distributed,
  zarr and Pillow are imported by the functions that use them, and :func:`crop_files` checks for
  Pillow and zarr when it is called, before anything is written or submitted.
- Dask does the scheduling; cropcore only builds graphs and tasks. Each chunk runs through
  cropcore's normal validation and dispatch, so a result is bit-identical to
  ``cropcore.crop_and_resize`` on the whole NumPy array with the same backend.
- Bad calls are refused up front, on the client, with the messages ``cropcore.crop_and_resize``
  gives. What that needs computed is small and named in each docstring.
- :func:`crop_files` can be killed and rerun: a partition is marked done only after all its crops
  are written, every write goes to the same place with the same bytes, and a rerun skips the
  partitions marked done.

The modules: :mod:`~cropcore.dask.arrays` (dask arrays) and :mod:`~cropcore.dask.pipeline`
(:func:`crop_files`), whose job, output and tasks are in ``_job``, ``_output`` and ``_tasks``.
Box and image files are read with :mod:`cropcore.cli.files`, as ``cropcore crop`` reads them.
"""

from __future__ import annotations

try:
    import dask
    import dask.array  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        f"cropcore.dask needs dask, which is not installed ({exc}); install it with: "
        'pip install "cropcore[dask]"'
    ) from exc

from cropcore.dask.arrays import crop2d, crop_and_resize
from cropcore.dask.pipeline import (
    FILE_FORMATS,
    CropFilesError,
    CropFilesReport,
    crop_files,
    finished_partitions,
)

__all__ = [
    "FILE_FORMATS",
    "CropFilesError",
    "CropFilesReport",
    "crop2d",
    "crop_and_resize",
    "crop_files",
    "finished_partitions",
]
