"""The command line: ``cropcore backends``, ``crop``, ``demo``, ``bench`` and ``conformance``.

Box files, image files and the input errors live in :mod:`cropcore._files`, which
:mod:`cropcore.dask` shares; ``bench`` is :mod:`cropcore.bench`'s command line.

Requirements:

- cropcore itself needs only NumPy and pluggy. The command line also uses rich (tables, progress
  bars) and Pillow (image files), the ``cli`` extra; both are imported inside the commands that use
  them, so ``cropcore --help``, ``--version`` and ``backends --json`` work without them, and a
  command that needs a missing one says ``pip install "cropcore[cli]"`` and exits with status 1.
- A bad input (a missing or unreadable image, a malformed box file, a bad option, an unknown
  backend, an argument cropcore refuses) ends with exit status 2 and one line on stderr that names
  the file and row at fault; never a traceback.
- Exit status: 0 success; 1 failure (``demo``: a backend disagrees with the reference or fails; a
  missing dependency); 2 bad input or usage.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import cropcore
from cropcore.errors import BackendError
from cropcore.registry import registry

__all__ = ["BoxRow", "main", "pixel_to_normalized", "read_box_records", "read_boxes", "to_uint8"]

from cropcore._files import (
    BOX_COLUMNS,
    BOXES_PER_CALL,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    FORMATS,
    BoxRow,
    CliError,
    MissingDependencyError,
    _as_uint8_array,
    _label_slug,
    _load_pixels,
    _open_image,
    _require,
    _save,
    pixel_to_normalized,
    read_box_records,
    read_boxes,
    to_uint8,
)

# --------------------------------------------------------------------------------------------------
# cropcore backends


def _cmd_backends(args: argparse.Namespace) -> int:
    found = cropcore.backends(probe=True)
    if args.json:
        payload = {"cropcore": cropcore.__version__, "backends": [b.as_dict() for b in found]}
        print(json.dumps(payload, indent=2))
        return EXIT_OK
    _require("rich")
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    colours = {"available": "green", "installed": "cyan", "unavailable": "yellow", "broken": "red"}
    table = Table(title="cropcore backends")
    for column in ("name", "aliases", "version", "status", "library", "devices", "reason"):
        table.add_column(column, overflow="fold")
    for b in found:
        table.add_row(
            escape(b.name),
            escape(", ".join(b.aliases)),
            escape(b.version),
            f"[{colours.get(b.status, 'white')}]{b.status}[/]",
            escape(b.info.array_library if b.info else ""),
            escape(", ".join(b.devices)),
            escape(b.reason),  # plugin text, e.g. 'pip install "cropcore[cupy]"': not markup
        )
    console = Console()
    console.print(table)
    if not found:
        console.print("No backend is installed: pip install cropcore installs the numpy backend.")
    return EXIT_OK


# --------------------------------------------------------------------------------------------------
# cropcore crop


def _cmd_crop(args: argparse.Namespace) -> int:
    _require("PIL.Image")
    _require("rich")
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    images = [_open_image(p) for p in args.images]
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
    except _REFUSALS as exc:
        raise CliError(str(exc)) from None
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(
            f"{out}: cannot create the output directory: {exc.strerror or exc}"
        ) from None
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
            pixels = _load_pixels(image.path)[None]
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
                except _REFUSALS as exc:
                    raise CliError(f"{image.path}: {exc}") from None
                for row, crop in zip(chunk, to_uint8(crops), strict=True):
                    label = _label_slug(row.label)
                    suffix = f"_{label}" if label else ""
                    name = f"{stem}_{row.number:0{digits}d}{suffix}.{args.format}"
                    _save(crop, out / name, args.format)
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


# --------------------------------------------------------------------------------------------------
# cropcore demo

DEMO_IMAGE = "chelsea.png"
DEMO_CROP_SIZE = (128, 192)
#: White, so that samples outside the image stand out on the dark contact sheet.
DEMO_EXTRAPOLATION_VALUE = 255.0
#: Largest |difference| from the NumPy reference (on the 0-255 scale of the uint8 photo) that
#: still counts as agreement: room for FMA rounding on GPUs, far below one grey level.
DEMO_TOLERANCE = 0.05
#: (label, (y1, x1, y2, x2) in pixels of the 300 x 451 photo). Pixel boxes of aspect 2:3 match
#: the 128 x 192 crop, so nothing is stretched.
DEMO_BOXES: tuple[tuple[str, tuple[float, float, float, float]], ...] = (
    ("whole", (0, 0, 299, 450)),
    ("eye", (75, 112, 155, 232)),
    ("eye close-up", (92, 156, 116, 192)),
    ("nose", (212, 215, 276, 311)),
    ("mirrored (x1 > x2)", (0, 450, 299, 0)),
    ("upside down (y1 > y2)", (299, 0, 0, 450)),
    ("off the edge", (-100, -150, 200, 300)),
    ("zoomed out", (-150, -225, 449, 675)),
)
DEMO_LEGEND = (
    "Rows: backend (device) and sampling method.\n"
    "Columns: one box each, [y1, x1, y2, x2] in pixels of the photo,\n"
    "given to crop_and_resize as [y1 / (H - 1), x1 / (W - 1), ...].\n"
    "3: a 24 x 36 pixel patch enlarged: bilinear is smooth, nearest blocky.\n"
    "5, 6: flipped boxes (x1 > x2, y1 > y2) give flipped crops.\n"
    "7, 8: samples outside the photo take the extrapolation_value (white)."
)


@dataclass
class _Target:
    """One backend on one device, for the demo."""

    backend: Any
    device: str

    @property
    def title(self) -> str:
        return f"{self.backend.name} ({self.device})"

    @property
    def slug(self) -> str:
        return f"{self.backend.name}-{self.device.replace(':', '')}"


@dataclass
class _Run:
    """One target and method of the demo: its crops and how they compare with the reference."""

    target: _Target
    method: str
    crops: np.ndarray | None = None
    error: str = ""
    max_abs_difference: float | None = None
    bit_identical: bool = False
    verdict: str = ""
    files: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict in ("reference", "agrees")

    def compare(self, reference: np.ndarray) -> None:
        """Set the verdict: bit-identical, within :data:`DEMO_TOLERANCE`, or not."""
        assert self.crops is not None
        self.bit_identical = self.crops.tobytes() == reference.tobytes()
        with np.errstate(invalid="ignore"):
            difference = np.abs(self.crops.astype(np.float64) - reference)
        # NaN on one side only is a disagreement, whatever the tolerance.
        difference[np.isnan(self.crops) & np.isnan(reference)] = 0.0
        self.max_abs_difference = float(np.nan_to_num(difference, nan=np.inf).max(initial=0.0))
        if self.target.backend.name == "numpy":
            self.verdict = "reference"
        elif self.bit_identical or self.max_abs_difference <= DEMO_TOLERANCE:
            self.verdict = "agrees"
        else:
            self.verdict = "DIFFERS"

    def summary(self) -> dict[str, Any]:
        """What demo.json records (JSON has no infinity: a NaN mismatch is written as "inf")."""
        difference = self.max_abs_difference
        return {
            "backend": self.target.backend.name,
            "device": self.target.device,
            "library": self.target.backend.info.array_library,
            "method": self.method,
            "verdict": self.verdict,
            "max_abs_difference": difference
            if difference is None or math.isfinite(difference)
            else "inf",
            "bit_identical": self.bit_identical,
            "error": self.error,
            "files": self.files,
        }


def _demo_targets(notes: list[str], only: Sequence[str] | None = None) -> list[_Target]:
    """Every available backend that implements crop_and_resize, on each device it can use here.

    ``only``: names or aliases of the backends to run (the numpy reference always runs).
    """
    wanted = {"numpy"}
    for name in only or ():
        resolved = registry.resolve(name)
        if resolved is None:
            raise CliError(
                f"--backend {name!r} is not an installed backend; installed: "
                f"{', '.join(registry.names()) or 'none'} (see `cropcore backends`)"
            )
        wanted.add(resolved)
    targets = []
    for backend in cropcore.backends(probe=True):
        if only and backend.name not in wanted:
            continue
        if backend.status != "available":
            notes.append(f"skipped backend {backend.name!r}: {backend.status} ({backend.reason})")
            continue
        if backend.hook("crop_and_resize") is None:
            notes.append(f"skipped backend {backend.name!r}: it does not implement crop_and_resize")
            continue
        library = backend.info.array_library
        devices = []
        if "cpu" in backend.devices and library != "cupy":
            devices.append("cpu")
        if "cuda" in backend.devices:
            try:
                if library == "cupy" or importlib.import_module(library).cuda.is_available():
                    devices.append("cuda:0")
            except Exception:  # a library without .cuda, or whose CUDA check fails
                pass
        if not devices:
            notes.append(
                f"skipped backend {backend.name!r}: no usable device among {backend.devices}"
            )
        targets += [_Target(backend, device) for device in devices]
    targets.sort(key=lambda t: (t.backend.name != "numpy", t.backend.name, t.device))
    return targets


def _demo_input(image: np.ndarray, library: str, device: str) -> Any:
    """``image`` as an array of ``library`` on ``device`` (the backend's own kind of array)."""
    if library == "numpy":
        return image
    module = importlib.import_module(library)
    if library == "torch":
        return module.from_numpy(image.copy()).to(device)
    if library == "cupy":
        return module.asarray(image)
    return module.from_dlpack(image)


def _demo_runs(
    targets: Sequence[_Target], photo: np.ndarray, boxes: np.ndarray, notes: list[str]
) -> list[_Run]:
    """Crop ``boxes`` out of ``photo`` on every target with every method it offers."""
    from cropcore._arrays import library_for

    runs = []
    for target in targets:
        info = target.backend.info
        dtype = next((d for d in ("uint8", "float32") if d in info.dtypes), None)
        if dtype is None:
            notes.append(f"skipped {target.title}: it takes neither uint8 nor float32 images")
            continue
        try:
            image = _demo_input(photo[None].astype(dtype), info.array_library, target.device)
        except Exception as exc:
            notes.append(
                f"skipped {target.title}: cannot make a {info.array_library} array on "
                f"{target.device}: {type(exc).__name__}: {exc}"
            )
            continue
        for method in ("bilinear", "nearest"):
            if method not in info.methods:
                notes.append(f"skipped {target.title} {method}: the backend does not offer it")
                continue
            run = _Run(target, method)
            try:
                result = cropcore.crop_and_resize(
                    image,
                    boxes,
                    np.zeros(len(boxes), np.int32),
                    DEMO_CROP_SIZE,
                    method,
                    DEMO_EXTRAPOLATION_VALUE,
                    backend=target.backend.name,
                )
                run.crops = np.array(library_for(result).to_numpy(result))
            except Exception as exc:  # a backend that fails is reported, not fatal
                run.error, run.verdict = f"{type(exc).__name__}: {exc}", "failed"
            runs.append(run)
    return runs


def _cmd_demo(args: argparse.Namespace) -> int:
    Image = _require("PIL.Image")
    _require("rich")
    from importlib.resources import files

    from rich.console import Console

    console = Console(highlight=False)
    out = Path(args.out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(
            f"{out}: cannot create the output directory: {exc.strerror or exc}"
        ) from None
    with (files("cropcore") / "data" / DEMO_IMAGE).open("rb") as f, Image.open(f) as im:
        photo = _as_uint8_array(im, DEMO_IMAGE)
    height, width = photo.shape[:2]
    labels = [label for label, _ in DEMO_BOXES]
    pixel_boxes = [box for _, box in DEMO_BOXES]
    boxes = np.array([pixel_to_normalized(box, height, width) for box in pixel_boxes])

    notes: list[str] = []
    runs = _demo_runs(_demo_targets(notes, args.backend), photo, boxes, notes)
    for note in notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False)
    reference = {
        r.method: r.crops for r in runs if r.target.title == "numpy (cpu)" and r.crops is not None
    }
    if set(reference) != {"bilinear", "nearest"}:
        raise CliError(
            "the numpy reference backend did not run, so there is nothing to compare with "
            "(`cropcore backends` shows why)"
        )

    written: list[Path] = []
    for run in runs:
        if run.crops is None:
            continue
        run.compare(reference[run.method])
        folder = out / "crops" / run.target.slug / run.method
        folder.mkdir(parents=True, exist_ok=True)
        for i, (label, crop) in enumerate(zip(labels, to_uint8(run.crops), strict=True)):
            path = folder / f"{i + 1}_{_label_slug(label.split(' (')[0].replace(' ', '-'))}.png"
            _save(crop, path, "png")
            written.append(path)
            run.files.append(str(path))

    title = (
        f"cropcore {cropcore.__version__} demo: {DEMO_IMAGE} ({height}x{width}), crop_size "
        f"{DEMO_CROP_SIZE[0]}x{DEMO_CROP_SIZE[1]}, extrapolation_value {DEMO_EXTRAPOLATION_VALUE:g}"
    )
    rows = [
        (f"{r.target.title}\n{r.method}", to_uint8(r.crops)) for r in runs if r.crops is not None
    ]
    sheet_path = out / "contact_sheet.png"
    _contact_sheet(photo, pixel_boxes, labels, rows, title, DEMO_LEGEND).save(sheet_path)
    written.append(sheet_path)

    agree = all(run.ok for run in runs)
    summary = {
        "cropcore": cropcore.__version__,
        "image": {"name": DEMO_IMAGE, "height": height, "width": width, "channels": photo.shape[2]},
        "crop_size": list(DEMO_CROP_SIZE),
        "extrapolation_value": DEMO_EXTRAPOLATION_VALUE,
        "boxes": [
            {"label": label, "pixels": list(box), "normalized": [float(np.float32(v)) for v in b]}
            for label, box, b in zip(labels, pixel_boxes, boxes, strict=True)
        ],
        "reference": "numpy",
        "tolerance": DEMO_TOLERANCE,
        "results": [run.summary() for run in runs],
        "skipped": notes,
        "contact_sheet": str(sheet_path),
        "all_agree": agree,
    }
    json_path = out / "demo.json"
    json_path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
    written.append(json_path)

    for path in written:
        print(path)
    _print_agreement(console, runs)
    ran = sorted({run.target.backend.name for run in runs})
    if agree:
        console.print(
            f"All {len(ran)} backend(s) agree with the numpy reference: {', '.join(ran)}."
        )
        return EXIT_OK
    console.print("[red]Some backends disagree with the numpy reference or failed.[/]")
    return EXIT_FAILURE


def _print_agreement(console: Any, runs: Sequence[_Run]) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"agreement with the numpy reference (tolerance {DEMO_TOLERANCE:g})")
    for column in ("backend", "device", "method", "max |difference|", "bit-identical", "verdict"):
        table.add_column(column)
    colours = {"reference": "cyan", "agrees": "green", "DIFFERS": "red", "failed": "red"}
    for run in runs:
        difference = run.max_abs_difference
        table.add_row(
            escape(run.target.backend.name),
            escape(run.target.device),
            run.method,
            "" if difference is None else f"{difference:.3g}",
            "" if run.crops is None else "yes" if run.bit_identical else "no",
            f"[{colours.get(run.verdict, 'white')}]{run.verdict}[/]",
        )
    console.print(table)
    for run in runs:
        if run.error:
            console.print(
                f"{run.target.title} {run.method} failed: {run.error}", soft_wrap=True, markup=False
            )


_PALETTE = [
    (255, 99, 71),
    (60, 179, 113),
    (30, 144, 255),
    (255, 215, 0),
    (238, 130, 238),
    (0, 206, 209),
    (255, 140, 0),
    (154, 205, 50),
]


def _contact_sheet(
    photo: np.ndarray,
    pixel_boxes: Sequence[Sequence[float]],
    labels: Sequence[str],
    rows: Sequence[tuple[str, np.ndarray]],
    title: str,
    legend: str = "",
) -> Any:
    """A PIL image: the photo with the boxes drawn, then one row of crops per backend and method."""
    Image = _require("PIL.Image")
    ImageDraw = _require("PIL.ImageDraw")
    ImageFont = _require("PIL.ImageFont")
    try:
        font = ImageFont.load_default(size=14)
        small = ImageFont.load_default(size=12)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        font = small = ImageFont.load_default()
    background, ink, faint = (30, 30, 30), (235, 235, 235), (150, 150, 150)
    pad = 10
    crop_h, crop_w = DEMO_CROP_SIZE
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def text_size(text: str, f: Any = font) -> tuple[int, int]:
        left, top, right, bottom = measure.multiline_textbbox((0, 0), text, font=f)
        return right - left, bottom - top

    # The overview: the photo on a canvas that also holds the boxes reaching outside it.
    height, width = photo.shape[:2]
    y0 = min(0, *(min(b[0], b[2]) for b in pixel_boxes))
    x0 = min(0, *(min(b[1], b[3]) for b in pixel_boxes))
    y1 = max(height - 1, *(max(b[0], b[2]) for b in pixel_boxes))
    x1 = max(width - 1, *(max(b[1], b[3]) for b in pixel_boxes))
    scale = min(1.0, 320 / (y1 - y0 + 1))
    canvas = Image.new(
        "RGB", (round((x1 - x0 + 1) * scale), round((y1 - y0 + 1) * scale)), (70, 70, 70)
    )
    canvas.paste(
        Image.fromarray(photo[:, :, :3] if photo.shape[2] >= 3 else photo[:, :, 0]).resize(
            (round(width * scale), round(height * scale))
        ),
        (round(-x0 * scale), round(-y0 * scale)),
    )
    draw = ImageDraw.Draw(canvas)
    corners: dict[tuple[int, int], list[str]] = {}
    for i, b in enumerate(pixel_boxes):
        rect = [
            round((min(b[1], b[3]) - x0) * scale),
            round((min(b[0], b[2]) - y0) * scale),
            round((max(b[1], b[3]) - x0) * scale),
            round((max(b[0], b[2]) - y0) * scale),
        ]
        draw.rectangle(rect, outline=_PALETTE[i % len(_PALETTE)], width=2)
        corners.setdefault((rect[0], rect[1]), []).append(str(i + 1))
    for (x, y), numbers in corners.items():
        text = " ".join(numbers)
        w, h = text_size(text, small)
        draw.rectangle([x + 2, y + 2, x + w + 8, y + h + 8], fill=(0, 0, 0))
        draw.text((x + 5, y + 4), text, fill=ink, font=small)

    row_label_w = (
        max([text_size(label)[0] for label, _ in rows] + [text_size("source")[0]]) + 2 * pad
    )
    headers = [
        f"{i + 1} {label}\n[{', '.join(f'{v:g}' for v in box)}]"
        for i, (label, box) in enumerate(zip(labels, pixel_boxes, strict=True))
    ]
    header_h = max(text_size(h, small)[1] for h in headers) + pad
    title_h = text_size(title)[1] + 2 * pad
    sheet_w = max(
        row_label_w + len(labels) * (crop_w + pad) + pad,
        row_label_w + canvas.width + 4 * pad + text_size(legend)[0],
    )
    sheet_h = title_h + canvas.height + pad + header_h + len(rows) * (crop_h + pad) + pad
    sheet = Image.new("RGB", (sheet_w, sheet_h), background)
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, pad), title, fill=ink, font=font)
    draw.text((pad, title_h), "source\n(boxes in\npixels)", fill=ink, font=font)
    sheet.paste(canvas, (row_label_w, title_h))
    draw.multiline_text(
        (row_label_w + canvas.width + 3 * pad, title_h), legend, fill=faint, font=font
    )
    top = title_h + canvas.height + pad
    for column, header in enumerate(headers):
        x = row_label_w + column * (crop_w + pad)
        draw.multiline_text((x, top), header, fill=faint, font=small)
        draw.rectangle([x, top - 4, x + 14, top - 2], fill=_PALETTE[column % len(_PALETTE)])
    top += header_h
    for label, crops in rows:
        draw.multiline_text((pad, top + 4), label, fill=ink, font=font)
        for column, crop in enumerate(crops):
            tile = Image.fromarray(crop[:, :, :3] if crop.shape[2] >= 3 else crop[:, :, 0])
            sheet.paste(tile, (row_label_w + column * (crop_w + pad), top))
        top += crop_h + pad
    return sheet


def _cmd_bench(args: argparse.Namespace) -> int:
    from cropcore import bench

    try:
        return bench.run_command(args)
    except bench.BenchError as exc:
        error = MissingDependencyError if exc.exit_code == EXIT_FAILURE else CliError
        raise error(str(exc)) from None


# --------------------------------------------------------------------------------------------------
# Parsing


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on one line (exit status 2)."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None


_FORMATTER = argparse.RawDescriptionHelpFormatter

_CROP_HELP = """\
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

_CROP_EPILOG = """box file (--boxes), CSV or JSON:
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

_DEMO_HELP = f"""\
Crop the bundled photo ({DEMO_IMAGE}, Chelsea the cat, CC0) with a fixed set of
boxes (regions of interest, a close-up that shows bilinear against nearest, a
mirrored and an upside-down box, boxes reaching outside the image that show the
extrapolation value) on every available backend, each given the image as its
own kind of array (a torch tensor for torch, a CuPy array for CuPy), and check
that all of them agree with the numpy reference.

Writes to --out: contact_sheet.png (one row per backend and method, one column
per box), crops/<backend>-<device>/<method>/<n>_<label>.png, and demo.json (the
boxes, and each backend's largest difference from the reference). Prints the
absolute path of every file written and a table of the agreement. Exits 1 if a
backend differs from the reference by more than {DEMO_TOLERANCE:g} (on the 0-255
scale of the photo) or fails.
"""

_DEMO_EPILOG = """examples:
  cropcore demo
  cropcore demo --out /tmp/cropcore-demo
  cropcore demo --backend numba --backend cuda
"""

_BACKENDS_HELP = """\
List every installed cropcore backend: its name and aliases, version, status
(available, unavailable or broken), array library, devices, and why it cannot
run. Each backend is probed, which may import its framework (torch, numba, CuPy).
"""

_BACKENDS_EPILOG = """examples:
  cropcore backends
  cropcore backends --json | python -m json.tool
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``cropcore`` command."""
    parser = _Parser(
        prog="cropcore",
        description="TensorFlow's crop_and_resize and Keras's Cropping2D, exactly, on every "
        "array framework.",
        epilog="examples:\n  cropcore backends\n  cropcore demo\n"
        "  cropcore crop photo.jpg --boxes boxes.csv --size 224 224\n  cropcore bench --workloads tiny roi\n\n"
        "Run 'cropcore COMMAND --help' for a command's options.",
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"cropcore {cropcore.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    backends = commands.add_parser(
        "backends",
        help="list the installed backends and whether they can run",
        description=_BACKENDS_HELP,
        epilog=_BACKENDS_EPILOG,
        formatter_class=_FORMATTER,
    )
    backends.add_argument("--json", action="store_true", help="print JSON instead of a table")
    backends.set_defaults(run=_cmd_backends)

    crop = commands.add_parser(
        "crop",
        help="crop boxes out of image files",
        description=_CROP_HELP,
        epilog=_CROP_EPILOG,
        formatter_class=_FORMATTER,
    )
    crop.add_argument(
        "images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)"
    )
    crop.add_argument(
        "--boxes", required=True, metavar="FILE", help="the box file, CSV or JSON (see below)"
    )
    crop.add_argument(
        "--coords",
        choices=("normalized", "pixels"),
        default="normalized",
        help="the box file's coordinates: normalized, 0 to 1 as in TensorFlow (default), or pixels, 0 to H-1",
    )
    crop.add_argument(
        "--size",
        nargs=2,
        type=_positive_int,
        default=[224, 224],
        metavar=("H", "W"),
        help="crop height and width in pixels (default: 224 224)",
    )
    crop.add_argument(
        "--method",
        choices=("bilinear", "nearest"),
        default="bilinear",
        help="sampling (default: bilinear)",
    )
    crop.add_argument(
        "--extrapolation-value",
        type=_float,
        default=0.0,
        metavar="V",
        help="value of samples outside the image, 0-255 (default: 0)",
    )
    crop.add_argument(
        "--backend", metavar="NAME", help="backend name or alias (default: chosen automatically)"
    )
    crop.add_argument(
        "--out", default="crops", metavar="DIR", help="output directory (default: ./crops)"
    )
    crop.add_argument(
        "--format", choices=sorted(FORMATS), default="png", help="output file format (default: png)"
    )
    crop.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bar, notes or summary"
    )
    crop.set_defaults(run=_cmd_crop)

    demo = commands.add_parser(
        "demo",
        help="crop a bundled photo on every backend and check that they agree",
        description=_DEMO_HELP,
        epilog=_DEMO_EPILOG,
        formatter_class=_FORMATTER,
    )
    demo.add_argument(
        "--out",
        default="cropcore-demo",
        metavar="DIR",
        help="output directory (default: ./cropcore-demo)",
    )
    demo.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        help="run only this backend (repeat for several; the numpy reference always runs); "
        "default: every available backend",
    )
    demo.set_defaults(run=_cmd_demo)

    from cropcore import bench as bench_module  # imports no framework, nor rich

    bench = commands.add_parser(
        "bench",
        help="time every backend side by side with TensorFlow's kernel",
        description=bench_module.DESCRIPTION,
        epilog=bench_module.EPILOG,
        formatter_class=_FORMATTER,
    )
    bench_module.add_arguments(bench)
    bench.set_defaults(run=_cmd_bench)

    # `cropcore conformance ...` is cropcore_conformance's own command line: main() hands it over.
    commands.add_parser(
        "conformance", help="certify a backend against the conformance suite", add_help=False
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``cropcore`` command with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["conformance"]:
        from cropcore_conformance.runner import main as conformance

        return conformance(args_list[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE if exc.code else EXIT_OK
    if not hasattr(args, "run"):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    prog = f"cropcore {args.command}"
    handler = _log_to_stderr(prog, report_broken_plugins=args.command == "crop")
    try:
        return args.run(args)
    except CliError as exc:
        print(f"{prog}: error: {_one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `cropcore backends --json | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    finally:
        if handler is not None:
            logging.getLogger("cropcore").removeHandler(handler)


class _LineFormatter(logging.Formatter):
    """``PROG: warning: message`` (the level in lower case, as in argparse's errors)."""

    def __init__(self, prog: str) -> None:
        super().__init__()
        self.prog = prog

    def format(self, record: logging.LogRecord) -> str:
        return f"{self.prog}: {record.levelname.lower()}: {_one_line(record.getMessage())}"


def _log_to_stderr(prog: str, *, report_broken_plugins: bool) -> logging.Handler | None:
    """Show cropcore's warnings as ``PROG: warning: ...`` lines, unless logging is configured.

    ``backends`` and ``demo`` list broken plugins in their own output, so the registry's warning
    about them is left out there.
    """
    logger = logging.getLogger("cropcore")
    configured = [h for h in logger.handlers if not isinstance(h, logging.NullHandler)]
    if configured or logging.getLogger().handlers:
        return None  # the application (or pytest) configured logging; leave it alone
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(_LineFormatter(prog))
    if not report_broken_plugins:
        handler.addFilter(lambda record: record.name != "cropcore.registry")
    logger.addHandler(handler)
    return handler


def _one_line(text: str) -> str:
    return " ".join(text.split())


#: What cropcore raises for arguments it refuses (each message names the argument and value).
_REFUSALS = (ValueError, TypeError, IndexError, BackendError)
