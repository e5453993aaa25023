"""Presets, overrides and their errors."""

import dataclasses

import pytest

from mclnet_cli.config import (
    Config,
    config_from_dict,
    list_presets,
    load_config,
    load_preset_dict,
    parse_override,
)
from mclnet_cli.errors import ConfigError

EXPECTED_PRESETS = {"base", "sysu", "regdb", "llcm", "tiny", "official-code"}


def test_all_expected_presets_ship_and_load():
    names = set(list_presets())
    assert EXPECTED_PRESETS <= names
    for name in names:
        cfg = load_config(name)
        assert isinstance(cfg, Config)


def test_method_recipe_in_base():
    cfg = load_config("sysu")
    assert cfg.model.arch == "resnet50"
    assert (cfg.data.height, cfg.data.width) == (288, 144)
    assert (cfg.data.num_ids, cfg.data.num_instances) == (4, 4)
    assert cfg.optim.name == "sgd" and cfg.optim.nesterov and cfg.optim.momentum == 0.9
    assert cfg.optim.lr == 0.01 and cfg.optim.head_lr == 0.1 and cfg.optim.weight_decay == 5e-4
    assert cfg.optim.warmup_epochs == 10 and cfg.optim.milestones == (20, 50)
    assert cfg.train.epochs == 151
    w = cfg.loss.weights
    assert (w.id, w.mmd, w.supcon, w.hks) == (1.0, 0.25, 5.0, 5.0)
    assert cfg.loss.supcon_temperature == 0.1 and cfg.loss.hks_temperature == 1.0
    assert cfg.model.pooling == "gem" and cfg.model.last_stride == 1 and cfg.model.specific_stages == 3


def test_dataset_presets_differ_where_they_should():
    assert load_config("regdb").eval.protocol == "regdb"
    assert load_config("llcm").eval.protocol == "llcm"
    assert load_config("official-code").model.pooling == "avg"
    tiny = load_config("tiny")
    assert tiny.model.arch == "resnet18" and tiny.model.pretrained == "none"
    assert tiny.data.height <= 128 and tiny.data.width <= 64


def test_base_is_merged_one_level_only(tmp_path):
    top = tmp_path / "mine.yaml"
    top.write_text("base: tiny\noptim:\n  lr: 0.5\n")
    # tiny itself has a base, so using it as a base is a second level
    with pytest.raises(ConfigError, match="only one 'base:' level"):
        load_config(top)
    top.write_text("base: base\noptim:\n  lr: 0.5\n")
    cfg = load_config(top)
    assert cfg.optim.lr == 0.5 and cfg.optim.head_lr == 0.1  # untouched keys come from base


def test_overrides_are_typed_through_yaml():
    cfg = load_config("tiny", ["optim.lr=0.02", "train.epochs=3", "optim.milestones=[2, 4]", "loss.mmd_margin=0.5"])
    assert cfg.optim.lr == 0.02 and cfg.train.epochs == 3
    assert cfg.optim.milestones == (2, 4)
    assert cfg.loss.mmd_margin == 0.5
    cfg = load_config("tiny", ["loss.weights.hks=0", "model.pooling=avg", "data.channel_aug=true"])
    assert cfg.loss.weights.hks == 0.0 and cfg.model.pooling == "avg" and cfg.data.channel_aug is True
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert load_config("tiny", ["optim.lr=1e-3"]).optim.lr == 1e-3  # YAML 1.1 reads 1e-3 as a string


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=0.1", "did you mean 'lr'"),
        ("optimm.lr=0.1", "did you mean 'optim'"),
        ("train.epochs=ten", "train.epochs: expected an integer"),
        ("model.pooling=on", "expected a string, got the boolean True"),
        ("model.pooling=gme", "did you mean 'gem'"),
        ("model.arch=resnet101", "choose from: resnet18, resnet34, resnet50"),
        ("optim.lr", "not of the form key.path=value"),
        ("data.trial=11", "data.trial must be between 1 and 10"),
        ("train.amp=maybe", "train.amp: expected true or false"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_preset_suggests_and_lists():
    with pytest.raises(ConfigError, match=r"unknown preset 'sysuu' \(did you mean 'sysu'\?\); choose from: .*tiny"):
        load_config("sysuu")
    with pytest.raises(ConfigError, match="preset file not found"):
        load_config("nowhere/x.yaml")


def test_round_trip_through_dict_is_identity():
    cfg = load_config("llcm", ["seed=7"])
    assert config_from_dict(cfg.to_dict()) == cfg
    assert dataclasses.is_dataclass(cfg) and cfg.seed == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1  # type: ignore[misc]


def test_preset_yaml_on_is_not_silently_a_boolean(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("model:\n  pooling: on\n")
    with pytest.raises(ConfigError, match="quote the value"):
        load_config(path)
    assert load_preset_dict(path)["model"]["pooling"] is True  # what YAML itself does
