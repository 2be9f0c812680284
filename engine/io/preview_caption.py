"""The caption and legend under a preview picture: what the picture shows (which ROI,
which plane or projection, what the colours mean) in the PNG itself, so a picture
passed on or opened days later still says it.

Text is drawn with Pillow's built-in font (FreeType, no font files needed); a legend
entry is a filled square in the colour followed by its meaning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FONT_SIZE = 14
LINE = 19  # pixels per text line
MARGIN = 6
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)


@dataclass(frozen=True)
class LegendEntry:
    colour: tuple[int, int, int]
    text: str


def _font(size: int = FONT_SIZE):  # type: ignore[no-untyped-def]
    from PIL import ImageFont

    return ImageFont.load_default(size=size)


def _wrap(text: str, width: int, font) -> list[str]:  # type: ignore[no-untyped-def]
    """`text` in lines that fit `width` pixels, broken at spaces."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        trial = f"{current} {word}".strip()
        if current and font.getlength(trial) > width:
            lines.append(current)
            current = word
        else:
            current = trial
    return [*lines, current] if current else lines


def _legend_rows(entries: list[LegendEntry], width: int, font) -> list[list[LegendEntry]]:  # type: ignore[no-untyped-def]
    rows: list[list[LegendEntry]] = [[]]
    used = 0
    for entry in entries:
        size = LINE + int(font.getlength(entry.text)) + 3 * MARGIN
        if rows[-1] and used + size > width:
            rows.append([])
            used = 0
        rows[-1].append(entry)
        used += size
    return [r for r in rows if r]


def with_caption(rgb: np.ndarray, lines: list[str], legend: list[LegendEntry]) -> np.ndarray:
    """`rgb` (y, x, 3) with a dark strip below it: the caption's lines, then the legend."""
    from PIL import Image, ImageDraw

    font = _font()
    width = rgb.shape[1]
    text_width = max(width - 2 * MARGIN, 40)
    wrapped = [w for line in lines for w in _wrap(line, text_width, font)]
    rows = _legend_rows(legend, text_width, font)
    height = MARGIN * 2 + LINE * (len(wrapped) + len(rows))
    strip = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    y = MARGIN
    for line in wrapped:
        draw.text((MARGIN, y), line, fill=TEXT, font=font)
        y += LINE
    for row in rows:
        x = MARGIN
        for entry in row:
            box = LINE - 6
            draw.rectangle([x, y + 3, x + box, y + 3 + box], fill=entry.colour)
            x += box + MARGIN
            draw.text((x, y), entry.text, fill=TEXT, font=font)
            x += int(font.getlength(entry.text)) + 2 * MARGIN
        y += LINE
    return np.concatenate([rgb, np.asarray(strip, dtype=np.uint8)], axis=0)
