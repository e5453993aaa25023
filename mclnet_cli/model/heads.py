"""Building blocks on top of the backbone: projection heads, pooling, BNNeck."""

from __future__ import annotations

from torch import Tensor, nn

from mclnet_cli.errors import ConfigError

POOLINGS = ("gem", "avg")


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
    """Depthwise 3x3 (stride 2) -> 1x1 -> BN -> ReLU -> depthwise 3x3 -> 1x1 -> BN -> ReLU.

    Halves the resolution and maps ``in_channels`` to ``out_channels``.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1, groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, groups=out_channels, bias=False),
            nn.Conv2d(out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


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
    """BatchNorm1d with a frozen zero bias, then a bias-free linear classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.bn.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """``feature`` [B, C] -> (BN feature [B, C], logits [B, num_classes])."""
        bn_feature = self.bn(feature)
        return bn_feature, self.classifier(bn_feature)
