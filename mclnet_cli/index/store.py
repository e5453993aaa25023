"""The index store: a gallery's embeddings in a FAISS file, with JSON sidecars describing every row.

It owns :class:`GalleryIndex` (build, add, remove, search, save, load), :class:`IndexRecord`,
:class:`Hit`, the folder's files and their crash-safe swap (:func:`read_meta`, :func:`writer_lock`).

On disk a gallery index is a folder of three files:

- ``index.faiss``: the FAISS index (inner product over L2-normalised features,
  so scores are cosine similarities); loadable with plain ``faiss.read_index``.
- ``records.jsonl``: one line per indexed image, in index row order: path,
  modality, pid and cam (``null`` when the path follows no known layout).
- ``meta.json``: dimension, metric, kind and FAISS factory string, search
  parameters, counts, timestamps, plus whatever the builder adds (checkpoint
  path and fingerprint, modality, image size).

Two more files appear when asked for: ``reduction.npy`` (``--dim``: the PCA every
feature goes through before it meets the index, see :mod:`mclnet_cli.index.reduction`)
and ``lists-<id>.ivfdata`` (``--chunk``: the IVF inverted lists on disk, memory-mapped,
see :mod:`mclnet_cli.index.ondisk`); ``meta.json`` describes both.

Kinds: ``flat`` is exact and the default. ``hnsw`` is a graph index (no
training). ``ivf`` and ``ivfpq`` cluster the gallery into ``nlist`` cells
trained on the features given to :meth:`GalleryIndex.build`; ``ivfpq`` also
compresses vectors with product quantisation. Parameters are chosen from the
gallery size; a gallery too small to train a kind falls back to a simpler one
and says so in :attr:`GalleryIndex.notices`.

:meth:`GalleryIndex.add` appends to the trained structure; it never retrains.
IVF cells trained on a small gallery still work after large additions but get
unbalanced (slower, lower recall): rebuild without ``--add`` when the gallery
has grown several times over (``meta.json`` keeps ``trained_on``).
:meth:`GalleryIndex.remove` drops rows exactly, keeping the others' order, vectors
and scores: ``flat`` through FAISS's ``remove_ids``, IVF kinds by taking the rows
out of their inverted lists (trained cells and stored codes untouched, rows
renumbered), ``hnsw`` (whose graph FAISS cannot shrink) by rebuilding the graph
from its stored, exact vectors.

Writing is crash-safe and single-writer (see :mod:`mclnet_cli.locks`):

1. the writer takes the folder's lock (``.mclnet-lock``; another writer waits);
2. the three new files are written into ``.staging-<id>/`` inside the folder;
3. the journal ``.swap.json`` naming that staging folder is written atomically:
   this is the commit point;
4. the files are renamed over the live ones, ``meta.json`` last, then the
   journal and staging folder are removed.

A crash before step 3 leaves the previous index untouched (the staging folder is
removed by the next writer: roll back); a crash after it is finished by the next
open -- reader or writer -- that can take the lock (roll forward). ``meta.json``
records the size of the two other files, so a reader racing a swap notices a
mixed set and reads again; readers never need the lock. Index folders written
before this layout (no sizes in meta.json) still load, and the hidden
``.NAME.bak-*``/``.NAME.tmp-*`` folders an older mclnet left when interrupted
are put back in place on the next open.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Sequence

import faiss
import numpy as np

from mclnet_cli.atomic import atomic_write, atomic_write_text, fsync_dir, storage_error
from mclnet_cli.config import IndexKind, names
from mclnet_cli.data.records import parse_jsonl
from mclnet_cli.errors import IndexStoreError, LockedError
from mclnet_cli.types import FEATURES
from mclnet_cli.index import ondisk
from mclnet_cli.index.autotune import apply_parameters, auto_index
from mclnet_cli.index.reduction import REDUCTION_FILE, Reduction, ReductionMismatch, sample_rows, train_reduction
from mclnet_cli.locks import LOCK_FILE, folder_lock

FORMAT = "mclnet-index/1"
INDEX_FILE = "index.faiss"
RECORDS_FILE = "records.jsonl"
META_FILE = "meta.json"
JOURNAL_FILE = ".swap.json"
STAGING_PREFIX = ".staging-"
OWN_HIDDEN = (LOCK_FILE, JOURNAL_FILE, ondisk.BUILD_DIR)  # hidden entries of an index folder that do not make it "not empty"
READ_ATTEMPTS = 50  # a reader racing a writer's swap reads again, this many times at most
READ_RETRY_S = 0.1
MMAP_AUTO_BYTES = 1 << 30  # load(mmap=None) maps index files at least this large instead of reading them
# FAISS maps IVF inverted lists with IO_FLAG_MMAP and flat code arrays (flat, HNSW storage) with
# IO_FLAG_MMAP_IFC; the two cannot be combined on one read.
MMAP_FLAGS = {"ivf": faiss.IO_FLAG_MMAP, "ivfpq": faiss.IO_FLAG_MMAP}
MMAP_FLAGS_DEFAULT = faiss.IO_FLAG_MMAP_IFC
BUILD_KINDS = names(IndexKind)  # what `index --kind` takes
KINDS = tuple(k for k in BUILD_KINDS if k != "auto")  # what an index is (auto picks one of these)
METRIC = "inner_product"

# FAISS k-means wants at least this many training points per centroid.
MIN_POINTS_PER_CENTROID = 39
MIN_NLIST = 16
PQ_CODEBOOK = 256  # 8-bit product-quantiser codebooks
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
TRAIN_POINTS_PER_CENTROID = 64  # k-means sample size per cell (keeps training time bounded)


@dataclass(frozen=True)
class IndexRecord:
    """One indexed image: its path, the stream that embedded it, and pid/cam when known."""

    path: str
    modality: str | None = None
    pid: int | None = None
    cam: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "modality": self.modality, "pid": self.pid, "cam": self.cam}

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> "IndexRecord":
        pid, cam = row.get("pid"), row.get("cam")
        return cls(
            str(row["path"]),
            None if row.get("modality") is None else str(row["modality"]),
            None if pid is None else int(pid),
            None if cam is None else int(cam),
        )


@dataclass(frozen=True)
class Hit:
    """One search result: 1-based rank, cosine score and the gallery record."""

    rank: int
    score: float
    path: str
    pid: int | None
    cam: int | None
    modality: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "path": self.path, "score": self.score, "pid": self.pid, "cam": self.cam}


@dataclass(frozen=True)
class IndexPlan:
    """The kind actually built, its FAISS factory string and search parameters."""

    kind: str
    factory: str
    params: dict[str, int]
    notices: tuple[str, ...] = ()


def _largest_divisor_at_most(n: int, limit: int) -> int:
    for d in range(max(1, min(limit, n)), 0, -1):
        if n % d == 0:
            return d
    return 1


def plan_index(
    kind: str,
    count: int,
    dim: int,
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    hnsw_m: int | None = None,
    pq_m: int | None = None,
) -> IndexPlan:
    """Choose parameters for ``kind`` from the gallery size; fall back when it cannot be trained.

    IVF: ``nlist ~ 4 sqrt(N)``, at most ``N / 39`` (k-means needs ~39 points per
    cell), at least 16, else flat. ``nprobe`` defaults to ``nlist / 8`` (at least 16).
    IVF-PQ: ``pq_m`` sub-quantisers (the largest divisor of ``dim`` up to ``dim / 8``),
    8-bit codes, which need ``256 * 39`` training vectors, else plain IVF.
    HNSW: ``M = 32``, ``efConstruction = 80``, ``efSearch = 128``.
    """
    if kind not in KINDS:
        raise IndexStoreError(f"unknown index kind {kind!r}; choose from: {', '.join(KINDS)}")
    notices: list[str] = []
    if kind == "flat":
        return IndexPlan("flat", "Flat", {})
    if kind == "hnsw":
        m = int(hnsw_m or HNSW_M)
        return IndexPlan("hnsw", f"HNSW{m},Flat", {"hnsw_m": m, "ef_construction": HNSW_EF_CONSTRUCTION, "ef_search": HNSW_EF_SEARCH})
    if kind == "ivfpq":
        if count < PQ_CODEBOOK * MIN_POINTS_PER_CENTROID:
            notices.append(
                f"{count} vectors are too few to train ivfpq (needs {PQ_CODEBOOK * MIN_POINTS_PER_CENTROID}); using ivf"
            )
            kind = "ivf"
    max_nlist = count // MIN_POINTS_PER_CENTROID
    if nlist is None:
        nlist = min(int(round(4 * math.sqrt(max(count, 1)))), max_nlist)
    elif nlist > max_nlist:
        notices.append(f"nlist {nlist} needs {nlist * MIN_POINTS_PER_CENTROID} vectors; using {max_nlist}")
        nlist = max_nlist
    if nlist < MIN_NLIST:
        notices.append(
            f"{count} vectors are too few for {kind} (needs {MIN_NLIST * MIN_POINTS_PER_CENTROID}); "
            "using flat (exact search)"
        )
        return IndexPlan("flat", "Flat", {}, tuple(notices))
    probe = int(nprobe) if nprobe else max(16, nlist // 8)
    params = {"nlist": nlist, "nprobe": min(probe, nlist)}
    if kind == "ivf":
        return IndexPlan("ivf", f"IVF{nlist},Flat", params, tuple(notices))
    m = int(pq_m) if pq_m else _largest_divisor_at_most(dim, max(1, dim // 8))
    if dim % m != 0:
        raise IndexStoreError(f"pq_m {m} must divide the feature dimension {dim}")
    params["pq_m"] = m
    return IndexPlan("ivfpq", f"IVF{nlist},PQ{m}np", params, tuple(notices))  # np: no polysemous training (unused, slow)


#: rows per block when checking or normalising large feature matrices (bounds temporary memory)
_BLOCK_ROWS = 65_536


def _as_matrix(features: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    """``features`` as a C-contiguous float32 matrix of unit rows (cosine scores).

    The caller's array is never modified. A float32 array whose rows are already
    unit length (as every extractor here writes them) is used as it is: at 10^6 x
    2,048 a copy would be another 8 GB. Checks run over row blocks, so no
    temporary as large as the matrix is made.
    """
    array = np.asarray(features, dtype=np.float32)
    if array.ndim != 2:
        raise IndexStoreError(f"{what}: expected a 2-D array [N, D] of features, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise IndexStoreError(f"{what}: features have dimension {array.shape[1]}, the index has {dim}")
    unit = True
    for start in range(0, array.shape[0], _BLOCK_ROWS):
        block = array[start : start + _BLOCK_ROWS]
        if not np.isfinite(block).all():
            raise IndexStoreError(f"{what}: features contain NaN or infinite values")
        if unit:
            norms = np.einsum("ij,ij->i", block, block)
            unit = bool(np.all(np.abs(norms - 1.0) <= 1e-5))
    if unit and array.flags.c_contiguous:
        return array
    if np.may_share_memory(array, features) or not array.flags.c_contiguous:
        array = np.array(array, dtype=np.float32, order="C", copy=True)  # asarray made no copy of its own
    faiss.normalize_L2(array)  # scores are cosine similarities whatever the caller passed
    return array


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_index_dir(directory: Path | str) -> bool:
    """True when ``directory`` holds an mclnet gallery index (its meta.json, or a committed swap to finish)."""
    directory = Path(directory)
    return (directory / META_FILE).is_file() or (directory / JOURNAL_FILE).is_file()


def _own_entry(name: str) -> bool:
    return (
        name in OWN_HIDDEN or name.startswith(STAGING_PREFIX) or (name.startswith(".") and name.endswith(".tmp"))
        or (name.startswith(ondisk.LISTS_PREFIX) and name.endswith(ondisk.LISTS_SUFFIX))  # a merge not yet committed
    )


def check_target(directory: Path | str) -> Path:
    """Refuse an ``--out`` that is a file or a non-empty folder that is not an index (never clobber it)."""
    directory = Path(directory)
    recover_legacy(directory)
    if directory.exists():
        if not directory.is_dir():
            raise IndexStoreError(f"{directory} exists and is not a folder; choose another index folder")
        if not is_index_dir(directory) and any(not _own_entry(p.name) for p in directory.iterdir()):
            raise IndexStoreError(
                f"{directory} exists and is not an mclnet index (no {META_FILE}); choose an empty or new folder"
            )
    return directory


def writer_lock(directory: Path | str, on_wait: Any = None, *, create: bool = True) -> Any:
    """The index folder's writer lock (a context manager); a second writer waits, calling ``on_wait(message)``.

    ``create=False``: a missing ``directory`` raises :class:`FileNotFoundError` instead of being made.
    """
    return folder_lock(directory, what="index writer", wait=True, on_wait=on_wait, create=create)


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in (INDEX_FILE, RECORDS_FILE, META_FILE))


def recover_legacy(directory: Path | str) -> Path | None:
    """Put back an index an older mclnet left only in hidden ``.NAME.tmp-*``/``.NAME.bak-*`` folders.

    That version swapped folders with two renames; a crash between them left no
    ``directory``. The complete new folder (``tmp``) wins over the old one
    (``bak``); the other leftovers are removed. Returns the folder put back.
    """
    directory = Path(directory)
    parent = directory.parent
    if directory.exists() or not parent.is_dir():
        return None
    fresh = sorted((p for p in parent.glob(f".{directory.name}.tmp-*") if p.is_dir() and _complete(p)),
                   key=lambda p: p.stat().st_mtime)  # fmt: skip
    old = sorted((p for p in parent.glob(f".{directory.name}.bak-*") if p.is_dir() and _complete(p)),
                 key=lambda p: p.stat().st_mtime)  # fmt: skip
    chosen = (fresh or old or [None])[-1]
    if chosen is None:
        return None
    try:
        os.rename(chosen, directory)
    except OSError:  # another process put one back first
        return None
    for leftover in list(parent.glob(f".{directory.name}.tmp-*")) + list(parent.glob(f".{directory.name}.bak-*")):
        shutil.rmtree(leftover, ignore_errors=True)
    return directory


def _finish_swap(directory: Path) -> None:
    """Roll a committed swap forward (journal present) and drop uncommitted staging folders. Needs the lock."""
    journal = directory / JOURNAL_FILE
    if journal.is_file():
        try:
            staging_name = str(json.loads(journal.read_text(encoding="utf-8"))["staging"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexStoreError(f"{journal}: unreadable swap journal ({exc}); remove it and rebuild the index") from exc
        staging = directory / Path(staging_name).name
        if staging.is_dir():
            for name in (INDEX_FILE, RECORDS_FILE, REDUCTION_FILE, META_FILE):  # meta.json last: it commits the set
                source = staging / name
                if source.is_file():
                    os.replace(source, directory / name)
            fsync_dir(directory)
        journal.unlink(missing_ok=True)
        fsync_dir(directory)
        _remove_stale_files(directory)  # only after a commit: a writer may have merged lists it has not saved yet
    for leftover in directory.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    for name in (INDEX_FILE, RECORDS_FILE, REDUCTION_FILE, META_FILE):
        for orphan in directory.glob(f".{name}.*.tmp"):
            orphan.unlink(missing_ok=True)


def _remove_stale_files(directory: Path) -> None:
    """Lists files and a reduction the live meta.json does not use (earlier saves, killed writers). Needs the lock."""
    try:
        meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no readable live index: nothing can be told apart, keep everything
    if not isinstance(meta, dict):
        return
    block = meta.get("ondisk")
    ondisk.remove_unreferenced(directory, str(block.get("lists")) if isinstance(block, dict) else None)
    if not meta.get("reduction"):
        (directory / REDUCTION_FILE).unlink(missing_ok=True)


def writer_active(directory: Path | str) -> bool:
    """True while some process holds the writer lock of ``directory`` (checked without taking it)."""
    path = Path(directory) / LOCK_FILE
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return False
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except (OSError, ImportError):
        return False
    finally:
        os.close(fd)
    return False


def recover(directory: Path | str, *, wait: bool = False) -> bool:
    """Finish or roll back an interrupted swap in ``directory`` if no writer is at work; True when done.

    With ``wait=False`` (readers) a live writer makes this return False at once.
    """
    directory = Path(directory)
    try:
        with folder_lock(directory, what="index writer", wait=wait):
            _finish_swap(directory)
    except LockedError:
        return False
    except OSError:  # a read-only index folder or filesystem: nothing a reader may fix
        return False
    return True


def _tune(index: faiss.Index, kind: str, params: dict[str, int], top_k: int = 0) -> None:
    if kind in ("ivf", "ivfpq"):
        apply_parameters(index, params)  # nprobe, and the quantiser's efSearch / refine factor of auto indices
    elif kind == "hnsw":
        hnsw_index = faiss.downcast_index(index)
        hnsw_index.hnsw.efSearch = max(int(params.get("ef_search", HNSW_EF_SEARCH)), top_k)


def _layers(index: faiss.Index) -> list[Any]:
    """``index`` and the indices it wraps (a pre-transform such as OPQ, a refine stage), outermost first."""
    layers = [faiss.downcast_index(index)]
    while True:
        top = layers[-1]
        if isinstance(top, faiss.IndexPreTransform):
            layers.append(faiss.downcast_index(top.index))
        elif isinstance(top, faiss.IndexRefine):
            layers.append(faiss.downcast_index(top.base_index))
        else:
            return layers


def _remove_rows(index: faiss.Index, keep: np.ndarray) -> None:
    """Drop the rows of ``index`` where ``keep`` is False, in place; the others become rows 0..n-1, in order."""
    removed = np.flatnonzero(~keep).astype(np.int64)
    layers = _layers(index)
    inner = layers[-1]
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        _compact_inverted_lists(ivf, keep)
    elif isinstance(inner, faiss.IndexHNSW):  # FAISS cannot take nodes out of the graph: rebuild it
        vectors = _kept_vectors(inner, keep)
        inner.reset()
        if vectors.shape[0]:
            inner.add(vectors)
    else:  # flat codes: FAISS removes and renumbers
        inner.remove_ids(faiss.IDSelectorBatch(removed.size, faiss.swig_ptr(removed)))
    for layer in layers:
        if isinstance(layer, faiss.IndexRefine):
            layer.refine_index.remove_ids(faiss.IDSelectorBatch(removed.size, faiss.swig_ptr(removed)))
        layer.ntotal = int(np.count_nonzero(keep))


def _kept_vectors(index: faiss.Index, keep: np.ndarray) -> np.ndarray:
    """The stored vectors of the rows ``keep`` marks, read back in row blocks."""
    parts = [np.zeros((0, index.d), dtype=np.float32)]
    for start in range(0, int(index.ntotal), _BLOCK_ROWS):
        mask = keep[start : start + _BLOCK_ROWS]
        if mask.any():
            parts.append(index.reconstruct_n(start, mask.size)[mask])
    return np.ascontiguousarray(np.concatenate(parts))


def _compact_inverted_lists(ivf: Any, keep: np.ndarray) -> None:
    """Take the removed rows out of every inverted list of ``ivf`` and renumber the rest; codes stay as stored."""
    map_type = ivf.direct_map.type
    if map_type != faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)
    new_ids = (np.cumsum(keep) - 1).astype(np.int64)
    lists, code_size = ivf.invlists, ivf.invlists.code_size
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size == 0:
            continue
        ids = faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy()
        if keep[ids].all() and np.array_equal(new_ids[ids], ids):
            continue  # nothing removed here and no row renumbered
        codes = faiss.rev_swig_ptr(lists.get_codes(list_no), size * code_size).copy().reshape(size, code_size)
        kept_ids = np.ascontiguousarray(new_ids[ids[keep[ids]]])  # named: FAISS reads them through raw pointers
        kept_codes = np.ascontiguousarray(codes[keep[ids]])
        lists.resize(list_no, 0)
        if kept_ids.size:
            lists.add_entries(list_no, kept_ids.size, faiss.swig_ptr(kept_ids), faiss.swig_ptr(kept_codes))
    ivf.ntotal = int(np.count_nonzero(keep))
    if map_type != faiss.DirectMap.NoMap:
        ivf.set_direct_map_type(map_type)


@dataclass
class GalleryIndex:
    """Embeddings of gallery images in a FAISS index plus one :class:`IndexRecord` per row."""

    index: faiss.Index
    records: list[IndexRecord]
    kind: str
    factory: str
    params: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)  # builder metadata saved in meta.json
    trained_on: int = 0
    created: str = field(default_factory=_now)
    notices: list[str] = field(default_factory=list)  # parameter fallbacks of the last build/add (not saved)
    mapped: bool = False  # opened memory-mapped (read-only): searchable, not extendable
    reduction: Reduction | None = None  # --dim: PCA applied to every feature before it meets the index
    ondisk: ondisk.OnDisk | None = None  # IVF lists in a lists-*.ivfdata file (chunked builds)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(
        cls,
        features: np.ndarray,
        records: Sequence[IndexRecord],
        kind: str = "flat",
        *,
        nlist: int | None = None,
        nprobe: int | None = None,
        hnsw_m: int | None = None,
        pq_m: int | None = None,
        extra: dict[str, Any] | None = None,
        recall: float = 0.95,
        memory_bytes: int | None = None,
        reduce_dim: int | None = None,
        whiten: bool = False,
    ) -> "GalleryIndex":
        """Index ``features`` [N, D] (re-normalised) with ``records`` in the same order.

        ``kind="auto"`` chooses the structure within ``memory_bytes`` and tunes its
        search so that recall@10 against exact search reaches ``recall`` (see
        :mod:`mclnet_cli.index.autotune`); the outcome is kept under ``extra["auto"]``.
        ``reduce_dim``: train a PCA to that many dimensions (``whiten``: unit variance
        per direction) on a sample of ``features`` and index the reduced, re-normalised
        features (see :mod:`mclnet_cli.index.reduction`).
        """
        matrix, records = _build_rows(features, records)
        reduction = None
        if reduce_dim is not None:
            reduction = train_reduction(matrix[sample_rows(matrix.shape[0])], reduce_dim, whiten=whiten)
            matrix = reduction.apply(matrix)
        if kind == "auto":
            if not 0 < recall <= 1:
                raise IndexStoreError(f"recall target must be in (0, 1], got {recall}")
            index, choice = auto_index(matrix, recall, memory_bytes)
            auto_extra = {**dict(extra or {}), "auto": choice.meta()}
            gallery = cls(index, records, choice.kind, choice.factory, dict(choice.params), auto_extra, matrix.shape[0])
            gallery.notices, gallery.reduction = list(choice.notices), reduction
            return gallery
        plan = plan_index(kind, matrix.shape[0], matrix.shape[1], nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, pq_m=pq_m)
        index = _planned_index(plan, matrix)
        gallery = cls(index, records, plan.kind, plan.factory, dict(plan.params), dict(extra or {}), matrix.shape[0])
        gallery.notices, gallery.reduction = list(plan.notices), reduction
        _tune(gallery.index, gallery.kind, gallery.params)
        return gallery

    def add(self, features: np.ndarray, records: Sequence[IndexRecord]) -> int:
        """Append rows whose path is not indexed yet (trained cells are kept); returns how many were added."""
        if self.mapped:
            raise IndexStoreError("add: this index was opened memory-mapped (read-only); load it with mmap=False to add")
        matrix = self.prepare(features, "add")
        records = list(records)
        if matrix.shape[0] != len(records):
            raise IndexStoreError(f"add: {matrix.shape[0]} feature rows but {len(records)} records")
        seen = self.paths()
        keep: list[int] = []
        for i, record in enumerate(records):
            if record.path not in seen:
                seen.add(record.path)
                keep.append(i)
        self.notices = []
        if not keep:
            return 0
        if self.ondisk is not None:
            self.ondisk.stage(self.index, matrix[keep])  # merged into a new lists file by save()
        else:
            self.index.add(np.ascontiguousarray(matrix[keep]))
        self.records.extend(records[i] for i in keep)
        if self.kind in ("ivf", "ivfpq") and len(self.records) > 4 * max(self.trained_on, 1):
            self.notices.append(
                f"the {self.kind} cells were trained on {self.trained_on} vectors and the index now holds "
                f"{len(self.records)}; rebuild without --add for balanced cells"
            )
        return len(keep)

    def remove(self, paths: Iterable[str]) -> int:
        """Drop the rows whose recorded path is in ``paths`` (see the module doc); returns how many went."""
        if self.mapped:
            raise IndexStoreError(
                "remove: this index was opened memory-mapped (read-only); load it with mmap=False to remove rows"
            )
        if self.ondisk is not None:
            raise IndexStoreError("remove: the index keeps its lists on disk (--chunk); rebuild it without those images")
        gone = set(paths)
        keep = np.fromiter((r.path not in gone for r in self.records), dtype=bool, count=len(self.records))
        removed = int(keep.size - np.count_nonzero(keep))
        self.notices = []
        if removed:
            _remove_rows(self.index, keep)
            self.records = [r for r, kept in zip(self.records, keep) if kept]
            _tune(self.index, self.kind, self.params)
        return removed

    # ------------------------------------------------------------------ querying

    @property
    def dimension(self) -> int:
        """Dimension of the indexed vectors (the reduced one under ``--dim``)."""
        return int(self.index.d)

    @property
    def feature_dimension(self) -> int:
        """Dimension of the features :meth:`search` and :meth:`add` take (the model's, before any reduction)."""
        return self.reduction.input_dimension if self.reduction is not None else self.dimension

    def prepare(self, features: np.ndarray, what: str = "search") -> np.ndarray:
        """``features`` [N, feature_dimension] as the index holds them: unit rows, reduced when it has a reduction."""
        matrix = _as_matrix(features, what, self.feature_dimension)
        return matrix if self.reduction is None else self.reduction.apply(matrix)

    def __len__(self) -> int:
        return int(self.index.ntotal) + (self.ondisk.pending_count if self.ondisk is not None else 0)

    def paths(self) -> set[str]:
        """The set of indexed image paths (as recorded)."""
        return {r.path for r in self.records}

    def search(self, query_features: np.ndarray, top_k: int = 10) -> list[list[Hit]]:
        """Top-``top_k`` gallery records per query row, best (highest cosine) first."""
        if top_k < 1:
            raise IndexStoreError(f"top_k must be at least 1, got {top_k}")
        queries = self.prepare(query_features, "search")
        k = min(int(top_k), len(self))
        if queries.shape[0] == 0 or k == 0:
            return [[] for _ in range(queries.shape[0])]
        _tune(self.index, self.kind, self.params, k)
        if self.ondisk is not None:
            scores, rows = self.ondisk.search(self.index, queries, k)
        else:
            scores, rows = self.index.search(queries, k)
        results: list[list[Hit]] = []
        for score_row, id_row in zip(scores, rows):
            hits: list[Hit] = []
            for score, row in zip(score_row, id_row):
                if row < 0:  # approximate kinds may find fewer than k
                    continue
                record = self.records[int(row)]
                hits.append(Hit(len(hits) + 1, float(score), record.path, record.pid, record.cam, record.modality))
            results.append(hits)
        return results

    # ------------------------------------------------------------------ storage

    def meta(self) -> dict[str, Any]:
        """The ``meta.json`` document."""
        from mclnet_cli import __version__

        return {
            "format": FORMAT,
            "mclnet_version": __version__,
            "dimension": self.dimension,
            "metric": METRIC,
            "kind": self.kind,
            "factory": self.factory,
            "params": dict(self.params),
            "count": len(self),
            "trained_on": self.trained_on,
            "created": self.created,
            "updated": _now(),
            **({"reduction": self.reduction.meta()} if self.reduction is not None else {}),
            **({"ondisk": self.ondisk.meta()} if self.ondisk is not None else {}),
            **self.extra,
        }

    def _write_index(self, handle: BinaryIO) -> None:
        """Stream the FAISS index into ``handle`` (1 MiB chunks; no second copy in memory)."""
        faiss.write_index(self.index, faiss.PyCallbackIOWriter(handle.write))

    def save(self, directory: Path | str, *, locked: bool = False) -> Path:
        """Write the index into ``directory`` crash-safely (see the module doc); takes the writer lock.

        ``locked=True``: the caller already holds :func:`writer_lock` of ``directory``.
        """
        directory = check_target(Path(directory))
        if not locked:
            with writer_lock(directory):
                return self.save(directory, locked=True)
        directory.mkdir(parents=True, exist_ok=True)
        _finish_swap(directory)  # a committed swap first; then leftovers of killed writers go
        for legacy in [*directory.parent.glob(f".{directory.name}.tmp-*"), *directory.parent.glob(f".{directory.name}.bak-*")]:
            shutil.rmtree(legacy, ignore_errors=True)  # an older mclnet's, killed while the live index stayed in place
        staging = directory / f"{STAGING_PREFIX}{uuid.uuid4().hex[:12]}"
        try:
            staging.mkdir()
            self._write_files(staging)
            atomic_write_text(directory / JOURNAL_FILE, json.dumps({"staging": staging.name}) + "\n")  # commit
            fsync_dir(directory)
        except BaseException as exc:
            shutil.rmtree(staging, ignore_errors=True)
            translated = storage_error(exc, directory)
            if translated is not None:
                raise translated from exc
            raise
        _finish_swap(directory)
        return directory

    def _write_files(self, folder: Path) -> None:
        if self.ondisk is not None:  # staged rows, or lists kept elsewhere: a new lists file beside the staging folder
            self.index = self.ondisk.commit(self.index, folder.parent)
        if self.reduction is not None:
            self.reduction.save(folder)
        atomic_write(folder / INDEX_FILE, self._write_index)
        atomic_write_text(folder / RECORDS_FILE, "".join(json.dumps(r.to_json()) + "\n" for r in self.records))
        meta = self.meta()
        meta["files"] = {name: (folder / name).stat().st_size for name in (INDEX_FILE, RECORDS_FILE)}
        atomic_write_text(folder / META_FILE, json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, directory: Path | str, *, mmap: bool | None = False) -> "GalleryIndex":
        """Read an index folder written by :meth:`save`; clear errors for anything missing or inconsistent.

        ``mmap=True`` maps the FAISS file instead of reading it (pages come from disk
        as searches touch them; the gallery is then read-only), ``None`` maps files of
        at least :data:`MMAP_AUTO_BYTES`, ``False`` (default) reads it into memory.
        A mapped file stays valid when a writer swaps in a new one (the old file
        lives on until unmapped). Never needs the lock: a swap in progress is read
        again, an interrupted one is finished first when no writer holds the lock.
        """
        directory = Path(directory)
        recover_legacy(directory)
        if not directory.is_dir():
            raise IndexStoreError(f"index not found: {directory}")
        idle_mismatches = 0
        for _ in range(READ_ATTEMPTS):
            if (directory / JOURNAL_FILE).is_file() and not recover(directory):
                time.sleep(READ_RETRY_S)  # a writer is swapping right now
                continue
            try:
                return cls._load_once(directory, mmap)
            except _Torn as torn:
                if writer_active(directory):
                    time.sleep(READ_RETRY_S)
                    continue
                idle_mismatches += 1  # no writer: read once more, then it is damage, not a race
                if idle_mismatches >= 2:
                    raise IndexStoreError(str(torn)) from None
        raise IndexStoreError(f"{directory} is being rewritten by another process right now; try again in a moment")

    @classmethod
    def _load_once(cls, directory: Path, mmap: bool | None = False) -> "GalleryIndex":
        meta_path, index_path, records_path = directory / META_FILE, directory / INDEX_FILE, directory / RECORDS_FILE
        for path in (meta_path, index_path, records_path):
            if not path.is_file():
                raise IndexStoreError(f"{directory} is not an mclnet index: {path.name} is missing")
        meta = _parse_meta(meta_path)
        sizes = meta.get("files")
        mixed = isinstance(sizes, dict) and (
            index_path.stat().st_size != sizes.get(INDEX_FILE) or records_path.stat().st_size != sizes.get(RECORDS_FILE)
        )  # files of two different saves (a writer swapped them while we read), or edited by hand
        if mmap is None:
            mmap = index_path.stat().st_size >= MMAP_AUTO_BYTES
        index, records = _read_index_and_records(directory, meta, mmap, mixed)
        _validate_meta(meta_path, meta, index)
        reduction = _read_reduction(directory, meta, index)
        gallery = cls(
            index=index,
            records=records,
            kind=str(meta.get("kind", "flat")),
            factory=str(meta.get("factory", "")),
            params={str(k): int(v) for k, v in dict(meta.get("params") or {}).items()},
            extra={k: v for k, v in meta.items() if k not in _STRUCTURE_KEYS},
            trained_on=int(meta.get("trained_on", index.ntotal)),
            created=str(meta.get("created", _now())),
            mapped=bool(mmap),
            reduction=reduction,
            ondisk=ondisk.OnDisk.of(index) if ondisk.is_ondisk(index) else None,
        )
        _tune(gallery.index, gallery.kind, gallery.params)
        return gallery


class _Torn(Exception):
    """The files read belong to two different saves (a swap raced the read)."""


# meta.json keys that describe the index itself; every other key is the builder's (GalleryIndex.extra)
_STRUCTURE_KEYS = frozenset({
    "format", "mclnet_version", "dimension", "metric", "kind", "factory", "params", "count",
    "trained_on", "created", "updated", "files", "reduction", "ondisk",
})  # fmt: skip


def _build_rows(features: np.ndarray, records: Sequence[IndexRecord]) -> tuple[np.ndarray, list[IndexRecord]]:
    """:meth:`GalleryIndex.build`'s input checked: the unit-row matrix and one record per row, no path twice."""
    matrix = _as_matrix(features, "build")
    records = list(records)
    if matrix.shape[0] != len(records):
        raise IndexStoreError(f"build: {matrix.shape[0]} feature rows but {len(records)} records")
    if matrix.shape[0] == 0:
        raise IndexStoreError("build: no features to index")
    paths = [r.path for r in records]
    if len(set(paths)) != len(paths):
        raise IndexStoreError("build: the same image path appears twice in the records")
    return matrix, records


def _planned_index(plan: IndexPlan, matrix: np.ndarray) -> faiss.Index:
    """A FAISS index of ``plan``'s structure, trained on ``matrix`` (IVF kinds) and holding its rows."""
    index = faiss.index_factory(matrix.shape[1], plan.factory, faiss.METRIC_INNER_PRODUCT)
    if plan.kind == "hnsw":
        faiss.downcast_index(index).hnsw.efConstruction = int(plan.params["ef_construction"])
    if plan.kind in ("ivf", "ivfpq"):
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.spherical = True  # unit vectors: centroids on the sphere
        ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_CENTROID
        index.train(matrix)
    index.add(matrix)
    return index


def _read_index_and_records(
    directory: Path, meta: dict[str, Any], mmap: bool, mixed: bool
) -> tuple[faiss.Index, list[IndexRecord]]:
    """The FAISS index (mapped when ``mmap``) and the records of ``directory``, one per row.

    ``mixed``: the files' sizes are not the ones meta.json records; any error reading them is then a
    torn read (:class:`_Torn`: read again), and reading them whole still refuses them.
    """
    index_path = directory / INDEX_FILE
    try:
        try:
            flags = MMAP_FLAGS.get(str(meta.get("kind")), MMAP_FLAGS_DEFAULT) | faiss.IO_FLAG_READ_ONLY if mmap else 0
            if "ondisk" in meta:  # lists in their own file, always mapped read-only
                index = ondisk.read_index(directory, meta["ondisk"] if isinstance(meta["ondisk"], dict) else {})
            else:
                index = faiss.read_index(str(index_path), flags)
        except ondisk.StaleLists as exc:
            raise _Torn(str(exc)) from exc
        except RuntimeError as exc:
            raise IndexStoreError(f"{index_path}: cannot read the FAISS index") from exc
        records = _read_records(directory / RECORDS_FILE)
        if len(records) != index.ntotal:
            raise IndexStoreError(f"{directory}: {RECORDS_FILE} has {len(records)} rows but the index holds {index.ntotal}")
        if mixed:
            raise IndexStoreError(
                f"{directory}: {INDEX_FILE}/{RECORDS_FILE} are not the files {META_FILE} describes "
                "(changed outside mclnet?); rebuild the index"
            )
    except IndexStoreError as exc:
        if mixed:
            raise _Torn(str(exc)) from exc
        raise
    return index, records


def _read_reduction(directory: Path, meta: dict[str, Any], index: faiss.Index) -> Reduction | None:
    """The ``--dim`` reduction meta.json names (checked to reduce to the index's dimension), or None."""
    try:
        reduction = Reduction.load(directory, meta["reduction"]) if meta.get("reduction") else None
    except ReductionMismatch as exc:  # replaced by a save racing this read, or damaged: read again, then say so
        raise _Torn(str(exc)) from exc
    if reduction is not None and reduction.dimension != index.d:
        raise IndexStoreError(f"{directory}: {REDUCTION_FILE} reduces to {reduction.dimension}-d, the index holds {index.d}-d")
    return reduction


def _parse_meta(meta_path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexStoreError(f"{meta_path}: not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise IndexStoreError(f"{meta_path}: not an mclnet index (expected format {FORMAT!r})")
    return meta


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _faiss_kind(index: faiss.Index) -> str:
    if faiss.try_extract_index_ivf(index) is not None:
        return "ivf"
    name = type(faiss.downcast_index(index)).__name__
    if name.startswith("IndexHNSW"):
        return "hnsw"
    if name.startswith("IndexFlat"):
        return "flat"
    return name


def _validate_meta(meta_path: Path, meta: dict[str, Any], index: faiss.Index) -> None:
    """Every field the loader uses, checked for type and against the FAISS index: one line per problem."""

    def bad(field_name: str, why: str) -> IndexStoreError:
        return IndexStoreError(f"{meta_path}: {field_name} {why}; rebuild the index (mclnet index without --add)")

    for name in ("dimension", "count", "trained_on"):
        if name in meta and not (_is_int(meta[name]) and meta[name] >= 0):
            raise bad(name, f"must be a non-negative integer, got {meta[name]!r}")
    if int(meta.get("dimension", index.d)) != index.d:
        raise IndexStoreError(f"{meta_path.parent}: meta.json says dimension {meta.get('dimension')}, the index has {index.d}")
    kind = meta.get("kind", "flat")
    if kind not in KINDS:
        raise bad("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
    actual = _faiss_kind(index)
    if (actual == "ivf" and kind not in ("ivf", "ivfpq")) or (actual != "ivf" and kind != actual):
        raise bad("kind", f"says {kind!r} but index.faiss holds a {actual} index")
    params = meta.get("params") or {}
    if not isinstance(params, dict):
        raise bad("params", f"must be an object, got {params!r}")
    for key, value in params.items():
        if not (_is_int(value) and value > 0):
            raise bad(f"params.{key}", f"must be a positive integer, got {value!r}")
    size = meta.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and 0 < v <= 4096 for v in size)):
        raise bad("image_size", f"must be [height, width] (positive integers), got {size!r}")
    for name in ("modality", "feature", "resize", "factory"):
        if name in meta and not isinstance(meta[name], str):
            raise bad(name, f"must be a string, got {meta[name]!r}")
    if "feature" in meta and meta["feature"] not in FEATURES:
        raise bad("feature", f"must be one of {', '.join(FEATURES)}, got {meta['feature']!r}")
    checkpoint = meta.get("checkpoint")
    if checkpoint is not None and not (
        isinstance(checkpoint, dict) and all(isinstance(checkpoint.get(k, ""), str) for k in ("path", "fingerprint"))
    ):
        raise bad("checkpoint", f"must be {{path, fingerprint}} strings, got {checkpoint!r}")


def _read_records(path: Path) -> list[IndexRecord]:
    with path.open(encoding="utf-8") as handle:
        return parse_jsonl(handle, path, IndexRecord.from_json, IndexStoreError, "record")


def read_meta(directory: Path | str) -> dict[str, Any]:
    """Only ``meta.json`` of an index (cheap: no FAISS read); finishes an interrupted swap first."""
    directory = Path(directory)
    recover_legacy(directory)
    if (directory / JOURNAL_FILE).is_file():
        recover(directory)
    path = directory / META_FILE
    if not path.is_file():
        raise IndexStoreError(f"index not found: {directory} (no {META_FILE})")
    return _parse_meta(path)


def records_for(paths: Iterable[str], modality: str | None) -> list[IndexRecord]:
    """Records for image paths, pid/cam filled in from their dataset layout when it is known."""
    from mclnet_cli.data.sources.layout import identify

    out = []
    for path in paths:
        found = identify(path)
        out.append(IndexRecord(path, modality, found.pid if found else None, found.cam if found else None))
    return out
