"""``mclnet index``: embed a folder of gallery images into a FAISS index.

Thin layer: parse options, call :func:`mclnet_cli.engine.indexing.build_gallery_index`
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
    from mclnet_cli.engine.indexing import BuildReport


IndexKind = enum.Enum("IndexKind", {k: k for k in names(IndexKindName)}, type=str)  # the config's list of kinds


def index(
    gallery_dir: Annotated[
        list[Path],
        typer.Argument(
            help="Folder of gallery images (searched recursively); with --remove, the indexed images or folders to take out.",
            show_default=False, metavar="GALLERY_DIR",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="Index folder to write; one that holds an index needs --add or --force.", show_default=False
        ),
    ],
    checkpoint: Annotated[
        Optional[Path],
        typer.Option("--checkpoint", "-c", help="Trained mclnet checkpoint (.pt); required, but for --remove.", show_default=False),
    ] = None,
    modality: Annotated[
        Optional[str], modality_option("Spectrum of the gallery images: visible or infrared; required, but for --remove.")
    ] = None,
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
    dim: Annotated[
        Optional[int],
        typer.Option(
            "--dim", min=1,
            help="Reduce features to this many dimensions with a PCA trained on a sample of the gallery (at most 100k "
            "images), stored with the index (reduction.npy) and applied to every probe and addition.",
            show_default=False,
        ),
    ] = None,
    whiten: Annotated[bool, typer.Option("--whiten", help="--dim: whiten the reduction (unit variance per direction).")] = False,
    chunk: Annotated[
        Optional[int],
        typer.Option(
            "--chunk", min=1,
            help="Embed and add this many images at a time into an ivf/ivfpq index whose lists stay on disk "
            "(lists-*.ivfdata, memory-mapped): memory is bounded by the chunk; a killed run continues when run again.",
            show_default=False,
        ),
    ] = None,
    workers: Annotated[int, typer.Option("--workers", min=0, help="Image-decoding worker processes.")] = 0,
    add: Annotated[
        bool, typer.Option("--add", help="Append images not yet in the index at --out (by path); IVF cells are not retrained.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Replace the index at --out (without it, an existing index is refused).")
    ] = False,
    remove: Annotated[
        bool,
        typer.Option(
            "--remove",
            help="Take the images named (paths as recorded in the index, or folders: every record under them) out of "
            "the index at --out; needs no checkpoint. A name that is in no record is an error and nothing changes.",
        ),
    ] = False,
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="Print the report as one JSON document on stdout (with --remove: removed, count left)."),
    ] = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Embed a folder of gallery images with one spectrum's stream into a FAISS index.

    Unreadable and non-image files are skipped and listed, never fatal. The folder
    --out holds index.faiss (plain FAISS), records.jsonl and meta.json. An --out that
    already holds an index is refused unless --add (append) or --force (replace,
    atomically); --remove takes images out of it. One writer at a time: a second
    'mclnet index' on the same --out waits for the first.
    """
    if remove:
        if add or force:
            raise typer.BadParameter("takes no --add or --force", param_hint="'--remove'")
        common(quiet=quiet, debug=debug)
        _remove(gallery_dir, out, as_json)
        return
    if len(gallery_dir) != 1:
        given = len(gallery_dir)
        raise typer.BadParameter(f"give one folder to index, not {given} (several go with --remove)", param_hint="GALLERY_DIR")
    for value, hint in ((checkpoint, "'--checkpoint' / '-c'"), (modality, "'--modality' / '-m'")):
        if value is None:
            raise typer.BadParameter("required to build or add to an index (only --remove goes without it)", param_hint=hint)
    common(quiet=quiet, debug=debug, threads=threads, compute=True)
    _run(
        gallery_dir[0], checkpoint, modality, out, kind.value if kind else None, batch_size, nlist, nprobe, workers, add,
        device, as_json, force, recall, memory, dim, whiten, chunk,
    )  # fmt: skip


def _note_wait(message: str) -> None:
    err_console.print(f"[yellow]note:[/] {message}", highlight=False, soft_wrap=True)


@guard
def _remove(paths: list[Path], out: Path, as_json: bool) -> None:
    from mclnet_cli.engine.updates import remove_from_index

    report = remove_from_index(out, [str(p) for p in paths], on_wait=_note_wait)
    if as_json:
        print_json(report.to_json())
    else:
        console.print(
            f"removed {report.removed} image(s) from {report.index_dir} ({report.count} left, {report.kind})",
            highlight=False, soft_wrap=True,
        )


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
    dim: int | None = None,
    whiten: bool = False,
    chunk: int | None = None,
) -> None:
    from mclnet_cli.engine.indexing import build_gallery_index

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
        on_wait=_note_wait,
        dim=dim,
        whiten=whiten,
        chunk=chunk,
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
