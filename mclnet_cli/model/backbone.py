"""Two-stream split of a torchvision ResNet.

Stage 0 is the stem (conv1, bn1, relu, maxpool), stages 1..4 are layer1..layer4.
The first ``specific_stages`` stages exist once per modality (deep copies, so
separate parameters); the rest are shared by both modalities. Pretrained weights
are loaded into the single torchvision ResNet *before* it is split, so every
modality copy starts from the same weights.
"""

from __future__ import annotations

import copy
import pickle
import urllib.error
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn
from torchvision import models

from mclnet_cli.types import Modality
from mclnet_cli.errors import CheckpointError, ConfigError

#: block type and blocks per stage, for the ResNets built at another ``model.base_channels`` than torchvision's 64
LAYOUTS: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet18": (models.resnet.BasicBlock, (2, 2, 2, 2)),
    "resnet34": (models.resnet.BasicBlock, (3, 4, 6, 3)),
    "resnet50": (models.resnet.Bottleneck, (3, 4, 6, 3)),
}
ARCHS: dict[str, tuple[Any, str]] = {
    "resnet18": (models.resnet18, "ResNet18_Weights"),
    "resnet34": (models.resnet34, "ResNet34_Weights"),
    "resnet50": (models.resnet50, "ResNet50_Weights"),
}
NUM_STAGES = 5  # stem, layer1, layer2, layer3, layer4


def _weights_enum(arch: str) -> Any:
    return getattr(models, ARCHS[arch][1]).IMAGENET1K_V1


def _imagenet_state_dict(arch: str) -> dict[str, Tensor]:
    """ImageNet weights through torchvision's weights API (downloads once, then cached)."""
    weights = _weights_enum(arch)
    try:
        return weights.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise CheckpointError(
            f"model.pretrained=imagenet: could not get {arch} ImageNet weights ({weights.url}): {reason}; "
            "use model.pretrained=none or model.pretrained=<path to a local torchvision state dict>"
        ) from exc


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, Tensor]:
    """Accept a bare state dict or one nested under ``state_dict``/``model``; drop ``module.``."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"model.pretrained={path}: not a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def _local_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise CheckpointError(
            f"model.pretrained={path}: file not found; expected imagenet, none or a path to a torchvision resnet state dict"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        from mclnet_cli.errors import load_failure  # one line, never torch's weights_only=False advice

        raise CheckpointError(f"model.pretrained={path}: cannot read as a torch state dict ({load_failure(exc)})") from exc
    return _unwrap_state_dict(obj, path)


def _load_into(resnet: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Strictly load a torchvision-named state dict, ignoring the ImageNet ``fc`` classifier."""
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    own = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise CheckpointError(f"{source}: keys do not match a torchvision resnet: {'; '.join(detail)}")
    for key, value in own.items():
        if tuple(state[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)} "
                "(wrong architecture? check model.arch)"
            )
    resnet.load_state_dict(state, strict=False)


def narrow_resnet(arch: str, base_channels: int) -> nn.Module:
    """A torchvision ``ResNet`` of ``arch``'s blocks with ``base_channels`` channels in the stem and layer1
    (layer k: ``base_channels * 2**(k-1)`` planes), initialised as torchvision initialises its own.

    Why: from scratch on a CPU, a narrower network takes several times more steps in the same
    time (resnet18 at width 32: about a quarter of the multiply-adds). The module names are
    torchvision's, so everything downstream (stage split, converters, export) is unchanged.
    """
    block, layers = LAYOUTS[arch]
    resnet = models.ResNet(block, list(layers))
    resnet.inplanes = base_channels
    resnet.conv1 = nn.Conv2d(3, base_channels, kernel_size=7, stride=2, padding=3, bias=False)
    resnet.bn1 = nn.BatchNorm2d(base_channels)
    for k, blocks in enumerate(layers):
        stage = resnet._make_layer(block, base_channels * 2**k, blocks, stride=1 if k == 0 else 2)
        setattr(resnet, f"layer{k + 1}", stage)
    resnet.fc = nn.Linear(base_channels * 8 * block.expansion, resnet.fc.out_features)
    for module in resnet.modules():  # torchvision's ResNet.__init__ does the same for its own modules
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return resnet


def build_resnet(arch: str, pretrained: str = "none", last_stride: int = 1, base_channels: int = 64) -> nn.Module:
    """A torchvision ResNet with the requested weights, width (``base_channels``) and stride of its last stage.

    ``pretrained`` is ``imagenet``, ``none`` or a path to a state dict with
    torchvision key names. ``last_stride=1`` keeps layer4 at layer3's resolution
    (18x9 for a 288x144 input), as person re-id models usually do. ``base_channels``
    other than 64 (:func:`narrow_resnet`) only from scratch: no pretrained weights have it.
    """
    if arch not in ARCHS:
        raise ConfigError(f"model.arch: unknown {arch!r}; choose from: {', '.join(ARCHS)}")
    if last_stride not in (1, 2):
        raise ConfigError(f"model.last_stride must be 1 or 2, got {last_stride!r}")
    choice = str(pretrained).strip()
    if base_channels != 64 and choice.lower() not in ("none", ""):
        raise ConfigError(f"model.base_channels={base_channels} needs model.pretrained=none: pretrained ResNet weights are 64 wide")
    resnet = ARCHS[arch][0](weights=None) if base_channels == 64 else narrow_resnet(arch, base_channels)
    if choice.lower() == "imagenet":
        _load_into(resnet, _imagenet_state_dict(arch), f"{arch} ImageNet weights")
    elif choice.lower() not in ("none", ""):
        path = Path(choice).expanduser()
        _load_into(resnet, _local_state_dict(path), f"model.pretrained={path}")
    if last_stride == 1:
        _set_last_stride_one(resnet.layer4)
    return resnet


def _set_last_stride_one(layer4: nn.Module) -> None:
    first = layer4[0]
    for conv in (getattr(first, "conv1", None), getattr(first, "conv2", None)):
        if conv is not None and conv.stride != (1, 1):
            conv.stride = (1, 1)
    if first.downsample is not None:
        first.downsample[0].stride = (1, 1)


def resnet_stages(resnet: nn.Module) -> list[nn.Module]:
    """The five stages of a torchvision ResNet: stem, layer1..layer4."""
    stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
    return [stem, resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]


def stage_channels(resnet: nn.Module) -> tuple[int, int, int, int]:
    """Output channels of layer1..layer4 (at ``base_channels`` 64: 64..512 for resnet18/34, 256..2048 for resnet50)."""
    out = []
    for layer in (resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4):
        last_block = layer[-1]
        bn = last_block.bn3 if hasattr(last_block, "bn3") else last_block.bn2
        out.append(bn.num_features)
    return tuple(out)  # type: ignore[return-value]


class TwoStreamBackbone(nn.Module):
    """Modality-specific stages ``0..specific_stages-1``, then shared stages up to layer4."""

    def __init__(self, resnet: nn.Module, specific_stages: int = 3) -> None:
        super().__init__()
        if not 1 <= specific_stages <= NUM_STAGES - 1:
            raise ConfigError(f"model.specific_stages must be between 1 and 4, got {specific_stages!r}")
        stages = resnet_stages(resnet)
        self.specific_stages = specific_stages
        self.channels = stage_channels(resnet)
        self.specific = nn.ModuleDict(
            {
                m.value: nn.ModuleList(copy.deepcopy(s) for s in stages[:specific_stages])
                for m in (Modality.VISIBLE, Modality.INFRARED)
            }
        )
        self.shared = nn.ModuleList(stages[specific_stages:])

    def forward_specific(self, images: Tensor, modality: Modality) -> list[Tensor]:
        """Outputs of the modality's own stages, in order (stem first)."""
        maps = []
        x = images
        for stage in self.specific[modality.value]:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_shared(self, x: Tensor) -> list[Tensor]:
        """Outputs of the shared stages, in order (layer4 last)."""
        maps = []
        for stage in self.shared:
            x = stage(x)
            maps.append(x)
        return maps
