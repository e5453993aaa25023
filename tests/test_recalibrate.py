"""BNNeck statistics from inference-mode f4 (``train.recalibrate_neck``): the statistics, the module, the wiring."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mclnet_cli.config import load_config
from mclnet_cli.data.loader import training_samples
from mclnet_cli.data.records import load_prepared
from mclnet_cli.data import transforms
from mclnet_cli.data.images import load_rgb
from mclnet_cli.engine.checkpoint import load_checkpoint, load_model
from mclnet_cli.engine.recalibrate import DEGENERATE_SPREAD, mixture_statistics, recalibrate_neck, spaced
from mclnet_cli.engine.runlog import read_metrics
from mclnet_cli.engine.train import fit
from mclnet_cli.model import build_model
from mclnet_cli.types import Modality

FAST = ["data.num_ids=2", "data.num_instances=2", "data.workers=0", "train.steps_per_epoch=2",
        "optim.warmup_epochs=1", "optim.milestones=[3]"]


def _reference_f4(model: torch.nn.Module, prepared: Path, config, modality: Modality) -> np.ndarray:
    """Inference-mode f4 of every training image of one spectrum, image by image (no batching)."""
    tf = transforms.test_transform(config.data.height, config.data.width, config.data.resize)
    samples = [s for s in training_samples(load_prepared(prepared), config.data) if s.modality is modality]
    model.eval()
    with torch.no_grad():
        rows = [model.pooled(tf(load_rgb(s.path))[None], modality)[0].double().numpy() for s in samples]
    return np.stack(rows)


def test_mixture_statistics_equal_those_of_the_pooled_rows_for_equal_sets() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(2.0, 1.0, size=(50, 6)), rng.normal(-1.0, 3.0, size=(50, 6))
    mean, var = mixture_statistics(torch.from_numpy(a), torch.from_numpy(b))
    both = np.concatenate([a, b])
    np.testing.assert_allclose(mean.numpy(), both.mean(0), atol=1e-12)
    np.testing.assert_allclose(var.numpy(), both.var(0), atol=1e-12)


def test_mixture_weights_the_spectra_equally_whatever_their_counts() -> None:
    a = torch.zeros(10, 2)  # mean 0
    b = torch.full((2, 2), 4.0)  # mean 4, five times fewer rows
    mean, var = mixture_statistics(a, b)
    assert mean.tolist() == [2.0, 2.0]  # not 4 * 2 / 12
    assert var.tolist() == [4.0, 4.0]  # half the rows at 0, half at 4


def test_spaced_keeps_order_spreads_over_the_list_and_respects_the_limit() -> None:
    items = list(range(10))
    assert spaced(items, 20) == items
    assert spaced(items, 5) == [0, 2, 4, 6, 8]
    assert spaced(items, 3) == [0, 3, 6]


def test_recalibrate_neck_sets_the_statistics_of_inference_f4(prepared_dataset: Path) -> None:
    config = load_config("tiny", [*FAST, "model.pretrained=none"])  # a fresh BNNeck (mean 0, var 1) to shift from
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=6)
    model.train()
    before = model.neck.bn.running_mean.clone()
    report = recalibrate_neck(model, load_prepared(prepared_dataset), config, "cpu")
    assert model.training  # mode restored
    visible = _reference_f4(model, prepared_dataset, config, Modality.VISIBLE)
    infrared = _reference_f4(model, prepared_dataset, config, Modality.INFRARED)
    assert (report.visible_images, report.infrared_images) == (len(visible), len(infrared)) == (18, 18)  # train + val ids
    mean = (visible.mean(0) + infrared.mean(0)) / 2
    var = (visible.var(0) + infrared.var(0)) / 2 + ((visible.mean(0) - infrared.mean(0)) / 2) ** 2
    expected_shift = np.mean(np.abs(mean - before.numpy()) / 1.0)  # a fresh BN: running var 1
    # channels without a resolvable spread (here: dead ones, f4 at GeM's floor) are held constant
    rms = np.sqrt(mean**2 + var)
    steady = (np.sqrt(var) < DEGENERATE_SPREAD * rms) & (rms > 0)
    mean = np.where(steady, 0.0, mean)
    var = np.where(steady, (rms / DEGENERATE_SPREAD) ** 2, var)
    assert report.degenerate_channels == int(steady.sum())
    np.testing.assert_allclose(model.neck.bn.running_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.neck.bn.running_var.numpy(), var, rtol=1e-3, atol=1e-6)
    assert report.shift == pytest.approx(expected_shift, rel=1e-4)


def test_recalibrate_neck_uses_at_most_limit_images_per_spectrum(prepared_dataset: Path) -> None:
    config = load_config("tiny", FAST)
    model = build_model(config.model, num_classes=6)
    report = recalibrate_neck(model, load_prepared(prepared_dataset), config, "cpu", limit=5)
    assert (report.visible_images, report.infrared_images) == (5, 5)


def test_training_with_recalibrate_neck_saves_inference_statistics(prepared_dataset: Path, tmp_path: Path) -> None:
    """If the option were parsed but not applied, last.pt's neck would keep the training-mode running mean."""
    runs = {}
    for flag in ("true", "false"):
        config = load_config("tiny", [*FAST, "train.epochs=1", f"train.recalibrate_neck={flag}"])
        out = tmp_path / flag
        fit(config, prepared_dataset, out, device="cpu")
        runs[flag] = (config, out)
    config, out = runs["true"]
    model = load_model(out / "last.pt").model
    visible = _reference_f4(model, prepared_dataset, config, Modality.VISIBLE)
    infrared = _reference_f4(model, prepared_dataset, config, Modality.INFRARED)
    mean = (visible.mean(0) + infrared.mean(0)) / 2
    np.testing.assert_allclose(model.neck.bn.running_mean.numpy(), mean, rtol=1e-4, atol=1e-5)
    payload = load_checkpoint(out / "last.pt")
    assert payload["neck"]["visible_images"] == 18 and payload["neck"]["shift"] > 0
    assert json.loads((out / "summary.json").read_text())["neck"] == payload["neck"]
    assert read_metrics(out)[-1]["neck"] == payload["neck"]

    config, out = runs["false"]
    plain = load_model(out / "last.pt").model
    visible = _reference_f4(plain, prepared_dataset, config, Modality.VISIBLE)
    infrared = _reference_f4(plain, prepared_dataset, config, Modality.INFRARED)
    mean = (visible.mean(0) + infrared.mean(0)) / 2
    assert not np.allclose(plain.neck.bn.running_mean.numpy(), mean, rtol=1e-3, atol=1e-4)
    assert load_checkpoint(out / "last.pt")["neck"] is None
    assert json.loads((out / "summary.json").read_text())["neck"] is None


def test_mid_run_validation_scores_a_recalibrated_copy_and_leaves_training_state(
    prepared_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Epoch 1 of 2 is validated on a recalibrated copy (kept as best.pt); the live model keeps its statistics."""
    config = load_config("tiny", [*FAST, "train.epochs=2", "train.eval_every=1", "data.train_on_val=false",
                                  "train.recalibrate_neck=true"])
    seen = {}
    from mclnet_cli.engine import train as train_mod

    real = train_mod._save_last

    def spy(run, epoch):
        if epoch == 1:  # after the first epoch: training mode statistics, not the recalibrated copy's
            seen["live"] = run.model.neck.bn.running_mean.clone()
            seen["best"] = load_checkpoint(tmp_path / "run" / "best.pt")
        real(run, epoch)

    monkeypatch.setattr(train_mod, "_save_last", spy)
    fit(config, prepared_dataset, tmp_path / "run", device="cpu")
    best = seen["best"]
    assert best["epoch"] == 1 and best["neck"]["visible_images"] == 12  # train ids only (train_on_val false)
    assert not torch.allclose(best["model"]["neck.bn.running_mean"], seen["live"])
    epoch1 = load_checkpoint(tmp_path / "run" / "last.pt")
    assert epoch1["neck"]["visible_images"] == 12  # the final last.pt is recalibrated too
