"""OOD metrics named with their positive-class convention (see docs/metrics.md)."""

from ood_bench.metrics.ood import (
    HIGHER_IS_BETTER,
    METRIC_INFO,
    METRICS,
    auprc_in,
    auprc_out,
    auroc,
    balanced_pair,
    check_metric_names,
    compute_metrics,
    fpr80_id_pos,
    fpr80_ood_pos,
    fpr95_id_pos,
    fpr_at_tpr,
    rank_nonfinite,
)

__all__ = [
    "HIGHER_IS_BETTER",
    "METRICS",
    "METRIC_INFO",
    "auprc_in",
    "auprc_out",
    "auroc",
    "balanced_pair",
    "check_metric_names",
    "compute_metrics",
    "fpr80_id_pos",
    "fpr80_ood_pos",
    "fpr95_id_pos",
    "fpr_at_tpr",
    "rank_nonfinite",
]
