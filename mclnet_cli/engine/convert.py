"""Convert a checkpoint written by the authors' MCLNet code into an mclnet checkpoint.

Their training script saves ``torch.save({"main_net": state_dict, "cmc": array,
"mAP": float, "mINP": float, "epoch": int, "n_class": int})``. The file is read
with ``weights_only=True`` plus exactly the numpy types such a file holds, so a
crafted pickle can never run code. Every tensor is placed (or named as unused by
the authors' own forward), every shape checked, and the result is a normal
checkpoint under the ``official-code`` preset that ``evaluate``, ``index`` and
``query`` load as they are.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from mclnet_cli.atomic import refuse_overwrite
from mclnet_cli.config import flatten, load_config, parse_override
from mclnet_cli.engine.checkpoint import FORMAT as CHECKPOINT_FORMAT
from mclnet_cli.engine.checkpoint import checkpoint_payload, save_checkpoint
from mclnet_cli.errors import NOT_A_CHECKPOINT, CheckpointError, ConfigError, holds_foreign_objects, load_failure
from mclnet_cli.model import build_model
from mclnet_cli.model.authors import infer_arch, map_key, specific_stages, unused_block

PRESET = "official-code"
_MULTIARRAY = ("numpy._core.multiarray", "numpy.core.multiarray")  # numpy 2 and numpy 1 pickles
#: the only non-tensor globals an authors' checkpoint needs: numpy arrays and scalars
_multiarray = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
NUMPY_GLOBALS: list[Any] = [
    *((_multiarray.multiarray._reconstruct, f"{m}._reconstruct") for m in _MULTIARRAY),
    *((_multiarray.multiarray.scalar, f"{m}.scalar") for m in _MULTIARRAY),
    np.ndarray,
    np.dtype,
    *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")),
]


@dataclass
class ConversionReport:
    """What a conversion did: tensors placed, tensors skipped and why, the source's metadata."""

    source: str
    out: str
    num_classes: int
    arch: str
    specific_stages: int
    mapped: int
    unused: list[str] = field(default_factory=list)
    ignored_entries: dict[str, Any] = field(default_factory=dict)
    module_prefix: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "out": self.out,
            "preset": PRESET,
            "num_classes": self.num_classes,
            "arch": self.arch,
            "specific_stages": self.specific_stages,
            "tensors_mapped": self.mapped,
            "tensors_unused": len(self.unused),
            "unused_reason": "shrinkage modules of the authors' ResNet blocks, never called by their forward",
            "ignored_entries": self.ignored_entries,
            "module_prefix_removed": self.module_prefix,
        }


def read_authors_checkpoint(path: Path) -> Any:
    """``torch.load`` with weights only plus numpy arrays and scalars; one clear error otherwise."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with torch.serialization.safe_globals(NUMPY_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not holds_foreign_objects(exc):  # random bytes, another format: no pickle at all
            raise CheckpointError(f"{path}: {NOT_A_CHECKPOINT}; give the .pth file the authors' code saved") from None
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused to load: it holds an object other than tensors, numbers and numpy arrays{what}"
        ) from None
    except Exception as exc:  # torch raises several types for files that are not checkpoints
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({load_failure(exc)[:200]})") from None


def _split_payload(obj: Any, path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict, the other entries) of a ``{"main_net": ...}`` file or a bare state dict."""
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is already an mclnet checkpoint ({CHECKPOINT_FORMAT}): it needs no conversion; "
            "give it to evaluate, index, query or export as it is"
        )
    if isinstance(obj, Mapping) and isinstance(obj.get("main_net"), Mapping):
        state, extras = obj["main_net"], {k: v for k, v in obj.items() if k != "main_net"}
    elif isinstance(obj, Mapping):
        state, extras = obj, {}
    else:
        raise CheckpointError(f"{path}: expected a dict with 'main_net' or a state dict, found {type(obj).__name__}")
    bad = next((k for k, v in state.items() if not isinstance(v, torch.Tensor)), None)
    if bad is not None or not state:
        what = f"{bad!r} is {type(state[bad]).__name__}" if bad is not None else "it is empty"
        raise CheckpointError(f"{path}: not a state dict of tensors ({what})")
    return dict(state), extras


def _plain(value: Any) -> Any:
    """JSON- and weights_only-friendly copy of a metadata entry (numpy -> Python)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value if isinstance(value, (int, float, str, bool, type(None))) else repr(value)


def _num_classes(state: Mapping[str, torch.Tensor], extras: Mapping[str, Any], path: Path) -> int:
    weight = state.get("classifier.weight")
    if weight is None or weight.dim() != 2:
        raise CheckpointError(f"{path}: missing key classifier.weight (a [classes, features] matrix)")
    rows = int(weight.shape[0])
    declared = extras.get("n_class")
    if declared is None:
        return rows
    count = _whole_number(declared)
    if count is None:
        raise CheckpointError(f"{path}: n_class must be a whole number of classes, got {_plain(declared)!r}")
    if count != rows:
        raise CheckpointError(f"{path}: n_class is {count} but classifier.weight has {rows} rows")
    return rows


def _whole_number(value: Any) -> int | None:
    """``value`` as an int when it is one (int, numpy integer, a whole float, a one-element integer tensor), else None."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return None
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def convert_authors_checkpoint(
    source: Path | str, out: Path | str, overrides: Iterable[str] = (), *, force: bool = False
) -> ConversionReport:
    """Read the authors' checkpoint ``source``, check every tensor, write an mclnet checkpoint to ``out``.

    An existing ``out`` is replaced only with ``force``; ``out`` being ``source`` (also through a
    link) is always refused.
    """
    source, out = Path(source), Path(out)
    if out.is_dir():
        raise CheckpointError(f"{out} is a folder; give a file name such as mclnet.pt")
    refuse_overwrite([out], [source], force=force, error=CheckpointError)
    state, extras = _split_payload(read_authors_checkpoint(source), source)
    prefixed = all(k.startswith("module.") for k in state)
    if prefixed:
        state = {k[len("module."):]: v for k, v in state.items()}
    num_classes = _num_classes(state, extras, source)
    stages = specific_stages(list(state))
    arch = infer_arch(list(state))
    overrides = list(overrides)
    _refuse_determined(overrides, source, {
        "model.arch": (arch, f"it holds a {arch}"),
        "model.specific_stages": (stages, f"its streams hold {stages} modality-specific stages (share_net={stages})"),
        "model.pretrained": ("none", "its own weights replace any initialisation"),
        "model.base_channels": (64, "the authors' ResNet is torchvision's, 64 wide"),
    })
    config = load_config(
        PRESET, [*overrides, f"model.arch={arch}", "model.pretrained=none", f"model.specific_stages={stages}"]
    )
    model = build_model(config.model, num_classes)
    mapped, unused = _map_state(state, model.state_dict(), stages, source)
    model.load_state_dict(mapped, strict=True)
    payload = checkpoint_payload(
        model, config, {}, num_classes=num_classes,
        converted_from={"path": str(source), **{k: _plain(v) for k, v in extras.items()}},
    )
    save_checkpoint(out, payload)
    return ConversionReport(
        source=str(source), out=str(out), num_classes=num_classes, arch=arch, specific_stages=stages, mapped=len(mapped),
        unused=unused, ignored_entries={k: _plain(v) for k, v in extras.items()}, module_prefix=prefixed,
    )


def _refuse_determined(overrides: Iterable[str], source: Path, determined: Mapping[str, tuple[Any, str]]) -> None:
    """Refuse a ``--set`` of a key the authors' checkpoint decides (``determined``: key -> (its value, why)).

    The same value as the checkpoint's is accepted (it changes nothing); another one would be
    overwritten by the checkpoint's, so it is an error rather than silently ignored.
    """
    for text in overrides:
        keys, value = parse_override(text)
        key = ".".join(keys)
        given = flatten(value, prefix=f"{key}.") if isinstance(value, Mapping) else {key: value}
        for name, wanted in given.items():
            if name in determined and wanted != determined[name][0]:
                held, why = determined[name]
                raise ConfigError(
                    f"--set {text} does not apply to convert: {source} decides {name}={held} ({why}); leave it out"
                )


def _map_state(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], stages: int, source: Path
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Rename every tensor to mclnet's names with its shape checked; the unused shrinkage ones aside."""
    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    unused: list[str] = []
    for key, value in state.items():
        if unused_block(key, stages, expected):  # only the blocks' own shrinkage tensors, never a look-alike name
            unused.append(key)
            continue
        ours = map_key(key, stages)
        if ours is None or ours not in expected:
            raise CheckpointError(f"{source}: unexpected key {key}: not part of the authors' MCLNet (share_net={stages})")
        if ours in mapped:
            raise CheckpointError(f"{source}: {key} and {origin[ours]} both map to {ours}")
        want = expected[ours]
        if tuple(value.shape) != tuple(want.shape):
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)}, expected {tuple(want.shape)}"
            )
        mapped[ours] = value.to(want.dtype)
        origin[ours] = key
    missing = [k for k in expected if k not in mapped]
    if missing:
        theirs = _authors_name(missing[0], stages)
        raise CheckpointError(f"{source}: missing key {theirs} (mclnet {missing[0]}, shape {tuple(expected[missing[0]].shape)})")
    return mapped, unused


def _authors_name(ours: str, stages: int) -> str:
    """The authors' name of an mclnet tensor name (for messages about missing keys)."""
    streams = {"visible": "visible_module.visible.", "infrared": "thermal_module.thermal."}
    if m := re.match(r"^backbone\.specific\.(\w+)\.0\.([01])\.(.*)$", ours):
        return f"{streams[m.group(1)]}{('conv1', 'bn1')[int(m.group(2))]}.{m.group(3)}"
    if m := re.match(r"^backbone\.specific\.(\w+)\.(\d)\.(.*)$", ours):
        return f"{streams[m.group(1)]}layer{m.group(2)}.{m.group(3)}"
    if m := re.match(r"^backbone\.shared\.(\d)\.(.*)$", ours):
        return f"base_resnet.base.layer{int(m.group(1)) + stages}.{m.group(2)}"
    if m := re.match(r"^specific_heads\.(\w+)\.layer(\d)\.(\d+)\.(\d+)\.(.*)$", ours):
        return f"{streams[m.group(1)]}auxiliary{m.group(2)}.{m.group(3)}.op.{m.group(4)}.{m.group(5)}"
    if m := re.match(r"^shared_heads\.layer(\d)\.(\d+)\.(\d+)\.(.*)$", ours):
        return f"base_resnet.base.auxiliary{m.group(1)}.{m.group(2)}.op.{m.group(3)}.{m.group(4)}"
    if ours.startswith("neck.bn."):
        return "bottleneck." + ours[len("neck.bn."):]
    return "classifier.weight" if ours == "neck.classifier.weight" else ours
