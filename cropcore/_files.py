"""Box files, image files and input errors: what ``cropcore crop`` and :mod:`cropcore.dask` share.

Pillow is imported only by the functions that read or write images (through :func:`_require`),
so importing this module needs only NumPy. A bad input raises :class:`CliError` (one line, naming
the file and the row at fault); a missing optional dependency :class:`MissingDependencyError`.
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "BOXES_PER_CALL",
    "BOX_COLUMNS",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "FORMATS",
    "BoxRow",
    "CliError",
    "MissingDependencyError",
    "pixel_to_normalized",
    "read_box_records",
    "read_boxes",
    "to_uint8",
]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2

#: Output formats ``cropcore crop --format`` offers (file extension -> Pillow format).
FORMATS = {
    "png": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "webp": "WEBP",
    "bmp": "BMP",
    "tif": "TIFF",
    "tiff": "TIFF",
}

BOX_COLUMNS = ("y1", "x1", "y2", "x2")
#: ``cropcore crop`` crops at most this many boxes of an image per call, to bound its memory.
BOXES_PER_CALL = 64


class CliError(Exception):
    """A problem with the user's input: one line on stderr, exit status 2."""

    exit_code = EXIT_USAGE


class MissingDependencyError(CliError):
    """rich or Pillow is not installed: exit status 1."""

    exit_code = EXIT_FAILURE


def _require(module: str) -> Any:
    """Import one of the ``cli`` extra's modules, or say how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        package = {"PIL": "Pillow"}.get(module.partition(".")[0], module.partition(".")[0])
        raise MissingDependencyError(
            f"this command needs {package}, which is not installed ({exc}); "
            'install the command-line extras with: pip install "cropcore[cli]"'
        ) from None


# --------------------------------------------------------------------------------------------------
# Box files


@dataclass(frozen=True)
class BoxRow:
    """One box of a box file.

    Attributes:
        number: its position among the file's boxes, from 0 (the crop's number in its file name).
        image: the index, in the list of images given, of the image it is cut from.
        coords: ``(y1, x1, y2, x2)`` as written in the file (normalised or pixel coordinates).
        label: the optional ``label`` column ("" if none).
        where: where it is in the file, for messages (``"line 3"``, ``"boxes[2]"``).
    """

    number: int
    image: int
    coords: tuple[float, float, float, float]
    label: str
    where: str


def read_boxes(path: str | os.PathLike[str], image_paths: Sequence[str]) -> list[BoxRow]:
    """Read a box file (CSV or JSON, see ``cropcore crop --help``) for the images ``image_paths``.

    A ``.json`` file (or one whose text starts with ``[`` or ``{``) is JSON, anything else CSV.
    Raises :class:`CliError` naming the file and the line (CSV) or entry (JSON) at fault.
    """
    path = Path(path)
    records = read_box_records(path)
    resolve = _image_resolver(path, image_paths)
    rows = []
    for number, (where, record) in enumerate(records):
        coords = tuple(_coordinate(record, key, path, where) for key in BOX_COLUMNS)
        label = record.get("label")
        rows.append(
            BoxRow(
                number=number,
                image=resolve(record.get("image"), where),
                coords=coords,  # type: ignore[arg-type]
                label="" if label is None else str(label).strip(),
                where=where,
            )
        )
    return rows


def read_box_records(path: str | os.PathLike[str]) -> list[tuple[str, dict[str, Any]]]:
    """The boxes of a box file as ``(where, record)`` pairs in file order, before any checking.

    ``record`` maps the lower-cased column names (CSV) or keys (JSON) to their raw values; ``where``
    is ``"line 3"`` or ``"boxes[2]"``, for messages. Shared with ``cropcore.dask.crop_files``.
    Raises :class:`CliError` for a file that cannot be read or parsed, or that has no boxes.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise CliError(f"{path}: box file not found") from None
    except IsADirectoryError:
        raise CliError(f"{path}: the box file is a directory") from None
    except UnicodeDecodeError as exc:
        raise CliError(
            f"{path}: the box file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise CliError(f"{path}: cannot read the box file: {exc.strerror or exc}") from None
    is_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() not in (".csv", ".tsv", ".txt") and text.lstrip()[:1] in ("[", "{")
    )
    records = _json_records(text, path) if is_json else _csv_records(text, path)
    if not records:
        raise CliError(f"{path}: the box file has no boxes")
    return records


def _csv_records(text: str, path: Path) -> list[tuple[str, dict[str, Any]]]:
    first = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = (
        "\t"
        if "\t" in first and "," not in first
        else ";"
        if ";" in first and "," not in first
        else ","
    )
    reader = csv.reader(io.StringIO(text), delimiter=delimiter, skipinitialspace=True)
    header: list[str] | None = None
    records = []
    try:
        for fields in reader:
            if not any(field.strip() for field in fields):
                continue  # blank line
            if header is None:
                header = [field.strip().lower() for field in fields]
                _check_header(header, path, f"line {reader.line_num}")
                continue
            where = f"line {reader.line_num}"
            if len(fields) != len(header):
                raise CliError(
                    f"{path}: {where}: {len(fields)} fields, but the header has {len(header)} "
                    f"({','.join(header)})"
                )
            records.append((where, dict(zip(header, (f.strip() for f in fields), strict=True))))
    except csv.Error as exc:
        raise CliError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from None
    if header is None:
        raise CliError(f"{path}: the box file is empty; it needs a header line image,y1,x1,y2,x2")
    return records


def _check_header(header: list[str], path: Path, where: str) -> None:
    missing = [name for name in BOX_COLUMNS if name not in header]
    if missing:
        looks_numeric = any(_is_number(field) for field in header)  # no real header is numeric
        hint = " (the first line must be a header)" if looks_numeric else ""
        raise CliError(
            f"{path}: {where}: missing column(s) {', '.join(missing)}{hint}; the header must "
            "name image,y1,x1,y2,x2 (label optional)"
        )
    duplicated = sorted({name for name in header if name and header.count(name) > 1})
    if duplicated:
        raise CliError(f"{path}: {where}: column(s) {', '.join(duplicated)} appear more than once")


def _json_records(text: str, path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if isinstance(data, dict):
        if "boxes" not in data:
            raise CliError(f'{path}: a JSON object box file needs a "boxes" list')
        data = data["boxes"]
    if not isinstance(data, list):
        raise CliError(
            f"{path}: the boxes must be a JSON list of objects with keys image, y1, x1, y2, x2, "
            f"got {type(data).__name__}"
        )
    records = []
    for i, entry in enumerate(data):
        where = f"boxes[{i}]"
        if not isinstance(entry, dict):
            raise CliError(
                f"{path}: {where}: each box must be an object with keys image, y1, x1, y2, x2 "
                f"(label optional), got {json.dumps(entry)[:60]}"
            )
        records.append((where, {str(k).strip().lower(): v for k, v in entry.items()}))
    return records


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _coordinate(record: dict[str, Any], key: str, path: Path, where: str) -> float:
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise CliError(f"{path}: {where}: missing value for {key}")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CliError(f"{path}: {where}: {key} must be a number, got {json.dumps(value)[:40]}")
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise CliError(f"{path}: {where}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise CliError(f"{path}: {where}: {key} must be finite, got {value!r}")
    return number


def _image_resolver(path: Path, image_paths: Sequence[str]):
    """A function mapping a box's ``image`` value to an index into ``image_paths``."""
    by_name: dict[str, set[int]] = {}
    for index, image_path in enumerate(image_paths):
        for key in {image_path, os.path.normpath(image_path), os.path.basename(image_path)}:
            by_name.setdefault(key, set()).add(index)
    count = len(image_paths)
    names = ", ".join(os.path.basename(p) for p in image_paths[:5]) + (", ..." if count > 5 else "")

    def resolve(value: Any, where: str) -> int:
        if value is None or (isinstance(value, str) and not value.strip()):
            if count == 1:
                return 0
            raise CliError(
                f"{path}: {where}: no image given; with {count} images every box needs an "
                "image (a file name or an index from 0)"
            )
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise CliError(
                f"{path}: {where}: image must be a file name or an integer index, got {json.dumps(value)[:40]}"
            )
        if isinstance(value, int):
            index = value
        else:
            text = value.strip()
            matches = by_name.get(text) or by_name.get(os.path.normpath(text))
            if matches and len(matches) > 1:
                which = " and ".join(image_paths[i] for i in sorted(matches))
                raise CliError(
                    f"{path}: {where}: image {text!r} is ambiguous: it names {which}; write the "
                    "path as given on the command line, or an index"
                )
            if matches:
                return next(iter(matches))
            if not text.isdigit():
                raise CliError(
                    f"{path}: {where}: image {text!r} is not one of the images given ({names}) "
                    f"nor an index in [0, {count})"
                )
            index = int(text)
        if not 0 <= index < count:
            raise CliError(
                f"{path}: {where}: image index {index} is out of range: {count} image(s) given, "
                f"so it must be in [0, {count})"
            )
        return index

    return resolve


def pixel_to_normalized(
    coords: Sequence[float], height: int, width: int
) -> tuple[float, float, float, float]:
    """``(y1, x1, y2, x2)`` in pixels (row 0 to ``height - 1``) as TensorFlow's normalised coordinates.

    ``y / (height - 1)`` and ``x / (width - 1)`` in float64 (cropcore rounds them to float32). An
    image one pixel high (or wide) divides by 1: TensorFlow samples its only row (column) whatever
    the box says, since its scale ``height - 1`` is 0.
    """
    y1, x1, y2, x2 = (float(c) for c in coords)
    y_scale, x_scale = max(height - 1, 1), max(width - 1, 1)
    return (y1 / y_scale, x1 / x_scale, y2 / y_scale, x2 / x_scale)


def to_uint8(crops: np.ndarray) -> np.ndarray:
    """float32 crops as uint8 for image files: clipped to [0, 255], rounded to nearest (halves up).

    NaN (a NaN ``extrapolation_value``) becomes 0. The rounding is done in float64, where
    ``floor(x + 0.5)`` is exact for every float32 ``x``.
    """
    # One float64 buffer, worked on in place: crop_files converts hundreds of MB at a time.
    values = np.array(crops, dtype=np.float64)
    np.nan_to_num(values, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
    np.clip(values, 0.0, 255.0, out=values)
    values += 0.5
    np.floor(values, out=values)
    return values.astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Image files


@dataclass(frozen=True)
class _ImageFile:
    path: str
    height: int
    width: int


def _open_image(path: str) -> _ImageFile:
    """Check that ``path`` is an image Pillow can read (reads its header only)."""
    Image = _require("PIL.Image")
    try:
        with Image.open(path) as im:
            width, height = im.size
    except FileNotFoundError:
        raise CliError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise CliError(f"{path}: is a directory, not an image file") from None
    except Image.UnidentifiedImageError:
        raise CliError(f"{path}: not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise CliError(f"{path}: cannot read the image: {exc}") from None
    return _ImageFile(path, height, width)


def _load_pixels(path: str) -> np.ndarray:
    """The pixels of an image file as uint8 ``(height, width, channels)``, channels 1 (L), 3 or 4."""
    Image = _require("PIL.Image")
    try:
        with Image.open(path) as im:
            im.load()
            return _as_uint8_array(im, path)
    except CliError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt files fail here
        raise CliError(f"{path}: cannot read the image: {exc}") from None


def _as_uint8_array(im: Any, path: str) -> np.ndarray:
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise CliError(
                f"{path}: 32-bit integer pixel values outside [0, 65535]; the command line reads "
                "8- and 16-bit images (the Python API takes any dtype)"
            )
        array = ((values * 255 + 32767) // 65535).astype(np.uint8)  # 16 bits -> 8, rounded
    elif mode == "F":
        raise CliError(
            f"{path}: floating-point images are not supported by the command line, which writes "
            "8-bit crops; use cropcore.crop_and_resize from Python"
        )
    else:
        if mode in ("1", "L"):
            target = "L"
        elif mode in ("LA", "La", "PA", "RGBA", "RGBa") or (
            mode == "P" and "transparency" in im.info
        ):
            target = "RGBA"
        else:  # RGB, P, CMYK, YCbCr, LAB, HSV, RGBX, ...
            target = "RGB"
        array = np.asarray(im if mode == target else im.convert(target))
    if array.ndim == 2:
        array = array[:, :, None]
    return np.ascontiguousarray(array, dtype=np.uint8)


def _save(array: np.ndarray, path: Path, fmt: str) -> None:
    """Write a uint8 ``(height, width, channels)`` array as an image file."""
    Image = _require("PIL.Image")
    im = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    if FORMATS[fmt] == "JPEG" and im.mode == "RGBA":
        im = im.convert("RGB")  # JPEG has no alpha channel
    try:
        im.save(path, format=FORMATS[fmt])
    except (OSError, KeyError, ValueError) as exc:
        raise CliError(f"{path}: cannot write the crop: {exc}") from None


def _label_slug(label: str) -> str:
    return re.sub(r"[^\w.-]+", "_", label).strip("._")[:64]
