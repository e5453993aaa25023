"""Errors raised by the core. The CLI renders them as one line and exits 1."""


class MclnetError(Exception):
    """Base class for every error a user can cause and fix."""


class ConfigError(MclnetError):
    """A preset, an override or a config value is wrong."""


class DataError(MclnetError):
    """A dataset tree, split file, image or prepared dataset is wrong."""


class CheckpointError(MclnetError):
    """A checkpoint is missing, unreadable or does not fit."""


class IndexStoreError(MclnetError):
    """A gallery index is missing, unreadable or does not fit its checkpoint."""


class TrainingError(MclnetError):
    """Training cannot go on (for example, a loss became NaN)."""


class CollapseError(TrainingError):
    """``train.stop_on_collapse``: the health check found that the model stopped learning."""


class StorageError(MclnetError):
    """Writing failed for lack of space or a failing disk; names the user's path, never a temp."""

    @classmethod
    def for_path(cls, path: object, exc: OSError) -> "StorageError":
        reason = exc.strerror or str(exc) or type(exc).__name__
        return cls(f"cannot write {path}: {reason} (free some space or choose another place)")


class LockedError(MclnetError):
    """Another mclnet process is writing the same index folder or run directory."""


class Interrupted(MclnetError):
    """The user stopped the work (Ctrl-C); the message says what was kept and how to continue. Exit code 130."""


def load_failure(exc: BaseException) -> str:
    """One line on why torch.load refused a file -- never torch's advice to load it unsafely."""
    text = str(exc).strip()
    if "weights only load failed" in text.lower() or "weights_only" in text:
        return (
            "it holds objects other than tensors and plain containers, which mclnet never writes "
            "(not loaded: unpickling them could run code)"
        )
    if isinstance(exc, (EOFError,)) or "unexpected EOF" in text or "failed finding central directory" in text:
        return "the file is truncated or not a checkpoint"
    return text.splitlines()[0] if text else type(exc).__name__


class MclnetDeprecationWarning(FutureWarning):
    """A config key or option that still works under an old name for one more release (the CLI shows one line)."""
