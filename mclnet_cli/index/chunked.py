"""Build an on-disk IVF index from chunks of features: memory bounded by the chunk, not the gallery.

1. :func:`plan_chunked` sizes the IVF for the whole gallery and a training sample.
2. :class:`ChunkedBuilder` trains once (the optional PCA reduction, then the coarse
   quantiser) on that sample and writes the trained, empty index to its work folder.
3. :meth:`ChunkedBuilder.add_chunk` adds one chunk to its own copy of the trained
   index and writes it as a shard file (row ids 0-based within the shard).
4. :meth:`ChunkedBuilder.merge` merges the shards, in order, into one lists file
   (:mod:`mclnet_cli.index.ondisk`); the rows come out in shard order.

:class:`ExactTopK` keeps, while the chunks stream by, the exact top-k neighbours of
a few hundred tuning queries, so :func:`tune_nprobe` can measure recall@10 of the
merged index against exact search without ever holding the gallery in memory.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import faiss
import numpy as np

from mclnet_cli.atomic import atomic_write, atomic_write_text
from mclnet_cli.errors import IndexStoreError
from mclnet_cli.index import ondisk
from mclnet_cli.index.reduction import Reduction, sample_rows, train_reduction

MIN_POINTS_PER_CENTROID = 39  # FAISS k-means wants this many training points per cell
PQ_TRAIN_MIN = 256 * MIN_POINTS_PER_CENTROID  # 8-bit PQ codebooks
TRAIN_POINTS_PER_CENTROID = 64
MIN_SAMPLE = 100_000  # training sample: max(chunk, this), never more than the gallery
RECALL_K = 10
TUNING_QUERIES = 300
TRAINED_FILE = "trained.faiss"
PLAN_FILE = "plan.json"
SELF_MATCH = 1.0 - 1e-5  # an exact neighbour this close is the query's own row


@dataclass(frozen=True)
class ChunkPlan:
    """The IVF to build: kind, FAISS factory, search parameters, sample size and notices."""

    kind: str
    factory: str
    params: dict[str, int]
    sample: int
    notices: tuple[str, ...] = ()


def sample_size(count: int, chunk: int) -> int:
    """Rows the reduction and quantiser train on: ``max(chunk, 100k)``, at most the gallery."""
    return min(count, max(chunk, MIN_SAMPLE))


def plan_chunked(
    kind: str, count: int, dim: int, sample: int, *, nlist: int | None = None, nprobe: int | None = None,
    pq_m: int | None = None,
) -> ChunkPlan:
    """IVF parameters for ``count`` rows trained on ``sample`` rows (``nlist ~ 4 sqrt(N)``, at most sample / 39).

    Unlike an in-memory build, a small gallery keeps an IVF (few cells, exact when
    ``nprobe = nlist``): the on-disk layout is what was asked for.
    """
    if kind not in ("ivf", "ivfpq"):
        raise IndexStoreError(f"--chunk builds an ivf or ivfpq index, not {kind}")
    notices: list[str] = []
    if kind == "ivfpq" and sample < PQ_TRAIN_MIN:
        notices.append(f"a sample of {sample} vectors is too small to train ivfpq (needs {PQ_TRAIN_MIN}); using ivf")
        kind = "ivf"
    limit = max(1, sample // MIN_POINTS_PER_CENTROID)
    cells = int(nlist) if nlist else max(1, int(round(4 * math.sqrt(max(count, 1)))))
    if cells > limit:
        notices.append(f"nlist {cells} needs a sample of {cells * MIN_POINTS_PER_CENTROID}; using {limit} cells "
                       f"(a larger --chunk trains on a larger sample)")  # fmt: skip
        cells = limit
    params = {"nlist": cells, "nprobe": min(int(nprobe) if nprobe else max(16, cells // 8), cells)}
    if kind == "ivf":
        return ChunkPlan("ivf", f"IVF{cells},Flat", params, sample, tuple(notices))
    m = int(pq_m) if pq_m else max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    if dim % m != 0:
        raise IndexStoreError(f"pq_m {m} must divide the feature dimension {dim}")
    return ChunkPlan("ivfpq", f"IVF{cells},PQ{m}np", {**params, "pq_m": m}, sample, tuple(notices))


def unit_rows(features: np.ndarray, what: str = "chunk") -> np.ndarray:
    """A float32 copy of ``features`` with unit rows; non-finite values are refused."""
    matrix = np.array(features, dtype=np.float32, order="C", copy=True)
    if matrix.ndim != 2:
        raise IndexStoreError(f"{what}: expected a 2-D array [N, D] of features, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise IndexStoreError(f"{what}: features contain NaN or infinite values")
    faiss.normalize_L2(matrix)
    return matrix


@dataclass
class ChunkedBuilder:
    """A trained empty IVF index (and reduction) in ``work``, ready to take chunks as shard files."""

    work: Path
    plan: ChunkPlan
    reduction: Reduction | None = None
    trained_on: int = 0

    @classmethod
    def train(
        cls, work: Path | str, sample: np.ndarray, plan: ChunkPlan, *, reduce_dim: int | None = None, whiten: bool = False,
    ) -> "ChunkedBuilder":
        """Train the reduction (``reduce_dim``) and the quantiser on ``sample``; write them to ``work``."""
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        matrix = unit_rows(sample, "sample")
        reduction = None
        if reduce_dim is not None:
            reduction = train_reduction(matrix[sample_rows(matrix.shape[0])], reduce_dim, whiten=whiten)
            matrix = reduction.apply(matrix)
            reduction.save(work)
        trained = ondisk.train_ivf(matrix, plan.factory, matrix.shape[1], TRAIN_POINTS_PER_CENTROID)
        ondisk.write_index_file(trained, work / TRAINED_FILE)
        builder = cls(work, plan, reduction, matrix.shape[0])
        atomic_write_text(work / PLAN_FILE, json.dumps(builder.describe(), indent=2) + "\n")  # last: training is done
        return builder

    @classmethod
    def from_index(cls, work: Path | str, index: faiss.Index, plan: ChunkPlan, reduction: Reduction | None) -> "ChunkedBuilder":
        """A builder adding to an existing trained IVF ``index`` (its quantiser and reduction; nothing retrains)."""
        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        ondisk.write_index_file(ondisk.trained_copy(index), work / TRAINED_FILE)
        if reduction is not None:
            reduction.save(work)
        builder = cls(work, plan, reduction, 0)
        atomic_write_text(work / PLAN_FILE, json.dumps(builder.describe(), indent=2) + "\n")
        return builder

    @classmethod
    def open(cls, work: Path | str) -> "ChunkedBuilder | None":
        """The builder a previous run trained in ``work`` (None when training did not finish)."""
        work = Path(work)
        try:
            plan = json.loads((work / PLAN_FILE).read_text(encoding="utf-8"))
            chunk_plan = ChunkPlan(str(plan["kind"]), str(plan["factory"]), {k: int(v) for k, v in plan["params"].items()},
                                   int(plan["sample"]), tuple(plan.get("notices", ())))  # fmt: skip
            reduction = Reduction.load(work, plan["reduction"]) if plan.get("reduction") else None
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexStoreError):
            return None
        if not (work / TRAINED_FILE).is_file():
            return None
        return cls(work, chunk_plan, reduction, int(plan.get("trained_on", 0)))

    def describe(self) -> dict[str, Any]:
        return {**asdict(self.plan), "notices": list(self.plan.notices), "trained_on": self.trained_on,
                "reduction": self.reduction.meta() if self.reduction is not None else None}  # fmt: skip

    def prepare(self, features: np.ndarray) -> np.ndarray:
        """Unit rows, reduced when the builder has a reduction: the vectors the index stores."""
        matrix = unit_rows(features)
        return matrix if self.reduction is None else self.reduction.apply(matrix)

    def add_chunk(self, name: str, vectors: np.ndarray) -> Path:
        """Add prepared ``vectors`` to a copy of the trained index; write it as shard ``name``.faiss."""
        shard = faiss.read_index(str(self.work / TRAINED_FILE))
        if vectors.shape[0]:
            shard.add(np.ascontiguousarray(vectors, dtype=np.float32))
        return ondisk.write_index_file(shard, self.work / f"{name}.faiss")

    def merge(self, names: Sequence[str], lists_path: Path | str, before: Sequence[faiss.Index] = ()) -> faiss.Index:
        """The trained index filled with the rows of ``before`` then of shards ``names``, lists in ``lists_path``."""
        parts = [*before, *(ondisk.read_shard(self.work / f"{name}.faiss") for name in names)]
        merged = ondisk.merge_into(faiss.read_index(str(self.work / TRAINED_FILE)), parts, lists_path)
        faiss.extract_index_ivf(merged).nprobe = int(self.plan.params["nprobe"])
        return merged


@dataclass
class ExactTopK:
    """The exact top-``k`` (inner product) gallery rows of fixed queries, updated chunk by chunk."""

    queries: np.ndarray
    k: int = RECALL_K + 1
    scores: np.ndarray = field(init=False)
    ids: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.queries = np.ascontiguousarray(self.queries, dtype=np.float32)
        self.scores = np.full((self.queries.shape[0], self.k), -np.inf, dtype=np.float32)
        self.ids = np.full((self.queries.shape[0], self.k), -1, dtype=np.int64)

    def update(self, vectors: np.ndarray, first_id: int) -> None:
        """Take rows ``first_id ..`` (``vectors``, prepared like the index's) into account."""
        if vectors.shape[0] == 0 or self.queries.shape[0] == 0:
            return
        scores, ids = faiss.knn(self.queries, np.ascontiguousarray(vectors), min(self.k, vectors.shape[0]),
                                metric=faiss.METRIC_INNER_PRODUCT)  # fmt: skip
        self.merge(scores, ids + first_id)

    def merge(self, scores: np.ndarray, ids: np.ndarray) -> None:
        all_scores = np.concatenate([self.scores, scores], axis=1)
        all_ids = np.concatenate([self.ids, ids], axis=1)
        order = np.argsort(-all_scores, axis=1, kind="stable")[:, : self.k]
        self.scores, self.ids = np.take_along_axis(all_scores, order, 1), np.take_along_axis(all_ids, order, 1)

    def save(self, path: Path | str) -> None:
        """``[Q, k, 2]`` float64 (score, row) as plain ``.npy``."""
        array = np.stack([self.scores.astype(np.float64), self.ids.astype(np.float64)], axis=2)
        atomic_write(path, lambda handle: np.save(handle, array, allow_pickle=False))

    def merge_file(self, path: Path | str, first_id: int) -> None:
        """Merge a top-k saved by :meth:`save` for rows numbered from ``first_id``."""
        array = np.load(path, allow_pickle=False)
        ids = array[:, :, 1].astype(np.int64)
        self.merge(array[:, :, 0].astype(np.float32), np.where(ids >= 0, ids + first_id, -1))


def recall_at_10(found: np.ndarray, truth: ExactTopK) -> float:
    """Mean overlap of each query's found top-10 with its exact top-10 (a query's own row left out of both)."""
    total = 0.0
    for approx, scores, exact in zip(found, truth.scores, truth.ids):
        own = {int(exact[0])} if scores[0] >= SELF_MATCH else set()
        want = [int(x) for x in exact if x >= 0 and int(x) not in own][:RECALL_K]
        got = [int(x) for x in approx if x >= 0 and int(x) not in own][:RECALL_K]
        total += len(set(got).intersection(want)) / max(1, len(want))
    return total / max(1, len(found))


def tune_nprobe(index: faiss.Index, truth: ExactTopK, target: float, fixed: int | None = None) -> tuple[int, float]:
    """The smallest ``nprobe`` whose recall@10 reaches ``target`` (or ``fixed`` as given): (nprobe, recall)."""
    ivf = faiss.extract_index_ivf(index)
    nlist = int(ivf.nlist)
    steps = [fixed] if fixed else sorted({min(nlist, v) for i in range(int(math.log2(nlist)) + 2) for v in (2**i, 3 * 2**i // 2)})
    best = (steps[-1], -1.0)
    for nprobe in steps:
        ivf.nprobe = int(nprobe)
        achieved = recall_at_10(index.search(truth.queries, RECALL_K + 1)[1], truth)
        if achieved > best[1]:
            best = (int(nprobe), achieved)
        if achieved >= target:
            break
    ivf.nprobe = best[0]
    return best
