"""Parameter names of the authors' public MCLNet code, mapped to this package's.

The authors' ``embed_net`` (github qyhsxdx/MCLNet, ``model/network.py``) holds:

- ``visible_module.visible.*`` / ``thermal_module.thermal.*``: the stem
  (``conv1``, ``bn1``), the modality-specific ResNet layers (``layer1``,
  ``layer2`` for ``share_net=3``) and their projection heads (``auxiliary1``,
  ``auxiliary2``);
- ``base_resnet.base.*``: the shared layers (``layer3``, ``layer4``) and the
  shared head ``auxiliary3``;
- ``bottleneck.*`` (BNNeck) and ``classifier.weight``.

A head block is ``auxiliaryN.B.op.I`` there and ``...layerN.B.I`` here. Every
ResNet bottleneck of theirs also carries a ``shrinkage`` module that its forward
never calls; those tensors are reported as unused, never loaded.
"""

from __future__ import annotations

import re
from typing import Container

from mclnet_cli.types import Modality

#: prefixes of the two modality streams in the authors' state dict
STREAM_PREFIXES = {"visible_module.visible.": Modality.VISIBLE, "thermal_module.thermal.": Modality.INFRARED}
SHARED_PREFIX = "base_resnet.base."
#: a tensor of a ResNet block's ``shrinkage`` module (built but never used by the authors' forward), under
#: a stream or the shared part; ``block`` is the block's own name. Only :func:`unused_block` decides.
UNUSED = re.compile(
    r"^(?P<block>(?:visible_module\.visible|thermal_module\.thermal|base_resnet\.base)\.layer[1-4]\.\d+)\.shrinkage\."
)

_STEM = {"conv1.": "0.0.", "bn1.": "0.1."}
_LAYER = re.compile(r"^layer(\d)\.(.*)$")
_BLOCK_CONV = re.compile(r"^layer(\d)\.\d+\.conv1\.weight$")
_HEAD = re.compile(r"^auxiliary(\d)\.(\d+)\.op\.(\d+)\.(.*)$")


def specific_stages(keys: list[str]) -> int:
    """The authors' ``share_net``: 1 + the number of ResNet layers inside the visible stream."""
    prefix = next(iter(STREAM_PREFIXES))
    # a layer counts by its blocks' convolutions: a stray tensor (a lone shrinkage one) makes no layer
    layers = {m.group(1) for k in keys if k.startswith(prefix) and (m := _BLOCK_CONV.match(k[len(prefix):]))}
    return 1 + len(layers)


def infer_arch(keys: list[str]) -> str:
    """resnet18/34/50 from the block type and the number of blocks in layer3 (their code builds resnet50)."""
    bottleneck = any(re.search(r"(^|\.)layer1\.0\.conv3\.weight$", k) for k in keys)
    blocks = {m.group(1) for k in keys if (m := re.search(r"(?:^|\.)layer3\.(\d+)\.conv1\.weight$", k))}
    if bottleneck:
        return "resnet50"
    return "resnet34" if len(blocks) > 2 else "resnet18"


def unused_block(key: str, num_specific: int, expected: Container[str]) -> bool:
    """True when ``key`` is a ``shrinkage`` tensor of a ResNet block this network really has.

    Only those are skipped as unused: a ``shrinkage`` name anywhere else (a head, the BNNeck,
    a block or layer the network does not have) is no part of the authors' model and is
    refused like any unexpected key.
    """
    found = UNUSED.match(key)
    if found is None:
        return False
    block = map_key(found.group("block") + ".conv1.weight", num_specific)
    return block is not None and block in expected


def map_key(key: str, num_specific: int) -> str | None:
    """The mclnet name of one authors' tensor name, or None when it has no place here."""
    for prefix, modality in STREAM_PREFIXES.items():
        if key.startswith(prefix):
            rest = key[len(prefix):]
            for theirs, ours in _STEM.items():
                if rest.startswith(theirs):
                    return f"backbone.specific.{modality.value}.{ours}{rest[len(theirs):]}"
            if (layer := _LAYER.match(rest)) and 1 <= int(layer.group(1)) < num_specific:
                return f"backbone.specific.{modality.value}.{layer.group(1)}.{layer.group(2)}"
            if (head := _HEAD.match(rest)) and 1 <= int(head.group(1)) < num_specific:
                scale, block, index, name = head.groups()
                return f"specific_heads.{modality.value}.layer{scale}.{block}.{index}.{name}"
            return None
    if key.startswith(SHARED_PREFIX):
        rest = key[len(SHARED_PREFIX):]
        if (layer := _LAYER.match(rest)) and num_specific <= int(layer.group(1)) <= 4:
            return f"backbone.shared.{int(layer.group(1)) - num_specific}.{layer.group(2)}"
        if (head := _HEAD.match(rest)) and num_specific <= int(head.group(1)) <= 3:
            scale, block, index, name = head.groups()
            return f"shared_heads.layer{scale}.{block}.{index}.{name}"
        return None
    if key.startswith("bottleneck."):
        return "neck.bn." + key[len("bottleneck."):]
    if key == "classifier.weight":
        return "neck.classifier.weight"
    return None
