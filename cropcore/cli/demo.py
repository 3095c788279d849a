"""``cropcore demo``: crop the bundled photo on every available backend and check that they agree.

Requirements: Pillow and rich (the ``cli`` extra), imported when the command runs. Each backend
is given the photo as its own kind of array (torch, CuPy), so running the demo imports the
frameworks of the backends that are available. The contact sheet is drawn by
:mod:`cropcore.cli.sheet`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import cropcore
from cropcore.arrays import library_for
from cropcore.cli.errors import EXIT_FAILURE, EXIT_OK, CliError, output_directory, require
from cropcore.cli.files import as_uint8_array, label_slug, pixel_to_normalized, save_image, to_uint8
from cropcore.cli.sheet import contact_sheet
from cropcore.registry import registry

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


HELP = f"""\
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

EPILOG = """examples:
  cropcore demo
  cropcore demo --out /tmp/cropcore-demo
  cropcore demo --backend numba --backend cuda
"""


NAME = "demo"
SUMMARY = "crop a bundled photo on every backend and check that they agree"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cropcore demo``."""
    parser.add_argument(
        "--out",
        default="cropcore-demo",
        metavar="DIR",
        help="output directory (default: ./cropcore-demo)",
    )
    parser.add_argument(
        "--backend",
        action="append",
        metavar="NAME",
        help="run only this backend (repeat for several; the numpy reference always runs); "
        "default: every available backend",
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
    return library_for(library).from_numpy(image, None)  # jax: on its default device


def _demo_runs(
    targets: Sequence[_Target], photo: np.ndarray, boxes: np.ndarray, notes: list[str]
) -> list[_Run]:
    """Crop ``boxes`` out of ``photo`` on every target with every method it offers."""
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


def run(args: argparse.Namespace) -> int:
    """Run ``cropcore demo``; return the exit status."""
    Image = require("PIL.Image")
    require("rich")
    from importlib.resources import files

    from rich.console import Console

    console = Console(highlight=False)
    out = output_directory(Path(args.out).resolve())
    with (files("cropcore") / "data" / DEMO_IMAGE).open("rb") as f, Image.open(f) as im:
        photo = as_uint8_array(im, DEMO_IMAGE)
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
            path = folder / f"{i + 1}_{label_slug(label.split(' (')[0].replace(' ', '-'))}.png"
            save_image(crop, path, "png")
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
    contact_sheet(photo, pixel_boxes, labels, rows, title, DEMO_LEGEND, DEMO_CROP_SIZE).save(
        sheet_path
    )
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
