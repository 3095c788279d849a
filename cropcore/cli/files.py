"""Box files and image files: what ``cropcore crop`` and :mod:`cropcore.dask` read and write.

Requirements:

- Importing this module needs only NumPy. Pillow is imported by the functions that read or write
  images (through :func:`require`); without it they raise :class:`MissingDependencyError`, and
  the caller says which extra to install (``cropcore crop`` names ``cli``, ``cropcore.dask``
  names ``dask``).
- A file that is missing, unreadable or malformed raises :class:`InputFileError`, a
  ``ValueError`` whose one-line message names the file and the line or entry at fault. These are
  library errors: the command line turns them into its exit statuses.
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
    "FORMATS",
    "BoxRow",
    "ImageFile",
    "InputFileError",
    "MissingDependencyError",
    "as_uint8_array",
    "check_header",
    "coordinate",
    "label_slug",
    "load_pixels",
    "open_image",
    "pixel_to_normalized",
    "read_box_records",
    "read_boxes",
    "require",
    "save_image",
    "to_uint8",
]

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
#: Elements :func:`to_uint8` converts at a time (its float64 temporary: 32 MiB).
TO_UINT8_BLOCK = 1 << 22
#: Boxes of one image cropped per call, at most, to bound the memory of a call.
BOXES_PER_CALL = 64


class InputFileError(ValueError):
    """A box or image file that is missing, unreadable or malformed, or a crop that cannot be written.

    The message is one line naming the file and, for a box file, the line (CSV) or entry (JSON).
    """


class MissingDependencyError(ImportError):
    """An optional package these helpers need (Pillow) is not installed.

    Attributes:
        package: the distribution to install (``"Pillow"``).
        reason: why the import failed (the original ``ImportError``'s message).
    """

    def __init__(self, package: str, reason: str) -> None:
        super().__init__(f"{package} is not installed ({reason})")
        self.package = package
        self.reason = reason


def require(module: str) -> Any:
    """Import ``module`` (``"PIL.Image"``, ``"rich"``, ...), or raise :class:`MissingDependencyError`."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.partition(".")[0]
        raise MissingDependencyError({"PIL": "Pillow"}.get(top, top), str(exc)) from None


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
    Raises :class:`InputFileError` naming the file and the line (CSV) or entry (JSON) at fault.
    """
    path = Path(path)
    records = read_box_records(path)
    resolve = _image_resolver(path, image_paths)
    rows = []
    for number, (where, record) in enumerate(records):
        coords = tuple(coordinate(record, key, path, where) for key in BOX_COLUMNS)
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
    Raises :class:`InputFileError` for a file that cannot be read or parsed, or that has no boxes.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputFileError(f"{path}: box file not found") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: the box file is a directory") from None
    except UnicodeDecodeError as exc:
        raise InputFileError(
            f"{path}: the box file is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
    except OSError as exc:
        raise InputFileError(f"{path}: cannot read the box file: {exc.strerror or exc}") from None
    is_json = path.suffix.lower() == ".json" or (
        path.suffix.lower() not in (".csv", ".tsv", ".txt") and text.lstrip()[:1] in ("[", "{")
    )
    records = _json_records(text, path) if is_json else _csv_records(text, path)
    if not records:
        raise InputFileError(f"{path}: the box file has no boxes")
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
                check_header(header, path, f"line {reader.line_num}")
                continue
            where = f"line {reader.line_num}"
            if len(fields) != len(header):
                raise InputFileError(
                    f"{path}: {where}: {len(fields)} fields, but the header has {len(header)} "
                    f"({','.join(header)})"
                )
            records.append((where, dict(zip(header, (f.strip() for f in fields), strict=True))))
    except csv.Error as exc:
        raise InputFileError(f"{path}: line {reader.line_num}: malformed CSV: {exc}") from None
    if header is None:
        raise InputFileError(
            f"{path}: the box file is empty; it needs a header line image,y1,x1,y2,x2"
        )
    return records


def check_header(header: list[str], path: Path, where: str) -> None:
    """Refuse a header (lower-cased column names) that lacks a box column or repeats one."""
    missing = [name for name in BOX_COLUMNS if name not in header]
    if missing:
        looks_numeric = any(_is_number(field) for field in header)  # no real header is numeric
        hint = " (the first line must be a header)" if looks_numeric else ""
        raise InputFileError(
            f"{path}: {where}: missing column(s) {', '.join(missing)}{hint}; the header must "
            "name image,y1,x1,y2,x2 (label optional)"
        )
    duplicated = sorted({name for name in header if name and header.count(name) > 1})
    if duplicated:
        raise InputFileError(
            f"{path}: {where}: column(s) {', '.join(duplicated)} appear more than once"
        )


def _json_records(text: str, path: Path) -> list[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(
            f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if isinstance(data, dict):
        if "boxes" not in data:
            raise InputFileError(f'{path}: a JSON object box file needs a "boxes" list')
        data = data["boxes"]
    if not isinstance(data, list):
        raise InputFileError(
            f"{path}: the boxes must be a JSON list of objects with keys image, y1, x1, y2, x2, "
            f"got {type(data).__name__}"
        )
    records = []
    for i, entry in enumerate(data):
        where = f"boxes[{i}]"
        if not isinstance(entry, dict):
            raise InputFileError(
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


def coordinate(record: dict[str, Any], key: str, path: Path, where: str) -> float:
    """``record[key]`` as a finite float, or :class:`InputFileError` naming ``path`` and ``where``."""
    value = record.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputFileError(f"{path}: {where}: missing value for {key}")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise InputFileError(
            f"{path}: {where}: {key} must be a number, got {json.dumps(value)[:40]}"
        )
    try:
        number = float(value)
    except (ValueError, OverflowError):
        raise InputFileError(f"{path}: {where}: {key} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise InputFileError(f"{path}: {where}: {key} must be finite, got {value!r}")
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
            raise InputFileError(
                f"{path}: {where}: no image given; with {count} images every box needs an "
                "image (a file name or an index from 0)"
            )
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise InputFileError(
                f"{path}: {where}: image must be a file name or an integer index, got {json.dumps(value)[:40]}"
            )
        if isinstance(value, int):
            index = value
        else:
            text = value.strip()
            matches = by_name.get(text) or by_name.get(os.path.normpath(text))
            if matches and len(matches) > 1:
                which = " and ".join(image_paths[i] for i in sorted(matches))
                raise InputFileError(
                    f"{path}: {where}: image {text!r} is ambiguous: it names {which}; write the "
                    "path as given on the command line, or an index"
                )
            if matches:
                return next(iter(matches))
            if not text.isdigit():
                raise InputFileError(
                    f"{path}: {where}: image {text!r} is not one of the images given ({names}) "
                    f"nor an index in [0, {count})"
                )
            index = int(text)
        if not 0 <= index < count:
            raise InputFileError(
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
    crops = np.asarray(crops)
    flat = crops.reshape(-1)
    out = np.empty(flat.shape, np.uint8)
    # A float64 block at a time, worked on in place: the temporaries stay at TO_UINT8_BLOCK
    # elements however large the crops (a 20000 x 20000 crop would need 9.6 GB in one piece).
    for start in range(0, flat.size, TO_UINT8_BLOCK):
        values = flat[start : start + TO_UINT8_BLOCK].astype(np.float64)
        np.nan_to_num(values, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
        np.clip(values, 0.0, 255.0, out=values)
        values += 0.5
        np.floor(values, out=values)
        out[start : start + TO_UINT8_BLOCK] = values
    return out.reshape(crops.shape)


# --------------------------------------------------------------------------------------------------
# Image files


@dataclass(frozen=True)
class ImageFile:
    """An image file Pillow can read, its size in pixels, and the channels :func:`load_pixels`
    gives it (1, 3 or 4)."""

    path: str
    height: int
    width: int
    channels: int = 3


def open_image(path: str) -> ImageFile:
    """Check that ``path`` is an image Pillow can read (reads its header only)."""
    Image = require("PIL.Image")
    try:
        with Image.open(path) as im:
            width, height = im.size
            channels = _channels(im)
    except FileNotFoundError:
        raise InputFileError(f"{path}: image file not found") from None
    except IsADirectoryError:
        raise InputFileError(f"{path}: is a directory, not an image file") from None
    except Image.UnidentifiedImageError:
        raise InputFileError(f"{path}: not an image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise InputFileError(f"{path}: cannot read the image: {exc}") from None
    return ImageFile(path, height, width, channels)


def _channels(im: Any) -> int:
    """The channels :func:`as_uint8_array` gives a Pillow image (from its mode, without decoding)."""
    mode = im.mode
    if mode in ("1", "L", "I", "F") or mode.startswith("I;16"):
        return 1
    if mode in ("LA", "La", "PA", "RGBA", "RGBa") or (mode == "P" and "transparency" in im.info):
        return 4
    return 3


def load_pixels(path: str) -> np.ndarray:
    """The pixels of an image file as uint8 ``(height, width, channels)``, channels 1 (L), 3 or 4."""
    Image = require("PIL.Image")
    try:
        with Image.open(path) as im:
            im.load()
            return as_uint8_array(im, path)
    except InputFileError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt files fail here
        raise InputFileError(f"{path}: cannot read the image: {exc}") from None


def as_uint8_array(im: Any, path: str) -> np.ndarray:
    """A Pillow image as uint8 ``(height, width, channels)``, converted as :func:`load_pixels` says."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(im).astype(np.int64)
        if values.size and (values.min() < 0 or values.max() > 65535):
            raise InputFileError(
                f"{path}: 32-bit integer pixel values outside [0, 65535]; the command line reads "
                "8- and 16-bit images (the Python API takes any dtype)"
            )
        array = ((values * 255 + 32767) // 65535).astype(np.uint8)  # 16 bits -> 8, rounded
    elif mode == "F":
        raise InputFileError(
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


def save_image(array: np.ndarray, path: Path, fmt: str) -> None:
    """Write a uint8 ``(height, width, channels)`` array as an image file."""
    Image = require("PIL.Image")
    im = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    if FORMATS[fmt] == "JPEG" and im.mode == "RGBA":
        im = im.convert("RGB")  # JPEG has no alpha channel
    try:
        im.save(path, format=FORMATS[fmt])
    except (OSError, KeyError, ValueError) as exc:
        raise InputFileError(f"{path}: cannot write the crop: {exc}") from None


def label_slug(label: str) -> str:
    """``label`` as a file-name part: runs of characters other than letters, digits, ``.``, ``-``
    and ``_`` become ``_`` (at most 64 characters)."""
    return re.sub(r"[^\w.-]+", "_", label).strip("._")[:64]
