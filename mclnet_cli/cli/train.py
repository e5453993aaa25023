"""``mclnet train``: train MCLNet from a preset into a run directory (resumable)."""

from __future__ import annotations

import shlex

from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

import typer

from mclnet_cli.cli.options import DebugOpt, DeviceOpt, JsonOpt, QuietOpt, SetOpt, ThreadsOpt, common, complete_preset
from mclnet_cli.cli.output import console, err_console, fail, guard, interrupted, print_json, state, warn


def _format_parts(parts: Mapping[str, float]) -> str:
    return " ".join(f"{name} {value:.3f}" for name, value in parts.items())


def _format_lr(lr: Mapping[str, float]) -> str:
    return "lr " + "/".join(f"{value:.2g}" for value in lr.values())


SLOWDOWN_FACTOR = 3.0  # an epoch this many times slower than the run's best gets a one-line notice


class RichReporter:
    """Renders training events on stderr: a progress line per epoch and one summary line per epoch.

    On a terminal the progress line is a rich bar that keeps step/total, img/s and
    the run's ETA at any width (loss parts and learning rates go first, then the
    loss, when the terminal is narrow). Anywhere else (a log file, a pipe) a plain
    line is printed every ``MCLNET_PROGRESS_EVERY`` seconds (default 30).
    """

    def __init__(self, show_progress: bool, console: Any = None) -> None:
        self.show_progress = show_progress
        self.console = console if console is not None else err_console
        self.progress: Any = None
        self.task: Any = None
        self.ticker: Any = None
        self.epochs = 0
        self.steps = 0
        self.epoch = 0
        self.steps_done = 0  # steps finished this session (for the ETA)
        self.session_start = 0.0
        self.best_rate = 0.0
        self.warned_slow = False

    # The core's Reporter interface (duck-typed, so this module needs no torch import).
    def start(self, info: Mapping[str, Any]) -> None:
        import time

        self.epochs = int(info["epochs"])
        self.steps = int(info["steps_per_epoch"])
        self.start_epoch = int(info["start_epoch"])
        self.session_start = time.monotonic()
        amp = f", amp {info['amp']}" if info.get("amp") else ""
        ranks = f" x{info['world_size']}" if int(info.get("world_size", 1)) > 1 else ""
        where = f"epoch {int(info['start_epoch']) + 1}" if info["start_epoch"] else "the start"
        if state.quiet:
            return
        if int(info["start_epoch"]) >= self.epochs:
            return  # nothing to train; the core's note says so
        threads = f", {state.threads} thread(s)" if state.threads and str(info["device"]).startswith("cpu") else ""
        self.console.print(
            f"training on {info['dataset']} ({info['num_classes']} ids) from {where}: "
            f"{info['epochs']} epochs x {info['steps_per_epoch']} steps on {info['device']}{threads}{ranks}{amp} -> {info['out_dir']}",
            highlight=False,
            soft_wrap=True,  # a log file gets whole lines, never cut at 80 columns
        )
        if not self.show_progress:
            return
        if not self.console.is_terminal:
            from mclnet_cli.cli.output import PlainTicker

            self.ticker = PlainTicker(console=self.console)
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        width = self.console.width
        columns: list[Any] = [TextColumn("{task.description}")]
        if width >= 60:
            columns.append(BarColumn(bar_width=24 if width >= 110 else 10))
        columns += [MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[eta]}")]
        if width >= 80:
            columns.append(TextColumn("{task.fields[stats]}"))
        self.progress = Progress(*columns, console=self.console)
        self.progress.start()

    def epoch_start(self, epoch: int, steps: int) -> None:
        self.epoch = epoch
        self.steps = steps
        if self.progress is not None:
            self.task = self.progress.add_task(f"epoch {epoch + 1}/{self.epochs}", total=steps, stats="", rate="", eta="")

    def _eta(self, epoch: int, step: int) -> str:
        import time

        from mclnet_cli.cli.output import format_duration

        elapsed = time.monotonic() - self.session_start
        if self.steps_done <= 0 or elapsed <= 0:
            return "ETA -:--"
        remaining = (self.steps - (step + 1)) + (self.epochs - epoch - 1) * self.steps
        return "ETA " + format_duration(remaining * elapsed / self.steps_done)

    def _stats(self, stats: Mapping[str, Any]) -> str:
        """Loss, then its parts and learning rates only when the terminal has room."""
        text = f"loss {stats['loss']:.3f}"
        if self.console.width >= 150:
            text += f" ({_format_parts(stats['parts'])}) {_format_lr(stats['lr'])}"
        elif self.console.width >= 110:
            text += f" {_format_lr(stats['lr'])}"
        return text

    def step(self, epoch: int, step: int, stats: Mapping[str, Any]) -> None:
        self.steps_done += 1
        rate = f"{stats['images_per_s']:.0f} img/s"
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=1, stats=self._stats(stats), rate=rate, eta=self._eta(epoch, step))
        elif self.ticker is not None and self.ticker.due():
            self.ticker.emit(
                f"epoch {epoch + 1}/{self.epochs} step {step + 1}/{self.steps} loss {stats['loss']:.3f} {rate} "
                f"{self._eta(epoch, step)}"
            )

    def epoch_end(self, epoch: int, row: Mapping[str, Any]) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        val = row.get("val")
        val_text = f" | val mAP {val['mAP']:.1f} R1 {val['rank1']:.1f}" if val else ""
        line = (
            f"epoch {epoch + 1}/{self.epochs}: loss {row['loss']:.4f} ({_format_parts(row['parts'])}) "
            f"{_format_lr(row['lr'])} {row['images_per_s']:.0f} img/s {row['epoch_time_s']:.1f}s{val_text}"
        )
        if not state.quiet:
            self.console.print(line, highlight=False, soft_wrap=True)
        self._check_throughput(float(row["images_per_s"]))

    def _check_throughput(self, rate: float) -> None:
        """One notice per run when an epoch runs far below the best epoch of this run."""
        if rate <= 0:
            return
        if self.best_rate and rate * SLOWDOWN_FACTOR < self.best_rate and not self.warned_slow:
            self.warned_slow = True
            hint = (
                f"; other processes may be sharing the cores: try --threads 1 (or MCLNET_THREADS=1)"
                if (state.threads or 1) > 1
                else "; other processes may be sharing the cores"
            )
            self.note(f"[yellow]note:[/] this epoch ran at {rate:.0f} img/s, under a third of this run's best ({self.best_rate:.0f}){hint}")
        self.best_rate = max(self.best_rate, rate)

    def note(self, message: str) -> None:
        if not state.quiet:
            self.console.print(message, highlight=False, soft_wrap=True)

    def warning(self, message: str) -> None:
        warn(message)

    def end(self, result: Any) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def train(
    data: Annotated[Path, typer.Option("--data", "-d", help="Prepared dataset folder (from 'mclnet prepare').")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory to create (or continue with --resume).")],
    preset: Annotated[
        Optional[str],
        typer.Option(
            "--preset", "-p", help="Preset name or YAML path. With --resume, defaults to the run's config.yaml.",
            autocompletion=complete_preset,
        ),
    ] = None,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")] = False,
    init: Annotated[
        Optional[Path],
        typer.Option(
            "--init", help="Start a new run from this mclnet checkpoint's weights (fine-tuning; the classifier is "
            "kept when the identity count matches, else re-made).", show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    json_output: JsonOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Train MCLNet from a preset; writes config, metrics, checkpoints and a summary to --out.

    Multi-GPU: torchrun --nproc_per_node N -m mclnet_cli train ... (one process per GPU).
    """
    common(quiet=quiet, debug=debug, threads=threads, compute=True)
    _run(data, out, preset, overrides or [], resume, device, quiet, json_output, init)


@guard
def _run(
    data: Path, out: Path, preset: str | None, overrides: list[str], resume: bool, device: str, quiet: bool, json_output: bool,
    init: Path | None = None,
) -> None:
    from mclnet_cli.config import load_config
    from mclnet_cli.engine.runlog import CONFIG_FILE

    state.quiet = state.quiet or quiet
    if preset is None:
        if not resume:
            raise fail("--preset is required for a new run (e.g. --preset tiny or --preset sysu)")
        preset = str(out / CONFIG_FILE)
        if not Path(preset).is_file():
            raise fail(f"cannot resume: {preset} not found; pass --preset")
    config = load_config(preset, overrides)

    from mclnet_cli.engine.train import fit

    from mclnet_cli.engine.health import SUGGESTED_CHANGE
    from mclnet_cli.errors import CollapseError

    reporter = RichReporter(show_progress=not state.quiet)
    try:
        result = fit(config, data, out, resume=resume, device=device, reporter=reporter, init=init)
    except CollapseError as exc:
        retry = shlex.join(["mclnet", "train", "--data", str(data), "--out", f"{out}-retry", "--preset", preset,
                            *(["--init", str(init)] if init is not None else []),
                            *[arg for item in overrides for arg in ("--set", item)], "--set", SUGGESTED_CHANGE])
        raise fail(f"{exc}; to start again with a change: {retry}") from exc
    finally:
        reporter.close()

    if result.rank != 0:  # torchrun: rank 0 reports for the whole job
        if result.status == "interrupted":
            raise typer.Exit(130)
        return
    if json_output:
        print_json({"out_dir": str(result.out_dir), **result.summary})
    else:
        _render(result)
    if result.status == "interrupted":
        if Path(result.last_checkpoint).is_file():
            hint = (
                f"{result.epochs_completed} epoch(s) saved in {result.last_checkpoint}; "
                f"continue with: mclnet train --data {shlex.quote(str(data))} --out {shlex.quote(str(out))} --resume"
            )
        else:
            hint = f"before the first checkpoint was saved, nothing to resume; start again (empty or remove {out} first)"
        raise interrupted(hint)  # one unwrapped line: the command in it must paste back whole


def _render(result: Any) -> None:
    summary = result.summary
    losses = summary.get("final_losses") or {}
    console.print(f"[bold]run[/] {result.out_dir}  ({result.status})", highlight=False)
    console.print(
        f"epochs {result.epochs_completed}/{result.epochs}, {result.time_s:.1f}s, {result.images_per_s:.1f} img/s",
        highlight=False,
    )
    if losses:
        console.print("final losses: " + _format_parts(losses), highlight=False)
    init = summary.get("init")
    if init:
        console.print(f"started from {init['path']} ({init['fingerprint']}), classifier {init['classifier']}", highlight=False, soft_wrap=True)
    best = summary.get("best_val")
    if best:
        console.print(
            f"best val (epoch {best['epoch'] + 1}): mAP {best['mAP']:.2f} Rank-1 {best['rank1']:.2f} -> {result.best_checkpoint}",
            highlight=False,
        )
        console.print(f"[dim]{summary.get('protocol')}[/]", highlight=False)
    console.print(f"checkpoint: {result.last_checkpoint}", highlight=False)
