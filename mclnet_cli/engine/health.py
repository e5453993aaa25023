"""Is training learning? A collapse check over the statistics each epoch already logs.

A collapsed run looks like any other in its loss curve: it ends, saves checkpoints,
and its model maps every image to (nearly) the same feature. Three signs, each
measured against what a model that has learnt nothing gives:

- ``identity``: the epoch's mean identity loss is no lower than ln C (less
  ``ID_TOLERANCE``), the loss of a classifier that gives every class the same
  probability (early in training it is often above: hence ``check_from_epoch``);
- ``supcon``: SupCon is within ``SUPCON_TOLERANCE`` of its value when every feature
  is the same (tau * ln(2PK - 1) per scale);
- ``features``: at every logged scale the features of all images point the same
  way (mean cross-modal cosine >= ``COSINE_LIMIT``) and the same person is no closer
  than another (|gap| <= ``GAP_LIMIT``).

The run counts as collapsed when the identity sign shows (or, with the identity term
off, SupCon's), or when the features sign shows: either alone means the retrieval
feature cannot tell people apart. Checked only from ``check_from_epoch`` on
(by default after warm-up, a quarter of the schedule and ``MIN_STEPS`` steps;
``train.health_from_epoch`` sets it), so an early epoch that has not learnt yet
is not a collapse.

:func:`degenerate_features` is the same question asked of a trained model's
features, for ``evaluate``, ``index`` and ``serve``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

ID_TOLERANCE = 0.02  # identity loss >= (1 - 0.02) ln C: no better than a flat classifier
SUPCON_TOLERANCE = 0.01
COSINE_LIMIT = 0.99
GAP_LIMIT = 0.01
#: by default no epoch is checked before this many optimisation steps (a short run has not learnt yet)
MIN_STEPS = 400
#: a trained model's retrieval features whose mean pairwise cosine is above this are degenerate
DEGENERATE_COSINE = 0.99

#: the change the restart command suggests, and the advice line (docs/troubleshooting.md)
SUGGESTED_CHANGE = "loss.weights.mmd=0"
WHAT_TO_TRY = (
    f"try {SUGGESTED_CHANGE} (an MMD on f4 can shrink every feature to one point), a smaller "
    "loss.weights.hks or a lower optim.lr; check that the data's identities really differ"
)


@dataclass(frozen=True)
class Health:
    """One epoch's verdict: ``status`` is ``ok``, ``collapsed`` or ``not_checked`` (too early)."""

    status: str
    epoch: int
    reasons: tuple[str, ...] = ()
    values: dict[str, float] = field(default_factory=dict)

    @property
    def collapsed(self) -> bool:
        return self.status == "collapsed"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "epoch": self.epoch, "reasons": list(self.reasons), "values": dict(self.values)}

    def message(self, epochs: int) -> str:
        """The one warning line: what collapsed, and what to try."""
        return f"training collapsed at epoch {self.epoch + 1}/{epochs}: {'; '.join(self.reasons)}; {WHAT_TO_TRY}"


def check_from_epoch(epochs: int, warmup_epochs: int, steps_per_epoch: int, configured: int | None = None) -> int:
    """First 0-based epoch the check looks at: ``configured``; else the first epoch after warm-up, a
    quarter of the schedule and ``MIN_STEPS`` steps (a shorter run is never checked: ``epochs`` or later)."""
    if configured is not None:
        return max(0, int(configured))
    first = max(int(warmup_epochs), math.ceil(epochs / 4))
    return max(first, math.ceil(MIN_STEPS / max(int(steps_per_epoch), 1)) - 1)


def supcon_chance(temperature: float, batch: int, scales: int = 4) -> float:
    """SupCon (summed over ``scales``) when every feature in a batch of ``batch`` is the same."""
    return scales * temperature * math.log(max(batch - 1, 1))


def assess_epoch(
    row: Mapping[str, Any],
    *,
    epoch: int,
    from_epoch: int,
    num_classes: int,
    supcon_at_chance: float | None,
) -> Health:
    """The verdict on one epoch's metrics row (``parts`` and ``features`` as ``train_one_epoch`` writes them)."""
    if epoch < from_epoch:
        return Health("not_checked", epoch)
    parts: Mapping[str, float] = row.get("parts") or {}
    reasons: list[str] = []
    values: dict[str, float] = {}
    identity_at_chance = False
    if "id" in parts and num_classes > 1:
        chance = math.log(num_classes)
        values.update(id=round(float(parts["id"]), 4), id_chance=round(chance, 4))
        if parts["id"] >= (1 - ID_TOLERANCE) * chance:
            identity_at_chance = True
            reasons.append(f"identity loss {parts['id']:.3f} is no better than chance (ln {num_classes} = {chance:.3f})")
    supcon_flat = False
    if "supcon" in parts and supcon_at_chance:
        values.update(supcon=round(float(parts["supcon"]), 4), supcon_chance=round(supcon_at_chance, 4))
        if parts["supcon"] >= (1 - SUPCON_TOLERANCE) * supcon_at_chance:
            supcon_flat = True
            reasons.append(f"SupCon {parts['supcon']:.3f} is at its value for identical features ({supcon_at_chance:.3f})")
    features: Mapping[str, Mapping[str, float]] = row.get("features") or {}
    flat_scales = [
        scale for scale, stats in features.items()
        if stats.get("cos", 0.0) >= COSINE_LIMIT and abs(stats.get("gap", 1.0)) <= GAP_LIMIT
    ]
    features_flat = bool(features) and len(flat_scales) == len(features)
    if features:
        values["min_cos"] = round(min(float(s.get("cos", 0.0)) for s in features.values()), 4)
    if features_flat:
        reasons.append(
            f"every image's features point the same way at every scale (cosine >= {values['min_cos']:.3f}, "
            "same person no closer than another)"
        )
    collapsed = identity_at_chance or features_flat or (supcon_flat and "id" not in parts)
    return Health("collapsed" if collapsed else "ok", epoch, tuple(reasons) if collapsed else (), values)


def degenerate_features(features: np.ndarray, limit: int = 64) -> float | None:
    """Mean pairwise cosine of ``limit`` rows, evenly spaced, when it is >= ``DEGENERATE_COSINE``, else None.

    Cheap (a ``limit`` x ``limit`` product): a model whose features of different
    images point the same way cannot rank anything.
    """
    count = len(features)
    picked = np.unique(np.linspace(0, count - 1, min(count, limit)).astype(np.int64)) if count else []
    rows = np.asarray(features[picked], dtype=np.float64)  # spread over the rows, not one person's first images
    if rows.shape[0] < 2:
        return None
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    z = rows / np.where(norms > 0, norms, 1.0)
    cos = z @ z.T
    n = cos.shape[0]
    mean = float((cos.sum() - np.trace(cos)) / (n * (n - 1)))
    return mean if mean >= DEGENERATE_COSINE else None


def degenerate_message(source: str, cosine: float, images: int) -> str:
    """The warning line ``evaluate``, ``index`` and ``serve`` print for :func:`degenerate_features`."""
    return (
        f"{source}: the features of {images} different images have mean cosine {cosine:.4f}: "
        "the model maps every image to nearly the same point (a collapsed training run?); "
        "rankings from it are close to random"
    )


def model_warnings(source: str, features: np.ndarray | None, degenerate_neck_channels: int = 0) -> list[str]:
    """Warning lines about a trained model: degenerate features (first rows of ``features``) and steadied neck channels."""
    warnings = []
    if features is not None:
        cosine = degenerate_features(features)
        if cosine is not None:
            warnings.append(degenerate_message(source, cosine, min(len(features), 64)))
    if degenerate_neck_channels:
        warnings.append(
            f"{source}: {degenerate_neck_channels} BNNeck channel(s) have no spread float32 can resolve "
            "(a collapsed training run?); they are held constant, so features do not depend on the batch"
        )
    return warnings
