"""The demo's contact sheet: the photo with its boxes drawn, then one row of crops per backend.

Requirements: Pillow (the ``cli`` extra), imported when a sheet is drawn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from cropcore.cli.errors import require

#: The boxes' outline colours, in order.
PALETTE = [
    (255, 99, 71),
    (60, 179, 113),
    (30, 144, 255),
    (255, 215, 0),
    (238, 130, 238),
    (0, 206, 209),
    (255, 140, 0),
    (154, 205, 50),
]


def contact_sheet(
    photo: np.ndarray,
    pixel_boxes: Sequence[Sequence[float]],
    labels: Sequence[str],
    rows: Sequence[tuple[str, np.ndarray]],
    title: str,
    legend: str,
    crop_size: tuple[int, int],
) -> Any:
    """A PIL image: the photo with the boxes drawn, then one row of crops per backend and method."""
    Image = require("PIL.Image")
    ImageDraw = require("PIL.ImageDraw")
    ImageFont = require("PIL.ImageFont")
    try:
        font = ImageFont.load_default(size=14)
        small = ImageFont.load_default(size=12)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        font = small = ImageFont.load_default()
    background, ink, faint = (30, 30, 30), (235, 235, 235), (150, 150, 150)
    pad = 10
    crop_h, crop_w = crop_size
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
        draw.rectangle(rect, outline=PALETTE[i % len(PALETTE)], width=2)
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
        draw.rectangle([x, top - 4, x + 14, top - 2], fill=PALETTE[column % len(PALETTE)])
    top += header_h
    for label, crops in rows:
        draw.multiline_text((pad, top + 4), label, fill=ink, font=font)
        for column, crop in enumerate(crops):
            tile = Image.fromarray(crop[:, :, :3] if crop.shape[2] >= 3 else crop[:, :, 0])
            sheet.paste(tile, (row_label_w + column * (crop_w + pad), top))
        top += crop_h + pad
    return sheet
