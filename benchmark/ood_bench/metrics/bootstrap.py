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
    """``(resamples, n)`` int32 counts: row r says how often each of n examples is drawn in resample r."""
    draws = rng.integers(0, n, size=(resamples, n)) + np.arange(resamples)[:, None] * n
    return np.bincount(draws.ravel(), minlength=resamples * n).reshape(resamples, n).astype(np.int32)


def _first_reaching(n: int, tpr: float) -> int:
    """The smallest count c of positives with c / n >= tpr (sklearn's ROC rates, in the same arithmetic)."""
    return int(np.argmax(np.arange(1, n + 1) / n >= tpr)) + 1


class _Block:
    """Resamples of one (ID, OOD) pair: counts in ascending score order and their running sums."""

    def __init__(self, s_id: np.ndarray, c_id: np.ndarray, s_ood: np.ndarray, c_ood: np.ndarray):
        self.s_id, self.c_id, self.s_ood, self.c_ood = s_id, c_id, s_ood, c_ood
        id_order, ood_order = np.argsort(s_id, kind="stable"), np.argsort(s_ood, kind="stable")
        self.a, self.b = s_id[id_order], s_ood[ood_order]
        self.wa, self.wb = c_id[:, id_order], c_ood[:, ood_order]
        self.cum_a, self.cum_b = self._running(self.wa), self._running(self.wb)
        self.rows = np.arange(c_id.shape[0])

    @staticmethod
    def _running(w: np.ndarray) -> np.ndarray:
        """Column j holds the count of the j smallest scores (a leading zero column)."""
        out = np.zeros((w.shape[0], w.shape[1] + 1), dtype=np.int64)
        np.cumsum(w, axis=1, out=out[:, 1:])
        return out

    def auroc(self) -> np.ndarray:
        """P(ood > id) + 0.5 P(tie): the Mann-Whitney form."""
        below = self.cum_a[:, np.searchsorted(self.a, self.b, side="left")]
        upto = self.cum_a[:, np.searchsorted(self.a, self.b, side="right")]
        pairs = (self.wb * (below + upto)).sum(axis=1) / 2  # below + 0.5 * (upto - below), doubled and halved
        return pairs / (self.a.size * self.b.size)

    def fpr_ood_positive(self, tpr: float) -> np.ndarray:
        """Fraction of ID at or above the m-th largest resampled OOD score (m OOD caught)."""
        n = self.b.size
        rank = n - _first_reaching(n, tpr) + 1  # the m-th largest is the (n - m + 1)-th smallest
        threshold = self.b[np.argmax(self.cum_b[:, 1:] >= rank, axis=1)]
        n_id = self.a.size
        at_or_above = n_id - self.cum_a[self.rows, np.searchsorted(self.a, threshold, side="left")]
        return at_or_above / n_id

    def fpr_id_positive(self, tpr: float) -> np.ndarray:
        """Fraction of OOD at or below the m-th smallest resampled ID score (scores negated: m ID accepted)."""
        threshold = self.a[np.argmax(self.cum_a[:, 1:] >= _first_reaching(self.a.size, tpr), axis=1)]
        return self.cum_b[self.rows, np.searchsorted(self.b, threshold, side="right")] / self.b.size

    def average_precision(self, ood_positive: bool) -> np.ndarray:
        """Sum over the distinct positive scores, from the highest down, of the recall gained there times
        the precision there: sklearn's step-wise average precision (ID positive: scores negated)."""
        if ood_positive:
            levels = np.unique(self.b)[::-1]  # thresholds from high to low; only positives' values add recall
            tp = self.b.size - self.cum_b[:, np.searchsorted(self.b, levels, side="left")]
            fp = self.a.size - self.cum_a[:, np.searchsorted(self.a, levels, side="left")]
            n_pos = self.b.size
        else:
            levels = np.unique(self.a)  # negated scores: high thresholds are low ID scores
            tp = self.cum_a[:, np.searchsorted(self.a, levels, side="right")]
            fp = self.cum_b[:, np.searchsorted(self.b, levels, side="right")]
            n_pos = self.a.size
        gained = np.diff(tp, axis=1, prepend=0)
        precision = np.divide(tp, tp + fp, out=np.zeros(tp.shape), where=tp > 0)
        return (gained * precision).sum(axis=1) / n_pos


_METHODS = {
    "auroc": lambda b: b.auroc(),
    "auprc_out": lambda b: b.average_precision(ood_positive=True),
    "auprc_in": lambda b: b.average_precision(ood_positive=False),
    "fpr80_ood_pos": lambda b: b.fpr_ood_positive(0.80),
    "fpr80_id_pos": lambda b: b.fpr_id_positive(0.80),
    "fpr95_ood_pos": lambda b: b.fpr_ood_positive(0.95),
    "fpr95_id_pos": lambda b: b.fpr_id_positive(0.95),
}


def bootstrap_metrics(
    s_id: np.ndarray, s_ood: np.ndarray, counts_id: np.ndarray, counts_ood: np.ndarray, names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Each named metric on every resample: ``counts_*`` are :func:`resample_counts` rows (same number)."""
    names = check_metric_names(names)
    absent = [name for name in names if name not in _METHODS]
    if absent:
        raise ValueError(f"no bootstrap implementation of metric(s) {absent}")
    s_id, s_ood = _as_scores(s_id, s_ood)
    if counts_id.shape[1] != s_id.size or counts_ood.shape[1] != s_ood.size:
        raise ValueError(f"counts of shape {counts_id.shape} / {counts_ood.shape} do not match "
                         f"{s_id.size} ID and {s_ood.size} OOD scores")
    if counts_id.shape[0] != counts_ood.shape[0]:
        raise ValueError("ID and OOD counts must have the same number of resamples")
    if (counts_id.sum(axis=1) != s_id.size).any() or (counts_ood.sum(axis=1) != s_ood.size).any():
        raise ValueError("every resample must draw as many examples as its set holds (see resample_counts)")
    out = {name: np.empty(counts_id.shape[0]) for name in names}
    for start in range(0, counts_id.shape[0], _BLOCK):
        rows = slice(start, start + _BLOCK)
        block = _Block(s_id, counts_id[rows], s_ood, counts_ood[rows])
        for name in names:
            out[name][rows] = _METHODS[name](block)
    return out
