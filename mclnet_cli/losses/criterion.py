"""The weighted MCLNet objective: named parts plus their weighted total."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch.nn.functional as F
from torch import Tensor

from mclnet_cli.config import MmdBandwidth, MmdFeature, names
from mclnet_cli.errors import ConfigError
from mclnet_cli.losses.functional import hks_loss, id_loss, mmd_loss, supcon_loss, triplet_loss
from mclnet_cli.model.net import SCALES, ModelOutput

TERMS = ("id", "supcon", "hks", "mmd", "triplet")

#: loss term -> the model outputs it reads (as ``Criterion._term`` below); "features.*": every
#: scale. A term not listed counts as reading every output, so nothing is frozen on its account.
TERM_OUTPUTS: dict[str, tuple[str, ...]] = {
    "id": ("logits",),
    "supcon": ("features.*",),
    "hks": ("features.*",),
    "mmd": ("features.layer4",),
    "triplet": ("features.layer4",),
}


def standardize(features: Tensor, eps: float = 1e-5) -> Tensor:
    """Each channel of [B, C] features to mean 0 and variance 1 over the batch (a BatchNorm in
    training mode with no affine and no running statistics): a common scale or shift of every
    feature leaves it unchanged."""
    return F.batch_norm(features, None, None, training=True, eps=eps)


@dataclass(frozen=True)
class LossOutput:
    """``total``: the weighted sum to call backward on; ``parts``: unweighted, detached terms for logging
    (with ``loss.mmd_ramp`` also ``mmd_scale``, the factor MMD's weight had in this step)."""

    total: Tensor
    parts: dict[str, Tensor]


class Criterion:
    """L = w_id L_id + w_mmd L_mmd + w_supcon sum_k L_sc(f_k) + w_hks L_hks (+ w_triplet L_tri).

    Terms with weight 0 are neither computed nor reported; neither is MMD while
    :attr:`mmd_active` is false (the trainer's ``loss.mmd_gate``). ``parts["supcon"]`` is
    the unweighted sum over the four scales. Triplet uses pre-BN f4, MMD pre-BN f4 too
    (``mmd_feature="pool"``, the method) or f4 standardised per channel over the batch with
    no learnable scale (``"standardized"``: no shrink of every feature lowers it).

    ``mmd_ramp`` r couples MMD to identity: in each step its weight is multiplied by
    clamp((s - L_id / ln C) / r, 0, 1), with L_id this batch's identity loss (detached),
    C the classes and s = ``mmd_start`` (the gate, or 1). While the features carry no
    identity MMD is off, it grows as they learn, and should alignment start erasing
    identity (L_id back towards ln C) it weakens again by itself. Under DDP each rank scales
    by its own batch's identity loss (the logged ``mmd_scale`` is the mean over ranks).
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        supcon_temperature: float = 0.1,
        hks_temperature: float = 1.0,
        mmd_margin: float | None = None,
        label_smoothing: float = 0.0,
        triplet_margin: float = 0.3,
        hks_smoothing: float = 0.0,
        mmd_bandwidth: MmdBandwidth = "detached",
        mmd_feature: MmdFeature = "pool",
        mmd_ramp: float | None = None,
        mmd_start: float = 1.0,
    ) -> None:
        unknown = sorted(set(weights) - set(TERMS))
        if unknown:
            raise ConfigError(f"loss.weights: unknown term(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(TERMS)}")
        for name, value in weights.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"loss.weights.{name}: expected a finite number >= 0, got {value!r}")
        if supcon_temperature <= 0 or hks_temperature <= 0:
            raise ConfigError("loss.supcon_temperature and loss.hks_temperature must be positive")
        if mmd_bandwidth not in names(MmdBandwidth):
            raise ConfigError(f"loss.mmd_bandwidth: unknown {mmd_bandwidth!r}; choose from: {', '.join(names(MmdBandwidth))}")
        if mmd_feature not in names(MmdFeature):  # either is computed from f4: TERM_OUTPUTS holds for both
            raise ConfigError(f"loss.mmd_feature: unknown {mmd_feature!r}; choose from: {', '.join(names(MmdFeature))}")
        if mmd_ramp is not None and not 0 < mmd_ramp < math.inf:
            raise ConfigError(f"loss.mmd_ramp must be null or a positive finite number, got {mmd_ramp!r}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ConfigError(f"loss.label_smoothing must be in [0, 1), got {label_smoothing!r}")
        self.weights = {name: float(value) for name, value in weights.items() if value > 0}
        if not self.weights:
            raise ConfigError("loss.weights: every term has weight 0; nothing to train")
        self.supcon_temperature = supcon_temperature
        self.hks_temperature = hks_temperature
        self.mmd_margin = mmd_margin
        self.label_smoothing = label_smoothing
        self.triplet_margin = triplet_margin
        self.hks_smoothing = hks_smoothing
        self.mmd_bandwidth = mmd_bandwidth
        self.mmd_feature = mmd_feature
        if mmd_ramp is not None and "mmd" in self.weights and "id" not in self.weights:
            raise ConfigError("loss.mmd_ramp scales MMD by the identity loss: it needs loss.weights.id > 0")
        self.mmd_ramp = mmd_ramp
        self.mmd_start = mmd_start
        self.mmd_active = True  # the trainer switches MMD off until loss.mmd_gate opens

    @classmethod
    def from_config(cls, loss_cfg: Any) -> "Criterion":
        """From a ``LossConfig`` (its ``weights`` dataclass or mapping and the term settings)."""
        weights = loss_cfg.weights
        weights = dataclasses.asdict(weights) if dataclasses.is_dataclass(weights) else dict(weights)
        return cls(
            weights,
            supcon_temperature=loss_cfg.supcon_temperature,
            hks_temperature=loss_cfg.hks_temperature,
            mmd_margin=loss_cfg.mmd_margin,
            label_smoothing=loss_cfg.label_smoothing,
            triplet_margin=loss_cfg.triplet_margin,
            hks_smoothing=getattr(loss_cfg, "hks_smoothing", 0.0),
            mmd_bandwidth=getattr(loss_cfg, "mmd_bandwidth", "detached"),
            mmd_feature=getattr(loss_cfg, "mmd_feature", "pool"),
            mmd_ramp=getattr(loss_cfg, "mmd_ramp", None),
            mmd_start=1.0 if getattr(loss_cfg, "mmd_gate", None) is None else float(loss_cfg.mmd_gate),
        )

    def active_weights(self) -> dict[str, float]:
        """The terms computed now, with their weights."""
        return {name: w for name, w in self.weights.items() if name != "mmd" or self.mmd_active}

    def ramp_scale(self, identity: Tensor, num_classes: int) -> Tensor:
        """``loss.mmd_ramp``'s factor on MMD's weight for an identity loss value (see the class)."""
        assert self.mmd_ramp is not None
        progress = (self.mmd_start - identity.detach().float() / math.log(max(num_classes, 2))) / self.mmd_ramp
        return progress.clamp(0.0, 1.0)

    def _term(self, name: str, output: ModelOutput, labels: Tensor, modalities: Tensor) -> Tensor:
        f4 = output.features["layer4"]
        if name == "id":
            return id_loss(output.logits, labels, self.label_smoothing)
        if name == "supcon":
            terms = [supcon_loss(output.features[s], labels, self.supcon_temperature) for s in SCALES]
            return sum(terms[1:], terms[0])
        if name == "hks":
            return hks_loss([output.features[s] for s in SCALES], self.hks_temperature, self.hks_smoothing)
        if name == "mmd":
            vis = modalities == 0
            aligned = standardize(f4) if self.mmd_feature == "standardized" else f4
            return mmd_loss(
                aligned[vis], aligned[~vis], labels[vis], labels[~vis], self.mmd_margin,
                detach_bandwidth=self.mmd_bandwidth == "detached",
            )
        if name == "triplet":
            return triplet_loss(f4, labels, modalities, self.triplet_margin)
        raise AssertionError(name)  # unreachable: names validated in __init__

    def __call__(self, output: ModelOutput, labels: Tensor, modalities: Tensor) -> LossOutput:
        """``labels`` [B] and ``modalities`` [B] (0 visible, 1 infrared) row-aligned with ``output``."""
        if labels.shape[0] != output.logits.shape[0] or modalities.shape[0] != labels.shape[0]:
            raise ValueError(
                f"criterion: {output.logits.shape[0]} rows of output, {labels.shape[0]} labels, "
                f"{modalities.shape[0]} modalities"
            )
        parts: dict[str, Tensor] = {}
        total: Tensor | None = None
        active = self.active_weights()
        for name in TERMS:
            weight = active.get(name, 0.0)
            if weight == 0.0:
                continue
            value = self._term(name, output, labels, modalities)
            parts[name] = value.detach()
            if name == "mmd" and self.mmd_ramp is not None:
                scale = self.ramp_scale(parts["id"], output.logits.shape[1])
                parts["mmd_scale"] = scale
                weight = weight * scale
            total = weight * value if total is None else total + weight * value
        assert total is not None
        return LossOutput(total=total, parts=parts)
