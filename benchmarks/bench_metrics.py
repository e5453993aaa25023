"""Speed of ``rank_metrics`` on a SYSU-MM01-sized problem, against a per-query loop.

Problem: all-search multi-shot shape, 3,803 infrared queries (cameras 3 and 6) x
3,010 visible gallery images (cameras 1, 2, 4, 5) over 96 identities, random
2048-d L2-normalised features, distances 1 - cosine in float32 (what evaluation
produces). Both implementations apply the SYSU protocol (camera 3 ignores camera
2, deduplicated CMC) and must agree; the loop scores one query at a time with
numpy, the way the AGW family of evaluation code does.

With ``--rerank`` it also times k-reciprocal re-ranking at the single-shot size
(3,803 queries x 301 gallery, 2048-d).

Usage: python benchmarks/bench_metrics.py [--repeats 3] [--rerank] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from mclnet_cli.metrics import rank_metrics


def sysu_sized_problem(seed: int = 0, dim: int = 2048) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.arange(96)
    q_pids = rng.choice(ids, 3803)
    q_cams = rng.choice([3, 6], 3803)
    g_pids = np.repeat(ids, 32)[:3010]  # about ten images per (id, camera), as multi-shot
    g_cams = rng.choice([1, 2, 4, 5], 3010)
    q = rng.normal(size=(3803, dim)).astype(np.float32)
    g = rng.normal(size=(3010, dim)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    return {"distmat": 1.0 - q @ g.T, "q_pids": q_pids, "g_pids": g_pids, "q_cams": q_cams, "g_cams": g_cams}


def loop_rank_metrics(distmat, q_pids, g_pids, q_cams, g_cams, max_rank: int = 20):
    """The same SYSU definitions, one query at a time (stable argsort, np.unique deduplication)."""
    cmc_sum = np.zeros(max_rank)
    ap_sum = inp_sum = 0.0
    valid = 0
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        keep = ~((q_cams[i] == 3) & (g_cams[order] == 2))
        ranked = g_pids[order][keep]
        hits = ranked == q_pids[i]
        if not hits.any():
            continue
        valid += 1
        _, first = np.unique(ranked, return_index=True)
        deduped = ranked[np.sort(first)]
        first_rank = int(np.flatnonzero(deduped == q_pids[i])[0]) + 1
        if first_rank <= max_rank:
            cmc_sum[first_rank - 1 :] += 1
        positions = np.flatnonzero(hits) + 1
        ap_sum += float((np.arange(1, len(positions) + 1) / positions).mean())
        inp_sum += len(positions) / positions[-1]
    return cmc_sum / valid, ap_sum / valid, inp_sum / valid, valid


def best_of(repeats: int, fn, *args):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rerank", action="store_true", help="also time k-reciprocal re-ranking")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    p = sysu_sized_problem()
    argv = (p["distmat"], p["q_pids"], p["g_pids"], p["q_cams"], p["g_cams"])
    t_vec, res = best_of(args.repeats, lambda *a: rank_metrics(*a, "sysu"), *argv)
    t_vec64, res64 = best_of(args.repeats, lambda d, *a: rank_metrics(d.astype(np.float64), *a, "sysu"), *argv)
    t_loop, (cmc, m_ap, m_inp, valid) = best_of(args.repeats, loop_rank_metrics, *argv)
    for r in (res, res64):
        assert r.num_valid == valid and np.allclose(r.cmc, cmc), "vectorised and loop results differ"
        assert abs(r.mAP - m_ap) < 1e-9 and abs(r.mINP - m_inp) < 1e-9, "vectorised and loop results differ"
    report = {
        "problem": "3803 queries x 3010 gallery, 96 ids, sysu protocol, float32 distances",
        "vectorised_s": round(t_vec, 4),
        "vectorised_float64_s": round(t_vec64, 4),
        "loop_s": round(t_loop, 4),
        "speedup": round(t_loop / t_vec, 1),
        "speedup_float64": round(t_loop / t_vec64, 1),
        "valid_queries": valid,
        "repeats": args.repeats,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    if args.rerank:
        from mclnet_cli.metrics.rerank import k_reciprocal_distance

        rng = np.random.default_rng(1)
        q, g = rng.normal(size=(3803, 2048)).astype(np.float32), rng.normal(size=(301, 2048)).astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        t_rerank, _ = best_of(1, k_reciprocal_distance, q, g)
        report["rerank_single_shot_s"] = round(t_rerank, 2)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        print(f"{key:22s} {value}")


if __name__ == "__main__":
    main()
