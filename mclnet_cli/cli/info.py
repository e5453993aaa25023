"""``mclnet info``: the first thing to paste into a bug report."""

from __future__ import annotations

from mclnet_cli.cli.options import DebugOpt, JsonOpt, QuietOpt, common
from mclnet_cli.cli.output import console, guard, print_json


@guard
def info(
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Versions of mclnet, torch, torchvision and faiss; device and threads; where presets live."""
    common(quiet=quiet, debug=debug)
    from mclnet_cli.info import environment_info

    facts = environment_info()
    if json_out:
        print_json(facts)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in facts.items():
        table.add_row(key, "-" if value is None else str(value))
    console.print(table)
