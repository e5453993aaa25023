"""Which stream is short: cross- and single-spectrum mAP of a checkpoint on a prepared set's test ids.

A diagnosis, not a protocol. Every test image of one spectrum queries every test
image of the other (``infrared->visible``) or of its own (``visible->visible``,
``infrared->infrared``), the same camera excluded (so the query itself too), full
gallery, ``bn`` feature (or ``--feature``), cosine. Beside each figure: the same
with random features, so a ratio to chance reads as in docs/benchmarks.md. When
``visible->visible`` is near chance while ``infrared->infrared`` is not, the
visible stream is what limits cross-spectrum retrieval on that data.

    python benchmarks/modality_map.py RUN/last.pt PREPARED [--feature bn] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

DIRECTIONS = (("infrared", "visible"), ("visible", "visible"), ("infrared", "infrared"))


def direction_map(
    query: np.ndarray, gallery: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_cams: np.ndarray,
    g_cams: np.ndarray,
) -> tuple[float, int]:
    """mAP (percent) of L2-normalised ``query`` against ``gallery``, the query's own camera excluded, and how
    many queries kept a true match (the others are not in the mean)."""
    from mclnet_cli.engine.evaluate import trial_distances
    from mclnet_cli.metrics.ranking import evaluate_ranking

    distmat = trial_distances(query, gallery)  # 1 - cosine, as evaluate scores a trial
    valid = q_cams[:, None] != g_cams[None, :]
    result = evaluate_ranking(distmat, q_pids, g_pids, valid_mask=valid)
    return 100.0 * float(result.mAP), int(result.num_valid)


def modality_maps(
    checkpoint: Path, prepared: Path, feature: str = "bn", seed: int = 0, draws: int = 5,
) -> dict[str, dict[str, float]]:
    """``{"infrared->visible": {"mAP": .., "chance": .., "queries": ..}, ...}`` over the test split of
    ``prepared``; chance is the mean over ``draws`` sets of random features."""
    from mclnet_cli.data.records import load_prepared
    from mclnet_cli.engine.checkpoint import load_model
    from mclnet_cli.engine.evaluate import embed_samples, l2_normalise

    samples = load_prepared(prepared).samples
    test = [i for i, s in enumerate(samples) if s.split == "test"]
    if not test or any(samples[i].cam < 0 for i in test):
        raise SystemExit(f"{prepared}: needs test images with known cameras (the own camera is excluded)")
    arrays, rows = embed_samples(load_model(checkpoint), samples, test, batch_size=64, device="cpu", features=(feature,))
    features = l2_normalise(arrays[feature])
    rng = np.random.default_rng(seed)
    randoms = [l2_normalise(rng.normal(size=features.shape).astype(np.float32)) for _ in range(draws)]

    def part(modality: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chosen = [i for i in test if samples[i].modality.value == modality]
        return (rows[chosen], np.array([samples[i].pid for i in chosen]), np.array([samples[i].cam for i in chosen]))

    out: dict[str, dict[str, float]] = {}
    for q_mod, g_mod in DIRECTIONS:
        (q_rows, q_pids, q_cams), (g_rows, g_pids, g_cams) = part(q_mod), part(g_mod)
        score, queries = direction_map(features[q_rows], features[g_rows], q_pids, g_pids, q_cams, g_cams)
        chance = [direction_map(r[q_rows], r[g_rows], q_pids, g_pids, q_cams, g_cams)[0] for r in randoms]
        out[f"{q_mod}->{g_mod}"] = {"mAP": score, "chance": float(np.mean(chance)), "queries": queries}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("prepared", type=Path)
    parser.add_argument("--feature", default="bn", choices=("bn", "pool"))
    parser.add_argument("--seed", type=int, default=0, help="seed of the random features")
    parser.add_argument("--draws", type=int, default=5, help="sets of random features averaged for chance")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result = modality_maps(args.checkpoint, args.prepared, args.feature, args.seed, args.draws)
    if args.json:
        print(json.dumps(result))
    else:
        for name, row in result.items():
            print(f"{name:22s} mAP {row['mAP']:5.1f}  chance {row['chance']:5.1f}  ({row['mAP'] / row['chance']:.2f}x, "
                  f"{row['queries']} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
