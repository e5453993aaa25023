"""Re-identification metrics and evaluation protocols: pure functions of arrays (numpy only)."""

from mclnet_cli.metrics.ranking import RankingResult, evaluate_ranking, exclusion_mask
from mclnet_cli.metrics.protocols import PROTOCOL_SPECS, ProtocolSpec, cmc_kind, get_protocol, rank_metrics
from mclnet_cli.metrics.report import METRIC_KEYS, as_percent, mean_std

__all__ = [
    "METRIC_KEYS",
    "PROTOCOL_SPECS",
    "ProtocolSpec",
    "RankingResult",
    "as_percent",
    "cmc_kind",
    "evaluate_ranking",
    "exclusion_mask",
    "get_protocol",
    "mean_std",
    "rank_metrics",
]
