"""BNNeck statistics re-estimated from f4 as inference computes it (``train.recalibrate_neck``).

Why: the retrieval feature is BN(f4), normalised with the running mean and variance
the neck gathered in training mode, where every BatchNorm of the backbone uses the
statistics of its own batch (a P x K batch of a few identities). At inference the
backbone uses its running statistics instead, and f4 comes out shifted. From scratch
f4's spread across images is small next to its mean (ReLU + pooling), so that shift
is several of the neck's standard deviations (5.3 measured on the tiny preset,
docs/method.md finding 8) and every BN(f4) carries the same large offset, which
cosine retrieval cannot ignore. Re-estimating the neck's statistics on f4 computed
in inference mode over training images (both spectra weighted equally, as every
training batch holds as many visible as infrared images) removes it. The
backbone, heads and classifier are not touched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from mclnet_cli.config import Config
from mclnet_cli.data.loader import training_samples
from mclnet_cli.data.preprocess import Preprocess
from mclnet_cli.data.records import PreparedDataset
from mclnet_cli.engine.extract import image_batches, resolve_preprocess
from mclnet_cli.errors import DataError
from mclnet_cli.types import Modality, Sample

#: images per spectrum at most (evenly spaced over the training list): plenty for a mean and variance per channel
DEFAULT_LIMIT = 1024
#: a neck channel whose standard deviation is below this share of its root mean square carries no
#: spread float32 resolves. f4 computed alone and in a batch differs by ~3e-7 of its value (median;
#: 1.3e-6 at most: different kernels round differently), so centring and dividing by such a spread
#: returns rounding noise, and the same image gets another BN feature in every batch (cosine 0.12
#: on the test fixture). Measured (docs/method.md, finding 9): a collapsed tiny run's channels have
#: spreads of 2e-7 to 2.5e-6, a healthy one's 4.6e-5 to 1.3e-3 (f4 of a from-scratch tiny model is
#: a large common offset plus small deviations, which carry the identity)
DEGENERATE_SPREAD = 1e-5


@dataclass(frozen=True)
class NeckRecalibration:
    """What :func:`recalibrate_neck` did: images used per spectrum and how far the old mean was off."""

    visible_images: int
    infrared_images: int
    shift: float  # mean over channels of |new mean - old mean| / old std
    degenerate_channels: int = 0  # channels without a resolvable spread (steady_statistics)

    def as_dict(self) -> dict[str, Any]:
        return {"visible_images": self.visible_images, "infrared_images": self.infrared_images, "shift": self.shift,
                "degenerate_channels": self.degenerate_channels}


def spaced(samples: Sequence[Sample], limit: int) -> list[Sample]:
    """At most ``limit`` samples, evenly spaced over the list (deterministic)."""
    if len(samples) <= limit:
        return list(samples)
    step = len(samples) / limit
    return [samples[int(i * step)] for i in range(limit)]


@torch.no_grad()
def inference_f4(model: torch.nn.Module, paths: Sequence[str], modality: Modality, *, preprocess: Preprocess | None = None,
                 height: int | None = None, width: int | None = None, resize: str | None = None, batch_size: int,
                 device: torch.device) -> torch.Tensor:
    """Pre-BN f4 [N, C] (float64, on the CPU) of image files through one stream, in inference mode.

    Images come through :func:`~mclnet_cli.engine.extract.image_batches` with ``preprocess``
    (``height``/``width``/``resize`` given in its place), as every retrieval feature does.
    """
    net, record = resolve_preprocess(model, preprocess, height=height, width=width, resize=resize)
    batches = image_batches(paths, record, batch_size=batch_size, device=device)
    return torch.cat([net.pooled(batch.images, modality).double().cpu() for batch in batches])


def mixture_statistics(visible: torch.Tensor, infrared: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and variance of an equal mixture of two sets of rows."""
    mean_v, mean_i = visible.mean(0), infrared.mean(0)
    var_v, var_i = visible.var(0, unbiased=False), infrared.var(0, unbiased=False)
    mean = (mean_v + mean_i) / 2
    var = (var_v + var_i) / 2 + ((mean_v - mean_i) / 2) ** 2
    return mean, var


def steady_statistics(
    mean: torch.Tensor, var: torch.Tensor, spread: float = DEGENERATE_SPREAD
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Neck statistics under which BN(f4) does not amplify rounding: (mean, var, channels changed).

    A channel with std < ``spread`` x rms (rms = sqrt(mean^2 + var)) is treated as the
    constant it is: mean 0 and variance (rms / spread)^2, so its BN output is
    weight x spread x f4 / rms, about weight x spread, the same for every image and
    every batch. Other channels are returned unchanged, so a model with any
    resolvable spread is untouched; applying it twice changes nothing.
    """
    mean64, var64 = mean.double(), var.double().clamp(min=0)
    rms = (mean64 ** 2 + var64).sqrt()
    degenerate = (var64.sqrt() < spread * rms) & (rms > 0)
    new_mean = torch.where(degenerate, torch.zeros_like(mean64), mean64)
    new_var = torch.where(degenerate, (rms / spread) ** 2, var64)
    return new_mean.to(mean), new_var.to(var), int(degenerate.sum())


@torch.no_grad()
def steady_neck(bn: torch.nn.BatchNorm1d, spread: float = DEGENERATE_SPREAD) -> int:
    """Apply :func:`steady_statistics` to ``bn``'s running buffers in place; returns the channels changed."""
    mean, var, changed = steady_statistics(bn.running_mean, bn.running_var, spread)
    if changed:
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return changed


def recalibrate_neck(model: torch.nn.Module, prepared: PreparedDataset, config: Config, device: torch.device | str,
                     *, limit: int = DEFAULT_LIMIT) -> NeckRecalibration:
    """Set ``model.neck.bn``'s running mean and variance from inference-mode f4 of training images.

    Uses up to ``limit`` training images per spectrum (the split ``data.train_on_val``
    names). Channels without a resolvable spread get :func:`steady_statistics`.
    The model's train/eval mode is restored afterwards.
    """
    device = torch.device(device)
    samples = training_samples(prepared, config.data)
    features = {}
    was_training = model.training
    model.eval()
    try:
        for modality in (Modality.VISIBLE, Modality.INFRARED):
            chosen = spaced([s for s in samples if s.modality is modality], limit)
            if len(chosen) < 2:
                raise DataError(f"{prepared.root}: recalibrating the BNNeck needs 2 or more {modality.value} training images, found {len(chosen)}")
            features[modality] = inference_f4(
                model, [s.path for s in chosen], modality, preprocess=Preprocess.from_config(config),
                batch_size=config.eval.batch_size, device=device,
            )
    finally:
        model.train(was_training)
    mean, var = mixture_statistics(features[Modality.VISIBLE], features[Modality.INFRARED])
    bn = model.neck.bn
    old_mean, old_std = bn.running_mean.double().cpu(), bn.running_var.double().cpu().clamp(min=bn.eps).sqrt()
    shift = float(((mean - old_mean).abs() / old_std).mean())  # of the measured mean, before steadying
    mean, var, degenerate = steady_statistics(mean, var)
    bn.running_mean.copy_(mean.to(bn.running_mean))
    bn.running_var.copy_(var.to(bn.running_var))
    return NeckRecalibration(len(features[Modality.VISIBLE]), len(features[Modality.INFRARED]), shift, degenerate)
