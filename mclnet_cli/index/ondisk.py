"""IVF indices whose inverted lists live in a file beside ``index.faiss`` (archives beyond memory).

FAISS's documented on-disk workflow (``faiss.contrib.ondisk.merge_ondisk``): an
IVF index is trained once, every shard of the gallery is added to its own copy
of the trained index and written to disk, and the shards' inverted lists are
merged into one ``OnDiskInvertedLists`` file. ``index.faiss`` then holds the
quantiser and the list directory and names the lists file by absolute path, so
``faiss.read_index(index.faiss)`` opens it in place, memory-mapping the lists;
searches page in only the cells they probe.

In an mclnet index folder the lists file is ``lists-<id>.ivfdata`` (a new name
at every save, so a reader that mapped the previous one keeps a valid mapping);
``meta.json`` records it under ``"ondisk"`` (file name, the absolute path
written into ``index.faiss``, size). When the folder was moved, mclnet re-points
the index to the file beside it while reading. Adding to such an index stages
the new rows in memory and, at save, merges the old lists and the new rows into
a fresh lists file; the old file is removed once the new ``meta.json`` is live.
"""

from __future__ import annotations

import ctypes
import io
import os
import struct
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import faiss
import numpy as np

from mclnet_cli.atomic import atomic_write
from mclnet_cli.errors import IndexStoreError

LISTS_PREFIX = "lists-"
LISTS_SUFFIX = ".ivfdata"
BUILD_DIR = ".mclnet-build"  # a chunked build's temp area inside the index folder (see mclnet_cli.engine.sharded)


class StaleLists(IndexStoreError):
    """``index.faiss`` does not name the lists file ``meta.json`` records, or that file is gone (a swap raced the read)."""


def new_lists_name() -> str:
    return f"{LISTS_PREFIX}{uuid.uuid4().hex[:12]}{LISTS_SUFFIX}"


def is_ondisk(index: faiss.Index) -> bool:
    """True when ``index`` is an IVF index with ``OnDiskInvertedLists``."""
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)


def require_ivf(index: faiss.Index, what: str) -> faiss.IndexIVF:
    """The IVF layer of ``index``; an index of another structure (or wrapped in a refine step) is refused."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not isinstance(faiss.downcast_index(index), faiss.IndexIVF):
        raise IndexStoreError(f"{what}: on-disk inverted lists need a plain ivf or ivfpq index")
    return ivf


def _flush_c_streams() -> None:
    try:
        ctypes.CDLL(None).fflush(None)  # C stdio's buffers (FAISS printf), not Python's
    except (OSError, AttributeError):
        pass


@contextmanager
def _faiss_stdout_to_stderr() -> Iterator[None]:
    """FAISS prints "resizing <file>" on stdout while it grows a lists file: keep stdout clean for --json."""
    sys.stdout.flush()
    _flush_c_streams()
    try:
        saved = os.dup(1)
    except OSError:  # no stdout to protect
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        _flush_c_streams()  # while fd 1 still points at stderr
        os.dup2(saved, 1)
        os.close(saved)


def train_ivf(sample: np.ndarray, factory: str, dim: int, points_per_centroid: int = 64) -> faiss.Index:
    """An empty IVF index of ``factory`` (inner product) trained on unit vectors ``sample``."""
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    ivf = require_ivf(index, "train")
    ivf.cp.spherical = True  # unit vectors: centroids on the sphere
    ivf.cp.max_points_per_centroid = points_per_centroid
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    return index


def write_index_file(index: faiss.Index, path: Path | str) -> Path:
    """Write ``index`` to ``path`` atomically (streamed, no second copy in memory)."""
    return atomic_write(path, lambda handle: faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write)))


def trained_copy(index: faiss.Index) -> faiss.Index:
    """An empty copy of the trained IVF ``index`` (same quantiser and codec), its own lists untouched."""
    ivf = require_ivf(index, "add")
    saved, owned, count = ivf.invlists, ivf.own_invlists, index.ntotal
    empty = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    ivf.own_invlists = False
    ivf.replace_invlists(empty, True)
    empty.this.disown()
    index.ntotal = ivf.ntotal = 0
    try:
        return faiss.clone_index(index)
    finally:
        ivf.replace_invlists(saved, owned)  # frees the empty lists, keeps the real ones
        index.ntotal = ivf.ntotal = count


def merge_into(trained: faiss.Index, parts: Sequence[faiss.Index], lists_path: Path | str) -> faiss.Index:
    """Fill the empty trained IVF ``trained`` with every row of ``parts``, in order; lists go to ``lists_path``.

    Each part's rows are numbered from 0; in the result part ``i``'s rows follow all
    rows of the parts before it, so the merged row order is the concatenation of the
    parts. Memory stays small: lists are copied cell by cell between memory-mapped files.
    """
    ivf = require_ivf(trained, "merge")
    if trained.ntotal != 0:
        raise IndexStoreError("merge: the trained index must be empty")
    sources = faiss.InvertedListsPtrVector()
    for part in parts:
        source = require_ivf(part, "merge")
        if source.nlist != ivf.nlist or source.code_size != ivf.code_size:
            raise IndexStoreError("merge: the shards were not added to the same trained index")
        sources.push_back(source.invlists)
    lists_path = Path(lists_path).resolve()  # index.faiss names it by absolute path
    invlists = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(lists_path))
    with _faiss_stdout_to_stderr():
        total = invlists.merge_from_multiple(sources.data(), sources.size(), False)
    _renumber(invlists, [require_ivf(part, "merge").invlists for part in parts])
    trained.ntotal = ivf.ntotal = total
    ivf.replace_invlists(invlists, True)
    invlists.this.disown()
    return trained


def _renumber(merged: Any, sources: Sequence[Any]) -> None:
    """Shift the ids of the merged lists so that source ``i``'s rows follow those of sources ``0..i-1``.

    Not FAISS's ``shift_ids``: in FAISS 1.15 it offsets source ``i`` by the sizes of
    sources ``1..i`` (right only when all sources are the same size). Each merged
    list holds the sources' entries in source order, so the offsets follow from the
    sources' list sizes; ids are rewritten in place in the (writable) lists file.
    """
    counts = [int(source.compute_ntotal()) for source in sources]
    offsets = np.cumsum([0, *counts[:-1]]).astype(np.int64)
    if not offsets.any():
        return  # one source, or all before the last are empty
    sizes = np.array([[source.list_size(j) for j in range(merged.nlist)] for source in sources], dtype=np.int64)
    for j in range(merged.nlist):
        size = int(merged.list_size(j))
        if size:
            ids = faiss.rev_swig_ptr(merged.get_ids(j), size)  # a view into the mapped file
            ids += np.repeat(offsets, sizes[:, j])


def read_shard(path: Path | str) -> faiss.Index:
    """A shard written by :func:`write_index_file`, its lists memory-mapped (not read into memory)."""
    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)


def merge_shards(trained_path: Path | str, shard_paths: Sequence[Path | str], lists_path: Path | str) -> faiss.Index:
    """:func:`merge_into` from files: the trained index and the shards (ids 0-based within each shard)."""
    parts = [read_shard(path) for path in shard_paths]
    return merge_into(faiss.read_index(str(trained_path)), parts, lists_path)


def _lists_path(index: faiss.Index) -> str:
    return str(faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists).filename)


def _named(path: str) -> bytes:
    raw = path.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw  # how FAISS serialises the lists file name


def read_index(directory: Path, block: dict[str, Any]) -> faiss.Index:
    """Open ``index.faiss`` of ``directory`` (read-only) with the lists file ``block`` (meta.json "ondisk") names."""
    name, recorded = str(block.get("lists", "")), str(block.get("path", ""))
    if not (name.startswith(LISTS_PREFIX) and name.endswith(LISTS_SUFFIX) and "/" not in name and recorded):
        raise IndexStoreError(f"{directory}/meta.json: ondisk must name a {LISTS_PREFIX}*{LISTS_SUFFIX} file, got {block!r}")
    data = (directory / "index.faiss").read_bytes()  # the quantiser and the list directory: small
    if data.count(_named(recorded)) != 1:
        raise StaleLists(f"{directory}: index.faiss does not use the lists file {name} that meta.json names")
    actual = directory.resolve() / name
    if not actual.is_file():
        raise StaleLists(f"{directory} is not a complete mclnet index: {name} is missing")
    if str(actual) != recorded:  # the folder was moved or is reached through another path
        data = data.replace(_named(recorded), _named(str(actual)))
    try:
        return faiss.read_index(faiss.PyCallbackIOReader(io.BytesIO(data).read), faiss.IO_FLAG_READ_ONLY)
    except RuntimeError as exc:
        raise StaleLists(f"{directory}: cannot open {name} ({str(exc).strip().splitlines()[-1][:200]})") from exc


def remove_unreferenced(directory: Path, keep: str | None) -> None:
    """Remove lists files of ``directory`` other than ``keep`` (left by earlier saves or killed writers). Needs the lock."""
    for path in directory.glob(f"{LISTS_PREFIX}*{LISTS_SUFFIX}"):
        if path.name != keep:
            path.unlink(missing_ok=True)


@dataclass
class OnDisk:
    """The lists file of an on-disk gallery, plus rows added since it was opened (merged by :meth:`commit`)."""

    lists_path: Path
    pending: faiss.Index | None = None  # a trained empty copy holding the added rows (ids 0-based)

    @property
    def pending_count(self) -> int:
        return 0 if self.pending is None else int(self.pending.ntotal)

    def stage(self, index: faiss.Index, rows: np.ndarray) -> None:
        """Keep ``rows`` (already reduced, unit) to be merged into a new lists file at the next save."""
        if self.pending is None:
            self.pending = trained_copy(index)
            faiss.extract_index_ivf(self.pending).nprobe = faiss.extract_index_ivf(self.pending).nlist  # exact
        self.pending.add(np.ascontiguousarray(rows, dtype=np.float32))

    def search(self, index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``index.search`` over the stored rows and the staged ones (their ids follow the stored rows)."""
        scores, rows = index.search(queries, k)
        if not self.pending_count:
            return scores, rows
        more_scores, more_rows = self.pending.search(queries, k)
        more_rows = np.where(more_rows >= 0, more_rows + index.ntotal, -1)
        all_scores = np.concatenate([scores, more_scores], axis=1)
        all_rows = np.concatenate([rows, more_rows], axis=1)
        all_scores = np.where(all_rows >= 0, all_scores, -np.inf)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_rows, order, 1)

    def commit(self, index: faiss.Index, directory: Path) -> faiss.Index:
        """The index to save in ``directory``: staged rows (or lists kept elsewhere) merged into a new lists file there."""
        directory = directory.resolve()
        if self.pending is None and self.lists_path.resolve().parent == directory and self.lists_path.is_file():
            return index
        target = directory / new_lists_name()
        parts = [index] + ([self.pending] if self.pending is not None else [])
        merged = merge_into(trained_copy(index), parts, target)
        self.lists_path, self.pending = target, None
        return merged

    def meta(self) -> dict[str, Any]:
        """The ``meta.json`` ``"ondisk"`` block."""
        return {"lists": self.lists_path.name, "path": str(self.lists_path), "bytes": self.lists_path.stat().st_size}

    @classmethod
    def of(cls, index: faiss.Index) -> "OnDisk":
        return cls(Path(_lists_path(index)))
