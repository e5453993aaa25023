"""Ranking metrics: hand-computed cases and a per-query loop reference on random problems."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mclnet_cli.errors import ConfigError
from mclnet_cli.metrics import as_percent, evaluate_ranking, mean_std, rank_metrics
from mclnet_cli.metrics.ranking import RankingResult


def loop_reference(distmat, q_pids, g_pids, valid, cmc, max_rank):
    """The textbook definitions, one query at a time, with plain Python lists."""
    curves, aps, inps = [], [], []
    skipped = 0
    for i in range(len(q_pids)):
        entries = [(distmat[i][j], j) for j in range(len(g_pids)) if valid is None or valid[i][j]]
        # Stable order: by distance, ties by gallery position.
        entries.sort(key=lambda e: (e[0], e[1]))
        ranked = [g_pids[j] for _, j in entries]
        hits = [p == q_pids[i] for p in ranked]
        if not any(hits):
            skipped += 1
            continue
        found = 0
        precisions = []
        for pos, hit in enumerate(hits, start=1):
            if hit:
                found += 1
                precisions.append(found / pos)
                last = pos
        aps.append(sum(precisions) / len(precisions))
        inps.append(found / last)
        if cmc == "dedup":
            seen, deduped = set(), []
            for p in ranked:
                if p not in seen:
                    seen.add(p)
                    deduped.append(p)
            ranked = deduped
        first = next(pos for pos, p in enumerate(ranked, start=1) if p == q_pids[i])
        curves.append([1.0 if first <= r else 0.0 for r in range(1, max_rank + 1)])
    n = len(aps)
    if n == 0:
        return None, None, None, 0, skipped
    return np.mean(curves, axis=0), sum(aps) / n, sum(inps) / n, n, skipped


def test_hand_computed_one_query_five_gallery():
    # gallery j:   0    1    2    3    4
    dist = np.array([[0.5, 0.1, 0.3, 0.2, 0.4]])
    g_pids = np.array([1, 2, 1, 2, 3])
    # ranked: j1 (pid 2), j3 (pid 2), j2 (pid 1, match), j4 (pid 3), j0 (pid 1, match)
    # AP = (1/3 + 2/5) / 2 = 11/30; INP = 2 matches / last match at rank 5 = 0.4
    std = evaluate_ranking(dist, np.array([1]), g_pids, cmc="standard", max_rank=6)
    assert np.allclose(std.cmc, [0, 0, 1, 1, 1, 1])
    assert std.mAP == pytest.approx(11 / 30)
    assert std.mINP == pytest.approx(0.4)
    assert (std.num_valid, std.num_skipped, std.num_ranks) == (1, 0, 5)
    # deduplicated list: pid 2, pid 1, pid 3 -> first match at rank 2; AP/INP unchanged
    dedup = evaluate_ranking(dist, np.array([1]), g_pids, cmc="dedup", max_rank=6)
    assert np.allclose(dedup.cmc, [0, 1, 1, 1, 1, 1])
    assert dedup.mAP == pytest.approx(11 / 30)
    assert dedup.num_ranks == 3
    # exclude j3: ranked j1 (2), j2 (1, match), j4 (3), j0 (1, match)
    # AP = (1/2 + 2/4) / 2 = 0.5; INP = 2/4
    mask = np.array([[True, True, True, False, True]])
    masked = evaluate_ranking(dist, np.array([1]), g_pids, mask, cmc="standard", max_rank=3)
    assert np.allclose(masked.cmc, [0, 1, 1])
    assert masked.mAP == pytest.approx(0.5)
    assert masked.mINP == pytest.approx(0.5)


def test_ties_keep_gallery_order():
    dist = np.zeros((1, 4))
    # all tied: ranked in gallery order, so the match at position 3 is rank 3
    result = evaluate_ranking(dist, np.array([7]), np.array([1, 2, 7, 7]), max_rank=4)
    assert np.allclose(result.cmc, [0, 0, 1, 1])
    assert result.mAP == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert result.mINP == pytest.approx(2 / 4)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_signed_zero_ties_keep_gallery_order(dtype):
    dist = np.array([[0.0, -0.0, -1.0, 0.0]], dtype=dtype)
    result = evaluate_ranking(dist, np.array([5]), np.array([1, 5, 2, 5]), max_rank=4)
    # ranked: j2 (-1), then j0, j1, j3 tied at zero in gallery order -> first match at rank 3
    assert np.allclose(result.cmc, [0, 0, 1, 1])
    assert result.mAP == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_query_without_match_is_skipped_and_counted():
    dist = np.array([[0.1, 0.2], [0.2, 0.1]])
    result = evaluate_ranking(dist, np.array([1, 9]), np.array([1, 2]), max_rank=2)
    assert (result.num_valid, result.num_skipped) == (1, 1)
    assert np.allclose(result.cmc, [1, 1])
    none = evaluate_ranking(dist, np.array([8, 9]), np.array([1, 2]), max_rank=2)
    assert none.num_valid == 0 and none.num_skipped == 2
    assert math.isnan(none.mAP) and np.isnan(none.cmc).all()


def test_short_gallery_repeats_last_value():
    # 3 identities only: CMC at ranks 4..20 repeats rank 3 (= 1.0)
    rng = np.random.default_rng(3)
    dist = rng.random((5, 6))
    g_pids = np.array([0, 0, 1, 1, 2, 2])
    q_pids = np.array([0, 1, 2, 0, 1])
    for kind in ("standard", "dedup"):
        result = evaluate_ranking(dist, q_pids, g_pids, cmc=kind, max_rank=20)
        assert result.cmc.shape == (20,)
        assert np.all(result.cmc[result.num_ranks - 1 :] == 1.0)
    assert evaluate_ranking(dist, q_pids, g_pids, cmc="dedup").num_ranks == 3


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("kind", ["standard", "dedup"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])  # float32 takes the packed-key sort
def test_matches_loop_reference_on_random_problems(seed, kind, dtype):
    rng = np.random.default_rng(seed)
    nq, ng = rng.integers(1, 30), rng.integers(1, 40)
    num_ids = int(rng.integers(1, 12))  # often fewer than 20 identities
    # coarse values (many ties), negatives and -0.0 included; sometimes fine values
    coarse = rng.integers(-3, 3, size=(nq, ng)) * (-1.0 if seed % 3 == 0 else 1.0)
    dist = (coarse if seed % 4 else coarse + rng.random((nq, ng))).astype(dtype)
    q_pids = rng.integers(0, num_ids + 2, size=nq)  # some query ids absent from the gallery
    g_pids = rng.integers(0, num_ids, size=ng)
    if seed % 5 < 2:
        g_pids.sort()  # pid-ordered gallery, as the protocols build it (a separate fast path)
    mask = rng.random((nq, ng)) > 0.3 if seed % 2 else None
    max_rank = int(rng.integers(1, 25))
    result = evaluate_ranking(dist, q_pids, g_pids, mask, cmc=kind, max_rank=max_rank, chunk_size=int(rng.integers(1, 8)))
    cmc, m_ap, m_inp, valid, skipped = loop_reference(dist, q_pids, g_pids, mask, kind, max_rank)
    assert (result.num_valid, result.num_skipped) == (valid, skipped)
    if valid == 0:
        assert math.isnan(result.mAP) and np.isnan(result.cmc).all()
        return
    assert np.allclose(result.cmc, cmc)
    assert result.mAP == pytest.approx(m_ap)
    assert result.mINP == pytest.approx(m_inp)


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(0)
    dist = rng.random((50, 30))
    q, g = rng.integers(0, 8, 50), rng.integers(0, 8, 30)
    whole = evaluate_ranking(dist, q, g, cmc="dedup")
    parts = evaluate_ranking(dist, q, g, cmc="dedup", chunk_size=7)
    assert np.array_equal(whole.cmc, parts.cmc) and whole.mAP == pytest.approx(parts.mAP)


@pytest.mark.parametrize("kind", ["standard", "dedup"])
@pytest.mark.parametrize("masked", [False, True])
def test_chunking_float32_packed_path(monkeypatch, kind, masked):
    """float32 takes the packed-key path; a small chunk size must split it and change nothing."""
    from mclnet_cli.metrics import ranking

    rng = np.random.default_rng(3)
    nq, ng = 50, 30
    dist = (rng.integers(0, 4, size=(nq, ng)) + (rng.random((nq, ng)) > 0.5) * 0.25).astype(np.float32)  # many ties
    q, g = rng.integers(0, 8, nq), rng.integers(0, 8, ng)
    mask = rng.random((nq, ng)) > 0.3 if masked else None
    calls = []
    packed = ranking._packed_chunk_stats
    monkeypatch.setattr(ranking, "_packed_chunk_stats", lambda d, *a: calls.append(d.shape[0]) or packed(d, *a))
    whole = evaluate_ranking(dist, q, g, mask, cmc=kind)
    assert calls == [nq]  # one chunk
    calls.clear()
    parts = evaluate_ranking(dist, q, g, mask, cmc=kind, chunk_size=3)
    assert calls == [3] * 16 + [2]  # really chunked, on the packed path
    assert np.array_equal(whole.cmc, parts.cmc)
    assert (whole.num_valid, whole.num_ranks) == (parts.num_valid, parts.num_ranks)
    assert parts.mAP == pytest.approx(whole.mAP, rel=1e-12) and parts.mINP == pytest.approx(whole.mINP, rel=1e-12)
    cmc, m_ap, m_inp, valid, _ = loop_reference(dist.astype(np.float64), q, g, mask, kind, 20)
    assert np.allclose(parts.cmc, cmc) and parts.num_valid == valid
    assert parts.mAP == pytest.approx(m_ap) and parts.mINP == pytest.approx(m_inp)


def test_sysu_cam3_query_ignores_cam2_gallery():
    # the only true match sits in camera 2
    dist = np.array([[0.1, 0.5, 0.9], [0.1, 0.5, 0.9]])
    g_pids, g_cams = np.array([1, 2, 3]), np.array([2, 1, 4])
    q_pids, q_cams = np.array([1, 1]), np.array([3, 6])
    sysu = rank_metrics(dist, q_pids, g_pids, q_cams, g_cams, "sysu")
    assert (sysu.num_valid, sysu.num_skipped) == (1, 1)  # the cam-3 query has no match left
    assert sysu.rank(1) == 1.0
    # a cam-3 query also loses non-matching cam-2 images: the match moves up
    dist2 = np.array([[0.1, 0.2, 0.3]])
    res = rank_metrics(dist2, np.array([5]), np.array([9, 8, 5]), np.array([3]), np.array([2, 1, 4]), "sysu")
    assert np.allclose(res.cmc[:3], [0, 1, 1])
    reg = rank_metrics(dist2, np.array([5]), np.array([9, 8, 5]), np.array([3]), np.array([2, 1, 4]), "regdb")
    assert np.allclose(reg.cmc[:3], [0, 0, 1])


def test_llcm_ignores_same_id_same_camera():
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    g_pids, g_cams = np.array([4, 7, 4, 4]), np.array([2, 2, 5, 2])
    result = rank_metrics(dist, np.array([4]), g_pids, np.array([2]), g_cams, "llcm", max_rank=4)
    # kept: j1 (pid 7, cam 2, other id) and j2 (pid 4, cam 5); the match is at rank 2
    assert np.allclose(result.cmc, [0, 1, 1, 1])
    assert result.mAP == pytest.approx(0.5)
    assert result.mINP == pytest.approx(0.5)


def test_protocol_cmc_kinds():
    dist = np.array([[0.1, 0.2, 0.3]])
    g_pids, g_cams = np.array([2, 2, 1]), np.array([1, 4, 5])
    args = (dist, np.array([1]), g_pids, np.array([6]), g_cams)
    assert rank_metrics(*args, "sysu").rank(2) == 1.0  # dedup: pid 2, then pid 1
    assert rank_metrics(*args, "regdb").rank(2) == 0.0  # standard: match at rank 3
    with pytest.raises(ConfigError, match="unknown protocol"):
        rank_metrics(*args, "market")


def test_as_percent_and_mean_std():
    result = RankingResult(np.array([0.5, 0.6, 0.7]), 0.4, 0.2, 10, 0, 3)
    row = as_percent(result)
    assert row["rank1"] == pytest.approx(50.0)
    assert row["rank5"] == pytest.approx(70.0) and row["rank20"] == pytest.approx(70.0)
    assert row["mAP"] == pytest.approx(40.0) and row["mINP"] == pytest.approx(20.0)
    mean, std = mean_std([{"mAP": 10.0}, {"mAP": 20.0}, {"mAP": 60.0}], keys=["mAP"])
    assert mean["mAP"] == pytest.approx(30.0)
    assert std["mAP"] == pytest.approx(math.sqrt((400 + 100 + 900) / 3))


def rerank_reference(q, g, k1, k2, lam):
    """k-reciprocal re-ranking from the paper's definitions, with sets and plain loops."""
    feats = np.concatenate([q, g]).astype(np.float64)
    n, nq = len(feats), len(q)
    d = [[float(((feats[i] - feats[j]) ** 2).sum()) for j in range(n)] for i in range(n)]
    d = [[v / max(row) for v in row] for row in d]
    ranks = [sorted(range(n), key=lambda j: (d[i][j], j)) for i in range(n)]

    def recip(i, k):
        return {j for j in ranks[i][: k + 1] if i in ranks[j][: k + 1]}

    V = [[0.0] * n for _ in range(n)]
    for i in range(n):
        r = recip(i, k1)
        expanded = set(r)
        for j in r:
            c = recip(j, int(round(k1 / 2)))
            if len(c & r) > 2 / 3 * len(c):
                expanded |= c
        total = sum(math.exp(-d[i][j]) for j in expanded)
        for j in expanded:
            V[i][j] = math.exp(-d[i][j]) / total
    V = [[sum(V[m][c] for m in ranks[i][:k2]) / k2 for c in range(n)] for i in range(n)]
    out = np.zeros((nq, n - nq))
    for i in range(nq):
        for j in range(nq, n):
            jac = 1 - sum(min(a, b) for a, b in zip(V[i], V[j])) / sum(max(a, b) for a, b in zip(V[i], V[j]))
            out[i, j - nq] = (1 - lam) * jac + lam * d[i][j]
    return out


@pytest.mark.parametrize("seed", [0, 1])
def test_rerank_matches_reference(seed):
    from mclnet_cli.metrics.rerank import k_reciprocal_distance

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(4, 8))
    def sample(n):
        x = centers[rng.integers(0, 4, n)] + 0.5 * rng.normal(size=(n, 8))
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    q, g = sample(7), sample(15)
    got = k_reciprocal_distance(q, g, k1=5, k2=3, lambda_value=0.3)
    assert got.shape == (7, 15)
    assert np.allclose(got, rerank_reference(q, g, 5, 3, 0.3), atol=1e-5)


def test_rerank_keeps_clear_matches_first():
    from mclnet_cli.metrics.rerank import k_reciprocal_distance

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 16))
    pids = np.repeat(np.arange(6), 5)
    x = centers[pids] + 0.05 * rng.normal(size=(30, 16))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    dist = k_reciprocal_distance(x[::5], x[np.arange(30) % 5 != 0], k1=4, k2=2)
    result = evaluate_ranking(dist, pids[::5], pids[np.arange(30) % 5 != 0])
    assert result.rank(1) == 1.0 and result.mAP == pytest.approx(1.0)
