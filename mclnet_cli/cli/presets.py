"""``mclnet presets list|show``."""

from __future__ import annotations

from typing import Annotated, List, Optional

import typer

from mclnet_cli.cli.options import Command, DebugOpt, Group, JsonOpt, QuietOpt, common, complete_preset
from mclnet_cli.cli.output import console, guard, print_json

app = typer.Typer(cls=Group, help="List and show the shipped configuration presets.", no_args_is_help=True)


@app.command("list", cls=Command)
@guard
def list_(
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """List the presets shipped with mclnet."""
    common(quiet=quiet, debug=debug)
    from mclnet_cli.config import list_presets, load_preset_dict, presets_dir

    names = list_presets()
    if json_out:
        print_json({"presets_dir": str(presets_dir()), "presets": names})
        return
    from rich.table import Table

    table = Table(title=f"presets in {presets_dir()}")
    for col in ("name", "arch", "size", "dataset", "protocol"):
        table.add_column(col)
    for name in names:
        raw = load_preset_dict(name)
        data, model, ev = raw.get("data", {}), raw.get("model", {}), raw.get("eval", {})
        table.add_row(
            name,
            str(model.get("arch", "")),
            f"{data.get('height', '')}x{data.get('width', '')}",
            str(data.get("dataset", "")),
            str(ev.get("protocol", "")),
        )
    console.print(table)


@app.command("show", cls=Command)
@guard
def show(
    name: Annotated[str, typer.Argument(help="Preset name or path to a YAML file.", autocompletion=complete_preset)],
    set_: Annotated[Optional[List[str]], typer.Option("--set", help="Override a.b=value (repeatable).")] = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
    debug: DebugOpt = False,
) -> None:
    """Show a preset fully resolved (base merged, overrides applied, defaults filled)."""
    common(quiet=quiet, debug=debug)
    from mclnet_cli.config import load_config

    cfg = load_config(name, set_ or ())
    if json_out:
        print_json(cfg.to_dict())
    else:
        typer.echo(cfg.to_yaml(), nl=False)
