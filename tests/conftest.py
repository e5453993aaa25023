"""Shared test setup: one thread per process keeps the suite fast on 2 cores."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # the --help test runs without torch in a subprocess
    pass
