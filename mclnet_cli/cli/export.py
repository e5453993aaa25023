"""``mclnet export``: one spectrum's retrieval path as an ONNX or TorchScript file, checked against PyTorch.

Thin layer over :func:`mclnet_cli.engine.export.export_model`.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from mclnet_cli.cli.options import DebugOpt, JsonOpt, QuietOpt, ThreadsOpt, common, modality_option
from mclnet_cli.cli.output import console, guard, print_json


class ExportFormat(str, enum.Enum):
    """File formats ``mclnet export`` writes."""

    onnx = "onnx"
    torchscript = "torchscript"


def export(
    checkpoint: Annotated[Path, typer.Argument(help="Trained mclnet checkpoint (.pt).", show_default=False)],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="onnx (needs the 'export' extra) or torchscript.", show_default=False)],
    modality: Annotated[
        str, modality_option("Which stream to export: visible or infrared.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="File to write; its description goes to OUT.json.", show_default=False)],
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing OUT and OUT.json (never the checkpoint itself).")
    ] = False,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Export one spectrum's retrieval path (stream, shared stages, pooling, BNNeck, L2 norm) with a dynamic batch.

    The export is run on random images and compared with PyTorch on what retrieval uses: a
    cosine below 0.9999 between the two L2-normalised features, or a probe whose top-5
    neighbours in a random gallery change, is an error and nothing is written (the max
    |difference| is shown as information). OUT.json holds the input size, mean/std, feature
    name and checkpoint fingerprint; OUT and OUT.json are written together or not at all.
    An existing OUT is refused unless --force; the checkpoint itself is never overwritten.
    """
    common(quiet=quiet, debug=debug, threads=threads, compute=True)
    _run(checkpoint, fmt.value, modality, out, as_json, force)


@guard
def _run(checkpoint: Path, fmt: str, modality: str, out: Path, as_json: bool, force: bool) -> None:
    from mclnet_cli.engine.export import export_model

    report = export_model(checkpoint, out, fmt=fmt, modality=modality, force=force)
    if as_json:
        print_json(report.to_json())
        return
    height, width = report.input_size
    console.print(
        f"exported the {report.modality} stream to {report.path} ({report.format}, input [batch, 3, {height}, {width}], "
        f"{report.dimension}-d '{report.feature}' output)",
        highlight=False,
        markup=False,
    )
    parity = report.parity
    console.print(
        f"parity with PyTorch: min cosine {parity.min_cosine:.6f} (needs >= {parity.min_cosine_required:g}), "
        f"same top-{parity.top_k} neighbours for {parity.probes} random probes among {parity.gallery} random "
        f"gallery images; max |diff| {parity.max_abs_diff:.2e} (information)",
        highlight=False,
    )
    console.print(f"description: {report.sidecar}", highlight=False)
