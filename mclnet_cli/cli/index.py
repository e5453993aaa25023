"""``mclnet index``: embed a folder of gallery images into a FAISS index.

Thin layer: parse options, call :func:`mclnet_cli.engine.gallery.build_gallery_index`
lazily (no torch or FAISS import at module level), render the report.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from mclnet_cli.cli.options import DebugOpt, DeviceOpt, JsonOpt, QuietOpt, ThreadsOpt, common, modality_option
from mclnet_cli.cli.output import console, err_console, guard, print_json, progress_bar, warn
from mclnet_cli.config import IndexKind as IndexKindName
from mclnet_cli.config import names

if TYPE_CHECKING:
    from mclnet_cli.engine.gallery import BuildReport


IndexKind = enum.Enum("IndexKind", {k: k for k in names(IndexKindName)}, type=str)  # the config's list of kinds


def index(
    gallery_dir: Annotated[Path, typer.Argument(help="Folder of gallery images (searched recursively).", show_default=False)],
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Trained mclnet checkpoint (.pt).", show_default=False)],
    modality: Annotated[
        str, modality_option("Spectrum of the gallery images: visible or infrared.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Index folder to write; one that holds an index needs --add or --force.", show_default=False
        ),
    ],
    kind: Annotated[
        Optional[IndexKind],
        typer.Option(
            "--kind",
            help="flat: exact; hnsw, ivf, ivfpq: approximate, for large galleries; auto: the structure and "
            "search settings that reach --recall within --memory (default: from the checkpoint's config, flat).",
            show_default=False,
        ),
    ] = None,
    batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--batch-size", min=1, help="Images per forward pass (default: from the checkpoint's config, 64).", show_default=False
        ),
    ] = None,
    nlist: Annotated[
        Optional[int],
        typer.Option(
            "--nlist", min=1, help="ivf/ivfpq cells (default: from the checkpoint's config, about 4 sqrt(N)).", show_default=False
        ),
    ] = None,
    nprobe: Annotated[
        Optional[int],
        typer.Option(
            "--nprobe",
            min=1,
            help="ivf/ivfpq cells searched per query (default: from the checkpoint's config, nlist/8, at least 16).",
            show_default=False,
        ),
    ] = None,
    recall: Annotated[
        Optional[float],
        typer.Option(
            "--recall", min=0.01, max=1.0,
            help="--kind auto: recall@10 target against exact search (default: from the checkpoint's config, 0.95).",
            show_default=False,
        ),
    ] = None,
    memory: Annotated[
        Optional[float],
        typer.Option("--memory", min=0.001, help="--kind auto: memory budget of the index in GB (default: none).", show_default=False),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Image-decoding worker processes.")] = 0,
    add: Annotated[
        bool, typer.Option("--add", help="Append images not yet in the index at --out (by path); IVF cells are not retrained.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the index at --out (without it, an existing index is refused).")
    ] = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Embed a folder of gallery images with one spectrum's stream into a FAISS index.

    Unreadable and non-image files are skipped and listed, never fatal. The folder
    --out holds index.faiss (plain FAISS), records.jsonl and meta.json. An --out that
    already holds an index is refused unless --add (append) or --force (replace,
    atomically). One writer at a time: a second 'mclnet index' on the same --out waits
    for the first.
    """
    common(quiet=quiet, debug=debug, threads=threads, compute=True)
    _run(
        gallery_dir, checkpoint, modality, out, kind.value if kind else None, batch_size, nlist, nprobe, workers, add, device,
        as_json, force, recall, memory,
    )  # fmt: skip


@guard
def _run(
    gallery_dir: Path,
    checkpoint: Path,
    modality: str,
    out: Path,
    kind: str | None,
    batch_size: int | None,
    nlist: int | None,
    nprobe: int | None,
    workers: int,
    add: bool,
    device: str,
    as_json: bool,
    force: bool = False,
    recall: float | None = None,
    memory: float | None = None,
) -> None:
    from mclnet_cli.engine.gallery import build_gallery_index

    report = build_gallery_index(
        checkpoint,
        gallery_dir,
        modality,
        out,
        kind=kind,
        add=add,
        force=force,
        batch_size=batch_size,
        nlist=nlist,
        nprobe=nprobe,
        recall=recall,
        memory_gb=memory,
        workers=workers,
        device=device,
        progress=progress_bar,
        on_wait=lambda message: err_console.print(f"[yellow]note:[/] {message}", highlight=False, soft_wrap=True),
    )
    from mclnet_cli.engine.distributed import env_dist_info

    if not env_dist_info().is_main:  # torchrun: rank 0 speaks for the job
        return
    for message in report.warnings:
        warn(message)
    if as_json:
        print_json(report.to_json())
    else:
        _render(report)


def _render(report: "BuildReport") -> None:
    for note in report.notices:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    for path, reason in report.skipped:
        err_console.print(f"[yellow]skipped[/] {path}: {reason}", highlight=False, soft_wrap=True)
    verb = "added" if report.appended else "indexed"
    console.print(
        f"{verb} {report.added} {report.modality} image(s) -> {report.index_dir} "
        f"({report.count} in total, {report.kind} [{report.factory}], {report.dimension}-d)",
        highlight=False,
    )
    if report.auto:
        met = "met" if report.auto.get("met") else "NOT met"
        console.print(
            f"auto: recall@10 {report.auto['recall_at_10']} against exact search, target {report.auto['target_recall']} "
            f"({met}); about {report.auto['memory_bytes'] / 2**20:.1f} MiB",
            highlight=False,
        )
    if report.added:
        console.print(f"{report.images_per_s:.1f} img/s over {report.seconds:.1f}s", highlight=False)
    if report.skipped:
        console.print(f"skipped {len(report.skipped)} file(s) (listed above)", highlight=False)
