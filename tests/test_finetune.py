"""``mclnet train --init CKPT``: a new run starts from a checkpoint's weights; the finetune preset.

Runs are the tiny preset at a learning rate of 1e-9 for one step, so that after
training the backbone must still equal the --init checkpoint's (a run that parsed
--init but ignored it would start from its own random weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mclnet_cli.cli.app import app
from mclnet_cli.config import flatten, load_config, load_preset_dict, presets_dir
from mclnet_cli.engine.checkpoint import file_fingerprint, load_checkpoint

sys.path.insert(0, str(Path(__file__).parent))
from test_own_data import make_folder, one_error_line  # noqa: E402

runner = CliRunner()
STILL = [  # one step that cannot move the weights beyond float noise, on a tiny batch
    "optim.lr=1e-9", "optim.head_lr=1e-9", "train.epochs=1", "train.steps_per_epoch=1", "data.num_ids=2",
    "data.num_instances=2", "data.workers=0", "train.recalibrate_neck=false", "loss.mmd_gate=null",
]
TRAINED = ("backbone.", "specific_heads.", "shared_heads.")


NARROW = ("model.base_channels=32",)  # tiny's width (the checkpoint factory builds 64 wide)


@pytest.fixture(scope="module")
def own_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Own cameras, 6 people: 4 in train (the classes of a run), 2 in test."""
    from mclnet_cli.data.own import prepare_own

    root = make_folder(tmp_path_factory.mktemp("own") / "mine", cameras=True, pids=tuple(f"id{i}" for i in range(6)))
    report = prepare_own("folder", root, cameras=True, test_fraction=2 / 6, workers=1)
    assert report.split["ids"] == {"train": 4, "test": 2}
    return Path(report.out)


def train(data: Path, out: Path, *extra: str):
    args = ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--threads", "1", "--quiet", "--json"]
    return runner.invoke(app, [*args, *extra, *[arg for item in STILL for arg in ("--set", item)]])


def weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The trained tensors of the backbone and heads (BatchNorm running statistics move in any forward pass)."""
    return {k: v for k, v in state.items() if k.startswith(TRAINED) and v.is_floating_point() and "running_" not in k}


def assert_same(init: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    ours, theirs = weights(after), weights(init)
    assert ours.keys() == theirs.keys() and ours
    for key, value in theirs.items():
        assert torch.allclose(ours[key], value, atol=1e-6), key


def test_init_loads_the_weights_and_keeps_a_classifier_of_the_same_size(
    own_prepared: Path, tmp_path: Path, make_checkpoint
) -> None:
    # tiny's network from random weights (seed 7), so only --init can put these weights into the run
    ckpt = make_checkpoint(tmp_path / "init.pt", seed=7, pids=(1, 2, 3, 4), overrides=NARROW)  # 4 classes, as the 4 training ids
    result = train(own_prepared, tmp_path / "run", "--init", str(ckpt))
    assert result.exit_code == 0, result.output
    init, after = load_checkpoint(ckpt)["model"], load_checkpoint(tmp_path / "run" / "last.pt")
    assert_same(init, after["model"])
    assert torch.allclose(after["model"]["neck.classifier.weight"], init["neck.classifier.weight"], atol=1e-6)
    record = {"path": str(ckpt.resolve()), "fingerprint": file_fingerprint(ckpt), "classifier": "kept",
              "init_classes": 4, "classes": 4}
    summary = json.loads(result.stdout)
    assert summary["init"] == record and after["init"] == record  # last.pt keeps it for a resume
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["init"] == record
    assert json.loads((tmp_path / "run" / "environment.json").read_text())["init"] == record


def test_the_classifier_is_re_made_for_another_number_of_identities(
    own_prepared: Path, tmp_path: Path, make_checkpoint
) -> None:
    ckpt = make_checkpoint(tmp_path / "init.pt", seed=7, pids=(1, 2, 3), overrides=NARROW)
    result = runner.invoke(app, ["train", "--preset", "tiny", "--data", str(own_prepared), "--out", str(tmp_path / "run"),
                                 "--init", str(ckpt), "--threads", "1", *[a for s in STILL for a in ("--set", s)]])
    assert result.exit_code == 0, result.output
    assert "classifier re-made (3 identities there, 4 here)" in " ".join(result.stderr.split())
    after = load_checkpoint(tmp_path / "run" / "last.pt")
    assert_same(load_checkpoint(ckpt)["model"], after["model"])
    assert tuple(after["model"]["neck.classifier.weight"].shape)[0] == 4
    assert after["init"]["classifier"] == "re-made" and after["init"]["init_classes"] == 3


def authors_file(path: Path) -> Path:
    """What the authors' training script saves: their state dict under main_net, numpy metrics beside it."""
    state = {"visible_module.visible.conv1.weight": torch.zeros(4, 3, 7, 7), "classifier.weight": torch.zeros(4, 8)}
    torch.save({"main_net": state, "cmc": np.linspace(0.5, 1.0, 5), "mAP": np.float64(0.5), "epoch": 3}, path)
    return path


def test_an_authors_checkpoint_is_refused_with_the_convert_command(own_prepared: Path, tmp_path: Path) -> None:
    source = authors_file(tmp_path / "best_checkpoint.pth")
    line = one_error_line(train(own_prepared, tmp_path / "run", "--init", str(source)))
    assert f"--init {source} is a checkpoint of the authors' code" in line and f"mclnet convert {source}" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["random bytes", "a list", "missing", "a folder"])
def test_what_is_not_a_checkpoint_is_one_line(own_prepared: Path, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "thing.pt"
    if kind == "random bytes":
        path.write_bytes(b"\x00not a checkpoint\x01" * 8)
    elif kind == "a list":
        torch.save([1, 2, 3], path)
    elif kind == "a folder":
        path.mkdir()
    line = one_error_line(train(own_prepared, tmp_path / "run", "--init", str(path)))
    assert f"--init {path}" in line
    assert {"missing": "not found", "a folder": "is a folder", "a list": "not an mclnet checkpoint"}.get(kind, "") in line


def test_init_with_resume_and_a_model_of_another_shape_are_refused(
    own_prepared: Path, tmp_path: Path, make_checkpoint
) -> None:
    ckpt = make_checkpoint(tmp_path / "init.pt")
    line = one_error_line(train(own_prepared, tmp_path / "run", "--init", str(ckpt), "--resume"))
    assert "--init" in line and "--resume" in line
    other = make_checkpoint(tmp_path / "three.pt", overrides=("model.specific_stages=3",))
    line = one_error_line(train(own_prepared, tmp_path / "run", "--init", str(other)))
    assert "model.specific_stages=3" in line and "--set model.specific_stages=3" in line
    assert not (tmp_path / "run").exists()


def test_the_finetune_preset_is_a_short_gentle_schedule_with_every_change_explained() -> None:
    base, tuned = load_config("base"), load_config("finetune")
    assert tuned.model == base.model  # for a checkpoint of the recipe's network (ResNet-50)
    assert tuned.optim.lr < base.optim.lr and tuned.optim.head_lr < base.optim.head_lr
    assert tuned.train.epochs < base.train.epochs and 0 < tuned.optim.warmup_epochs < base.optim.warmup_epochs
    assert max(tuned.optim.milestones) < tuned.train.epochs
    text = (presets_dir() / "finetune.yaml").read_text(encoding="utf-8")
    own = flatten(yaml.safe_load(text))
    own.pop("base")
    assert own and flatten(load_preset_dict("finetune")) != flatten(load_preset_dict("base"))
    base_values = flatten(base.to_dict())
    for key, value in own.items():
        assert value != base_values[key], key  # only what differs is written
        leaf = key.rsplit(".", 1)[-1]
        line = next(line for line in text.splitlines() if line.strip().startswith(f"{leaf}:"))
        assert "DIFFERS" in line, line
