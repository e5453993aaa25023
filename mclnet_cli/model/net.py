"""MCLNet: two-stream ResNet, multi-scale projection heads, pooling, BNNeck."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mclnet_cli.config import ModelConfig
from mclnet_cli.types import FEATURES, Modality
from mclnet_cli.errors import ConfigError
from mclnet_cli.model.backbone import TwoStreamBackbone, build_resnet
from mclnet_cli.model.heads import BNNeck, build_pooling, projection_head
from mclnet_cli.model.pretrained import is_packaged, load_packaged_into

SCALES = ("layer1", "layer2", "layer3", "layer4")
#: what a forward returns, by name: ``features.<scale>`` (ModelOutput.features), ``bn_feature``, ``logits``
OUTPUTS = (*(f"features.{scale}" for scale in SCALES), "bn_feature", "logits")


@dataclass(frozen=True)
class ModelOutput:
    """What one forward returns, in training and evaluation alike.

    ``features``: pooled pre-BN features keyed by scale (``SCALES``), each [B, C];
    ``layer4`` is f4. ``bn_feature``: BNNeck(f4) [B, C]. ``logits``: [B, num_classes].
    Rows are visible images first, then infrared ones.
    """

    features: dict[str, Tensor]
    bn_feature: Tensor
    logits: Tensor


def output_depth(output: str) -> int:
    """The last backbone stage ``output`` passes through (0 the stem .. 4 layer4)."""
    if output not in OUTPUTS:
        raise ConfigError(f"unknown model output {output!r}; choose from: {', '.join(OUTPUTS)}")
    return SCALES.index(output.removeprefix("features.")) + 1 if output.startswith("features.") else len(SCALES)


def _stage_scale(stage: int) -> str | None:
    """Scale name of a stage index (0 is the stem, which has none)."""
    return SCALES[stage - 1] if stage >= 1 else None


class MCLNet(nn.Module):
    """Two-stream network with deep supervision on four scales.

    Stages ``0..specific_stages-1`` (stem, layer1, ...) are per modality, the rest
    shared. Projection heads bring layer1..layer3 to layer4's channel count; a
    head is per modality exactly when its stage is.
    """

    def __init__(self, backbone: TwoStreamBackbone, num_classes: int, pooling: str = "gem", gem_p: float = 3.0) -> None:
        super().__init__()
        if num_classes < 1:
            raise ConfigError(f"num_classes must be at least 1, got {num_classes!r}")
        self.backbone = backbone
        self.num_classes = num_classes
        channels = dict(zip(SCALES, backbone.channels))
        self.feature_dim: int = channels["layer4"]
        k = backbone.specific_stages
        self.specific_heads = nn.ModuleDict(
            {
                m.value: nn.ModuleDict(
                    {
                        _stage_scale(s): projection_head(channels[_stage_scale(s)], self.feature_dim)
                        for s in range(1, k)
                    }
                )
                for m in (Modality.VISIBLE, Modality.INFRARED)
            }
        )
        self.shared_heads = nn.ModuleDict(
            {_stage_scale(s): projection_head(channels[_stage_scale(s)], self.feature_dim) for s in range(k, 4)}
        )
        self.pool = build_pooling(pooling, gem_p)
        self.neck = BNNeck(self.feature_dim, num_classes)

    # ------------------------------------------------------------------ forward

    def forward(self, visible: Tensor | None = None, infrared: Tensor | None = None) -> ModelOutput:
        """Both modalities through their own stages, then concatenated (visible first) for the shared ones."""
        inputs = [(m, x) for m, x in ((Modality.VISIBLE, visible), (Modality.INFRARED, infrared)) if x is not None]
        if not inputs:
            raise ValueError("MCLNet.forward needs visible and/or infrared images")
        k = self.backbone.specific_stages
        specific_feats: dict[str, list[Tensor]] = {}
        last_maps = []
        for modality, images in inputs:
            maps = self.backbone.forward_specific(images, modality)
            heads = self.specific_heads[modality.value]
            for stage in range(1, k):
                scale = _stage_scale(stage)
                specific_feats.setdefault(scale, []).append(self.pool(heads[scale](maps[stage])))
            last_maps.append(maps[-1])
        x = last_maps[0] if len(last_maps) == 1 else torch.cat(last_maps, dim=0)
        features = {scale: torch.cat(parts, dim=0) for scale, parts in specific_feats.items()}
        for offset, fmap in enumerate(self.backbone.forward_shared(x)):
            scale = _stage_scale(k + offset)
            features[scale] = self.pool(self.shared_heads[scale](fmap) if scale != "layer4" else fmap)
        bn_feature, logits = self.neck(features["layer4"])
        return ModelOutput(features={s: features[s] for s in SCALES}, bn_feature=bn_feature, logits=logits)

    def embed(self, images: Tensor, modality: Modality | str, feature: str = "bn") -> Tensor:
        """L2-normalised retrieval feature [B, C] of one modality's images.

        ``feature="bn"``: BNNeck(f4) (the default inference feature); ``"pool"``:
        pre-BN f4. Skips the projection heads, which only serve training.
        """
        if feature not in FEATURES:
            raise ConfigError(f"feature: unknown {feature!r}; choose from: {', '.join(FEATURES)}")
        return self.embed_all(images, modality)[feature]

    def pooled(self, images: Tensor, modality: Modality | str) -> Tensor:
        """Pre-BN f4 [B, C] of one modality's images, as inference computes it (no projection heads)."""
        modality = Modality.parse(modality)
        x = self.backbone.forward_specific(images, modality)[-1]
        return self.pool(self.backbone.forward_shared(x)[-1])

    def embed_all(self, images: Tensor, modality: Modality | str) -> dict[str, Tensor]:
        """Both retrieval features (``bn`` and ``pool``) from one forward pass, L2-normalised."""
        f4 = self.pooled(images, modality)
        return {"bn": F.normalize(self.neck.bn(f4).float(), dim=1), "pool": F.normalize(f4.float(), dim=1)}

    # ------------------------------------------------------- parameter groups

    def head_parameters(self) -> Iterator[nn.Parameter]:
        """Trainable BNNeck + classifier parameters (the high-lr group)."""
        return (p for p in self.neck.parameters() if p.requires_grad)

    # ------------------------------------------------- which parameters feed which outputs

    @staticmethod
    def uses_every_parameter(outputs: Iterable[str]) -> bool:
        """Whether a loss reading ``outputs`` (names of :data:`OUTPUTS`) reaches every trainable parameter.

        True for any stage split: every projection head's scale (layer1..layer3) and
        the logits (which pass layer4 and the whole BNNeck) must be read.
        """
        read = set(outputs)
        for output in read:
            output_depth(output)  # an unknown name is an error, not "unused"
        return {f"features.{scale}" for scale in SCALES[:-1]} | {"logits"} <= read

    def parameters_unused_by(self, outputs: Iterable[str]) -> list[nn.Parameter]:
        """The trainable parameters none of ``outputs`` depends on: a loss reading only those never reaches them.

        A backbone stage feeds every output at its depth or deeper; a projection head
        only its scale's feature; the BNNeck's BN feeds ``bn_feature`` and ``logits``,
        its classifier only ``logits``.
        """
        read = set(outputs)
        deepest = max((output_depth(o) for o in read), default=-1)
        k = self.backbone.specific_stages
        unused: list[nn.Module] = [
            stage for streams in self.backbone.specific.values() for depth, stage in enumerate(streams) if depth > deepest
        ]
        unused += [stage for depth, stage in enumerate(self.backbone.shared, start=k) if depth > deepest]
        heads = [*self.specific_heads.values(), self.shared_heads]
        unused += [head for group in heads for scale, head in group.items() if f"features.{scale}" not in read]
        if not read & {"bn_feature", "logits"}:
            unused.append(self.neck.bn)
        if "logits" not in read:
            unused.append(self.neck.classifier)
        return [p for module in unused for p in module.parameters() if p.requires_grad]


def build_model(model_cfg: ModelConfig, num_classes: int) -> MCLNet:
    """MCLNet from the ``model`` config section and the number of training identities.

    ``model.pretrained`` names ResNet weights (``imagenet`` or a torchvision state dict, loaded into
    the backbone) or weights shipped with the package for the whole network (``synthetic``:
    :mod:`mclnet_cli.model.pretrained`); the classifier always starts fresh.
    """
    packaged = is_packaged(model_cfg.pretrained)
    resnet = build_resnet(
        model_cfg.arch, "none" if packaged else model_cfg.pretrained, model_cfg.last_stride, model_cfg.base_channels
    )
    backbone = TwoStreamBackbone(resnet, model_cfg.specific_stages)
    model = MCLNet(backbone, num_classes, pooling=model_cfg.pooling, gem_p=model_cfg.gem_p)
    if packaged:
        load_packaged_into(model, model_cfg)
    return model
