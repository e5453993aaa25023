"""The root ``mclnet`` Typer app. Command modules import the core lazily."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from mclnet_cli import __version__
from mclnet_cli.cli import convert, demo, evaluate, export, index, info, prepare, presets, query, serve, split, train
from mclnet_cli.cli.options import Command, Group
from mclnet_cli.cli.output import env_debug, state

app = typer.Typer(
    name="mclnet",
    cls=Group,
    help="MCLNet for visible-infrared person re-identification: prepare, train, evaluate, index, query.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mclnet {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool], typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")] = False,
) -> None:
    """MCLNet for visible-infrared person re-identification."""
    state.debug = debug or env_debug()  # per invocation: never sticky across calls
    state.quiet = quiet


app.add_typer(prepare.app, name="prepare")
app.command("train", cls=Command)(train.train)
app.command("evaluate", cls=Command)(evaluate.evaluate)
app.command("split", cls=Command)(split.split)
app.command("index", cls=Command)(index.index)
app.command("query", cls=Command)(query.query)
app.command("demo", cls=Command)(demo.demo)
app.command("convert", cls=Command)(convert.convert)
app.command("serve", cls=Command)(serve.serve)
app.command("export", cls=Command)(export.export)
app.add_typer(presets.app, name="presets")
app.command("info", cls=Command)(info.info)


def main() -> None:
    """Console-script entry point."""
    app()
