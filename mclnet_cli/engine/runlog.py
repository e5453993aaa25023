"""The run directory: resolved config, environment, metrics log and summary.

Layout of ``RUN_DIR``::

    config.yaml        the resolved config (rewritten on resume)
    environment.json   mclnet_cli.info.environment_info() (versions, threads...) plus device, GPU,
                       seed, command line, working folder, start time; a resumes list on resume
    metrics.jsonl      one JSON row per logged step window and per epoch
    last.pt / best.pt  checkpoints (written by the trainer via save_checkpoint)
    summary.json       written at the end (or when interrupted)
    .mclnet-lock       the writer lock: one training per run directory (see run_dir_lock)
    tensorboard/       only when the tensorboard package is importable
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping

from mclnet_cli.config import Config, flatten
from mclnet_cli.atomic import atomic_write_text, remove_orphan_temps
from mclnet_cli.errors import ConfigError
from mclnet_cli.locks import LOCK_FILE, folder_lock

CONFIG_FILE = "config.yaml"
ENVIRONMENT_FILE = "environment.json"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"
TENSORBOARD_DIR = "tensorboard"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# What a run writes before its first checkpoint: a directory holding only these (and no last.pt)
# is a run killed or failed before it saved anything, and may be started again in place.
STARTUP_FILES = (CONFIG_FILE, ENVIRONMENT_FILE, METRICS_FILE, SUMMARY_FILE, TENSORBOARD_DIR, LOCK_FILE)


def _own_temp(name: str) -> bool:
    """Temps of :func:`mclnet_cli.atomic.atomic_write` for a file of the run (``.NAME.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def unsaved_run(out_dir: Path) -> bool:
    """True when ``out_dir`` holds only what a run writes before its first checkpoint (no ``last.pt``)."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir() or (out_dir / LAST_CHECKPOINT).exists():
        return False
    entries = [p for p in out_dir.iterdir() if p.name != LOCK_FILE]
    if not entries:
        return True
    if not all(p.name in STARTUP_FILES or _own_temp(p.name) for p in entries):
        return False
    # Only what mclnet writes: environment.json of a run, or a temp of a killed/failed write.
    # (A config.yaml of the user's own, alone, is never taken for a run's and deleted.)
    return "mclnet_version" in read_json(out_dir / ENVIRONMENT_FILE) or any(_own_temp(p.name) for p in entries)


def clear_unsaved_run(out_dir: Path) -> list[str]:
    """Remove the startup files of a run that never saved a checkpoint; returns their names."""
    removed = []
    for path in sorted(Path(out_dir).iterdir()):
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and path.name == TENSORBOARD_DIR:
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed


def check_run_dir(out_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a run by accident, and to resume a run that has no ``last.pt``.

    A directory left by a run that stopped before its first checkpoint (killed, or
    a full disk during the first save) is not a run to protect: it is cleared and
    started again without ``--resume``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; expected a run directory")
    if resume:
        if not (out_dir / LAST_CHECKPOINT).is_file():
            hint = (
                "the run stopped before its first checkpoint; start it again without --resume"
                if unsaved_run(out_dir) and any(p.name != LOCK_FILE for p in out_dir.iterdir())
                else "start without --resume"
            )
            raise ConfigError(f"nothing to resume: {out_dir / LAST_CHECKPOINT} not found ({hint})")
        return
    if not out_dir.is_dir():
        return
    if unsaved_run(out_dir):
        clear_unsaved_run(out_dir)
        return
    if any(p.name != LOCK_FILE for p in out_dir.iterdir()):
        raise ConfigError(
            f"run directory {out_dir} is not empty; pass --resume to continue that run or choose another --out"
        )


@contextmanager
def run_dir_lock(out_dir: Path, *, main: bool = True) -> Iterator[None]:
    """One training per run directory: a second ``train`` (or ``--resume``) on it is refused with one line.

    Only the main rank takes the lock (the kernel drops it if the process dies).
    Also removes atomic-write temps of the run's files left by a killed run.
    """
    if not main:
        yield
        return
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; expected a run directory")
    created = not out_dir.exists()
    with folder_lock(out_dir, what="training", wait=False) as lock:
        try:
            for name in (LAST_CHECKPOINT, BEST_CHECKPOINT, CONFIG_FILE, ENVIRONMENT_FILE, SUMMARY_FILE, METRICS_FILE):
                remove_orphan_temps(out_dir / name, any_age=True)  # we hold the lock: no live writer here
            yield
        finally:
            if created and [p.name for p in out_dir.iterdir()] == [LOCK_FILE]:  # refused before writing anything
                lock.unlink(missing_ok=True)
                try:
                    out_dir.rmdir()
                except OSError:
                    pass


def write_json(path: Path, payload: Mapping[str, Any]) -> None:
    atomic_write_text(Path(path), json.dumps(payload, indent=2, default=str) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def write_config(out_dir: Path, config: Config) -> None:
    atomic_write_text(Path(out_dir) / CONFIG_FILE, config.to_yaml())


def environment_info(*, device: str, seed: int, world_size: int = 1, argv: list[str] | None = None) -> dict[str, Any]:
    """What ran this training: :func:`mclnet_cli.info.environment_info` plus the run's own facts.

    The shared facts (versions, platform, threads, CPU count) come from ``mclnet info``'s
    collector; this adds the run device, its GPU, world size, seed, command line,
    working folder and start time.
    """
    import torch

    from mclnet_cli.info import environment_info as shared_environment_info

    info = shared_environment_info()
    info["mclnet_version"] = info.pop("mclnet")
    gpu_name = info.pop("device")  # the machine's first GPU name or "cpu"; here "device" is the run's device
    info.update(
        {
            "device": device,
            "cuda": torch.version.cuda,
            "gpu": gpu_name if device.startswith("cuda") and info["cuda_available"] else None,
            "world_size": world_size,
            "seed": seed,
            "command": list(sys.argv if argv is None else argv),
            "cwd": os.getcwd(),
            "started": now_iso(),
        }
    )
    return info


def write_environment(out_dir: Path, info: Mapping[str, Any], resume: bool) -> None:
    """Write ``environment.json``; on resume keep the original and append this start to ``resumes``."""
    path = Path(out_dir) / ENVIRONMENT_FILE
    if resume and path.is_file():
        previous = read_json(path)
        previous.setdefault("resumes", []).append(dict(info))
        write_json(path, previous)
    else:
        write_json(path, dict(info))


class MetricsLog:
    """Append-only JSONL of training rows; flushed per row so a killed run keeps its log."""

    def __init__(self, out_dir: Path, tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / METRICS_FILE
        self._tb = _tensorboard_writer(Path(out_dir) / TENSORBOARD_DIR) if tensorboard else None

    def keep_epochs_before(self, epoch: int) -> None:
        """On resume: drop rows of epochs that are being re-run (``epoch >= start``)."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if int(row.get("epoch", 0)) < epoch:
                kept.append(line + "\n")
        atomic_write_text(self.path, "".join(kept))

    def write(self, row: Mapping[str, Any]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(row, default=float) + "\n")
        except OSError as exc:
            from mclnet_cli.atomic import storage_error

            raise (storage_error(exc, self.path) or exc) from exc
        if self._tb is not None:
            step = int(row.get("global_step", 0))
            prefix = "epoch" if row.get("kind") == "epoch" else "train"
            for key, value in flatten(row, "/").items():
                if key not in ("epoch", "step", "global_step") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(out_dir: Path) -> list[dict[str, Any]]:
    """All rows of ``metrics.jsonl`` (for tests and reports)."""
    path = Path(out_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _tensorboard_writer(path: Path) -> Any:
    """A SummaryWriter when tensorboard is installed, else None (optional, silent)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard missing or broken: logging to JSONL is enough
        return None
    return SummaryWriter(log_dir=str(path))


class Stopwatch:
    """Seconds since creation (monotonic)."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
