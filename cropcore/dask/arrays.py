"""``crop_and_resize`` and ``crop2d`` on dask arrays: lazy results, built chunk by chunk.

Requirements: dask (``pip install "cropcore[dask]"``). Each chunk runs through cropcore's normal
validation and dispatch, so a result is bit-identical to ``cropcore.crop_and_resize`` on the whole
NumPy array with the same backend. Bad calls are refused here, on the client, with the messages
``cropcore.crop_and_resize`` gives; what that needs computed is small and named in each docstring.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

import cropcore
from cropcore import dispatch, spec
from cropcore.arrays import library_for, library_name

__all__ = ["crop2d", "crop_and_resize"]

logger = logging.getLogger("cropcore.dask")


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
