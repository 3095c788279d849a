"""``cropcore crop``: crop boxes out of image files and write each crop as an image file.

Requirements: Pillow and rich (the ``cli`` extra), imported when the command runs. Reading the
box and image files is :mod:`cropcore.cli.files`' job; this module checks the boxes against
cropcore, crops image by image and writes the files.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

import cropcore
from cropcore.cli.errors import EXIT_OK, REFUSALS, CliError, output_directory, require
from cropcore.cli.files import (
    BOX_COLUMNS,
    BOXES_PER_CALL,
    FORMATS,
    TO_UINT8_BLOCK,
    BoxRow,
    ImageFile,
    label_slug,
    load_pixels,
    open_image,
    pixel_to_normalized,
    read_boxes,
    save_image,
    to_uint8,
)

HELP = """\
Crop boxes out of image files with cropcore.crop_and_resize (TensorFlow's
tf.image.crop_and_resize) and write each crop as an image file.

Images are read with Pillow as 8-bit grey (L), RGB or RGBA: 1-bit images become
L, LA becomes RGBA, palette images RGB (RGBA if they have transparency), CMYK,
YCbCr, LAB and HSV become RGB, 16-bit grey is scaled to 8 bits. Only the first
frame of an animation is read, and EXIF orientation is ignored: boxes refer to
the pixels as stored (as with tf.io.decode_image).

The uint8 image goes in and crop_and_resize returns float32; each crop is then
clipped to [0, 255] and rounded to the nearest integer (halves up) to be
written as an 8-bit file. Samples outside the image take --extrapolation-value
(0 to 255). JPEG output drops the alpha channel (a note says so).

All or nothing: the crops are written to a temporary folder inside --out and
moved in only when every image has been cropped, so a failure (a truncated
image, a full disk, Ctrl-C) leaves --out as it was. A box none of whose
samples falls inside its image gives a crop of --extrapolation-value only:
each is warned about, and if every box is like that the command refuses
(exit 2); usually these are pixel coordinates given without --coords pixels.
Before any image is decoded, the whole job's memory (the decoded image, the
float32 crops of one call and the backend's temporaries, the 8-bit crops,
encoding) is held to the memory available; a job that cannot fit is refused
(exit 2).
"""

EPILOG = """box file (--boxes), CSV or JSON:
  CSV  a header line naming the columns image,y1,x1,y2,x2 and optionally label
       (any order, case-insensitive; other columns are ignored), then one box
       per line. Tab- or semicolon-separated files work too.
  JSON a list of objects with the same keys, or {"boxes": [...]}.
  image is the file name of one of IMAGES (as given, or its base name) or its
  index among them, from 0; it may be left out when there is one image.
  y1,x1,y2,x2 are the box's corners, TensorFlow's order. With --coords
  normalized (the default) y runs from 0 (top row) to 1 (bottom row) as in
  TensorFlow; with --coords pixels from 0 to H-1, converted as y/(H-1) and
  x/(W-1). (On an image one pixel high, y is divided by 1 instead: TensorFlow
  samples the only row whatever the box says. Likewise x for one pixel wide.)
  y1 > y2 (or x1 > x2) flips the crop; coordinates outside the image sample
  --extrapolation-value. Non-finite coordinates are refused.

output:
  one file per box in --out, named <image-stem>_<box-number>[_<label>].<format>
  with the box's number in the box file (from 0, zero-padded) and the label with
  characters other than letters, digits, '.', '-' and '_' replaced by '_'.

examples:
  cropcore crop photo.jpg --boxes boxes.csv --size 224 224
  cropcore crop a.png b.png --boxes boxes.json --coords pixels --out crops/
  cropcore crop scan.tif --boxes rois.csv --method nearest --format jpg

  boxes.csv:
    image,y1,x1,y2,x2,label
    photo.jpg,0.1,0.2,0.6,0.8,dog
    photo.jpg,0,0,1,1,whole

  boxes.json (pixel coordinates: give --coords pixels, as the example above):
    [{"image": "a.png", "y1": 10, "x1": 20, "y2": 110, "x2": 220, "label": "car"},
     {"image": 1, "y1": 0, "x1": 0, "y2": 63, "x2": 63}]
"""


def positive_int(text: str) -> int:
    """``--size``'s values: positive integers, or argparse's one-line error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def number(text: str) -> float:
    """Any float, or argparse's one-line error."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


def pixel_value(text: str) -> float:
    """``--extrapolation-value``: a number from 0 to 255 (what an 8-bit file can hold)."""
    value = number(text)
    if not 0.0 <= value <= 255.0:  # NaN too
        raise argparse.ArgumentTypeError(
            f"must be a number from 0 to 255 (an 8-bit pixel value), got {text!r}"
        )
    return value


NAME = "crop"
SUMMARY = "crop boxes out of image files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cropcore crop``."""
    parser.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)"
    )
    parser.add_argument(
        "--boxes", required=True, metavar="FILE", help="the box file, CSV or JSON (see below)"
    )
    parser.add_argument(
        "--coords",
        choices=("normalized", "pixels"),
        default="normalized",
        help="the box file's coordinates: normalized, 0 to 1 as in TensorFlow (default), or pixels, 0 to H-1",
    )
    parser.add_argument(
        "--size",
        nargs=2,
        type=positive_int,
        default=[224, 224],
        metavar=("H", "W"),
        help="crop height and width in pixels (default: 224 224)",
    )
    parser.add_argument(
        "--method",
        choices=("bilinear", "nearest"),
        default="bilinear",
        help="sampling (default: bilinear)",
    )
    parser.add_argument(
        "--extrapolation-value",
        type=pixel_value,
        default=0.0,
        metavar="V",
        help="value of samples outside the image, 0-255 (default: 0)",
    )
    parser.add_argument(
        "--backend", metavar="NAME", help="backend name or alias (default: chosen automatically)"
    )
    parser.add_argument(
        "--out", default="crops", metavar="DIR", help="output directory (default: ./crops)"
    )
    parser.add_argument(
        "--format", choices=sorted(FORMATS), default="png", help="output file format (default: png)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar, notes or summary"
    )


def run(args: argparse.Namespace) -> int:
    """Run ``cropcore crop``; return the exit status."""
    require("PIL.Image")
    require("rich")
    from rich.console import Console

    images = [open_image(p) for p in args.images]
    rows = read_boxes(args.boxes, [image.path for image in images])
    boxes = np.empty((len(rows), 4), dtype=np.float64)
    for i, row in enumerate(rows):
        image = images[row.image]
        coords = row.coords
        if args.coords == "pixels":
            coords = pixel_to_normalized(coords, image.height, image.width)
        with np.errstate(over="ignore"):
            as_float32 = np.float32(coords)
        if not np.isfinite(as_float32).all():
            key = BOX_COLUMNS[int(np.argmin(np.isfinite(as_float32)))]
            raise CliError(
                f"{args.boxes}: {row.where}: {key} overflows float32 (it must be finite)"
            )
        boxes[i] = coords
    # Check the backend, crop size and extrapolation value once, before any image is decoded.
    try:
        decision = cropcore.explain(
            "crop_and_resize",
            np.zeros((1, 1, 1, 1), np.uint8),
            np.zeros((0, 4), np.float32),
            np.zeros((0,), np.int32),
            tuple(args.size),
            args.method,
            args.extrapolation_value,
            backend=args.backend,
        )
    except REFUSALS as exc:
        raise CliError(str(exc)) from None
    console = Console(stderr=True)
    warnings = _boxes_outside(args, rows, boxes, images)
    rows_by_image: dict[int, list[BoxRow]] = {}
    for row in rows:
        rows_by_image.setdefault(row.image, []).append(row)
    per_call = _boxes_per_call(args, images, rows_by_image, decision.backend)
    for line in warnings:
        console.print(line, highlight=False, soft_wrap=True, markup=False)
    existed = Path(args.out).is_dir()
    out = output_directory(args.out)
    # All or nothing: the crops go to a folder inside --out (the same file system, so moving them
    # in is a rename) and are moved in once every image has been cropped.
    staging = Path(tempfile.mkdtemp(prefix=".cropcore-crop-", dir=out))
    try:
        names = _crop_into(args, images, rows_by_image, boxes, per_call, staging, console)
        for name in names:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if not existed:
            with contextlib.suppress(OSError):  # it stays if the crops were moved in
                out.rmdir()
    if not args.quiet:
        height, width = args.size
        print(
            f"wrote {len(names)} crop(s) of {height}x{width} from {len(images)} image(s) to "
            f"{out.resolve()} (backend {decision.backend})"
        )
    return EXIT_OK


def _crop_into(
    args: argparse.Namespace,
    images: list[ImageFile],
    rows_by_image: dict[int, list[BoxRow]],
    boxes: np.ndarray,
    per_call: dict[int, int],
    folder: Path,
    console: Any,
) -> list[str]:
    """Crop every image's boxes into ``folder``; the names of the files written."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    digits = len(str(sum(map(len, rows_by_image.values())) - 1))
    names: list[str] = []
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("crops"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=args.quiet or not console.is_terminal,
    )
    jpeg = FORMATS[args.format] == "JPEG"
    with progress:
        task = progress.add_task("cropping", total=sum(map(len, rows_by_image.values())))
        for index, image in enumerate(images):
            progress.update(task, description=f"cropping {os.path.basename(image.path)}")
            mine = rows_by_image.get(index, [])
            if not mine:
                _note(args, console, f"note: no boxes for {image.path}")
                continue
            if jpeg and image.channels == 4:
                _note(
                    args,
                    console,
                    f"note: {image.path} has an alpha channel, which JPEG cannot hold: its crops "
                    "are written without it (--format png keeps it)",
                )
            pixels = load_pixels(image.path)[None]
            stem = Path(image.path).stem
            step = per_call[index]
            for start in range(0, len(mine), step):
                chunk = mine[start : start + step]
                try:
                    crops = cropcore.crop_and_resize(
                        pixels,
                        boxes[[row.number for row in chunk]],
                        np.zeros(len(chunk), np.int32),
                        tuple(args.size),
                        args.method,
                        args.extrapolation_value,
                        backend=args.backend,
                    )
                except REFUSALS as exc:
                    raise CliError(f"{image.path}: {exc}") from None
                as_uint8 = to_uint8(crops)
                del crops
                for row, crop in zip(chunk, as_uint8, strict=True):
                    label = label_slug(row.label)
                    suffix = f"_{label}" if label else ""
                    name = f"{stem}_{row.number:0{digits}d}{suffix}.{args.format}"
                    save_image(crop, folder / name, args.format)
                    names.append(name)
                    progress.advance(task)
                del as_uint8
        progress.update(task, description=f"cropped {len(images)} image(s)")
    return names


def _note(args: argparse.Namespace, console: Any, text: str) -> None:
    if not args.quiet:
        console.print(text, highlight=False, soft_wrap=True, markup=False)


#: Boxes outside their image warned about one by one, at most; the rest are counted.
MAX_WARNINGS = 10


def _boxes_outside(
    args: argparse.Namespace, rows: list[BoxRow], boxes: np.ndarray, images: list[ImageFile]
) -> list[str]:
    """Warnings for the boxes none of whose samples falls inside their image (their crops are all
    ``--extrapolation-value``); a :class:`CliError` if every box is like that."""
    height, width = args.size
    outside = [
        row
        for row, box in zip(rows, boxes.astype(np.float32), strict=True)
        if not (
            _samples_inside(box[0], box[2], images[row.image].height, height)
            and _samples_inside(box[1], box[3], images[row.image].width, width)
        )
    ]
    if not outside:
        return []
    hint = ""
    if args.coords == "normalized" and any(abs(c) > 1 for row in outside for c in row.coords):
        hint = "; are these pixel coordinates? then add --coords pixels"
    if len(outside) == len(rows):
        raise CliError(
            f"{args.boxes}: no sample of any box falls inside its image, so every crop would be "
            f"--extrapolation-value only{hint}"
        )
    lines = [
        f"warning: {args.boxes}: {row.where}: no sample of the box falls inside "
        f"{images[row.image].path} ({images[row.image].height}x{images[row.image].width}); its "
        f"crop is --extrapolation-value only{hint}"
        for row in outside[:MAX_WARNINGS]
    ]
    if len(outside) > MAX_WARNINGS:
        lines.append(f"warning: {len(outside) - MAX_WARNINGS} more boxes like that")
    return lines


def _samples_inside(start: float, end: float, size: int, samples: int) -> bool:
    """Whether a sample of TensorFlow's (``samples`` along an axis of ``size`` pixels, the box
    from ``start`` to ``end`` normalised) falls inside the image, from 0 to ``size - 1``."""
    last = size - 1
    if samples > 1:
        step = (float(end) - float(start)) * last / (samples - 1)
        where = float(start) * last + np.arange(samples) * step
    else:
        where = np.array([0.5 * (float(start) + float(end)) * last])
    return bool(((where >= 0) & (where <= last)).any())


def _boxes_per_call(
    args: argparse.Namespace,
    images: list[ImageFile],
    rows_by_image: dict[int, list[BoxRow]],
    backend: str,
) -> dict[int, int]:
    """How many boxes of each image one call crops, so that the whole job fits in memory.

    The job's peak, for one image: the decoded image, the float32 crops of one call and the
    backend's temporaries (its ``peak_bytes``), the same crops as uint8, :func:`to_uint8`'s block
    and Pillow's copies of one crop while it is encoded; or, while an image is decoded, Pillow's
    image and the array made from it. Raises :class:`CliError` if even one box per call does not
    fit, before any image is decoded.
    """
    from cropcore import memory
    from cropcore.registry import registry

    configured = cropcore.config.get("CROPCORE_MAX_OUTPUT_BYTES")
    if configured is None:
        limit, source = memory.available_memory(), "the memory available now"
    else:
        limit, source = configured, "CROPCORE_MAX_OUTPUT_BYTES"
    chosen = registry.get(backend)
    height, width = args.size
    per_call = {}
    for index, mine in rows_by_image.items():
        image = images[index]
        count = min(BOXES_PER_CALL, len(mine))
        try:
            while count > 1 and _job_peak(args, image, count, chosen) > limit:
                count //= 2
            needed = _job_peak(args, image, count, chosen)
        except REFUSALS as exc:
            raise CliError(f"{image.path}: {exc}") from None
        if needed > limit:
            raise CliError(
                f"{image.path}: cropping it to {height}x{width} needs about {_size(needed)} of "
                f"memory at its peak (the decoded image, one crop as float32 and as 8-bit, the "
                f"backend's temporaries, encoding), more than the {_size(limit)} of {source}; "
                "use a smaller --size"
            )
        per_call[index] = count
    return per_call


def _job_peak(args: argparse.Namespace, image: ImageFile, count: int, backend: Any) -> int:
    """Bytes of memory ``cropcore crop`` needs at its peak to crop ``count`` boxes of ``image``
    in one call (see :func:`_boxes_per_call`)."""
    from cropcore import spec

    height, width = args.size
    decoded = image.height * image.width * image.channels
    crop = height * width * image.channels
    call = spec.crop_and_resize_call(
        np.zeros((1, image.height, image.width, image.channels), np.uint8),  # never touched
        np.zeros((count, 4), np.float32),
        np.zeros(count, np.int32),
        (height, width),
        args.method,
        args.extrapolation_value,
    )
    result = count * crop * 4
    backend_peak = max(backend.peak_bytes(call, result), result) if backend else result
    block = min(count * crop, TO_UINT8_BLOCK) * 9  # to_uint8's float64 block and its uint8
    encoding = 2 * height * width * 4  # Pillow's copy of one crop (4 bytes a pixel) and a convert
    return max(2 * decoded, decoded + backend_peak + count * crop + block + encoding)


def _size(nbytes: int) -> str:
    """``nbytes`` for people: ``"4.8 GB"``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes} bytes"
