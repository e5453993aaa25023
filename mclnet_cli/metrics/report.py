"""Turning ranking results into report rows: percent values, mean and std over trials.

The standard deviation is the population one (``ddof=0``), so a single trial has
std 0 rather than NaN. NaN values (a trial without any valid query) propagate.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

from mclnet_cli.metrics.ranking import RankingResult

METRIC_KEYS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
CMC_RANKS = (1, 5, 10, 20)


def as_percent(result: RankingResult) -> dict[str, float]:
    """Rank-1/5/10/20, mAP and mINP of one result in percent.

    A rank beyond the CMC curve's length takes its last value (see ``ranking``).
    """
    row: dict[str, float] = {}
    for r in CMC_RANKS:
        value = result.cmc[min(r, len(result.cmc)) - 1]
        row[f"rank{r}"] = 100.0 * float(value)
    row["mAP"] = 100.0 * float(result.mAP)
    row["mINP"] = 100.0 * float(result.mINP)
    return row


def mean_std(rows: Sequence[Mapping[str, float]], keys: Sequence[str] = METRIC_KEYS) -> tuple[dict[str, float], dict[str, float]]:
    """Mean and population std of each key over ``rows`` (e.g. the trials)."""
    if not rows:
        nan = {k: math.nan for k in keys}
        return nan, dict(nan)
    mean: dict[str, float] = {}
    std: dict[str, float] = {}
    for key in keys:
        values = np.array([float(row[key]) for row in rows], dtype=np.float64)
        mean[key] = float(values.mean())
        std[key] = float(values.std())
    return mean, std
