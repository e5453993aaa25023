"""``mclnet evaluate``: score a checkpoint (or a features file) under the SYSU-MM01 / RegDB / LLCM / own-data protocols."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mclnet_cli.cli.options import (
    DIRECTIONS, DRAWS, DRAWS_HELP, PROTOCOLS, SYSU_MODES, BatchSizeOpt, DebugOpt, DeviceOpt, JsonOpt, QuietOpt, ThreadsOpt,
    WorkersOpt, choice_option, common,
)
from mclnet_cli.cli.output import console, guard, print_json, progress_bar, warn

COLUMNS = (("rank1", "R-1"), ("rank5", "R-5"), ("rank10", "R-10"), ("rank20", "R-20"), ("mAP", "mAP"), ("mINP", "mINP"))


def evaluate(
    checkpoint: Annotated[Optional[Path], typer.Argument(help="Checkpoint (.pt) to evaluate; omit with --features.")] = None,
    data: Annotated[Optional[Path], typer.Option("--data", "-d", help="Prepared dataset folder (its test split).")] = None,
    features: Annotated[
        Optional[Path],
        typer.Option("--features", help="Score an .npz of features computed elsewhere (features, pids, cams, modalities, paths)."),
    ] = None,
    protocol: Annotated[Optional[str], choice_option("--protocol", values=PROTOCOLS, help="sysu, regdb, llcm or own (prepared folder/csv data).")] = None,
    mode: Annotated[Optional[str], choice_option("--mode", values=SYSU_MODES, help="sysu: all or indoor.")] = None,
    shots: Annotated[
        Optional[int], choice_option("--shots", values=("1", "10"), help="sysu/llcm gallery images per (pid, camera): 1 or 10.")
    ] = None,
    trials: Annotated[Optional[int], typer.Option("--trials", help="Gallery draws to average (1-10; own: 0 = the whole gallery, once).")] = None,
    direction: Annotated[
        Optional[str],
        choice_option("--direction", values=DIRECTIONS, help="regdb/llcm/own: visible_to_infrared, infrared_to_visible or both."),
    ] = None,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    threads: ThreadsOpt = None,
    flip: Annotated[Optional[bool], typer.Option("--flip/--no-flip", help="Flip test-time augmentation.")] = None,
    rerank: Annotated[Optional[bool], typer.Option("--rerank/--no-rerank", help="k-reciprocal re-ranking (k1=20, k2=6, lambda=0.3).")] = None,
    draws: Annotated[Optional[str], choice_option("--draws", values=DRAWS, help=DRAWS_HELP)] = None,
    perm_file: Annotated[
        Optional[Path], typer.Option("--perm-file", help="rand_perm_cam.mat for --draws official (default: <root>/exp/).")
    ] = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Evaluate a checkpoint on a prepared test split: Rank-1/5/10/20, mAP, mINP per trial and mean +- std.

    Options left out take the checkpoint's eval config. JSON results are keyed by
    feature (bn, pool) for sysu and by direction/feature (e.g. visible_to_infrared/bn)
    for regdb, llcm and own; a features file is scored as the feature 'features'.
    """
    # a features file needs no torch: only an explicit --threads imports it there
    common(quiet=quiet, debug=debug, threads=threads, compute=features is None or threads is not None)
    options = dict(
        protocol=protocol, mode=mode, shots=shots, trials=trials, direction=direction,
        batch_size=batch_size, flip=flip, rerank=rerank, draws=draws,
    )
    _run(checkpoint, data, features, options, device, workers, perm_file, json_output)


@guard
def _run(
    checkpoint: Path | None, data: Path | None, features: Path | None, options: dict[str, Any],
    device: str, workers: int | None, perm_file: Path | None, json_output: bool,
) -> None:
    from mclnet_cli.errors import ConfigError

    if perm_file is not None and options.get("draws") != "official":
        raise ConfigError("--perm-file is read only with --draws official")
    if features is not None:
        if checkpoint is not None or data is not None:
            raise ConfigError("--features scores a features file on its own: drop the CHECKPOINT argument and --data")
        from mclnet_cli.config import EvalConfig
        from mclnet_cli.engine.evaluate import EvalSettings, evaluate_features_file

        if options.get("flip"):
            raise ConfigError("--flip needs a checkpoint (the features file is already computed)")
        given = [name for name, value in (("--batch-size", options.get("batch_size")), ("--workers", workers)) if value is not None]
        if given:
            raise ConfigError(f"{' and '.join(given)} apply to embedding images; --features scores features already computed")
        settings = EvalSettings.resolve(EvalConfig(), **options)
        report = evaluate_features_file(features, settings, perm_file=perm_file, progress=progress_bar)
    else:
        if checkpoint is None:
            raise ConfigError("give a CHECKPOINT (with --data) or --features FILE.npz")
        if data is None:
            raise ConfigError("--data is required with a checkpoint: the prepared dataset to evaluate on")
        from mclnet_cli.engine.evaluate import evaluate_checkpoint

        report = evaluate_checkpoint(
            checkpoint, data, device=device, workers=workers, perm_file=perm_file,
            progress=progress_bar,
            **options,
        )
    payload = report.to_json()
    for message in payload["protocol"].get("warnings", []):
        warn(message)
    if json_output:
        print_json(payload)
        return
    render(payload)


def _describe(protocol: dict[str, Any]) -> str:
    from mclnet_cli.metrics.protocols import get_protocol

    parts = [protocol["name"]]
    gallery = get_protocol(protocol["name"]).gallery_words(
        protocol.get("mode"), protocol.get("shots", 1), protocol.get("draws", "none")
    )
    if gallery is not None:
        parts.append(gallery)
    parts.append(f"trials {', '.join(map(str, protocol['trials']))}")
    parts.append(f"{protocol['cmc']} CMC")
    parts.append(f"distance {protocol['distance']}")
    parts.append(f"flip {'on' if protocol['flip'] else 'off'}")
    parts.append(f"rerank {'on' if protocol['rerank'] else 'off'}")
    return " | ".join(parts)


def render(payload: dict[str, Any]) -> None:
    """Rich tables: one per result key, a row per trial, then mean and std rows."""
    from rich.table import Table

    protocol = payload["protocol"]
    console.print(_describe(protocol), highlight=False)
    notes: list[str] = list(protocol.get("notes", []))
    for key, result in payload["results"].items():
        table = Table(title=f"{key} (percent)", title_justify="left")
        table.add_column("trial", justify="right")
        for _, label in COLUMNS:
            table.add_column(label, justify="right")
        table.add_column("valid", justify="right")
        table.add_column("gallery", justify="right")
        for row in result["trials"]:
            table.add_row(
                str(row["trial"]), *(f"{row[k]:.2f}" for k, _ in COLUMNS),
                f"{row['valid_queries']}/{row['queries']}", str(row["gallery"]),
            )
        table.add_section()
        table.add_row("mean", *(f"{result['mean'][k]:.2f}" for k, _ in COLUMNS), "", "", style="bold")
        table.add_row("std", *(f"{result['std'][k]:.2f}" for k, _ in COLUMNS), "", "")
        console.print(table)
        notes.extend(_notes(key, result["trials"]))
    for note in notes:
        console.print(f"[dim]{note}[/]", highlight=False)


def _notes(key: str, trials: list[dict[str, Any]]) -> list[str]:
    """Short gallery and skipped-query remarks for one result key."""
    notes = []
    fewest = min(row["ranks_available"] for row in trials)
    if fewest < 20:
        notes.append(f"{key}: only {fewest} ranks available; CMC beyond them repeats the last value")
    skipped = sorted({row["skipped_queries"] for row in trials})
    if skipped != [0]:
        amount = str(skipped[0]) if len(skipped) == 1 else f"{skipped[0]}-{skipped[-1]}"
        notes.append(f"{key}: {amount} queries per trial skipped (no valid match after exclusion)")
    return notes
