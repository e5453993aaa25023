"""``mclnet query``: search a gallery index with probe images, usually from the other spectrum.

Thin layer: parse options, call :func:`mclnet_cli.engine.search.search_gallery`
lazily (no torch or FAISS import at module level), render tables, JSON or a picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mclnet_cli.cli.options import DebugOpt, DeviceOpt, QuietOpt, ThreadsOpt, common, modality_option
from mclnet_cli.cli.output import console, err_console, guard, print_json, progress_bar

if TYPE_CHECKING:
    from mclnet_cli.engine.search import ProbeResult, SearchReport


def query(
    probes: Annotated[list[Path], typer.Argument(help="Probe images and/or folders of probe images.", show_default=False)],
    index_dir: Annotated[Path, typer.Option("--index", "-i", help="Index folder made by 'mclnet index'.", show_default=False)],
    modality: Annotated[
        str, modality_option("Spectrum of the probes: infrared or visible.")
    ],
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Results per probe.")] = 10,
    save: Annotated[
        Optional[Path], typer.Option(
            "--save", help="Write a ranked-list picture here, in the format its suffix names (.png, .jpg, .webp, ...).",
            show_default=False,
        )
    ] = None,
    checkpoint: Annotated[
        Optional[Path],
        typer.Option("--checkpoint", "-c", help="Checkpoint path if it moved (must be the file that built the index).", show_default=False),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size",
            min=1,
            help="Probe images per forward pass (default: from the checkpoint's config, 64).",
            show_default=False,
        ),
    ] = None,
    mmap: Annotated[
        Optional[bool],
        typer.Option(
            "--mmap/--no-mmap",
            help="Map the index file instead of reading it into memory (default: only index files of 1 GiB and up).",
            show_default=False,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON list on stdout: per probe its results, the index and the feature searched."),
    ] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Rank the gallery of an index for each probe (cross-spectrum: infrared probes, visible gallery, or back).

    The checkpoint recorded in the index embeds the probes with their own spectrum's stream.
    """
    common(quiet=quiet, debug=debug, threads=threads, compute=True)
    _run(probes, index_dir, modality, top_k, save, checkpoint, batch_size, device, as_json, mmap)


@guard
def _run(
    probes: list[Path],
    index_dir: Path,
    modality: str,
    top_k: int,
    save: Path | None,
    checkpoint: Path | None,
    batch_size: int | None,
    device: str,
    as_json: bool,
    mmap: bool | None = None,
) -> None:
    from mclnet_cli.engine.search import search_gallery

    if save is not None:
        from mclnet_cli.index.picture import image_format

        image_format(save)  # an unknown suffix is refused before any work
    report = search_gallery(
        index_dir,
        probes,
        modality,
        top_k,
        checkpoint=checkpoint,
        batch_size=batch_size,
        device=device,
        progress=lambda description, total: progress_bar(description, total, enabled=total > (batch_size or 64)),
        mmap=mmap,
    )
    for note in report.notices:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for result in report.results:
        if result.error:
            err_console.print(f"[yellow]skipped probe[/] {result.probe}: {result.error}", highlight=False, soft_wrap=True)
    if save is not None:
        from mclnet_cli.index.picture import MAX_COLUMNS, save_ranked_list

        rows = [(r.probe, r.pid, r.hits, r.cam) for r in report.results if r.error is None]
        if any(len(row[2]) > MAX_COLUMNS for row in rows):
            err_console.print(f"[yellow]note:[/] the picture shows the first {MAX_COLUMNS} results of each probe", highlight=False)
        written = save_ranked_list(
            save, rows, top_k=top_k, probe_modality=report.probe_modality, gallery_modality=report.gallery_modality or None
        )
        err_console.print(f"ranked list saved to {written}", highlight=False)
    if as_json:
        print_json(report.to_json())
    else:
        _render(report)


def _known(value: int | None) -> str:
    return "-" if value is None else str(value)


def _render(report: "SearchReport") -> None:
    from rich.markup import escape
    from rich.table import Table

    console.print(
        f"[dim]{report.probe_modality} probes against the {report.gallery_modality or '?'} gallery of index "
        f"{escape(str(report.index_dir))}, feature '{report.feature}'[/]",
        highlight=False,
    )
    for result in report.results:
        if result.error:
            continue
        table = Table(title=_title(result), title_justify="left", show_edge=False)
        table.add_column("rank", justify="right")
        table.add_column("score", justify="right")
        table.add_column("pid", justify="right")
        table.add_column("cam", justify="right")
        table.add_column("path", overflow="fold")
        for hit in result.hits:
            style = None
            if result.pid is not None and hit.pid is not None:
                style = "green" if hit.pid == result.pid else "red"
            table.add_row(str(hit.rank), f"{hit.score:.4f}", _known(hit.pid), _known(hit.cam), hit.path, style=style)
        console.print(table)
        console.print()


def _title(result: "ProbeResult") -> str:
    known = f" (pid {result.pid}, cam {result.cam})" if result.pid is not None else ""
    return f"probe {result.probe}{known}"
