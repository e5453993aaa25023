"""``mclnet prepare``: not implemented yet (issue #3)."""

from __future__ import annotations

import typer

from mclnet_cli.cli.output import fail

app = typer.Typer(help="Read a dataset in its published layout, validate it, write a prepared dataset.", no_args_is_help=True)


@app.command("synthetic")
def synthetic() -> None:
    """Draw a small synthetic cross-spectrum dataset (not implemented yet)."""
    raise fail("'mclnet prepare' is not implemented yet (issue #3)")
