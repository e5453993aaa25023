"""Optimiser groups and the per-epoch learning-rate schedule of the MCLNet recipe."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mclnet_cli.config import OptimConfig, load_config
from mclnet_cli.engine.optim import build_optimizer, build_scheduler, group_lrs, lr_factor, parameter_groups


class TinyNet(nn.Module):
    """Backbone + BNNeck (frozen bias) + classifier, like MCLNet's head split."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1))
        self.bnneck = nn.BatchNorm1d(4)
        self.bnneck.bias.requires_grad_(False)
        self.classifier = nn.Linear(4, 3, bias=False)

    def head_parameters(self):
        return list(self.bnneck.parameters()) + list(self.classifier.parameters())

    def backbone_parameters(self):
        return list(self.backbone.parameters())


def _reference_lr(base: float, epoch: int) -> float:
    """The recipe written out: warm-up 10 epochs, x0.1 from epoch 20, x0.01 from epoch 50."""
    if epoch < 10:
        return base * (epoch + 1) / 10
    if epoch < 20:
        return base
    if epoch < 50:
        return base * 0.1
    return base * 0.01


@pytest.mark.parametrize("epoch", [0, 9, 10, 19, 20, 49, 50, 150])
def test_lr_factor_matches_recipe_at_key_epochs(epoch: int) -> None:
    assert lr_factor(epoch, 10, (20, 50), 0.1) == pytest.approx(_reference_lr(1.0, epoch))


def test_lr_factor_without_warmup_and_unsorted_milestones() -> None:
    assert lr_factor(0, 0, (5, 2), 0.5) == 1.0
    assert lr_factor(2, 0, (5, 2), 0.5) == 0.5  # one milestone passed
    assert lr_factor(5, 0, (5, 2), 0.5) == 0.25


def test_parameter_groups_are_disjoint_complete_and_have_recipe_lrs() -> None:
    net = TinyNet()
    groups = parameter_groups(net, load_config("base").optim)
    by_name = {g["name"]: g for g in groups}
    assert by_name["head"]["lr"] == pytest.approx(0.1)
    assert by_name["backbone"]["lr"] == pytest.approx(0.01)
    head_ids = {id(p) for p in by_name["head"]["params"]}
    rest_ids = {id(p) for p in by_name["backbone"]["params"]}
    assert not head_ids & rest_ids
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert head_ids | rest_ids == trainable
    assert id(net.bnneck.bias) not in head_ids | rest_ids  # frozen bias is not optimised
    assert head_ids == {id(net.bnneck.weight), id(net.classifier.weight)}


def test_sgd_settings_and_schedule_per_group() -> None:
    cfg = load_config("base").optim
    net = TinyNet()
    opt = build_optimizer(net, cfg)
    assert isinstance(opt, torch.optim.SGD)
    for group in opt.param_groups:
        assert group["momentum"] == 0.9 and group["nesterov"] and group["weight_decay"] == pytest.approx(5e-4)
    sched = build_scheduler(opt, cfg)
    seen = {}
    for epoch in range(151):
        seen[epoch] = group_lrs(opt)
        opt.step()
        sched.step()
    for epoch in (0, 9, 10, 19, 20, 49, 50, 150):
        assert seen[epoch]["head"] == pytest.approx(_reference_lr(0.1, epoch))
        assert seen[epoch]["backbone"] == pytest.approx(_reference_lr(0.01, epoch))


def test_scheduler_state_round_trips_through_weights_only_load(tmp_path) -> None:
    cfg = OptimConfig(warmup_epochs=2, milestones=(3,), gamma=0.1)
    net = TinyNet()
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, cfg)
    for _ in range(3):
        opt.step()
        sched.step()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, tmp_path / "s.pt")
    state = torch.load(tmp_path / "s.pt", weights_only=True)
    opt2 = build_optimizer(TinyNet(), cfg)
    sched2 = build_scheduler(opt2, cfg)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert group_lrs(opt2) == pytest.approx(group_lrs(opt))
    opt2.step()
    sched2.step()
    assert group_lrs(opt2)["backbone"] == pytest.approx(0.01 * 0.1)  # epoch 4: after the milestone


def test_adam_is_selectable() -> None:
    cfg = OptimConfig(name="adam", lr=3e-4, head_lr=3e-3)
    opt = build_optimizer(TinyNet(), cfg)
    assert isinstance(opt, torch.optim.Adam)
    assert group_lrs(opt) == pytest.approx({"head": 3e-3, "backbone": 3e-4})


def test_head_only_epochs_hold_the_backbone_rate_at_zero_then_follow_the_schedule() -> None:
    cfg = OptimConfig(lr=0.01, head_lr=0.1, warmup_epochs=2, milestones=(4,), head_only_epochs=2)
    optimizer = build_optimizer(TinyNet(), cfg)
    scheduler = build_scheduler(optimizer, cfg)
    seen = []
    for _ in range(6):
        seen.append(group_lrs(optimizer))
        optimizer.step()
        scheduler.step()
    assert [round(s["backbone"], 6) for s in seen] == [0.0, 0.0, 0.01, 0.01, 0.001, 0.001]
    assert [round(s["head"], 6) for s in seen] == [0.05, 0.1, 0.1, 0.1, 0.01, 0.01]
    import io

    buffer = io.BytesIO()
    torch.save(scheduler.state_dict(), buffer)  # as last.pt holds it: nothing but plain values
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    assert state["lr_lambdas"] == [None, None]
    optimizer2 = build_optimizer(TinyNet(), cfg)
    restored = build_scheduler(optimizer2, cfg)
    restored.load_state_dict(state)
    assert restored.last_epoch == scheduler.last_epoch
    for _ in range(2):  # and it goes on with the schedule: epochs 6 and 7 at the decayed rate
        optimizer2.step()
        restored.step()
        assert round(group_lrs(optimizer2)["backbone"], 6) == 0.001
    with pytest.raises(Exception, match="optim.head_only_epochs"):
        OptimConfig(head_only_epochs=-1)


def test_head_only_epochs_leave_the_backbone_weights_where_they_started() -> None:
    """Through a real training step: the backbone's weights stay put, the BNNeck's move (a parsed-but-unused key fails)."""
    from mclnet_cli.engine.optim import HEAD_GROUP

    model = TinyNet()
    cfg = OptimConfig(lr=0.5, head_lr=0.5, warmup_epochs=0, milestones=(), head_only_epochs=1, weight_decay=0.1)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def step() -> None:
        optimizer.zero_grad()
        feats = model.backbone(torch.randn(4, 3, 6, 6)).mean(dim=(2, 3))
        model.classifier(model.bnneck(feats)).logsumexp(1).mean().backward()
        optimizer.step()

    step()
    assert torch.equal(model.backbone[0].weight, before["backbone.0.weight"])
    assert not torch.equal(model.classifier.weight, before["classifier.weight"])
    scheduler.step()
    step()
    assert not torch.equal(model.backbone[0].weight, before["backbone.0.weight"])


def test_resume_applies_a_changed_head_only_epochs_even_to_a_run_older_than_the_key() -> None:
    from mclnet_cli.engine.optim import retune_after_resume

    old = OptimConfig(lr=0.01, head_lr=0.1, warmup_epochs=0, milestones=(10,))
    optimizer = build_optimizer(TinyNet(), old)
    scheduler = build_scheduler(optimizer, old)
    optimizer.step()
    scheduler.step()  # epoch 1 reached
    stored = {"lr": 0.01, "head_lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4, "warmup_epochs": 0,
              "milestones": [10], "gamma": 0.1}  # a JSON config from before head_only_epochs: no such key, a list
    assert retune_after_resume(optimizer, scheduler, stored, old) == []  # nothing changed: no note
    new = OptimConfig(lr=0.01, head_lr=0.1, warmup_epochs=0, milestones=(10,), head_only_epochs=3)
    notes = retune_after_resume(optimizer, scheduler, stored, new)
    assert len(notes) == 1 and "optim.head_only_epochs 0 -> 3" in notes[0]
    assert group_lrs(optimizer)["backbone"] == 0.0 and group_lrs(optimizer)["head"] == pytest.approx(0.1)
    for expected in (0.0, 0.01):  # epoch 2 still head-only, epoch 3 the backbone trains
        optimizer.step()
        scheduler.step()
        assert group_lrs(optimizer)["backbone"] == pytest.approx(expected)
