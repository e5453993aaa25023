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
from mclnet_cli.data.preprocess import Preprocess
from mclnet_cli.errors import CheckpointError, ConfigError, load_failure

FORMAT = "mclnet-checkpoint/1"


@dataclass
class LoadedModel:
    """A model rebuilt from a checkpoint, in eval mode, with what it was trained with.

    ``preprocess`` is the checkpoint's :class:`~mclnet_cli.data.preprocess.Preprocess` record
    (image size, resize filter, mean/std, retrieval feature): every embedding path reads it.
    """

    model: torch.nn.Module
    config: Config
    label_map: dict[int, int]
    fingerprint: str
    payload: dict[str, Any]
    path: Path
    degenerate_neck_channels: int = 0  # BNNeck channels whose statistics were steadied on load (recalibrate.steady_neck)
    preprocess: Preprocess = None  # type: ignore[assignment]  # how its images are fed; None: from ``config``

    def __post_init__(self) -> None:
        if self.preprocess is None:
            self.preprocess = Preprocess.from_config(self.config)


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
        raise CheckpointError(f"cannot load checkpoint {path}: {load_failure(exc)}") from exc
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
    """Rebuild the model a checkpoint was trained as, load its weights, move to ``device``, eval mode.

    BNNeck channels without a resolvable spread are steadied (``recalibrate.steady_neck``),
    so that every path that loads a model gets the same batch-independent feature.
    """
    from mclnet_cli.engine.recalibrate import steady_neck
    from mclnet_cli.model import build_model

    path = Path(path)
    payload = load_checkpoint(path)
    validate_payload(path, payload)
    try:
        config = config_from_dict(payload["config"])
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: stored config is not valid for this mclnet version ({exc})") from exc
    # Weights come from the checkpoint: never fetch pretrained weights here.
    model_cfg = dataclasses.replace(config.model, pretrained="none")
    try:
        model = build_model(model_cfg, int(payload["num_classes"]))
    except (ConfigError, ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot build the model its config describes ({exc})") from exc
    _check_shapes(path, payload, model.state_dict())
    try:
        missing, unexpected = model.load_state_dict(payload["model"], strict=False)
    except RuntimeError as exc:  # anything _check_shapes did not name
        first = str(exc).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit the model in its config ({first[-1] if first else exc})") from exc
    if missing or unexpected:
        names = ", ".join((list(missing) + list(unexpected))[:3])
        raise CheckpointError(f"{path}: weights do not match the model in its config (e.g. {names})")
    # checkpoints written before steady_statistics existed: the same rule on load (a no-op otherwise)
    steadied = steady_neck(model.neck.bn) if hasattr(model, "neck") else 0
    model.to(device).eval()
    label_map = {int(k): int(v) for k, v in payload.get("label_map", {}).items()}
    return LoadedModel(model, config, label_map, file_fingerprint(path), payload, path, steadied)


def _int_like(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, str) and value.lstrip("-").isdigit())


def validate_payload(path: Path, payload: Mapping[str, Any]) -> None:
    """Check every field :func:`load_model` uses, before use: one line per problem.

    ``model`` a dict of tensors, ``config`` a dict, ``num_classes`` a positive int,
    ``label_map`` int -> int with ``num_classes`` entries, and the classifier's
    rows equal to ``num_classes``.
    """

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}; not a checkpoint this mclnet wrote (or damaged)")

    weights = payload.get("model")
    if not isinstance(weights, Mapping) or not weights:
        raise bad("no 'model' weights" if weights is None else "'model' is not a dict of weights")
    for key, value in weights.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise bad(f"'model' entry {key!r} is not a named tensor")
    if not isinstance(payload.get("config"), Mapping):
        raise bad("no 'config' dict")
    num_classes = payload.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise bad(f"'num_classes' must be a positive integer, got {num_classes!r}")
    label_map = payload.get("label_map", {})
    if not isinstance(label_map, Mapping) or not all(
        _int_like(k) and _int_like(v) for k, v in label_map.items()
    ):
        raise bad("'label_map' must map integer person ids to integer labels")
    if label_map and len(label_map) != num_classes:
        raise bad(f"'label_map' has {len(label_map)} ids but 'num_classes' is {num_classes}")
    for key, value in weights.items():
        if key.endswith("classifier.weight") and value.dim() == 2 and value.shape[0] != num_classes:
            raise bad(f"{key} has {value.shape[0]} rows but 'num_classes' is {num_classes}")


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
