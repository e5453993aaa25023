"""Optional uint8 cache of the training images, pre-resized, stored as a ``.npy`` memmap.

Training then reads rows of a memory-mapped array instead of decoding JPEGs every
epoch, without loading the whole set into RAM. A JSON index maps each image path
to its row. The memmap is opened lazily in each process (DataLoader workers
included) and never pickled.

Each build draws a random token, stored in the JSON index and (by ``prepare``)
in ``meta.json["cache"]``. Training uses a cache only when meta.json names it
(same size, same token) and the index's row count matches the array, so a cache
left by an earlier or interrupted ``prepare`` is never read.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from mclnet_cli.atomic import atomic_write_text, replacing
from mclnet_cli.data.images import load_rgb
from mclnet_cli.types import Sample
from mclnet_cli.errors import DataError, StorageError

CACHE_DIR = "cache"
CACHE_PREFIX = "train_uint8_"


MAX_CACHE_SIDE = 1024  # pixels; training inputs are a few hundred (288x144, 384x192)
FREE_SPACE_MARGIN = 64 << 20  # bytes left free after the cache, for the manifest and checkpoints


def parse_size(text: str) -> tuple[int, int]:
    """``"288x144"`` -> (288, 144) as (height, width); each side at most :data:`MAX_CACHE_SIDE`."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise DataError(f"image size {text!r} is not of the form HEIGHTxWIDTH (e.g. 288x144)")
    height, width = int(parts[0]), int(parts[1])
    if height > MAX_CACHE_SIDE or width > MAX_CACHE_SIDE:
        raise DataError(f"image size {text!r} is too large: each side at most {MAX_CACHE_SIDE} (e.g. 288x144)")
    return height, width


def _allocate(array_path: Path, tmp: Path, count: int, height: int, width: int) -> np.memmap:
    """Create the memmap file ``tmp`` with every block allocated now, after checking free space.

    A sparse memmap on a full disk dies of SIGBUS when a page is first written;
    allocated up front, a full disk is one :class:`StorageError` naming the cache
    (``tmp`` is the temp of :func:`~mclnet_cli.atomic.replacing`, which removes it and
    names ``array_path`` in the error).
    """
    needed = count * height * width * 3
    try:
        free = shutil.disk_usage(tmp.parent).free
    except OSError:
        free = None
    if free is not None and needed + FREE_SPACE_MARGIN > free:
        raise StorageError(
            f"cannot write {array_path}: the cache needs {needed / 2**30:.2f} GiB and {tmp.parent} has "
            f"{free / 2**30:.2f} GiB free (free some space, use a smaller --cache-size, or prepare without --cache)"
        )
    array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, height, width, 3))
    fd = os.open(tmp, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return array


def cache_paths(root: Path | str, height: int, width: int) -> tuple[Path, Path]:
    """(array file, JSON index) of the cache for one image size."""
    folder = Path(root) / CACHE_DIR
    stem = f"{CACHE_PREFIX}{height}x{width}"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def remove_cache(root: Path | str) -> None:
    """Delete every cache written under ``root/cache`` (all sizes, leftover temp files).

    Only files this module writes are removed; the folder goes too when that
    leaves it empty.
    """
    folder = Path(root) / CACHE_DIR
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.is_file() and path.name.lstrip(".").startswith(CACHE_PREFIX):
            path.unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:  # something else lives there: leave it
        pass


def resized_array(path: str, height: int, width: int) -> np.ndarray:
    """Decode to RGB and resize to (height, width): uint8 [H, W, 3]."""
    image = load_rgb(path)
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def build_cache(
    root: Path | str,
    samples: Sequence[Sample],
    height: int,
    width: int,
    *,
    workers: int = 4,
    on_progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Write the cache of ``samples`` under ``root/cache`` atomically; returns a summary.

    The summary's ``token`` must be recorded in meta.json (``meta["cache"]``)
    for training to use the cache.
    """
    array_path, index_path = cache_paths(root, height, width)
    token = uuid.uuid4().hex
    array_path.parent.mkdir(parents=True, exist_ok=True)
    paths = [s.path for s in samples]
    with replacing(array_path) as tmp:  # a full disk or a refused write names the cache, never the temp
        array = _allocate(array_path, tmp, len(paths), height, width)

        def fill(row: int) -> None:
            array[row] = resized_array(paths[row], height, width)

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for _ in pool.map(fill, range(len(paths))):
                if on_progress is not None:
                    on_progress(1)
        array.flush()
        del array
    index = {"height": height, "width": width, "count": len(paths), "token": token, "array": array_path.name, "paths": paths}
    atomic_write_text(index_path, json.dumps(index) + "\n")
    return {
        "path": str(array_path),
        "height": height,
        "width": width,
        "images": len(paths),
        "bytes": array_path.stat().st_size,
        "token": token,
    }


class ImageCache:
    """Read-only access to a cache; the memmap opens on first use in each process."""

    def __init__(self, array_path: Path, rows: dict[str, int], height: int, width: int) -> None:
        self.array_path = Path(array_path)
        self.rows = rows
        self.height = height
        self.width = width
        self._array: np.ndarray | None = None

    def __contains__(self, path: str) -> bool:
        return path in self.rows

    def array(self, path: str) -> np.ndarray:
        """uint8 [H, W, 3] of one cached image."""
        if self._array is None:
            self._array = np.load(self.array_path, mmap_mode="r")
        return np.array(self._array[self.rows[path]])

    def image(self, path: str) -> Image.Image:
        return Image.fromarray(self.array(path), mode="RGB")

    def __getstate__(self) -> dict[str, Any]:  # never pickle the mapped array into workers
        state = dict(self.__dict__)
        state["_array"] = None
        return state


def open_cache(root: Path | str, height: int, width: int, samples: Sequence[Sample], *, token: str | None) -> ImageCache | None:
    """The cache for this size if it is the one built with ``token`` and holds every sample; otherwise None.

    A cache from another build (token differs), of another size, whose row count
    disagrees with its array, or missing a sample is ignored; an unreadable index
    or array is an error naming the file.
    """
    array_path, index_path = cache_paths(root, height, width)
    if not token or not array_path.is_file() or not index_path.is_file():
        return None
    hint = "delete the cache folder or re-run prepare --cache"
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
        paths = list(index["paths"])
        count = index.get("count")
        index_token = index.get("token")
        size = (index.get("height"), index.get("width"))
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{index_path}: malformed cache index ({exc}); {hint}") from exc
    if index_token != token or size != (height, width) or count != len(paths):
        return None
    try:
        shape = np.load(array_path, mmap_mode="r").shape  # reads the header only
    except (OSError, ValueError) as exc:
        raise DataError(f"{array_path}: unreadable cache array ({exc}); {hint}") from exc
    if shape != (count, height, width, 3):
        return None
    rows = {p: i for i, p in enumerate(paths)}
    if any(s.path not in rows for s in samples):
        return None
    return ImageCache(array_path, rows, height, width)


def open_prepared_cache(
    root: Path | str, meta: Mapping[str, Any], height: int, width: int, samples: Sequence[Sample]
) -> ImageCache | None:
    """The cache that ``meta.json`` of a prepared dataset names, if it is of this size; otherwise None."""
    info = meta.get("cache")
    if not isinstance(info, Mapping) or (info.get("height"), info.get("width")) != (height, width):
        return None
    return open_cache(root, height, width, samples, token=info.get("token"))
