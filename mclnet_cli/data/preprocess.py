"""The preprocessing record: how an image becomes the tensor a checkpoint embeds, and which feature retrieval reads.

Built from a checkpoint's config in one place (:meth:`Preprocess.from_config`) and
attached to every loaded model (``LoadedModel.preprocess``), as timm and open_clip
attach a data config to a model. Evaluation, ``index``, ``query``, ``serve``, the
API, BNNeck recalibration and ``export``'s sidecar all read it, so none of them
passes the size, resize filter or normalisation around as loose values.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from PIL import Image

from mclnet_cli.config import Config
from mclnet_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RESIZE_FILTERS, test_transform
from mclnet_cli.errors import ConfigError
from mclnet_cli.types import FEATURES

#: the retrieval feature an index stores unless told otherwise: BNNeck(f4), the method's
RETRIEVAL_FEATURE = "bn"


@dataclass(frozen=True)
class Preprocess:
    """Test-time preprocessing of one checkpoint: resize to (height, width), pixels / 255, (x - mean) / std.

    ``feature`` is the retrieval feature read from the model's output (``"bn"`` or ``"pool"``).
    """

    height: int
    width: int
    resize: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    feature: str = RETRIEVAL_FEATURE

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not (self.height >= 1 and self.width >= 1):
            raise ConfigError(f"preprocess: image size must be positive, got {self.height}x{self.width}")
        if self.resize not in RESIZE_FILTERS:
            choices = ", ".join(RESIZE_FILTERS)
            raise ConfigError(f"preprocess: unknown resize filter {self.resize!r}; choose from: {choices}")
        if self.feature not in FEATURES:
            raise ConfigError(f"preprocess: unknown feature {self.feature!r}; choose from: {', '.join(FEATURES)}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in self.mean + self.std):
            got = f"{list(self.mean)}, {list(self.std)}"
            raise ConfigError(f"preprocess: mean and std must be 3 finite numbers each, got {got}")
        if min(self.std) <= 0:
            raise ConfigError(f"preprocess: std must be positive, got {list(self.std)}")

    @classmethod
    def from_config(cls, config: Config) -> "Preprocess":
        """The record of a (checkpoint's) config: ``data.height``, ``data.width``, ``data.resize``, ``data.mean``, ``data.std``."""
        data = config.data
        return cls(int(data.height), int(data.width), str(data.resize), tuple(data.mean), tuple(data.std))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the model's input."""
        return self.height, self.width

    def replace(self, **changes: Any) -> "Preprocess":
        """This record with the given fields (those not ``None``) in place of its own."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def recorded_in(self, meta: Mapping[str, Any]) -> "Preprocess":
        """This record with what an index's ``meta.json`` recorded in its place (``image_size``, ``resize``, ``feature``).

        An index keeps the preprocessing that embedded its gallery; probes must get the same.
        Indexes written before a field was recorded fall back to this record's value.
        """
        size = meta.get("image_size") or [None, None]
        return self.replace(
            height=None if size[0] is None else int(size[0]), width=None if size[1] is None else int(size[1]),
            resize=meta.get("resize"), feature=meta.get("feature"),
        )

    def transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """A decoded RGB PIL image -> the normalised [3, height, width] float tensor the model embeds."""
        return test_transform(self.height, self.width, self.resize, self.mean, self.std)

    def to_json(self) -> dict[str, Any]:
        """How to feed the model, as an export sidecar states it (``size``, ``resize``, ``scale``, ``mean``, ``std``)."""
        return {
            "size": [self.height, self.width],
            "resize": self.resize,
            "scale": "pixels / 255",
            "mean": list(self.mean),
            "std": list(self.std),
        }
