"""One writer per index folder and per run directory: an OS file lock (``flock``).

The lock file (``.mclnet-lock``) lives inside the folder it guards. The kernel
drops the lock when the holding process exits or is killed, so a crash never
leaves a stale lock behind; the pid written into the file is only for messages.

Policies (see docs/troubleshooting.md):

- ``mclnet index`` (with or without ``--add``) **waits** for the other writer and
  says so on stderr, then reads the index as that writer left it: two ``--add``
  runs in parallel both land.
- ``mclnet train`` (with or without ``--resume``) **refuses** with one line: two
  trainings in one run directory are always a mistake.

Readers (``query``, ``evaluate``) never take the lock.
"""

from __future__ import annotations

import errno
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from mclnet_cli.errors import LockedError

LOCK_FILE = ".mclnet-lock"

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, single-writer by convention
    fcntl = None  # type: ignore[assignment]


def _holder(fd: int) -> str:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 64).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


@contextmanager
def folder_lock(
    folder: Path | str,
    *,
    what: str,
    wait: bool,
    on_wait: Callable[[str], None] | None = None,
    create: bool = True,
) -> Iterator[Path]:
    """Hold the writer lock of ``folder`` (created if needed) for the ``with`` block.

    ``wait=False`` raises :class:`LockedError` at once when another process holds
    it; ``wait=True`` calls ``on_wait(message)`` once, then blocks until it is free.
    ``create=False``: a missing ``folder`` raises :class:`FileNotFoundError` instead
    of being made (a writer that only changes an existing folder leaves nothing behind).
    """
    folder = Path(folder)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    fd = os.open(str(path), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                holder = _holder(fd)
                if not wait:
                    raise LockedError(
                        f"{folder} is in use by another mclnet {what}{holder}; wait for it to finish "
                        "(or stop it) and run again"
                    ) from None
                if on_wait is not None:
                    on_wait(f"waiting for another mclnet {what}{holder} writing {folder} to finish")
                fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock
