"""``mclnet train``: train MCLNet from a preset into a run directory (resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Mapping, Optional

import typer

from mclnet_cli.cli.output import console, err_console, fail, guard, print_json, state


def _format_parts(parts: Mapping[str, float]) -> str:
    return " ".join(f"{name} {value:.3f}" for name, value in parts.items())


def _format_lr(lr: Mapping[str, float]) -> str:
    return "lr " + "/".join(f"{value:.2g}" for value in lr.values())


class RichReporter:
    """Renders training events: a progress bar per epoch and one summary line per epoch (stderr)."""

    def __init__(self, show_progress: bool) -> None:
        self.show_progress = show_progress
        self.progress: Any = None
        self.task: Any = None
        self.epochs = 0

    # The core's Reporter interface (duck-typed, so this module needs no torch import).
    def start(self, info: Mapping[str, Any]) -> None:
        self.epochs = int(info["epochs"])
        amp = f", amp {info['amp']}" if info.get("amp") else ""
        ranks = f" x{info['world_size']}" if int(info.get("world_size", 1)) > 1 else ""
        where = f"epoch {int(info['start_epoch']) + 1}" if info["start_epoch"] else "the start"
        if state.quiet:
            return
        if int(info["start_epoch"]) >= self.epochs:
            return  # nothing to train; the core's note says so
        err_console.print(
            f"training on {info['dataset']} ({info['num_classes']} ids) from {where}: "
            f"{info['epochs']} epochs x {info['steps_per_epoch']} steps on {info['device']}{ranks}{amp} -> {info['out_dir']}",
            highlight=False,
        )
        if self.show_progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self.progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=err_console,
            )
            self.progress.start()

    def epoch_start(self, epoch: int, steps: int) -> None:
        if self.progress is not None:
            self.task = self.progress.add_task(f"epoch {epoch + 1}/{self.epochs}", total=steps, stats="")

    def step(self, epoch: int, step: int, stats: Mapping[str, Any]) -> None:
        if self.progress is not None and self.task is not None:
            text = (
                f"loss {stats['loss']:.3f} ({_format_parts(stats['parts'])}) {_format_lr(stats['lr'])} "
                f"{stats['images_per_s']:.0f} img/s"
            )
            self.progress.update(self.task, advance=1, stats=text)

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
            err_console.print(line, highlight=False)

    def note(self, message: str) -> None:
        if not state.quiet:
            err_console.print(message, highlight=False)

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
        typer.Option("--preset", "-p", help="Preset name or YAML path. With --resume, defaults to the run's config.yaml."),
    ] = None,
    overrides: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a config value, e.g. --set train.epochs=10 (repeatable).")
    ] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pt.")] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or per-epoch lines.")] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the run summary as one JSON document.")] = False,
) -> None:
    """Train MCLNet from a preset; writes config, metrics, checkpoints and a summary to --out.

    Multi-GPU: torchrun --nproc_per_node N -m mclnet_cli train ... (one process per GPU).
    """
    _run(data, out, preset, overrides or [], resume, device, quiet, json_output)


@guard
def _run(
    data: Path, out: Path, preset: str | None, overrides: list[str], resume: bool, device: str, quiet: bool, json_output: bool
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

    reporter = RichReporter(show_progress=not state.quiet)
    try:
        result = fit(config, data, out, resume=resume, device=device, reporter=reporter)
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
                f"continue with: mclnet train --data {data} --out {out} --resume"
            )
        else:
            hint = f"before the first checkpoint was saved, nothing to resume; start again (empty or remove {out} first)"
        err_console.print(f"[yellow]interrupted[/]: {hint}", highlight=False)
        raise typer.Exit(130)


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
    best = summary.get("best_val")
    if best:
        console.print(
            f"best val (epoch {best['epoch'] + 1}): mAP {best['mAP']:.2f} Rank-1 {best['rank1']:.2f} -> {result.best_checkpoint}",
            highlight=False,
        )
        console.print(f"[dim]{summary.get('protocol')}[/]", highlight=False)
    console.print(f"checkpoint: {result.last_checkpoint}", highlight=False)
