"""A ranked-list picture: one row per probe, the probe then its top-k gallery thumbnails.

Outlines: blue around the probe; green around a result of the probe's person,
red around another person, grey when either pid is unknown (the path follows
no known dataset layout). Each thumbnail is captioned with its rank and score.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from mclnet_cli.atomic import atomic_write
from mclnet_cli.data.images import load_rgb
from mclnet_cli.errors import DataError
from mclnet_cli.index.gallery import Hit

PROBE = (40, 110, 230)
MATCH = (0, 170, 60)
MISMATCH = (220, 30, 30)
UNKNOWN = (150, 150, 150)
BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
BORDER = 3
GAP = 6
CAPTION = 14
SEPARATOR = 14  # extra space between the probe and its results
MAX_COLUMNS = 50  # results drawn per probe; more would make a picture no viewer opens

ProbeRow = tuple[str, "int | None", Sequence[Hit]]


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


def render_ranked_list(
    rows: Sequence[ProbeRow], *, top_k: int | None = None, thumb_width: int = 64, thumb_height: int = 128
) -> Image.Image:
    """The picture for ``rows`` of ``(probe path, probe pid or None, hits)``.

    At most :data:`MAX_COLUMNS` results per probe are drawn; ``top_k`` is accepted for
    compatibility and does not widen the picture beyond the hits.
    """
    if not rows:
        raise DataError("nothing to draw: no probe has results")
    # Width follows the hits actually drawn (never --top-k alone), at most MAX_COLUMNS thumbnails a row.
    columns = min(max(max(len(hits) for _, _, hits in rows), 1), MAX_COLUMNS)
    cell_w, cell_h = thumb_width + 2 * BORDER, thumb_height + 2 * BORDER
    width = GAP + cell_w + SEPARATOR + columns * (cell_w + GAP)
    height = GAP + len(rows) * (cell_h + CAPTION + GAP)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for r, (probe, probe_pid, hits) in enumerate(rows):
        top = GAP + r * (cell_h + CAPTION + GAP)
        canvas.paste(_framed(_thumbnail(probe, thumb_width, thumb_height), PROBE), (GAP, top))
        label = "probe" if probe_pid is None else f"probe {probe_pid}"
        draw.text((GAP, top + cell_h + 1), label, fill=TEXT, font=font)
        for c, hit in enumerate(hits[:columns]):
            left = GAP + cell_w + SEPARATOR + c * (cell_w + GAP)
            colour = outline_colour(probe_pid, hit.pid)
            canvas.paste(_framed(_thumbnail(hit.path, thumb_width, thumb_height), colour), (left, top))
            draw.text((left, top + cell_h + 1), f"{hit.rank}: {hit.score:.2f}", fill=TEXT, font=font)
    return canvas


def save_ranked_list(
    path: Path | str, rows: Sequence[ProbeRow], *, top_k: int | None = None, thumb_width: int = 64, thumb_height: int = 128
) -> Path:
    """Render ``rows`` and write a PNG atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    image = render_ranked_list(rows, top_k=top_k, thumb_width=thumb_width, thumb_height=thumb_height)
    return atomic_write(path, lambda handle: image.save(handle, format="PNG"))
