"""Rendering helpers shared by every command: consoles, JSON, error guard, progress."""

from __future__ import annotations

import functools
import json
import os
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console

from mclnet_cli.errors import MclnetError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def env_debug() -> bool:
    """``MCLNET_DEBUG`` set to anything but empty, 0, false or no turns tracebacks on."""
    return os.environ.get("MCLNET_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


class _State:
    debug: bool = env_debug()
    quiet: bool = False


state = _State()


def print_json(payload: Any) -> None:
    """One JSON document on stdout, nothing else (safe for scripts)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red error line on stderr and return the Exit to raise."""
    from rich.markup import escape

    # escape: a message quotes paths and values ("[64, 32, 3]") that rich would take for markup
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def guard(func: F) -> F:
    """Turn core errors into one clear line and exit code 1 (traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MclnetError as exc:
            if state.debug:
                raise
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            if state.debug:
                raise
            raise fail("interrupted", code=130) from None
        except OSError as exc:  # disk full, permissions, a folder where a file should be
            if state.debug:
                raise
            where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
            raise fail(f"{exc.strerror or exc}{':' + where if where else ''}") from None

    return wrapper  # type: ignore[return-value]


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``. Silent when disabled or --quiet."""
    if not enabled or state.quiet:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False) as progress:
        task = progress.add_task(description, total=total, rate="")

        def advance(n: int = 1) -> None:
            progress.advance(task, n)
            elapsed = progress.tasks[task].elapsed or 0.0
            done = progress.tasks[task].completed
            if elapsed > 0:
                progress.update(task, rate=f"{done / elapsed:.1f} {unit}/s")

        yield advance
