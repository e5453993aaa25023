"""``model.pretrained=synthetic``: whole-network weights shipped with the package."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from mclnet_cli.config import load_config
from mclnet_cli.errors import CheckpointError, ConfigError
from mclnet_cli.model import build_model
from mclnet_cli.model import pretrained as packaged_weights
from mclnet_cli.model.pretrained import (
    CLASSIFIER_PREFIX,
    FORMAT,
    PACKAGED,
    load_packaged_into,
    packaged_payload,
    read_packaged,
)


def narrow_cfg(**changes: object):
    """The tiny preset's network from scratch (the architecture the packaged file has)."""
    cfg = load_config("tiny", ["model.pretrained=none", "model.base_channels=32"]).model
    return dataclasses.replace(cfg, **changes)


def write_packaged(path: Path, seed: int = 3, **changes: object) -> dict[str, torch.Tensor]:
    """A packaged file of a randomly initialised narrow network; returns its float32 state."""
    torch.manual_seed(seed)
    cfg = narrow_cfg(**changes)
    model = build_model(cfg, num_classes=7)
    torch.save(packaged_payload(model, cfg, {"made_by": "test"}), path)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_loading_puts_every_weight_but_the_classifier_into_the_network(tmp_path: Path) -> None:
    source = write_packaged(tmp_path / "w.pt")
    torch.manual_seed(11)
    cfg = dataclasses.replace(narrow_cfg(), pretrained="synthetic")
    model = build_model(dataclasses.replace(cfg, pretrained="none"), num_classes=5)
    fresh_classifier = model.neck.classifier.weight.detach().clone()
    load_packaged_into(model, cfg, path=tmp_path / "w.pt")
    state = model.state_dict()
    compared = 0
    for key, value in source.items():
        if key.startswith(CLASSIFIER_PREFIX):
            continue
        if key.endswith(("running_mean", "running_var")):  # BN statistics: float32, exactly
            assert torch.equal(state[key], value), key
        elif value.is_floating_point():  # weights stored as float16: equal to their rounding, and float32 again
            assert state[key].dtype == torch.float32
            assert torch.equal(state[key], value.to(torch.float16).to(torch.float32)), key
        else:
            assert torch.equal(state[key], value), key
        compared += 1
    assert compared == len(source) - 1  # everything but neck.classifier.weight
    assert state["neck.classifier.weight"].shape == (5, fresh_classifier.shape[1])
    assert torch.equal(state["neck.classifier.weight"], fresh_classifier)  # the run's own, untouched


def test_the_file_holds_float16_tensors_and_no_classifier(tmp_path: Path) -> None:
    write_packaged(tmp_path / "w.pt")
    obj = read_packaged("synthetic", tmp_path / "w.pt")
    assert obj["format"] == FORMAT and obj["source"] == {"made_by": "test"}
    assert not any(k.startswith(CLASSIFIER_PREFIX) for k in obj["state"])
    weights = [v for k, v in obj["state"].items() if v.is_floating_point() and "running_" not in k]
    statistics = [v for k, v in obj["state"].items() if k.endswith(("running_mean", "running_var"))]
    assert weights and all(v.dtype == torch.float16 for v in weights)
    assert statistics and all(v.dtype == torch.float32 for v in statistics)
    assert obj["model"]["base_channels"] == 32 and "pretrained" not in obj["model"]


def test_a_network_other_than_the_files_is_refused_naming_the_key(tmp_path: Path) -> None:
    write_packaged(tmp_path / "w.pt")
    for key, value in (("base_channels", 64), ("specific_stages", 3), ("arch", "resnet34")):
        cfg = dataclasses.replace(narrow_cfg(**{key: value}), pretrained="synthetic")
        model = build_model(dataclasses.replace(cfg, pretrained="none"), num_classes=3)
        with pytest.raises(ConfigError, match=rf"model.pretrained=synthetic is a network with model.{key}=") as info:
            load_packaged_into(model, cfg, path=tmp_path / "w.pt")
        assert "\n" not in str(info.value) and f"--set model.{key}=" in str(info.value)


@pytest.mark.parametrize("content", ["garbage", "wrong-format", "missing"])
def test_bad_files_are_one_clear_line(tmp_path: Path, content: str) -> None:
    path = tmp_path / "w.pt"
    if content == "garbage":
        path.write_bytes(b"not a torch file at all")
    elif content == "wrong-format":
        torch.save({"format": "something-else", "state": {}}, path)
    cfg = dataclasses.replace(narrow_cfg(), pretrained="synthetic")
    model = build_model(narrow_cfg(), num_classes=3)
    with pytest.raises(CheckpointError) as info:
        load_packaged_into(model, cfg, path=path)
    text = str(info.value)
    assert text.startswith("model.pretrained=synthetic") and str(path) in text and "\n" not in text
    expected = {"garbage": "cannot read it", "wrong-format": FORMAT, "missing": "file not found"}[content]
    assert expected in text


def test_build_model_reads_the_packaged_file_and_checkpoints_never_do(tmp_path: Path, monkeypatch) -> None:
    source = write_packaged(tmp_path / "w.pt", seed=5)
    monkeypatch.setitem(PACKAGED, "synthetic", tmp_path / "w.pt")
    cfg = dataclasses.replace(narrow_cfg(), pretrained="synthetic")
    model = build_model(cfg, num_classes=4)
    key = "backbone.specific.infrared.0.0.weight"  # the infrared stem's convolution
    assert torch.equal(model.state_dict()[key], source[key].half().float())
    scratch = build_model(narrow_cfg(), num_classes=4)
    assert not torch.equal(scratch.state_dict()[key], model.state_dict()[key])

    from mclnet_cli.engine.checkpoint import checkpoint_payload, load_model, save_checkpoint

    config = load_config("tiny", ["model.pretrained=synthetic", "model.base_channels=32"])
    save_checkpoint(tmp_path / "c.pt", checkpoint_payload(model, config, {1: 0, 2: 1, 3: 2, 4: 3}, kind="last", epoch=1))
    monkeypatch.setitem(PACKAGED, "synthetic", tmp_path / "gone.pt")  # a checkpoint carries its own weights
    loaded = load_model(tmp_path / "c.pt")
    assert torch.equal(loaded.model.state_dict()[key], model.state_dict()[key])
    assert loaded.config.model.pretrained == "synthetic"  # the record of where training started


def test_packaged_names_are_recognised_case_insensitively() -> None:
    assert packaged_weights.is_packaged("synthetic") and packaged_weights.is_packaged(" Synthetic ")
    assert not packaged_weights.is_packaged("imagenet") and not packaged_weights.is_packaged("none")
    assert not packaged_weights.is_packaged("/some/file.pth")


def test_the_shipped_file_is_the_tiny_presets_start() -> None:
    """The file in the package fits ``tiny`` and is what building ``tiny`` loads (not a random start)."""
    config = load_config("tiny")
    assert config.model.pretrained == "synthetic" and PACKAGED["synthetic"].is_file()
    shipped = read_packaged("synthetic")
    assert {k: shipped["model"][k] for k in packaged_weights.FITTING_KEYS} == {
        k: getattr(config.model, k) for k in packaged_weights.FITTING_KEYS
    }
    # made from the project's generators only: the held-out generator never trained it
    assert "crowd" not in shipped["source"]["generators"] and shipped["source"]["made_by"] == "benchmarks/pretrain_tiny.py"
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=3)
    state = model.state_dict()
    for key, value in shipped["state"].items():
        assert torch.equal(state[key], value.to(state[key].dtype)), key
    torch.manual_seed(0)
    scratch = build_model(dataclasses.replace(config.model, pretrained="none"), num_classes=3).state_dict()
    key = "backbone.specific.visible.0.0.weight"
    assert not torch.equal(scratch[key], state[key])
    assert torch.equal(scratch["neck.classifier.weight"], state["neck.classifier.weight"])  # the classifier: the run's own


def test_the_shipped_start_has_no_neck_channel_without_spread() -> None:
    """Its BNNeck statistics survive storage: a variance float16 would round to 0 stays resolvable."""
    from mclnet_cli.engine.recalibrate import steady_statistics

    model = build_model(load_config("tiny").model, num_classes=3)
    _, _, changed = steady_statistics(model.neck.bn.running_mean, model.neck.bn.running_var)
    assert changed == 0


def test_the_demos_untrained_model_is_random_not_the_shipped_start(tmp_path: Path) -> None:
    from mclnet_cli.engine.checkpoint import load_model
    from mclnet_cli.engine.demo import save_untrained

    config = load_config("tiny", ["seed=4"])
    path = save_untrained(config, {1: 0, 2: 1}, tmp_path / "untrained.pt")
    untrained = load_model(path).model.state_dict()
    shipped = read_packaged("synthetic")["state"]
    torch.manual_seed(4)
    fresh = build_model(dataclasses.replace(config.model, pretrained="none"), num_classes=2).state_dict()
    key = "backbone.specific.infrared.0.0.weight"
    assert torch.equal(untrained[key], fresh[key])
    assert not torch.equal(untrained[key], shipped[key].float())
    assert load_model(path).config.model.pretrained == "none"  # its record says what it is
    start = save_untrained(config, {1: 0, 2: 1}, tmp_path / "start.pt", start=True)
    assert torch.equal(load_model(start).model.state_dict()[key], shipped[key].float())
    assert load_model(start).payload["kind"] == "start"


def test_pretrain_tiny_merges_generators_into_one_sysu_tree(tmp_path: Path) -> None:
    """benchmarks/pretrain_tiny.py: people of each generator renumbered apart, all but 12 in training."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import pretrain_tiny

    from mclnet_cli.data.prepare import prepare_dataset
    from mclnet_cli.data.records import load_prepared

    raw = tmp_path / "raw"
    assert pretrain_tiny.draw_merged(raw, ["project", "alt"], ids=10, images_per_camera=1) == 20
    lists = {n: (raw / "exp" / f"{n}.txt").read_text().split(",") for n in ("train_id", "val_id", "test_id", "available_id")}
    assert [int(p) for p in lists["available_id"]] == list(range(1, 21))
    assert len(lists["train_id"]) == 8 and len(lists["val_id"]) == 6 and len(lists["test_id"]) == 6
    pids = {int(d.name) for cam in raw.glob("cam*") for d in cam.iterdir()}
    assert pids <= set(range(1, 21)) and any(p > 10 for p in pids) and any(p <= 10 for p in pids)
    prepare_dataset("sysu", raw, tmp_path / "prepared", workers=1)
    prepared = load_prepared(tmp_path / "prepared")
    assert {s.pid for s in prepared.select("train")} <= set(range(1, 9))
    assert {s.pid for s in prepared.select("test")} <= set(range(15, 21)) and prepared.select("test")
    assert not list(tmp_path.glob("_raw_*"))  # the per-generator drafts are removed


STILL = [  # one step that cannot move the weights beyond float noise
    "optim.lr=1e-9", "optim.head_lr=1e-9", "train.steps_per_epoch=1", "data.num_ids=2",
    "data.num_instances=2", "data.workers=0", "train.recalibrate_neck=false", "loss.mmd_gate=null",
    "train.eval_every=0",
]


def test_training_starts_from_the_packaged_file_and_a_resume_does_not_read_it(
    prepared_dataset: Path, tmp_path: Path, monkeypatch
) -> None:
    from mclnet_cli.engine.checkpoint import file_fingerprint, load_checkpoint
    from mclnet_cli.engine.train import fit

    source = write_packaged(tmp_path / "w.pt", seed=9)
    monkeypatch.setitem(PACKAGED, "synthetic", tmp_path / "w.pt")
    out = tmp_path / "run"
    fit(load_config("tiny", [*STILL, "train.epochs=1"]), prepared_dataset, out, device="cpu")
    after = load_checkpoint(out / "last.pt")["model"]
    for key in ("backbone.specific.visible.0.0.weight", "backbone.specific.infrared.0.0.weight", "neck.bn.weight"):
        assert torch.allclose(after[key], source[key].half().float(), atol=1e-6), key
    env = json.loads((out / "environment.json").read_text())
    assert env["pretrained"] == {"name": "synthetic", "file": "w.pt", "fingerprint": file_fingerprint(tmp_path / "w.pt")}

    monkeypatch.setitem(PACKAGED, "synthetic", tmp_path / "gone.pt")  # last.pt holds every weight a resume needs
    fit(load_config("tiny", [*STILL, "train.epochs=2"]), prepared_dataset, out, device="cpu", resume=True)
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["epoch"] == 2
    assert torch.allclose(resumed["model"]["backbone.specific.visible.0.0.weight"], after["backbone.specific.visible.0.0.weight"], atol=1e-6)


def test_pretrain_tiny_applies_extra_overrides_last() -> None:
    """``--set`` reaches the pretraining config, after (and over) the script's own settings."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import pretrain_tiny

    plain = load_config("tiny", pretrain_tiny.pretrain_overrides(30, 20))
    extra = load_config("tiny", pretrain_tiny.pretrain_overrides(30, 20, ["data.zoom_p=0.5", "loss.mmd_ramp=0.1"]))
    assert (plain.train.epochs, tuple(plain.optim.milestones), plain.model.pretrained) == (30, (20,), "none")
    assert (plain.data.zoom_p, plain.loss.mmd_ramp) == (0.0, 0.25)
    assert (extra.data.zoom_p, extra.loss.mmd_ramp) == (0.5, 0.1)


def test_tinys_first_epochs_train_the_neck_and_classifier_on_the_start(prepared_dataset: Path, tmp_path: Path) -> None:
    """``tiny`` holds the backbone for its first 2 epochs (``optim.head_only_epochs``): through ``fit`` at the
    preset's rates, an epoch leaves every backbone weight at the shipped start's and moves the neck's; the
    third epoch moves the backbone. A preset key parsed but not applied fails here."""
    from mclnet_cli.engine.checkpoint import load_checkpoint
    from mclnet_cli.engine.train import fit

    assert load_config("tiny").optim.head_only_epochs == 2
    shipped = read_packaged("synthetic")["state"]
    fast = ["train.steps_per_epoch=2", "data.num_ids=2", "data.num_instances=2", "data.workers=0",
            "train.recalibrate_neck=false", "train.eval_every=0", "train.stop_on_collapse=false"]
    out = tmp_path / "run"
    fit(load_config("tiny", [*fast, "train.epochs=2"]), prepared_dataset, out, device="cpu")
    held = load_checkpoint(out / "last.pt")["model"]
    conv = [k for k in shipped if k.startswith("backbone.") and k.endswith(".weight") and shipped[k].ndim == 4]
    assert conv and all(torch.equal(held[k], shipped[k].float()) for k in conv)
    assert not torch.allclose(held["neck.bn.weight"], shipped["neck.bn.weight"].float(), atol=1e-4)
    fit(load_config("tiny", [*fast, "train.epochs=3"]), prepared_dataset, out, device="cpu", resume=True)
    moved = load_checkpoint(out / "last.pt")["model"]
    assert any(not torch.allclose(moved[k], held[k], atol=1e-6) for k in conv)
