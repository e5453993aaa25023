"""Fine-tuning transfers: a tiny checkpoint of one generator, fine-tuned on another's set, ranks that set better.

The starting checkpoint is the tiny preset trained briefly on the independent generator
(benchmarks/alt_synthetic.py); the target is a set of the project's generator
(``mclnet prepare synthetic``), whose held-out ids it has never seen. ``fit(..., init=...)``
(what ``train --init`` runs) fine-tunes it on the target's training ids, and the held-out
all-search mAP (SYSU-MM01 protocol, 10 trials, the ``bn`` feature) must rise well above the
starting checkpoint's. A run that parsed ``init`` but trained nothing, or that broke the
loaded network, fails it. The longer version, with a from-scratch run beside it, is
benchmarks/finetune_transfer.py (docs/benchmarks.md, "Fine-tuning onto another generator").
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

THREADS = 1
SOURCE_IDS, TARGET_IDS = 12, 90  # target: 54 train, 9 val (trained on), 27 held-out test ids
SOURCE_STEPS, FINETUNE_STEPS = 60, 300  # 3 epochs each; otherwise the tiny preset (but its hold and MMD input: train())
# Measured with exactly this setting, seeds 0, 1, 2 (docs/benchmarks.md, "Fine-tuning onto another
# generator", the test's rows): held-out mAP of the starting checkpoint 9.1 / 9.1 / 8.2, after the
# fine-tune 19.3 / 16.5 / 20.0, so gains of +10.2 / +7.4 / +11.8; chance (random features) 8.5 / 8.4 / 8.3.
# Fine-tunes that learned little held-out moved it by -1.4 to +3.2 (shorter runs or augmentation off,
# rows there). The margin asked for is 3, well below half the smallest gain.
MIN_GAIN = 3.0


def draw(generator: str, root: Path, ids: int, seed: int) -> Path:
    from mclnet_cli.data.prepare import prepare_dataset

    if generator == "alt":
        from alt_synthetic import generate_alt

        generate_alt(root / "raw", ids=ids, seed=seed, images_per_camera=2)
    else:
        from mclnet_cli.data.synthetic import generate_synthetic

        generate_synthetic(root / "raw", ids=ids, seed=seed, images_per_camera=2)
    prepare_dataset("sysu", root / "raw", root / "prepared", label=f"synthetic-{generator}", workers=1)
    return root / "prepared"


def train(data: Path, out: Path, steps: int, seed: int, init: Path | None = None):
    from mclnet_cli.config import load_config
    from mclnet_cli.engine.train import fit

    config = load_config("tiny", [
        f"seed={seed}", "data.dataset=synthetic", "data.workers=0", "train.eval_every=0", "train.epochs=3",
        f"train.steps_per_epoch={steps // 3}", "optim.milestones=[2]",
        # measured before tiny's head-only start and standardised MMD (2026-12-07): every step trains the backbone
        "optim.head_only_epochs=0", "loss.mmd_feature=pool",
    ])
    return fit(config, data, out, device="cpu", init=init)


def held_out_map(checkpoint: Path, data: Path) -> float:
    from mclnet_cli.engine.evaluate import evaluate_checkpoint

    report = evaluate_checkpoint(checkpoint, data, protocol="sysu", mode="all", shots=1, trials=10, device="cpu")
    return float(report.results["bn"].mean["mAP"])


@pytest.mark.slow
def test_finetuning_onto_another_generator_beats_the_starting_checkpoint(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        source = draw("alt", tmp_path / "alt", SOURCE_IDS, seed=0)
        target = draw("project", tmp_path / "project", TARGET_IDS, seed=0)
        start = train(source, tmp_path / "source", SOURCE_STEPS, seed=0).last_checkpoint
        before = held_out_map(start, target)
        result = train(target, tmp_path / "finetune", FINETUNE_STEPS, seed=0, init=start)
        after = held_out_map(result.last_checkpoint, target)
    finally:
        torch.set_num_threads(threads)
    assert result.status == "complete"
    init = json.loads((tmp_path / "finetune" / "summary.json").read_text())["init"]
    assert init["path"] == str(Path(start).resolve()) and init["classifier"] == "re-made"  # 8 identities there, 63 here
    assert (init["init_classes"], init["classes"]) == (8, 63)
    assert after - before > MIN_GAIN, f"held-out mAP {before:.1f} -> {after:.1f} after fine-tuning (asked: +{MIN_GAIN})"
