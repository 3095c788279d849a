"""Render the pictures of docs/semantics.md from the bundled photo, with cropcore itself.

    python scripts/make_doc_figures.py              # writes docs/img/*.png
    python scripts/make_doc_figures.py --out DIR    # writes them somewhere else

Every crop in the pictures is computed by ``cropcore.crop_and_resize`` (or ``cropcore.crop2d``) on
the NumPy reference backend, from ``cropcore/data/chelsea.png`` read with Pillow. The output is
deterministic, pixel for pixel, on any machine: the reference backend is bit-exact, float crops
become uint8 with ``np.rint``, enlargements repeat pixels with NumPy, and the only drawing is
axis-aligned rectangles (no text, no fonts, no anti-aliasing, no resampling by Pillow).
``tests/test_doc_figures.py`` regenerates the pictures and fails when they differ from the
committed ones, so a picture cannot drift from the code.

Conventions used by every picture: boxes are normalised ``[y1, x1, y2, x2]``; a box is drawn in
cyan on the picture of the image it is cut from, through the pixel centres its corners map to
(normalised ``y`` is pixel ``y * (H - 1)``); panels run left to right, separated by white gaps.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import cropcore

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "cropcore" / "data" / "chelsea.png"
DEFAULT_OUT = ROOT / "docs" / "img"

BACKEND = "numpy"  # the reference: bit-exact, so the pictures are the same everywhere
GAP = 8  # pixels of white between panels
WHITE = (255, 255, 255)
BOX = (0, 255, 255)  # cyan: the box outline
SAMPLE = (255, 230, 0)  # yellow: the sample points of a crop
CENTRE = (255, 0, 255)  # magenta: the one sample of a crop of size 1
MARGIN = (215, 215, 215)  # light grey: the plane around an image, where boxes may reach

# The image as a thumbnail (a cropcore resize of the whole photo), used as the "source" panel.
THUMB_SIZE = (120, 181)  # (height, width): 299 / 119 and 450 / 180 are both about 2.5


def load_photo() -> np.ndarray:
    """The bundled photo as a uint8 array of shape (1, 300, 451, 3)."""
    with Image.open(SOURCE) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)[np.newaxis]


def crop(image: np.ndarray, box: Sequence[float], size: tuple[int, int], **kwargs) -> np.ndarray:
    """One crop of ``image[0]`` by the reference backend, as uint8 ``(height, width, 3)``."""
    crops = cropcore.crop_and_resize(image, [box], [0], size, backend=BACKEND, **kwargs)
    return to_uint8(crops[0])


def to_uint8(values: np.ndarray) -> np.ndarray:
    """float32 pixel values rounded to uint8 (half to even, clipped to [0, 255])."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def enlarge(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Each pixel as a ``factor x factor`` block (no interpolation: the pixels as they are)."""
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)


def thumbnail(photo: np.ndarray) -> np.ndarray:
    """The whole photo, resized by cropcore (box ``[0, 0, 1, 1]``)."""
    return crop(photo, [0, 0, 1, 1], THUMB_SIZE)


def pixel_rect(box: Sequence[float], height: int, width: int, origin=(0, 0)) -> list[int]:
    """The rectangle ``[left, top, right, bottom]`` through a box's corner pixels (sorted).

    ``origin`` is where pixel (0, 0) of the image lies on the canvas, as ``(row, column)``.
    """
    y1, x1, y2, x2 = box
    ys = sorted(round(v * (height - 1)) + origin[0] for v in (y1, y2))
    xs = sorted(round(v * (width - 1)) + origin[1] for v in (x1, x2))
    return [xs[0], ys[0], xs[1], ys[1]]


def draw_box(canvas: np.ndarray, rect: Sequence[int], colour=BOX) -> np.ndarray:
    """``canvas`` with a 2-pixel outline around ``rect`` (``[left, top, right, bottom]``)."""
    im = Image.fromarray(canvas)
    left, top, right, bottom = rect
    ImageDraw.Draw(im).rectangle(
        [left - 1, top - 1, right + 1, bottom + 1], outline=colour, width=2
    )
    return np.asarray(im)


def draw_marks(canvas: np.ndarray, points: Sequence[tuple[float, float]], colour, half: int = 3):
    """``canvas`` with a square mark (black border) centred on each ``(row, column)`` point."""
    im = Image.fromarray(canvas)
    draw = ImageDraw.Draw(im)
    for row, column in points:
        r, c = round(row), round(column)
        draw.rectangle([c - half, r - half, c + half, r + half], fill=colour, outline=(0, 0, 0))
    return np.asarray(im)


def row(panels: Sequence[np.ndarray]) -> np.ndarray:
    """Panels side by side, top-aligned, on white, with ``GAP`` pixels around and between them."""
    height = max(p.shape[0] for p in panels) + 2 * GAP
    width = sum(p.shape[1] for p in panels) + GAP * (len(panels) + 1)
    canvas = np.empty((height, width, 3), dtype=np.uint8)
    canvas[...] = WHITE
    x = GAP
    for panel in panels:
        canvas[GAP : GAP + panel.shape[0], x : x + panel.shape[1]] = panel
        x += panel.shape[1] + GAP
    return canvas


# ------------------------------------------------------------------------------------------------
# The pictures. Each returns a uint8 (height, width, 3) array.


def bilinear_vs_nearest(photo: np.ndarray) -> np.ndarray:
    """The left eye's pupil, 31 x 31 pixels of the photo, enlarged to 160 x 160 both ways."""
    _, height, width, _ = photo.shape
    box = [92 / (height - 1), 152 / (width - 1), 122 / (height - 1), 182 / (width - 1)]
    source = draw_box(thumbnail(photo), pixel_rect(box, *THUMB_SIZE))
    return row(
        [
            source,
            crop(photo, box, (160, 160), method="bilinear"),
            crop(photo, box, (160, 160), method="nearest"),
        ]
    )


def flipped_boxes(photo: np.ndarray) -> np.ndarray:
    """One box around the left eye, as given, with x1 and x2 swapped, and with y1 and y2 swapped."""
    y1, x1, y2, x2 = 0.22, 0.26, 0.52, 0.50
    size = (108, 130)  # the box is 89.7 x 108 pixels of the photo
    source = draw_box(thumbnail(photo), pixel_rect([y1, x1, y2, x2], *THUMB_SIZE))
    return row(
        [
            source,
            crop(photo, [y1, x1, y2, x2], size),
            crop(photo, [y1, x2, y2, x1], size),  # x1 > x2: mirrored left to right
            crop(photo, [y2, x1, y1, x2], size),  # y1 > y2: upside down
        ]
    )


def extrapolation(photo: np.ndarray) -> np.ndarray:
    """A box reaching past the top and the left edge, with extrapolation_value 0 and 128."""
    box = [-0.3, -0.25, 0.5, 0.45]
    size = (120, 132)  # about the box's aspect: 239 x 315 pixels of the photo
    thumb = thumbnail(photo)
    th, tw = THUMB_SIZE
    # The thumbnail on a grey plane large enough to show the part of the box outside the image.
    pad_top, pad_left = round(0.3 * (th - 1)) + GAP, round(0.25 * (tw - 1)) + GAP
    plane = np.empty((th + pad_top + GAP, tw + pad_left + GAP, 3), dtype=np.uint8)
    plane[...] = MARGIN
    plane[pad_top : pad_top + th, pad_left : pad_left + tw] = thumb
    source = draw_box(plane, pixel_rect(box, th, tw, origin=(pad_top, pad_left)))
    return row(
        [
            source,
            crop(photo, box, size, extrapolation_value=0),
            crop(photo, box, size, extrapolation_value=128),
        ]
    )


def sample_points(photo: np.ndarray) -> np.ndarray:
    """Where a 4 x 4 crop and a 1 x 1 crop of one box sample a 12 x 12 patch of the photo."""
    _, height, width, _ = photo.shape
    top, left, n, scale = 96, 163, 12, 16  # the patch: rows 96-107, columns 163-174
    # Box corners on pixel centres (rows 97 and 106, columns 164 and 173).
    pixel_box = (top + 1, left + 1, top + n - 2, left + n - 2)
    box = [pixel_box[0] / (height - 1), pixel_box[1] / (width - 1)]
    box += [pixel_box[2] / (height - 1), pixel_box[3] / (width - 1)]

    def on_patch(y: float, x: float) -> tuple[float, float]:
        # Pixel centres are at integer coordinates; pixel k of the patch spans [k, k + 1) * scale.
        return ((y - top) + 0.5) * scale, ((x - left) + 0.5) * scale

    patch = enlarge(photo[0, top : top + n, left : left + n], scale)
    (r1, c1), (r2, c2) = on_patch(*pixel_box[:2]), on_patch(*pixel_box[2:])
    patch = draw_box(patch, [round(c1), round(r1), round(c2), round(r2)])
    # The sample coordinates of a 4 x 4 crop (evenly spread, both ends included) and of a 1 x 1
    # crop (the box centre), from the formulas on the page, in pixels of the photo.
    rows = np.linspace(pixel_box[0], pixel_box[2], 4)
    columns = np.linspace(pixel_box[1], pixel_box[3], 4)
    patch = draw_marks(patch, [on_patch(y, x) for y in rows for x in columns], SAMPLE)
    centre = ((pixel_box[0] + pixel_box[2]) / 2, (pixel_box[1] + pixel_box[3]) / 2)
    patch = draw_marks(patch, [on_patch(*centre)], CENTRE)
    return row(
        [
            patch,
            enlarge(crop(photo, box, (4, 4)), 32),
            enlarge(crop(photo, box, (1, 1)), 32),
        ]
    )


def roi_align_bins(photo: np.ndarray) -> np.ndarray:
    """roi_align of one pixel box, 2 x 2 bins of 2 x 2 samples, without and with ``aligned``."""
    top, left, n, scale = 96, 163, 12, 16  # the patch of sample_points: rows 96-107, cols 163-174
    x1, y1, x2, y2 = 165.0, 98.0, 173.0, 106.0  # pixel coordinates: pixel p's centre is at p
    pooled, ratio = 2, 2
    image = photo.astype(np.float32)

    def on_patch(y: float, x: float) -> tuple[float, float]:
        return ((y - top) + 0.5) * scale, ((x - left) + 0.5) * scale

    panels = []
    for aligned in (False, True):
        offset = 0.5 if aligned else 0.0
        start_y, start_x = y1 - offset, x1 - offset
        bin_y, bin_x = (y2 - y1) / pooled, (x2 - x1) / pooled
        patch = enlarge(photo[0, top : top + n, left : left + n], scale)
        for ph in range(pooled):  # each bin's outline
            for pw in range(pooled):
                r1, c1 = on_patch(start_y + ph * bin_y, start_x + pw * bin_x)
                r2, c2 = on_patch(start_y + (ph + 1) * bin_y, start_x + (pw + 1) * bin_x)
                patch = draw_box(patch, [round(c1), round(r1), round(c2), round(r2)])
        samples = [
            on_patch(
                start_y + ph * bin_y + (iy + 0.5) * bin_y / ratio,
                start_x + pw * bin_x + (ix + 0.5) * bin_x / ratio,
            )
            for ph in range(pooled)
            for pw in range(pooled)
            for iy in range(ratio)
            for ix in range(ratio)
        ]
        patch = draw_marks(patch, samples, SAMPLE)
        result = cropcore.roi_align(
            image,
            [[0, x1, y1, x2, y2]],
            pooled,
            sampling_ratio=ratio,
            aligned=aligned,
            data_format="channels_last",
            backend=BACKEND,
        )
        panels += [patch, enlarge(to_uint8(result[0]), 48)]
    return row(panels)


def crop2d(photo: np.ndarray) -> np.ndarray:
    """``crop2d(thumbnail, ((15, 25), (40, 20)))``: the margins that go, shaded, and the result."""
    thumb = thumbnail(photo)
    (top, bottom), (left, right) = cropping = ((15, 25), (40, 20))
    result = cropcore.crop2d(thumb[np.newaxis], cropping, backend=BACKEND)[0]
    shaded = (thumb // 3).astype(np.uint8)
    th, tw = THUMB_SIZE
    shaded[top : th - bottom, left : tw - right] = thumb[top : th - bottom, left : tw - right]
    return row([shaded, result])


FIGURES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "bilinear-vs-nearest.png": bilinear_vs_nearest,
    "flipped-boxes.png": flipped_boxes,
    "extrapolation.png": extrapolation,
    "sample-points.png": sample_points,
    "crop2d.png": crop2d,
    "roi-align-bins.png": roi_align_bins,
}


def render(out: Path) -> list[Path]:
    """Write every picture into ``out`` (created if needed); return their paths."""
    out.mkdir(parents=True, exist_ok=True)
    photo = load_photo()
    paths = []
    for name, figure in FIGURES.items():
        path = out / name
        Image.fromarray(figure(photo)).save(path, optimize=True)
        paths.append(path)
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"where to write (default {DEFAULT_OUT})"
    )
    args = parser.parse_args(argv)
    for path in render(args.out):
        print(f"{path} ({path.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
