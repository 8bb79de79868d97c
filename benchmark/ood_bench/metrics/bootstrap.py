"""Bootstrap resamples of the OOD metrics, vectorised over resamples.

A resample of a score set is a row of counts: how often each example was drawn (with replacement).
Every metric below is computed for all rows at once from one sort of the original scores, and equals
the corresponding function of :mod:`ood_bench.metrics.ood` applied to the resampled arrays (ties
included; tests check this row by row). ID and OOD examples are resampled independently.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ood_bench.metrics.ood import _as_scores, check_metric_names

# Resamples handled at once: bounds the memory of the (resamples x examples) matrices to ~100 MB.
_BLOCK = 256


def resample_counts(rng: np.random.Generator, n: int, resamples: int) -> np.ndarray:
    """``(resamples, n)`` int64 counts: row r says how often each of n examples is drawn in resample r."""
    draws = rng.integers(0, n, size=(resamples, n))
    flat = draws + (np.arange(resamples)[:, None] * n)
    return np.bincount(flat.ravel(), minlength=resamples * n).reshape(resamples, n)


def _tie_groups(sorted_values: np.ndarray) -> np.ndarray:
    """Boolean mask of the last position of each run of equal values in a sorted 1-D array."""
    last = np.ones(sorted_values.size, dtype=bool)
    last[:-1] = sorted_values[1:] != sorted_values[:-1]
    return last


def _auroc(s_id: np.ndarray, w_id: np.ndarray, s_ood: np.ndarray, w_ood: np.ndarray) -> np.ndarray:
    """Weighted P(ood > id) + 0.5 P(tie) per row: the Mann-Whitney form of the AUROC."""
    order = np.argsort(s_id, kind="stable")
    a = s_id[order]
    cum = np.zeros((w_id.shape[0], a.size + 1))
    np.cumsum(w_id[:, order], axis=1, out=cum[:, 1:])
    below = np.searchsorted(a, s_ood, side="left")
    upto = np.searchsorted(a, s_ood, side="right")
    less, ties = cum[:, below], cum[:, upto] - cum[:, below]
    n_id, n_ood = w_id.sum(axis=1), w_ood.sum(axis=1)
    return (w_ood * (less + 0.5 * ties)).sum(axis=1) / (n_id * n_ood)


def _average_precision(pos: np.ndarray, w_pos: np.ndarray, neg: np.ndarray, w_neg: np.ndarray) -> np.ndarray:
    """Weighted average precision (positives score higher), one step per distinct threshold like sklearn."""
    scores = np.concatenate([pos, neg])
    order = np.argsort(-scores, kind="stable")
    weights = np.concatenate([w_pos, np.zeros_like(w_neg)], axis=1)[:, order]
    tp = np.cumsum(weights, axis=1)
    seen = np.cumsum(np.concatenate([w_pos, w_neg], axis=1)[:, order], axis=1)
    ends = _tie_groups(-scores[order])
    tp, seen = tp[:, ends], seen[:, ends]
    gained = np.diff(tp, axis=1, prepend=0.0)
    precision = np.divide(tp, seen, out=np.zeros_like(tp), where=seen > 0)
    return (gained * precision).sum(axis=1) / w_pos.sum(axis=1)


def _fpr_at_tpr(pos: np.ndarray, w_pos: np.ndarray, neg: np.ndarray, w_neg: np.ndarray, tpr: float) -> np.ndarray:
    """Weighted fraction of negatives at or above the highest threshold that catches ``tpr`` of positives."""
    order = np.argsort(-pos, kind="stable")
    caught = np.cumsum(w_pos[:, order], axis=1)
    n_pos = w_pos.sum(axis=1, keepdims=True)
    # The first position whose true-positive rate reaches tpr, as sklearn's ROC thresholds give it.
    threshold = pos[order][np.argmax(caught / n_pos >= tpr, axis=1)]
    neg_order = np.argsort(neg, kind="stable")
    cum = np.zeros((w_neg.shape[0], neg.size + 1))
    np.cumsum(w_neg[:, neg_order], axis=1, out=cum[:, 1:])
    below = np.searchsorted(neg[neg_order], threshold, side="left")
    rows = np.arange(w_neg.shape[0])
    return (cum[:, -1] - cum[rows, below]) / cum[:, -1]


def _one_block(s_id: np.ndarray, w_id: np.ndarray, s_ood: np.ndarray, w_ood: np.ndarray,
               name: str) -> np.ndarray:
    w_id, w_ood = w_id.astype(np.float64), w_ood.astype(np.float64)
    if name == "auroc":
        return _auroc(s_id, w_id, s_ood, w_ood)
    if name == "auprc_out":
        return _average_precision(s_ood, w_ood, s_id, w_id)
    if name == "auprc_in":
        return _average_precision(-s_id, w_id, -s_ood, w_ood)
    if name == "fpr80_ood_pos":
        return _fpr_at_tpr(s_ood, w_ood, s_id, w_id, 0.80)
    if name == "fpr80_id_pos":
        return _fpr_at_tpr(-s_id, w_id, -s_ood, w_ood, 0.80)
    if name == "fpr95_id_pos":
        return _fpr_at_tpr(-s_id, w_id, -s_ood, w_ood, 0.95)
    raise ValueError(f"no bootstrap implementation of metric {name!r}")


def bootstrap_metrics(
    s_id: np.ndarray, s_ood: np.ndarray, counts_id: np.ndarray, counts_ood: np.ndarray, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Each named metric on every resample: ``counts_*`` are :func:`resample_counts` rows (same number)."""
    names = check_metric_names(names)
    s_id, s_ood = _as_scores(s_id, s_ood)
    if counts_id.shape[1] != s_id.size or counts_ood.shape[1] != s_ood.size:
        raise ValueError(f"counts of shape {counts_id.shape} / {counts_ood.shape} do not match "
                         f"{s_id.size} ID and {s_ood.size} OOD scores")
    if counts_id.shape[0] != counts_ood.shape[0]:
        raise ValueError("ID and OOD counts must have the same number of resamples")
    out = {name: np.empty(counts_id.shape[0]) for name in names}
    for start in range(0, counts_id.shape[0], _BLOCK):
        rows = slice(start, start + _BLOCK)
        for name in names:
            out[name][rows] = _one_block(s_id, counts_id[rows], s_ood, counts_ood[rows], name)
    return out
