"""A ranked-list picture: a legend, then one row per probe: the probe, then its top-k gallery thumbnails.

Outlines: blue around the probe; green around a result of the probe's person,
red around another person, grey when either pid is unknown (the path follows
no known dataset layout). The legend at the top says so, with the probes' and
the gallery's spectrum. Each probe is labelled with its row number (``probe 1``,
``probe 2``, ... even when several show one person) and its pid/cam; each
thumbnail is captioned with its rank and score, then its pid and camera (or,
when the layout is unknown, the start of its file name).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from mclnet_cli.atomic import atomic_write
from mclnet_cli.data.images import load_rgb
from mclnet_cli.errors import DataError
from mclnet_cli.index.store import Hit

PROBE = (40, 110, 230)
MATCH = (0, 170, 60)
MISMATCH = (220, 30, 30)
UNKNOWN = (150, 150, 150)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
BORDER = 3
GAP = 6
CAPTION = 28  # two text lines under each thumbnail
LINE = 13
SEPARATOR = 14  # extra space between the probe and its results
MAX_COLUMNS = 50  # results drawn per probe; more would make a picture no viewer opens

ProbeRow = tuple  # (probe path, probe pid or None, hits) or (path, pid, hits, cam or None)
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".gif": "GIF", ".tif": "TIFF", ".tiff": "TIFF"}


def outline_colour(probe_pid: int | None, hit_pid: int | None) -> tuple[int, int, int]:
    """Green for the same person, red for another, grey when either pid is unknown."""
    if probe_pid is None or hit_pid is None:
        return UNKNOWN
    return MATCH if probe_pid == hit_pid else MISMATCH


def _thumbnail(path: str, width: int, height: int) -> Image.Image:
    try:
        return load_rgb(path).resize((width, height), Image.Resampling.BILINEAR)
    except DataError:
        placeholder = Image.new("RGB", (width, height), (90, 90, 90))
        ImageDraw.Draw(placeholder).text((width // 2 - 3, height // 2 - 6), "?", fill=(255, 255, 255))
        return placeholder


def _framed(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    framed = Image.new("RGB", (image.width + 2 * BORDER, image.height + 2 * BORDER), colour)
    framed.paste(image, (BORDER, BORDER))
    return framed


def _fit(draw: ImageDraw.ImageDraw, text: str, width: int, font: ImageFont.ImageFont) -> str:
    """``text`` cut (with a trailing ~) to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "~", font=font) > width:
        text = text[:-1]
    return text + "~"


def _who(pid: int | None, cam: int | None, path: str) -> str:
    if pid is None:
        return Path(path).name
    return f"pid {pid}" + (f" c{cam}" if cam is not None else "")


def _legend_items(probe_modality: str | None, gallery_modality: str | None) -> list[tuple[tuple[int, int, int], str]]:
    probe = f"probe ({probe_modality})" if probe_modality else "probe"
    same = "same person" + (f" ({gallery_modality} gallery)" if gallery_modality else "")
    return [(PROBE, probe), (MATCH, same), (MISMATCH, "other person"), (UNKNOWN, "pid unknown")]


def _legend_layout(draw: ImageDraw.ImageDraw, items: list, width: int, font: ImageFont.ImageFont) -> list[tuple[int, int, int]]:
    """(item index, x, line) for each legend item, flowing into as many lines as ``width`` needs."""
    placed, x, line = [], GAP, 0
    for i, (_, text) in enumerate(items):
        item_w = 14 + int(draw.textlength(text, font=font)) + 12
        if x > GAP and x + item_w > width:
            x, line = GAP, line + 1
        placed.append((i, x, line))
        x += item_w
    return placed


def render_ranked_list(
    rows: Sequence[ProbeRow],
    *,
    top_k: int | None = None,
    thumb_width: int = 64,
    thumb_height: int = 128,
    probe_modality: str | None = None,
    gallery_modality: str | None = None,
) -> Image.Image:
    """The picture for ``rows`` of ``(probe path, probe pid or None, hits[, probe cam])``.

    At most :data:`MAX_COLUMNS` results per probe are drawn; ``top_k`` is accepted for
    compatibility and does not widen the picture beyond the hits. ``probe_modality``
    and ``gallery_modality`` are named in the legend.
    """
    if not rows:
        raise DataError("nothing to draw: no probe has results")
    # Width follows the hits actually drawn (never --top-k alone), at most MAX_COLUMNS thumbnails a row.
    columns = min(max(max(len(row[2]) for row in rows), 1), MAX_COLUMNS)
    cell_w, cell_h = thumb_width + 2 * BORDER, thumb_height + 2 * BORDER
    width = GAP + cell_w + SEPARATOR + columns * (cell_w + GAP)
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    items = _legend_items(probe_modality, gallery_modality)
    layout = _legend_layout(measure, items, width, font)
    legend_h = (max(line for _, _, line in layout) + 1) * (LINE + 3) + GAP
    height = legend_h + GAP + len(rows) * (cell_h + CAPTION + GAP)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, x, line in layout:
        colour, text = items[i]
        y = GAP + line * (LINE + 3)
        draw.rectangle((x, y + 1, x + 10, y + 11), outline=colour, width=3)
        draw.text((x + 14, y), _fit(draw, text, width - x - 14, font), fill=TEXT, font=font)
    for r, row in enumerate(rows):
        probe, probe_pid, hits = row[0], row[1], row[2]
        probe_cam = row[3] if len(row) > 3 else None
        top = legend_h + GAP + r * (cell_h + CAPTION + GAP)
        canvas.paste(_framed(_thumbnail(probe, thumb_width, thumb_height), PROBE), (GAP, top))
        draw.text((GAP, top + cell_h + 1), _fit(draw, f"probe {r + 1}", cell_w + SEPARATOR, font), fill=TEXT, font=font)
        draw.text((GAP, top + cell_h + 1 + LINE), _fit(draw, _who(probe_pid, probe_cam, probe), cell_w + SEPARATOR - 2, font),
                  fill=TEXT, font=font)
        for c, hit in enumerate(hits[:columns]):
            left = GAP + cell_w + SEPARATOR + c * (cell_w + GAP)
            colour = outline_colour(probe_pid, hit.pid)
            canvas.paste(_framed(_thumbnail(hit.path, thumb_width, thumb_height), colour), (left, top))
            draw.text((left, top + cell_h + 1), _fit(draw, f"{hit.rank}: {hit.score:.2f}", cell_w + GAP, font), fill=TEXT, font=font)
            draw.text((left, top + cell_h + 1 + LINE), _fit(draw, _who(hit.pid, hit.cam, hit.path), cell_w + GAP - 2, font),
                      fill=TEXT, font=font)
    return canvas


def image_format(path: Path | str) -> str:
    """The Pillow format a file name's suffix names (.png, .jpg/.jpeg, .webp, .bmp, .gif, .tif/.tiff)."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise DataError(
            f"cannot tell the picture format from {str(path)!r}: end the name with one of {', '.join(sorted(FORMATS))}"
        )
    return FORMATS[suffix]


def save_ranked_list(
    path: Path | str,
    rows: Sequence[ProbeRow],
    *,
    top_k: int | None = None,
    thumb_width: int = 64,
    thumb_height: int = 128,
    probe_modality: str | None = None,
    gallery_modality: str | None = None,
) -> Path:
    """Render ``rows`` and write it atomically in the format the suffix names (``.jpg`` -> JPEG, ``.png`` -> PNG, ...)."""
    path = Path(path)
    fmt = image_format(path)  # refuse before drawing
    image = render_ranked_list(
        rows, top_k=top_k, thumb_width=thumb_width, thumb_height=thumb_height,
        probe_modality=probe_modality, gallery_modality=gallery_modality,
    )
    extra = {"quality": 92} if fmt in ("JPEG", "WEBP") else {}
    return atomic_write(path, lambda handle: image.save(handle, format=fmt, **extra))
