"""``--kind auto``: pick an index structure for a recall target and a memory budget, then tune its search.

Candidates, in order of preference (each must fit the memory budget):

1. ``flat`` — exact; chosen while exhaustive search stays cheap (N * D up to
   :data:`FLAT_MAX_WORK`) or the gallery is too small to train anything else.
2. ``ivf`` — inverted lists over full vectors with an HNSW coarse quantiser.
3. ``ivfpq`` with a refine step — product-quantised lists, candidates re-ranked
   with 8-bit scalar-quantised copies of the vectors.
4. ``ivfpq`` with OPQ rotation and no refine — the smallest footprint.

The chosen index is trained on a sample (FAISS caps k-means at a fixed number
of points per cell) and its search parameters (``nprobe``, the quantiser's
``efSearch``, the refine factor) are raised step by step, through FAISS's
``ParameterSpace``, until recall@10 against exact search on held-out gallery
vectors reaches the target. What was achieved is returned whether or not the
target was met.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np

#: N * D up to which exact search is chosen (about 10-20 ms per query on 2 cores)
FLAT_MAX_WORK = 64_000_000
MIN_POINTS_PER_CENTROID = 39
PQ_TRAIN_MIN = 256 * MIN_POINTS_PER_CENTROID
TUNING_QUERIES = 300
RECALL_K = 10
#: FAISS ParameterSpace names of the tuned parameters, keyed as in meta.json ``params``
PARAMETER_NAMES = {"nprobe": "nprobe", "quantizer_ef": "quantizer_efSearch", "k_factor": "k_factor_rf"}


@dataclass
class AutoChoice:
    """What ``auto`` built: kind, FAISS factory, tuned parameters and how well they did."""

    kind: str
    factory: str
    params: dict[str, int]
    recall: float
    target: float
    memory_bytes: int
    budget_bytes: int | None
    tuned_on: int
    notices: list[str] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        return {
            "target_recall": self.target,
            "recall_at_10": round(self.recall, 4),
            "met": self.recall >= self.target,
            "memory_bytes": self.memory_bytes,
            "budget_bytes": self.budget_bytes,
            "tuned_on_queries": self.tuned_on,
        }


def apply_parameters(index: faiss.Index, params: dict[str, int]) -> None:
    """Set every tuned parameter present in ``params`` on ``index`` (through wrappers such as Refine)."""
    space = faiss.ParameterSpace()
    for key, name in PARAMETER_NAMES.items():
        if key in params:
            space.set_index_parameter(index, name, float(params[key]))


def _candidates(count: int, dim: int, budget: int | None) -> list[tuple[str, str, int, dict[str, int]]]:
    """(kind, factory, estimated bytes, fixed params) in order of preference, within the budget."""
    nlist = max(16, min(int(round(4 * math.sqrt(count))), count // MIN_POINTS_PER_CENTROID))
    pq_m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0 and d <= 64)
    rows: list[tuple[str, str, int, dict[str, int]]] = [("flat", "Flat", count * dim * 4, {})]
    if count >= 16 * MIN_POINTS_PER_CENTROID:
        rows.append(("ivf", f"IVF{nlist}_HNSW32,Flat", count * (dim * 4 + 8), {"nlist": nlist}))
    if count >= PQ_TRAIN_MIN:
        rows.append(("ivfpq", f"IVF{nlist}_HNSW32,PQ{pq_m}x8np,Refine(SQ8)", count * (pq_m + 8 + dim), {"nlist": nlist, "pq_m": pq_m}))
        rows.append(("ivfpq", f"OPQ{pq_m},IVF{nlist}_HNSW32,PQ{pq_m}x8np", count * (pq_m + 8) + dim * dim * 4, {"nlist": nlist, "pq_m": pq_m}))
    if count * dim <= FLAT_MAX_WORK or len(rows) == 1:
        rows = rows[:1]
    else:
        rows = rows[1:]
    fitting = [r for r in rows if budget is None or r[2] <= budget]
    return fitting or [min(rows, key=lambda r: r[2])]


def _exact_neighbours(matrix: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Exact top-(k+1) rows by inner product, read straight from ``matrix`` (no second copy of the gallery)."""
    return faiss.knn(queries, matrix, RECALL_K + 1, metric=faiss.METRIC_INNER_PRODUCT)[1]


def _recall(index: faiss.Index, queries: np.ndarray, query_rows: np.ndarray, truth: np.ndarray) -> float:
    """Mean overlap of the top-10 lists (the query's own row left out of both)."""
    found = index.search(queries, RECALL_K + 1)[1]
    total = 0.0
    for row, approx, exact in zip(query_rows, found, truth):
        want = [int(x) for x in exact if x != row][:RECALL_K]
        got = {int(x) for x in approx if x != row and x >= 0}
        total += len(got.intersection(want)) / max(1, len(want))
    return total / max(1, len(query_rows))


def _sweep(kind: str, factory: str, params: dict[str, int]) -> list[dict[str, int]]:
    """Search settings from cheapest to most thorough."""
    if kind == "flat":
        return [{}]
    nlist = params["nlist"]
    # powers of two and the halfway steps between them (1, 2, 3, 4, 6, 8, 12, ...), up to every cell
    probes = sorted({min(nlist, v) for i in range(0, int(math.log2(nlist)) + 2) for v in (2**i, 3 * 2**i // 2) if v >= 1})
    factors = [1, 2, 4, 8, 16] if "Refine" in factory else [None]
    settings = []
    for nprobe in probes:
        for factor in factors:
            setting = {"nprobe": nprobe, "quantizer_ef": max(64, 2 * nprobe)}
            if factor is not None:
                setting["k_factor"] = factor
            settings.append(setting)
    return settings


def auto_index(matrix: np.ndarray, target: float, budget_bytes: int | None, seed: int = 0) -> tuple[faiss.Index, AutoChoice]:
    """Build, train and tune the most accurate candidate that fits; returns the filled index and the choice made.

    Candidates are ordered by accuracy, so when the first that fits cannot reach
    the target at its most thorough setting, none of the smaller ones would: the
    best it achieved is kept and reported.
    """
    count, dim = matrix.shape
    kind, factory, memory, fixed = _candidates(count, dim, budget_bytes)[0]
    notices: list[str] = []
    if budget_bytes is not None and memory > budget_bytes:
        notices.append(f"no structure fits {budget_bytes / 2**30:.3f} GB; using the smallest ({factory})")
    index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    if kind != "flat":
        ivf = faiss.extract_index_ivf(index)
        ivf.cp.spherical = True
        ivf.cp.max_points_per_centroid = 64
        index.train(matrix)
    index.add(matrix)
    if kind == "flat":
        return index, AutoChoice(kind, factory, {}, 1.0, target, memory, budget_bytes, 0, notices)
    rows = np.sort(np.random.default_rng(seed).choice(count, size=min(TUNING_QUERIES, count), replace=False))
    queries = np.ascontiguousarray(matrix[rows])
    truth = _exact_neighbours(matrix, queries)
    best_recall, best_setting = -1.0, {}
    for setting in _sweep(kind, factory, fixed):
        apply_parameters(index, setting)
        achieved = _recall(index, queries, rows, truth)
        if achieved > best_recall:
            best_recall, best_setting = achieved, setting
        if achieved >= target:
            break
    apply_parameters(index, best_setting)
    if best_recall < target:
        notices.append(f"target recall@10 {target} not reached; best {best_recall:.3f} with {factory}")
    return index, AutoChoice(kind, factory, {**fixed, **best_setting}, best_recall, target, memory, budget_bytes, len(rows), notices)
