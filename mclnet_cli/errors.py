"""Errors raised by the core. The CLI renders them as one line and exits 1."""

import pickle


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


#: what torch's safe unpickler says when a real pickle holds a class or function it does not allow
_FOREIGN_OBJECT_SIGNS = (
    "GLOBAL ", "unrecognized function", "Can only create new object", "Can only build", "is blocked", "must be imported",
)
#: errors Python's and torch's unpicklers raise on bytes that are no pickle at all (random data, another format)
_GARBAGE_ERRORS = (KeyError, IndexError, ValueError, TypeError, AttributeError, UnicodeDecodeError, OverflowError, MemoryError)
NOT_A_CHECKPOINT = "it is not a PyTorch checkpoint (neither the zip archive nor the pickle that torch.save writes)"


def holds_foreign_objects(exc: BaseException) -> bool:
    """True when torch's ``weights_only`` load refused a real pickle for a class or function in it."""
    text = str(exc)
    return "weights only load failed" in text.lower() and any(sign in text for sign in _FOREIGN_OBJECT_SIGNS)


def load_failure(exc: BaseException) -> str:
    """One line on why torch.load refused a file -- never torch's advice to load it unsafely.

    A pickle holding objects other than tensors is told apart from bytes that are no
    checkpoint at all (random data, another file format), which torch's safe unpickler
    also rejects with its "weights only load failed" message.
    """
    text = str(exc).strip()
    if holds_foreign_objects(exc):
        return (
            "it holds objects other than tensors and plain containers, which mclnet never writes "
            "(not loaded: unpickling them could run code)"
        )
    if isinstance(exc, (EOFError,)) or "unexpected EOF" in text or "failed finding central directory" in text:
        return "the file is truncated or not a checkpoint"
    if "weights only load failed" in text.lower() or "weights_only" in text:
        return NOT_A_CHECKPOINT  # the safe unpickler met an opcode no pickle has: not a checkpoint
    if isinstance(exc, (pickle.UnpicklingError, *_GARBAGE_ERRORS)) or "PytorchStreamReader" in text or "magic number" in text:
        return NOT_A_CHECKPOINT
    return text.splitlines()[0] if text else type(exc).__name__


class MclnetDeprecationWarning(FutureWarning):
    """A config key or option that still works under an old name for one more release (the CLI shows one line)."""
