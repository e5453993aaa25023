"""How many image-decoding worker processes to start."""

from __future__ import annotations

import os


def usable_workers(requested: int) -> int:
    """``requested`` capped at the CPUs this process may use: more workers than cores only thrash."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(0, min(int(requested), cpus))
