"""The training loop: ``fit(config, data_dir, out_dir)`` -> a run directory.

One epoch (:func:`train_one_epoch`) = ``len(loader)`` steps of P ids x K images
per modality. After each epoch the scheduler steps and ``last.pt`` is written
atomically (weights, optimiser, scheduler, AMP scaler, RNG states), so a run
killed at any moment loses at most the current epoch and ``resume=True``
continues it exactly where the last completed epoch ended (RNG states and the
resume checks: ``engine/state.py``; validation: ``engine/evaluate.py``). The
core never prints: progress goes to a :class:`Reporter` that the CLI renders.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import torch

from mclnet_cli.config import Config
from mclnet_cli.data.records import PreparedDataset, load_prepared
from mclnet_cli.engine import distributed as dist_utils
from mclnet_cli.engine import runlog
from mclnet_cli.engine.checkpoint import checkpoint_payload, load_checkpoint, save_checkpoint
from mclnet_cli.engine.recalibrate import NeckRecalibration, recalibrate_neck
from mclnet_cli.engine.device import resolve_device
from mclnet_cli.engine.evaluate import FEATURE_STATEMENT, check_validation, validate, validation_statement
from mclnet_cli.engine.featstats import feature_stats, nest
from mclnet_cli.engine.optim import build_optimizer, build_scheduler, group_lrs, retune_after_resume
from mclnet_cli.engine.state import (  # noqa: F401  (RESUME_MUTABLE, resume_conflicts, rng_state: imported from here too)
    RESUME_MUTABLE,
    check_resume,
    resume_conflicts,
    rng_state,
    seed_everything,
    set_rng_state,
)
from mclnet_cli.engine import health as health_check
from mclnet_cli.errors import CheckpointError, CollapseError, ConfigError, StorageError, TrainingError
from mclnet_cli.losses.criterion import TERM_OUTPUTS

if TYPE_CHECKING:
    from mclnet_cli.engine.finetune import InitCheckpoint
    from mclnet_cli.model.net import MCLNet

__all__ = [
    "FEATURE_STATEMENT", "Reporter", "TrainResult", "fit", "train_one_epoch", "rng_state", "set_rng_state",
    "seed_everything", "resume_conflicts", "check_validation", "validate", "validation_statement",
    "outputs_read", "unused_parameters", "unused_parameters_expected",
]


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

    def warning(self, message: str) -> None:
        """Something wrong with the run that does not stop it (a collapse); by default a note."""
        self.note(message)

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
# Parameters the loss never reaches


def _weights(weights: Any) -> dict[str, float]:
    raw = dataclasses.asdict(weights) if dataclasses.is_dataclass(weights) else dict(weights)
    return {name: float(value) for name, value in raw.items()}


def outputs_read(weights: Any) -> set[str]:
    """The model outputs the terms with a weight above 0 read. ``weights``: a ``LossWeights``
    dataclass or a mapping of term -> weight (a missing term counts as 0)."""
    from mclnet_cli.model.net import OUTPUTS

    terms = [term for term, weight in _weights(weights).items() if weight != 0.0]
    read = {output for term in terms for output in TERM_OUTPUTS.get(term, OUTPUTS)}
    every_scale = {o for o in OUTPUTS if o.startswith("features.")} if "features.*" in read else set()
    return (read - {"features.*"}) | every_scale


def unused_parameters_expected(weights: Any) -> bool:
    """Whether some trainable parameters get no gradient under these loss weights (the model says which)."""
    from mclnet_cli.model.net import MCLNet

    return not MCLNet.uses_every_parameter(outputs_read(weights))


def unused_parameters(model: "MCLNet", weights: Any) -> list[torch.nn.Parameter]:
    """The trainable parameters of an MCLNet that the loss never reaches under these weights.

    Under DistributedDataParallel they must not require gradients, or DDP's second step
    fails waiting for theirs. ``find_unused_parameters=True`` does not help: DDP walks the
    graph from forward's outputs, and ModelOutput holds every scale's feature whether the
    loss uses it or not. Freezing them changes nothing else: without DDP they get no
    gradient either, so the optimiser already skips them.
    """
    if not unused_parameters_expected(weights):
        return []
    return model.parameters_unused_by(outputs_read(weights))


# ----------------------------------------------------------------------------
# Step helpers


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


# ----------------------------------------------------------------------------
# The loop


@dataclass
class _Run:
    """The objects and counters of one training run, shared by the steps below."""

    config: Config
    out_dir: Path
    device: torch.device
    info: dist_utils.DistInfo
    reporter: Reporter
    prepared: PreparedDataset
    loader: Any
    label_map: dict[int, int]
    model: torch.nn.Module
    criterion: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    channels_last: bool
    session: runlog.Stopwatch
    train_model: torch.nn.Module | None = None  # the model, wrapped in DDP / torch.compile when asked
    metrics: runlog.MetricsLog | None = None  # rank 0 only
    start_epoch: int = 0
    global_step: int = 0
    completed: int = 0
    best: dict[str, Any] | None = None
    last_row: dict[str, Any] = field(default_factory=dict)
    session_images: int = 0
    recalibration: NeckRecalibration | None = None  # set when the last epoch re-estimated the neck statistics
    health: dict[str, Any] | None = None  # the run's health so far (summary.json "health")
    mmd_open: bool = True  # loss.mmd_gate: whether MMD is in the objective yet
    mmd_joined: int | None = None  # the first epoch trained with MMD under the gate
    init: dict[str, Any] | None = None  # --init: where the weights came from (engine.finetune.InitRecord)

    @property
    def main(self) -> bool:
        return self.info.is_main

    @property
    def last_path(self) -> Path:
        return self.out_dir / runlog.LAST_CHECKPOINT

    @property
    def best_path(self) -> Path:
        return self.out_dir / runlog.BEST_CHECKPOINT


def fit(
    config: Config,
    data_dir: Path,
    out_dir: Path,
    *,
    resume: bool = False,
    device: str = "auto",
    reporter: Reporter | None = None,
    init: Path | str | None = None,
) -> TrainResult:
    """Train MCLNet on a prepared dataset into ``out_dir`` (or continue it with ``resume=True``).

    Works in a world of one process or under ``torchrun`` (DistributedDataParallel;
    only rank 0 writes files and reports). Raises ConfigError/DataError/CheckpointError
    for bad input and TrainingError when a loss part stops being finite. A
    KeyboardInterrupt (Ctrl-C) at any point never escapes: it returns a result with
    ``status="interrupted"`` and the epochs safely in ``last.pt`` (0 if none was saved yet).
    ``init``: a new run starts from that mclnet checkpoint's weights (:mod:`mclnet_cli.engine.finetune`).
    """
    out_dir, epochs = Path(out_dir), config.train.epochs
    progress = _Progress(out_dir=out_dir, epochs=epochs)
    in_step = False
    try:
        torch_device = resolve_device(device)
        info, torch_device = dist_utils.init_distributed(torch_device)
        progress.rank = info.rank
        with runlog.run_dir_lock(out_dir, main=info.is_main):  # one training per run directory
            run = _start(config, Path(data_dir), out_dir, resume, torch_device, info, reporter, progress, init)
            run.reporter.start(_start_info(run))
            run.completed = progress.completed = run.start_epoch
            progress.best = run.best
            already_done = resume and run.start_epoch >= epochs
            if already_done:
                run.reporter.note(f"{out_dir} already has {run.start_epoch}/{epochs} epochs; nothing to train")
            status = "complete"
            try:
                for epoch in range(run.start_epoch, epochs):
                    row = train_one_epoch(run, epoch)
                    run.scheduler.step()
                    _end_epoch(run, epoch, row)
                    progress.completed, progress.best = run.completed, run.best
                    run.reporter.epoch_end(epoch, row)
            except KeyboardInterrupt:
                status = "interrupted"
            except (TrainingError, StorageError) as exc:
                if run.main:
                    with contextlib.suppress(StorageError):  # the disk may still be full: the error itself is what matters
                        _write_summary(run, "stopped", str(exc))
                raise
            finally:
                if run.metrics is not None:
                    run.metrics.close()
            message = f"already complete: {run.completed}/{epochs} epochs were done before this resume" if already_done else None
            result = _finish(run, status, message, progress)
            in_step = status == "complete"  # every rank ran the same steps: leave together
            return result
    except KeyboardInterrupt:
        return progress.interrupted()
    finally:
        dist_utils.cleanup_distributed(synchronize=in_step)


def train_one_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """One pass over the loader: every step, the step log rows, and the epoch's row for metrics.jsonl.

    The row holds the epoch's mean losses (``loss``, ``parts``), learning rates,
    throughput, epoch and data-loading time, and per-scale feature statistics.
    """
    config = run.config
    steps = len(run.loader)
    per_step_images = 2 * config.data.num_ids * config.data.num_instances * run.info.world_size
    log_every = max(1, config.train.log_every)
    run.loader.set_epoch(epoch)
    if hasattr(run.criterion, "mmd_active"):
        run.criterion.mmd_active = run.mmd_open
    assert run.train_model is not None
    run.train_model.train()
    run.reporter.epoch_start(epoch, steps)
    lrs = group_lrs(run.optimizer)
    epoch_window, log_window, stats_window = _Window(), _Window(), _Window()
    data_time = 0.0
    fetch = time.perf_counter()
    for step, batch in enumerate(run.loader):
        data_time += time.perf_counter() - fetch
        values, stats = _train_step(run, batch, epoch, step, steps)
        if stats is not None:
            stats_window.add(stats, 0)
        epoch_window.add(values, per_step_images)
        log_window.add(values, per_step_images)
        parts = {name: value for name, value in values.items() if name != "total"}
        run.reporter.step(epoch, step, {
            "loss": values["total"], "parts": parts, "lr": lrs, "images_per_s": epoch_window.rate(),
        })
        if run.metrics is not None and (step + 1) % log_every == 0:
            means = log_window.means()
            run.metrics.write({
                "kind": "step", "epoch": epoch, "step": step, "global_step": run.global_step,
                "loss": means.pop("total"), "parts": means, "lr": lrs, "images_per_s": log_window.rate(),
            })
            log_window = _Window()
        fetch = time.perf_counter()

    run.session_images += epoch_window.images
    means = epoch_window.means()
    row: dict[str, Any] = {
        "kind": "epoch", "epoch": epoch, "global_step": run.global_step, "loss": means.pop("total", float("nan")),
        "parts": means, "lr": lrs, "images_per_s": epoch_window.rate(),
        "epoch_time_s": time.perf_counter() - epoch_window.start, "data_time_s": data_time,
    }
    if stats_window.steps:  # per-scale feature statistics, batch means (see engine/featstats.py)
        row["features"] = nest(stats_window.means())
    return row


def _train_step(run: _Run, batch: Any, epoch: int, step: int, steps: int) -> tuple[dict[str, float], dict[str, float] | None]:
    """Forward, loss, backward and optimiser step on one batch.

    Returns the loss values averaged over ranks (``total`` first, then the parts)
    and the batch's feature statistics (None when the output has no features).
    Raises TrainingError, before the weights change, when a value is not finite.
    """
    device, channels_last = run.device, run.channels_last
    visible = _move(batch.visible, device, channels_last)
    infrared = _move(batch.infrared, device, channels_last)
    labels = batch.labels.to(device, non_blocking=True)
    all_labels = torch.cat([labels, labels])
    modalities = torch.cat([torch.zeros_like(labels), torch.ones_like(labels)])
    autocast = torch.autocast(device_type="cuda", dtype=run.amp_dtype) if run.amp_dtype else contextlib.nullcontext()
    assert run.train_model is not None
    with autocast:
        output = run.train_model(visible=visible, infrared=infrared)
    loss = run.criterion(_float_output(output), all_labels, modalities)

    names = ["total", *loss.parts]
    stacked = torch.stack([loss.total.detach().float(), *(loss.parts[n].float() for n in loss.parts)])
    values = dict(zip(names, dist_utils.all_reduce_mean(stacked).cpu().tolist()))
    bad = [(n, v) for n, v in values.items() if not math.isfinite(v)]
    if bad:
        name, value = next(((n, v) for n, v in bad if n != "total"), bad[0])
        raise TrainingError(
            f"loss part {name!r} became {value} at epoch {epoch + 1}/{run.config.train.epochs} "
            f"step {step + 1}/{steps}; last good checkpoint: {run.last_path}"
        )

    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss.total).backward()
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.global_step += 1
    if dataclasses.is_dataclass(output) and hasattr(output, "features"):
        return values, feature_stats(output.features, all_labels, modalities)
    return values, None


# ----------------------------------------------------------------------------
# Start, end of epoch, finish


def _start(
    config: Config,
    data_dir: Path,
    out_dir: Path,
    resume: bool,
    device: torch.device,
    info: dist_utils.DistInfo,
    reporter: Reporter | None,
    progress: _Progress,
    init: Path | str | None = None,
) -> _Run:
    """Check the input (every rank, before anything is written), build, restore and open the run directory."""
    from mclnet_cli.data.loader import build_train_loader

    session = runlog.Stopwatch()
    init_checkpoint = _read_init(init, resume, config)
    runlog.check_run_dir(out_dir, resume)
    prepared = load_prepared(data_dir)
    seed_everything(config.seed)
    loader = build_train_loader(
        prepared, config.data, seed=config.seed, steps_per_epoch=config.train.steps_per_epoch,
        steps_rule=config.train.steps_rule, rank=info.rank, world_size=info.world_size,
    )
    label_map = {int(k): int(v) for k, v in loader.label_map.items()}
    check_validation(prepared, config, set(label_map))
    payload: dict[str, Any] | None = None
    if resume:
        last_path = out_dir / runlog.LAST_CHECKPOINT
        payload = load_checkpoint(last_path)
        progress.completed = check_resume(payload, config, label_map, last_path=last_path, data_dir=data_dir)
    dist_utils.barrier()  # every rank has checked the run directory before rank 0 writes to it

    reporter = reporter if (reporter is not None and info.is_main) else Reporter()
    run = _build(config, out_dir, device, info, reporter, prepared, loader, label_map, session, init_checkpoint,
                 resume=payload is not None)
    if payload is not None:
        _restore(run, payload)
    _wrap(run)
    if run.main:
        _open_run_dir(run, resume)
    dist_utils.barrier()
    return run


def _build(
    config: Config,
    out_dir: Path,
    device: torch.device,
    info: dist_utils.DistInfo,
    reporter: Reporter,
    prepared: PreparedDataset,
    loader: Any,
    label_map: dict[int, int],
    session: runlog.Stopwatch,
    init: "InitCheckpoint | None" = None,
    *,
    resume: bool = False,
) -> _Run:
    """Model, loss, optimiser, scheduler and AMP scaler of a run (its weights from ``init`` when given).

    ``model.pretrained`` is read only for a new run: ``--init`` and a resumed run's ``last.pt``
    replace every weight, so neither downloads ImageNet weights nor reads the shipped start.
    """
    from mclnet_cli.engine.finetune import apply_init, build_config
    from mclnet_cli.losses import Criterion
    from mclnet_cli.model import build_model

    model = build_model(build_config(config) if init is not None or resume else config.model, loader.num_classes)
    record = apply_init(model, init, loader.num_classes) if init is not None else None
    if record is not None:
        reporter.note(f"--init: {record.describe()}")
    model = model.to(device)
    channels_last = device.type == "cuda" and config.train.channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = Criterion.from_config(config.loss)
    if isinstance(criterion, torch.nn.Module):
        criterion = criterion.to(device)
    optimizer = build_optimizer(model, config.optim)
    scheduler = build_scheduler(optimizer, config.optim)
    amp_dtype, use_scaler = _amp_setup(config, device)
    return _Run(
        config=config, out_dir=out_dir, device=device, info=info, reporter=reporter, prepared=prepared,
        loader=loader, label_map=label_map, model=model, criterion=criterion, optimizer=optimizer,
        scheduler=scheduler, scaler=torch.amp.GradScaler("cuda", enabled=use_scaler), amp_dtype=amp_dtype,
        channels_last=channels_last, session=session, mmd_open=config.loss.mmd_gate is None,
        init=record.to_json() if record is not None else None,
    )


def _read_init(init: Path | str | None, resume: bool, config: Config) -> "InitCheckpoint | None":
    """The ``--init`` checkpoint, checked against the run's model section; refused together with ``--resume``."""
    if init is None:
        return None
    if resume:
        raise ConfigError(
            "--init starts a new run from a checkpoint's weights and --resume continues the run in --out; give one of them"
        )
    from mclnet_cli.engine.finetune import check_model, read_init

    checkpoint = read_init(init)
    check_model(checkpoint, config.model)
    return checkpoint


def _restore(run: _Run, payload: Mapping[str, Any]) -> None:
    """Weights, optimiser, scheduler, scaler, counters and RNG states from ``last.pt``."""
    try:
        run.model.load_state_dict(payload["model"])
        run.optimizer.load_state_dict(payload["optimizer"])
        run.scheduler.load_state_dict(payload["scheduler"])
        if payload.get("scaler"):
            run.scaler.load_state_dict(payload["scaler"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{run.last_path}: cannot restore training state ({exc})") from exc
    run.start_epoch = int(payload["epoch"])
    run.mmd_open = bool(payload.get("mmd_open", run.config.loss.mmd_gate is None))
    run.mmd_joined = payload.get("mmd_joined")
    run.init = payload.get("init")
    run.global_step = int(payload.get("global_step", 0))
    run.best = payload.get("best")
    set_rng_state(payload["rng"])
    stored_optim = dict(payload.get("config") or {}).get("optim")
    for note in retune_after_resume(run.optimizer, run.scheduler, stored_optim, run.config.optim):
        run.reporter.note(note)


def _wrap(run: _Run) -> None:
    """The model the loop calls: DistributedDataParallel under torchrun, then torch.compile when asked."""
    train_model: torch.nn.Module = run.model
    if run.info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        ids = [run.device.index] if run.device.type == "cuda" else None
        for param in unused_parameters(run.model, run.config.loss.weights):
            param.requires_grad_(False)  # after build_optimizer: its groups (and checkpoints) stay the same
        train_model = DistributedDataParallel(run.model, device_ids=ids)
    if run.config.train.compile:
        train_model = torch.compile(train_model)
    run.train_model = train_model


def _amp_name(dtype: torch.dtype | None) -> str | None:
    return str(dtype).replace("torch.", "") if dtype else None


def _pretrained_record(config: Config, init: Any) -> dict[str, str] | None:
    """Which shipped start a new run read (name, file, fingerprint), for environment.json; None otherwise."""
    from mclnet_cli.engine.checkpoint import file_fingerprint
    from mclnet_cli.model.pretrained import PACKAGED, is_packaged

    name = str(config.model.pretrained).strip().lower()
    if init is not None or not is_packaged(name):
        return None
    return {"name": name, "file": PACKAGED[name].name, "fingerprint": file_fingerprint(PACKAGED[name])}


def _open_run_dir(run: _Run, resume: bool) -> None:
    """Rank 0: config.yaml, environment.json and metrics.jsonl; a new run saves last.pt at epoch 0."""
    config, out_dir = run.config, run.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    runlog.write_config(out_dir, config)
    env = runlog.environment_info(device=str(run.device), seed=config.seed, world_size=run.info.world_size)
    env.update(amp=_amp_name(run.amp_dtype), channels_last=run.channels_last, compile=config.train.compile,
               resumed_from_epoch=run.start_epoch if resume else None, init=run.init,
               pretrained=None if resume else _pretrained_record(config, run.init))
    runlog.write_environment(out_dir, env, resume)
    run.metrics = runlog.MetricsLog(out_dir)
    if resume:
        run.metrics.keep_epochs_before(run.start_epoch)
        done = [r for r in runlog.read_metrics(out_dir) if r.get("kind") == "epoch"]
        run.last_row = done[-1] if done else {}
        run.health = _health_so_far(done)
        return
    try:
        _save_last(run, 0)  # a last good checkpoint exists from the very start
    except StorageError as exc:  # nothing trained yet: record why, then stop (the run can start again)
        with contextlib.suppress(StorageError):
            runlog.write_json(out_dir / runlog.SUMMARY_FILE, {"status": "stopped", "epochs_completed": 0, "message": str(exc)})
        raise


def _health_so_far(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The run's health after the epochs in ``rows`` (a resume continues it)."""
    verdicts = [r["health"] for r in rows if isinstance(r.get("health"), dict)]
    if not verdicts:
        return None
    first = next((v["epoch"] for v in verdicts if v.get("status") == "collapsed"), None)
    return {**verdicts[-1], **({"first_collapsed_epoch": first} if first is not None else {})}


def _start_info(run: _Run) -> dict[str, Any]:
    """What :meth:`Reporter.start` receives."""
    from mclnet_cli.data.loader import describe

    return {
        **describe(run.loader),
        "epochs": run.config.train.epochs, "start_epoch": run.start_epoch, "steps_per_epoch": len(run.loader),
        "device": str(run.device), "world_size": run.info.world_size, "num_classes": run.loader.num_classes,
        "dataset": run.prepared.name, "amp": _amp_name(run.amp_dtype), "out_dir": str(run.out_dir), "init": run.init,
    }


def _save_last(run: _Run, epoch: int) -> None:
    """``last.pt`` after ``epoch`` completed epochs (the next epoch to run)."""
    extra = {
        "kind": "last",
        "epoch": epoch,
        "global_step": run.global_step,
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng_state(),
        "best": run.best,
        "neck": run.recalibration.as_dict() if run.recalibration else None,
        "mmd_open": run.mmd_open,
        "mmd_joined": run.mmd_joined,
        "init": run.init,
    }
    save_checkpoint(run.last_path, checkpoint_payload(run.model, run.config, run.label_map, **extra))


def _open_mmd_gate(run: _Run, epoch: int, row: dict[str, Any]) -> None:
    """``loss.mmd_gate``: MMD joins from the next epoch once this one's identity loss is below gate x ln C.

    Aligning the spectra before the features carry identity aligns them by erasing
    everything (docs/method.md, finding 9); the identity loss, averaged over ranks, says
    when they carry some. Every rank sees the same mean, so they open together.
    """
    gate = run.config.loss.mmd_gate
    if run.mmd_open or gate is None or run.config.loss.weights.mmd == 0 or "id" not in row.get("parts", {}):
        return
    if row["parts"]["id"] < gate * math.log(max(run.loader.num_classes, 2)):
        run.mmd_open, run.mmd_joined = True, epoch + 1
        row["mmd_joins"] = epoch + 1
        if epoch + 1 < run.config.train.epochs:
            run.reporter.note(f"identity loss {row['parts']['id']:.3f} < {gate:g} x ln C: MMD joins the objective at epoch {epoch + 2}")


def _assess(run: _Run, epoch: int, row: dict[str, Any]) -> health_check.Health:
    """The epoch's health into the row and the run (one warning line at the first collapsed epoch)."""
    config = run.config
    supcon = config.loss.weights.supcon > 0
    verdict = health_check.assess_epoch(
        row, epoch=epoch,
        from_epoch=health_check.check_from_epoch(
            config.train.epochs, max(config.optim.warmup_epochs, config.optim.head_only_epochs), len(run.loader),
            config.train.health_from_epoch
        ),
        num_classes=run.loader.num_classes,
        supcon_at_chance=health_check.supcon_chance(
            config.loss.supcon_temperature, 2 * config.data.num_ids * config.data.num_instances
        ) if supcon else None,
    )
    # every rank stops together: one rank's verdict (its own feature statistics) is enough
    collapsed = float(dist_utils.all_reduce_mean(torch.tensor([1.0 if verdict.collapsed else 0.0]))[0]) > 0
    if collapsed and not verdict.collapsed:
        verdict = health_check.Health("collapsed", epoch, ("another rank found the run collapsed",), verdict.values)
    row["health"] = verdict.as_dict()
    previous = run.health or {}
    if verdict.collapsed:
        if previous.get("status") != "collapsed":
            run.reporter.warning(verdict.message(config.train.epochs))
        run.health = {**verdict.as_dict(), "first_collapsed_epoch": previous.get("first_collapsed_epoch", epoch)}
    elif verdict.status == "ok":
        run.health = {**verdict.as_dict(), **({"first_collapsed_epoch": previous["first_collapsed_epoch"]}
                                               if "first_collapsed_epoch" in previous else {})}
    elif run.health is None:
        run.health = verdict.as_dict()
    return verdict


def _end_epoch(run: _Run, epoch: int, row: dict[str, Any]) -> None:
    """Health, validation when due (rank 0 keeps best.pt), then the epoch's row and last.pt.

    With ``train.stop_on_collapse`` a collapsed epoch is saved, then raises CollapseError.
    """
    config = run.config
    run.last_row = row
    _open_mmd_gate(run, epoch, row)
    verdict = _assess(run, epoch, row)
    if verdict.collapsed and config.train.stop_on_collapse:
        if run.main:
            assert run.metrics is not None
            run.metrics.write(row)
            _save_last(run, epoch + 1)
        run.completed = epoch + 1
        raise CollapseError(
            f"{verdict.message(config.train.epochs)}; stopped (train.stop_on_collapse; "
            f"train.stop_on_collapse=false trains on regardless); last checkpoint: {run.last_path}"
        )
    final = epoch + 1 == config.train.epochs
    if final and config.train.recalibrate_neck and run.main:
        # training is over: the saved model gets the neck statistics of inference (engine/recalibrate.py)
        run.recalibration = recalibrate_neck(run.model, run.prepared, config, run.device)
        row["neck"] = run.recalibration.as_dict()
        run.reporter.note(
            f"BNNeck statistics re-estimated from {run.recalibration.visible_images} visible + "
            f"{run.recalibration.infrared_images} infrared training images (mean was off by "
            f"{run.recalibration.shift:.2f} std)"
        )
    every = config.train.eval_every
    if every > 0 and ((epoch + 1) % every == 0 or final):
        if run.main:
            _validate_epoch(run, epoch, row, recalibrate=config.train.recalibrate_neck and not final)
        dist_utils.barrier()
    if run.main:
        # The row first: a kill before last.pt is saved re-runs this epoch on resume,
        # which drops the row again; the other order would lose it for good.
        assert run.metrics is not None
        run.metrics.write(row)
        _save_last(run, epoch + 1)
    run.completed = epoch + 1


def _validate_epoch(run: _Run, epoch: int, row: dict[str, Any], *, recalibrate: bool = False) -> None:
    """Val scores into the row; a new best val mAP saves best.pt.

    ``recalibrate``: score (and keep as best.pt) a copy of the model whose neck statistics
    are re-estimated as at the end of training, so every epoch is judged like the last.
    """
    model, recalibration = run.model, run.recalibration
    if recalibrate:
        model = copy.deepcopy(run.model)
        recalibration = recalibrate_neck(model, run.prepared, run.config, run.device)
    val = validate(model, run.prepared, run.config, run.device)
    row["val"] = val
    if run.best is None or val["mAP"] > run.best["mAP"]:
        run.best = {"epoch": epoch, **val}
        save_checkpoint(run.best_path, checkpoint_payload(
            model, run.config, run.label_map, kind="best", epoch=epoch + 1, val=val,
            protocol=validation_statement(run.config), feature=FEATURE_STATEMENT, init=run.init,
            neck=recalibration.as_dict() if recalibration else None,
        ))


def _finish(run: _Run, status: str, message: str | None, progress: _Progress) -> TrainResult:
    """Rank 0 writes summary.json; the result goes to the reporter and back to the caller."""
    summary = _write_summary(run, status, message) if run.main else {}
    progress.summary = summary
    result = TrainResult(
        out_dir=run.out_dir, status=status, epochs=run.config.train.epochs, epochs_completed=run.completed,
        last_checkpoint=run.last_path, best_checkpoint=run.best_path if run.best is not None else None,
        final_losses=summary.get("final_losses", {}), best=run.best, time_s=run.session.elapsed(),
        images_per_s=summary.get("images_per_s", 0.0), summary=summary, rank=run.info.rank,
    )
    progress.result = result
    run.reporter.end(result)
    return result


def _write_summary(run: _Run, status: str, message: str | None) -> dict[str, Any]:
    """``summary.json``: what was trained, how far, final losses, time, and what any val number means."""
    config, last_row, best, out_dir = run.config, run.last_row, run.best, run.out_dir
    elapsed = run.session.elapsed()
    final = {"total": last_row["loss"], **last_row["parts"]} if last_row else {}
    validated = config.train.eval_every > 0
    summary = {
        "status": status,
        "message": message,
        "dataset": run.prepared.name,
        "data": str(run.prepared.root),
        "epochs": config.train.epochs,
        "epochs_completed": run.completed,
        "steps_per_epoch": len(run.loader),
        "world_size": run.info.world_size,
        "final_losses": final,
        "final_lr": dict(last_row.get("lr", {})) if last_row else {},
        "time_s": elapsed,
        "images_per_s": run.session_images / elapsed if elapsed > 0 else 0.0,
        "best_val": dict(best) if best else None,
        "protocol": validation_statement(config) if validated
        else "no validation during training (train.eval_every=0); no checkpoint was selected on any evaluation set",
        "feature": FEATURE_STATEMENT,
        "neck": run.recalibration.as_dict() if run.recalibration else None,
        "health": run.health,
        "init": run.init,
        "mmd_joined": run.mmd_joined if run.config.loss.mmd_gate is not None else None,
        "checkpoints": {
            "last": str(out_dir / runlog.LAST_CHECKPOINT),
            "best": str(out_dir / runlog.BEST_CHECKPOINT) if best else None,
        },
        "finished": runlog.now_iso(),
    }
    runlog.write_json(out_dir / runlog.SUMMARY_FILE, summary)
    return summary
