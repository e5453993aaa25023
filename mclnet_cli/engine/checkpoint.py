"""Checkpoints: atomic writes, safe loads, and rebuilding a model from its own config.

A checkpoint is a ``torch.save`` of plain containers and tensors only, so it loads
with ``torch.load(weights_only=True)``: the model state dict, the resolved config
as a plain dict, the pid -> label map and the mclnet version (plus optimiser and
RNG states for ``last.pt``). Evaluation, indexing and querying rebuild the model
from the checkpoint's own config, so a model is never paired with the wrong
architecture.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mclnet_cli.atomic import atomic_write
from mclnet_cli.config import Config, config_from_dict
from mclnet_cli.errors import CheckpointError, ConfigError

FORMAT = "mclnet-checkpoint/1"


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what it was trained with."""

    model: torch.nn.Module
    config: Config
    label_map: dict[int, int]
    fingerprint: str
    payload: dict[str, Any]
    path: Path


def save_checkpoint(path: Path | str, payload: Mapping[str, Any]) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``."""
    return atomic_write(path, lambda handle: torch.save(dict(payload), handle))


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (``weights_only=True``); clear errors for missing or foreign files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or unsafe files
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {reason}") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an mclnet checkpoint (expected format {FORMAT!r})")
    return payload


def checkpoint_payload(
    model: torch.nn.Module, config: Config, label_map: Mapping[int, int], **extra: Any
) -> dict[str, Any]:
    """The dict :func:`save_checkpoint` stores: weights, config, label map, version, extras."""
    from mclnet_cli import __version__

    module = getattr(model, "module", model)  # unwrap DistributedDataParallel
    module = getattr(module, "_orig_mod", module)  # unwrap torch.compile
    return {
        "format": FORMAT,
        "mclnet_version": __version__,
        "config": config.to_dict(),
        "num_classes": len(label_map),
        "label_map": {int(k): int(v) for k, v in label_map.items()},
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        **extra,
    }


def file_fingerprint(path: Path | str, length: int = 16) -> str:
    """Hex prefix of the file's SHA-256: ties an index to the exact checkpoint that built it."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:length]


def load_model(path: Path | str, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the model a checkpoint was trained as, load its weights, move to ``device``, eval mode."""
    from mclnet_cli.model import build_model

    path = Path(path)
    payload = load_checkpoint(path)
    try:
        config = config_from_dict(payload["config"])
    except (ConfigError, KeyError) as exc:
        raise CheckpointError(f"{path}: stored config is not valid for this mclnet version ({exc})") from exc
    # Weights come from the checkpoint: never fetch pretrained weights here.
    model_cfg = dataclasses.replace(config.model, pretrained="none")
    model = build_model(model_cfg, int(payload["num_classes"]))
    _check_shapes(path, payload, model.state_dict())
    missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    if missing or unexpected:
        names = ", ".join((list(missing) + list(unexpected))[:3])
        raise CheckpointError(f"{path}: weights do not match the model in its config (e.g. {names})")
    model.to(device).eval()
    label_map = {int(k): int(v) for k, v in payload.get("label_map", {}).items()}
    return LoadedModel(model, config, label_map, file_fingerprint(path), payload, path)


def _check_shapes(path: Path, payload: Mapping[str, Any], expected: Mapping[str, torch.Tensor]) -> None:
    """One clear line for the first tensor whose shape differs from the rebuilt model's."""
    for key, value in payload["model"].items():
        want = expected.get(key)
        if want is None or tuple(want.shape) == tuple(value.shape):
            continue
        if "heads." in key:
            version = payload.get("mclnet_version", "?")
            raise CheckpointError(
                f"{path}: written by mclnet {version} with the earlier projection-head block "
                f"({key} is {tuple(value.shape)}, the authors' block needs {tuple(want.shape)}); "
                "since 0.2.0 the heads are the authors' — retrain, or keep mclnet 0.1 for this checkpoint"
            )
        raise CheckpointError(
            f"{path}: {key} has shape {tuple(value.shape)}, the model in its config needs {tuple(want.shape)}"
        )
