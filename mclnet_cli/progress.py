"""The do-nothing progress reporter that core code uses when its caller passes none.

Core functions never print: they take an optional :data:`ProgressFactory`,
``progress(description, total)``, a context manager yielding ``advance(n)``
(the CLI passes :func:`mclnet_cli.cli.output.progress_bar`), and fall back to
:func:`no_progress`.
"""

from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

#: ``progress(description, total)`` -> a context manager yielding ``advance(n)``; the one progress signature
ProgressFactory = Callable[[str, int], ContextManager[Callable[[int], None]]]


def _ignore(n: int = 1) -> None:
    return None


@contextlib.contextmanager
def no_progress(description: str = "", total: int | None = None) -> Iterator[Callable[..., None]]:
    """Context manager yielding ``advance(n=1)``, which does nothing."""
    yield _ignore
