"""Ablation of MCLNet's loss terms at small scale: which term does what, on two generators.

Trains the same preset (default ``tiny``, from scratch) with

    id          ID only
    id+sc       ID + SupCon
    id+sc+hks   ID + SupCon + HKS
    full        ID + SupCon + HKS + MMD (the preset's own weights)
    hks=0/1/5   the full objective with the HKS weight set to 0, 1, 5
    id+triplet  the plain baseline MCLNet extends: ID + cross-modal batch-hard triplet

on the tuning generators (benchmarks/learnkit.py: project, alt, nir, walker; the held-out
``crowd`` only when named), over several seeds (the seed draws the dataset and
initialises training), and writes a markdown table of mean ± std all-search
mAP / Rank-1 (10 trials each) and training wall time, plus the chance mAP of
random features on each dataset. Rows whose objective is identical to another
(e.g. ``hks=5`` when the preset's HKS weight is 5) are computed once and shown
under both names.

    python benchmarks/ablation.py                         # everything, 3 seeds (long on a CPU)
    python benchmarks/ablation.py --epochs 6 --steps 25 --seeds 0   # reduced, labelled as such
    python benchmarks/ablation.py --only full,id --generators alt --markdown table.md

Every run appends one JSON line to ``--jsonl`` so an interrupted ablation keeps
what it measured; ``--resume`` skips runs already there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from learnkit import DEFAULT_IDS, DEFAULT_IMAGES, TUNING_GENERATORS, chance_map, draw, train_and_score  # noqa: E402

VARIANTS: dict[str, list[str]] = {
    "id": ["loss.weights.supcon=0", "loss.weights.hks=0", "loss.weights.mmd=0"],
    "id+sc": ["loss.weights.hks=0", "loss.weights.mmd=0"],
    "id+sc+hks": ["loss.weights.mmd=0"],
    "full": [],
    "hks=0": ["loss.weights.hks=0"],
    "hks=1": ["loss.weights.hks=1"],
    "hks=5": ["loss.weights.hks=5"],
    "id+triplet": ["loss.weights.supcon=0", "loss.weights.hks=0", "loss.weights.mmd=0", "loss.weights.triplet=1"],
}
LABELS = {
    "id": "ID only",
    "id+sc": "ID + SupCon",
    "id+sc+hks": "ID + SupCon + HKS",
    "full": "full (ID + SupCon + HKS + MMD)",
    "hks=0": "full, HKS weight 0",
    "hks=1": "full, HKS weight 1",
    "hks=5": "full, HKS weight 5",
    "id+triplet": "baseline: ID + cross-modal triplet",
}


def resolved_weights(preset: str, overrides: Sequence[str]) -> tuple:
    """The loss weights a variant trains with (to run identical objectives once)."""
    import dataclasses

    from mclnet_cli.config import load_config

    weights = load_config(preset, list(overrides)).loss.weights
    return tuple(sorted(dataclasses.asdict(weights).items()))


def _fmt(values: list[float], digits: int = 1) -> str:
    if not values:
        return "–"
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown(rows: list[dict], chance_of: dict[tuple[str, int], float], variants: Sequence[str],
             generators: Sequence[str], header: str) -> str:
    """The table: per generator mAP, Rank-1, mAP / chance of the seed's own dataset, train time."""
    lines = [header, ""]
    lines.append("| objective | " + " | ".join(
        f"{g}: mAP | {g}: Rank-1 | {g}: x chance | {g}: train s" for g in generators) + " |")
    lines.append("|---|" + "---|" * (4 * len(generators)))
    for name in variants:
        cells = []
        for g in generators:
            mine = [r for r in rows if r["variant"] == name and r["generator"] == g]
            cells += [_fmt([r["mAP"] for r in mine]), _fmt([r["rank1"] for r in mine]),
                      _fmt([r["mAP"] / chance_of[g, r["seed"]] for r in mine], digits=2),
                      _fmt([r["train_s"] for r in mine])]
        seeds = sorted({r["seed"] for r in rows if r["variant"] == name})
        lines.append(f"| {LABELS[name]} (seeds {','.join(map(str, seeds)) or '–'}) | " + " | ".join(cells) + " |")
    cells = []
    for g in generators:
        values = [v for (gen, _), v in sorted(chance_of.items()) if gen == g]
        cells += [_fmt(values), "–", "1", "–"] if values else ["–"] * 4
    lines.append("| chance (random features, each seed's dataset) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--generators", default=",".join(TUNING_GENERATORS),
                        help="comma list; default: the tuning generators (name crowd, the held-out one, to report on it)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--only", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}")
    parser.add_argument("--epochs", type=int, default=None, help="override train.epochs (reduced runs)")
    parser.add_argument("--steps", type=int, default=None, help="override train.steps_per_epoch")
    parser.add_argument("--ids", type=int, default=DEFAULT_IDS)
    parser.add_argument("--images-per-camera", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mclnet-bench-data"))
    parser.add_argument("--work", type=Path, default=Path("/tmp/mclnet-ablation"))
    parser.add_argument("--jsonl", type=Path, default=Path("ablation.jsonl"))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--set", dest="extra", action="append", default=[], help="further overrides for every run")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    generators = [g for g in args.generators.split(",") if g]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    variants = [v for v in args.only.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose from {', '.join(VARIANTS)}")
    schedule = []
    if args.epochs is not None:
        schedule.append(f"train.epochs={args.epochs}")
        # keep the preset's decay at the same fraction of the run
        from mclnet_cli.config import load_config

        cfg = load_config(args.preset)
        ms = [max(1, round(m * args.epochs / cfg.train.epochs)) for m in cfg.optim.milestones]
        schedule.append("optim.milestones=[" + ",".join(map(str, ms)) + "]")
    if args.steps is not None:
        schedule.append(f"train.steps_per_epoch={args.steps}")

    done: list[dict] = []
    if args.resume and args.jsonl.is_file():
        done = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    chance_of: dict[tuple[str, int], float] = {}  # (generator, seed) -> chance mAP of that seed's dataset
    for generator in generators:
        for seed in seeds:
            root = args.cache / f"{generator}-s{seed}-i{args.ids}-n{args.images_per_camera}"
            prepared = draw(generator, root, ids=args.ids, seed=seed, images_per_camera=args.images_per_camera)
            chance_of[generator, seed] = chance_map(prepared)
            computed: dict[tuple, dict] = {}
            for name in variants:
                overrides = [f"seed={seed}", *schedule, *args.extra, *VARIANTS[name]]
                key = resolved_weights(args.preset, overrides)
                previous = next((r for r in done if r["variant"] == name and r["generator"] == generator
                                 and r["seed"] == seed and r["overrides"] == overrides), None)
                if previous is not None:
                    computed[key] = previous
                    continue
                if key in computed:
                    row = dict(computed[key], variant=name, overrides=overrides, same_as=computed[key]["variant"])
                else:
                    result = train_and_score(prepared, args.work / f"{generator}-{seed}-{name}", overrides,
                                             preset=args.preset)
                    result.pop("curve", None)
                    row = {"variant": name, "generator": generator, "seed": seed, "overrides": overrides,
                           "chance_mAP": chance_of[generator, seed], **result}
                    computed[key] = row
                done.append(row)
                with args.jsonl.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row, default=str) + "\n")
                print(f"{generator} seed {seed} {name}: mAP {row['mAP']:.1f} rank1 {row['rank1']:.1f} "
                      f"({row['train_s']:.0f}s)", flush=True)
    rows = [r for r in done if r["generator"] in generators and r["seed"] in seeds]
    preset_weights = ", ".join(f"{k} {v:g}" for k, v in resolved_weights(args.preset, args.extra))
    header = (
        f"Preset `{args.preset}` from scratch (its loss weights: {preset_weights}; each row changes only the "
        f"weights it names); all-search mAP / Rank-1 in percent (10 trials), mean ± std over "
        f"seeds; {args.ids} ids ({args.images_per_camera} images per camera); schedule "
        f"{' '.join(schedule) or 'as the preset'}; {os.cpu_count()} CPUs, torch threads {args.threads}, "
        f"{platform.processor() or platform.machine()}, {datetime.now(timezone.utc).date()}.\n"
        f"Command: `python benchmarks/ablation.py {' '.join(sys.argv[1:] if argv is None else argv)}`"
    )
    table = markdown(rows, chance_of, variants, generators, header)
    print(table)
    if args.markdown is not None:
        args.markdown.write_text(table, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
