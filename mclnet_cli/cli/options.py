"""Options shared by every command, defined once.

Each command takes the same ``--quiet``, ``--json``, ``--debug`` (after the
command name; the root forms ``mclnet --quiet CMD`` keep working) and, where it
computes, ``--threads``. Closed choices and preset names complete in the shell
(``mclnet --install-completion``). Nothing here imports torch at module level.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Iterable, Optional

import typer
from typer.core import TyperCommand, TyperGroup

from mclnet_cli.cli.output import env_debug, interrupted, invoked_command, state
from mclnet_cli.config import Device, Direction, Draws, Protocol, SysuMode, names
from mclnet_cli.types import Modality

THREADS_ENV = "MCLNET_THREADS"
MODALITIES = tuple(m.value for m in Modality)
SYSU_MODES = names(SysuMode)
DIRECTIONS = names(Direction)
PROTOCOLS = names(Protocol)
DEVICES = names(Device)
DRAWS = names(Draws)
DRAWS_HELP = "gallery draws: agw (default; every protocol that draws a gallery) or official (SYSU-MM01 only: its exp/rand_perm_cam.mat)."


def _complete(values: Iterable[str]):  # noqa: ANN202 - Typer's autocompletion callable
    choices = tuple(values)

    def complete(incomplete: str) -> list[str]:
        return [value for value in choices if value.startswith(incomplete)]

    return complete


def complete_preset(incomplete: str) -> list[str]:
    """Shipped preset names starting with ``incomplete`` (nothing for a path: the shell completes files)."""
    from mclnet_cli.config import list_presets

    names = list(list_presets())
    if incomplete and ("/" in incomplete or incomplete.endswith((".yaml", ".yml"))):
        return []  # a path: let the shell complete files
    return [name for name in names if name.startswith(incomplete)]


# --- command classes: how every option is shown in --help -----------------------------------------
def _untyped_flags(params: list) -> list:  # noqa: ANN001 - Typer's parameter objects
    """A flag takes no value: its --help row gets an empty metavar, not Typer's ``<bool>`` type."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Command(TyperCommand):
    """The class of every ``mclnet`` command (``app.command(..., cls=Command)``): flags show no ``<bool>``, --help included."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201 - Typer's signature
        return _untyped_flags(super().get_params(ctx))


class Group(TyperGroup):
    """The class of ``mclnet`` and its command groups (``typer.Typer(cls=Group)``), for the same reason."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201 - Typer's signature
        return _untyped_flags(super().get_params(ctx))


# --- options every command accepts ---------------------------------------------------------------
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or progress lines.")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors (also MCLNET_DEBUG=1).")]
# --json is declared by each command with a help line saying what it prints; this is the generic form.
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON document on stdout.")]
ThreadsOpt = Annotated[
    Optional[int],
    typer.Option(
        "--threads",
        min=1,
        envvar=THREADS_ENV,
        show_envvar=True,
        help="CPU threads for torch (default: the cores no other process uses at the start, at least 1; see docs/benchmarks.md).",
        show_default=False,
    ),
]

# --- options several commands share --------------------------------------------------------------
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.", autocompletion=_complete(DEVICES))]
PresetOpt = Annotated[
    Optional[str],
    typer.Option("--preset", "-p", help="Preset name or YAML path.", autocompletion=complete_preset, show_default=False),
]
SetOpt = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a config value, e.g. --set train.epochs=10 (repeatable).")
]
BatchSizeOpt = Annotated[
    Optional[int],
    typer.Option("--batch-size", min=1, help="Images per forward pass (default: from the checkpoint's config).", show_default=False),
]
WorkersOpt = Annotated[
    Optional[int], typer.Option("--workers", min=0, help="Image-decoding worker processes (default: from the config).", show_default=False)
]


def modality_option(help_text: str):  # noqa: ANN201 - an Annotated metadata object
    """``--modality/-m`` with completion of visible/infrared (aliases such as ir or thermal are accepted too)."""
    return typer.Option("--modality", "-m", help=help_text, show_default=False, autocompletion=_complete(MODALITIES))


def choice_option(*names: str, values: Iterable[str], help: str):  # noqa: A002, ANN201
    """An option whose closed set of ``values`` completes in the shell (checked by the core)."""
    return typer.Option(*names, help=help, autocompletion=_complete(values))


# --- applying them -------------------------------------------------------------------------------
def running_processes(stat: Path = Path("/proc/stat"), samples: int = 5, interval_s: float = 0.01) -> int | None:
    """Other processes running or runnable right now (median of a few reads of ``procs_running``, minus this one).

    None where the kernel does not say (not Linux).
    """
    counts = []
    for i in range(samples):
        try:
            line = next((x for x in stat.read_text().splitlines() if x.startswith("procs_running ")), "")
            counts.append(int(line.split()[1]) - 1)
        except (OSError, ValueError, IndexError):
            return None
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0, sorted(counts)[len(counts) // 2])


def usable_cores() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def default_threads() -> int | None:
    """The thread count used without --threads / MCLNET_THREADS (measured in docs/benchmarks.md).

    A torch thread on a core another process also wants stalls every parallel
    region (the threads wait on each other), so the default takes only the cores
    nobody else is using right now: with ``n`` other processes runnable (the
    median of a few reads of ``procs_running``; the 1-minute average would still
    count a command that has just ended), ``cores - n`` threads, at least 1, and
    torch's own default (one per core) when nothing else runs. Where the kernel
    does not say (not Linux), 1 when the load average fills the cores, else torch's.
    ``n`` counts runnable threads, a busy multi-threaded process once per thread.

    None (torch's default stands) where the environment already chose: under
    ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` (torchrun sets the first for every
    rank, whose peers must not count as strangers) or in a multi-process launch.
    """
    if any(os.environ.get(name, "").strip() for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")):
        return None
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return None
    cores = usable_cores()
    others = running_processes()
    if others is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            return None
        return 1 if load >= cores - 0.5 else None
    if others == 0:
        return None
    return max(1, cores - others)


def apply_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (explicit value, else :func:`default_threads`); returns the count in use."""
    import torch

    count = int(threads) if threads is not None else default_threads()
    if threads is None and count is not None:
        count = min(count, torch.get_num_threads())  # never more than torch would use on an idle machine
    if count is not None:
        if count < 1:
            raise typer.BadParameter(f"must be 1 or more, got {count}", param_hint="--threads")
        torch.set_num_threads(count)
    state.threads = torch.get_num_threads()
    return state.threads


def common(*, quiet: bool = False, debug: bool = False, threads: int | None = None, compute: bool = False) -> None:
    """Apply the shared options of one command (root-level ``--quiet``/``--debug`` stay in effect)."""
    state.quiet = state.quiet or quiet
    state.debug = state.debug or debug or env_debug()
    if compute:
        try:
            apply_threads(threads)  # imports torch: seconds, and a Ctrl-C then must still exit 130
        except KeyboardInterrupt:
            if state.debug:
                raise
            again = invoked_command()
            raise interrupted("nothing was started; run the same command again" + (f": {again}" if again else "")) from None


__all__ = [
    "BatchSizeOpt", "Command", "DebugOpt", "DeviceOpt", "Group", "JsonOpt", "PresetOpt", "QuietOpt", "SetOpt", "ThreadsOpt",
    "WorkersOpt",
    "apply_threads", "choice_option", "common", "complete_preset", "default_threads", "modality_option",
]
