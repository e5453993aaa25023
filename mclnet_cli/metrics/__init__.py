"""Re-identification metrics and evaluation protocols: pure functions of arrays (numpy only)."""

from mclnet_cli.metrics.ranking import RankingResult, cmc_kind, evaluate_ranking, exclusion_mask, rank_metrics
from mclnet_cli.metrics.report import METRIC_KEYS, as_percent, mean_std

__all__ = [
    "METRIC_KEYS",
    "RankingResult",
    "as_percent",
    "cmc_kind",
    "evaluate_ranking",
    "exclusion_mask",
    "mean_std",
    "rank_metrics",
]
