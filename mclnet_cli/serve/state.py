"""What the server holds between requests: one model and the latest complete index.

The index folder may change under the server (``mclnet index --add`` from a
shell, or another server's upload). Before each request :meth:`ServedIndex.current`
compares a cheap signature of ``meta.json`` (inode, size, mtime: every save
renames a new ``meta.json`` in, last) with the one it loaded; when it changed,
the folder is read again with :meth:`GalleryIndex.load`, which reads again when
a save raced it, so a half-written index is never served; until the new one is
loaded, the complete one in memory answers. Searches work on a snapshot (the
gallery object of the moment); uploads and removals go through the transactions
``mclnet index --add``/``--remove`` use (:mod:`mclnet_cli.engine.updates`: the
index's writer lock, a fresh read, the same checks, a crash-safe save), then swap
the new gallery in, never mutating one a search may be using.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from mclnet_cli.errors import DataError, IndexStoreError, MclnetError
from mclnet_cli.index.store import META_FILE, GalleryIndex, records_for
from mclnet_cli.engine.search import SearchEngine
from mclnet_cli.engine.updates import RemoveReport, add_to_index, check_modality, remove_from_index, require_index
from mclnet_cli.types import Modality

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
    notices: list[str] = field(default_factory=list)


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

    def add_spectrum(self, modality: Modality | str | None = None) -> Modality:
        """The spectrum uploads are embedded with: the index's; ``modality``, when a client gives one, must be it.

        A wrong one is refused with the line ``mclnet index --add`` gives, and a folder
        that no longer holds an index with a line naming it: both before anything is written.
        """
        gallery = self.current()
        built_with = str(gallery.extra.get("modality") or "")
        if not built_with:
            raise IndexStoreError(f"{self.index_dir}/meta.json records no modality; cannot add to it")
        require_index(self.index_dir)
        spectrum = Modality.parse(modality if modality is not None else built_with)
        check_modality(gallery, self.index_dir, spectrum)
        return spectrum

    def add(
        self,
        paths: Sequence[str],
        run: Callable[..., Any] | None = None,
        *,
        modality: Modality | str | None = None,
        origins: Sequence[str] | None = None,
    ) -> AddResult:
        """Embed image files in the index's spectrum and append them on disk with :func:`add_to_index`.

        The images are embedded first (no lock held); then, as for ``mclnet index --add``,
        the writer lock is taken (a running writer is waited for), the folder read as it
        is now, spectrum and checkpoint checked, the rows appended and saved; then the new
        gallery is served. On any failure the folder and the served gallery stay as they
        were. ``modality``: see :meth:`add_spectrum`; ``origins``: the names the files were
        uploaded as, in ``paths`` order (read for the dataset-layout notice). ``run(f, *args,
        **kwargs)`` calls the embedding (default: directly), e.g. on the server's model thread.
        """
        run = run or (lambda f, *args, **kwargs: f(*args, **kwargs))
        spectrum = self.add_spectrum(modality)
        extracted = run(self.engine.embed, paths, spectrum, gallery=self.current())
        if not extracted.paths:
            raise DataError(f"none of the {len(paths)} image(s) could be decoded (e.g. {extracted.failed[0][1]})")
        records = records_for(extracted.paths, spectrum.value)
        names = dict(zip(paths, origins if origins is not None else paths))
        outcome = add_to_index(
            self.index_dir, extracted.features, records, spectrum, checkpoint=self.engine.checkpoint_path,
            fingerprint=self.engine.fingerprint, origins=[names.get(p, p) for p in extracted.paths],
        )  # fmt: skip
        self._serve(outcome.gallery)
        rows = self.rows(outcome.gallery)
        out = [dict(r.to_json(), record=rows[r.path]) for r in records]
        return AddResult(outcome.added, len(outcome.gallery), out, list(extracted.failed), outcome.notices)

    def remove(self, paths: Sequence[str]) -> RemoveReport:
        """Take indexed images (recorded paths, or folders) out of the index with :func:`remove_from_index`; serve the rest."""
        report = remove_from_index(self.index_dir, paths)
        if report.gallery is not None:
            self._serve(report.gallery)
        return report

    def _serve(self, gallery: GalleryIndex) -> None:
        """Make ``gallery``, just saved, the one requests see."""
        with self._guard:
            self.engine.gallery = gallery
            self._signature = signature(self.index_dir)
