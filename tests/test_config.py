"""Presets, overrides and their errors."""

import dataclasses
import json

import pytest

from mclnet_cli.config import (
    Config,
    config_from_dict,
    list_presets,
    load_config,
    load_preset_dict,
    parse_override,
)
from mclnet_cli.errors import ConfigError, MclnetDeprecationWarning

EXPECTED_PRESETS = {"base", "sysu", "regdb", "llcm", "tiny", "official-code", "finetune"}


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
    assert tiny.model.arch == "resnet18" and tiny.model.pretrained == "synthetic" and tiny.model.base_channels == 32
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
        ("optim.lrr=0.1", "did you mean 'optim.lr'"),  # the full dotted key, as --set takes it
        ("optimm.lr=0.1", "did you mean 'optim'"),
        ("train.epochs=ten", "train.epochs: expected an integer"),
        ("model.pooling=on", "expected a string, got the boolean True"),
        ("model.pooling=gme", "did you mean 'gem'"),
        ("model.arch=resnet101", "choose from: resnet18, resnet34, resnet50"),
        ("optim.lr", "not of the form key.path=value"),
        ("data.regdb_split=11", "data.regdb_split must be between 1 and 10"),
        ("data.trial=11", "data.regdb_split must be between 1 and 10"),  # the old name of the key
        ("train.amp=maybe", "train.amp: expected true or false"),
        ("data.erasing_p=1.5", "data.erasing_p is a probability and must be in [0, 1], got 1.5"),
        ("data.pseudo_infrared_p=-0.1", "data.pseudo_infrared_p is a probability"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override, message):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "override, meant",
    [
        ("epochs=3", "'train.epochs'"),  # a key of a section given without its section
        ("epoch=3", "'train.epochs'"),
        ("lr=0.1", "'optim.lr'"),
        ("train.epoch=3", "'train.epochs'"),  # misspelt inside its section: still the full key
        ("data.hieght=64", "'data.height'"),
        ("batch_size=8", "'eval.batch_size' or 'index.batch_size'"),  # the same name in two sections
    ],
)
def test_unknown_key_suggests_the_full_dotted_key(override, meant):
    with pytest.raises(ConfigError) as info:
        load_config("tiny", [override])
    assert f"(did you mean {meant}?)" in str(info.value), str(info.value)
    # and the suggestion is a key --set accepts
    first = meant.split(" or ")[0].strip("'")
    value = override.partition("=")[2]
    assert load_config("tiny", [f"{first}={value}"]) is not None


def test_an_unknown_key_like_no_other_suggests_nothing():
    with pytest.raises(ConfigError) as info:
        load_config("tiny", ["frobnicate=1"])
    assert "did you mean" not in str(info.value) and "valid keys: data, model" in str(info.value)


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


# ----------------------------------------------------------------------------
# data.trial -> data.regdb_split: the old name still works for one release


def test_regdb_split_is_the_key_and_the_regdb_preset_sets_it_without_a_warning(recwarn):
    assert "regdb_split" in {f.name for f in dataclasses.fields(Config().data)}
    assert "trial" not in {f.name for f in dataclasses.fields(Config().data)}
    assert load_config("regdb").data.regdb_split == 1
    assert load_config("tiny", ["data.regdb_split=4"]).data.regdb_split == 4
    assert not [w for w in recwarn if issubclass(w.category, MclnetDeprecationWarning)]


def test_shipped_presets_use_no_renamed_key() -> None:
    """Shipped presets are read like a user's file: an old key in one would warn on every use."""
    from mclnet_cli.config import RENAMED_KEYS, list_presets, presets_dir, upgrade_keys
    import yaml

    for name in list_presets():
        data = yaml.safe_load((presets_dir() / f"{name}.yaml").read_text(encoding="utf-8"))
        assert upgrade_keys(data, name)[1] == [], name
    assert "data.trial" in RENAMED_KEYS  # the conversion itself stays for users' files


@pytest.mark.parametrize(
    "args",
    [["presets", "show", "regdb"], ["presets", "show", "regdb", "--json"], ["train", "--preset", "regdb", "--data", "nowhere"]],
    ids=" ".join,
)
def test_the_regdb_preset_gives_no_deprecation_warning(cli_runner, tmp_path, args) -> None:
    from mclnet_cli.cli.app import app

    result = cli_runner.invoke(app, [*args, "--out", str(tmp_path / "run")] if args[0] == "train" else args)
    assert "deprecated" not in result.output and "warning:" not in result.stderr, result.output
    assert result.exit_code == (1 if args[0] == "train" else 0), result.output  # train stops at the missing data


def test_old_key_on_the_command_line_works_with_one_deprecation_message():
    with pytest.warns(MclnetDeprecationWarning) as caught:
        cfg = load_config("tiny", ["data.trial=3"])
    assert cfg.data.regdb_split == 3
    (message,) = [str(w.message) for w in caught]
    assert "data.trial is deprecated, use data.regdb_split" in message and "\n" not in message


def test_old_key_in_a_users_yaml_works_with_a_deprecation_message(tmp_path):
    own = tmp_path / "mine.yaml"
    own.write_text("base: base\ndata:\n  trial: 7\n")
    with pytest.warns(MclnetDeprecationWarning, match=r"mine.yaml: data.trial is deprecated"):
        assert load_config(own).data.regdb_split == 7
    # a later --set of the new name wins over the file's old one
    with pytest.warns(MclnetDeprecationWarning):
        assert load_config(own, ["data.regdb_split=2"]).data.regdb_split == 2


def test_old_and_new_key_in_one_file_is_refused(tmp_path):
    own = tmp_path / "both.yaml"
    own.write_text("data:\n  trial: 3\n  regdb_split: 4\n")
    with pytest.raises(ConfigError, match="both data.trial and data.regdb_split"):
        load_config(own)


def test_saved_configs_with_the_old_key_load_silently(recwarn):
    saved = load_config("regdb", ["data.regdb_split=5"]).to_dict()
    saved["data"]["trial"] = saved["data"].pop("regdb_split")
    before = json.dumps(saved, sort_keys=True)
    cfg = config_from_dict(saved)
    assert cfg.data.regdb_split == 5
    assert json.dumps(saved, sort_keys=True) == before  # the caller's dict is left as it was
    assert not [w for w in recwarn if issubclass(w.category, MclnetDeprecationWarning)]


def test_old_key_through_the_cli_is_one_warning_line(cli_runner):
    from mclnet_cli.cli.app import app

    result = cli_runner.invoke(app, ["presets", "show", "tiny", "--set", "data.trial=2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["data"]["regdb_split"] == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["warning: --set data.trial=2: data.trial is deprecated, use data.regdb_split "
                     "(the old name stops working in the next release)"]
