"""The MCLNet objective: pure loss functions and the weighted :class:`Criterion`."""

from mclnet_cli.losses.criterion import TERMS, Criterion, LossOutput
from mclnet_cli.losses.functional import (
    gaussian_mmd,
    hks_loss,
    id_loss,
    kl_divergence,
    mmd_loss,
    supcon_loss,
    triplet_loss,
)

__all__ = [
    "TERMS",
    "Criterion",
    "LossOutput",
    "gaussian_mmd",
    "hks_loss",
    "id_loss",
    "kl_divergence",
    "mmd_loss",
    "supcon_loss",
    "triplet_loss",
]
