"""OOD detection metrics from two score arrays, each named with its positive-class convention.

Scores follow the harness contract: float64, one per example, higher = more OOD. ``s_id`` holds the
in-distribution test scores and ``s_ood`` the OOD test scores. The names say which class is positive
because published numbers disagree on it (detector spec section 12, discrepancy 14.1).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from ood_bench.errors import UserError

Positive = Literal["ood", "id"]


def _as_scores(s_id: np.ndarray, s_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both score sets as 1-D float64 arrays; a clear ValueError when one is empty or non-finite."""
    checked = []
    for label, scores in (("ID (s_id)", s_id), ("OOD (s_ood)", s_ood)):
        arr = np.asarray(scores, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"{label} scores must be a 1-D array, got shape {arr.shape}")
        if arr.size == 0:
            raise ValueError(f"{label} scores are empty")
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise ValueError(f"{label} scores contain {bad} non-finite value(s) (NaN or inf) out of "
                             f"{arr.size}; the detector produced invalid scores")
        checked.append(arr)
    return checked[0], checked[1]


def rank_nonfinite(s_id: np.ndarray, s_ood: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """The leaderboard's policy for non-finite scores: NaN and +inf rank as the most OOD, -inf as the least.

    Returns both sets with NaN / +inf replaced by one value above every finite score of the pair and -inf by
    one below, and how many values were replaced. A detector's NaN therefore counts against it when it hits
    an ID example (a false alarm) and for it on an OOD example; the count is shown in the cell
    (docs/metrics.md). The metric functions themselves still refuse non-finite input.
    """
    a, b = np.asarray(s_id, dtype=np.float64), np.asarray(s_ood, dtype=np.float64)
    both = np.concatenate([a, b])
    finite = both[np.isfinite(both)]
    if finite.size == len(both):
        return a, b, 0
    top = finite.max() + 1.0 if finite.size else 1.0
    bottom = finite.min() - 1.0 if finite.size else -1.0

    def mapped(x: np.ndarray) -> np.ndarray:
        x = np.where(np.isnan(x) | (x == np.inf), top, x)
        return np.where(x == -np.inf, bottom, x)

    return mapped(a), mapped(b), int(len(both) - finite.size)


def _labelled(s_id: np.ndarray, s_ood: np.ndarray, positive: Positive) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores oriented so that the positive class has label 1 and higher scores."""
    scores = np.concatenate([s_id, s_ood])
    is_ood = np.concatenate([np.zeros(s_id.size, dtype=np.int64), np.ones(s_ood.size, dtype=np.int64)])
    if positive == "ood":
        return is_ood, scores
    if positive == "id":
        return 1 - is_ood, -scores
    raise ValueError(f"positive must be 'ood' or 'id', got {positive!r}")


def auroc(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """Area under the ROC curve with OOD labelled 1: P(score_ood > score_id) + 0.5 P(tie)."""
    s_id, s_ood = _as_scores(s_id, s_ood)
    labels, scores = _labelled(s_id, s_ood, "ood")
    return float(roc_auc_score(labels, scores))


def auprc_out(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """Average precision with OOD as the positive class (hvae-oodd, seeds 000/001)."""
    s_id, s_ood = _as_scores(s_id, s_ood)
    labels, scores = _labelled(s_id, s_ood, "ood")
    return float(average_precision_score(labels, scores))


def auprc_in(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """Average precision with ID as the positive class and the score negated (seed 003 "AUPRC-In")."""
    s_id, s_ood = _as_scores(s_id, s_ood)
    labels, scores = _labelled(s_id, s_ood, "id")
    return float(average_precision_score(labels, scores))


def fpr_at_tpr(s_id: np.ndarray, s_ood: np.ndarray, tpr: float, positive: Positive) -> float:
    """False-positive rate at the first ROC threshold whose true-positive rate reaches ``tpr``.

    ``positive="ood"``: the fraction of ID examples flagged OOD when ``tpr`` of the OOD examples are
    caught. ``positive="id"``: the fraction of OOD examples accepted as ID when ``tpr`` of the ID
    examples are accepted.
    Tied scores share one threshold, so a tie straddling the cut counts wholly on the flagged side.
    """
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr must be in (0, 1], got {tpr}")
    s_id, s_ood = _as_scores(s_id, s_ood)
    labels, scores = _labelled(s_id, s_ood, positive)
    fpr_curve, tpr_curve, _ = roc_curve(labels, scores, drop_intermediate=False)
    # tpr_curve ends at 1.0, so a threshold reaching any tpr <= 1 always exists.
    first = int(np.argmax(tpr_curve >= tpr))
    return float(fpr_curve[first])


def fpr80_ood_pos(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """FPR at 80 % TPR, OOD positive: fraction of ID flagged OOD when 80 % of OOD are caught."""
    return fpr_at_tpr(s_id, s_ood, 0.80, "ood")


def fpr80_id_pos(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """FPR at 80 % TPR, ID positive: fraction of OOD accepted as ID when 80 % of ID are accepted."""
    return fpr_at_tpr(s_id, s_ood, 0.80, "id")


def fpr95_ood_pos(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """FPR at 95 % TPR, OOD positive: fraction of ID flagged OOD when 95 % of OOD are caught."""
    return fpr_at_tpr(s_id, s_ood, 0.95, "ood")


def fpr95_id_pos(s_id: np.ndarray, s_ood: np.ndarray) -> float:
    """FPR at 95 % TPR, ID positive: fraction of OOD accepted as ID when 95 % of ID are accepted."""
    return fpr_at_tpr(s_id, s_ood, 0.95, "id")


METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auroc": auroc,
    "auprc_out": auprc_out,
    "auprc_in": auprc_in,
    "fpr80_ood_pos": fpr80_ood_pos,
    "fpr80_id_pos": fpr80_id_pos,
    "fpr95_ood_pos": fpr95_ood_pos,
    "fpr95_id_pos": fpr95_id_pos,
}

HIGHER_IS_BETTER: dict[str, bool] = {
    "auroc": True,
    "auprc_out": True,
    "auprc_in": True,
    "fpr80_ood_pos": False,
    "fpr80_id_pos": False,
    "fpr95_ood_pos": False,
    "fpr95_id_pos": False,
}

METRIC_INFO: dict[str, str] = {
    "auroc": "area under the ROC curve, OOD labelled positive (same value with ID positive); "
             "higher is better",
    "auprc_out": "average precision, OOD positive, score as is (seeds 000/001, hvae-oodd); higher is better",
    "auprc_in": "average precision, ID positive, score negated (seed 003 'AUPRC-In'); higher is better",
    "fpr80_ood_pos": "fraction of ID flagged OOD when 80% of OOD are caught, OOD positive "
                     "(seeds 000/001, hvae-oodd); lower is better",
    "fpr80_id_pos": "fraction of OOD accepted as ID when 80% of ID are accepted, ID positive (seed 003); "
                    "lower is better",
    "fpr95_ood_pos": "fraction of ID flagged OOD when 95% of OOD are caught, OOD positive "
                     "(pytorch-ood's and OpenOOD's FPR@95); lower is better",
    "fpr95_id_pos": "fraction of OOD accepted as ID when 95% of ID are accepted, ID positive "
                    "(Hendrycks/ODIN line); lower is better",
}


def check_metric_names(names: Sequence[str]) -> list[str]:
    """The names as a list, or a UserError naming the unknown ones and listing the allowed ones."""
    if isinstance(names, str):
        names = [names]
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise UserError(f"Unknown metric(s) {', '.join(map(repr, unknown))}. "
                        f"Allowed metric names: {', '.join(METRICS)}.")
    return list(names)


def balanced_pair(s_id: np.ndarray, s_ood: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Equal-size ID and OOD score sets (seed 001 section 5).

    All of the smaller set is kept; the larger is replaced by a seeded random subset, without
    replacement, of the smaller set's size (kept in its original order). Returns ``(id, ood)``.
    """
    s_id, s_ood = _as_scores(s_id, s_ood)
    size = min(s_id.size, s_ood.size)
    rng = np.random.default_rng(seed)

    def subset(scores: np.ndarray) -> np.ndarray:
        if scores.size == size:
            return scores.copy()
        return scores[np.sort(rng.choice(scores.size, size=size, replace=False))]

    return subset(s_id), subset(s_ood)


def compute_metrics(
    s_id: np.ndarray, s_ood: np.ndarray, names: Sequence[str], balanced: bool = False, seed: int = 0
) -> dict[str, float]:
    """The named metrics of one (ID, OOD) score pair, optionally on a seeded balanced subset."""
    names = check_metric_names(names)
    s_id, s_ood = _as_scores(s_id, s_ood)
    if balanced:
        s_id, s_ood = balanced_pair(s_id, s_ood, seed)
    return {name: METRICS[name](s_id, s_ood) for name in names}
