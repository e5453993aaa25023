"""What the server holds between requests: one model and the latest complete index.

The index folder may change under the server (``mclnet index --add`` from a
shell, or another server's upload). Before each request :meth:`ServedIndex.current`
compares a cheap signature of ``meta.json`` (inode, size, mtime: every save
renames a new ``meta.json`` in, last) with the one it loaded; when it changed,
the folder is read again with :meth:`GalleryIndex.load`, which reads again when
a save raced it, so a half-written index is never served; until the new one is
loaded, the complete one in memory answers. Searches work on a snapshot (the
gallery object of the moment); uploads read the folder under the index's writer
lock (:func:`mclnet_cli.index.gallery.writer_lock`, the one ``mclnet index``
takes), append, save, and swap the new gallery in, never mutating one a search
may be using.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mclnet_cli.errors import DataError, IndexStoreError, MclnetError
from mclnet_cli.index.gallery import META_FILE, GalleryIndex, records_for, writer_lock
from mclnet_cli.engine.gallery import SearchEngine

Signature = tuple[int, int, int, int]


def signature(index_dir: Path) -> Signature | None:
    """(inode, size, mtime_ns, folder inode) of ``meta.json``: changes with every save (the folder is swapped)."""
    try:
        meta = os.stat(index_dir / META_FILE)
        folder = os.stat(index_dir)
    except OSError:
        return None
    return (meta.st_ino, meta.st_size, meta.st_mtime_ns, folder.st_ino)


@dataclass
class AddResult:
    """What one upload to the gallery did."""

    added: int
    count: int
    records: list[dict]
    skipped: list[tuple[str, str]] = field(default_factory=list)


class ServedIndex:
    """The engine (model loaded once) plus reload and add, safe across request threads."""

    def __init__(self, engine: SearchEngine) -> None:
        self.engine = engine
        self.index_dir = engine.index_dir
        self._guard = threading.Lock()  # serialises reloads and swaps inside this process
        self._signature = signature(self.index_dir)
        self.reload_error: str | None = None
        self.reloads = 0
        self._rows: tuple[GalleryIndex | None, dict[str, int]] = (None, {})

    def rows(self, gallery: GalleryIndex) -> dict[str, int]:
        """Path -> row of ``gallery``, built once per gallery version (not per request: 10^5 rows cost ~50 ms)."""
        cached, rows = self._rows
        if cached is not gallery:
            rows = {r.path: i for i, r in enumerate(gallery.records)}
            self._rows = (gallery, rows)
        return rows

    def current(self) -> GalleryIndex:
        """The newest complete gallery: read again first when the folder changed since the last read."""
        seen = signature(self.index_dir)
        if seen is None or seen == self._signature:
            return self.engine.gallery
        with self._guard:
            seen = signature(self.index_dir)
            if seen is None or seen == self._signature:
                return self.engine.gallery
            try:
                gallery = self.engine.reload_gallery()  # swaps only a complete gallery that passed the checks
            except MclnetError as exc:
                self.reload_error = str(exc)
                self._signature = seen  # do not retry a broken folder on every request; next save retries
                return self.engine.gallery
            self._signature = seen
            self.reload_error = None
            self.reloads += 1
            return gallery

    def add(self, paths: Sequence[str], run: Callable[..., Any] | None = None) -> AddResult:
        """Embed image files with the gallery's spectrum and append them to the index on disk, atomically.

        Reads the folder under the writer lock (so a concurrent ``mclnet index --add``
        is never lost; a running one is waited for), appends, saves (temp folder + rename), then serves the new gallery.
        On any failure the folder and the served gallery are left as they were. ``run(f, *args,
        **kwargs)`` calls the embedding (default: directly), e.g. on the server's model thread.
        """
        run = run or (lambda f, *args, **kwargs: f(*args, **kwargs))
        modality = str(self.current().extra.get("modality") or "")
        if not modality:
            raise IndexStoreError(f"{self.index_dir}/meta.json records no modality; cannot add to it")
        with writer_lock(self.index_dir):
            gallery = GalleryIndex.load(self.index_dir)
            self.engine.check_gallery(gallery)
            extracted = run(self.engine.embed, paths, modality, gallery=gallery)
            if not extracted.paths:
                raise DataError(f"none of the {len(paths)} image(s) could be decoded (e.g. {extracted.failed[0][1]})")
            records = records_for(extracted.paths, modality)
            added = gallery.add(extracted.features, records)
            if added:
                gallery.save(self.index_dir, locked=True)
            with self._guard:
                self.engine.gallery = gallery
                self._signature = signature(self.index_dir)
        rows = self.rows(gallery)
        out = [dict(r.to_json(), record=rows[r.path]) for r in records]
        return AddResult(added, len(gallery), out, list(extracted.failed))
