"""``model.pretrained=synthetic``: whole-network weights shipped with the package."""

from __future__ import annotations

import dataclasses
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
        if value.is_floating_point():  # stored as float16: equal to its rounding, and float32 again
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
    floats = [v for v in obj["state"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
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
