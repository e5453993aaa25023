"""A gallery of embeddings in a FAISS index, with a JSON sidecar describing every row.

On disk a gallery index is a folder of three files:

- ``index.faiss``: the FAISS index (inner product over L2-normalised features,
  so scores are cosine similarities); loadable with plain ``faiss.read_index``.
- ``records.jsonl``: one line per indexed image, in index row order: path,
  modality, pid and cam (``null`` when the path follows no known layout).
- ``meta.json``: dimension, metric, kind and FAISS factory string, search
  parameters, counts, timestamps, plus whatever the builder adds (checkpoint
  path and fingerprint, modality, image size).

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

:meth:`GalleryIndex.save` is atomic: everything is written to a temporary
folder next to the target, then swapped in with two renames, so an interrupted
save leaves the previous index intact.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Sequence

import faiss
import numpy as np

from mclnet_cli.atomic import atomic_write, atomic_write_text
from mclnet_cli.errors import IndexStoreError

FORMAT = "mclnet-index/1"
INDEX_FILE = "index.faiss"
RECORDS_FILE = "records.jsonl"
META_FILE = "meta.json"
KINDS = ("flat", "ivf", "hnsw", "ivfpq")
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


def _as_matrix(features: np.ndarray, what: str, dim: int | None = None) -> np.ndarray:
    array = np.asarray(features, dtype=np.float32)
    if array.ndim != 2:
        raise IndexStoreError(f"{what}: expected a 2-D array [N, D] of features, got shape {array.shape}")
    if dim is not None and array.shape[1] != dim:
        raise IndexStoreError(f"{what}: features have dimension {array.shape[1]}, the index has {dim}")
    if not np.isfinite(array).all():
        raise IndexStoreError(f"{what}: features contain NaN or infinite values")
    array = np.ascontiguousarray(array.copy())
    faiss.normalize_L2(array)  # scores are cosine similarities whatever the caller passed
    return array


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def is_index_dir(directory: Path) -> bool:
    """True when ``directory`` holds an mclnet gallery index (its meta.json)."""
    return (Path(directory) / META_FILE).is_file()


def check_target(directory: Path | str) -> Path:
    """Refuse an ``--out`` that is a file or a non-empty folder that is not an index (never clobber it)."""
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise IndexStoreError(f"{directory} exists and is not a folder; choose another index folder")
        if not is_index_dir(directory) and any(directory.iterdir()):
            raise IndexStoreError(
                f"{directory} exists and is not an mclnet index (no {META_FILE}); choose an empty or new folder"
            )
    return directory


def _swap_into_place(new: Path, target: Path) -> None:
    """Rename ``new`` to ``target``; an old ``target`` is moved aside first and restored on failure."""
    if not target.exists():
        os.rename(new, target)
        return
    backup = target.parent / f".{target.name}.bak-{uuid.uuid4().hex[:8]}"
    os.rename(target, backup)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(backup, target)
        raise
    shutil.rmtree(backup, ignore_errors=True)


def _backups_of(directory: Path) -> list[Path]:
    parent = directory.parent
    if not parent.is_dir():
        return []
    return sorted(parent.glob(f".{directory.name}.bak-*"))


def _tune(index: faiss.Index, kind: str, params: dict[str, int], top_k: int = 0) -> None:
    if kind in ("ivf", "ivfpq") and "nprobe" in params:
        faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    elif kind == "hnsw":
        hnsw_index = faiss.downcast_index(index)
        hnsw_index.hnsw.efSearch = max(int(params.get("ef_search", HNSW_EF_SEARCH)), top_k)


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
    ) -> "GalleryIndex":
        """Index ``features`` [N, D] (re-normalised) with ``records`` in the same order."""
        matrix = _as_matrix(features, "build")
        records = list(records)
        if matrix.shape[0] != len(records):
            raise IndexStoreError(f"build: {matrix.shape[0]} feature rows but {len(records)} records")
        if matrix.shape[0] == 0:
            raise IndexStoreError("build: no features to index")
        paths = [r.path for r in records]
        if len(set(paths)) != len(paths):
            raise IndexStoreError("build: the same image path appears twice in the records")
        dim = matrix.shape[1]
        plan = plan_index(kind, matrix.shape[0], dim, nlist=nlist, nprobe=nprobe, hnsw_m=hnsw_m, pq_m=pq_m)
        index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        if plan.kind == "hnsw":
            faiss.downcast_index(index).hnsw.efConstruction = int(plan.params["ef_construction"])
        if plan.kind in ("ivf", "ivfpq"):
            ivf = faiss.extract_index_ivf(index)
            ivf.cp.spherical = True  # unit vectors: centroids on the sphere
            ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_CENTROID
            index.train(matrix)
        index.add(matrix)
        gallery = cls(index, records, plan.kind, plan.factory, dict(plan.params), dict(extra or {}), matrix.shape[0])
        gallery.notices = list(plan.notices)
        _tune(gallery.index, gallery.kind, gallery.params)
        return gallery

    def add(self, features: np.ndarray, records: Sequence[IndexRecord]) -> int:
        """Append rows whose path is not indexed yet (trained cells are kept); returns how many were added."""
        matrix = _as_matrix(features, "add", self.dimension)
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
        self.index.add(np.ascontiguousarray(matrix[keep]))
        self.records.extend(records[i] for i in keep)
        if self.kind in ("ivf", "ivfpq") and len(self.records) > 4 * max(self.trained_on, 1):
            self.notices.append(
                f"the {self.kind} cells were trained on {self.trained_on} vectors and the index now holds "
                f"{len(self.records)}; rebuild without --add for balanced cells"
            )
        return len(keep)

    # ------------------------------------------------------------------ querying

    @property
    def dimension(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def paths(self) -> set[str]:
        """The set of indexed image paths (as recorded)."""
        return {r.path for r in self.records}

    def search(self, query_features: np.ndarray, top_k: int = 10) -> list[list[Hit]]:
        """Top-``top_k`` gallery records per query row, best (highest cosine) first."""
        if top_k < 1:
            raise IndexStoreError(f"top_k must be at least 1, got {top_k}")
        queries = _as_matrix(query_features, "search", self.dimension)
        k = min(int(top_k), len(self))
        if queries.shape[0] == 0 or k == 0:
            return [[] for _ in range(queries.shape[0])]
        _tune(self.index, self.kind, self.params, k)
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
            **self.extra,
        }

    def _write_files(self, folder: Path) -> None:
        atomic_write(folder / INDEX_FILE, self._write_index)
        atomic_write_text(folder / RECORDS_FILE, "".join(json.dumps(r.to_json()) + "\n" for r in self.records))
        atomic_write_text(folder / META_FILE, json.dumps(self.meta(), indent=2) + "\n")

    def _write_index(self, handle: BinaryIO) -> None:
        """Stream the FAISS index into ``handle`` (1 MiB chunks; no second copy in memory)."""
        faiss.write_index(self.index, faiss.PyCallbackIOWriter(handle.write))

    def save(self, directory: Path | str) -> Path:
        """Write the three files to a temp folder beside ``directory``, then swap it into place."""
        directory = check_target(Path(directory))
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
        try:
            self._write_files(staging)
            _swap_into_place(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return directory

    @classmethod
    def load(cls, directory: Path | str) -> "GalleryIndex":
        """Read an index folder written by :meth:`save`; clear errors for anything missing or inconsistent."""
        directory = Path(directory)
        if not directory.is_dir():
            backups = _backups_of(directory)
            hint = f" (an interrupted write left {backups[-1]}; rename it to {directory.name})" if backups else ""
            raise IndexStoreError(f"index not found: {directory}{hint}")
        meta_path, index_path, records_path = directory / META_FILE, directory / INDEX_FILE, directory / RECORDS_FILE
        for path in (meta_path, index_path, records_path):
            if not path.is_file():
                raise IndexStoreError(f"{directory} is not an mclnet index: {path.name} is missing")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IndexStoreError(f"{meta_path}: not valid JSON ({exc})") from exc
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise IndexStoreError(f"{meta_path}: not an mclnet index (expected format {FORMAT!r})")
        try:
            index = faiss.read_index(str(index_path))
        except RuntimeError as exc:
            raise IndexStoreError(f"{index_path}: cannot read the FAISS index") from exc
        records = _read_records(records_path)
        if len(records) != index.ntotal:
            raise IndexStoreError(f"{directory}: {RECORDS_FILE} has {len(records)} rows but the index holds {index.ntotal}")
        if int(meta.get("dimension", index.d)) != index.d:
            raise IndexStoreError(f"{directory}: meta.json says dimension {meta.get('dimension')}, the index has {index.d}")
        known = {"format", "mclnet_version", "dimension", "metric", "kind", "factory", "params", "count",
                 "trained_on", "created", "updated"}  # fmt: skip
        gallery = cls(
            index=index,
            records=records,
            kind=str(meta.get("kind", "flat")),
            factory=str(meta.get("factory", "")),
            params={str(k): int(v) for k, v in dict(meta.get("params") or {}).items()},
            extra={k: v for k, v in meta.items() if k not in known},
            trained_on=int(meta.get("trained_on", index.ntotal)),
            created=str(meta.get("created", _now())),
        )
        _tune(gallery.index, gallery.kind, gallery.params)
        return gallery


def _read_records(path: Path) -> list[IndexRecord]:
    records: list[IndexRecord] = []
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                records.append(IndexRecord.from_json(json.loads(line)))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise IndexStoreError(f"{path}:{lineno}: malformed record ({exc})") from exc
    return records


def read_meta(directory: Path | str) -> dict[str, Any]:
    """Only ``meta.json`` of an index (cheap: no FAISS read)."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise IndexStoreError(f"index not found: {directory} (no {META_FILE})")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IndexStoreError(f"{path}: not valid JSON ({exc.msg})") from exc


def records_for(paths: Iterable[str], modality: str | None) -> list[IndexRecord]:
    """Records for image paths, pid/cam filled in from their dataset layout when it is known."""
    from mclnet_cli.index.layout import identify

    out = []
    for path in paths:
        found = identify(path)
        out.append(IndexRecord(path, modality, found.pid if found else None, found.cam if found else None))
    return out
