"""Atomic file writes: a temp file in the target's folder, fsync, then one rename.

An interrupted write never leaves a half-written checkpoint, manifest or picture:
readers see the old file or the new one. Besides:

- **Full disk / I/O errors** (``ENOSPC``, ``EDQUOT``, ``EIO``, ``EROFS``...) become
  one :class:`~mclnet_cli.errors.StorageError` naming the user's path, never the
  hidden temp name -- also when a library (``torch.save``, FAISS) wraps the
  ``OSError`` of a failed ``write`` into its own ``RuntimeError``.
- **Sharing**: ``mkstemp`` creates 0600 files; the result is chmod-ed to
  ``0666 & ~umask``, as ``open()`` would have made it.
- **Orphans**: temps of this module's own pattern (``.NAME.<random>.tmp``) beside
  the target and older than this process -- left by a killed writer -- are
  removed at the start of the next write to the same path.

A writer that needs a file name rather than a handle (numpy memmap, ONNX export,
``torch.jit.save``) writes inside :func:`replacing`. Outside this module the package renames
only in its two folder swaps, which move a staged folder's contents into place: the index
staging folder of :mod:`mclnet_cli.index.store` and the staged draw of :mod:`mclnet_cli.data.synthetic`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Sequence

from mclnet_cli.errors import MclnetError, StorageError

# errno values that mean "the storage failed", not "the caller passed something wrong".
STORAGE_ERRNOS = frozenset(
    e for e in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EIO, errno.EROFS, errno.EFBIG) if e is not None
)


def _process_start() -> float:
    """Wall-clock start of this process (from /proc when available, else now)."""
    try:
        with open("/proc/self/stat", "rb") as handle:
            fields = handle.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[19])  # field 22 (starttime), counted after "pid (comm)"
        with open("/proc/uptime", "rb") as handle:
            uptime = float(handle.read().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.time()


PROCESS_START = _process_start()


def current_umask() -> int:
    """The process umask: from /proc (thread-safe), else by setting and restoring it."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file/folder under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def storage_error(exc: BaseException, path: Path | str) -> StorageError | None:
    """A :class:`StorageError` naming ``path`` if ``exc`` is (or wraps) a storage failure, else None."""
    seen: BaseException | None = exc
    for _ in range(8):  # follow __cause__/__context__ a little way
        if seen is None:
            break
        if isinstance(seen, OSError) and seen.errno in STORAGE_ERRNOS:
            return StorageError.for_path(path, seen)
        wrapped = _wrapped_errno(seen)  # torch / FAISS / ONNX wrap the OS error in a RuntimeError's text
        if wrapped is not None:
            return StorageError.for_path(path, OSError(wrapped, os.strerror(wrapped)))
        seen = seen.__cause__ or seen.__context__
    return None


def _wrapped_errno(exc: BaseException) -> int | None:
    """The storage errno a library error's message names (e.g. torch's "No space left on device"), if any."""
    if isinstance(exc, OSError) or not isinstance(exc, (RuntimeError, ValueError)):
        return None
    text = str(exc)
    return next((code for code in STORAGE_ERRNOS if os.strerror(code) in text), None)


def temp_pattern(name: str) -> str:
    """Glob of this module's temp files for a target called ``name``."""
    return f".{name}.*.tmp"


def remove_orphan_temps(path: Path | str, *, any_age: bool = False) -> list[Path]:
    """Remove temps of ``path`` (this module's pattern) that predate this process; returns them.

    A temp newer than this process may belong to a live concurrent writer and is kept,
    unless ``any_age`` (the caller holds the folder's writer lock: no other writer exists).
    """
    path = Path(path)
    removed: list[Path] = []
    if not path.parent.is_dir():
        return removed
    for candidate in path.parent.glob(temp_pattern(path.name)):
        try:
            if candidate.is_file() and (any_age or candidate.stat().st_mtime < PROCESS_START):
                candidate.unlink()
                removed.append(candidate)
        except OSError:
            continue  # gone already, or not ours to remove
    return removed


class _Recorder:
    """Wraps the temp file so the first ``OSError`` of a ``write`` -- or a Ctrl-C / SIGTERM in it -- is remembered.

    Libraries that write through a Python callback (torch.save, FAISS) turn that
    error into their own RuntimeError; the record lets us report the real cause,
    and re-raise an interruption as the interruption it was (not as torch's
    "enforce fail ... unexpected pos" traceback).
    """

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.error: OSError | None = None
        self.interrupt: KeyboardInterrupt | None = None

    def write(self, data: Any) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            if self.error is None:
                self.error = exc
            raise
        except KeyboardInterrupt as exc:
            if self.interrupt is None:
                self.interrupt = exc
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


def write_temp(path: Path | str, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a new temp file beside ``path`` and fsync it; returns the temp, not yet renamed.

    The caller renames it into place (:func:`commit_together`) or removes it. Raises
    :class:`StorageError` (naming ``path``) when the disk is full or fails; the temp is
    gone then.
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    recorder: _Recorder | None = None
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "wb") as handle:
            recorder = _Recorder(handle)
            write(recorder)  # type: ignore[arg-type]
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        interrupt = recorder.interrupt if recorder is not None else None
        if interrupt is not None and not isinstance(exc, KeyboardInterrupt):
            raise interrupt from None  # a library wrapped the Ctrl-C / SIGTERM of its write callback in its own error
        recorded = recorder.error if recorder is not None else None
        if recorded is not None and not isinstance(exc, OSError):
            exc.__cause__ = exc.__cause__ or recorded
        translated = readdress(exc, tmp, path)
        if translated is not exc:
            raise translated from exc
        raise
    return Path(tmp)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new temp file of this module's pattern beside ``path`` (folder made, orphans removed): (fd, name).

    Errors name ``path``, never the temp: a full disk is a :class:`StorageError`.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise (storage_error(exc, path) or exc) from exc
    remove_orphan_temps(path)
    try:
        return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:  # e.g. a read-only folder: the kernel names the temp, the user needs the target
        translated = readdress(exc, None, path)
        if translated is not exc:
            raise translated from exc
        raise


def named_temp(path: Path | str) -> Path:
    """An empty temp file beside ``path`` for a writer that writes by file name; errors name ``path``.

    The caller writes it, calls :func:`settle_temp`, then renames it into place
    (:func:`commit_together`) or removes it; :func:`replacing` does all of that.
    """
    path = Path(path)
    fd, tmp = _create_temp(path)
    try:
        os.fchmod(fd, default_mode())
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    os.close(fd)
    return Path(tmp)


def settle_temp(temp: Path | str) -> None:
    """Ready a temp that a library wrote by name for its rename: the mode ``open()`` gives, contents fsync-ed."""
    os.chmod(temp, default_mode())
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())


@contextlib.contextmanager
def replacing(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on a clean exit fsync it and rename it over ``path``.

    For writers that need a file name rather than a handle (numpy memmap, ONNX export,
    ``torch.jit.save``). On any exception the temp is removed and the error re-raised
    about ``path``, never the temp (a full disk as :class:`StorageError`), as
    :func:`atomic_write` does; ``path`` keeps its previous content then.
    """
    path = Path(path)
    tmp = named_temp(path)
    with _discarded_on_error(tmp, path):
        yield tmp
        settle_temp(tmp)
        os.replace(tmp, path)


@contextlib.contextmanager
def _discarded_on_error(tmp: Path, path: Path) -> Iterator[None]:
    """On any exception inside: remove ``tmp`` and re-raise the error about ``path`` (:func:`readdress`)."""
    try:
        yield
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        translated = readdress(exc, tmp, path)
        if translated is not exc:
            raise translated from exc
        raise


def atomic_write(path: Path | str, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temp file beside ``path``, then rename it over ``path``.

    Raises :class:`StorageError` (naming ``path``) when the disk is full or fails.
    """
    path = Path(path)
    tmp = write_temp(path, write)
    with _discarded_on_error(tmp, path):
        os.replace(tmp, path)
    return path


def readdress(exc: BaseException, temp: Path | str | None, target: Path | str) -> BaseException:
    """``exc`` as the user should see it: about ``target``, never the temp ``temp`` written for it.

    A storage failure becomes a :class:`StorageError` naming ``target``; another ``OSError``
    (``Permission denied``, ...) that names the temp (or no file, or a file inside the temp folder
    ``temp``) is re-raised with ``target`` as its file name. Anything else is returned unchanged.
    """
    translated = storage_error(exc, target)
    if translated is not None:
        return translated
    if not isinstance(exc, OSError) or exc.errno is None:
        return exc
    name = exc.filename
    if name is not None and temp is not None:
        name, temp_text = os.fspath(name), os.fspath(temp)
        if name != temp_text and not name.startswith(temp_text.rstrip(os.sep) + os.sep):
            return exc  # about another file: its name is the right one
    elif name is not None and temp is None and not _looks_like_temp(name, Path(target)):
        return exc
    return OSError(exc.errno, exc.strerror or str(exc), os.fspath(target))


def _looks_like_temp(name: Any, target: Path) -> bool:
    """True when ``name`` is a temp of this module's pattern beside ``target`` (what ``mkstemp`` failed to create)."""
    candidate = Path(os.fspath(name))
    return candidate.parent == target.parent and candidate.name.startswith(f".{target.name}.") and candidate.name.endswith(".tmp")


def _target_error(exc: BaseException, target: Path) -> BaseException:
    """``exc`` as an error that names ``target`` (never a temp): a StorageError, or the OSError re-addressed."""
    translated = storage_error(exc, target)
    if translated is not None:
        return translated
    if isinstance(exc, OSError):
        return OSError(exc.errno, exc.strerror or str(exc), str(target))
    return exc


def commit_together(pairs: Sequence[tuple[Path, Path]]) -> None:
    """Rename each ``(temp, target)`` temp over its target: all of them, or -- on a failure -- none.

    When a rename fails, the targets already replaced get their previous content
    back (kept as a hard link while committing) or, if they had none, are removed;
    the remaining temps are removed. The error names the user's target, never a temp.
    """
    backups: list[Path | None] = []
    done: list[int] = []
    try:
        for temp, target in pairs:
            backups.append(_keep_previous(target))
        for i, (temp, target) in enumerate(pairs):
            try:
                os.replace(temp, target)
            except BaseException as exc:
                raise _target_error(exc, target) from exc
            done.append(i)
    except BaseException:
        for i in reversed(done):
            target, backup = pairs[i][1], backups[i]
            try:
                if backup is not None:
                    os.replace(backup, target)
                else:
                    target.unlink(missing_ok=True)
            except OSError:
                pass  # best effort: the error below is what the user needs to see
        for temp, _ in pairs:
            temp.unlink(missing_ok=True)
        raise
    finally:
        for backup in backups:
            if backup is not None:
                backup.unlink(missing_ok=True)
    if pairs:
        fsync_dir(pairs[0][1].parent)


def _keep_previous(target: Path) -> Path | None:
    """A hard link to ``target``'s current file under this module's temp pattern, or None (no file, no links)."""
    if not target.is_file() or target.is_symlink():
        return None
    backup = target.parent / f".{target.name}.{os.getpid()}-{time.monotonic_ns()}.tmp"
    try:
        os.link(target, backup)
    except OSError:
        return None  # a file system without hard links: a failed commit removes instead of restoring
    return backup


def same_file(a: Path | str, b: Path | str) -> bool:
    """True when ``a`` and ``b`` are one file: the same inode (hard or symbolic links), else the same real path."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.realpath(a) == os.path.realpath(b)


def refuse_overwrite(
    outputs: Sequence[Path | str],
    inputs: Sequence[Path | str],
    *,
    force: bool,
    error: type[MclnetError],
) -> None:
    """Refuse, as ``error``, an output that is one of the inputs (always) or that exists already (unless ``force``)."""
    for out in outputs:
        for source in inputs:
            if Path(source).exists() and same_file(out, source):
                raise error(
                    f"{out} is the input {source}: choose another output "
                    "(an input is never overwritten, not even with --force)"
                )
    if not force:
        for out in outputs:
            if Path(out).exists() or Path(out).is_symlink():
                raise error(f"{out} already exists; pass --force to replace it, or choose another output")


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write UTF-8 text atomically."""
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def fsync_dir(directory: Path | str) -> None:
    """Make renames inside ``directory`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(str(directory), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
