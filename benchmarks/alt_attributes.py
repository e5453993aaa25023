"""What a checkpoint matches on across spectra, on the independent generator's persons.

For every infrared image of a split, the nearest visible image (``bn`` feature, cosine)
is compared with the probe's person on the attributes ``alt_synthetic.py`` drew: how
often the two share the skirt, hat, scarf and texture kind (against a random visible
image: the base rate), and the correlation of stature, girth and of the infrared
intensity of the upper and lower garment. A model that matches on body layout shows
high agreement on skirt, hat and stature for held-out ids; one that relies on cues
without a counterpart across spectra shows the base rate.

    python benchmarks/alt_synthetic.py RAW --ids 90 --seed S
    mclnet prepare sysu RAW --out PREPARED
    python benchmarks/alt_attributes.py RUN/last.pt PREPARED --seed S --ids 90
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from alt_synthetic import Person, draw_person  # noqa: E402
from direction_rank1 import split_features  # noqa: E402

from mclnet_cli.data.records import load_prepared  # noqa: E402
from mclnet_cli.engine.checkpoint import load_model  # noqa: E402
from mclnet_cli.types import Modality  # noqa: E402


def people_of(seed: int, ids: int) -> dict[int, Person]:
    """The persons ``generate_alt(ids=ids, seed=seed)`` drew (the same random stream)."""
    rng = np.random.default_rng([seed, 77])
    return {pid: draw_person(pid, rng) for pid in range(1, ids + 1)}


def _ir_level(material) -> float:
    return material.emissivity * material.temperature


CATEGORIES: dict[str, Callable[[Person], object]] = {
    "skirt": lambda p: p.skirt,
    "hat": lambda p: p.hat,
    "scarf": lambda p: p.scarf is not None,
    "texture": lambda p: p.texture,
}
NUMBERS: dict[str, Callable[[Person], float]] = {
    "stature": lambda p: p.stature,
    "girth": lambda p: p.girth,
    "upper_ir": lambda p: _ir_level(p.upper[0]),
    "lower_ir": lambda p: _ir_level(p.lower),
}


def attribute_agreement(people: dict[int, Person], probes: np.ndarray, matches: np.ndarray,
                        baseline: np.ndarray) -> dict[str, float]:
    """Share of (probe, match) pairs with the same category and correlation of each number."""
    out: dict[str, float] = {}
    for name, attr in CATEGORIES.items():
        out[name] = round(float(np.mean([attr(people[a]) == attr(people[b]) for a, b in zip(probes, matches)])), 3)
        out[f"{name}_base"] = round(float(np.mean([attr(people[a]) == attr(people[b]) for a, b in zip(probes, baseline)])), 3)
    for name, value in NUMBERS.items():
        x = [value(people[a]) for a in probes]
        y = [value(people[b]) for b in matches]
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant attribute: no correlation (nan)
            out[f"{name}_r"] = round(float(np.corrcoef(x, y)[0, 1]), 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("prepared")
    parser.add_argument("--seed", type=int, default=0, help="the seed the set was drawn with")
    parser.add_argument("--ids", type=int, default=90, help="the --ids the set was drawn with")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    people = people_of(args.seed, args.ids)
    loaded = load_model(args.checkpoint, device=torch.device("cpu"))
    samples = load_prepared(args.prepared).samples
    for split in ("train", "test"):
        f, chosen = split_features(loaded, samples, split)
        pids = np.array([samples[i].pid for i in chosen])
        infrared = np.array([samples[i].modality is Modality.INFRARED for i in chosen])
        sim = f[infrared] @ f[~infrared].T
        probes, gallery = pids[infrared], pids[~infrared]
        matches = gallery[sim.argmax(axis=1)]
        baseline = gallery[np.random.default_rng(0).integers(0, len(gallery), len(probes))]
        row = {"split": split, "rank1": round(float(np.mean(matches == probes)), 3)}
        print(json.dumps({**row, **attribute_agreement(people, probes, matches, baseline)}))


if __name__ == "__main__":
    main()
