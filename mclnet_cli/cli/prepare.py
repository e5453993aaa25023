"""``mclnet prepare``: read a dataset in its published layout, validate it, write a prepared dataset.

Thin layer: parse options, call :mod:`mclnet_cli.data.prepare` lazily, render.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from mclnet_cli.cli.options import DebugOpt, JsonOpt, QuietOpt, common
from mclnet_cli.cli.output import console, err_console, guard, print_json, progress_bar
from mclnet_cli.config import DataConfig

if TYPE_CHECKING:
    from mclnet_cli.data.prepare import PrepareReport

app = typer.Typer(help="Read a dataset in its published layout, validate it, write a prepared dataset.", no_args_is_help=True)

RootArg = Annotated[Path, typer.Argument(help="Dataset root folder (the published layout).", show_default=False)]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder to write the prepared dataset to.", show_default=False)]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Drop images that do not decode instead of failing.")]
CacheOpt = Annotated[bool, typer.Option("--cache", help="Also store the training images pre-resized as a uint8 memmap.")]
RECIPE_SIZE = f"{DataConfig.height}x{DataConfig.width}"  # the recipe's input size, from the schema
CacheSizeOpt = Annotated[str, typer.Option("--cache-size", help="Cache image size HEIGHTxWIDTH (match data.height/width).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Threads for image checks (default: 4 per core, at most 16).")]
JsonOpt = JsonOpt


def _run(dataset: str, root: Path, out: Path, *, trial: int | None, skip_bad: bool, cache: bool, cache_size: str, workers: int | None, as_json: bool, label: str | None = None) -> None:
    from mclnet_cli.data.cache import parse_size
    from mclnet_cli.data.prepare import prepare_dataset

    size = parse_size(cache_size) if cache else None
    report = prepare_dataset(
        dataset, root, out, trial=trial, skip_bad=skip_bad, cache_size=size, workers=workers, progress=progress_bar, label=label
    )
    _render(report, as_json)


def _render(report: "PrepareReport", as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        print_json({**report.to_json(), **(extra or {})})
        return
    from rich.table import Table

    title = f"{report.dataset}" + (f" (trial {report.trial})" if report.trial is not None else "")
    table = Table(title=f"prepared {title}", title_justify="left")
    for column in ("split", "modality", "ids", "images"):
        table.add_column(column, justify="left" if column in ("split", "modality") else "right")
    for split, by_modality in report.counts.items():
        for modality, numbers in by_modality.items():
            table.add_row(split, modality, str(numbers["ids"]), str(numbers["images"]))
    console.print(table)
    if report.skipped:
        err_console.print(f"[yellow]warning:[/] skipped {len(report.skipped)} image(s) that do not decode, e.g. {report.skipped[0]}", highlight=False, soft_wrap=True)
    if report.single_modality_ids:
        shown = ", ".join(str(p) for p in report.single_modality_ids[:10])
        more = " ..." if len(report.single_modality_ids) > 10 else ""
        err_console.print(
            f"[yellow]warning:[/] {len(report.single_modality_ids)} training id(s) have images in only one modality "
            f"(never sampled): {shown}{more}",
            highlight=False,
            soft_wrap=True,
        )
    if report.cache:
        console.print(f"cache: {report.cache['images']} images at {report.cache['height']}x{report.cache['width']} in {report.cache['path']}", highlight=False)
    console.print(f"wrote {report.out}", highlight=False, soft_wrap=True)


@app.command("sysu")
@guard
def sysu(root: RootArg, out: OutOpt, skip_bad: SkipBadOpt = False, cache: CacheOpt = False, cache_size: CacheSizeOpt = RECIPE_SIZE, workers: WorkersOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """SYSU-MM01: cam1..cam6/<pid>/<index>.jpg with exp/{train,val,test}_id.txt."""
    common(quiet=quiet, debug=debug)
    _run("sysu", root, out, trial=None, skip_bad=skip_bad, cache=cache, cache_size=cache_size, workers=workers, as_json=as_json)


@app.command("regdb")
@guard
def regdb(
    root: RootArg,
    out: OutOpt,
    trial: Annotated[int, typer.Option("--trial", min=1, max=10, help="RegDB identity split 1..10 (one model per split; train it with --set data.regdb_split=N).")] = 1,
    skip_bad: SkipBadOpt = False,
    cache: CacheOpt = False,
    cache_size: CacheSizeOpt = RECIPE_SIZE,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """RegDB: Visible|Thermal/<pid>/*.bmp through idx/{train,test}_{visible,thermal}_T.txt."""
    common(quiet=quiet, debug=debug)
    _run("regdb", root, out, trial=trial, skip_bad=skip_bad, cache=cache, cache_size=cache_size, workers=workers, as_json=as_json)


@app.command("llcm")
@guard
def llcm(root: RootArg, out: OutOpt, skip_bad: SkipBadOpt = False, cache: CacheOpt = False, cache_size: CacheSizeOpt = RECIPE_SIZE, workers: WorkersOpt = None, as_json: JsonOpt = False, quiet: QuietOpt = False, debug: DebugOpt = False) -> None:
    """LLCM: training via idx/train_{vis,nir}.txt, test via test_vis|test_nir/camN/<pid>/."""
    common(quiet=quiet, debug=debug)
    _run("llcm", root, out, trial=None, skip_bad=skip_bad, cache=cache, cache_size=cache_size, workers=workers, as_json=as_json)


@app.command("synthetic")
@guard
def synthetic(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="Folder for the raw synthetic tree (SYSU-MM01 layout).", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Prepared dataset folder (default: DIR/prepared).")] = None,
    ids: Annotated[int, typer.Option("--ids", min=10, help="Number of identities.")] = 100,
    seed: Annotated[int, typer.Option("--seed", help="Random seed; the same seed gives identical files.")] = 0,
    images_per_camera: Annotated[int, typer.Option("--images-per-camera", min=1, help="Images per identity and camera.")] = 4,
    cache: CacheOpt = False,
    cache_size: CacheSizeOpt = "64x32",
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Draw a small cross-spectrum person dataset (SYSU-MM01 layout) and prepare it."""
    common(quiet=quiet, debug=debug)
    from mclnet_cli.data.cache import parse_size
    from mclnet_cli.data.prepare import prepare_synthetic

    size = parse_size(cache_size) if cache else None
    target = out if out is not None else directory / "prepared"
    report, summary = prepare_synthetic(
        directory, target, ids=ids, seed=seed, images_per_camera=images_per_camera, cache_size=size, workers=workers,
        progress=_count_identities,
    )
    _render(report, as_json, {"seed": seed, "ids": ids, "raw": summary["root"]})


def _count_identities(description: str, total: int) -> Any:
    """The progress bar, counting identities while they are drawn and images after."""
    return progress_bar(description, total, unit="id" if description == "drawing identities" else "img")
