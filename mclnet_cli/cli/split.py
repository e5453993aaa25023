"""``mclnet split``: show which test images are the queries and which form the gallery of one trial."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from mclnet_cli.cli.options import DIRECTIONS, DRAWS, DRAWS_HELP, DebugOpt, JsonOpt, PROTOCOLS, QuietOpt, SYSU_MODES, choice_option, common
from mclnet_cli.cli.output import console, guard, print_json

PROTOCOL_HELP = "sysu, regdb, llcm or own (default: the prepared dataset's own, else sysu)."


def split(
    prepared: Annotated[Path, typer.Argument(help="Prepared dataset folder (from 'mclnet prepare').")],
    protocol: Annotated[Optional[str], choice_option("--protocol", values=PROTOCOLS, help=PROTOCOL_HELP)] = None,
    mode: Annotated[Optional[str], choice_option("--mode", values=SYSU_MODES, help="sysu: all (default) or indoor.")] = None,
    shots: Annotated[
        Optional[int], choice_option("--shots", values=("1", "10"), help="sysu/llcm gallery images per (pid, camera): 1 (default) or 10.")
    ] = None,
    trial: Annotated[int, typer.Option("--trial", min=0, max=9999, help="Trial number (0-based draw seed; regdb has trial 0 only).")] = 0,
    direction: Annotated[
        Optional[str],
        choice_option(
            "--direction", values=DIRECTIONS[:2], help="regdb/llcm/own: infrared_to_visible (default) or visible_to_infrared."
        ),
    ] = None,
    draws: Annotated[Optional[str], choice_option("--draws", values=DRAWS, help=DRAWS_HELP)] = None,
    perm_file: Annotated[
        Optional[Path], typer.Option("--perm-file", help="rand_perm_cam.mat for --draws official (default: <root>/exp/).")
    ] = None,
    show: Annotated[int, typer.Option("--show", help="Gallery rows to list in the table (0: none).")] = 20,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show the query and gallery images of one protocol trial (summary table, or every image with --json).

    Options the protocol does not use (--mode with regdb or llcm, --draws and --shots with regdb,
    --direction with sysu) are refused, not ignored.
    """
    common(quiet=quiet, debug=debug)
    _run(prepared, protocol, mode, shots, trial, direction, draws, perm_file, show, json_output)


@guard
def _run(
    prepared_path: Path, protocol: str | None, mode: str | None, shots: int | None, trial_number: int,
    direction: str | None, draws: str | None, perm_file: Path | None, show: int, json_output: bool,
) -> None:
    from mclnet_cli.engine.evaluate import split_trial
    from mclnet_cli.errors import ConfigError

    if perm_file is not None and draws != "official":
        raise ConfigError("--perm-file is read only with --draws official")
    view = split_trial(
        prepared_path, trial_number, protocol=protocol, mode=mode, shots=shots, direction=direction,
        draws=draws, perm_file=perm_file,
    )
    samples, trial = view.samples, view.trial

    def rows(indices: Any) -> list[dict[str, Any]]:
        return [{"path": samples[i].path, "pid": samples[i].pid, "cam": samples[i].cam} for i in indices]

    info = {**trial.describe(), "data": str(view.data)}
    if json_output:
        print_json({"protocol": info, "queries": rows(trial.query), "gallery": rows(trial.gallery)})
        return
    _render(info, [samples[i] for i in trial.query], [samples[i] for i in trial.gallery], show)


def _render(info: dict[str, Any], queries: list[Any], gallery: list[Any], show: int) -> None:
    from rich.table import Table

    from mclnet_cli.metrics.protocols import get_protocol

    title = f"{info['protocol']} trial {info['trial']}, {info['direction'].replace('_', ' ')}"
    gallery_words = get_protocol(info["protocol"]).gallery_words(info["mode"], info["shots"], info["draws"])
    if gallery_words is not None:
        title += f", {gallery_words}"
    summary = Table(title=title, title_justify="left")
    for column in ("set", "modality", "images", "ids", "images per camera"):
        summary.add_column(column, justify="right" if column in ("images", "ids") else "left")
    for label, group in (("queries", queries), ("gallery", gallery)):
        per_cam = Counter(s.cam for s in group)
        cams = ", ".join(f"cam{c}: {n}" for c, n in sorted(per_cam.items()))
        modality = ", ".join(sorted({s.modality.value for s in group}))
        summary.add_row(label, modality, str(len(group)), str(len({s.pid for s in group})), cams)
    console.print(summary)
    if show > 0 and gallery:
        listing = Table(title=f"gallery (first {min(show, len(gallery))} of {len(gallery)})", title_justify="left")
        for column in ("pid", "cam", "path"):
            listing.add_column(column, justify="right" if column != "path" else "left")
        for s in gallery[:show]:
            listing.add_row(str(s.pid), str(s.cam), s.path)
        console.print(listing)
    console.print("[dim]--json lists every query and gallery image.[/]")
