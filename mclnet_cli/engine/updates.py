"""Changing an index folder in place: the one add and the one remove transaction.

``mclnet index --add``, ``mclnet index --remove``, ``api.build_index(add=True)``
and the server's ``POST``/``DELETE /gallery`` change an index only through
:func:`add_to_index` and :func:`remove_from_index`. Each takes the folder's
writer lock (:func:`mclnet_cli.index.store.writer_lock`; another writer is
waited for), reads the index as the last writer left it, checks it, changes it
and saves it crash-safely (:meth:`GalleryIndex.save`). A folder that is gone is
an error naming it, never re-created (it would hold nothing but the lock file).
Nothing here prints; notices come back to the caller.
"""

from __future__ import annotations

import bisect
import os
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from mclnet_cli.data.sources.layout import identify
from mclnet_cli.errors import DataError, IndexStoreError
from mclnet_cli.index.store import META_FILE, GalleryIndex, IndexRecord, is_index_dir, writer_lock
from mclnet_cli.types import Modality


def check_modality(gallery: GalleryIndex, index_dir: Path | str, modality: Modality | str) -> None:
    """Refuse adding images of ``modality`` to a gallery that holds the other spectrum."""
    modality = Modality.parse(modality)
    built_with = str(gallery.extra.get("modality", modality.value))
    if built_with != modality.value:
        raise IndexStoreError(
            f"{index_dir} indexes {built_with} images; cannot add {modality.value} ones (use another --out)"
        )


def check_fingerprint(gallery: GalleryIndex, index_dir: Path | str, checkpoint: str, fingerprint: str) -> None:
    """Refuse a checkpoint other than the one that built ``gallery``."""
    recorded = dict(gallery.extra.get("checkpoint") or {}).get("fingerprint")
    if recorded and recorded != fingerprint:
        raise IndexStoreError(
            f"checkpoint {checkpoint} (fingerprint {fingerprint}) is not the one that built {index_dir} "
            f"(fingerprint {recorded}); use that checkpoint or rebuild the index"
        )


def layout_notices(paths: Sequence[str], modality: Modality | str) -> list[str]:
    """A notice when some ``paths`` follow a dataset layout of the other spectrum than the one they are embedded with."""
    modality = Modality.parse(modality)
    other = [p for p in paths if (found := identify(p)) is not None and found.modality is not modality]
    if not other:
        return []
    return [
        f"{len(other)} image(s) look {modality.other().value} by their dataset layout (e.g. {other[0]}) "
        f"but were embedded as {modality.value}"
    ]


def require_index(index_dir: Path | str) -> Path:
    """``index_dir`` when it holds an index; else a one-line error naming it (the folder was removed, or never built)."""
    index_dir = Path(index_dir)
    if not is_index_dir(index_dir):
        raise IndexStoreError(
            f"index not found: {index_dir} (no {META_FILE}: removed from disk, or never built); nothing was changed"
        )
    return index_dir


@contextmanager
def locked_index(index_dir: Path | str, on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """The writer lock of an existing index folder, held for the ``with`` block; a missing folder is never made."""
    index_dir = require_index(index_dir)
    with ExitStack() as stack:
        try:
            stack.enter_context(writer_lock(index_dir, on_wait=on_wait, create=False))
        except FileNotFoundError:
            require_index(index_dir)  # removed between the check and the lock: says so
            raise
        yield require_index(index_dir)  # (removed while another writer held the lock: says so)


# --------------------------------------------------------------------------- add


@dataclass
class AddOutcome:
    """What :func:`add_to_index` did: the index as saved, rows added, and what the caller should be told."""

    gallery: GalleryIndex
    added: int
    notices: list[str] = field(default_factory=list)


def add_to_index(
    index_dir: Path | str,
    features: Any,
    records: Sequence[IndexRecord],
    modality: Modality | str,
    *,
    checkpoint: str,
    fingerprint: str,
    kind: str | None = None,
    origins: Sequence[str] | None = None,
    on_wait: Callable[[str], None] | None = None,
    locked: bool = False,
) -> AddOutcome:
    """Append ``features`` [N, D] with ``records`` to the index at ``index_dir``: lock, read, check, add, save.

    The index must hold ``modality`` and have been built by the checkpoint of
    ``fingerprint`` (else :class:`IndexStoreError`, the same line everywhere).
    Rows whose path is indexed already are skipped; nothing is saved when none is
    new. ``origins``: the names the images came by (default: their paths), read
    for the dataset-layout notice. ``locked=True``: the caller holds the writer lock.
    """
    if not locked:
        with locked_index(index_dir, on_wait):
            return add_to_index(
                index_dir, features, records, modality, checkpoint=checkpoint, fingerprint=fingerprint, kind=kind,
                origins=origins, locked=True,
            )  # fmt: skip
    index_dir, modality, records = Path(index_dir), Modality.parse(modality), list(records)
    gallery = GalleryIndex.load(index_dir)  # as the last writer left it
    check_modality(gallery, index_dir, modality)
    check_fingerprint(gallery, index_dir, checkpoint, fingerprint)
    notices = layout_notices(list(origins) if origins is not None else [r.path for r in records], modality)
    if kind is not None and kind != gallery.kind:
        notices.append(f"--kind {kind} ignored: adding to the existing {gallery.kind} index")
    added = gallery.add(features, records) if records else 0
    notices.extend(gallery.notices)
    if added:
        gallery.save(index_dir, locked=True)
    else:
        notices.append("nothing new to add: the index is unchanged")
    return AddOutcome(gallery, added, notices)


# --------------------------------------------------------------------------- remove


@dataclass
class RemoveReport:
    """What :func:`remove_from_index` did."""

    index_dir: Path
    kind: str
    removed: int  # rows taken out
    count: int  # rows left
    gallery: GalleryIndex | None = field(default=None, repr=False)  # the index as saved

    def to_json(self) -> dict[str, Any]:
        return {"index": str(self.index_dir), "kind": self.kind, "removed": self.removed, "count": self.count}


def _spellings(given: str) -> set[str]:
    """``given`` as a user may mean it: as written (normalised), absolute, and with links resolved."""
    text = os.path.normpath(given)
    return {text, os.path.abspath(text), str(Path(text).resolve())}


def match_records(records: Sequence[IndexRecord], given: Sequence[str], index_dir: Path | str) -> set[str]:
    """The recorded paths ``given`` names: a path as recorded (relative, absolute or resolved), or a folder
    (every record under it). A name that matches no record is a one-line :class:`IndexStoreError`."""
    ordered = sorted(r.path for r in records)
    indexed = set(ordered)
    chosen: set[str] = set()
    for name in given:
        found: set[str] = set()
        for spelling in _spellings(str(name)):
            if spelling in indexed:
                found.add(spelling)
            prefix = spelling.rstrip(os.sep) + os.sep
            at = bisect.bisect_left(ordered, prefix)
            while at < len(ordered) and ordered[at].startswith(prefix):
                found.add(ordered[at])
                at += 1
        if not found:
            raise IndexStoreError(
                f"{name} is not in the index {index_dir}: no record has that path or lies under it "
                f"(paths as recorded in records.jsonl); nothing was removed"
            )
        chosen |= found
    return chosen


def remove_from_index(
    index_dir: Path | str, paths: Sequence[str | Path], *, on_wait: Callable[[str], None] | None = None
) -> RemoveReport:
    """Take the images ``paths`` names (see :func:`match_records`) out of the index: lock, read, remove, save.

    Every name must match a record, else nothing changes. Needs no model: rows are
    removed from the stored index (see :meth:`GalleryIndex.remove`).
    """
    if not paths:
        raise DataError("no path given to remove: pass indexed images or folders")
    with locked_index(index_dir, on_wait) as folder:
        gallery = GalleryIndex.load(folder)
        chosen = match_records(gallery.records, [str(p) for p in paths], folder)
        removed = gallery.remove(chosen)
        gallery.save(folder, locked=True)
    return RemoveReport(folder, gallery.kind, removed, len(gallery), gallery)
