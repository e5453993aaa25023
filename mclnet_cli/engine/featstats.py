"""Cheap statistics of the pooled features of one training batch, for metrics.jsonl.

They show what the loss curves alone cannot: whether the four scales keep a
usable scale and spread, and whether the two spectra of one person come
together. Computed under ``no_grad`` from the batch the step already produced
(a few [2PK, C] matrix products; negligible next to the forward pass).

Per scale (``layer1``..``layer4``):

- ``norm``: mean L2 norm of the pooled pre-BN feature;
- ``entropy``: mean entropy of softmax over the C channels (the distribution the
  HKS term matches), divided by ln C, so 1.0 is the uniform distribution;
- ``cos``: mean cosine over all cross-modal pairs (near 1 when every feature
  points the same way, i.e. collapsed);
- ``gap``: mean cosine of cross-modal same-person pairs minus mean cosine of
  cross-modal different-person pairs (0 at chance; what retrieval needs > 0).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

STATS = ("norm", "entropy", "cos", "gap")


@torch.no_grad()
def cross_modal_gap(features: Tensor, labels: Tensor, modalities: Tensor) -> tuple[float, float]:
    """(mean cross-modal cosine, positive-minus-negative cross-modal cosine gap) of ``features`` [N, C]."""
    z = F.normalize(features.detach().float(), dim=1)
    cos = z @ z.T
    cross = modalities.view(-1, 1) != modalities.view(1, -1)
    same = labels.view(-1, 1) == labels.view(1, -1)
    pos, neg = cross & same, cross & ~same
    mean_cos = float(cos[cross].mean()) if bool(cross.any()) else float("nan")
    if not bool(pos.any()) or not bool(neg.any()):
        return mean_cos, float("nan")
    return mean_cos, float(cos[pos].mean() - cos[neg].mean())


@torch.no_grad()
def feature_stats(features: Mapping[str, Tensor], labels: Tensor, modalities: Tensor) -> dict[str, float]:
    """Flat ``{"<scale>.<stat>": value}`` for every scale in ``features`` (see the module docstring)."""
    out: dict[str, float] = {}
    for scale, f in features.items():
        f = f.detach().float()
        log_p = F.log_softmax(f, dim=1)
        entropy = -(log_p.exp() * log_p).sum(dim=1).mean() / math.log(f.shape[1])
        mean_cos, gap = cross_modal_gap(f, labels, modalities)
        out[f"{scale}.norm"] = float(f.norm(dim=1).mean())
        out[f"{scale}.entropy"] = float(entropy)
        out[f"{scale}.cos"] = mean_cos
        out[f"{scale}.gap"] = gap
    return out


def nest(flat: Mapping[str, float], digits: int = 5) -> dict[str, dict[str, float]]:
    """``{"layer1.norm": x}`` -> ``{"layer1": {"norm": x}}``, rounded for the log."""
    nested: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        scale, stat = key.split(".", 1)
        nested.setdefault(scale, {})[stat] = round(float(value), digits)
    return nested
