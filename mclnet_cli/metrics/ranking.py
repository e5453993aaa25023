"""Ranking metrics for re-identification: CMC, mAP and mINP from a distance matrix.

Pure numpy, vectorised over queries (processed in chunks so memory stays bounded).
It knows no dataset protocol: exclusions come as plain arguments of
:func:`exclusion_mask` and the CMC kind as an argument; ``metrics.protocols``
(one ``ProtocolSpec`` per protocol) turns a protocol name into them.

Definitions, for one query, after dropping the gallery entries its validity mask
excludes and sorting the rest by ascending distance (ties keep gallery order,
``np.argsort(kind="stable")``):

- CMC (standard): 1 at rank r if a true match is among the first r entries.
- CMC (deduplicated, SYSU-MM01 and LLCM): keep only the first occurrence of each
  identity in the ranked list, then as above. Rank-1 equals the standard value.
- AP: mean over the true matches of the precision at the match's rank.
- INP: number of true matches / (1-based rank of the last true match).

A query with no true match left after exclusion is skipped (and counted). The CMC
at rank r is defined for every r: a ranked list shorter than r has all its
entries within the first r, so ranks beyond the list length repeat the last value
(1.0, as every valid query has its match somewhere in its list). ``num_ranks`` in
the result tells how many ranks the lists really had (for deduplicated CMC: the
number of distinct identities), so a report can flag a short gallery.

Speed: float32 distances (what evaluation produces) take a packed-key path (one
uint64 sort per chunk, see ``_packed_chunk_stats``); other dtypes rank with
``stable_order``. Both are exact, and both are checked against a per-query loop
in the tests. NaN distances are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import functools

import numpy as np

CmcKind = Literal["standard", "dedup"]
_CHUNK_ELEMENTS = 1 << 18  # entries per chunk: 2 MB of uint64 keys stays in cache


@dataclass(frozen=True)
class RankingResult:
    """Metrics averaged over the valid queries (fractions, not percent)."""

    cmc: np.ndarray  # [max_rank] float64, cmc[r - 1] = CMC at rank r
    mAP: float
    mINP: float
    num_valid: int  # queries with at least one true match after exclusion
    num_skipped: int  # queries without any (not in the averages)
    num_ranks: int  # longest ranked list (identities for dedup CMC); ranks beyond repeat the last value

    def rank(self, r: int) -> float:
        """CMC at rank ``r`` (1-based)."""
        return float(self.cmc[r - 1])


def _check_inputs(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, valid_mask: np.ndarray | None) -> None:
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be 2-D [queries, gallery], got shape {distmat.shape}")
    nq, ng = distmat.shape
    if q_pids.shape != (nq,) or g_pids.shape != (ng,):
        raise ValueError(
            f"pids do not fit distmat {distmat.shape}: query pids {q_pids.shape}, gallery pids {g_pids.shape}"
        )
    if valid_mask is not None and valid_mask.shape != distmat.shape:
        raise ValueError(f"valid_mask shape {valid_mask.shape} differs from distmat shape {distmat.shape}")


def stable_order(dist: np.ndarray) -> np.ndarray:
    """Per row, gallery columns by ascending distance, ties in column order (= stable argsort).

    A fast unstable argsort, then ties put in column order: each entry's key is
    (index of its run of equal values, column), unique per row, so a plain sort
    of the keys gives the stable order. Distances must not be NaN.
    """
    rows, cols = dist.shape
    order = np.argsort(dist, axis=1)
    ranked = np.take_along_axis(dist, order, axis=1)
    run = np.zeros((rows, cols), dtype=np.int64)
    np.cumsum(ranked[:, 1:] != ranked[:, :-1], axis=1, out=run[:, 1:])
    keys = run * cols + order
    keys.sort(axis=1)
    return (keys % cols).astype(np.intp)


@dataclass(frozen=True)
class _Gallery:
    """Gallery columns grouped by pid, computed once per call."""

    columns: np.ndarray  # gallery columns sorted by pid (stable)
    pids: np.ndarray  # the distinct pids, ascending
    starts: np.ndarray  # start of each pid's run in ``columns``
    sizes: np.ndarray  # length of each run
    grouped: bool  # columns are already in pid order (no gather needed)

    @classmethod
    def of(cls, g_pids: np.ndarray) -> "_Gallery":
        columns = np.argsort(g_pids, kind="stable")
        sorted_pids = g_pids[columns]
        starts = np.flatnonzero(np.r_[True, sorted_pids[1:] != sorted_pids[:-1]])
        sizes = np.diff(np.r_[starts, len(columns)])
        grouped = bool(np.array_equal(columns, np.arange(len(columns))))
        return cls(columns, sorted_pids[starts], starts, sizes, grouped)


def _match_entries(q_pids: np.ndarray, gallery: _Gallery) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every gallery entry sharing its query's pid, rows ascending."""
    slot = np.minimum(np.searchsorted(gallery.pids, q_pids), len(gallery.pids) - 1)
    present = gallery.pids[slot] == q_pids
    size = np.where(present, gallery.sizes[slot], 0)
    rows = np.repeat(np.arange(len(q_pids)), size)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(size) - size, size)
    return rows, gallery.columns[np.repeat(gallery.starts[slot], size) + within]


def _summaries(
    nrows: int, rows: np.ndarray, rank: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """From the kept true matches (rows ascending, ranks ascending within a row):
    first-match rank, AP, INP, has-match, and the index of each row's first match."""
    counts = np.bincount(rows, minlength=nrows)
    has_match = counts > 0
    row_start = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    hits = np.arange(len(rows)) - row_start[rows] + 1  # matches found so far, this one included
    rank = rank.astype(np.float64)
    ap = np.bincount(rows, hits / rank, minlength=nrows) / np.maximum(counts, 1)
    last = np.zeros(nrows)
    last[rows] = rank  # the last write per row is its last match
    inp = counts / np.maximum(last, 1)
    first_rank = np.zeros(nrows, dtype=np.int64)
    first_rank[has_match] = rank[row_start[has_match]]
    return first_rank, ap, inp, has_match, row_start


@functools.lru_cache(maxsize=4)
def _row_col_field(nrows: int, ncols: int, col_bits: int) -> np.ndarray:
    """The row and column fields of the packed keys of a chunk (cached: chunks share a shape)."""
    field = np.arange(ncols, dtype=np.uint64)[None, :] | (
        np.arange(nrows, dtype=np.uint64) << np.uint64(32 + col_bits)
    )[:, None]
    field.setflags(write=False)
    return field


def _packed_chunk_stats(
    dist: np.ndarray,
    q_pids: np.ndarray,
    valid: np.ndarray | None,
    gallery: _Gallery,
    dedup: bool,
    non_negative: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Fast exact path for float32 distances: one uint64 key per entry, sorted once.

    key = row | order-preserving code of the distance | column, so keys are unique,
    a row's sorted keys are its stable ranking, and the chunk's rows sorted one by
    one form one ascending array: a match's rank is a ``searchsorted`` away.
    Excluded entries get the largest code and sort after every kept one.
    """
    nrows, ncols = dist.shape
    col_bits = max(1, (ncols - 1).bit_length())
    bits = np.ascontiguousarray(dist, dtype=np.float32).view(np.uint32)
    if non_negative:  # order as unsigned integers once -0.0 loses its sign bit
        code = bits & np.uint32(0x7FFFFFFF)
    else:  # full order-preserving transform (+0.0 turns -0.0 into +0.0)
        bits = (np.asarray(dist, dtype=np.float32) + np.float32(0.0)).view(np.uint32)
        sign = np.uint32(0x80000000)
        code = np.where(bits & sign, ~bits, bits | sign)
    if valid is not None:
        np.copyto(code, np.uint32(0xFFFFFFFF), where=~valid)
    keys = code.astype(np.uint64)
    keys <<= np.uint64(col_bits)
    keys |= _row_col_field(nrows, ncols, col_bits)

    rows, cols = _match_entries(q_pids, gallery)
    if valid is not None:
        kept = valid[rows, cols]
        rows, cols = rows[kept], cols[kept]
    match_keys = keys[rows, cols]
    if dedup:
        grouped = keys if gallery.grouped else keys[:, gallery.columns]
        first_of_pid = np.minimum.reduceat(grouped, gallery.starts, axis=1)
    keys.sort(axis=1)
    rank = np.searchsorted(keys.ravel(), match_keys) - rows * ncols + 1
    by_rank = np.lexsort((rank, rows))
    rows, rank, match_keys = rows[by_rank], rank[by_rank], match_keys[by_rank]
    first_rank, ap, inp, has_match, row_start = _summaries(nrows, rows, rank)
    if not dedup:
        longest = ncols if valid is None else int(valid.sum(axis=1).max(initial=0))
        return first_rank, ap, inp, has_match, longest
    first_key = np.zeros(nrows, dtype=np.uint64)
    first_key[has_match] = match_keys[row_start[has_match]]
    dedup_rank = (first_of_pid <= first_key[:, None]).sum(axis=1)
    excluded = (first_of_pid >> np.uint64(col_bits)) & np.uint64(0xFFFFFFFF) == np.uint64(0xFFFFFFFF)
    longest = int((~excluded).sum(axis=1).max(initial=0))
    return dedup_rank, ap, inp, has_match, longest


def _chunk_stats(
    dist: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, valid: np.ndarray | None, gallery: _Gallery, dedup: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """General path (any dtype): rank the whole chunk, then read off the matches.

    Returns per query: first-match rank (1-based, deduplicated when ``dedup``),
    AP, INP, has-match, and the longest ranked list of the chunk.
    """
    nrows, ncols = dist.shape
    order = stable_order(dist)
    matches = g_pids[order] == q_pids[:, None]
    if valid is None:
        keep = None
        position = np.broadcast_to(np.arange(1, ncols + 1, dtype=np.int64), (nrows, ncols))
        longest = ncols
    else:
        keep = np.take_along_axis(valid, order, axis=1)
        matches &= keep
        position = np.cumsum(keep, axis=1)  # 1-based rank among kept entries
        longest = int(position[:, -1].max(initial=0))
    rows, cols = np.nonzero(matches)  # row-major: each row's matches in rank order
    first_rank, ap, inp, has_match, _ = _summaries(nrows, rows, position[rows, cols])
    if not dedup:
        return first_rank, ap, inp, has_match, longest
    # Deduplicated rank = identities whose first kept entry is at or before the first match.
    beyond = ncols + 1
    rank_by_column = np.empty((nrows, ncols), dtype=np.int64)
    np.put_along_axis(rank_by_column, order, position if keep is None else np.where(keep, position, beyond), axis=1)
    grouped = rank_by_column if gallery.grouped else rank_by_column[:, gallery.columns]
    first_of_pid = np.minimum.reduceat(grouped, gallery.starts, axis=1)
    dedup_rank = (first_of_pid <= first_rank[:, None]).sum(axis=1)
    longest = int((first_of_pid < beyond).sum(axis=1).max(initial=0))
    return dedup_rank, ap, inp, has_match, longest


def evaluate_ranking(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    valid_mask: np.ndarray | None = None,
    cmc: CmcKind = "standard",
    max_rank: int = 20,
    chunk_size: int | None = None,
) -> RankingResult:
    """CMC (ranks 1..``max_rank``), mAP and mINP for a [queries, gallery] distance matrix.

    ``valid_mask[i, j]`` False removes gallery entry j from query i's ranking
    (protocol exclusions). ``cmc`` picks standard or identity-deduplicated CMC.
    """
    if cmc not in ("standard", "dedup"):
        raise ValueError(f"cmc must be 'standard' or 'dedup', got {cmc!r}")
    if max_rank < 1:
        raise ValueError(f"max_rank must be at least 1, got {max_rank}")
    distmat = np.asarray(distmat)
    q_pids = np.asarray(q_pids).reshape(-1)
    g_pids = np.asarray(g_pids).reshape(-1)
    valid_mask = None if valid_mask is None else np.asarray(valid_mask, dtype=bool)
    _check_inputs(distmat, q_pids, g_pids, valid_mask)
    nq, ng = distmat.shape
    if distmat.dtype.kind not in "fiu":
        raise ValueError(f"distmat must hold real numbers, got dtype {distmat.dtype}")
    smallest = distmat.min() if distmat.size else 0
    if np.isnan(smallest):
        raise ValueError("distmat holds NaN distances")
    packed = distmat.dtype.kind == "f" and distmat.dtype.itemsize <= 4 and ng < 2**24
    step = chunk_size or max(1, _CHUNK_ELEMENTS // max(ng, 1))
    if packed:  # the row field of a packed key has 32 - column bits
        step = min(step, 2 ** (32 - max(1, (ng - 1).bit_length())))
    gallery = _Gallery.of(g_pids) if ng else None
    dedup = cmc == "dedup"

    hist = np.zeros(max_rank, dtype=np.int64)  # hist[r - 1]: valid queries first matched at rank r
    ap_sum = inp_sum = 0.0
    num_valid = 0
    longest = 0
    for start in range(0, nq if ng else 0, step):
        rows = slice(start, min(start + step, nq))
        valid = None if valid_mask is None else valid_mask[rows]
        if packed:
            stats = _packed_chunk_stats(distmat[rows], q_pids[rows], valid, gallery, dedup, bool(smallest >= 0))
        else:
            stats = _chunk_stats(distmat[rows], q_pids[rows], g_pids, valid, gallery, dedup)
        first_rank, ap, inp, has_match, chunk_longest = stats
        first_rank = first_rank[has_match]
        hist += np.bincount(first_rank[first_rank <= max_rank] - 1, minlength=max_rank)[:max_rank]
        ap_sum += float(ap[has_match].sum())
        inp_sum += float(inp[has_match].sum())
        num_valid += int(has_match.sum())
        longest = max(longest, chunk_longest)
    if num_valid == 0:
        curve = np.full(max_rank, np.nan)
        return RankingResult(curve, float("nan"), float("nan"), 0, nq, longest)
    curve = np.cumsum(hist) / num_valid
    return RankingResult(curve, ap_sum / num_valid, inp_sum / num_valid, num_valid, nq - num_valid, longest)


def exclusion_mask(
    query_pids: np.ndarray,
    gallery_pids: np.ndarray,
    query_cams: np.ndarray,
    gallery_cams: np.ndarray,
    *,
    camera_pairs: Sequence[tuple[int, int]] = (),
    same_pid_same_camera: bool = False,
    known_cameras_only: bool = False,
) -> np.ndarray | None:
    """Validity mask [queries, gallery] (True = the gallery entry counts), or None when no rule is given.

    ``camera_pairs``: each (query camera, gallery camera) pair is ignored whatever
    the identities (SYSU-MM01: (3, 2), the same room). ``same_pid_same_camera``:
    gallery images with the query's pid and the query's camera are ignored;
    with ``known_cameras_only`` only where the camera is known (camid >= 0; a
    negative camid, such as -1 for "unknown", excludes nothing).
    """
    if not camera_pairs and not same_pid_same_camera:
        return None
    q_pids, g_pids = np.asarray(query_pids).reshape(-1), np.asarray(gallery_pids).reshape(-1)
    q_cams, g_cams = np.asarray(query_cams).reshape(-1), np.asarray(gallery_cams).reshape(-1)
    excluded = np.zeros((len(q_cams), len(g_cams)), dtype=bool)
    for query_cam, gallery_cam in camera_pairs:
        excluded |= (q_cams[:, None] == query_cam) & (g_cams[None, :] == gallery_cam)
    if same_pid_same_camera:
        same = (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == g_cams[None, :])
        if known_cameras_only:  # equal cameras: one known means both are
            same &= q_cams[:, None] >= 0
        excluded |= same
    return ~excluded
