"""Whole-network weights shipped with the package: ``model.pretrained=synthetic``.

The method starts from an ImageNet ResNet-50. The ``tiny`` preset cannot download one
and from random weights learns little in a few CPU minutes on data it was not tuned on
(docs/method.md, finding 13), so the package carries its own start: the ``tiny``
network (both modality stems, the shared stages, projection heads and BNNeck; not
the classifier, whose identities are another set's) trained on synthetic people of
the project's generators (``benchmarks/pretrain_tiny.py`` makes the file again).

The file is a plain dict of tensors, strings and numbers, read with
``weights_only=True``: ``format``, ``model`` (the model section it fits, without
``pretrained``), ``source`` (how it was made) and ``state`` (weights as float16, cast
back to float32 on load; BatchNorm running statistics as float32, because a variance
of 1e-9 is 0 in float16 and would read as a channel without spread; integer buffers
as they are).
"""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mclnet_cli.config import ModelConfig
from mclnet_cli.errors import CheckpointError, ConfigError

FORMAT = "mclnet-pretrained/1"
CLASSIFIER_PREFIX = "neck.classifier."
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: ``model.pretrained`` names of the shipped files
PACKAGED: dict[str, Path] = {"synthetic": WEIGHTS_DIR / "tiny-synthetic.pt"}
#: model keys a packaged file records (``pretrained`` names the file itself)
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.name != "pretrained")
#: the ones that decide its weights' names and shapes, so a run must match them; pooling, GeM's p and
#: the last stride have no weights, and change with the file as they do with ImageNet weights
FITTING_KEYS = ("arch", "base_channels", "specific_stages")


def is_packaged(name: str) -> bool:
    """Whether ``model.pretrained`` names weights shipped with the package (not imagenet, none or a path)."""
    return str(name).strip().lower() in PACKAGED


def model_section(model_cfg: ModelConfig) -> dict[str, Any]:
    """The model keys a packaged file records and must match (JSON types)."""
    return {key: getattr(model_cfg, key) for key in MODEL_KEYS}


def read_packaged(name: str, path: Path | None = None) -> dict[str, Any]:
    """Read (safely) and check the packaged file ``name``; ``path`` overrides where it lies (tests)."""
    name = str(name).strip().lower()
    path = Path(path) if path is not None else PACKAGED[name]
    source = f"model.pretrained={name} ({path})"
    if not path.is_file():
        raise CheckpointError(f"{source}: file not found; reinstall mclnet or use model.pretrained=none")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as exc:
        from mclnet_cli.errors import load_failure

        raise CheckpointError(f"{source}: cannot read it ({load_failure(exc)})") from exc
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{source}: not an mclnet pretrained-weights file (expected format {FORMAT})")
    state, model = obj.get("state"), obj.get("model")
    if not isinstance(model, Mapping) or not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{source}: its model section or state is missing or not tensors")
    return dict(obj)


def check_fits(packaged: Mapping[str, Any], model_cfg: ModelConfig, name: str) -> None:
    """The run's network must have the file's weights (:data:`FITTING_KEYS`; one line naming the key)."""
    ours = model_section(model_cfg)
    for key in FITTING_KEYS:
        theirs = packaged["model"].get(key)
        if theirs != ours[key]:
            raise ConfigError(
                f"model.pretrained={name} is a network with model.{key}={theirs!r} but the config has {ours[key]!r}; "
                f"pass --set model.{key}={theirs} or model.pretrained=none"
            )


def load_packaged_into(model: nn.Module, model_cfg: ModelConfig, *, path: Path | None = None) -> None:
    """Load the packaged weights named by ``model_cfg.pretrained`` into ``model`` (all but the classifier)."""
    name = str(model_cfg.pretrained).strip().lower()
    packaged = read_packaged(name, path)
    check_fits(packaged, model_cfg, name)
    own = model.state_dict()
    state = {str(k): v for k, v in packaged["state"].items()}
    expected = {k for k in own if not k.startswith(CLASSIFIER_PREFIX)}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        names = ", ".join([*missing, *unexpected][:3])
        raise CheckpointError(f"model.pretrained={name}: weights do not match the network (e.g. {names})")
    for key in expected:
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise CheckpointError(
                f"model.pretrained={name}: {key} has shape {tuple(state[key].shape)}, expected {tuple(own[key].shape)}"
            )
    cast = {k: (v.to(own[k].dtype) if v.is_floating_point() else v) for k, v in state.items()}
    model.load_state_dict(cast, strict=False)


STATISTICS = ("running_mean", "running_var")  # kept as float32 (see the module docstring)


def _stored(key: str, value: Tensor) -> Tensor:
    if value.is_floating_point() and not key.endswith(STATISTICS):
        return value.detach().to(torch.float16).clone()
    return value.detach().clone()


def packaged_payload(model: nn.Module, model_cfg: ModelConfig, source: Mapping[str, Any]) -> dict[str, Any]:
    """The dict a packaged file holds: ``model``'s weights but the classifier (float16; statistics float32)."""
    state = {k: _stored(k, v) for k, v in model.state_dict().items() if not k.startswith(CLASSIFIER_PREFIX)}
    return {"format": FORMAT, "model": model_section(model_cfg), "source": dict(source), "state": state}
