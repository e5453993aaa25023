"""Each closed choice is spelled once (config.py); every builder and CLI option takes exactly those names."""

from __future__ import annotations

import torch

from mclnet_cli import config
from mclnet_cli.config import CHOICES, names


def test_choices_cover_every_closed_field_of_the_schema() -> None:
    assert CHOICES == {
        "data.dataset": names(config.Dataset),
        "data.resize": names(config.ResizeFilter),
        "data.identity_draw": names(config.IdentityDraw),
        "model.arch": names(config.Arch),
        "model.pooling": names(config.Pooling),
        "loss.mmd_bandwidth": names(config.MmdBandwidth),
        "loss.mmd_feature": names(config.MmdFeature),
        "optim.name": names(config.OptimName),
        "train.steps_rule": names(config.StepsRule),
        "eval.protocol": names(config.Protocol),
        "eval.mode": names(config.SysuMode),
        "eval.direction": names(config.Direction),
        "index.kind": names(config.IndexKind),
    }


def test_every_name_has_a_builder_and_builders_have_no_other_names() -> None:
    from mclnet_cli.data.transforms import RESIZE_FILTERS
    from mclnet_cli.engine.optim import build_optimizer
    from mclnet_cli.index.store import BUILD_KINDS, KINDS
    from mclnet_cli.metrics.protocols import DIRECTIONS, DRAWS, PROTOCOLS, SYSU_MODES
    from mclnet_cli.model.backbone import ARCHS
    from mclnet_cli.model.heads import POOLINGS, build_pooling

    assert tuple(ARCHS) == names(config.Arch)
    assert tuple(RESIZE_FILTERS) == names(config.ResizeFilter)
    assert POOLINGS == names(config.Pooling)
    for pooling in POOLINGS:
        assert build_pooling(pooling)(torch.ones(1, 2, 3, 3)).shape == (1, 2)
    model = torch.nn.Module()
    model.neck = torch.nn.Linear(2, 2)
    model.body = torch.nn.Linear(2, 2)
    model.head_parameters = lambda: model.neck.parameters()
    for name in names(config.OptimName):
        optimizer = build_optimizer(model, config.OptimConfig(name=name))
        assert type(optimizer).__name__.lower() == name
    assert PROTOCOLS == names(config.Protocol) and SYSU_MODES == names(config.SysuMode)
    assert set(DIRECTIONS) | {"both"} == set(names(config.Direction)) and DRAWS == names(config.Draws)
    assert BUILD_KINDS == names(config.IndexKind) and set(BUILD_KINDS) - set(KINDS) == {"auto"}


def test_cli_choices_are_the_config_names() -> None:
    from mclnet_cli.cli import index, options

    assert tuple(k.value for k in index.IndexKind) == names(config.IndexKind)
    assert options.PROTOCOLS == names(config.Protocol) and options.SYSU_MODES == names(config.SysuMode)
    assert options.DIRECTIONS == names(config.Direction) and options.DRAWS == names(config.Draws)
    assert options.DEVICES == names(config.Device)
