"""``cropcore crop``: crop boxes out of image files and write each crop as an image file.

Requirements: Pillow and rich (the ``cli`` extra), imported when the command runs. Reading the
box and image files is :mod:`cropcore.cli.files`' job; this module checks the boxes against
cropcore, crops image by image and writes the files.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

import cropcore
from cropcore.cli.errors import EXIT_OK, REFUSALS, CliError, output_directory, require
from cropcore.cli.files import (
    BOX_COLUMNS,
    BOXES_PER_CALL,
    FORMATS,
    BoxRow,
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
(NaN is written as 0). JPEG output drops the alpha channel.
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

  boxes.json:
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
    """``--extrapolation-value``: any float, or argparse's one-line error."""
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


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
        type=number,
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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
    out = output_directory(args.out)
    digits = len(str(len(rows) - 1))
    rows_by_image: dict[int, list[BoxRow]] = {}
    for row in rows:
        rows_by_image.setdefault(row.image, []).append(row)
    console = Console(stderr=True)
    written = 0
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet or not console.is_terminal,
    )
    with progress:
        task = progress.add_task("cropping", total=len(images))
        for index, image in enumerate(images):
            progress.update(task, description=f"cropping {os.path.basename(image.path)}")
            mine = rows_by_image.get(index, [])
            if not mine:
                if not args.quiet:
                    console.print(
                        f"note: no boxes for {image.path}",
                        highlight=False,
                        soft_wrap=True,
                        markup=False,
                    )
                progress.advance(task)
                continue
            pixels = load_pixels(image.path)[None]
            stem = Path(image.path).stem
            for start in range(0, len(mine), BOXES_PER_CALL):
                chunk = mine[start : start + BOXES_PER_CALL]
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
                for row, crop in zip(chunk, to_uint8(crops), strict=True):
                    label = label_slug(row.label)
                    suffix = f"_{label}" if label else ""
                    name = f"{stem}_{row.number:0{digits}d}{suffix}.{args.format}"
                    save_image(crop, out / name, args.format)
                    written += 1
            progress.advance(task)
        progress.update(task, description=f"cropped {len(images)} image(s)")
    if not args.quiet:
        height, width = args.size
        print(
            f"wrote {written} crop(s) of {height}x{width} from {len(images)} image(s) to "
            f"{out.resolve()} (backend {decision.backend})"
        )
    return EXIT_OK
