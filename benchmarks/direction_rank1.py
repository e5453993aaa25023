"""Rank-1 by query camera and direction: does a checkpoint match across spectra or only within one?

For each split (train, test) of a prepared SYSU-layout dataset, every image is
embedded with its own stream (``bn`` feature, L2-normalised) and each camera's images
query the visible images of the other cameras; ``ir3->ir6`` and ``vis->vis(other
cam)`` show what each stream learned within its spectrum. A model that only ties
the spectra together per training identity shows high train and near-chance test
values in the infrared -> visible rows (docs/method.md, finding 5).

    python benchmarks/direction_rank1.py RUN/last.pt PREPARED
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from mclnet_cli.data.records import load_prepared
from mclnet_cli.engine.checkpoint import load_model
from mclnet_cli.engine.evaluate import embed_samples
from mclnet_cli.types import Modality


def rank1(sim: np.ndarray, pids: np.ndarray, query: np.ndarray, gallery: np.ndarray) -> float:
    """Percent of ``query`` rows whose most similar ``gallery`` row has the same pid."""
    q, g = np.flatnonzero(query), np.flatnonzero(gallery)
    best = g[sim[np.ix_(q, g)].argmax(axis=1)]
    return round(float((pids[best] == pids[q]).mean()) * 100, 1)


def split_features(loaded, samples, split: str) -> tuple[np.ndarray, list[int]]:
    """Unit ``bn`` features of every image of ``split`` (each through its own stream) and their sample indices."""
    data = loaded.config.data
    chosen = [i for i, s in enumerate(samples) if s.split == split]
    feats, rows = embed_samples(
        loaded.model, samples, chosen, height=data.height, width=data.width, resize=data.resize,
        batch_size=64, device=torch.device("cpu"), features=("bn",),
    )
    f = feats["bn"][rows[chosen]]
    return f / np.linalg.norm(f, axis=1, keepdims=True), chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("prepared")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(args.checkpoint, device=torch.device("cpu"))
    samples = load_prepared(args.prepared).samples
    for split in ("train", "test"):
        f, chosen = split_features(loaded, samples, split)
        sim = f @ f.T
        pids = np.array([samples[i].pid for i in chosen])
        cams = np.array([samples[i].cam for i in chosen])
        infrared = np.array([samples[i].modality is Modality.INFRARED for i in chosen])
        out = {}
        for cam in sorted(set(cams.tolist())):
            query = cams == cam
            out[f"cam{cam}->visible"] = rank1(sim, pids, query, ~infrared & ~query)
        out["ir3->ir6"] = rank1(sim, pids, cams == 3, cams == 6)
        out["chance"] = round(100 / len(set(pids.tolist())), 1)
        print(json.dumps({"split": split, **out}))


if __name__ == "__main__":
    main()
