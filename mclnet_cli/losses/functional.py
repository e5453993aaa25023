"""The terms of the MCLNet objective as pure functions of tensors.

Every function returns a scalar tensor that stays attached to the graph of its
inputs, also in degenerate cases (no positive pair, no shared identity), so
``total.backward()`` never fails because one term happened to be empty.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def _zero(like: Tensor) -> Tensor:
    """A zero scalar connected to ``like``'s graph."""
    return like.sum() * 0.0


def id_loss(logits: Tensor, labels: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Identity cross-entropy. ``logits`` [N, K], ``labels`` [N] in 0..K-1.

    L = mean_i -sum_k q_ik log softmax(logits_i)_k, with q the (optionally
    smoothed: (1-e) one-hot + e/K) target distribution.
    """
    return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)


def supcon_loss(features: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss (Khosla et al. 2020, "L_out"), scaled by tau.

    ``features`` [N, C] (any scale, L2-normalised here), ``labels`` [N].
    With z_i = f_i / ||f_i||, P(i) = {p != i : y_p = y_i}, A(i) = {a != i}:

        L = tau * mean_{i : |P(i)| > 0} -1/|P(i)| sum_{p in P(i)}
                log( exp(z_i.z_p / tau) / sum_{a in A(i)} exp(z_i.z_a / tau) )

    The final factor tau follows the authors' code (it is Khosla's
    ``temperature / base_temperature`` with base_temperature = 1); it keeps the
    gradient magnitude independent of tau. Anchors without a positive are left
    out of the mean; with none at all the loss is 0.
    """
    z = F.normalize(features.float(), dim=1)
    n = z.shape[0]
    logits = z @ z.T / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels.view(-1, 1) == labels.view(1, -1)) & ~self_mask
    num_pos = positives.sum(dim=1)
    anchors = num_pos > 0
    if not bool(anchors.any()):
        return _zero(features)
    pos_log_prob = log_prob.masked_fill(~positives, 0.0).sum(dim=1)
    per_anchor = -pos_log_prob[anchors] / num_pos[anchors]
    return temperature * per_anchor.mean()


def kl_divergence(target_logits: Tensor, logits: Tensor, temperature: float = 1.0, smoothing: float = 0.0) -> Tensor:
    """Batch mean of KL( softmax(target/T) || softmax(logits/T) ), both [N, C], softmax over C.

    The target is detached (stop-gradient): only ``logits`` is pulled towards it.
    ``smoothing`` = eps > 0 replaces each distribution p by (p + eps) / (1 + C eps)
    first, as the authors' code does (eps = 1e-8 there).
    """
    log_q = F.log_softmax(logits.float() / temperature, dim=1)
    log_p = F.log_softmax(target_logits.detach().float() / temperature, dim=1)
    if smoothing > 0:
        scale = 1.0 + logits.shape[1] * smoothing
        p = (log_p.exp() + smoothing) / scale
        q = (log_q.exp() + smoothing) / scale
        return (p * (p.log() - q.log())).sum(dim=1).mean()
    return (log_p.exp() * (log_p - log_q)).sum(dim=1).mean()


def hks_loss(features: Sequence[Tensor], temperature: float = 1.0, smoothing: float = 0.0) -> Tensor:
    """Hierarchical knowledge synergy: pairwise knowledge matching between scales.

    ``features``: S tensors [N, C] (f1..f4). Treating each feature as logits over
    its C channels,

        L = sum_{i != j} mean_n KL( stopgrad(softmax(f_j,n / T)) || softmax(f_i,n / T) )

    over the S(S-1) ordered pairs (12 for four scales); no T^2 factor (T = 1 in
    the method). ``smoothing``: see :func:`kl_divergence`.
    """
    if len(features) < 2:
        raise ValueError("hks_loss needs at least two feature scales")
    total = _zero(features[0])
    for i, student in enumerate(features):
        for j, teacher in enumerate(features):
            if i != j:
                total = total + kl_divergence(teacher, student, temperature, smoothing)
    return total


def _pairwise_sq_dists(x: Tensor) -> Tensor:
    """[n, C] -> [n, n] squared Euclidean distances (exactly 0 on the diagonal)."""
    return (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(dim=2)


def gaussian_mmd(
    x: Tensor,
    y: Tensor,
    kernel_mul: float = 2.0,
    kernel_num: int = 5,
    eps: float = 1e-12,
    detach_bandwidth: bool = True,
) -> Tensor:
    """Multi-kernel Gaussian MMD^2 between samples ``x`` [n, C] and ``y`` [m, C].

    Pooling both sets, D = pairwise squared distances, bandwidth
    b = sum(D) / (N^2 - N) / mul^(kernel_num // 2) (from the data),
    K = sum_{q < kernel_num} exp(-D / (b * mul^q)); the result is
    mean(K_xx) + mean(K_yy) - mean(K_xy) - mean(K_yx).

    ``detach_bandwidth`` (the authors' code): b is a constant for the gradient, so
    while the two sets are apart the gradient also shrinks the samples' spread, a
    drop the next step's b takes out of the value but not out of the features.
    ``False``: b is differentiated too; the value is exactly invariant to the
    spread's scale, and the gradient has no component along it.
    """
    total = torch.cat([x.float(), y.float()], dim=0)
    n_total = total.shape[0]
    dists = _pairwise_sq_dists(total)
    spread = dists.detach() if detach_bandwidth else dists
    if n_total > 1:
        bandwidth = spread.sum() / (n_total * n_total - n_total)
    else:
        bandwidth = spread.sum()
    bandwidth = (bandwidth / kernel_mul ** (kernel_num // 2)).clamp(min=eps)
    kernels = sum(torch.exp(-dists / (bandwidth * kernel_mul**q)) for q in range(kernel_num))
    n = x.shape[0]
    xx = kernels[:n, :n].mean()
    yy = kernels[n:, n:].mean()
    xy = kernels[:n, n:].mean()
    yx = kernels[n:, :n].mean()
    return xx + yy - xy - yx


def mmd_loss(
    visible: Tensor,
    infrared: Tensor,
    visible_labels: Tensor,
    infrared_labels: Tensor,
    margin: float | None = None,
    detach_bandwidth: bool = True,
) -> Tensor:
    """Per-identity cross-modality MMD ("Margin-MMD-ID").

    ``visible`` [n, C], ``infrared`` [m, C] (pre-BN f4), with their labels.
    For each identity present in both modalities, d = gaussian_mmd(visible of
    that id, infrared of that id) (5 kernels, multiplier 2); with a margin m,
    d = max(0, d - m). The loss is the mean of d over those identities (0 if none).
    ``detach_bandwidth``: as in :func:`gaussian_mmd`.
    """
    shared = sorted(set(visible_labels.tolist()) & set(infrared_labels.tolist()))
    if not shared:
        return _zero(visible) + _zero(infrared)
    terms = []
    for pid in shared:
        d = gaussian_mmd(
            visible[visible_labels == pid], infrared[infrared_labels == pid], detach_bandwidth=detach_bandwidth
        )
        if margin is not None:
            d = torch.clamp(d - margin, min=0.0)
        terms.append(d)
    return torch.stack(terms).mean()


def triplet_loss(features: Tensor, labels: Tensor, modalities: Tensor, margin: float = 0.3) -> Tensor:
    """Cross-modality batch-hard triplet loss.

    ``features`` [N, C], ``labels`` [N], ``modalities`` [N] (0 visible, 1 infrared).
    For anchor i, over samples of the *other* modality only: hardest positive
    d_ap = max_{y_p = y_i} ||f_i - f_p||, hardest negative d_an = min_{y_n != y_i} ||f_i - f_n||;
    L = mean over anchors having both of max(0, d_ap - d_an + margin).
    """
    f = features.float()
    dists = _pairwise_sq_dists(f).clamp(min=1e-12).sqrt()
    same_id = labels.view(-1, 1) == labels.view(1, -1)
    cross = modalities.view(-1, 1) != modalities.view(1, -1)
    pos = same_id & cross
    neg = ~same_id & cross
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        return _zero(features)
    hardest_pos = dists.masked_fill(~pos, float("-inf")).max(dim=1).values
    hardest_neg = dists.masked_fill(~neg, float("inf")).min(dim=1).values
    return F.relu(hardest_pos[valid] - hardest_neg[valid] + margin).mean()
