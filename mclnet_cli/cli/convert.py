"""``mclnet convert``: turn a checkpoint of the authors' MCLNet code into an mclnet checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from mclnet_cli.cli.options import DebugOpt, JsonOpt, QuietOpt, common
from mclnet_cli.cli.output import console, guard, print_json


def convert(
    source: Annotated[Path, typer.Argument(help="Checkpoint saved by the authors' code (e.g. best_checkpoint.pth).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="mclnet checkpoint to write (.pt).")],
    overrides: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            help="Override a value of the official-code config, e.g. --set eval.protocol=regdb (model.arch, "
            "model.specific_stages and model.pretrained come from SOURCE: another value is refused).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing --out (never the source checkpoint itself).")
    ] = False,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Convert the authors' checkpoint: every tensor placed and shape-checked, config `official-code`.

    The result works with evaluate, index and query as it is. Only tensors,
    numbers and numpy arrays are read from the file; nothing else is unpickled.
    An existing --out is refused unless --force; the source itself is never overwritten.
    """
    common(quiet=quiet, debug=debug)
    _run(source, out, overrides or [], json_output, force)


@guard
def _run(source: Path, out: Path, overrides: list[str], json_output: bool, force: bool) -> None:
    from mclnet_cli.engine.convert import convert_authors_checkpoint

    report = convert_authors_checkpoint(source, out, overrides, force=force)
    if json_output:
        print_json(report.to_dict())
        return
    console.print(
        f"converted {report.mapped} tensors ({report.num_classes} classes, "
        f"{report.specific_stages} modality-specific stages) -> [bold]{report.out}[/] (preset official-code)"
    )
    if report.unused:
        console.print(f"[dim]skipped {len(report.unused)} tensors of unused shrinkage modules (never called by the authors' forward)[/]")
    if report.ignored_entries:
        console.print(f"[dim]kept as metadata, not weights: {', '.join(report.ignored_entries)}[/]")
