"""Fine-tuning onto another generator: does ``train --init`` beat the starting checkpoint and a fresh run?

A tiny model trained on one synthetic generator (the *source*) is scored on the
held-out ids of a set drawn by another generator (the *target*), then:

- ``start``: the source checkpoint as it is;
- ``finetune``: ``fit(..., init=source)`` on the target's training ids, the
  ``finetune`` preset's changes applied to ``tiny`` (learning rates a tenth,
  2 warm-up epochs, one decay at three quarters), ``--steps`` steps;
- ``init-tiny-lr``: the same start at ``tiny``'s own from-scratch rates, so the
  two differ only in the schedule;
- ``scratch``: ``tiny`` from its random initialisation, the same steps and schedule
  as ``init-tiny-lr`` (so that one and this one differ only in the weights they start from);
- ``chance``: random unit features on the same trials.

Every score is all-search single-shot mAP / Rank-1 of the ``bn`` feature over
``--trials`` trials on the target's test ids (the SYSU-MM01 protocol on the
SYSU-MM01 layout every generator writes), as ``benchmarks/learnkit.py`` scores.
Data sets are drawn once into ``--cache`` (learnkit's folders, so its runs are reused).

    python benchmarks/finetune_transfer.py --source alt --target walker --source-checkpoint /tmp/exp/runL/last.pt --threads 1
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from learnkit import DEFAULT_IDS, DEFAULT_IMAGES, GENERATORS, chance_map, draw  # noqa: E402

STEPS_PER_EPOCH = 100
RUNS = ("start", "finetune", "init-tiny-lr", "scratch")


def schedule(steps: int, *, finetune: bool) -> list[str]:
    """``--set`` overrides of ``tiny`` for ``steps`` steps: its own rates, or the finetune preset's changes."""
    if steps % STEPS_PER_EPOCH:
        raise SystemExit(f"--steps must be a multiple of {STEPS_PER_EPOCH}")
    epochs = steps // STEPS_PER_EPOCH
    decay = max(1, round(0.75 * epochs))  # tiny: 12 of 16; finetune: 15 of 20
    rates = []
    if finetune:  # the finetune preset's rates relative to the recipe's, applied to tiny's (0.02 -> 0.002, 0.1 -> 0.01)
        from mclnet_cli.config import load_config

        tiny, recipe, tuned = (load_config(name).optim for name in ("tiny", "base", "finetune"))
        rates = [f"optim.lr={tiny.lr * tuned.lr / recipe.lr:.6g}", f"optim.head_lr={tiny.head_lr * tuned.head_lr / recipe.head_lr:.6g}",
                 f"optim.warmup_epochs={min(tuned.warmup_epochs, epochs)}"]
    return [f"train.epochs={epochs}", f"train.steps_per_epoch={STEPS_PER_EPOCH}", f"optim.milestones=[{decay}]", *rates]


def score(checkpoint: Path, prepared: Path, trials: int) -> dict[str, float]:
    from mclnet_cli.engine.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(checkpoint, prepared, protocol="sysu", mode="all", shots=1, trials=trials, device="cpu")
    bn = report.results["bn"]
    return {"mAP": float(bn.mean["mAP"]), "mAP_std": float(bn.std["mAP"]), "rank1": float(bn.mean["rank1"])}


def train(prepared: Path, out: Path, overrides: Sequence[str], init: Path | None) -> dict[str, Any]:
    """Train ``tiny`` with ``overrides`` (from ``init`` when given) into ``out``; its last checkpoint and record."""
    from mclnet_cli.config import load_config
    from mclnet_cli.engine.train import fit
    from mclnet_cli.errors import CollapseError

    if out.exists():
        shutil.rmtree(out)
    config = load_config("tiny", ["data.dataset=synthetic", "data.workers=0", "train.eval_every=0", *overrides])
    start = time.perf_counter()
    stopped = None
    try:
        fit(config, prepared, out, device="cpu", init=init)
    except CollapseError as exc:  # stop_on_collapse: score what it had, and say so
        stopped = str(exc)
    summary = json.loads((out / "summary.json").read_text())
    return {"train_s": round(time.perf_counter() - start, 1), "stopped": stopped, "init": summary.get("init"),
            "final_losses": summary.get("final_losses"), "health": (summary.get("health") or {}).get("status"),
            "checkpoint": str(out / "last.pt")}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=GENERATORS, default="alt")
    parser.add_argument("--target", choices=GENERATORS, default="walker")
    parser.add_argument("--seed", type=int, default=0, help="seed of both data sets and of every training")
    parser.add_argument("--ids", type=int, default=DEFAULT_IDS)
    parser.add_argument("--images-per-camera", type=int, default=DEFAULT_IMAGES)
    parser.add_argument("--source-checkpoint", type=Path, default=None,
                        help="a tiny checkpoint trained on --source (default: train one, tiny as shipped, 1,600 steps)")
    parser.add_argument("--steps", type=int, default=800, help="training steps of finetune, init-tiny-lr and scratch")
    parser.add_argument("--only", default=",".join(RUNS), help=f"comma-separated subset of {','.join(RUNS)}")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/mclnet-bench-data"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/mclnet-bench-finetune"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jsonl", type=Path, default=None, help="also append each row to this file")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(RUNS))
    if unknown:
        raise SystemExit(f"--only: unknown run(s) {unknown}; choose from {RUNS}")
    size = f"s{args.seed}-i{args.ids}-n{args.images_per_camera}"
    target = draw(args.target, args.cache / f"{args.target}-{size}", ids=args.ids, seed=args.seed,
                  images_per_camera=args.images_per_camera)
    source_ckpt = args.source_checkpoint
    if source_ckpt is None and set(only) - {"scratch"}:
        source = draw(args.source, args.cache / f"{args.source}-{size}", ids=args.ids, seed=args.seed,
                      images_per_camera=args.images_per_camera)
        source_ckpt = Path(train(source, args.out / f"source-{args.source}", [f"seed={args.seed}"], None)["checkpoint"])

    base = {"source": args.source, "target": args.target, "seed": args.seed, "steps": args.steps,
            "source_checkpoint": str(source_ckpt) if source_ckpt else None, "trials": args.trials}
    rows = [{**base, "run": "chance", "mAP": chance_map(target, trials=args.trials)}]
    if args.jsonl:
        with args.jsonl.open("a") as handle:
            handle.write(json.dumps(rows[0]) + "\n")
    for name in only:
        row: dict[str, Any] = {**base, "run": name}
        if name == "start":
            row.update(score(source_ckpt, target, args.trials))
        else:
            overrides = [f"seed={args.seed}", *schedule(args.steps, finetune=name == "finetune")]
            row["overrides"] = overrides
            row.update(train(target, args.out / name, overrides, None if name == "scratch" else source_ckpt))
            row.update(score(Path(row["checkpoint"]), target, args.trials))
        rows.append(row)
        print(json.dumps(row, default=str), flush=True)
        if args.jsonl:
            with args.jsonl.open("a") as handle:
                handle.write(json.dumps(row, default=str) + "\n")
    print("| run | steps | mAP | Rank-1 | train s |\n|---|---:|---:|---:|---:|")
    for row in rows:
        steps = 0 if row["run"] in ("start", "chance") else args.steps
        rank1 = f"{row['rank1']:.1f}" if "rank1" in row else "–"
        print(f"| {row['run']} | {steps} | {row['mAP']:.1f} | {rank1} | {row.get('train_s', '–')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
