"""``mclnet prepare``: read a dataset in its published layout, validate it, write a prepared dataset.

Thin layer: one sub-command per entry of the dataset table
(:data:`mclnet_cli.data.sources.SOURCES`), each built by :func:`source_command`
from the shared parameters of :func:`prepare_source` plus the entry's own options
(RegDB's ``--trial``), so an option of one dataset is never offered by another.
``prepare synthetic`` draws a dataset first and has options of its own;
``prepare folder`` and ``prepare csv`` read your own cameras (:mod:`mclnet_cli.data.own`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer

from mclnet_cli.cli.options import Command, DebugOpt, Group, JsonOpt, QuietOpt, common
from mclnet_cli.cli.output import console, err_console, guard, print_json, progress_bar
from mclnet_cli.config import DataConfig
from mclnet_cli.data.sources import SOURCES, Source, SourceOption

if TYPE_CHECKING:
    from mclnet_cli.data.prepare import PrepareReport

app = typer.Typer(
    cls=Group, help="Read a dataset in its published layout, validate it, write a prepared dataset.", no_args_is_help=True
)

RootArg = Annotated[Path, typer.Argument(help="Dataset root folder (the published layout).", show_default=False)]
OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder to write the prepared dataset to.", show_default=False)]
SkipBadOpt = Annotated[bool, typer.Option("--skip-bad", help="Drop images that do not decode instead of failing.")]
CacheOpt = Annotated[bool, typer.Option("--cache", help="Also store the training images pre-resized as a uint8 memmap.")]
RECIPE_SIZE = f"{DataConfig.height}x{DataConfig.width}"  # the recipe's input size, from the schema
CacheSizeOpt = Annotated[str, typer.Option("--cache-size", help="Cache image size HEIGHTxWIDTH (match data.height/width).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=1, help="Threads for image checks (default: 4 per core, at most 16).")]


def prepare_source(
    source: Source,
    root: RootArg,
    out: OutOpt,
    skip_bad: SkipBadOpt = False,
    cache: CacheOpt = False,
    cache_size: CacheSizeOpt = RECIPE_SIZE,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
    **options: int,
) -> None:
    """Prepare one dataset of the table; ``options`` are the entry's own (RegDB: trial)."""
    common(quiet=quiet, debug=debug)
    from mclnet_cli.data.cache import parse_size
    from mclnet_cli.data.prepare import prepare_dataset

    size = parse_size(cache_size) if cache else None
    report = prepare_dataset(
        source.name, root, out, options=options, skip_bad=skip_bad, cache_size=size, workers=workers, progress=progress_bar
    )
    _render(report, as_json)


def _own_parameter(option: SourceOption) -> inspect.Parameter:
    flag = typer.Option(f"--{option.name}", min=option.low, max=option.high, help=option.help)
    return inspect.Parameter(option.name, inspect.Parameter.KEYWORD_ONLY, default=option.default, annotation=Annotated[int, flag])


def source_command(source: Source) -> Callable[..., None]:
    """The ``prepare NAME`` command of one table entry: ROOT, --out, the entry's own options, then the shared ones."""
    shared = [
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        for p in inspect.signature(prepare_source, eval_str=True).parameters.values()
        if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD and p.name != "source"
    ]
    own = [_own_parameter(option) for option in source.options]

    def command(**values: Any) -> None:
        prepare_source(source, **values)

    command.__name__ = command.__qualname__ = source.name
    command.__doc__ = source.layout
    command.__signature__ = inspect.Signature([*shared[:2], *own, *shared[2:]], return_annotation=None)  # type: ignore[attr-defined]
    return guard(command)


for _source in SOURCES.values():
    app.command(_source.name, cls=Command)(source_command(_source))


def _render(report: "PrepareReport", as_json: bool, extra: dict[str, Any] | None = None) -> None:
    if as_json:
        print_json({**report.to_json(), **(extra or {})})
        return
    from rich.table import Table

    own = ", ".join(f"{name} {value}" for name, value in report.options.items())
    title = report.dataset + (f" ({own})" if own else "")
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


@app.command("synthetic", cls=Command)
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


# --------------------------------------------------------------------------- your own cameras

def _own_out(default: str) -> Any:
    return typer.Option("--out", "-o", help=f"Folder to write the prepared dataset to (default: {default}).", show_default=False)


OwnSkipBadOpt = Annotated[
    bool, typer.Option("--skip-bad", help="Drop bad rows and images (each named in the report) instead of failing.")
]
SplitSeedOpt = Annotated[
    Optional[int], typer.Option("--seed", min=0, help="Seed of the train/test split by identity (default 0).", show_default=False)
]
TestFractionOpt = Annotated[
    Optional[float],
    typer.Option(
        "--test-fraction", min=0.0, max=1.0, show_default=False,
        help="Share of identities drawn into the test split (default 0.5; 0: all train, 1: all test).",
    ),
]


@app.command("folder", cls=Command)
@guard
def folder(
    root: Annotated[Path, typer.Argument(metavar="ROOT", help="ROOT/{visible,infrared}/<pid>/<image>.", show_default=False)],
    out: Annotated[Optional[Path], _own_out("ROOT/prepared")] = None,
    cameras: Annotated[
        bool, typer.Option("--cameras", help="Image names are <camera>_<anything>: the text before the first underscore is the camera.")
    ] = False,
    seed: SplitSeedOpt = None,
    test_fraction: TestFractionOpt = None,
    skip_bad: OwnSkipBadOpt = False,
    cache: CacheOpt = False,
    cache_size: CacheSizeOpt = RECIPE_SIZE,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Your own cameras, one folder per spectrum: ROOT/{visible,infrared}/<pid>/[<camera>_]<name>.jpg (into ROOT/prepared)."""
    common(quiet=quiet, debug=debug)
    _prepare_own("folder", root, out, cameras, seed, test_fraction, skip_bad, cache, cache_size, workers, as_json)


@app.command("csv", cls=Command)
@guard
def csv_manifest(
    manifest: Annotated[
        Path, typer.Argument(metavar="MANIFEST", help="CSV with a header row: path,pid,modality[,camera][,split].", show_default=False)
    ],
    out: Annotated[Optional[Path], _own_out("prepared in the manifest's folder")] = None,
    seed: SplitSeedOpt = None,
    test_fraction: TestFractionOpt = None,
    skip_bad: OwnSkipBadOpt = False,
    cache: CacheOpt = False,
    cache_size: CacheSizeOpt = RECIPE_SIZE,
    workers: WorkersOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Your own cameras from a CSV manifest: path,pid,modality[,camera][,split] (into <manifest's folder>/prepared)."""
    common(quiet=quiet, debug=debug)
    _prepare_own("csv", manifest, out, False, seed, test_fraction, skip_bad, cache, cache_size, workers, as_json)


def _prepare_own(
    fmt: str, source: Path, out: Optional[Path], cameras: bool, seed: Optional[int], test_fraction: Optional[float],
    skip_bad: bool, cache: bool, cache_size: str, workers: Optional[int], as_json: bool,
) -> None:
    from dataclasses import replace

    from mclnet_cli.data.cache import parse_size
    from mclnet_cli.data.own import prepare_own

    size = parse_size(cache_size) if cache else None
    report = prepare_own(
        fmt, source, out, cameras=cameras, seed=seed, test_fraction=test_fraction, skip_bad=skip_bad, cache_size=size,
        workers=workers, progress=progress_bar,
    )
    if as_json:
        print_json(report.to_json())
        return
    _render(replace(report, skipped=[]), False)  # the dropped rows are listed below, with their reasons
    split = report.split
    how = f"drawn by identity (seed {split['seed']}, test fraction {split['test_fraction']:g})" if split["drawn"] else "as given"
    ids = ", ".join(f"{name} {count}" for name, count in split["ids"].items())
    console.print(f"{report.ids} ids ({ids}), split {how}; {len(report.cameras)} known camera(s)", highlight=False, soft_wrap=True)
    if report.dropped:
        err_console.print(f"[yellow]warning:[/] --skip-bad dropped {len(report.dropped)} problem(s):", highlight=False)
        for problem in report.dropped[:SHOW_DROPPED]:
            err_console.print(f"  {problem}", highlight=False, soft_wrap=True, markup=False)
        if len(report.dropped) > SHOW_DROPPED:
            err_console.print(f"  and {len(report.dropped) - SHOW_DROPPED} more (--json lists every one)", highlight=False)
    if report.ignored:
        err_console.print(
            f"[yellow]warning:[/] not spectrum folders, not read: {', '.join(report.ignored)}", highlight=False, soft_wrap=True
        )


SHOW_DROPPED = 20
