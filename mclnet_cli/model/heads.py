"""Building blocks on top of the backbone: projection heads, pooling, BNNeck."""

from __future__ import annotations

import math

from torch import Tensor, nn

from mclnet_cli.config import Pooling, names
from mclnet_cli.errors import ConfigError

POOLINGS = names(Pooling)


class GeM(nn.Module):
    """Generalized mean pooling over the spatial dims: (mean x^p)^(1/p), p fixed.

    Computed in float32 so that x^3 cannot overflow under mixed precision.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        if p <= 0:
            raise ConfigError(f"model.gem_p must be positive, got {p!r}")
        self.p = float(p)
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.float().clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        return pooled.pow(1.0 / self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class AvgPool(nn.Module):
    """Global average pooling over the spatial dims -> [B, C] (float32)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.float().mean(dim=(2, 3))


def build_pooling(name: str, p: float = 3.0) -> nn.Module:
    """``gem`` (GeM with exponent ``p``) or ``avg``."""
    if name == "gem":
        return GeM(p)
    if name == "avg":
        return AvgPool()
    raise ConfigError(f"model.pooling: unknown {name!r}; choose from: {', '.join(POOLINGS)}")


class SeparableBlock(nn.Sequential):
    """The authors' separable block (their ``SepConv``), halving the resolution.

    depthwise 3x3 stride 2 on ``in_channels`` -> 1x1 ``in -> in`` -> BN -> ReLU ->
    depthwise 3x3 -> 1x1 ``in -> out`` -> BN -> ReLU. The channel count changes in
    the *second* 1x1 convolution, so every layer index and shape matches the
    authors' checkpoints (``auxiliaryN.B.op.I`` is block ``B``, layer ``I``).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, in_channels, 1, bias=False),
            nn.BatchNorm2d(in_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(in_channels, in_channels, 3, stride=1, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        init_head(self)


def init_head(module: nn.Module) -> None:
    """The authors' ResNet init for head layers: conv ~ N(0, sqrt(2 / (k*k*out))), BN weight 1, bias 0."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            fan_out = layer.kernel_size[0] * layer.kernel_size[1] * layer.out_channels
            nn.init.normal_(layer.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.ones_(layer.weight)
            nn.init.zeros_(layer.bias)


def projection_head(in_channels: int, out_channels: int) -> nn.Sequential:
    """Stack of :class:`SeparableBlock`, each doubling channels, from ``in_channels`` to ``out_channels``.

    resnet50: layer1 256->512->1024->2048 (3 blocks), layer2 2 blocks, layer3 1 block.
    """
    blocks = []
    channels = in_channels
    while channels < out_channels:
        blocks.append(SeparableBlock(channels, channels * 2))
        channels *= 2
    if channels != out_channels or not blocks:
        raise ConfigError(
            f"projection head: cannot double {in_channels} channels up to {out_channels}"
        )
    return nn.Sequential(*blocks)


class BNNeck(nn.Module):
    """BatchNorm1d with a frozen zero bias, then a bias-free linear classifier.

    Init as the authors': BN weight ~ N(1, 0.01), bias 0; classifier ~ N(0, 0.001).
    """

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.normal_(self.bn.weight, mean=1.0, std=0.01)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """``feature`` [B, C] -> (BN feature [B, C], logits [B, num_classes])."""
        bn_feature = self.bn(feature)
        return bn_feature, self.classifier(bn_feature)
