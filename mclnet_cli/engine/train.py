"""The training loop: ``fit(config, data_dir, out_dir)`` -> a run directory.

One epoch = ``len(loader)`` steps of P ids x K images per modality. After each
epoch the scheduler steps and ``last.pt`` is written atomically (weights,
optimiser, scheduler, AMP scaler, RNG states), so a run killed at any moment
loses at most the current epoch and ``resume=True`` continues it exactly where
the last completed epoch ended. The core never prints: progress goes to a
:class:`Reporter` that the CLI renders.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mclnet_cli.config import Config
from mclnet_cli.types import Modality
from mclnet_cli.data.records import PreparedDataset, load_prepared
from mclnet_cli.engine import distributed as dist_utils
from mclnet_cli.engine import runlog
from mclnet_cli.engine.featstats import feature_stats, nest
from mclnet_cli.engine.checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint
from mclnet_cli.engine.device import resolve_device
from mclnet_cli.engine.optim import RESUMABLE_KEYS, build_optimizer, build_scheduler, group_lrs, retune_after_resume
from mclnet_cli.errors import CheckpointError, ConfigError, StorageError, TrainingError

FEATURE_STATEMENT = "bn: L2-normalised BNNeck(f4), cosine distance"
# Config keys that may change when a run is resumed (everything else must match the run).
RESUME_MUTABLE = ("train.", "eval.", "index.", "data.workers", "data.use_cache",
                  *(f"optim.{key}" for key in RESUMABLE_KEYS))  # optim.*: applied with a note (retune_after_resume)


class Reporter:
    """Receives training events; the default does nothing. The CLI subclasses it to render."""

    def start(self, info: Mapping[str, Any]) -> None:
        """Before the first epoch: epochs, start_epoch, steps_per_epoch, device, world_size, ..."""

    def epoch_start(self, epoch: int, steps: int) -> None:
        """An epoch (0-based) of ``steps`` steps begins."""

    def step(self, epoch: int, step: int, stats: Mapping[str, Any]) -> None:
        """After each step: ``loss``, ``parts``, ``lr``, ``images_per_s``."""

    def epoch_end(self, epoch: int, row: Mapping[str, Any]) -> None:
        """After each epoch, with the row written to metrics.jsonl."""

    def note(self, message: str) -> None:
        """Something the user should know (a skipped option, a saved checkpoint)."""

    def end(self, result: "TrainResult") -> None:
        """The run finished, was interrupted, or stopped."""


@dataclass
class TrainResult:
    """What a call to :func:`fit` did."""

    out_dir: Path
    status: str  # complete | interrupted
    epochs: int
    epochs_completed: int
    last_checkpoint: Path
    best_checkpoint: Path | None
    final_losses: dict[str, float]
    best: dict[str, Any] | None
    time_s: float
    images_per_s: float
    summary: dict[str, Any] = field(default_factory=dict)
    rank: int = 0  # under torchrun only rank 0 has a summary to show


# ----------------------------------------------------------------------------
# RNG state in a weights_only-loadable form (tensors, lists, ints, floats)


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
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# ----------------------------------------------------------------------------
# Checks before anything is written


def _weights(weights: Any) -> dict[str, float]:
    raw = dataclasses.asdict(weights) if dataclasses.is_dataclass(weights) else dict(weights)
    return {name: float(value) for name, value in raw.items()}


def unused_parameters_expected(weights: Any) -> bool:
    """Whether some trainable parameters get no gradient under these loss weights.

    The projection heads (layer1..layer3) only feed ``supcon`` and ``hks``; the BNNeck
    (its BN weight and the classifier) only feeds ``id``. ``weights``: a ``LossWeights``
    dataclass or a mapping of term -> weight (a missing term counts as 0).
    """
    w = _weights(weights)
    heads_unused = w.get("supcon", 0.0) == 0.0 and w.get("hks", 0.0) == 0.0
    neck_unused = w.get("id", 0.0) == 0.0
    return heads_unused or neck_unused


def unused_parameters(model: torch.nn.Module, weights: Any) -> list[torch.nn.Parameter]:
    """The trainable parameters of an MCLNet that the loss never reaches under these weights.

    Under DistributedDataParallel they must not require gradients, or DDP's second step
    fails waiting for theirs. ``find_unused_parameters=True`` does not help: DDP walks the
    graph from forward's outputs, and ModelOutput holds every scale's feature whether the
    loss uses it or not. Freezing them changes nothing else: without DDP they get no
    gradient either, so the optimiser already skips them.
    """
    if not unused_parameters_expected(weights):
        return []
    w = _weights(weights)
    params: list[torch.nn.Parameter] = []
    if w.get("supcon", 0.0) == 0.0 and w.get("hks", 0.0) == 0.0:
        params += [*model.specific_heads.parameters(), *model.shared_heads.parameters()]
    if w.get("id", 0.0) == 0.0:
        params += list(model.neck.parameters())
    return [p for p in params if p.requires_grad]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return flat


def resume_conflicts(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """Config keys that differ between a run and its resume and may not change (e.g. model.arch)."""
    old, new = _flatten(stored), _flatten(current)
    changed = []
    for key in sorted(set(old) | set(new)):
        if key.startswith(RESUME_MUTABLE) or key in RESUME_MUTABLE:
            continue
        if old.get(key) != new.get(key):
            changed.append(f"{key} ({old.get(key)!r} -> {new.get(key)!r})")
    return changed


def check_validation(prepared: PreparedDataset, config: Config, train_pids: set[int]) -> None:
    """Periodic validation needs a val split whose ids are not trained on (never the test set)."""
    if config.train.eval_every <= 0:
        return
    val = prepared.select("val")
    if not val:
        raise ConfigError(
            f"train.eval_every={config.train.eval_every} but {prepared.root} has no val split "
            "(validation never uses the test set); set train.eval_every=0"
        )
    vis = {s.pid for s in val if s.modality is Modality.VISIBLE}
    ir = {s.pid for s in val if s.modality is Modality.INFRARED}
    if not vis or not ir:
        raise ConfigError(f"{prepared.root}: the val split needs both visible and infrared images for validation")
    if (vis | ir) & train_pids:
        raise ConfigError(
            "train.eval_every > 0 but the val ids are also trained on; set data.train_on_val=false "
            "to hold them out, or train.eval_every=0"
        )


# ----------------------------------------------------------------------------
# Validation on held-out ids


def validation_statement(config: Config) -> str:
    return (
        f"validation split (held-out ids, not the test set): queries = all val infrared images, "
        f"gallery = all val visible images, {config.eval.protocol} exclusions and CMC, "
        f"feature {FEATURE_STATEMENT}; best.pt picked by val mAP"
    )


def validate(model: torch.nn.Module, prepared: PreparedDataset, config: Config, device: torch.device) -> dict[str, Any]:
    """mAP / Rank-1 / Rank-5 / mINP (percent) of val infrared queries against all val visible images.

    The evaluation engine's embedding and scoring, on one trial whose queries and
    gallery are the whole val split (no draws), under ``config.eval.protocol``'s
    exclusions and CMC.
    """
    from mclnet_cli.engine.evaluate import embed_samples, score_trials
    from mclnet_cli.metrics.protocols import Trial

    samples = prepared.select("val")
    query = [i for i, s in enumerate(samples) if s.modality is Modality.INFRARED]
    gallery = [i for i, s in enumerate(samples) if s.modality is Modality.VISIBLE]
    was_training = model.training
    try:
        features, rows = embed_samples(
            model, samples, gallery + query, height=config.data.height, width=config.data.width, resize=config.data.resize,
            batch_size=config.eval.batch_size, device=device, features=("bn",),
        )
    finally:
        model.train(was_training)
    trial = Trial(
        config.eval.protocol, 0, "infrared_to_visible",
        np.asarray(query, dtype=np.int64), np.asarray(gallery, dtype=np.int64), draws="none",
    )
    (result,) = score_trials(samples, features, rows, [trial]).values()
    row = result.trials[0]
    return {
        "mAP": row["mAP"],
        "rank1": row["rank1"],
        "rank5": row["rank5"],
        "mINP": row["mINP"],
        "queries": row["valid_queries"],
        "gallery": row["gallery"],
    }


# ----------------------------------------------------------------------------
# The loop


@dataclass
class _Window:
    """Running sums between two log rows."""

    steps: int = 0
    images: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    start: float = field(default_factory=time.perf_counter)

    def add(self, values: Mapping[str, float], images: int) -> None:
        self.steps += 1
        self.images += images
        for key, value in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + value

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.images / elapsed if elapsed > 0 else 0.0


def _amp_setup(config: Config, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, use GradScaler): bf16 where supported, else fp16 + scaler; CUDA only."""
    if device.type != "cuda" or not config.train.amp:
        return None, False
    if torch.cuda.is_bf16_supported():
        return torch.bfloat16, False
    return torch.float16, True


def _float_output(output: Any) -> Any:
    """Cast a ModelOutput's tensors to float32 so the losses run in full precision under AMP."""
    if not dataclasses.is_dataclass(output):
        return output
    return dataclasses.replace(
        output,
        features={k: v.float() for k, v in output.features.items()},
        bn_feature=output.bn_feature.float(),
        logits=output.logits.float(),
    )


def _move(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def fit(
    config: Config,
    data_dir: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    device: str = "auto",
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train MCLNet on a prepared dataset into ``out_dir`` (or continue it with ``resume=True``).

    Works in a world of one process or under ``torchrun`` (DistributedDataParallel;
    only rank 0 writes files and reports). Raises ConfigError/DataError/CheckpointError
    for bad input and TrainingError when a loss part stops being finite. A
    KeyboardInterrupt (Ctrl-C) at any point never escapes: it returns a result with
    ``status="interrupted"`` and the epochs safely in ``last.pt`` (0 if none was saved yet).
    """
    progress = _Progress(out_dir=Path(out_dir), epochs=config.train.epochs)
    try:
        torch_device = resolve_device(device)
        info, torch_device = dist_utils.init_distributed(torch_device)
        progress.rank = info.rank
        with runlog.run_dir_lock(Path(out_dir), main=info.is_main):  # one training per run directory
            return _fit(config, Path(data_dir), Path(out_dir), resume, torch_device, info, reporter, progress)
    except KeyboardInterrupt:
        return progress.interrupted()
    finally:
        dist_utils.cleanup_distributed()


@dataclass
class _Progress:
    """What :func:`fit` can still report when Ctrl-C lands outside the loop's own handling."""

    out_dir: Path
    epochs: int
    rank: int = 0
    completed: int = 0
    best: dict[str, Any] | None = None
    summary: dict[str, Any] | None = None
    result: TrainResult | None = None
    stopwatch: runlog.Stopwatch = field(default_factory=runlog.Stopwatch)

    def interrupted(self) -> TrainResult:
        if self.result is not None:  # the run had already finished (e.g. Ctrl-C while the reporter closed)
            return self.result
        summary = dict(self.summary) if self.summary else {
            "status": "interrupted", "epochs": self.epochs, "epochs_completed": self.completed,
            "checkpoints": {"last": str(self.out_dir / runlog.LAST_CHECKPOINT)},
        }
        summary["status"] = "interrupted"
        return TrainResult(
            out_dir=self.out_dir, status="interrupted", epochs=self.epochs, epochs_completed=self.completed,
            last_checkpoint=self.out_dir / runlog.LAST_CHECKPOINT,
            best_checkpoint=self.out_dir / runlog.BEST_CHECKPOINT if self.best is not None else None,
            final_losses=dict(summary.get("final_losses") or {}), best=self.best,
            time_s=self.stopwatch.elapsed(), images_per_s=float(summary.get("images_per_s") or 0.0),
            summary=summary, rank=self.rank,
        )


def _fit(
    config: Config,
    data_dir: Path,
    out_dir: Path,
    resume: bool,
    device: torch.device,
    info: dist_utils.DistInfo,
    reporter: Reporter | None,
    progress: _Progress,
) -> TrainResult:
    from mclnet_cli.data.loader import build_train_loader, describe
    from mclnet_cli.losses import Criterion
    from mclnet_cli.model import build_model

    main = info.is_main
    reporter = reporter if (reporter is not None and main) else Reporter()
    session = runlog.Stopwatch()

    # --- checks (every rank, before anything is written) --------------------
    runlog.check_run_dir(out_dir, resume)
    prepared = load_prepared(data_dir)
    seed_everything(config.seed)
    loader = build_train_loader(
        prepared, config.data, seed=config.seed, steps_per_epoch=config.train.steps_per_epoch,
        rank=info.rank, world_size=info.world_size,
    )
    label_map = {int(k): int(v) for k, v in loader.label_map.items()}
    check_validation(prepared, config, set(label_map))
    payload: dict[str, Any] | None = None
    last_path = out_dir / runlog.LAST_CHECKPOINT
    best_path = out_dir / runlog.BEST_CHECKPOINT
    if resume:
        payload = load_checkpoint(last_path)
        conflicts = resume_conflicts(payload.get("config", {}), config.to_dict())
        if conflicts:
            raise ConfigError(
                f"cannot resume {out_dir}: the config differs from the run's in {'; '.join(conflicts[:3])}; "
                "resume with the run's own settings (omit --preset to use its config.yaml) or choose another --out"
            )
        stored_map = {int(k): int(v) for k, v in payload.get("label_map", {}).items()}
        if stored_map != label_map:
            raise CheckpointError(f"{last_path}: its training identities differ from {data_dir}'s (another dataset?)")
        done = payload.get("epoch")
        if isinstance(done, bool) or not isinstance(done, int) or done < 0:
            raise CheckpointError(f"{last_path}: no valid completed-epoch count (epoch={done!r}); not a last.pt?")
        if config.train.epochs < done:
            raise ConfigError(
                f"cannot resume {out_dir}: the run already has {done} epochs but train.epochs={config.train.epochs}; "
                f"--set train.epochs=M with M > {done} to continue"
            )
        progress.completed = done
    dist_utils.barrier()  # every rank has checked the run directory before rank 0 writes to it

    # --- model, loss, optimiser ---------------------------------------------
    model = build_model(config.model, loader.num_classes).to(device)
    channels_last = device.type == "cuda" and config.train.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = Criterion.from_config(config.loss)
    if isinstance(criterion, torch.nn.Module):
        criterion = criterion.to(device)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim)
    amp_dtype, use_scaler = _amp_setup(config, device)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    start_epoch, global_step, best = 0, 0, None
    if payload is not None:
        try:
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            if payload.get("scaler"):
                scaler.load_state_dict(payload["scaler"])
        except (KeyError, RuntimeError, ValueError) as exc:
            raise CheckpointError(f"{last_path}: cannot restore training state ({exc})") from exc
        start_epoch = int(payload["epoch"])
        global_step = int(payload.get("global_step", 0))
        best = payload.get("best")
        set_rng_state(payload["rng"])
        for note in retune_after_resume(optimizer, scheduler, dict(payload.get("config") or {}).get("optim"), config.optim):
            reporter.note(note)

    train_model: torch.nn.Module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        for param in unused_parameters(model, config.loss.weights):
            param.requires_grad_(False)  # after build_optimizer: its groups (and checkpoints) stay the same
        train_model = DistributedDataParallel(model, device_ids=ids)
    if config.train.compile:
        train_model = torch.compile(train_model)

    def save_last(epoch: int) -> None:
        extra = {
            "kind": "last",
            "epoch": epoch,  # completed epochs = the next epoch to run
            "global_step": global_step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "best": best,
        }
        save_checkpoint(last_path, checkpoint_payload(model, config, label_map, **extra))

    # --- run directory (rank 0) -----------------------------------------------
    metrics: runlog.MetricsLog | None = None
    resumed_row: dict[str, Any] = {}
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        runlog.write_config(out_dir, config)
        env = runlog.environment_info(device=str(device), seed=config.seed, world_size=info.world_size)
        env.update(amp=str(amp_dtype).replace("torch.", "") if amp_dtype else None, channels_last=channels_last,
                   compile=config.train.compile, resumed_from_epoch=start_epoch if resume else None)
        runlog.write_environment(out_dir, env, resume)
        metrics = runlog.MetricsLog(out_dir)
        if resume:
            metrics.keep_epochs_before(start_epoch)
            done = [r for r in runlog.read_metrics(out_dir) if r.get("kind") == "epoch"]
            resumed_row = done[-1] if done else {}
        else:
            try:
                save_last(0)  # a last good checkpoint exists from the very start
            except StorageError as exc:  # nothing trained yet: record why, then stop (the run can start again)
                with contextlib.suppress(StorageError):
                    runlog.write_json(out_dir / runlog.SUMMARY_FILE, {"status": "stopped", "epochs_completed": 0, "message": str(exc)})
                raise
    dist_utils.barrier()

    epochs = config.train.epochs
    steps = len(loader)
    per_step_images = 2 * config.data.num_ids * config.data.num_instances * info.world_size
    reporter.start({
        **describe(loader),
        "epochs": epochs, "start_epoch": start_epoch, "steps_per_epoch": steps, "device": str(device),
        "world_size": info.world_size, "num_classes": loader.num_classes, "dataset": prepared.name,
        "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None, "out_dir": str(out_dir),
    })

    status, last_row, session_images, failure = "complete", resumed_row, 0, None
    log_every = max(1, config.train.log_every)
    completed = start_epoch
    progress.completed, progress.best = start_epoch, best
    already_done = resume and start_epoch >= epochs
    if already_done:
        reporter.note(f"{out_dir} already has {start_epoch}/{epochs} epochs; nothing to train")
    try:
        for epoch in range(start_epoch, epochs):
            loader.set_epoch(epoch)
            train_model.train()
            reporter.epoch_start(epoch, steps)
            lrs = group_lrs(optimizer)
            epoch_window, log_window, stats_window = _Window(), _Window(), _Window()
            data_time = 0.0
            fetch = time.perf_counter()
            for step, batch in enumerate(loader):
                data_time += time.perf_counter() - fetch
                visible = _move(batch.visible, device, channels_last)
                infrared = _move(batch.infrared, device, channels_last)
                labels = batch.labels.to(device, non_blocking=True)
                all_labels = torch.cat([labels, labels])
                modalities = torch.cat([torch.zeros_like(labels), torch.ones_like(labels)])
                autocast = (
                    torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                )
                with autocast:
                    output = train_model(visible=visible, infrared=infrared)
                loss = criterion(_float_output(output), all_labels, modalities)

                names = ["total", *loss.parts]
                stacked = torch.stack([loss.total.detach().float(), *(loss.parts[n].float() for n in loss.parts)])
                values = dist_utils.all_reduce_mean(stacked).cpu().tolist()
                bad = [(n, v) for n, v in zip(names, values) if not math.isfinite(v)]
                if bad:
                    name, value = next(((n, v) for n, v in bad if n != "total"), bad[0])
                    failure = (
                        f"loss part {name!r} became {value} at epoch {epoch + 1}/{epochs} step {step + 1}/{steps}; "
                        f"last good checkpoint: {last_path}"
                    )
                    raise TrainingError(failure)

                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss.total).backward()
                scaler.step(optimizer)
                scaler.update()
                global_step += 1

                row_values = dict(zip(names, values))
                if dataclasses.is_dataclass(output) and hasattr(output, "features"):
                    stats_window.add(feature_stats(output.features, all_labels, modalities), 0)
                epoch_window.add(row_values, per_step_images)
                log_window.add(row_values, per_step_images)
                reporter.step(epoch, step, {
                    "loss": row_values["total"], "parts": {n: row_values[n] for n in loss.parts},
                    "lr": lrs, "images_per_s": epoch_window.rate(),
                })
                if metrics is not None and (step + 1) % log_every == 0:
                    means = log_window.means()
                    metrics.write({
                        "kind": "step", "epoch": epoch, "step": step, "global_step": global_step,
                        "loss": means.pop("total"), "parts": means, "lr": lrs,
                        "images_per_s": log_window.rate(),
                    })
                    log_window = _Window()
                fetch = time.perf_counter()

            scheduler.step()
            epoch_time = time.perf_counter() - epoch_window.start
            session_images += epoch_window.images
            means = epoch_window.means()
            last_row = {
                "kind": "epoch", "epoch": epoch, "global_step": global_step, "loss": means.pop("total", float("nan")),
                "parts": means, "lr": lrs, "images_per_s": epoch_window.rate(), "epoch_time_s": epoch_time,
                "data_time_s": data_time,
            }
            if stats_window.steps:  # per-scale feature statistics, batch means (see engine/featstats.py)
                last_row["features"] = nest(stats_window.means())
            if config.train.eval_every > 0 and ((epoch + 1) % config.train.eval_every == 0 or epoch + 1 == epochs):
                if main:
                    val = validate(model, prepared, config, device)
                    last_row["val"] = val
                    if best is None or val["mAP"] > best["mAP"]:
                        best = {"epoch": epoch, **val}
                        save_checkpoint(best_path, checkpoint_payload(
                            model, config, label_map, kind="best", epoch=epoch + 1, val=val,
                            protocol=validation_statement(config), feature=FEATURE_STATEMENT,
                        ))
                dist_utils.barrier()
            if main:
                # The row first: a kill before last.pt is saved re-runs this epoch on resume,
                # which drops the row again; the other order would lose it for good.
                assert metrics is not None
                metrics.write(last_row)
                save_last(epoch + 1)
            completed = epoch + 1
            progress.completed, progress.best = completed, best
            reporter.epoch_end(epoch, last_row)
    except KeyboardInterrupt:
        status = "interrupted"
    except (TrainingError, StorageError) as exc:
        status = "stopped"
        if main:
            note = failure if isinstance(exc, TrainingError) else str(exc)
            with contextlib.suppress(StorageError):  # the disk may still be full: the error itself is what matters
                _write_summary(out_dir, config, prepared, info, status, completed, last_row, best, session,
                               session_images, steps, note)
        raise
    finally:
        if metrics is not None:
            metrics.close()

    message = f"already complete: {completed}/{epochs} epochs were done before this resume" if already_done else None
    summary = (
        _write_summary(out_dir, config, prepared, info, status, completed, last_row, best, session, session_images,
                       steps, message)
        if main else {}
    )
    progress.summary = summary
    result = TrainResult(
        out_dir=out_dir, status=status, epochs=epochs, epochs_completed=completed, last_checkpoint=last_path,
        best_checkpoint=best_path if best is not None else None,
        final_losses=summary.get("final_losses", {}), best=best, time_s=session.elapsed(),
        images_per_s=summary.get("images_per_s", 0.0), summary=summary, rank=info.rank,
    )
    progress.result = result
    reporter.end(result)
    return result


def _write_summary(
    out_dir: Path,
    config: Config,
    prepared: PreparedDataset,
    info: dist_utils.DistInfo,
    status: str,
    epochs_completed: int,
    last_row: Mapping[str, Any],
    best: Mapping[str, Any] | None,
    session: runlog.Stopwatch,
    session_images: int,
    steps: int,
    message: str | None,
) -> dict[str, Any]:
    """``summary.json``: what was trained, how far, final losses, time, and what any val number means."""
    elapsed = session.elapsed()
    final = {"total": last_row["loss"], **last_row["parts"]} if last_row else {}
    validated = config.train.eval_every > 0
    summary = {
        "status": status,
        "message": message,
        "dataset": prepared.name,
        "data": str(prepared.root),
        "epochs": config.train.epochs,
        "epochs_completed": epochs_completed,
        "steps_per_epoch": steps,
        "world_size": info.world_size,
        "final_losses": final,
        "final_lr": dict(last_row.get("lr", {})) if last_row else {},
        "time_s": elapsed,
        "images_per_s": session_images / elapsed if elapsed > 0 else 0.0,
        "best_val": dict(best) if best else None,
        "protocol": validation_statement(config) if validated
        else "no validation during training (train.eval_every=0); no checkpoint was selected on any evaluation set",
        "feature": FEATURE_STATEMENT,
        "checkpoints": {
            "last": str(out_dir / runlog.LAST_CHECKPOINT),
            "best": str(out_dir / runlog.BEST_CHECKPOINT) if best else None,
        },
        "finished": runlog.now_iso(),
    }
    runlog.write_json(out_dir / runlog.SUMMARY_FILE, summary)
    return summary
