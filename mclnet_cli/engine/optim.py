"""Optimiser and learning-rate schedule of the MCLNet recipe.

Two parameter groups: the BNNeck + classifier (``optim.head_lr``, 0.1 in the
method) and everything else (``optim.lr``, 0.01). The schedule is per epoch: a
linear warm-up ``lr * (e + 1) / warmup_epochs`` for ``e < warmup_epochs``, then
``lr * gamma ** (number of milestones <= e)`` (x0.1 at 20, x0.01 at 50).
With ``optim.head_only_epochs`` = N (not in the method) the backbone group's rate is
0 for the first N epochs: a new classifier is fitted on the start's weights before
they move (a fresh classifier's first gradients otherwise reshape a good start). The
backbone's BatchNorm statistics still follow the new data in those epochs.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any, Sequence

import torch
from torch import nn

from mclnet_cli.config import OptimConfig
from mclnet_cli.errors import ConfigError

HEAD_GROUP = "head"
BACKBONE_GROUP = "backbone"


def lr_factor(epoch: int, warmup_epochs: int, milestones: Sequence[int], gamma: float) -> float:
    """Multiplier of the base lr at ``epoch`` (0-based): linear warm-up, then step decay."""
    if warmup_epochs > 0 and epoch < warmup_epochs:
        return (epoch + 1) / warmup_epochs
    return gamma ** bisect_right(sorted(milestones), epoch)


def group_factor(group: str, epoch: int, cfg: OptimConfig) -> float:
    """Multiplier of ``group``'s base lr at ``epoch``: :func:`lr_factor`, and 0 for the backbone while head-only."""
    if group == BACKBONE_GROUP and epoch < cfg.head_only_epochs:
        return 0.0
    return lr_factor(epoch, cfg.warmup_epochs, tuple(cfg.milestones), cfg.gamma)


def parameter_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """``[{"name": "head", lr: head_lr, ...}, {"name": "backbone", lr: lr, ...}]``, disjoint and complete.

    The head group is ``model.head_parameters()`` (BNNeck + classifier); every other
    trainable parameter goes to the backbone group, so nothing is left untrained.
    """
    module = getattr(model, "module", model)
    head = [p for p in module.head_parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    if len(head_ids) != len(head):
        raise ConfigError("model.head_parameters() lists a parameter twice")
    rest = [p for p in module.parameters() if p.requires_grad and id(p) not in head_ids]
    if not head or not rest:
        raise ConfigError("the model must have both head and backbone parameters to train")
    return [
        {"params": head, "lr": cfg.head_lr, "name": HEAD_GROUP},
        {"params": rest, "lr": cfg.lr, "name": BACKBONE_GROUP},
    ]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov, weight decay) or Adam over the two parameter groups."""
    groups = parameter_groups(model, cfg)
    if cfg.name == "sgd":
        nesterov = cfg.nesterov and cfg.momentum > 0
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise ConfigError(f"optim.name {cfg.name!r} is not known; choose from: sgd, adam")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-epoch ``LambdaLR`` (one factor per group, :func:`group_factor`): call ``step()`` once after each epoch."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=_group_factors(optimizer, cfg))


def _group_factors(optimizer: torch.optim.Optimizer, cfg: OptimConfig) -> list:
    """One factor function per parameter group. Plain functions on purpose: ``LambdaLR.state_dict``
    stores them as None (a callable object's attributes would be pickled into every checkpoint)."""

    def factor_of(name: str):
        def factor(epoch: int) -> float:
            return group_factor(name, epoch, cfg)

        return factor

    return [factor_of(str(group.get("name"))) for group in optimizer.param_groups]


def _same(key: str, stored: Any, current: Any) -> bool:
    """Whether a stored ``optim`` value equals the current one (a JSON list and a tuple alike)."""
    if key == "milestones":
        return tuple(stored or ()) == tuple(current)
    return stored == current


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current lr of each named parameter group (for logging)."""
    return {str(g.get("name", i)): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


# optim.* keys that --resume may change (optim.name may not: the stored optimizer state is of its kind).
RESUMABLE_KEYS = ("lr", "head_lr", "momentum", "weight_decay", "warmup_epochs", "milestones", "gamma", "head_only_epochs")


def retune_after_resume(
    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR, stored: Any, cfg: OptimConfig
) -> list[str]:
    """Apply ``optim.*`` values changed on ``--resume`` after the run's optimizer/scheduler state was loaded.

    ``stored`` is the run's ``optim`` config section. Base learning rates, momentum
    and weight decay of each group are set from ``cfg`` and the current rate is
    recomputed for the epoch reached (the schedule itself always follows ``cfg``).
    Returns one note per change, for the user (e.g. lowering the rate after a NaN stop).
    """
    if not isinstance(stored, dict):
        return []
    defaults = OptimConfig()
    # a key the run's config lacks (a run older than the key) had the default's behaviour
    stored = {key: getattr(defaults, key) for key in RESUMABLE_KEYS} | dict(stored)
    changed = [key for key in RESUMABLE_KEYS if not _same(key, stored[key], getattr(cfg, key))]
    if not changed:
        return []
    bases = {HEAD_GROUP: cfg.head_lr, BACKBONE_GROUP: cfg.lr}
    scheduler.base_lrs = [float(bases.get(str(group.get("name")), cfg.lr)) for group in optimizer.param_groups]
    epoch = int(scheduler.last_epoch)
    scheduler.lr_lambdas = _group_factors(optimizer, cfg)
    for group, base in zip(optimizer.param_groups, scheduler.base_lrs):
        group["initial_lr"] = base
        group["lr"] = base * group_factor(str(group.get("name")), epoch, cfg)
        if "momentum" in group:
            group["momentum"] = cfg.momentum
        group["weight_decay"] = cfg.weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]  # what get_last_lr() reports
    moves = ", ".join(f"optim.{key} {stored[key]!r} -> {getattr(cfg, key)!r}" for key in changed)
    return [f"note: resuming with changed {moves}"]
