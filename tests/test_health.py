"""The collapse check (engine/health.py): its rules against reference values, and its wiring
into training (warning, ``health`` in metrics.jsonl and summary.json, ``train.stop_on_collapse``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from mclnet_cli.cli.app import app
from mclnet_cli.config import load_config
from mclnet_cli.engine import health
from mclnet_cli.engine.checkpoint import load_checkpoint
from mclnet_cli.engine.runlog import read_metrics
from mclnet_cli.losses.functional import supcon_loss

runner = CliRunner()

# 4 epochs x 10 steps of 2 ids x 2 images on the 6 training ids of `prepared_dataset`
SHORT = [
    "data.height=64", "data.width=32", "data.resize=bilinear", "data.num_ids=2", "data.num_instances=2",
    "data.workers=0", "train.epochs=4", "train.steps_per_epoch=10", "optim.warmup_epochs=1", "optim.milestones=[3]",
]
COLLAPSE = ["train.health_from_epoch=1"]


@pytest.fixture(scope="module")
def lookalike_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A forced collapse: every person is the same picture (one per spectrum), so no model can tell
    the identities apart and the identity loss cannot fall below ln C."""
    from PIL import Image

    from mclnet_cli.data.records import Modality, Sample, write_prepared

    root = tmp_path_factory.mktemp("lookalike")
    pixels = np.random.default_rng(0).integers(0, 255, size=(32, 16, 3), dtype=np.uint8)
    visible, infrared = root / "visible.png", root / "infrared.png"
    Image.fromarray(pixels).save(visible)
    Image.fromarray(np.repeat(pixels.mean(axis=2, keepdims=True), 3, axis=2).astype(np.uint8)).save(infrared)
    samples = [
        Sample(str(path), pid, cam, modality, "train")
        for pid in range(1, 7)
        for path, cam, modality in ((visible, 1, Modality.VISIBLE), (visible, 2, Modality.VISIBLE),
                                    (infrared, 3, Modality.INFRARED), (infrared, 3, Modality.INFRARED))
    ]
    return write_prepared(root / "prepared", samples, {"dataset": "sysu", "root": str(root)})


def _row(id_loss: float, supcon: float = 0.5, cos: float = 0.7, gap: float = 0.05) -> dict:
    scales = {f"layer{i}": {"cos": cos, "gap": gap, "norm": 1.0, "entropy": 0.9} for i in range(1, 5)}
    return {"parts": {"id": id_loss, "supcon": supcon}, "features": scales}


def test_supcon_chance_is_supcon_of_identical_features() -> None:
    p, k, tau = 4, 4, 0.1
    labels = torch.arange(p).repeat_interleave(k).repeat(2)  # P ids x K images x 2 spectra
    same = torch.ones(len(labels), 8)
    reference = 4 * float(supcon_loss(same, labels, tau))  # summed over the four scales
    assert health.supcon_chance(tau, 2 * p * k) == pytest.approx(reference, rel=1e-6)
    assert reference == pytest.approx(4 * tau * math.log(2 * p * k - 1))


def test_assess_epoch_names_each_sign_of_collapse() -> None:
    c = 60
    chance = math.log(c)
    kw = dict(epoch=5, from_epoch=4, num_classes=c, supcon_at_chance=1.373)
    assert health.assess_epoch(_row(0.5 * chance), **kw).status == "ok"
    at_chance = health.assess_epoch(_row(4.096, supcon=1.372), **kw)  # the run: ln 60 = 4.094
    assert at_chance.collapsed and "identity loss 4.096" in at_chance.reasons[0]
    assert any("SupCon" in r for r in at_chance.reasons)
    assert at_chance.values["id_chance"] == pytest.approx(chance, abs=1e-4)
    # just outside the tolerance: learning; far above ln C (after warm-up): no better than chance
    assert health.assess_epoch(_row((1 - health.ID_TOLERANCE) * chance - 0.01), **kw).status == "ok"
    assert health.assess_epoch(_row(3 * chance), **kw).collapsed
    # identity learning but every scale flat: the retrieval features cannot rank
    flat = health.assess_epoch(_row(1.0, cos=0.999, gap=0.0), **kw)
    assert flat.collapsed and "same way" in flat.reasons[-1]
    one_scale_alive = _row(1.0, cos=0.999, gap=0.0)
    one_scale_alive["features"]["layer2"]["gap"] = 0.05
    assert health.assess_epoch(one_scale_alive, **kw).status == "ok"
    # too early to judge
    assert health.assess_epoch(_row(4.1), **{**kw, "epoch": 3}).status == "not_checked"
    # without the identity term, SupCon at chance decides
    no_id = {"parts": {"supcon": 1.372}, "features": {}}
    assert health.assess_epoch(no_id, **kw).collapsed
    assert health.assess_epoch({"parts": {"supcon": 0.9}}, **kw).status == "ok"


def test_check_from_epoch_defaults() -> None:
    assert health.check_from_epoch(16, 1, 100) == 4  # after a quarter of the schedule (step 500)
    assert health.check_from_epoch(16, 2, 100) == 4  # tiny: its warm-up is its 2 head-only epochs (train.py)
    assert health.check_from_epoch(151, 10, 350) == 38  # the recipe
    assert health.check_from_epoch(8, 1, 25) >= 8  # the quick demo's 200 steps: never judged
    assert health.check_from_epoch(2, 1, 10, configured=0) == 0


def test_degenerate_features() -> None:
    rng = np.random.default_rng(0)
    assert health.degenerate_features(rng.normal(size=(100, 32))) is None
    same = np.ones((100, 32)) + 1e-5 * rng.normal(size=(100, 32))
    cosine = health.degenerate_features(same)
    assert cosine is not None and cosine > 0.999
    assert health.degenerate_features(same[:1]) is None  # one image: nothing to compare
    # the rows are spread over the matrix: a healthy gallery whose first rows are one person is not degenerate
    person = np.ones((70, 32))
    others = rng.normal(size=(930, 32))
    assert health.degenerate_features(np.concatenate([person, others])) is None


def _train(prepared: Path, out: Path, extra: list[str]) -> "object":
    args = ["train", "--preset", "tiny", "--data", str(prepared), "--out", str(out), "--device", "cpu", "--quiet"]
    for item in [*SHORT, *extra]:
        args += ["--set", item]
    return runner.invoke(app, args)


def test_collapsed_run_warns_and_records_health(lookalike_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _train(lookalike_dataset, out, [*COLLAPSE, "train.stop_on_collapse=false"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: training collapsed")]
    assert len(warnings) == 1, result.stderr  # one line, at the first collapsed epoch
    assert "identity loss" in warnings[0] and health.SUGGESTED_CHANGE in warnings[0]
    rows = [r for r in read_metrics(out) if r.get("kind") == "epoch"]
    assert rows[0]["health"]["status"] == "not_checked"
    assert all(r["health"]["status"] == "collapsed" for r in rows[1:])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    assert summary["health"]["status"] == "collapsed" and summary["health"]["first_collapsed_epoch"] == 1


def test_stop_on_collapse_stops_with_exit_1_and_a_restart_command(lookalike_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = _train(lookalike_dataset, out, [*COLLAPSE, "train.stop_on_collapse=true"])
    assert result.exit_code == 1
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "collapsed at epoch 2/4" in error[0] and "train.stop_on_collapse" in error[0]
    assert f"--out {out}-retry" in error[0] and f"--set {health.SUGGESTED_CHANGE}" in error[0]
    assert "Traceback" not in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["epochs_completed"] == 2
    assert summary["health"]["status"] == "collapsed"
    assert int(load_checkpoint(out / "last.pt")["epoch"]) == 2  # the collapsed epoch is kept for a look


def test_short_run_is_not_judged_and_prints_no_warning(prepared_dataset: Path, tmp_path: Path) -> None:
    """40 steps have not learnt yet (the identity loss is still above ln C here): by default no
    epoch of a run this short is judged, so test runs and the quick demo stay quiet."""
    out = tmp_path / "run"
    result = _train(prepared_dataset, out, ["train.stop_on_collapse=true"])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.stderr
    rows = [r for r in read_metrics(out) if r.get("kind") == "epoch"]
    assert [r["health"]["status"] for r in rows] == ["not_checked"] * 4
    assert json.loads((out / "summary.json").read_text())["health"]["status"] == "not_checked"
    # the same run judged from epoch 2 on is flagged: the default is what keeps it quiet
    judged = _train(prepared_dataset, tmp_path / "judged", ["train.stop_on_collapse=false", "train.health_from_epoch=1"])
    assert judged.exit_code == 0 and "warning: training collapsed" in judged.stderr


def test_presets_stop_on_collapse_only_where_documented() -> None:
    assert load_config("tiny").train.stop_on_collapse is True
    for preset in ("base", "sysu", "regdb", "llcm", "official-code"):
        config = load_config(preset)
        assert config.train.stop_on_collapse is False, preset
        assert config.train.health_from_epoch is None, preset
