"""Losses against loop / closed-form references, invariants, and the Criterion contract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mclnet_cli.config import LossConfig, LossWeights
from mclnet_cli.errors import ConfigError
from mclnet_cli.losses import (
    Criterion,
    gaussian_mmd,
    hks_loss,
    id_loss,
    kl_divergence,
    mmd_loss,
    supcon_loss,
    triplet_loss,
)
from mclnet_cli.model import SCALES, ModelOutput


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --------------------------------------------------------------------------- references


def supcon_reference(features: torch.Tensor, labels: list[int], tau: float) -> float:
    """Per-anchor loop over the formula in MCLNET.md, in float64."""
    z = [[v / math.sqrt(sum(u * u for u in f)) for v in f] for f in features.double().tolist()]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    n = len(z)
    per_anchor = []
    for i in range(n):
        pos = [p for p in range(n) if p != i and labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(dot(z[i], z[a]) / tau) for a in range(n) if a != i)
        terms = [math.log(math.exp(dot(z[i], z[p]) / tau) / denom) for p in pos]
        per_anchor.append(-sum(terms) / len(pos))
    return tau * sum(per_anchor) / len(per_anchor)


def kl_reference(p_logits: list[float], q_logits: list[float], t: float) -> float:
    """KL(softmax(p/t) || softmax(q/t)) written out."""
    def softmax(v: list[float]) -> list[float]:
        m = max(v)
        e = [math.exp((x - m) / t) for x in v]
        s = sum(e)
        return [x / s for x in e]

    p, q = softmax(p_logits), softmax(q_logits)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def mmd_reference(x: list[list[float]], y: list[list[float]], mul: float = 2.0, num: int = 5) -> float:
    """Multi-kernel Gaussian MMD with explicit loops."""
    pts = x + y
    n_total = len(pts)
    d = [[sum((a - b) ** 2 for a, b in zip(p, q)) for q in pts] for p in pts]
    bandwidth = sum(map(sum, d)) / (n_total * n_total - n_total) / mul ** (num // 2)
    k = [[sum(math.exp(-d[i][j] / (bandwidth * mul**q)) for q in range(num)) for j in range(n_total)] for i in range(n_total)]
    n = len(x)

    def block_mean(rows: range, cols: range) -> float:
        return sum(k[i][j] for i in rows for j in cols) / (len(rows) * len(cols))

    xs, ys = range(0, n), range(n, n_total)
    return block_mean(xs, xs) + block_mean(ys, ys) - block_mean(xs, ys) - block_mean(ys, xs)


# --------------------------------------------------------------------------- SupCon


def test_supcon_matches_per_anchor_loop() -> None:
    feats = torch.randn(10, 6, generator=_gen(1))
    labels = [0, 0, 1, 1, 1, 2, 2, 3, 4, 4]  # id 3 has no positive: left out of the mean
    for tau in (0.1, 0.5):
        got = supcon_loss(feats, torch.tensor(labels), temperature=tau).item()
        assert got == pytest.approx(supcon_reference(feats, labels, tau), rel=1e-5)


def test_supcon_invariant_to_permutation_and_scale() -> None:
    feats = torch.randn(12, 8, generator=_gen(2))
    labels = torch.tensor([0, 1, 2, 3] * 3)
    base = supcon_loss(feats, labels)
    perm = torch.randperm(12, generator=_gen(3))
    assert supcon_loss(feats[perm], labels[perm]).item() == pytest.approx(base.item(), rel=1e-5)
    scale = torch.rand(12, 1, generator=_gen(4)) * 10 + 0.1  # per-row positive scale
    assert supcon_loss(feats * scale, labels).item() == pytest.approx(base.item(), rel=1e-5)


def test_supcon_prefers_clustered_features() -> None:
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    centres = torch.eye(3) * 5
    clustered = centres[labels] + 0.01 * torch.randn(6, 3, generator=_gen(5))
    shuffled = centres[torch.tensor([0, 1, 2, 0, 1, 2])]
    assert supcon_loss(clustered, labels) < supcon_loss(shuffled, labels)


def test_supcon_without_positives_is_zero_and_differentiable() -> None:
    feats = torch.randn(4, 5, requires_grad=True)
    loss = supcon_loss(feats, torch.tensor([0, 1, 2, 3]))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(feats.grad).all()


# --------------------------------------------------------------------------- KL / HKS


def test_kl_of_identical_inputs_is_zero_and_matches_formula() -> None:
    a = torch.randn(5, 7, generator=_gen(6))
    assert kl_divergence(a, a.clone()).item() == pytest.approx(0.0, abs=1e-6)
    b = torch.randn(5, 7, generator=_gen(7))
    for t in (1.0, 2.0):
        ref = sum(kl_reference(p, q, t) for p, q in zip(a.tolist(), b.tolist())) / 5
        assert kl_divergence(a, b, t).item() == pytest.approx(ref, rel=1e-5)


def test_hks_matches_loop_over_ordered_pairs() -> None:
    feats = [torch.randn(4, 6, generator=_gen(10 + k)) for k in range(4)]
    for t in (1.0, 3.0):
        ref = 0.0
        for i in range(4):
            for j in range(4):
                if i != j:  # KL(teacher f_j || student f_i), batch mean
                    ref += sum(kl_reference(p, q, t) for p, q in zip(feats[j].tolist(), feats[i].tolist())) / 4
        assert hks_loss(feats, t).item() == pytest.approx(ref, rel=1e-5)
    same = torch.randn(3, 6)
    assert hks_loss([same, same, same, same]).item() == pytest.approx(0.0, abs=1e-6)


def test_hks_stops_gradient_through_teacher() -> None:
    student = torch.randn(3, 5, requires_grad=True)
    teacher = torch.randn(3, 5, requires_grad=True)
    kl_divergence(teacher, student).backward()
    assert teacher.grad is None or torch.all(teacher.grad == 0)
    assert student.grad.abs().sum() > 0


# --------------------------------------------------------------------------- MMD


def test_gaussian_mmd_matches_loop_reference() -> None:
    x = torch.randn(3, 4, generator=_gen(20))
    y = torch.randn(5, 4, generator=_gen(21)) + 0.5
    assert gaussian_mmd(x, y).item() == pytest.approx(mmd_reference(x.tolist(), y.tolist()), rel=1e-5)


def test_mmd_of_identical_sets_is_zero_and_grows_with_shift() -> None:
    x = torch.randn(4, 8, generator=_gen(22))
    labels = torch.tensor([0, 0, 1, 1])
    assert mmd_loss(x, x.clone(), labels, labels).item() == pytest.approx(0.0, abs=1e-6)
    values = [mmd_loss(x, x + shift, labels, labels).item() for shift in (0.1, 0.5, 2.0)]
    assert values[0] > 1e-6
    assert values[0] < values[1] < values[2]


def test_mmd_loss_is_mean_over_shared_identities_with_margin() -> None:
    vis = torch.randn(6, 4, generator=_gen(23))
    ir = torch.randn(5, 4, generator=_gen(24))
    vl = torch.tensor([0, 0, 1, 1, 2, 2])  # id 2 visible only
    il = torch.tensor([0, 0, 1, 1, 3])  # id 3 infrared only
    d0 = mmd_reference(vis[:2].tolist(), ir[:2].tolist())
    d1 = mmd_reference(vis[2:4].tolist(), ir[2:4].tolist())
    assert mmd_loss(vis, ir, vl, il).item() == pytest.approx((d0 + d1) / 2, rel=1e-5)
    m = (d0 + d1) / 2  # between the two, so one identity is clipped to 0
    expected = (max(0.0, d0 - m) + max(0.0, d1 - m)) / 2
    assert mmd_loss(vis, ir, vl, il, margin=m).item() == pytest.approx(expected, rel=1e-5)
    assert mmd_loss(vis, ir, torch.tensor([5] * 6), il).item() == 0.0


def _scale_derivative(detach_bandwidth: bool) -> tuple[float, float]:
    """MMD of (s x, s y) at s = 1 and its derivative in s: how the loss moves if the spread shrinks."""
    x = torch.randn(4, 8, generator=_gen(25))
    y = torch.randn(4, 8, generator=_gen(26)) + 1.0  # the other modality, shifted
    labels = torch.tensor([0, 0, 1, 1])
    s = torch.tensor(1.0, requires_grad=True)
    value = mmd_loss(s * x, s * y, labels, labels, detach_bandwidth=detach_bandwidth)
    (grad,) = torch.autograd.grad(value, s)
    return value.item(), grad.item()


def test_mmd_bandwidth_detached_rewards_shrinking_differentiable_does_not() -> None:
    """Same value either way; with the authors' detached bandwidth the gradient says
    'shrink every feature' (d/ds > 0 at s = 1), with a differentiated one it is
    invariant to the scale (d/ds = 0): the mechanism of docs/method.md, finding 2."""
    value_detached, grad_detached = _scale_derivative(True)
    value_diff, grad_diff = _scale_derivative(False)
    assert value_detached == pytest.approx(value_diff, rel=1e-6)
    assert grad_detached > 0.05 * value_detached
    assert abs(grad_diff) < 1e-5
    # and the value itself is scale-invariant in both (the bandwidth follows the data)
    x = torch.randn(4, 8, generator=_gen(27))
    y = torch.randn(4, 8, generator=_gen(28)) + 1.0
    assert gaussian_mmd(3 * x, 3 * y).item() == pytest.approx(gaussian_mmd(x, y).item(), rel=1e-5)


def test_criterion_applies_mmd_bandwidth_setting() -> None:
    """loss.mmd_bandwidth reaches the loss: the criterion's MMD gradient equals the functional
    loss's with the same setting and differs from the default's."""
    from mclnet_cli.config import load_config

    only_mmd = ["loss.weights.id=0", "loss.weights.supcon=0", "loss.weights.hks=0", "loss.weights.mmd=1", "loss.mmd_ramp=null",
                "loss.mmd_feature=pool"]  # the reference below aligns raw f4
    grads = {}
    for setting in ("detached", "differentiable"):
        crit = Criterion.from_config(load_config("tiny", [*only_mmd, f"loss.mmd_bandwidth={setting}"]).loss)
        assert crit.mmd_bandwidth == setting
        out = _fake_output()
        f4 = out.features["layer4"].detach().requires_grad_(True)
        out = ModelOutput(features={**out.features, "layer4": f4}, bn_feature=out.bn_feature, logits=out.logits)
        crit(out, LABELS, MODS).total.backward()
        vis = MODS == 0
        g = f4.detach().clone().requires_grad_(True)
        mmd_loss(g[vis], g[~vis], LABELS[vis], LABELS[~vis], detach_bandwidth=setting == "detached").backward()
        assert torch.allclose(f4.grad, g.grad, atol=1e-6)
        grads[setting] = f4.grad
    assert not torch.allclose(grads["detached"], grads["differentiable"], atol=1e-4)
    with pytest.raises(ConfigError, match="mmd_bandwidth"):
        load_config("tiny", ["loss.mmd_bandwidth=frozen"])


def test_criterion_applies_mmd_feature_setting() -> None:
    """loss.mmd_feature reaches the loss: ``pool`` aligns pre-BN f4 (the method), ``standardized``
    the same f4 standardised per channel over the batch; each equals the functional loss on it."""
    from mclnet_cli.config import load_config
    from mclnet_cli.losses.criterion import standardize

    only_mmd = ["loss.weights.id=0", "loss.weights.supcon=0", "loss.weights.hks=0", "loss.weights.mmd=1", "loss.mmd_ramp=null"]
    vis = MODS == 0
    grads = {}
    for setting in ("pool", "standardized"):
        crit = Criterion.from_config(load_config("tiny", [*only_mmd, f"loss.mmd_feature={setting}"]).loss)
        assert crit.mmd_feature == setting
        out = _fake_output()
        f4 = (3.0 * out.features["layer4"].detach() + 2.0).requires_grad_(True)  # not standardised already
        out = ModelOutput(features={**out.features, "layer4": f4}, bn_feature=out.bn_feature, logits=out.logits)
        loss = crit(out, LABELS, MODS)
        loss.total.backward()
        g = f4.detach().clone().requires_grad_(True)
        z = g if setting == "pool" else (g - g.mean(0)) / torch.sqrt(g.var(0, unbiased=False) + 1e-5)
        reference = mmd_loss(z[vis], z[~vis], LABELS[vis], LABELS[~vis])
        reference.backward()
        assert loss.parts["mmd"].item() == pytest.approx(reference.item(), rel=1e-5)
        assert torch.allclose(f4.grad, g.grad, atol=1e-6)
        grads[setting] = f4.grad
    assert not torch.allclose(grads["pool"], grads["standardized"], atol=1e-4)
    x = torch.randn(6, 4, generator=_gen(61))
    assert torch.allclose(standardize(5 * x - 7), standardize(x), atol=1e-4)
    assert load_config("tiny").loss.mmd_feature == "standardized" and load_config("sysu").loss.mmd_feature == "pool"
    with pytest.raises(ConfigError, match="mmd_feature"):
        load_config("tiny", ["loss.mmd_feature=bn"])


def test_standardized_mmd_has_no_shrink_direction() -> None:
    """Pre-BN, the detached bandwidth rewards shrinking the spread of every feature (d/ds > 0);
    standardised per channel over the batch, with no learnable scale to shrink instead, it does not
    (docs/method.md, finding 11)."""
    from mclnet_cli.losses.criterion import standardize

    x = torch.randn(4, 8, generator=_gen(25))
    y = torch.randn(4, 8, generator=_gen(26)) + 1.0
    labels = torch.tensor([0, 0, 1, 1])
    s = torch.tensor(1.0, requires_grad=True)
    centre = torch.cat([x, y]).mean(0)
    f4 = centre + s * (torch.cat([x, y]) - centre)  # the spread around the batch mean, scaled by s
    on_pool = mmd_loss(f4[:4], f4[4:], labels, labels)
    (pool_grad,) = torch.autograd.grad(on_pool, s, retain_graph=True)
    z = standardize(f4)
    on_standardized = mmd_loss(z[:4], z[4:], labels, labels)
    (standardized_grad,) = torch.autograd.grad(on_standardized, s)
    assert pool_grad.item() > 0.05 * on_pool.item()
    assert abs(standardized_grad.item()) < 1e-3 * on_standardized.item()


# --------------------------------------------------------------------------- ID / triplet


def test_id_loss_matches_closed_form() -> None:
    logits = torch.randn(4, 3, generator=_gen(30))
    labels = torch.tensor([0, 2, 1, 2])
    ref = sum(-math.log(math.exp(row[y]) / sum(math.exp(v) for v in row)) for row, y in zip(logits.tolist(), labels.tolist())) / 4
    assert id_loss(logits, labels).item() == pytest.approx(ref, rel=1e-5)
    eps = 0.2
    ref_smooth = 0.0
    for row, y in zip(logits.tolist(), labels.tolist()):
        logz = math.log(sum(math.exp(v) for v in row))
        target = [eps / 3 + (1 - eps) * (k == y) for k in range(3)]
        ref_smooth += -sum(t * (v - logz) for t, v in zip(target, row))
    assert id_loss(logits, labels, label_smoothing=eps).item() == pytest.approx(ref_smooth / 4, rel=1e-5)


def test_triplet_uses_cross_modality_hardest_pairs() -> None:
    feats = torch.randn(8, 5, generator=_gen(31))
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    mods = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    d = torch.cdist(feats.double(), feats.double())
    per_anchor = []
    for i in range(8):
        other = [j for j in range(8) if mods[j] != mods[i]]
        ap = max(d[i, j].item() for j in other if labels[j] == labels[i])
        an = min(d[i, j].item() for j in other if labels[j] != labels[i])
        per_anchor.append(max(0.0, ap - an + 0.3))
    assert triplet_loss(feats, labels, mods, margin=0.3).item() == pytest.approx(sum(per_anchor) / 8, rel=1e-5)


# --------------------------------------------------------------------------- gradients


def test_every_term_has_finite_gradients() -> None:
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    mods = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    feats = [torch.randn(8, 6, generator=_gen(40 + k)).requires_grad_(True) for k in range(4)]
    logits = torch.randn(8, 2, generator=_gen(45)).requires_grad_(True)
    terms = {
        "id": lambda: id_loss(logits, labels),
        "supcon": lambda: supcon_loss(feats[0], labels),
        "hks": lambda: hks_loss(feats),
        "mmd": lambda: mmd_loss(feats[3][:4], feats[3][4:], labels[:4], labels[4:]),
        "mmd_margin": lambda: mmd_loss(feats[3][:4], feats[3][4:], labels[:4], labels[4:], margin=0.01),
        "triplet": lambda: triplet_loss(feats[3], labels, mods),
    }
    for name, fn in terms.items():
        for t in feats + [logits]:
            t.grad = None
        loss = fn()
        assert torch.isfinite(loss), name
        loss.backward()
        grads = [t.grad for t in feats + [logits] if t.grad is not None]
        assert grads, name
        assert all(torch.isfinite(g).all() for g in grads), name
        assert any(g.abs().sum() > 0 for g in grads), name


# --------------------------------------------------------------------------- Criterion


def _fake_output(batch: int = 8, dim: int = 6, classes: int = 2, seed: int = 50) -> ModelOutput:
    g = _gen(seed)
    feats = {s: torch.randn(batch, dim, generator=g).requires_grad_(True) for s in SCALES}
    bn = torch.randn(batch, dim, generator=g)
    logits = torch.randn(batch, classes, generator=g).requires_grad_(True)
    return ModelOutput(features=feats, bn_feature=bn, logits=logits)


LABELS = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
MODS = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])


def test_criterion_total_is_weighted_sum_of_parts() -> None:
    out = _fake_output()
    weights = {"id": 1.0, "supcon": 5.0, "hks": 5.0, "mmd": 0.25, "triplet": 0.5}
    crit = Criterion(weights, mmd_margin=None)
    result = crit(out, LABELS, MODS)
    assert set(result.parts) == set(weights)
    assert all(not p.requires_grad for p in result.parts.values())
    f = out.features
    expected = {
        "id": id_loss(out.logits, LABELS),
        "supcon": sum(supcon_loss(f[s], LABELS) for s in SCALES),
        "hks": hks_loss([f[s] for s in SCALES]),
        "mmd": mmd_loss(f["layer4"][:4], f["layer4"][4:], LABELS[:4], LABELS[4:]),
        "triplet": triplet_loss(f["layer4"], LABELS, MODS),
    }
    for name, value in expected.items():
        assert result.parts[name].item() == pytest.approx(value.item(), rel=1e-5), name
    total = sum(weights[k] * expected[k].item() for k in weights)
    assert result.total.item() == pytest.approx(total, rel=1e-5)
    result.total.backward()
    assert all(t.grad is not None for t in out.features.values())


def test_criterion_skips_zero_weights() -> None:
    out = _fake_output()
    result = Criterion({"id": 1.0, "supcon": 0.0, "hks": 0.0, "mmd": 0.0})(out, LABELS, MODS)
    assert set(result.parts) == {"id"}
    assert result.total.item() == pytest.approx(id_loss(out.logits, LABELS).item(), rel=1e-6)
    result.total.backward()
    assert all(t.grad is None for t in out.features.values())  # nothing computed on them


def test_criterion_rejects_unknown_and_bad_weights() -> None:
    with pytest.raises(ConfigError, match="allowed: id, supcon, hks, mmd, triplet"):
        Criterion({"id": 1.0, "center": 1.0})
    with pytest.raises(ConfigError, match="loss.weights.mmd"):
        Criterion({"id": 1.0, "mmd": -1.0})
    with pytest.raises(ConfigError):
        Criterion({"id": 0.0})


def test_criterion_from_config() -> None:
    cfg = LossConfig(weights=LossWeights(id=1.0, supcon=2.0, hks=0.0, mmd=0.5, triplet=0.0), mmd_margin=0.1)
    crit = Criterion.from_config(cfg)
    assert crit.weights == {"id": 1.0, "supcon": 2.0, "mmd": 0.5}
    assert crit.mmd_margin == 0.1
    out = _fake_output()
    assert set(crit(out, LABELS, MODS).parts) == {"id", "supcon", "mmd"}
    default = Criterion.from_config(LossConfig())
    assert default.weights == {"id": 1.0, "supcon": 5.0, "hks": 5.0, "mmd": 0.25}


def test_mmd_inactive_leaves_mmd_out() -> None:
    """Criterion.mmd_active (what loss.mmd_gate switches): no MMD part and a smaller total while off."""
    from mclnet_cli.config import load_config
    from mclnet_cli.losses import Criterion
    from mclnet_cli.model.net import ModelOutput

    torch.manual_seed(0)
    labels = torch.arange(4).repeat_interleave(2).repeat(2)
    modalities = torch.cat([torch.zeros(8), torch.ones(8)]).long()
    features = {f"layer{i}": torch.rand(16, 8) for i in range(1, 5)}
    output = ModelOutput(features=features, bn_feature=torch.rand(16, 8), logits=torch.randn(16, 4))
    crit = Criterion.from_config(load_config("tiny", ["loss.mmd_ramp=null"]).loss)  # the gate alone
    crit.mmd_active = False
    early = crit(output, labels, modalities)
    crit.mmd_active = True
    late = crit(output, labels, modalities)
    assert "mmd" not in early.parts and "mmd" in late.parts
    assert float(late.total - early.total) == pytest.approx(0.25 * float(late.parts["mmd"]), rel=1e-5)
    with pytest.raises(ConfigError, match="mmd_gate"):
        load_config("tiny", ["loss.mmd_gate=0"])


@pytest.mark.parametrize("gate, expected", [("null", [True, True, True]), ("100", [False, True, True]), ("1e-9", [False, False, False])])
def test_mmd_gate_in_training(prepared_dataset, tmp_path, gate: str, expected: list[bool]) -> None:
    """loss.mmd_gate: MMD joins the epoch after the identity loss first falls below gate x ln C
    (100: after the first epoch, whatever it learnt; 1e-9: never), and a resume keeps the state."""
    import json

    from mclnet_cli.config import load_config
    from mclnet_cli.engine.checkpoint import load_checkpoint
    from mclnet_cli.engine.runlog import read_metrics
    from mclnet_cli.engine.train import fit

    settings = [
        "data.height=64", "data.width=32", "data.num_ids=2", "data.num_instances=2", "data.workers=0",
        "train.steps_per_epoch=2", "optim.warmup_epochs=1", "optim.milestones=[2]", f"loss.mmd_gate={gate}",
    ]
    out = tmp_path / "run"
    fit(load_config("tiny", [*settings, "train.epochs=2"]), prepared_dataset, out, device="cpu")
    assert load_checkpoint(out / "last.pt")["mmd_open"] is expected[2]
    fit(load_config("tiny", [*settings, "train.epochs=3"]), prepared_dataset, out, resume=True, device="cpu")
    rows = [r for r in read_metrics(out) if r.get("kind") == "epoch"]
    assert ["mmd" in r["parts"] for r in rows] == expected
    joined = json.loads((out / "summary.json").read_text())["mmd_joined"]
    assert joined == (None if gate in ("null", "1e-9") else 1)


def test_mmd_ramp_scale_matches_the_formula_and_couples_mmd_to_identity() -> None:
    """loss.mmd_ramp r: MMD's weight x clamp((s - L_id / ln C) / r, 0, 1), s the gate (or 1).

    Checked against the formula by hand, in the total and in the gradient MMD sends to f4:
    with the identity loss at ln C (uniform logits) MMD sends none, with it far below, all of it."""
    from mclnet_cli.config import load_config

    crit = Criterion.from_config(load_config("tiny", ["loss.mmd_ramp=0.25"]).loss)
    assert (crit.mmd_ramp, crit.mmd_start) == (0.25, 0.95)  # tiny's gate is where the ramp starts
    ln63 = math.log(63)
    for identity, expected in [(ln63, 0.0), (0.95 * ln63, 0.0), (0.85 * ln63, 0.4), (0.7 * ln63, 1.0), (0.1, 1.0)]:
        assert float(crit.ramp_scale(torch.tensor(identity), 63)) == pytest.approx(expected, abs=1e-5)
    no_gate = Criterion.from_config(load_config("tiny", ["loss.mmd_ramp=0.5", "loss.mmd_gate=null"]).loss)
    assert no_gate.mmd_start == 1.0
    assert float(no_gate.ramp_scale(torch.tensor(0.75 * math.log(2)), 2)) == pytest.approx(0.5, abs=1e-5)

    weights = {"id": 1.0, "mmd": 1.0}
    for logit_scale in (0.0, 0.4, 30.0):  # identity at ln C (factor 0), about 0.75 ln C (~0.5), confident (1)
        out = _fake_output(classes=2)
        logits = (logit_scale * F.one_hot(LABELS, 2).float()).requires_grad_(True)
        out = ModelOutput(features=out.features, bn_feature=out.bn_feature, logits=logits)
        ramped = Criterion(weights, mmd_ramp=0.5, mmd_start=1.0)(out, LABELS, MODS)
        plain = Criterion(weights)(out, LABELS, MODS)
        identity = float(plain.parts["id"])
        expected = min(max((1.0 - identity / math.log(2)) / 0.5, 0.0), 1.0)
        assert float(ramped.parts["mmd_scale"]) == pytest.approx(expected, abs=1e-5)
        assert float(ramped.total) == pytest.approx(identity + expected * float(plain.parts["mmd"]), rel=1e-5)
        f4 = out.features["layer4"]
        (grad,) = torch.autograd.grad(ramped.total, f4)
        (full,) = torch.autograd.grad(plain.total, f4)
        assert torch.allclose(grad, expected * full, atol=1e-6)
        assert (expected == 0.0) == (logit_scale == 0.0)
        assert (0.2 < expected < 0.8) == (logit_scale == 0.4)
        assert "mmd_scale" not in plain.parts


def test_mmd_ramp_is_validated() -> None:
    from mclnet_cli.config import load_config

    assert load_config("tiny").loss.mmd_ramp == 0.25 and load_config("sysu").loss.mmd_ramp is None
    for bad in ("0", "-1", "inf"):
        with pytest.raises(ConfigError, match="mmd_ramp"):
            load_config("tiny", [f"loss.mmd_ramp={bad}"])
    with pytest.raises(ConfigError, match="loss.weights.id"):
        load_config("tiny", ["loss.mmd_ramp=0.2", "loss.weights.id=0"])
    with pytest.raises(ConfigError, match="loss.weights.id"):  # tiny has the ramp: switching identity off says so
        load_config("tiny", ["loss.weights.id=0"])
    with pytest.raises(ConfigError, match="mmd_ramp"):
        Criterion({"id": 1.0, "mmd": 1.0}, mmd_ramp=0.0)
    with pytest.raises(ConfigError, match="loss.weights.id"):
        Criterion({"mmd": 1.0}, mmd_ramp=0.2)


def test_mmd_ramp_in_training_logs_its_scale(prepared_dataset, tmp_path) -> None:
    """The trainer applies loss.mmd_ramp: every step's total is the weighted sum of its parts with
    MMD's weight times that step's ``mmd_scale`` (in [0, 1]); a run without the key logs none."""
    from mclnet_cli.config import load_config
    from mclnet_cli.engine.runlog import read_metrics
    from mclnet_cli.engine.train import fit

    settings = [
        "data.height=64", "data.width=32", "data.num_ids=2", "data.num_instances=2", "data.workers=0",
        "train.steps_per_epoch=2", "optim.warmup_epochs=1", "optim.milestones=[2]", "train.epochs=2",
        "loss.mmd_gate=null", "train.recalibrate_neck=false", "train.log_every=1",
    ]
    for ramp in ("2.0", None):
        out = tmp_path / f"run-{ramp}"
        fit(load_config("tiny", [*settings, f"loss.mmd_ramp={ramp or 'null'}"]), prepared_dataset, out, device="cpu")
        rows = [r for r in read_metrics(out) if r.get("kind") == "epoch"]
        assert all("mmd" in r["parts"] for r in rows)
        if ramp is None:
            assert not any("mmd_scale" in r["parts"] for r in rows)
            continue
        for r in rows:  # the step mean of clamp((1 - id / ln C) / 2, 0, 1): at most 1/2 with id >= 0
            assert 0.0 <= r["parts"]["mmd_scale"] <= 0.5
        weights = load_config("tiny").loss.weights
        steps = [r for r in read_metrics(out) if r.get("kind") == "step"]
        assert len(steps) == 4
        for r in steps:
            parts = r["parts"]
            assert parts["mmd"] > 0
            expected = sum(getattr(weights, n) * parts[n] for n in ("id", "supcon", "hks"))
            expected += weights.mmd * parts["mmd_scale"] * parts["mmd"]
            assert r["loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6)
