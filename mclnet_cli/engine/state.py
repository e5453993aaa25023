"""What a resumed run must get back exactly: RNG states, and the checks that a resume fits its run.

``last.pt`` stores :func:`rng_state` in a form ``torch.load(weights_only=True)``
accepts; :func:`check_resume` refuses a resume whose config, identities or epoch
count do not fit the run it continues (before anything is written).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mclnet_cli.config import Config, config_from_dict, flatten, upgrade_keys
from mclnet_cli.engine.optim import RESUMABLE_KEYS
from mclnet_cli.errors import CheckpointError, ConfigError

# Config keys that may change when a run is resumed (everything else must match the run).
RESUME_MUTABLE = ("train.", "eval.", "index.", "data.workers", "data.use_cache",
                  *(f"optim.{key}" for key in RESUMABLE_KEYS))  # optim.*: applied with a note (retune_after_resume)


def rng_state() -> dict[str, Any]:
    """torch / CUDA / numpy / python RNG states as tensors and plain lists."""
    np_kind, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": {
            "kind": str(np_kind),
            "keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "python": {"version": int(py_version), "internal": [int(x) for x in py_internal], "gauss": py_gauss},
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    npst = state["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached_gaussian"])
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch from one number."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resume_conflicts(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Config keys that differ between a run and its resume and may not change (e.g. model.arch).

    Keys renamed since the run was saved are compared under their new names; keys added
    since then count as their default (what the run trained with).
    """
    try:
        stored = config_from_dict(dict(stored)).to_dict()
    except (ConfigError, TypeError, ValueError):
        pass  # compare what is there: the conflicts name the keys
    old, new = flatten(upgrade_keys(stored)[0]), flatten(upgrade_keys(current)[0])
    changed = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUME_MUTABLE) or key in RESUME_MUTABLE:
            continue
        if old.get(key) != new.get(key):
            changed.append(f"{key} ({old.get(key)!r} -> {new.get(key)!r})")
    return changed


def check_resume(
    payload: Mapping[str, Any], config: Config, label_map: Mapping[int, int], *, last_path: Path, data_dir: Path,
) -> int:
    """The completed-epoch count of ``last.pt``'s ``payload``, after checking the resume fits the run.

    Raises ConfigError when the config drifted in a key that may not change or
    ``train.epochs`` is below the epochs already done, and CheckpointError when the
    training identities differ or the epoch count is missing.
    """
    out_dir = last_path.parent
    conflicts = resume_conflicts(payload.get("config", {}), config.to_dict())
    if conflicts:
        raise ConfigError(
            f"cannot resume {out_dir}: the config differs from the run's in {'; '.join(conflicts[:3])}; "
            "resume with the run's own settings (omit --preset to use its config.yaml) or choose another --out"
        )
    stored_map = {int(k): int(v) for k, v in payload.get("label_map", {}).items()}
    if stored_map != dict(label_map):
        raise CheckpointError(f"{last_path}: its training identities differ from {data_dir}'s (another dataset?)")
    done = payload.get("epoch")
    if isinstance(done, bool) or not isinstance(done, int) or done < 0:
        raise CheckpointError(f"{last_path}: no valid completed-epoch count (epoch={done!r}); not a last.pt?")
    if config.train.epochs < done:
        raise ConfigError(
            f"cannot resume {out_dir}: the run already has {done} epochs but train.epochs={config.train.epochs}; "
            f"--set train.epochs=M with M > {done} to continue"
        )
    return done
