"""``mclnet train --init CKPT``: start a new run from the weights of an mclnet checkpoint.

Everything but the classifier is loaded (backbone, projection heads, pooling and
the BNNeck): the checkpoint's model section must equal the run's (``model.pretrained``
aside, which ``--init`` replaces). The classifier maps features to the identities
of the set it was trained on: it is kept when the new set has as many identities,
and re-made (freshly initialised) otherwise. :class:`InitRecord` says which, and is
written to summary.json, environment.json and every checkpoint of the run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from mclnet_cli.config import Config, ModelConfig, config_from_dict
from mclnet_cli.engine.checkpoint import file_fingerprint, load_checkpoint, validate_payload
from mclnet_cli.errors import CheckpointError, ConfigError

CLASSIFIER = "neck.classifier.weight"
AUTHORS_PREFIXES = ("visible_module.", "thermal_module.", "base_resnet.", "module.visible_module.")
MODEL_KEYS_IGNORED = ("pretrained",)  # --init replaces where the weights come from


@dataclass(frozen=True)
class InitCheckpoint:
    """An mclnet checkpoint read for ``--init``: its weights, model config and identity."""

    path: Path
    fingerprint: str
    weights: dict[str, torch.Tensor]
    model: ModelConfig
    num_classes: int


@dataclass(frozen=True)
class InitRecord:
    """Where a run started: the checkpoint, its fingerprint, and what became of the classifier."""

    path: str
    fingerprint: str
    classifier: str  # kept | re-made
    init_classes: int
    classes: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        reason = "the same number of identities" if self.classifier == "kept" else (
            f"{self.init_classes} identities there, {self.classes} here"
        )
        return f"weights from {self.path} (fingerprint {self.fingerprint}); classifier {self.classifier} ({reason})"


def _authors_file(path: Path) -> bool:
    """Whether ``path`` reads (safely) as a checkpoint of the authors' code."""
    from mclnet_cli.engine.convert import read_authors_checkpoint

    try:
        obj = read_authors_checkpoint(path)
    except CheckpointError:
        return False
    state = obj.get("main_net", obj) if isinstance(obj, Mapping) else None
    return isinstance(state, Mapping) and any(str(k).startswith(AUTHORS_PREFIXES) for k in state)


def read_init(path: Path | str) -> InitCheckpoint:
    """Read ``--init PATH``; an authors' checkpoint is refused with the command that converts it."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"--init {path} is a folder; give a checkpoint file (e.g. {path / 'last.pt'})")
    if not path.is_file():
        raise CheckpointError(f"--init {path}: checkpoint not found")
    try:
        payload = load_checkpoint(path)
    except CheckpointError as exc:
        if _authors_file(path):
            raise CheckpointError(
                f"--init {path} is a checkpoint of the authors' code; convert it first: "
                f"mclnet convert {path} --out {path.with_suffix('')}-mclnet.pt, then --init that file"
            ) from None
        raise CheckpointError(_refusal(exc, path)) from None
    validate_payload(path, payload)
    try:
        model = config_from_dict(payload["config"]).model
    except (ConfigError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"--init {path}: its stored config is not valid for this mclnet version ({exc})") from None
    weights = {str(k): v for k, v in payload["model"].items()}
    return InitCheckpoint(path, file_fingerprint(path), weights, model, int(payload["num_classes"]))


def _refusal(exc: CheckpointError, path: Path) -> str:
    """The checkpoint error's one line, led by ``--init PATH`` (the option the user gave)."""
    text, loading = str(exc), f"cannot load checkpoint {path}: "
    if text.startswith(loading):
        return f"--init {path}: cannot load it: {text[len(loading):]}"
    if text.startswith(f"{path} "):
        return f"--init {text}"
    return f"--init {path}: {text}"


def check_model(init: InitCheckpoint, model: ModelConfig) -> None:
    """The run's model section must describe the checkpoint's network (``model.pretrained`` aside)."""
    ours, theirs = dataclasses.asdict(model), dataclasses.asdict(init.model)
    for key, value in theirs.items():
        if key in MODEL_KEYS_IGNORED or ours.get(key) == value:
            continue
        raise ConfigError(
            f"--init {init.path} is a model with model.{key}={value!r} but the run's config has {ours.get(key)!r}; "
            f"pass --set model.{key}={value} (or a preset of the same model)"
        )


def build_config(config: Config) -> ModelConfig:
    """The model section to build the network with before ``--init`` weights go in: nothing downloaded."""
    return dataclasses.replace(config.model, pretrained="none")


def apply_init(model: torch.nn.Module, init: InitCheckpoint, num_classes: int) -> InitRecord:
    """Load ``init``'s weights into ``model``; the classifier only when the identity counts match."""
    weights = dict(init.weights)
    kept = init.num_classes == num_classes
    if not kept:
        weights.pop(CLASSIFIER, None)
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise CheckpointError(f"--init {init.path}: weights do not fit the run's model ({lines[-1] if lines else exc})") from None
    missing = [k for k in missing if kept or k != CLASSIFIER]
    if missing or unexpected:
        names = ", ".join([*missing, *unexpected][:3])
        raise CheckpointError(f"--init {init.path}: weights do not match the run's model (e.g. {names})")
    return InitRecord(str(init.path.resolve()), init.fingerprint, "kept" if kept else "re-made", init.num_classes, num_classes)
