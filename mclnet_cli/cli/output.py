"""Rendering helpers shared by every command: consoles, JSON, error guard, progress."""

from __future__ import annotations

import functools
import json
import os
import shlex
import signal
import sys
import threading
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Iterator, TypeVar

import typer
from rich.console import Console

from mclnet_cli.errors import Interrupted, MclnetDeprecationWarning, MclnetError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def env_debug() -> bool:
    """``MCLNET_DEBUG`` set to anything but empty, 0, false or no turns tracebacks on."""
    return os.environ.get("MCLNET_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


class _State:
    debug: bool = env_debug()
    quiet: bool = False
    threads: int | None = None  # torch threads set by --threads / MCLNET_THREADS / the default
    stopped_by: str | None = None  # "SIGTERM" once the running command was told to stop by that signal


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


def interrupted(message: str) -> typer.Exit:
    """Print ``interrupted: message`` (yellow, not an error) on stderr and return Exit(130), as a shell does for Ctrl-C.

    Stopped by SIGTERM instead (``kill``, a scheduler, torchrun stopping the other ranks when
    one failed), the line says so and the code is 143 (128 + 15), as a shell reports it.
    """
    from rich.markup import escape

    by, state.stopped_by = state.stopped_by, None  # said once: a later command in this process starts clean
    cause = f"stopped by {by}{' (torchrun stops every rank when one fails)' if by and os.environ.get('WORLD_SIZE') else ''}: "
    err_console.print(f"[yellow]interrupted:[/] {cause if by else ''}{escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(128 + signal.SIGTERM if by == "SIGTERM" else 130)


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: handled like Ctrl-C (every clean-up of an interruption runs: temps removed, state saved)."""


class SigtermGate:
    """Whether a SIGTERM raises :class:`Terminated` now: while a command's body runs, not once it is ending."""

    def __init__(self) -> None:
        self.raising = True

    def body_done(self) -> None:
        """From here on (the command's last line is being printed) a SIGTERM is only noted: the line is not cut."""
        self.raising = False


@contextmanager
def sigterm_as_interrupt() -> Iterator[SigtermGate]:
    """While the block runs, SIGTERM raises :class:`Terminated` (a KeyboardInterrupt) in the main thread.

    Without it SIGTERM ends Python on the spot: no ``finally`` runs, so a file being written
    left its temp behind and the user got no line at all. A second SIGTERM stops at once.
    """
    gate = SigtermGate()
    if threading.current_thread() is not threading.main_thread():
        yield gate
        return
    state.stopped_by = None

    def on_sigterm(number: int, frame: Any) -> None:
        state.stopped_by = "SIGTERM"
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM stops at once, without clean-up
        if gate.raising:
            raise Terminated

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except (ValueError, OSError):  # no signals here (an embedded interpreter)
        yield gate
        return
    try:
        yield gate
    finally:
        signal.signal(signal.SIGTERM, previous)


#: what gloo and NCCL say when another process of a torchrun job died or stopped answering
_PEER_FAILURE_SIGNS = (
    "Connection reset by peer", "Connection closed by peer", "Broken pipe", "gloo/transport", "NCCL communicator",
    "ProcessGroupNCCL", "DistNetworkError", "Socket Timeout",
)


def peer_failure(exc: BaseException) -> str | None:
    """One line for a collective that failed because another rank of a torchrun job is gone, else None."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) < 2:
            return None
    except ValueError:
        return None
    text = str(exc)
    if not isinstance(exc, RuntimeError) or not any(sign in text for sign in _PEER_FAILURE_SIGNS):
        return None
    reason = next((sign for sign in _PEER_FAILURE_SIGNS[:3] if sign in text), "a failed collective")
    return (
        f"another process of this torchrun job stopped ({reason}), so rank {os.environ.get('RANK', '?')} stopped too; "
        "outputs are replaced atomically, nothing half-written is left; see the first failure in torchrun's "
        "summary, then run the job again (train: with --resume)"
    )


def warn(message: str) -> None:
    """Print one yellow ``warning:`` line on stderr."""
    from rich.markup import escape

    err_console.print(f"[yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


_default_showwarning = warnings.showwarning


def _show_warning(message: Any, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """The core's deprecation messages as one ``warning:`` line; any other warning as Python shows it."""
    if issubclass(category, MclnetDeprecationWarning):
        warn(str(message))
    else:
        _default_showwarning(message, category, *args, **kwargs)


def invoked_command() -> str | None:
    """The command line this process runs, as a user would type it again.

    ``mclnet ...`` or ``python -m mclnet_cli ...`` as it was started; None when
    it was not started as either, or under torchrun (the launcher's own command
    line, which this process cannot see, is the one to repeat).
    """
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if len(sys.argv) < 2 or os.environ.get("WORLD_SIZE"):
        return None
    if program == "mclnet":
        return shlex.join(["mclnet", *sys.argv[1:]])
    if program == "__main__.py":
        return shlex.join(["python", "-m", "mclnet_cli", *sys.argv[1:]])
    return None


def guard(func: F) -> F:
    """Turn core errors into one clear line and exit code 1 (traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # The SIGTERM handler spans the error handling too: a SIGTERM while the last line is printed is only noted.
        with sigterm_as_interrupt() as gate:
            try:
                try:
                    with warnings.catch_warnings():  # restores the default display when the command ends
                        warnings.showwarning = _show_warning
                        warnings.simplefilter("always", MclnetDeprecationWarning)
                        return func(*args, **kwargs)
                finally:
                    gate.body_done()
            except Interrupted as exc:
                if state.debug:
                    raise
                raise interrupted(str(exc)) from None
            except MclnetError as exc:
                if state.debug:
                    raise
                raise fail(str(exc)) from None
            except KeyboardInterrupt:
                if state.debug:
                    raise
                again = invoked_command()
                raise interrupted(
                    "nothing half-written is left (outputs are replaced atomically); run the same command again to redo it"
                    + (f": {again}" if again else "")
                ) from None
            except OSError as exc:  # disk full, permissions, a folder where a file should be
                if state.debug:
                    raise
                where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
                raise fail(f"{exc.strerror or exc}{':' + where if where else ''}") from None
            except RuntimeError as exc:  # under torchrun: a collective whose peer process died
                line = peer_failure(exc)
                if line is None or state.debug:
                    raise
                raise fail(line) from None

    return wrapper  # type: ignore[return-value]


PROGRESS_EVERY_ENV = "MCLNET_PROGRESS_EVERY"
DEFAULT_PROGRESS_EVERY = 30.0


def progress_every() -> float:
    """Seconds between plain progress lines when stderr is not a terminal (``MCLNET_PROGRESS_EVERY``, default 30)."""
    text = os.environ.get(PROGRESS_EVERY_ENV, "").strip()
    try:
        return max(0.0, float(text)) if text else DEFAULT_PROGRESS_EVERY
    except ValueError:
        return DEFAULT_PROGRESS_EVERY


def format_duration(seconds: float) -> str:
    """``1:02:03`` / ``2:03`` for a number of seconds (``-:--`` when unknown)."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "-:--"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class PlainTicker:
    """One plain progress line every ``every`` seconds (for logs: stderr is not a terminal).

    ``every`` 0 prints at every update. Nothing is printed for work that ends
    before the first interval, so short commands stay quiet in logs.
    """

    def __init__(self, every: float | None = None, console: Console | None = None, clock: Callable[[], float] | None = None) -> None:
        import time

        self.every = progress_every() if every is None else every
        self.console = console or err_console
        self.clock = clock or time.monotonic
        self.started = self.clock()
        self.last = self.started
        self.printed = 0

    def due(self) -> bool:
        return self.clock() - self.last >= self.every

    def emit(self, text: str) -> None:
        self.last = self.clock()
        self.printed += 1
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def elapsed(self) -> float:
        return self.clock() - self.started


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True, unit: str = "img") -> Iterator[Callable[[int], None]]:
    """Progress on stderr; yields ``advance(n)``. Silent when disabled or --quiet.

    A terminal gets a rich bar; anything else (a log file, a pipe) gets a plain
    line every ``MCLNET_PROGRESS_EVERY`` seconds (default 30) and a last line
    when at least one was printed.
    """
    if not enabled or state.quiet:
        yield lambda n=1: None
        return
    if not err_console.is_terminal:
        ticker = PlainTicker()
        done = 0

        def line() -> str:
            elapsed = ticker.elapsed()
            rate = done / elapsed if elapsed > 0 else 0.0
            count = f"{done}/{total}" if total else str(done)
            eta = f", ETA {format_duration((total - done) / rate)}" if total and rate > 0 and done < total else ""
            return f"{description}: {count} {unit} ({rate:.1f} {unit}/s, {format_duration(elapsed)} elapsed{eta})"

        def plain_advance(n: int = 1) -> None:
            nonlocal done
            done += n
            if ticker.due():
                ticker.emit(line())

        yield plain_advance
        if ticker.printed:
            ticker.emit(line())
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = [
        TextColumn("[progress.description]{task.description}"),
        BarColumn(bar_width=None if err_console.width >= 100 else 12),
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
