"""Does training actually teach the two streams to match a person across spectra?

``test_training_separates_cross_modal_pairs`` trains the ``tiny`` preset (its own
loss weights and schedule shape, shortened) on a small synthetic
cross-spectrum set and then measures, with the retrieval feature, the mean
cosine of same-person visible/infrared pairs minus that of different-person
pairs. An untrained network sits near 0; the margin asked for is a fraction of
what the preset reaches (see the constants), so it holds on any machine while
still failing when a term is mis-wired or the objective collapses (e.g. the HKS
stall recorded in docs/method.md, where the gap stays at about 0.0001).
Threads are pinned so the reductions, hence the numbers, do not depend on the
machine's core count. The feature-statistics helpers are checked against
hand-made inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mclnet_cli.engine.featstats import cross_modal_gap, feature_stats, nest

THREADS = 1
IDS = 12  # 7 train, 1 val, 4 test ids
EPOCHS, STEPS = 4, 15  # 60 optimisation steps
# Measured with this exact setting, seeds 0, 1, 2 (docs/benchmarks.md, "learning test"):
#   retrieval-feature gap over the training ids' images: 0.357 / 0.212 / 0.298 (untrained: 0.001;
#     the preset's neck recalibration is on, as shipped; without it 0.385 / 0.346 / 0.301)
#   layer3 head-feature gap in the last epoch row:        0.187 / 0.170 / 0.184
#   the old stalled setting (HKS 5, specific_stages 3), seed 0: layer3 gap 0.001
# Each margin is at most half the smallest measured value.
BN_MARGIN = 0.1
HEAD_MARGIN = 0.05
# The test asks whether the objective trains, not what augmentation adds over a longer run: the
# tiny preset's erasing, spectrum mixing and pseudo-infrared pairs are switched off for these 60 steps (the values above
# were measured so; with them on, the layer3 gap after 60 steps is about 0.01, docs/benchmarks.md).
AUGMENTATION_OFF = ("data.erasing_p=0", "data.spectrum_p=0", "data.pseudo_infrared_p=0")
# ... and every term from the first step: the preset's MMD gate (docs/method.md, finding 9) would keep
# MMD out of all 60 steps, and the margins above were measured with the whole objective
WHOLE_OBJECTIVE = (
    "loss.mmd_gate=null",
    # the margins below were measured before tiny's head-only start and standardised MMD (2026-12-07):
    # every step trains the backbone and MMD aligns raw f4, as then
    "optim.head_only_epochs=0", "loss.mmd_feature=pool",
)


# --------------------------------------------------------------- feature statistics


def test_gap_is_positive_minus_negative_cross_modal_cosine() -> None:
    # two ids; visible rows 0,1 and infrared rows 2,3; id 0 = rows 0 and 2
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    modalities = torch.tensor([0, 0, 1, 1])
    mean_cos, gap = cross_modal_gap(f, labels, modalities)
    c = 1 / math.sqrt(2)
    pos = [c, 1.0]  # (0,2), (1,3)
    neg = [0.0, c]  # (0,3), (1,2)
    assert gap == pytest.approx(np.mean(pos) - np.mean(neg))
    assert mean_cos == pytest.approx(np.mean(pos + neg))


def test_entropy_is_one_for_constant_features_and_lower_for_peaked() -> None:
    labels = torch.tensor([0, 0])
    modalities = torch.tensor([0, 1])
    flat = feature_stats({"layer4": torch.full((2, 8), 3.0)}, labels, modalities)
    peaked = feature_stats({"layer4": torch.tensor([[10.0] + [0.0] * 7] * 2)}, labels, modalities)
    assert flat["layer4.entropy"] == pytest.approx(1.0)
    assert peaked["layer4.entropy"] < 0.1
    assert flat["layer4.norm"] == pytest.approx(3.0 * math.sqrt(8))
    assert nest(flat)["layer4"]["cos"] == pytest.approx(1.0)


# --------------------------------------------------------------- learning


def cross_modal_gap_of(checkpoint, prepared, splits=("train",)) -> float:
    """Positive-minus-negative cross-modal cosine of the retrieval feature over the images of ``splits``."""
    from mclnet_cli.data.records import Modality, load_prepared
    from mclnet_cli.engine.checkpoint import load_model
    from mclnet_cli.engine.evaluate import embed_samples

    loaded = load_model(checkpoint, device=torch.device("cpu"))
    samples = load_prepared(prepared).samples
    chosen = [i for i, s in enumerate(samples) if s.split in splits]
    features, rows = embed_samples(
        loaded.model, samples, chosen, height=loaded.config.data.height, width=loaded.config.data.width,
        batch_size=64, device=torch.device("cpu"), features=("bn",),
    )
    f = torch.from_numpy(features["bn"][rows[chosen]])
    labels = torch.tensor([samples[i].pid for i in chosen])
    modalities = torch.tensor([0 if samples[i].modality is Modality.VISIBLE else 1 for i in chosen])
    return cross_modal_gap(f, labels, modalities)[1]


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    from mclnet_cli.data.prepare import prepare_dataset
    from mclnet_cli.data.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("learning")
    generate_synthetic(root / "raw", ids=IDS, seed=0, images_per_camera=2)
    prepare_dataset("sysu", root / "raw", root / "prepared", label="synthetic", workers=1)
    return root / "prepared"


def test_training_separates_cross_modal_pairs(tiny_set, tmp_path) -> None:
    """After 60 steps of the tiny preset, same-person visible/infrared pairs are clearly closer than others.

    Two views: the retrieval feature (BNNeck(f4), what evaluate and index use) over the training
    ids' images, and the layer3 head feature in the run's own ``features`` log, which only SupCon
    and HKS train: it stays at 0 when the objective collapses (docs/method.md).
    """
    from mclnet_cli.config import load_config
    from mclnet_cli.engine.runlog import read_metrics
    from mclnet_cli.engine.train import fit

    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        config = load_config("tiny", [
            "seed=0", "data.dataset=synthetic", "data.workers=0", "train.eval_every=0",
            f"train.epochs={EPOCHS}", f"train.steps_per_epoch={STEPS}", "optim.milestones=[3]",
            *AUGMENTATION_OFF,
            *WHOLE_OBJECTIVE,
        ])
        result = fit(config, tiny_set, tmp_path / "run", device="cpu")
        assert result.status == "complete"
        gap = cross_modal_gap_of(result.last_checkpoint, tiny_set)
    finally:
        torch.set_num_threads(threads)
    rows = [r for r in read_metrics(tmp_path / "run") if r.get("kind") == "epoch"]
    head_gap = rows[-1]["features"]["layer3"]["gap"]
    assert gap > BN_MARGIN, f"retrieval feature: same-person cross-modal cosine exceeds other-person by only {gap:.4f}"
    assert head_gap > HEAD_MARGIN, f"layer3 head feature: cross-modal gap only {head_gap:.4f} (collapsed objective?)"
