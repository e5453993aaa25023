"""``mclnet demo``: the whole journey on synthetic data, in one command.

Thin layer: parse options, call :func:`mclnet_cli.engine.demo.run_demo` lazily
(no torch or FAISS import at module level), render the summary. Training
progress reuses the train command's :class:`~mclnet_cli.cli.train.RichReporter`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Mapping

import typer

from mclnet_cli.cli.options import DebugOpt, DeviceOpt, JsonOpt, QuietOpt, ThreadsOpt, apply_threads, common
from mclnet_cli.cli.output import console, err_console, guard, print_json, progress_bar, state, warn
from mclnet_cli.cli.train import RichReporter


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for everything the demo writes.")] = Path("mclnet-demo"),
    quick: Annotated[bool, typer.Option("--quick", help="A smaller, faster version (about 40 s on 2 idle CPU cores; the full one about 4 minutes).")] = False,
    force: Annotated[bool, typer.Option("--force", help="Overwrite a previous demo output in --out.")] = False,
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option("--seed", min=0, help="Seed of the synthetic dataset and of training.")] = 0,
    as_json: JsonOpt = False,
    threads: ThreadsOpt = None,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Draw a synthetic dataset, train the tiny preset, evaluate it against the untrained network,
    index the visible test images, query with every infrared test image and draw the ranked lists
    of the first four.
    """
    common(quiet=quiet, debug=debug)  # threads after the --out check: a refusal needs no torch
    _run(out, quick, force, device, as_json, threads, seed)


@guard
def _run(out: Path, quick: bool, force: bool, device: str, as_json: bool, threads: int | None = None, seed: int = 0) -> None:
    from mclnet_cli.engine.demo import check_out_dir, restart_command, run_demo
    from mclnet_cli.errors import Interrupted

    check_out_dir(out, force)  # refuse before anything heavy is imported or drawn
    apply_threads(threads)

    def stage(message: str) -> None:
        if not state.quiet:
            err_console.print(f"[bold cyan]{message}[/]", highlight=False)

    reporter = RichReporter(show_progress=not state.quiet)
    try:
        result = run_demo(
            out, quick=quick, force=force, device=device, on_stage=stage, reporter=reporter, progress=progress_bar,
            seed=seed,
        )
    except KeyboardInterrupt:
        raise Interrupted(
            "the demo cannot resume: it runs its stages in one go and records none as finished; start it over with: "
            + restart_command(out, quick, seed)
        ) from None
    finally:
        reporter.close()
    if as_json:
        print_json(result.to_json())
    else:
        _render(result.to_json())


def _render(summary: Mapping[str, Any]) -> None:
    from rich.table import Table

    metrics = summary["metrics"]
    protocol = metrics["protocol"]
    table = Table(
        title=f"synthetic test split, SYSU protocol ({protocol.get('mode')}-search, {len(protocol.get('trials', []))} trials, "
        f"feature {metrics.get('feature', 'bn')}, percent)",
        title_justify="left",
    )
    for column in ("model", "Rank-1", "Rank-5", "mAP", "mINP"):
        table.add_column(column, justify="left" if column == "model" else "right")
    labels = {"trained": "trained", "untrained": "untrained", "start": "start (shipped, before training)"}
    for name in [n for n in ("trained", "untrained", "start") if n in metrics]:
        row = metrics[name]
        table.add_row(labels[name], *(f"{row[k]:.2f}" for k in ("rank1", "rank5", "mAP", "mINP")))
    console.print(table)
    gain = metrics["trained"]["mAP"] - metrics["untrained"]["mAP"]
    line = f"training gained {gain:+.2f} mAP points"
    if "start" in metrics:
        line += f" over a random network, {metrics['trained']['mAP'] - metrics['start']['mAP']:+.2f} over the shipped start"
    console.print(line, highlight=False)
    health = summary["training"].get("health") or {}
    if health.get("status") == "collapsed":
        warn(f"the training run was unhealthy: collapsed at epoch {int(health['epoch']) + 1} ({'; '.join(health.get('reasons', []))})")

    query = summary["query"]
    first = query["first_match_rank"]
    found = f"first match at rank {first}" if first else f"no match in the top {query['top_k']}"
    console.print(f"query: infrared probe of pid {query['pid']} (cam {query['cam']}): {found}", highlight=False)
    probes = summary.get("probes")
    if probes and probes.get("count"):
        console.print(
            f"all {probes['count']} infrared test probes: the right person is in the top {probes['top_k']} "
            f"for {probes['found_in_top_k']} ({probes['hit_rate']:.1f}%)",
            highlight=False,
        )

    training = summary["training"]
    dataset = summary["dataset"]
    paths = Table(show_header=False, box=None, pad_edge=False)
    paths.add_column(style="bold")
    paths.add_column(overflow="fold")
    paths.add_row("dataset", f"{dataset['prepared']} ({dataset['ids']} ids, raw tree in {dataset['raw']})")
    paths.add_row("run", f"{summary['run_dir']} ({training['epochs']} epochs x {training['steps_per_epoch']} steps, {training['time_s']:.0f}s)")
    paths.add_row("checkpoint", summary["checkpoint"])
    paths.add_row("untrained", summary["untrained_checkpoint"])
    if summary.get("start_checkpoint"):
        paths.add_row("start", summary["start_checkpoint"])
    paths.add_row("index", f"{summary['index']['dir']} ({summary['index']['count']} visible images)")
    paths.add_row("picture", summary["picture"])
    paths.add_row("summary", str(Path(summary["out"]) / "demo.json"))
    console.print(paths)
    console.print(f"done in {summary['time_s']:.0f}s", highlight=False)
