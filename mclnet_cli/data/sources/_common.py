"""Helpers shared by the dataset readers: split files, folder checks, image listings."""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import NamedTuple

from mclnet_cli.data.images import is_image_file
from mclnet_cli.types import Modality
from mclnet_cli.errors import DataError


class PathInfo(NamedTuple):
    """What one image path says under a dataset layout: person id, camera, spectrum."""

    pid: int
    cam: int
    modality: Modality


def as_number(text: str) -> int | None:
    """``"0007"`` -> 7; None unless ``text`` is all ASCII digits (``"²"`` is a digit to ``isdigit``)."""
    return int(text) if text.isascii() and text.isdigit() else None


def path_parts(path: str | PurePath) -> tuple[str, ...]:
    """Components of ``path``; backslashes count as separators (idx files written on Windows)."""
    return PurePath(str(path).replace("\\", "/")).parts


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise naming it and what it should hold."""
    if not path.is_dir():
        raise DataError(f"missing folder {path} ({what})")
    return path


def require_file(path: Path, what: str) -> Path:
    """Return ``path`` if it is a file, else raise naming it and what it should hold."""
    if not path.is_file():
        raise DataError(f"missing file {path} ({what})")
    return path


def read_id_list(path: Path) -> list[int]:
    """Parse a one-line comma-separated id file (``1,2,4,5``); a trailing newline is fine.

    A trailing comma, an empty item or a non-integer is an error naming the file,
    because silently dropping ids would change the split.
    """
    require_file(path, "comma-separated person ids")
    text = path.read_text(encoding="utf-8-sig", errors="replace").strip()  # -sig: a BOM (Windows editors) is fine
    if not text:
        raise DataError(f"{path}: empty id list (expected comma-separated integers like 1,2,4)")
    ids: list[int] = []
    for position, item in enumerate(text.split(","), 1):
        token = item.strip()
        if not token:
            raise DataError(f"{path}: empty item at position {position} (trailing or doubled comma?)")
        try:
            value = int(token)
        except ValueError:
            raise DataError(f"{path}: {token!r} at position {position} is not an integer") from None
        if value < 0:
            raise DataError(f"{path}: negative id {value} at position {position}")
        ids.append(value)
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: the same id is listed twice")
    return ids


def read_path_label_file(path: Path) -> list[tuple[str, int]]:
    """Parse an idx file of ``<relative path> <integer label>`` lines (blank lines skipped)."""
    require_file(path, "lines of '<relative path> <label>'")
    rows: list[tuple[str, int]] = []
    with path.open(encoding="utf-8-sig", errors="replace") as handle:
        for lineno, line in enumerate(handle, 1):
            text = line.strip()
            if not text:
                continue
            parts = text.rsplit(None, 1)
            if len(parts) != 2:
                raise DataError(f"{path}:{lineno}: expected '<relative path> <label>', got {text!r}")
            rel, label = parts
            try:
                rows.append((rel, int(label)))
            except ValueError:
                raise DataError(f"{path}:{lineno}: label {label!r} is not an integer") from None
    if not rows:
        raise DataError(f"{path}: no entries")
    return rows


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    with os.scandir(folder) as entries:
        # "._name.jpg": macOS AppleDouble metadata, not an image (mclnet index skips hidden files too)
        names = sorted(e.name for e in entries if e.is_file() and is_image_file(e.name) and not e.name.startswith("._"))
    return [folder / name for name in names]


def numbered_subdirs(folder: Path) -> dict[int, Path]:
    """Sub-folders whose whole name is an integer (``0001`` -> 1)."""
    found: dict[int, Path] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            number = as_number(entry.name)
            if number is not None and entry.is_dir():
                found[number] = Path(entry.path)
    return found


def cam_number(name: str) -> int | None:
    """``cam3`` -> 3; anything else -> None (a path component, never a substring search)."""
    return as_number(name[3:]) if name.startswith("cam") else None
